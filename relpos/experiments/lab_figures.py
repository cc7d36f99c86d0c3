"""Plotly figures of the labs: accuracy against grid, bars over seeds, and the attention of one image.

Summaries in (:func:`relpos.experiments.labs.summarize_results` rows, ``results.csv`` rows), ``go.Figure``
out; no streamlit here. Accuracy is a fraction (0..1) in our figures, as in ``results.csv``; the
papers' figures keep their own unit (top-1 %). One colour per scheme (:func:`scheme_colors`).

* :func:`transfer_figure`: accuracy against the new grid (x: its ratio to the training grid), one line
  per scheme with a band from the lowest to the highest seed, dashed after fine-tuning;
  :func:`paper_transfer_figure` draws Swin V2's Table 1 on the same x axis.
* :func:`bars_figure`: grouped bars (mean over seeds, error bar one sample std, a dot per seed), for
  the shift lab (seen vs unseen region per scheme) and the ablation (per scheme and dataset).
* :func:`shift_attention_figure`: the input image, then one query's attention in each model on one
  shared colour scale, with the marks and the trained region drawn on every panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from relpos.experiments import _figure_core as core
from relpos.experiments.lab_report import PAPER_RESULTS
from relpos.experiments.lab_views import eval_grid

__all__ = [
    "MARK_COLORS",
    "bars_figure",
    "paper_transfer_figure",
    "scheme_colors",
    "shift_attention_figure",
    "transfer_figure",
]

_PALETTE = tuple(qualitative.D3) + tuple(qualitative.Dark24)
_GRID = "#e5e5e5"
#: Outline colours of the relational task's marks (A is drawn in the red channel, B in the blue one).
MARK_COLORS: Mapping[str, str] = {"A": "#ff4b4b", "B": "#4b8bff"}


def scheme_colors(schemes: Sequence[str]) -> dict[str, str]:
    """One colour (``"#rrggbb"``) per scheme, in order; the palette repeats after 34 schemes."""
    return {s: _PALETTE[k % len(_PALETTE)] for k, s in enumerate(dict.fromkeys(schemes))}


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _layout(fig: go.Figure, title: str, height: int, **axes: Any) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.02}, height=height, plot_bgcolor="white",
                      margin={"l": 60, "r": 20, "t": 70, "b": 60}, **axes)
    fig.update_xaxes(gridcolor=_GRID)
    fig.update_yaxes(gridcolor=_GRID)
    return fig


def transfer_figure(
    summary: Sequence[Mapping[str, Any]], train: tuple[int, int], *, colors: Mapping[str, str] | None = None,
    title: str = "Ours: accuracy at larger grids<br><sup>without fine-tuning (dashed: after it); band: "
                 "lowest to highest seed</sup>",
) -> go.Figure:
    """Accuracy against the grid a model is moved to, one line per scheme.

    Args:
        summary: summary rows of a transfer lab (``eval`` ``grid=8x8`` or ``grid=8x8/finetuned``).
        train: the training grid ``(gh, gw)``: x is each grid's side over its side.
        colors: scheme -> colour (default :func:`scheme_colors` of the schemes); pass the same to
            :func:`paper_transfer_figure` so a scheme has one colour in both.
        title: figure title.

    Returns:
        Per scheme: a filled band from ``min`` to ``max`` over the seeds (when more than one), the
        mean (solid, markers) and, if any, the mean after fine-tuning (dashed). Hover: mean ± std,
        seeds and images.
    """
    title = core.check_title(title)
    if train[0] < 1:
        raise ValueError(f"train = {train} is not allowed: a grid (gh, gw) with gh >= 1")
    colors = {**scheme_colors([s["scheme"] for s in summary]), **(colors or {})}
    grids = sorted({g[:2] for s in summary if (g := eval_grid(s["eval"]))})
    traces = []
    for scheme in dict.fromkeys(s["scheme"] for s in summary):
        color = colors[scheme]
        for tuned in (False, True):
            items = sorted(((g, s) for s in summary if s["scheme"] == scheme and (g := eval_grid(s["eval"]))
                            and g[2] == tuned), key=lambda t: t[0])
            if not items:
                continue
            x = np.array([g[0] / train[0] for g, _ in items], dtype=float)  # (G,)
            mean = np.array([s["mean"] for _, s in items], dtype=float)  # (G,)
            name = scheme + (", fine-tuned" if tuned else "")
            if not tuned and any(s["n"] > 1 for _, s in items):
                low = np.array([s["min"] for _, s in items], dtype=float)
                high = np.array([s["max"] for _, s in items], dtype=float)
                traces.append(go.Scatter(
                    x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]), fill="toself",
                    fillcolor=_rgba(color, 0.18), line={"width": 0}, mode="lines", hoverinfo="skip",
                    legendgroup=scheme, showlegend=False, name=f"{scheme} band"))
            text = [f"{g[0]}x{g[1]}: {s['mean']:.3f}" + ("" if s["std"] is None else f" ± {s['std']:.3f}")
                    + f" ({s['n']} seed{'s' if s['n'] != 1 else ''}, {s['images']} images; "
                    f"min {s['min']:.3f}, max {s['max']:.3f})" for g, s in items]
            traces.append(go.Scatter(
                x=x, y=mean, mode="lines+markers", name=name, legendgroup=scheme, text=text,
                line={"color": color, "width": 3 if not tuned else 2, "dash": "dash" if tuned else "solid"},
                marker={"size": 8}, hovertemplate=f"{name}<br>%{{text}}<extra></extra>"))
    fig = go.Figure(data=traces)
    ticks = [g[0] / train[0] for g in grids]
    return _layout(
        fig, title, 420,
        xaxis={"title": {"text": f"new grid (× the training grid {train[0]}x{train[1]})"},
               "tickvals": ticks, "ticktext": [f"{g[0]}x{g[1]}<br>{r:g}×" for g, r in zip(grids, ticks)]},
        yaxis={"title": {"text": "accuracy (fraction of the images)"}, "range": [0, 1.04]},
    )


def paper_transfer_figure(*, colors: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Swin V2's Table 1 (:data:`relpos.experiments.lab_report.PAPER_RESULTS`) against the window's ratio
    to the training window 8: top-1 % without fine-tuning (solid) and after it (dashed); ``colors``:
    scheme -> colour (as in :func:`transfer_figure`)."""
    p = PAPER_RESULTS["transfer"]
    if title is None:
        title = f"The paper: Swin V2, Table 1<br><sup>{p['source']}; dashed: after fine-tuning</sup>"
    title = core.check_title(title)
    colors = {**scheme_colors(list(p["rows"])), **(colors or {})}
    traces = []
    x = np.array([1.0] + [w / p["train_window"] for w in p["windows"]], dtype=float)  # (W + 1,)
    for scheme, (label, trained, by_window) in p["rows"].items():
        for k, suffix in ((0, ""), (1, ", fine-tuned")):
            y = np.array([trained] + [by_window[w][k] for w in p["windows"]], dtype=float)  # (W + 1,)
            traces.append(go.Scatter(
                x=x, y=y, mode="lines+markers", name=f"{scheme}{suffix}", legendgroup=scheme,
                line={"color": colors[scheme], "width": 3 if k == 0 else 2, "dash": "dash" if k else "solid"},
                hovertemplate=f"{label}{suffix}<br>window %{{customdata}}: %{{y:.1f}} %<extra></extra>",
                customdata=np.array([p["train_window"], *p["windows"]])))
    labels = [f"{p['train_window']}<br>1×"] + [f"{w}<br>{w / p['train_window']:g}×" for w in p["windows"]]
    return _layout(
        go.Figure(data=traces), title, 420,
        xaxis={"title": {"text": f"window (× the training window {p['train_window']})"}, "tickvals": x,
               "ticktext": labels},
        yaxis={"title": {"text": "ImageNet-1K top-1 (%)"}},
    )


def bars_figure(
    summary: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]] = (), *,
    groups: Sequence[str] | None = None, schemes: Sequence[str] | None = None,
    group_names: Mapping[str, str] | None = None, title: str = "Accuracy: mean over seeds ± one sample std",
    chance: float | None = None,
) -> go.Figure:
    """Grouped bars: x the schemes, one bar per evaluation (group), error bar one sample std, a dot per seed.

    Args:
        summary: lab summary rows (``scheme``, ``eval``, ``n``, ``mean``, ``std``, ``images``).
        rows: the ``results.csv`` rows (``scheme``, ``eval``, ``seed``, ``accuracy``): the dots.
        groups: the evaluations in order (default: first seen); e.g. ``["region=seen", "region=unseen"]``.
        schemes: the schemes in order (default: first seen); unknown ones are appended.
        group_names: how each evaluation reads in the legend (default: itself).
        title: figure title.
        chance: draw a dotted line at this accuracy (e.g. 0.25 for four classes).
    """
    title = core.check_title(title)
    groups = list(groups) if groups is not None else list(dict.fromkeys(s["eval"] for s in summary))
    seen = list(dict.fromkeys(s["scheme"] for s in summary))
    order = [s for s in (schemes or []) if s in seen] + [s for s in seen if s not in (schemes or [])]
    palette = scheme_colors(groups)
    by = {(s["scheme"], s["eval"]): s for s in summary}
    traces: list[Any] = []
    for ev in groups:
        cells = [by.get((scheme, ev)) for scheme in order]
        name = (group_names or {}).get(ev, ev)
        mean = np.array([np.nan if c is None else c["mean"] for c in cells], dtype=float)  # (S,)
        std = np.array([0.0 if c is None or c["std"] is None else c["std"] for c in cells])  # (S,)
        text = ["" if c is None else f"{c['mean']:.3f}" + ("" if c["std"] is None else f" ± {c['std']:.3f}")
                for c in cells]
        hover = ["" if c is None else f"{c['n']} seed{'s' if c['n'] != 1 else ''}, {c['images']} images"
                 for c in cells]
        traces.append(go.Bar(
            x=order, y=mean, name=name, offsetgroup=ev, legendgroup=ev, marker={"color": palette[ev]},
            error_y={"type": "data", "array": std, "visible": True, "color": "#333", "thickness": 1.5,
                     "width": 5},
            text=text, textposition="inside", insidetextanchor="start", textangle=0, customdata=hover,
            hovertemplate=f"%{{x}} · {name}<br>%{{text}}<br>%{{customdata}}<extra></extra>"))
        dots = [r for r in rows if r["eval"] == ev and r["scheme"] in order and r.get("accuracy") is not None]
        if dots:
            traces.append(go.Scatter(
                x=[r["scheme"] for r in dots], y=np.array([r["accuracy"] for r in dots], dtype=float),
                mode="markers", offsetgroup=ev, legendgroup=ev, showlegend=False, name=f"{name}: one seed",
                marker={"color": "rgba(0, 0, 0, 0.75)", "size": 7, "symbol": "circle-open"},
                customdata=np.array([r["seed"] for r in dots]),
                hovertemplate=f"%{{x}} · {name}<br>seed %{{customdata}}: %{{y:.3f}}<extra></extra>"))
    fig = go.Figure(data=traces)
    if chance is not None:
        fig.add_hline(y=float(chance), line={"dash": "dot", "color": "gray"},
                      annotation_text=f"chance {chance:g}", annotation_position="bottom right")
    return _layout(fig, title, 440, barmode="group", scattermode="group", bargap=0.3,
                   xaxis={"title": {"text": "position scheme"}, "type": "category", "categoryorder": "array",
                          "categoryarray": order},
                   yaxis={"title": {"text": "accuracy (fraction of the images)"}, "range": [0, 1.08]},
                   legend={"orientation": "h", "y": -0.2})


def _rect(xref: str, yref: str, y0: float, x0: float, side: float, color: str, dash: str = "solid") -> dict:
    return {"type": "rect", "xref": xref, "yref": yref, "x0": x0 - 0.5, "x1": x0 + side - 0.5, "y0": y0 - 0.5,
            "y1": y0 + side - 0.5, "line": {"color": color, "width": 3, "dash": dash}}


def shift_attention_figure(
    image: Any,
    maps: Mapping[str, Any],
    marks: Sequence[int],
    *,
    mark_size: int,
    patch: int,
    query: tuple[int, int],
    seen_cols: tuple[int, int] | None = None,
    title: str = "One image of the unseen region: where the query patch looks",
) -> go.Figure:
    """The input image, then each model's attention of one query patch, on one shared colour scale.

    Args:
        image: the input ``(H, W, 3)`` uint8 (or ``(C, H, W)`` / ``(H, W)`` numbers, min-max scaled).
        maps: panel title -> ``(gh, gw)`` attention of the query over the patches (e.g. the absolute
            and the relative model); every map shares one colour axis (same zmin, zmax).
        marks: ``(y_A, x_A, y_B, x_B)`` top-left pixels of the two marks.
        mark_size: the side of a mark in pixels.
        patch: the patch side in pixels (a map cell covers ``patch x patch`` pixels).
        query: ``(y, x)`` patch of the query, outlined (dashed) on the maps.
        seen_cols: ``[x0, x1)`` pixel columns of the training region: a dashed line on every panel
            at its edge, the columns outside shaded on the input.
        title: figure title.

    Returns:
        A figure with ``1 + len(maps)`` square panels in pixel coordinates.
    """
    title = core.check_title(title)
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # (C, H, W) -> (H, W, C)
    if img.ndim == 2:
        img = img[..., None]  # (H, W, 1)
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = ((img - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)
    img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]  # (H, W, 3)
    size_y, size_x = img.shape[:2]
    grids = {k: core.to_numpy(f"maps[{k!r}]", v, dtype=np.float64) for k, v in maps.items()}
    for k, g in grids.items():
        if g.ndim != 2 or g.shape[0] * patch != size_y or g.shape[1] * patch != size_x:
            raise ValueError(f"maps[{k!r}] has shape {g.shape}: expected the patch grid "
                             f"({size_y // patch}, {size_x // patch}) of the {size_y}x{size_x} image")
    zmax = max((float(g.max()) for g in grids.values()), default=1.0) or 1.0
    titles = ["input (A red, B blue)", *grids]
    layout, refs = core.grid_layout(titles, cols=len(titles), x_title="x (pixels)", y_title="y (pixels)",
                                    panel_px=300)
    traces: list[Any] = [go.Image(z=img, xaxis=refs[0][0], yaxis=refs[0][1], hoverinfo="skip")]
    centers_y = np.arange(size_y // patch) * patch + (patch - 1) / 2  # (gh,) pixel centres of the cells
    centers_x = np.arange(size_x // patch) * patch + (patch - 1) / 2  # (gw,)
    for (name, g), (xr, yr) in zip(grids.items(), refs[1:]):
        traces.append(go.Heatmap(
            z=g, x=centers_x, y=centers_y, coloraxis="coloraxis", xaxis=xr, yaxis=yr,
            hovertemplate=f"{name}<br>key patch centred at pixel (%{{y}}, %{{x}})<br>"
                          "weight %{z:.3f}<extra></extra>"))
    shapes = []
    for k, (xr, yr) in enumerate(refs):
        for label, (y0, x0) in (("A", marks[:2]), ("B", marks[2:4])):
            shapes.append(_rect(xr, yr, y0, x0, mark_size, MARK_COLORS[label]))
        if k:
            shapes.append(_rect(xr, yr, query[0] * patch, query[1] * patch, patch, "#ffd400", "dot"))
        if seen_cols is not None:
            for lo, hi in ((0, seen_cols[0]), (seen_cols[1], size_x)):
                if hi > lo:
                    if k == 0:  # shade the unseen columns of the input only (never tint a map's values)
                        shapes.append({"type": "rect", "xref": xr, "yref": yr, "x0": lo - 0.5, "x1": hi - 0.5,
                                       "y0": -0.5, "y1": size_y - 0.5, "line": {"width": 0},
                                       "fillcolor": "rgba(255, 255, 255, 0.12)"})
                    shapes.append({"type": "line", "xref": xr, "yref": yr, "x0": (lo if lo else hi) - 0.5,
                                   "x1": (lo if lo else hi) - 0.5, "y0": -0.5, "y1": size_y - 0.5,
                                   "line": {"color": "#ffd400", "width": 2, "dash": "dash"}})
        xname, yname = ("xaxis", "yaxis") if k == 0 else (f"xaxis{k + 1}", f"yaxis{k + 1}")
        layout[xname]["range"] = [-0.5, size_x - 0.5]
        layout[yname]["range"] = [size_y - 0.5, -0.5]
        layout[yname].pop("autorange", None)
        layout[xname]["showgrid"] = layout[yname]["showgrid"] = False
    layout["shapes"] = shapes
    layout["coloraxis"] = core.coloraxis_layout([[0.0, "#000000"], [1.0, "#ffffff"]], 0.0, zmax, "attention")
    note = "; outside the dashed line: columns never holding a mark in training" if seen_cols else ""
    layout["title"] = {"text": f"{title}<br><sup>one colour scale for every map (0 to {zmax:.3f}); dotted "
                               f"yellow: the query patch{note}</sup>", "x": 0.02}
    return go.Figure(data=traces, layout=layout)
