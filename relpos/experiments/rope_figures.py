"""Figures of a rotary position embedding (RoPE): its position kernel and its learned mixed frequencies.

RoPE has no bias table; its equivalent is the *position kernel*: for fixed contents the logit a query
gives a key depends only on their offset (:meth:`relpos.rotary.RotaryPositionEmbedding.position_kernel`,
contents from :mod:`relpos.rope_probe`). :func:`position_kernel_figure` draws it exactly like a 2D
bias table (the same offset-grid heatmaps, one per head, through
:func:`relpos.experiments.visualize.visualize_bias_table`), or as curves over the offsets for a 1D
rotation. :func:`mixed_frequencies_figure` draws RoPE-Mixed's learned frequencies: each channel pair
of a head is a wave vector ``(f_x, f_y)`` (its stripes run across that direction, its length is how
fast it turns per patch), before and after training on one shared scale.

Tensors in, ``go.Figure`` out; no streamlit. Shape legend: ``H`` heads, ``P`` channel pairs
(``head_dim // 2``), ``(h, w)`` the patch grid, ``L`` a sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from relpos._validation import check_choice
from relpos.experiments import _figure_core as core
from relpos.experiments import figure_compare
from relpos.experiments import visualize as viz

__all__ = [
    "FREQUENCIES_CAPTION",
    "KERNEL_VALUE_LABEL",
    "kernel_caption",
    "kernel_table",
    "mixed_frequencies_figure",
    "position_kernel_figure",
    "share_kernel_scale",
]

#: What a kernel's values are: the unscaled dot product of the rotated query and key.
KERNEL_VALUE_LABEL = "q·k"
_DIRECTION_WORDS = {
    "ones": "all-ones contents (every channel equal, unit length)",
    "random": "a random unit content per head (seeded)",
    "mean": "the model's mean query and key of this layer on the shown input (their own lengths)",
}
#: What the mixed-frequency figure shows.
FREQUENCIES_CAPTION = (
    "Each dot is one channel pair of a head: the pair turns by the angle x·f_x + y·f_y at patch (y, x), "
    "so (f_x, f_y) is a wave vector: the pair's stripes run across its direction, and the longer it is, "
    "the faster the pair turns from one patch to the next. Hollow grey: before training (RoPE-Mixed's "
    "init: two perpendicular spokes per head at a random angle); red: after; a line joins each pair's two "
    "dots. Every panel has the same axes."
)


def kernel_caption(direction: str) -> str:
    """The sentence under a position kernel drawn for content ``direction`` ("ones", "random", "mean")."""
    words = _DIRECTION_WORDS[check_choice("direction", direction, tuple(_DIRECTION_WORDS))]
    return (
        "The position kernel: the logit a query would give a key at offset (Δy, Δx) if both carried this "
        f"content ({words}). RoPE has no table; this is its equivalent: with the content fixed, the rotated "
        "q·k depends only on the offset. Values are q·k before attention's 1/√d scale; the centre cell is "
        "offset (0, 0)."
    )


def kernel_table(kernel: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A kernel as a bias table: ``(T, H)`` and the geometry ``visualize_bias_table`` takes.

    Args:
        kernel: ``(H, 2h-1, 2w-1)`` (2D) or ``(H, 2L-1)`` (1D), e.g. ``rope.position_kernel(u)``.

    Returns:
        ``(table, {"window_size": (h, w)} or {"seq_len": L})`` with ``table[r, head]`` the kernel at
        table row ``r = (Δy + h - 1)(2w - 1) + (Δx + w - 1)`` (1D: ``Δ + L - 1``).
    """
    k = core.to_numpy("kernel", kernel)
    if k.ndim not in (2, 3) or any(s % 2 == 0 for s in k.shape[1:]):
        raise ValueError(
            f"kernel must have shape (H, 2h-1, 2w-1) or (H, 2L-1) (odd sides), got {tuple(k.shape)}"
        )
    geometry = ({"window_size": ((k.shape[1] + 1) // 2, (k.shape[2] + 1) // 2)} if k.ndim == 3
                else {"seq_len": (k.shape[1] + 1) // 2})
    return k.reshape(k.shape[0], -1).T, geometry  # (H, T) -> (T, H)


def position_kernel_figure(kernel: Any, *, title: str = "Position kernel", value_label: str = KERNEL_VALUE_LABEL,
                           cols: int | None = None) -> go.Figure:
    """The position kernel per head as the offset grid of a 2D table (curves over offsets in 1D).

    Args:
        kernel: ``(H, 2h-1, 2w-1)`` or ``(H, 2L-1)`` (:func:`kernel_table`).
        title: figure title.
        value_label: what a value is (colorbar title and hover; default ``"q·k"``).
        cols: panels per row.

    Returns:
        The figure: grid cell ``(Δy, Δx)`` of head ``h`` shows ``kernel[h, Δy + h - 1, Δx + w - 1]``,
        on a diverging scale centred at 0; ``layout.meta["kind"] == "position_kernel"``.
    """
    table, geometry = kernel_table(kernel)
    fig = viz.visualize_bias_table(table, title=title, cmap="coolwarm", cols=cols, **geometry)
    for trace in fig.data:  # the table builder's words, said for a kernel
        tpl = (trace.hovertemplate or "").replace("bias = ", f"{value_label} = ")
        trace.hovertemplate = tpl.replace("table row r", "row r (as in a 2D table)")
    if "window_size" in geometry:
        fig.update_layout(coloraxis_colorbar_title_text=value_label)
    else:
        fig.update_layout(yaxis_title_text=value_label)
    fig.update_layout(meta={"kind": "position_kernel", "value_label": value_label})
    return fig


def share_kernel_scale(figs: Sequence[go.Figure], *, per_panel: bool = False) -> None:
    """One scale for several kernel figures, centred at 0: the colour axis of offset grids
    (:func:`relpos.experiments.figure_compare.share_color_axis`), the y axis of 1D curves."""
    figs = list(figs)
    curves = [f for f in figs if not any(t.type == "heatmap" for t in f.data)]
    figure_compare.share_color_axis([f for f in figs if f not in curves], per_panel=per_panel, diverging=True)
    if per_panel or len(curves) < 2:
        return
    top = max(float(np.max(np.abs(np.asarray(t.y, dtype=float)))) for f in curves for t in f.data) or 1.0
    for f in curves:
        f.update_layout(yaxis_range=[-1.05 * top, 1.05 * top])


def _frequencies(name: str, value: Any) -> np.ndarray:
    f = core.to_numpy(name, value)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, H, P) (RoPE-Mixed freqs), got {tuple(f.shape)}")
    return f


def mixed_frequencies_figure(learned: Any, initial: Any = None, *, title: str = "Mixed frequencies",
                             cols: int | None = None) -> go.Figure:
    """RoPE-Mixed's frequencies per head in the ``(f_x, f_y)`` plane, before and after training.

    Args:
        learned: ``(2, H, P)`` ``freqs`` of one layer (``[0]`` multiplies the column ``x``, ``[1]``
            the row ``y``), e.g. :func:`relpos.rope_probe.mixed_frequencies` of a checkpoint's model.
        initial: the same layer before training ``(2, H, P)`` (e.g. of a fresh model with the same
            config and seed), or None.
        title: figure title.
        cols: panels per row.

    Returns:
        One panel per head; traces per head: the initial dots (if given), the lines joining each pair's
        two dots, the learned dots. Every panel has the same square axes, symmetric about 0.
    """
    title = core.check_title(title)
    fl = _frequencies("learned", learned)
    fi = None if initial is None else _frequencies("initial", initial)
    if fi is not None and fi.shape != fl.shape:
        raise ValueError(f"initial {tuple(fi.shape)} and learned {tuple(fl.shape)} must have the same shape")
    heads, pairs = fl.shape[1], fl.shape[2]
    both = fl if fi is None else np.concatenate([fl, fi], axis=1)
    top = 1.08 * (float(np.max(np.abs(both))) or 1.0)
    titles = [f"head {h}" for h in range(heads)] if heads > 1 else [""]
    layout, refs = core.grid_layout(titles, cols=cols, square=True, reverse_y=False,
                                    x_title="f_x (per column)", y_title="f_y (per row)")
    for k in range(heads):
        x_name, y_name = ("xaxis", "yaxis") if k == 0 else (f"xaxis{k + 1}", f"yaxis{k + 1}")
        layout[x_name].update(range=[-top, top], zeroline=True)
        layout[y_name].update(range=[-top, top], zeroline=True)
    pair_ids = np.arange(pairs)
    tpl = "pair %{customdata}<br>(f_x, f_y) = (%{x:.3g}, %{y:.3g})"
    traces = []
    for h, (xr, yr) in enumerate(refs):
        if fi is not None:
            traces.append(go.Scatter(
                x=fi[0, h], y=fi[1, h], customdata=pair_ids, mode="markers", xaxis=xr, yaxis=yr,
                name="before training", legendgroup="before", showlegend=h == 0,
                marker={"symbol": "circle-open", "color": "#7f7f7f", "size": 8},
                hovertemplate=tpl + f"<extra>head {h}, before</extra>"))
            seg = np.full((3, pairs), np.nan)
            xs, ys = seg.copy(), seg.copy()
            xs[0], xs[1], ys[0], ys[1] = fi[0, h], fl[0, h], fi[1, h], fl[1, h]
            traces.append(go.Scatter(
                x=xs.T.reshape(-1), y=ys.T.reshape(-1), mode="lines", xaxis=xr, yaxis=yr, hoverinfo="skip",
                line={"color": "#bbbbbb", "width": 1}, showlegend=False, legendgroup="moved"))
        traces.append(go.Scatter(
            x=fl[0, h], y=fl[1, h], customdata=pair_ids, mode="markers", xaxis=xr, yaxis=yr,
            name="after training" if fi is not None else "frequencies", legendgroup="after", showlegend=h == 0,
            marker={"color": "#d62728", "size": 7},
            hovertemplate=tpl + f"<extra>head {h}{', after' if fi is not None else ''}</extra>"))
    layout["title"] = {"text": core.full_title(title, [f"{heads} heads × {pairs} pairs"]), "x": 0.02}
    # Below the axis titles, whatever the figure's height: anchored to the container's bottom edge.
    layout["legend"] = {"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0}
    layout["margin"]["b"] = 100
    layout["height"] += 44
    return go.Figure(data=traces, layout=layout)
