"""Figures for a lecture hall: every text of a figure large enough to read from the back row.

:func:`presenter_layout` rescales the fonts of a finished figure (title, axis titles and ticks,
panel titles, colorbars, legend, hover) to at least ``font_px`` pixels, gives the larger text the
margins it needs and caps the height so a chart fits under a page's controls on a 1280x720
projector. :func:`take_title` hands a figure's title to a client that writes it above the chart
itself: HTML wraps a long title, Plotly draws it on one line and clips it (a multi-line Plotly title
anchored at the top is placed partly above the figure). The app does both for every chart while
presenting. No streamlit here.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from relpos._validation import check_int

__all__ = ["PRESENTER_FONT_PX", "presenter_layout", "take_title"]

#: Smallest chart font in presenter mode, in CSS pixels (the issue asks for 18 or more).
PRESENTER_FONT_PX = 18


def _axis_names(fig: go.Figure) -> list[str]:
    layout = fig.layout.to_plotly_json()
    return [k for k in layout if k.startswith(("xaxis", "yaxis"))] or ["xaxis", "yaxis"]


def take_title(fig: go.Figure) -> str:
    """Remove the figure's title and return its text (``""`` when it has none), in place."""
    text = fig.layout.title.text if fig.layout.title is not None else None
    fig.update_layout(title_text=None)
    return text or ""


def presenter_layout(fig: go.Figure, font_px: int = PRESENTER_FONT_PX, *,
                     max_height: int | None = 470) -> go.Figure:
    """Raise every font of ``fig`` to at least ``font_px`` and fit it on a projector (in place).

    Args:
        fig: any Plotly figure.
        font_px: the smallest font size, in pixels (the title gets ``font_px + 4``).
        max_height: the tallest the figure may be (a 1280x720 projector shows about 480 px under the
            page's controls); ``None`` keeps its height. A figure with a slider or buttons (an
            animation placed in pixels under its plot) keeps its height.

    Returns:
        ``fig`` with the base, title, axis, colorbar, legend, hover and annotation fonts raised, the
        margins fitted to them (a figure without a title keeps little room above) and the height capped.
    """
    font_px = check_int("font_px", font_px, minimum=8, maximum=64)
    big = font_px + 4
    fig.update_layout(
        font={"size": font_px}, title_font={"size": big}, hoverlabel={"font": {"size": font_px}},
        legend={"font": {"size": font_px}},
    )  # fmt: skip
    for name in _axis_names(fig):
        axis: Any = fig.layout[name]
        axis.tickfont.size = max(axis.tickfont.size or 0, font_px)
        if axis.title is not None and axis.title.text:
            axis.title.font.size = max(axis.title.font.size or 0, font_px)
        if name.startswith("yaxis") and axis.scaleanchor:  # a square map narrower than tall: hug the top
            axis.constraintoward = "top"
    for ann in fig.layout.annotations or ():
        ann.font.size = max(ann.font.size or 0, font_px)
    layout = fig.layout.to_plotly_json()
    for name in [k for k in layout if k.startswith("coloraxis")]:
        bar = fig.layout[name].colorbar
        bar.tickfont.size = max(bar.tickfont.size or 0, font_px)
        bar.title.font.size = max(bar.title.font.size or 0, font_px)
    for tr in fig.data:
        if getattr(tr, "colorbar", None) is not None and getattr(tr, "showscale", None) is not False:
            tr.colorbar.tickfont.size = max(tr.colorbar.tickfont.size or 0, font_px)
        if tr.type == "bar":  # numbers in heatmap cells keep their size: the cells do not grow
            tr.textfont.size = max(tr.textfont.size or 0, font_px - 2)
    margin = fig.layout.margin
    old_t, old_b = margin.t or 0, margin.b or 0
    titled = bool(fig.layout.title is not None and fig.layout.title.text)
    panel_titles = any(a.yref == "paper" and (a.y or 0) >= 1 for a in fig.layout.annotations or ())
    top = (big * 2 + 24 if titled else 36) + (font_px + 14 if panel_titles else 0)
    bottom = max(old_b, 2 * font_px + 24)
    fig.update_layout(margin={"t": top, "l": max(margin.l or 0, 3 * font_px + 20), "b": bottom})
    height = fig.layout.height
    if height is not None:  # the plot area keeps its height (things placed under it in pixels stay put)
        height += top - old_t + bottom - old_b
        movable = not (fig.layout.sliders or fig.layout.updatemenus)
        if max_height is not None and movable and height > max_height:
            height = max(max_height, top + bottom + 200)  # the plot keeps at least 200 px
        fig.update_layout(height=height)
    return fig
