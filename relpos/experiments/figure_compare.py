"""Figures that compare honestly: one colour scale per pair, near-uniform maps said as such, attention
drawn over the untouched input with its marks outlined, 1D rows as bars, readable training curves.

Tensors and figures in, ``go.Figure`` out; no streamlit (the app is one client). The builders of
:mod:`relpos.experiments.visualize` draw one figure each with its own colour range; a page that shows
two of them side by side ("with / without", "A / B", "before / after") passes both to
:func:`share_color_axis`, which gives them one range (computed by :func:`shared_range`, tested) and one
colorbar, or, with ``per_panel=True``, each its own range on request.

A map whose values barely vary (a fresh model's attention, 0.0605–0.064 over 16 patches) would be
stretched over the whole colour scale and look like structure: :func:`shared_range` detects it
(:func:`is_near_uniform`), anchors the scale at 0 and the figure's title says "near uniform".

Over the house limit of about 400 lines: four small parts of one job (shared ranges, the image
overlay, 1D bars, readable curves), each a client of the others' conventions (the curves reuse the
training curves' palette, the overlay the shared range's veil anchoring); apart they would only scatter it.

Shape legend: ``H`` heads, ``N`` tokens (``h * w``), ``(h, w)`` the patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.captions import near_uniform_note
from relpos.data.build import build_dataset
from relpos.diagnostics import DIAGNOSTIC_MEASURES
from relpos.experiments import _figure_core as core
from relpos.experiments import visualize as viz

__all__ = [
    "DIAG_CURVES",
    "NEAR_UNIFORM_REL",
    "OVERLAY_STYLES",
    "VEIL",
    "ColorRange",
    "Mark",
    "add_marks",
    "attention_over_image",
    "color_range_of",
    "diagnostics_curves_figure",
    "ema_smooth",
    "has_diagnostics",
    "is_near_uniform",
    "query_bars_figure",
    "sample_marks",
    "share_color_axis",
    "shared_range",
    "smoothed_curves_figure",
]

#: Room for the near-uniform note's own title line, in pixels.
_NOTE_LINE_PX = 16
#: A map is near uniform when ``max - min`` is at most this fraction of its mean (non-negative maps).
NEAR_UNIFORM_REL = 0.2
#: How attention can be drawn over an image: a dark veil that clears where attention is high (the
#: image itself untouched), contour lines, or the old colour map blended with the image.
OVERLAY_STYLES: tuple[str, ...] = ("veil", "contours", "colour")
#: The veils: mostly opaque at 0, fully clear at the top of the scale; a light fog over a dark
#: picture (the relational task's black background), a dark veil over a light one.
VEIL = [[0.0, "rgba(10, 10, 20, 0.85)"], [1.0, "rgba(10, 10, 20, 0.0)"]]
FOG = [[0.0, "rgba(215, 222, 235, 0.9)"], [1.0, "rgba(215, 222, 235, 0.0)"]]
#: The ``diag/*`` measures drawn per epoch by default (the others are in the diagnostics table).
DIAG_CURVES: tuple[str, ...] = ("locality_ratio", "symmetry", "bias_entropy", "kl")
_COLORBAR_PX = 100  # about the room Plotly makes on the right for a colorbar with its title
_QUERY_OUTLINE = "#ffd400"  # yellow: apart from the red and blue marks, visible on the dark veil
_CONTOUR_COLOR = "#ffd400"


class ColorRange(NamedTuple):
    """One panel's colour range: ``zmin``, ``zmax``, whether its own values are near uniform and the
    note its title carries then (else None)."""

    zmin: float
    zmax: float
    near_uniform: bool
    note: str | None


# ----------------------------------------------------------------------------- shared ranges


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def is_near_uniform(values: Any, rel_tol: float = NEAR_UNIFORM_REL) -> bool:
    """Whether non-negative ``values`` barely vary: ``max - min <= rel_tol * mean`` (and the mean is
    positive). Signed values (biases, differences) are never called near uniform."""
    rel_tol = check_float("rel_tol", rel_tol, minimum=0.0)
    v = _finite(values)
    if v.size < 2 or v.min() < 0:
        return False
    mean = float(v.mean())
    return mean > 0 and float(v.max() - v.min()) <= rel_tol * mean


def color_range_of(values: Any, *, diverging: bool = False, zmid: float | None = None,
                   rel_tol: float = NEAR_UNIFORM_REL, anchor_zero: bool = False) -> ColorRange:
    """The colour range of one set of values: symmetric about ``zmid`` (default 0) when ``diverging``;
    else the data range, from 0 when ``anchor_zero`` or when the values are near uniform (then the
    note says so)."""
    v = _finite(values)
    if v.size == 0:
        return ColorRange(*((-1.0, 1.0) if diverging else (0.0, 1.0)), False, None)
    if diverging:
        lo, hi = core.color_range(v, True, zmid)
        return ColorRange(lo, hi, False, None)
    lo, hi = float(v.min()), float(v.max())
    if is_near_uniform(v, rel_tol):
        return ColorRange(0.0, hi, True, near_uniform_note(lo, hi))
    if anchor_zero and lo >= 0:
        return ColorRange(0.0, hi if hi > 0 else 1.0, False, None)
    lo, hi = core.color_range(v, False, None)
    return ColorRange(lo, hi, False, None)


def shared_range(arrays: Sequence[Any], *, diverging: bool | None = None, zmid: float | None = None,
                 per_panel: bool = False, rel_tol: float = NEAR_UNIFORM_REL,
                 anchor_zero: bool = False) -> list[ColorRange]:
    """One colour range per array: the same for all (default) or each its own (``per_panel``).

    Args:
        arrays: the values of each panel (any shapes; NaN and ±inf are ignored).
        diverging: centre the scale at ``zmid`` (default 0); None: when the values have both signs.
        zmid: centre of a diverging scale.
        per_panel: each array gets its own range instead of the shared one.
        rel_tol: near-uniform threshold (:func:`is_near_uniform`).
        anchor_zero: non-negative scales start at 0 (e.g. attention drawn as a veil).

    Returns:
        A :class:`ColorRange` per array. Shared: every range is the range of all values together (from
        0 when those are near uniform); an array that is near uniform on its own still says so in its
        note, so a flat map beside a structured one is named, not stretched.
    """
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence) or not arrays:
        raise TypeError(f"arrays must be a non-empty list of arrays, got {type(arrays).__name__}")
    parts = [_finite(a) for a in arrays]
    together = np.concatenate(parts)
    if diverging is None:
        diverging = together.size > 0 and together.min() < 0 < together.max()
    if per_panel:
        return [color_range_of(p, diverging=diverging, zmid=zmid, rel_tol=rel_tol, anchor_zero=anchor_zero)
                for p in parts]
    common = color_range_of(together, diverging=diverging, zmid=zmid, rel_tol=rel_tol, anchor_zero=anchor_zero)
    out = []
    for p in parts:
        own = not diverging and p.size > 1 and is_near_uniform(p, rel_tol)
        out.append(ColorRange(common.zmin, common.zmax, own,
                              near_uniform_note(float(p.min()), float(p.max())) if own else None))
    return out


def _heatmaps(fig: go.Figure) -> list:
    return [t for t in fig.data if t.type == "heatmap"]


def share_color_axis(figs: Sequence[go.Figure], *, per_panel: bool = False, diverging: bool | None = None,
                     zmid: float | None = None, anchor_zero: bool = False) -> list[ColorRange]:
    """Give the heatmaps of several figures one colour axis (same range, the colorbar on the last
    figure only), or, with ``per_panel``, each figure its own range. Changes the figures in place.

    Each figure's title gains the note of its range when its values are near uniform. A figure drawn
    as a veil (:func:`attention_over_image`) is anchored at 0 whatever ``anchor_zero`` says.

    Returns:
        The :class:`ColorRange` of each figure (:func:`shared_range` of their heatmap values).
    """
    figs = list(figs)
    if not figs:
        return []
    for k, fig in enumerate(figs):
        if not isinstance(fig, go.Figure):
            raise TypeError(f"figs[{k}] must be a plotly go.Figure, got {type(fig).__name__}")
    values = [np.concatenate([_finite(t.z) for t in _heatmaps(f)] or [np.zeros(0)]) for f in figs]
    overlays = [f.layout.meta.get("overlay") if isinstance(f.layout.meta, dict) else None for f in figs]
    ranges = shared_range(values, diverging=diverging, zmid=zmid, per_panel=per_panel,
                          anchor_zero=anchor_zero or "veil" in overlays)
    shared = not per_panel and len(figs) > 1
    for k, (fig, rng) in enumerate(zip(figs, ranges)):
        if not _heatmaps(fig):  # curves (a 1D table): no colour axis to set
            continue
        for t in _heatmaps(fig):
            t.update(zmin=rng.zmin, zmax=rng.zmax)
        fig.update_layout(coloraxis_cmin=rng.zmin, coloraxis_cmax=rng.zmax)
        if shared and overlays[k] != "contours":  # contour lines carry their own labels: no colorbar
            last = k == max(i for i, f in enumerate(figs) if _heatmaps(f))
            fig.update_layout(coloraxis_showscale=last)
            if not last:  # the colorbar's room stays empty, so both panels are drawn the same size
                fig.update_layout(margin_r=(fig.layout.margin.r or 40) + _COLORBAR_PX)
        step = (rng.zmax - rng.zmin) / 6
        for t in fig.data:
            if t.type == "contour" and step > 0:  # the same levels in every figure
                t.update(autocontour=False, contours_start=rng.zmin + step, contours_end=rng.zmax - step / 2,
                         contours_size=step)
        if rng.note:  # on a line of its own, smaller: a long title is not cut at the figure's edge
            text = fig.layout.title.text or ""
            fig.update_layout(title_text=f"{text}<br><sup>{rng.note}</sup>" if text else rng.note)
            if text:
                fig.update_layout(margin_t=(fig.layout.margin.t or 60) + _NOTE_LINE_PX)
    return ranges


# ----------------------------------------------------------------------------- attention over an image


@dataclass(frozen=True)
class Mark:
    """A mark of an input image, in pixels: ``label`` ("A"), outline ``color``, top-left ``(y, x)``, side ``size``."""

    label: str
    color: str
    y: int
    x: int
    size: int


def sample_marks(cfg: Mapping[str, Any], index: int, split: str = "val") -> list[Mark]:
    """The marks of sample ``index`` of the config's dataset, when it places marks (the relational task:
    "A" red, "B" blue, from ``dataset.positions(index)``); ``[]`` for other datasets."""
    index = check_int("index", index, minimum=0)
    dataset = build_dataset(dict(cfg), split)
    if index >= len(dataset):
        return []
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # a split: a Subset of the full set
        dataset, index = dataset.dataset, int(dataset.indices[index])
    positions = getattr(dataset, "positions", None)
    if positions is None:
        return []
    ya, xa, yb, xb = positions(index)
    m = int(dataset.mark_size)
    return [Mark("A", "#ff2d2d", ya, xa, m), Mark("B", "#2d6bff", yb, xb, m)]


def add_marks(fig: go.Figure, marks: Sequence[Mark], window_size: tuple[int, int] | int,
              image_size: tuple[int, int] | int) -> go.Figure:
    """Outline each mark (a white line under a coloured one, visible on any background) and label it
    in large type above its top-left corner, on every panel of a query-centric figure.

    Args:
        fig: a figure over the ``(h, w)`` patch grid (cell ``(y, x)`` spans ``y ± 0.5``, ``x ± 0.5``).
        marks: the marks, in image pixels.
        window_size: ``(h, w)`` of the grid.
        image_size: ``(H, W)`` pixels of the image the marks are in.
    """
    h, w = check_window_size("window_size", window_size)
    ih, iw = check_window_size("image_size", image_size)
    sy, sx = h / ih, w / iw  # grid cells per pixel
    panels = [(t.xaxis or "x", t.yaxis or "y") for t in fig.data if t.type in ("heatmap", "image", "contour")]
    panels = list(dict.fromkeys(panels))  # one per panel, in order
    for xr, yr in panels:
        for mk in marks:
            x0, x1 = mk.x * sx - 0.5, (mk.x + mk.size) * sx - 0.5
            y0, y1 = mk.y * sy - 0.5, (mk.y + mk.size) * sy - 0.5
            for color, width in (("white", 7), (mk.color, 3.5)):
                fig.add_shape(type="rect", xref=xr, yref=yr, x0=x0, x1=x1, y0=y0, y1=y1,
                              line={"color": color, "width": width})
            fig.add_annotation(text=f"<b>{mk.label}</b>", xref=xr, yref=yr, x=x0, y=y0, xanchor="left",
                               yanchor="bottom", showarrow=False, font={"size": 20, "color": "white"},
                               bgcolor=mk.color, bordercolor="white", borderwidth=2, borderpad=2)
    return fig


def attention_over_image(matrix: Any, query: int, window_size: tuple[int, int] | int, image: Any, *,
                         style: str = "veil", marks: Sequence[Mark] = (), title: str | None = None,
                         cols: int | None = None) -> go.Figure:
    """One query's attention drawn over the untouched input image, the marks outlined and labelled.

    Args:
        matrix: ``(N, N)`` or ``(H, N, N)`` attention with ``N = h * w``.
        query: query token ``i`` (row-major).
        window_size: ``(h, w)`` of the patch grid.
        image: the input picture ``(H, W, 3)`` uint8 or ``(C, H, W)``.
        style: ``"veil"`` (a veil, clear where attention is high: the image shows through unchanged
            there; a light fog over a dark picture, a dark veil over a light one), ``"contours"``
            (contour lines of the attention over the plain image) or ``"colour"`` (the colour map
            blended with the image, as :func:`relpos.experiments.visualize.query_centric_figure`
            draws it).
        marks: :class:`Mark` s to outline (pixels of ``image``).
        title: figure title.
        cols: panels per row.

    Returns:
        The figure; its heatmaps keep the values and the hover of ``query_centric_figure`` (invisible
        under contour lines), ``layout.meta["overlay"]`` names the style.
    """
    style = check_choice("style", style, OVERLAY_STYLES)
    h, w = check_window_size("window_size", window_size)
    arr = np.asarray(image)
    pixels = arr.shape[:2] if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) else arr.shape[-2:]
    if style == "colour":
        fig = viz.query_centric_figure(matrix, query, (h, w), image=image, title=title, cols=cols)
    else:
        fig = viz.query_centric_figure(matrix, query, (h, w), image=image, title=title, cols=cols, opacity=1.0)
        for shape in fig.layout.shapes:  # the query's outline, yellow: readable on the veil and by the marks
            shape.line.color = _QUERY_OUTLINE
        if style == "veil":
            dark = float(np.asarray(arr, dtype=np.float64).mean()) < (127.5 if arr.dtype == np.uint8 else 0.5)
            fig.update_layout(coloraxis_colorscale=FOG if dark else VEIL, coloraxis_cmin=0.0,
                              coloraxis_colorbar={"title": {"text": "attention<br>(clear = high)"},
                                                  "outlinewidth": 1, "outlinecolor": "#777"})
            for t in _heatmaps(fig):
                t.update(zmin=0.0)
        else:
            contours = []
            for t in _heatmaps(fig):
                t.update(opacity=0.0)  # kept for the hover and the values
                contours.append(go.Contour(
                    z=t.z, x=t.x, y=t.y, xaxis=t.xaxis, yaxis=t.yaxis, showscale=False, hoverinfo="skip",
                    colorscale=[[0, _CONTOUR_COLOR], [1, _CONTOUR_COLOR]], line={"width": 3}, ncontours=6,
                    contours={"coloring": "lines", "showlabels": True,
                              "labelfont": {"size": 13, "color": "white"}},
                ))
            fig.add_traces(contours)
            fig.update_layout(coloraxis_showscale=False)
    fig.update_layout(meta={"overlay": style})
    if marks:
        add_marks(fig, marks, (h, w), tuple(int(p) for p in pixels))
    return fig


# ----------------------------------------------------------------------------- 1D rows


def query_bars_figure(rows: Mapping[str, Any], query: int, *, title: str = "", value_label: str = "attention",
                      key_label: str = "key j") -> go.Figure:
    """One query's row(s) over a 1D sequence as bars over the key (a strip of one-cell heatmaps reads
    badly): one bar group per key, one colour per row (e.g. with and without the bias), one y axis.

    Args:
        rows: name -> the query's values over the ``L`` keys (``(L,)``); every row the same length.
        query: the query's position (a dotted line marks it).
        title: figure title.
        value_label, key_label: axis titles.
    """
    if not isinstance(rows, Mapping) or not rows:
        raise TypeError(f"rows must be a non-empty dict of name -> (L,) values, got {type(rows).__name__}")
    values = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in rows.items()}
    lengths = {v.size for v in values.values()}
    if len(lengths) != 1:
        raise ValueError(f"every row must have the same length, got lengths {sorted(lengths)}")
    n = lengths.pop()
    query = check_int("query", query, minimum=0, maximum=n - 1)
    keys = np.arange(n)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    traces = [go.Bar(x=keys, y=v, name=name, marker_color=colors[k % len(colors)],
                     hovertemplate=f"{name}<br>{key_label} = %{{x}} (offset i − j = {query} − %{{x}})<br>"
                     f"{value_label} = %{{y:.4g}}<extra></extra>")
              for k, (name, v) in enumerate(values.items())]
    fig = go.Figure(traces)
    fig.add_vline(x=query, line={"dash": "dot", "color": "black", "width": 2},
                  annotation_text=f"query {query}", annotation_position="top")
    fig.update_layout(title={"text": title, "x": 0.02}, barmode="group", height=360, hovermode="x unified",
                      xaxis={"title": {"text": key_label}, "dtick": 1 if n <= 40 else None},
                      yaxis={"title": {"text": value_label}, "zeroline": True},
                      legend={"orientation": "h", "y": 1.12})
    return fig


# ----------------------------------------------------------------------------- curves


def ema_smooth(values: Any, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0 = none, 0.99 = heavy).

    ``s_k = weight * s_{k-1} + (1 - weight) * y_k`` from ``s_{-1} = 0``, divided by
    ``1 - weight ** (k + 1)`` (so the first point is not pulled towards 0); non-finite values pass
    through unchanged and do not enter the average.
    """
    weight = check_float("weight", weight, minimum=0.0, maximum=1.0, max_inclusive=False)
    y = np.asarray(values, dtype=np.float64).ravel()
    out = y.copy()
    last, count = 0.0, 0
    for k, v in enumerate(y):
        if not math.isfinite(v):
            continue
        last = weight * last + (1.0 - weight) * v
        count += 1
        out[k] = last / (1.0 - weight**count)
    return out


def smoothed_curves_figure(runs: Mapping[str, Sequence[dict]], *, smoothing: float = 0.0,
                           title: str = "Training curves", uirevision: str = "curves") -> go.Figure:
    """:func:`relpos.experiments.visualize.training_curves_figure` with TensorBoard-style smoothing of
    the per-step train curves (:func:`ema_smooth`; the raw curve stays, faint, under each smoothed one;
    the evaluation points are left as measured) and a ``uirevision``, so a zoom survives the page's
    refresh while a run trains."""
    smoothing = check_float("smoothing", smoothing, minimum=0.0, maximum=1.0, max_inclusive=False)
    fig = viz.training_curves_figure(runs, title=title)
    if smoothing > 0:
        raws = []
        for t in fig.data:
            # Only the per-step curves (lines): the evaluation points are few and each is a measurement.
            if t.type == "scatter" and t.mode == "lines" and t.y is not None and len(t.y) >= 3:
                raws.append(go.Scatter(x=t.x, y=t.y, mode="lines", xaxis=t.xaxis, yaxis=t.yaxis, showlegend=False,
                                       hoverinfo="skip", opacity=0.25, line={"color": t.line.color, "width": 1}))
                t.update(y=ema_smooth(t.y, smoothing))
        fig = go.Figure(data=[*raws, *fig.data], layout=fig.layout)
        fig.update_layout(title_text=f"{title} (smoothed {smoothing:.2f}; faint: raw)")
    fig.update_layout(uirevision=uirevision)
    return fig


def has_diagnostics(runs: Mapping[str, Sequence[dict]], measures: Sequence[str] = DIAG_CURVES) -> bool:
    """Whether some run logged one of ``measures`` per epoch (only a relative bias logs them)."""
    return any(isinstance(r, dict) and f"diag/{m}" in r for recs in runs.values() for r in recs for m in measures)


def diagnostics_curves_figure(runs: Mapping[str, Sequence[dict]], *, measures: Sequence[str] = DIAG_CURVES,
                              title: str = "Bias diagnostics per epoch", cols: int = 4,
                              uirevision: str = "diagnostics") -> go.Figure:
    """The per-epoch ``diag/*`` series of ``metrics.jsonl`` (:func:`relpos.diagnostics.bias_diagnostics`'s
    summary, logged by training), one panel per measure (of ``measures`` that some run logged), one
    colour per run (as the training curves), ``cols`` panels per row.

    A run without a relative bias logs none: the figure then says so.
    """
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a dict of run name -> list of metric records, got {type(runs).__name__}")
    for m in measures:
        check_choice("measures[...]", m, tuple(DIAGNOSTIC_MEASURES))
    measures = [m for m in measures
                if any(isinstance(r, dict) and f"diag/{m}" in r for recs in runs.values() for r in recs)]
    layout, refs = core.grid_layout(measures or [""], cols=min(check_int("cols", cols), max(1, len(measures))),
                                    square=False, reverse_y=False, panel_px=230)
    layout["height"] = layout["height"] + 30
    traces = []
    for k, (name, records) in enumerate(runs.items()):
        color = viz._RUN_COLORS[k % len(viz._RUN_COLORS)]  # the training curves' palette
        epochs = [r for r in records if isinstance(r, dict) and r.get("kind", "epoch") == "epoch"]
        for p, m in enumerate(measures):
            pts = [(r.get("epoch"), r.get(f"diag/{m}")) for r in epochs]
            pts = [(x, y) for x, y in pts if isinstance(x, (int, float)) and isinstance(y, (int, float))]
            if not pts:
                continue
            xr, yr = refs[p]
            xs, ys = zip(*pts)
            traces.append(go.Scatter(x=np.asarray(xs), y=np.asarray(ys), mode="lines+markers", name=str(name),
                                     legendgroup=str(name), showlegend=p == 0, line={"color": color},
                                     xaxis=xr, yaxis=yr,
                                     hovertemplate=f"{name}<br>epoch %{{x}}<br>{m} = %{{y:.4g}}<extra></extra>"))
    for p, m in enumerate(measures):
        xname = "xaxis" if p == 0 else f"xaxis{p + 1}"
        yname = "yaxis" if p == 0 else f"yaxis{p + 1}"
        layout[xname]["title"] = {"text": "epoch"}
        layout[yname]["title"] = {"text": m}
    if not traces:
        layout["annotations"] = [{"text": "no diagnostics logged (only a relative bias has them)", "xref": "paper",
                                  "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
                                  "font": {"size": 16, "color": "gray"}}]
    layout["title"] = {"text": title, "x": 0.02}
    layout["uirevision"] = uirevision
    return go.Figure(data=traces, layout=layout)
