"""The figure of :mod:`relpos.experiments.stepthrough`: the formula's steps side by side.

Four panels over the keys of one query: ``QK^T/sqrt(d)``, ``+ B``, ``= QK^T/sqrt(d) + B`` and the
softmax. Step 1 shows the first, step 2 the next two, step 3 the softmax; a panel not reached yet
is drawn empty with the step that fills it. The three logit panels share one diverging colour axis
(they are added to each other, so one colour means one number in all three); the softmax has its
own, anchored at 0. With an alpha sweep, Plotly frames animate the bias, the sum and the softmax
from alpha = 0 to 5 (a play button and a slider; the colour axes hold their range over the sweep).

A 2D window gives heatmaps (numbers in the cells while the window has at most 64 cells), a 1D
sequence gives bar charts over the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from relpos._validation import check_int
from relpos.experiments import _figure_core as core

__all__ = ["PANEL_TITLES", "step_through_figure"]

#: The panels, left to right, and the step that shows each.
PANEL_TITLES: tuple[str, ...] = ("QKᵀ/√d", "+ B (bias)", "= QKᵀ/√d + B", "softmax")
_PANEL_STEP = (1, 2, 2, 3)
_KEYS = ("logits", "bias", "biased", "weights")
#: Most cells for which the values are written in the cells.
_MAX_TEXT_CELLS = 64
#: Pixels under the panels: their tick labels and axis titles, the colorbars, the play buttons, the slider.
_AXIS_TITLE_PX, _COLORBAR_PX, _BUTTONS_PX, _SLIDER_PX = 62, 78, 48, 80


def _ranges(steps: Mapping[str, Any], sweep: Mapping[str, Any] | None) -> tuple[tuple[float, float], float]:
    """The logit panels' symmetric range and the softmax's maximum, over the sweep when given."""
    logit_like = [np.asarray(steps[k]) for k in _KEYS[:3]]
    weights = [np.asarray(steps["weights"])]
    if sweep is not None:
        logit_like += [np.asarray(sweep[k]) for k in ("bias", "biased")]
        weights.append(np.asarray(sweep["weights"]))
    lo, hi = core.color_range(np.concatenate([a.reshape(-1) for a in logit_like]), True, 0.0)
    wmax = float(max(a.max() for a in weights))
    return (lo, hi), max(wmax, 1e-6)


def _panel(values: np.ndarray, k: int, step: int, refs: tuple[str, str], one_d: bool, text: bool) -> Any:
    """Panel ``k`` (a heatmap, or a bar chart for a sequence); empty until ``step`` reaches it."""
    shown = step >= _PANEL_STEP[k]
    xr, yr = refs
    axis = "coloraxis2" if k == 3 else "coloraxis"
    fmt = ".3f" if k == 3 else ".2f"
    if one_d:
        y = values.reshape(-1) if shown else np.zeros(values.size, np.float32)
        return go.Bar(
            x=np.arange(values.size), y=y, xaxis=xr, yaxis=yr, name=PANEL_TITLES[k], showlegend=False,
            marker={"color": "#f58518" if k == 3 else "#4c78a8"},
            hovertemplate=f"key j = %{{x}}<br>value = %{{y:{fmt}}}<extra></extra>",
        )  # fmt: skip
    z = values if shown else np.full(values.shape, np.nan, np.float32)
    return go.Heatmap(
        z=z, coloraxis=axis, xaxis=xr, yaxis=yr, name=PANEL_TITLES[k],
        texttemplate=f"%{{z:{fmt}}}" if text and shown else None, textfont={"size": 10},
        hovertemplate=f"key at (y, x) = (%{{y}}, %{{x}})<br>value = %{{z:{fmt}}}"
                      f"<extra>{PANEL_TITLES[k]}</extra>",
    )  # fmt: skip


def step_through_figure(
    steps: Mapping[str, Any],
    step: int = 3,
    *,
    sweep: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """The formula's steps for one query (:func:`relpos.experiments.stepthrough.step_through`).

    Args:
        steps: ``step_through``'s dict (``grid``, ``query_yx`` and the ``(h, w)`` maps).
        step: 1 (logits), 2 (+ bias) or 3 (softmax): the panels up to it are filled.
        sweep: :func:`relpos.experiments.stepthrough.alpha_sweep`'s dict of the same query: with
            ``step`` 3 the figure gets one animation frame per alpha, a play button and a slider.
        alpha: the alpha of ``steps`` (the slider starts there).
        title: figure title (default names the query).

    Returns:
        The figure: traces 0-3 are the panels (heatmaps, or bars for a 1D sequence).
    """
    step = check_int("step", step, maximum=3)
    h, w = steps["grid"]
    qy, qx = steps["query_yx"]
    one_d = h == 1
    maps = [np.asarray(steps[k], dtype=np.float32).reshape(h, w) for k in _KEYS]  # 4 x (h, w)
    if title is None:
        where = "" if one_d else f" at (y, x) = ({qy}, {qx})"
        title = f"softmax(QKᵀ/√d + B) for one query: i = {steps['query']}{where}"
    titles = [t if step >= s else f"{t} (step {s})" for t, s in zip(PANEL_TITLES, _PANEL_STEP)]
    if one_d:
        layout, refs = core.grid_layout(titles, cols=2, square=False, reverse_y=False, x_title="key j",
                                        panel_px=320)
    else:
        layout, refs = core.grid_layout(titles, cols=4, x_title="x", y_title="y", cells=(h, w), panel_px=230)
        for k in range(4):
            xname, yname = ("xaxis", "yaxis") if k == 0 else (f"xaxis{k + 1}", f"yaxis{k + 1}")
            layout[xname]["range"] = [-0.5, w - 0.5]
            layout[yname]["range"] = [h - 0.5, -0.5]
            layout[yname].pop("autorange", None)
    text = h * w <= _MAX_TEXT_CELLS
    traces = [_panel(maps[k], k, step, refs[k], one_d, text) for k in range(4)]
    (lo, hi), wmax = _ranges(steps, sweep if step == 3 else None)
    if one_d:  # bars: the three logit panels share one y range, the softmax starts at 0
        for k in range(4):
            yname = "yaxis" if k == 0 else f"yaxis{k + 1}"
            layout[yname]["range"] = [0.0, wmax * 1.05] if k == 3 else [lo, hi]
    else:  # two horizontal colorbars under the panels: one under the three logit panels, one under softmax
        below = _Below(layout)
        y = below.take(_COLORBAR_PX)
        x_logit = (layout["xaxis"]["domain"][0] + layout["xaxis3"]["domain"][1]) / 2
        x_soft = sum(layout["xaxis4"]["domain"]) / 2
        layout["coloraxis"] = {**core.coloraxis_layout("RdBu_r", lo, hi, "logit"), "colorbar": _hbar(
            "logit (the three panels on the left)", x_logit, y, 0.6)}
        layout["coloraxis2"] = {**core.coloraxis_layout("Viridis", 0.0, wmax, "weight"), "colorbar": _hbar(
            "weight", x_soft, y, 0.22)}
        below.finish()
    layout["title"] = {"text": title, "x": 0.02}
    shapes = []
    if not one_d:  # the query's own cell, outlined in every panel
        for xr, yr in refs:
            shapes.append({"type": "rect", "xref": xr, "yref": yr, "x0": qx - 0.5, "x1": qx + 0.5,
                           "y0": qy - 0.5, "y1": qy + 0.5, "line": {"color": "black", "width": 3}})
    layout["shapes"] = shapes
    fig = go.Figure(data=traces, layout=layout)
    if sweep is not None and step == 3:
        _add_alpha_frames(fig, sweep, one_d, text, refs, alpha)
    return fig


def _add_alpha_frames(fig: go.Figure, sweep: Mapping[str, Any], one_d: bool, text: bool,
                      refs: list[tuple[str, str]], alpha: float | None) -> None:
    """One frame per alpha (traces 1-3 change), a play button and a slider under the panels."""
    alphas = np.asarray(sweep["alphas"], dtype=np.float32)
    frames = []
    for a, values in enumerate(alphas):
        data = [_panel(np.asarray(sweep[key][a], dtype=np.float32), k, 3, refs[k], one_d, text)
                for k, key in ((1, "bias"), (2, "biased"), (3, "weights"))]
        frames.append(go.Frame(data=data, traces=[1, 2, 3], name=f"{values:g}"))
    fig.frames = frames
    active = int(np.abs(alphas - (alpha if alpha is not None else alphas[0])).argmin())
    play = {"frame": {"duration": 250, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}
    below = _Below(fig.layout.to_plotly_json())
    y_buttons = below.take(_BUTTONS_PX)
    y_slider = below.take(_SLIDER_PX)
    below.finish()
    fig.update_layout(
        updatemenus=[{
            "type": "buttons", "direction": "left", "x": 0.0, "y": y_buttons, "xanchor": "left",
            "yanchor": "top", "showactive": False,
            "buttons": [{"label": "▶ play α 0 → 5", "method": "animate", "args": [None, play]},
                        {"label": "❚❚ pause", "method": "animate",
                         "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}]}],
        }],
        sliders=[{
            "active": active, "x": 0.0, "y": y_slider, "len": 1.0, "xanchor": "left", "yanchor": "top",
            "currentvalue": {"prefix": "α = "},
            "steps": [{"label": f.name, "method": "animate",
                       "args": [[f.name], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                           "transition": {"duration": 0}}]} for f in frames],
        }],
        height=below.layout["height"], margin=below.layout["margin"],
    )  # fmt: skip


class _Below:
    """Rows of pixels taken under the plot area (below the axis titles), in paper units: the figure
    grows by what is taken, so the panels keep their size."""

    def __init__(self, layout: dict) -> None:
        self.layout = layout
        margin = layout["margin"]
        self.paper_px = layout["height"] - margin["t"] - margin["b"]  # the plot area's height
        self.used = max(_AXIS_TITLE_PX, margin["b"])  # below what earlier rows took

    def take(self, px: int) -> float:
        """The paper ``y`` of the top of the next ``px`` pixels."""
        y = -self.used / self.paper_px
        self.used += px
        return y

    def finish(self) -> None:
        extra = max(0, self.used - self.layout["margin"]["b"])
        self.layout["margin"] = {**self.layout["margin"], "b": self.layout["margin"]["b"] + extra}
        self.layout["height"] = self.layout["height"] + extra


def _hbar(title: str, x: float, y: float, length: float) -> dict:
    """A horizontal colorbar centred at paper ``x``, its top at paper ``y``."""
    return {"orientation": "h", "x": x, "xanchor": "center", "y": y, "yanchor": "top", "len": length,
            "thickness": 14, "title": {"text": title, "side": "top"}}
