"""Figures for a lecture hall: every text of a figure large enough to read from the back row.

:func:`presenter_layout` rescales the fonts of a finished figure (title, axis titles and ticks,
panel titles, colorbars, legend, hover) to at least ``font_px`` pixels and gives the larger text the
margins it needs. It works on any figure of :mod:`relpos.experiments.visualize` and friends; the app
applies it to every chart while presenting. No streamlit here.
"""

from __future__ import annotations

import re
from typing import Any

import plotly.graph_objects as go

from relpos._validation import check_int

__all__ = ["PRESENTER_FONT_PX", "presenter_layout", "wrap_title"]

#: Smallest chart font in presenter mode, in CSS pixels (the issue asks for 18 or more).
PRESENTER_FONT_PX = 18
_TAG = re.compile(r"<[^>]+>")


def _axis_names(fig: go.Figure) -> list[str]:
    layout = fig.layout.to_plotly_json()
    return [k for k in layout if k.startswith(("xaxis", "yaxis"))] or ["xaxis", "yaxis"]


def wrap_title(text: str, max_chars: int) -> str:
    """``text`` broken into lines of at most ``max_chars`` visible characters (at spaces; tags such
    as ``<b>`` do not count; existing ``<br>`` are kept). A word longer than a line stays whole."""
    max_chars = check_int("max_chars", max_chars, minimum=8)
    lines: list[str] = []
    for part in text.split("<br>"):
        line = ""
        for word in part.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and len(_TAG.sub("", candidate)) > max_chars:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "<br>".join(lines)


def presenter_layout(fig: go.Figure, font_px: int = PRESENTER_FONT_PX, *, width_px: int = 1100,
                     max_height: int | None = 470) -> go.Figure:
    """Raise every font of ``fig`` to at least ``font_px`` and fit it on a projector (in place).

    Args:
        fig: any Plotly figure.
        font_px: the smallest font size, in pixels (titles get ``font_px + 4``).
        width_px: about how wide the figure will be drawn: the title is wrapped to fit it.
        max_height: the tallest the figure may be (a 1280x720 projector shows about 480 px under
            the page's controls); ``None`` keeps its height.

    Returns:
        ``fig`` with the base, title, axis, colorbar, legend, hover and annotation fonts raised,
        a long title wrapped, the margins grown to fit them and the height capped.
    """
    font_px = check_int("font_px", font_px, minimum=8, maximum=64)
    width_px = check_int("width_px", width_px, minimum=100)
    big = font_px + 4
    fig.update_layout(
        font={"size": font_px}, title_font={"size": big}, hoverlabel={"font": {"size": font_px}},
        legend={"font": {"size": font_px}},
    )  # fmt: skip
    title_lines = 1
    if fig.layout.title is not None and fig.layout.title.text:
        text = wrap_title(fig.layout.title.text, max(8, int(width_px / (0.56 * big))))
        title_lines = text.count("<br>") + 1
        fig.update_layout(title={"text": text, "yref": "container", "y": 1.0, "yanchor": "top",
                                 "pad": {"t": 12}})
    for name in _axis_names(fig):
        axis: Any = fig.layout[name]
        axis.tickfont.size = max(axis.tickfont.size or 0, font_px)
        if axis.title is not None and axis.title.text:
            axis.title.font.size = max(axis.title.font.size or 0, font_px)
        if name.startswith("yaxis") and axis.scaleanchor:  # a square map narrower than tall: hug the title
            axis.constraintoward = "top"
    for ann in fig.layout.annotations or ():
        ann.font.size = max(ann.font.size or 0, font_px)
    layout = fig.layout.to_plotly_json()
    for name in [k for k in layout if k.startswith("coloraxis")]:
        bar = fig.layout[name].colorbar
        bar.tickfont.size = max(bar.tickfont.size or 0, font_px)
        bar.title.font.size = max(bar.title.font.size or 0, font_px)
    for tr in fig.data:
        if hasattr(tr, "colorbar") and tr.colorbar is not None and getattr(tr, "showscale", None) is not False:
            tr.colorbar.tickfont.size = max(tr.colorbar.tickfont.size or 0, font_px)
        if tr.type == "bar":  # numbers in heatmap cells keep their size: the cells do not grow
            tr.textfont.size = max(tr.textfont.size or 0, font_px - 2)
    margin = fig.layout.margin
    old_t, old_b = margin.t or 0, margin.b or 0
    top = max(old_t, int(title_lines * big * 1.3) + big + 20)
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
