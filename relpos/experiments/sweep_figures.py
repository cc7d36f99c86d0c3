"""Plotly figures of a sweep: the leaderboard with error bars over seeds, and every member's curve.

Rows and curves in (:func:`relpos.experiments.leaderboard.leaderboard_rows` and
:func:`~relpos.experiments.leaderboard.sweep_curves`), ``go.Figure`` out; no streamlit here. One colour
per cell in both figures (:func:`cell_colors`), so a bar and its curves match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from relpos.experiments import _figure_core as core

__all__ = ["cell_colors", "leaderboard_figure", "sweep_curves_figure"]

_PALETTE = tuple(qualitative.D3) + tuple(qualitative.Dark24)


def cell_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour (``"#rrggbb"``) per cell label, in order; the palette repeats after 34 cells."""
    return {label: _PALETTE[k % len(_PALETTE)] for k, label in enumerate(labels)}


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _pct(value: float | None) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def leaderboard_figure(rows: Sequence[Mapping[str, Any]], colors: Mapping[str, str] | None = None, *,
                       title: str = "Best validation accuracy: mean ± std over seeds") -> go.Figure:
    """Bars of each cell's mean accuracy (in %), error bars of one sample std, a dot per seed.

    Args:
        rows: leaderboard rows in the order to draw (``label``, ``acc_mean``, ``acc_std``, ``accs``,
            ``n``, ``n_failed``, ``n_pending``).
        colors: label -> colour (default :func:`cell_colors` of the labels).
        title: figure title.

    Returns:
        A figure with one bar trace and one marker trace; each cell's tick label carries its mean ±
        std and n; a cell without a finished member has no bar and its label says why (pending, failed).
    """
    title = core.check_title(title)
    labels = [str(r["label"]) for r in rows]
    colors = dict(colors or cell_colors(labels))
    means = np.array([_pct(r["acc_mean"]) for r in rows], dtype=float)  # (C,)
    stds = np.array([0.0 if r["acc_std"] is None else _pct(r["acc_std"]) for r in rows], dtype=float)  # (C,)
    text = []
    for r in rows:
        if r["acc_mean"] is None:
            text.append("pending" if r["n_pending"] else "failed" if r["n_failed"] else "–")
        else:
            std = "" if r["acc_std"] is None else f" ± {_pct(r['acc_std']):.1f}"
            text.append(f"{_pct(r['acc_mean']):.1f}{std} (n={r['n']})")
    bars = go.Bar(
        x=labels, y=np.nan_to_num(means, nan=0.0), name="mean over seeds",
        marker={"color": [colors.get(label, _PALETTE[0]) for label in labels]},
        error_y={"type": "data", "array": stds, "visible": True, "color": "#333", "thickness": 1.5, "width": 6},
        text=text, textposition="none",  # the numbers go under the bars (tick labels): never under an error bar
        hovertemplate="%{x}<br>%{text}<extra></extra>",
    )
    dots_x = [str(r["label"]) for r in rows for _ in r["accs"]]
    dots_y = np.array([_pct(a) for r in rows for a in r["accs"]], dtype=float)  # (members,)
    dots = go.Scatter(
        x=dots_x, y=dots_y, mode="markers", name="one seed",
        marker={"color": "rgba(0, 0, 0, 0.7)", "size": 7, "symbol": "circle-open"},
        hovertemplate="%{x}<br>one seed: %{y:.2f}%<extra></extra>",
    )
    fig = go.Figure(data=[bars, dots])
    top = max(105.0, float(np.nanmax(np.append(means + stds, 0.0))) + 3.0)  # an error bar above 100 % stays in view
    fig.update_layout(
        title={"text": title, "x": 0.02}, height=440, margin={"l": 60, "r": 20, "t": 60, "b": 90},
        yaxis={"title": {"text": "best validation accuracy (%)"}, "range": [0, top]},
        xaxis={"type": "category", "tickvals": labels, "tickangle": 0,
               "ticktext": [f"<b>{a}</b><br>{b.replace(' (', '<br>(')}" for a, b in zip(labels, text)]},
        showlegend=False, bargap=0.35,
        plot_bgcolor="white", yaxis_gridcolor="#e5e5e5",
    )
    return fig


def _band(members: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, low, mean, high)`` over the members' curves at every x any of them logged, (X,) each."""
    xs = np.unique(np.concatenate([np.asarray(m["x"], dtype=float) for m in members])) if members else np.zeros(0)
    low, mean, high = (np.full(xs.shape, np.nan) for _ in range(3))
    for k, x in enumerate(xs):
        values = [float(np.asarray(m["y"])[np.asarray(m["x"]) == x][0]) for m in members if np.any(np.asarray(m["x"]) == x)]
        low[k], mean[k], high[k] = min(values), float(np.mean(values)), max(values)
    return xs, low, mean, high


def sweep_curves_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], colors: Mapping[str, str] | None = None,
                        *, title: str = "Every member's validation accuracy (band: min to max)"
                        ) -> go.Figure:
    """Every member's validation curve, one colour per cell, with the cell's mean and a min-max band.

    Args:
        curves: cell label -> members (``run``, ``seed``, ``x`` (E,), ``y`` (E,) accuracy in 0..1).
        colors: label -> colour (default :func:`cell_colors` of the labels).
        title: figure title.

    Returns:
        Per cell: a filled band (min..max over the seeds that logged each x), the mean (thick,
        in the legend) and each member (thin).
    """
    title = core.check_title(title)
    colors = dict(colors or cell_colors(list(curves)))
    traces = []
    for label, members in curves.items():
        members = [m for m in members if np.asarray(m["x"]).size]
        if not members:
            continue
        color = colors.get(label, _PALETTE[0])
        xs, low, mean, high = _band(members)
        if len(members) > 1:
            traces.append(go.Scatter(
                x=np.concatenate([xs, xs[::-1]]), y=100 * np.concatenate([high, low[::-1]]),
                fill="toself", fillcolor=_rgba(color, 0.18), line={"width": 0}, mode="lines",
                legendgroup=label, showlegend=False, hoverinfo="skip", name=f"{label} band",
            ))
        for m in members:
            traces.append(go.Scatter(
                x=np.asarray(m["x"], dtype=float), y=100 * np.asarray(m["y"], dtype=float), mode="lines",
                line={"color": _rgba(color, 0.45), "width": 1}, legendgroup=label, showlegend=False,
                name=f"{label} · seed {m['seed']}",
                hovertemplate=f"{label} · seed {m['seed']} ({m['run']})<br>step %{{x}}<br>%{{y:.2f}}%<extra></extra>",
            ))
        traces.append(go.Scatter(
            x=xs, y=100 * mean, mode="lines+markers", line={"color": color, "width": 3}, marker={"size": 5},
            legendgroup=label, name=f"{label} (n={len(members)})",
            hovertemplate=f"{label}: mean<br>step %{{x}}<br>%{{y:.2f}}%<extra></extra>",
        ))
    fig = go.Figure(data=traces)
    fig.update_layout(
        title={"text": title, "x": 0.02}, height=440, margin={"l": 60, "r": 20, "t": 60, "b": 50},
        xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": "validation accuracy (%)"}},
        legend={"orientation": "v"}, plot_bgcolor="white", xaxis_gridcolor="#e5e5e5", yaxis_gridcolor="#e5e5e5",
    )
    if not traces:
        fig.add_annotation(text="no validation accuracy logged yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font={"size": 16, "color": "gray"})
    return fig
