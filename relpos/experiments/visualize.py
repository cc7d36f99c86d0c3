"""Plotly figures of attention weights, relative position biases, tables, indices and runs.

Tensors in, ``go.Figure`` out; no streamlit here (the app, the CLI and the tests are all clients).
The public builders live here; their machinery (input checks, block averaging, per-cell hover,
the small-multiples layout) is in :mod:`relpos.experiments._figure_core`, saving in
:mod:`relpos.experiments.figure_export` (re-exported: :func:`save_figure`, :func:`figure_bytes`).

Over the house limit of about 400 lines: one subject, eleven public builders and the three private
figure kinds they share (matrix, table, T5 curve); each builder is short, and splitting them over
modules would only scatter one API.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens (``N = h * w`` for a 2D window, ``L`` for 1D),
``T`` table rows (``(2h-1)(2w-1)`` in 2D, ``2L-1`` in 1D).

Conventions (:mod:`relpos.geometry`): tokens flattened row by row, ``t -> (y, x) = (t // w, t % w)``;
offset of query ``i`` and key ``j`` is ``(Δy, Δx) = (y_i - y_j, x_i - x_j)`` and its table row is
``r = (Δy + h - 1) * (2w - 1) + (Δx + w - 1)`` (1D: ``r = i - j + L - 1``).

Habits that keep the app fast:

* arrays go to Plotly as numpy (binary-encoded in the JSON), never as Python lists;
* matrices above ``max_cells`` cells per side are block-averaged (the title says so);
* several heads are small multiples on one shared colour axis (same range, one colorbar), laid
  out by hand (``make_subplots`` alone costs tens of milliseconds);
* per-cell hover data (token coordinates, offset, table row) is built once per window and cached.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from relpos._validation import check_choice, check_int, check_window_size
from relpos.experiments import _figure_core as core
from relpos.experiments._figure_core import block_average
from relpos.experiments.colormaps import is_diverging, resolve_colorscale
from relpos.experiments.figure_export import SAVE_SUFFIXES, figure_bytes, figure_payload_bytes, save_figure
from relpos.families import BiasFamily, family
from relpos.geometry import CLS_ROW_NAMES, relative_position_index, t5_bucket, t5_bucket_offsets, table_offsets

__all__ = [
    "SAVE_SUFFIXES",
    "CLS_ROW_NAMES",
    "block_average",
    "difference_figure",
    "figure_bytes",
    "figure_payload_bytes",
    "query_centric_figure",
    "save_figure",
    "t5_bucket_map_figure",
    "training_curves_figure",
    "visualize_attention_weights",
    "visualize_bias_table",
    "visualize_position_index",
    "visualize_relative_position_bias",
]

#: Longest side, in pixels, of the image drawn under a query-centric map.
_IMAGE_MAX_PX = 160
_RUN_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Figure kinds shared by the builders


def _matrix_figure(
    mats: np.ndarray,
    *,
    title: str,
    notes: Sequence[str | None],
    cmap: str,
    zmid: float | None,
    window: tuple[int, int] | None,
    seq_len: int | None,
    index: np.ndarray | None,
    max_cells: int,
    with_row: bool = True,
    value_label: str = "value",
    value_fmt: str = ".4g",
    panel_titles: Sequence[str] | None = None,
    cols: int | None = None,
) -> go.Figure:
    """Heatmaps of ``mats`` ``(H, N, N)`` (query rows, key columns) on one shared colour axis."""
    max_cells = check_int("max_cells", max_cells, minimum=2)
    colorscale = resolve_colorscale(cmap)
    diverging = is_diverging(colorscale) or zmid is not None
    n_heads, n = mats.shape[0], mats.shape[-1]
    core.check_tokens(n, window, seq_len, "the matrix")
    notes = list(notes)
    k = core.block_factor(n, max_cells)
    value = f"value = %{{z:{value_fmt}}}"
    if k > 1:
        mats = block_average(mats, k)  # (H, ceil(N/k), ceil(N/k))
        starts, sizes = core.blocks(n, k)
        centres = (starts + (sizes - 1) / 2).astype(np.float32)  # block centres in token units
        xs = ys = centres
        cd = None
        tpl = f"queries ≈ %{{y}}, keys ≈ %{{x}}<br>mean of a {k}×{k} block<br>{value}"
        notes.append(f"block-averaged {k}×{k}: {n}×{n} → {mats.shape[-1]}×{mats.shape[-1]} cells")
    else:
        xs = ys = None
        cd, tpl = core.pair_hover(n, window, seq_len, index, n_panels=n_heads, with_row=with_row, value=value)
    zmin, zmax = core.color_range(mats, diverging, zmid)
    if panel_titles is None:
        panel_titles = [f"head {h}" for h in range(n_heads)] if n_heads > 1 else [""]
    layout, refs = core.grid_layout(
        panel_titles, cols=cols, x_title="key j", y_title="query i", cells=mats.shape[-2:]
    )
    traces = []
    for h in range(n_heads):
        xr, yr = refs[h]
        traces.append(
            go.Heatmap(
                z=mats[h], x=xs, y=ys, customdata=cd, hovertemplate=tpl + f"<extra>{panel_titles[h]}</extra>",
                coloraxis="coloraxis", zmin=zmin, zmax=zmax, xaxis=xr, yaxis=yr,
            )
        )  # fmt: skip
    layout["coloraxis"] = core.coloraxis_layout(colorscale, zmin, zmax, value_label)
    layout["title"] = {"text": core.full_title(title, notes), "x": 0.02}
    return go.Figure(data=traces, layout=layout)


def _finish(fig: go.Figure, save_path: Path | None) -> go.Figure:
    if save_path is not None:
        save_figure(fig, save_path)
    return fig


# ----------------------------------------------------------------------------------------------
# Public figure builders


def visualize_attention_weights(
    attn_weights: torch.Tensor | np.ndarray,
    save_path: str | Path | None = None,
    title: str = "Attention Weights",
    cmap: str = "viridis",
    *,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    max_cells: int = 512,
    cols: int | None = None,
) -> go.Figure:
    """Heatmap of attention weights (query rows, key columns), one panel per head.

    Args:
        attn_weights: ``(N, N)``, ``(H, N, N)`` or ``(B, H, N, N)`` (batch element 0 is drawn and
            the title says so).
        save_path: where to save the figure (``.html``, ``.png`` or ``.svg``), or None.
        title: figure title.
        cmap: matplotlib or Plotly colormap name.
        window_size: ``(h, w)`` of the token grid (``N = h * w``): hover then shows token
            coordinates, offset ``(Δy, Δx)`` and table row.
        seq_len: ``L`` of a 1D sequence (``N = L``): hover shows offset ``i - j`` and table row.
        max_cells: above this many cells per side the matrix is block-averaged (title says so).
        cols: panels per row (default: up to 4).

    Returns:
        The figure; heads share one colour axis (same range, one colorbar).
    """
    title, path = core.check_title(title), core.check_save_path(save_path)
    mats, note = core.as_heads("attn_weights", attn_weights)
    fig = _matrix_figure(
        mats, title=title, notes=[note], cmap=cmap, zmid=None, window=core.window_or_none(window_size),
        seq_len=core.seq_len_or_none(seq_len), index=None, max_cells=max_cells, value_label="weight",
        cols=cols,
    )  # fmt: skip
    return _finish(fig, path)


def visualize_relative_position_bias(
    bias: torch.Tensor | np.ndarray,
    save_path: str | Path | None = None,
    title: str = "Relative Position Bias",
    cmap: str = "coolwarm",
    *,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    index: torch.Tensor | np.ndarray | None = None,
    max_cells: int = 512,
    cols: int | None = None,
) -> go.Figure:
    """Heatmap of the gathered bias (query rows, key columns), one panel per head, centred at 0.

    Args:
        bias: ``(N, N)``, ``(H, N, N)`` or ``(B, H, N, N)``.
        save_path: where to save the figure (``.html``, ``.png`` or ``.svg``), or None.
        title: figure title.
        cmap: matplotlib or Plotly colormap name; diverging scales are centred at 0.
        window_size: ``(h, w)`` with ``N = h * w``: hover shows coordinates, offset, table row.
        seq_len: ``L`` of a 1D sequence (``N = L``).
        index: ``(N, N)`` relative position index whose rows the hover reports (default: the
            Swin formula for ``window_size`` or the 1D formula for ``seq_len``).
        max_cells: block-average above this many cells per side.
        cols: panels per row.

    Returns:
        The figure.
    """
    title, path = core.check_title(title), core.check_save_path(save_path)
    mats, note = core.as_heads("bias", bias)
    idx = None
    if index is not None:
        idx = core.to_numpy("index", index, dtype=np.int64)
        if idx.shape != mats.shape[-2:]:
            raise ValueError(f"index must have shape {mats.shape[-2:]} like bias, got {idx.shape}")
    colorscale = resolve_colorscale(cmap)
    fig = _matrix_figure(
        mats, title=title, notes=[note], cmap=colorscale,
        zmid=0.0 if is_diverging(colorscale) else None, window=core.window_or_none(window_size),
        seq_len=core.seq_len_or_none(seq_len), index=idx, max_cells=max_cells, value_label="bias",
        cols=cols,
    )  # fmt: skip
    return _finish(fig, path)


def _table_figure(
    table: np.ndarray,
    *,
    title: str,
    notes: Sequence[str | None],
    window: tuple[int, int] | None,
    seq_len: int | None,
    cmap: str,
    value_label: str,
    cols: int | None = None,
) -> go.Figure:
    """``table`` ``(T, H)`` as per-head offset grids (2D) or curves over offsets (1D)."""
    t, n_heads = table.shape
    window, seq_len = core.infer_table_geometry(t, window, seq_len)
    colorscale = resolve_colorscale(cmap)
    diverging = is_diverging(colorscale)
    if window is None:
        assert seq_len is not None
        offsets = table_offsets(seq_len).numpy()  # (2L-1,): offset i - j of table row r
        rows = np.arange(t)
        traces = [
            go.Scatter(
                x=offsets, y=table[:, h], customdata=rows, mode="lines+markers", name=f"head {h}",
                hovertemplate="offset i − j = %{x}<br>table row r = %{customdata}<br>"
                f"{value_label} = %{{y:.4g}}<extra>head {h}</extra>",
            )
            for h in range(n_heads)
        ]  # fmt: skip
        layout = {
            "title": {"text": core.full_title(title, [*notes, f"1D, L = {seq_len}"]), "x": 0.02},
            "xaxis": {"title": {"text": "offset i − j"}, "zeroline": True},
            "yaxis": {"title": {"text": value_label}, "zeroline": True},
            "width": 720, "height": 440, "hovermode": "closest",
        }  # fmt: skip
        return go.Figure(data=traces, layout=layout)

    h_, w_ = window
    gh, gw = 2 * h_ - 1, 2 * w_ - 1
    grids = table.T.reshape(n_heads, gh, gw)  # (H, 2h-1, 2w-1): row r = (Δy+h-1)(2w-1) + (Δx+w-1)
    offsets = table_offsets(window).numpy().reshape(gh, gw, 2)  # (2h-1, 2w-1, 2): (Δy, Δx) of row r
    dys, dxs = offsets[:, 0, 0], offsets[0, :, 1]  # (2h-1,), (2w-1,)
    rows = core.small_int(np.arange(t).reshape(gh, gw))  # (2h-1, 2w-1) table row of each cell
    zmin, zmax = core.color_range(grids, diverging, None)
    titles = [f"head {h}" for h in range(n_heads)] if n_heads > 1 else [""]
    layout, refs = core.grid_layout(
        titles, cols=cols, x_title="Δx = x_i − x_j", y_title="Δy = y_i − y_j", cells=(gh, gw)
    )
    tpl = (
        "offset (Δy, Δx) = (%{y}, %{x})<br>table row r = %{customdata}<br>"
        f"{value_label} = %{{z:.4g}}"
    )
    traces = []
    for h in range(n_heads):
        xr, yr = refs[h]
        traces.append(
            go.Heatmap(
                z=grids[h], x=dxs, y=dys, customdata=rows, coloraxis="coloraxis", zmin=zmin, zmax=zmax,
                hovertemplate=tpl + f"<extra>head {h}</extra>", xaxis=xr, yaxis=yr,
            )
        )  # fmt: skip
    layout["coloraxis"] = core.coloraxis_layout(colorscale, zmin, zmax, value_label)
    layout["title"] = {"text": core.full_title(title, [*notes, f"window {h_}×{w_}"]), "x": 0.02}
    return go.Figure(data=traces, layout=layout)


def _bucketed(fam: BiasFamily | None) -> bool:
    """Whether a family's table rows are buckets of offsets (T5) rather than offsets."""
    return fam is not None and "num_buckets" in fam.options


def _offset_ranges(offs: np.ndarray) -> str:
    """``[-3]`` -> ``"−3"``; ``[5, 6, 7]`` -> ``"5..7"``; ``[]`` -> ``"none"``."""
    if offs.size == 0:
        return "none"
    lo, hi = int(offs.min()), int(offs.max())
    return f"{lo}" if lo == hi else f"{lo}..{hi}"


def _t5_table_figure(
    table: np.ndarray, *, title: str, seq_len: int | None, max_distance: int | None, value_label: str
) -> go.Figure:
    """A ``(num_buckets, H)`` T5 table as one curve per head over bucket indices; the hover (and the
    hidden ``customdata``) says which offsets ``j − i`` fall in each bucket."""
    t, n_heads = table.shape
    if t < 4:
        raise ValueError(f"a t5 table needs num_buckets >= 4 rows, the table has {t}")
    max_distance = 128 if max_distance is None else check_int("max_distance", max_distance, minimum=t // 4 + 1)
    per_bucket = t5_bucket_offsets(t, max_distance, reach=None if seq_len is None else seq_len - 1)
    labels = np.array([_offset_ranges(o) for o in per_bucket], dtype=object)  # (num_buckets,)
    counts = np.array([o.size for o in per_bucket])  # (num_buckets,)
    buckets = np.arange(t)
    cd = np.stack([labels, counts.astype(object)], axis=1)  # (num_buckets, 2)
    # Buckets no offset reaches (at this length) are drawn as open markers.
    symbols = np.where(counts > 0, "circle", "circle-open")  # (num_buckets,)
    traces = [
        go.Scatter(
            x=buckets, y=table[:, h], customdata=cd, mode="lines+markers", name=f"head {h}",
            marker={"symbol": symbols, "size": 7},
            hovertemplate="bucket %{x}<br>offsets j − i = %{customdata[0]} (%{customdata[1]} offsets)<br>"
            f"{value_label} = %{{y:.4g}}<extra>head {h}</extra>",
        )
        for h in range(n_heads)
    ]  # fmt: skip
    half = t // 2
    reach = f"L = {seq_len}" if seq_len is not None else f"offsets up to ±{max_distance}"
    layout = {
        "title": {"text": core.full_title(title, [f"T5, {t} buckets, max_distance {max_distance}", reach]), "x": 0.02},
        "xaxis": {"title": {"text": f"bucket (0..{half - 1}: key before or at query; {half}..{t - 1}: key after;"
                            " open marker: no offset falls in it)"},
                  "dtick": 1 if t <= 40 else None, "range": [-0.5, t - 0.5]},
        "yaxis": {"title": {"text": value_label}, "zeroline": True},
        "shapes": [{"type": "line", "x0": half - 0.5, "x1": half - 0.5, "y0": 0, "y1": 1, "yref": "paper",
                    "line": {"dash": "dot", "color": "grey"}}],
        "width": 720, "height": 440, "hovermode": "closest",
    }  # fmt: skip
    return go.Figure(data=traces, layout=layout)


def t5_bucket_map_figure(
    num_buckets: int, max_distance: int, seq_len: int | None = None, *, title: str = "T5: offset → bucket"
) -> go.Figure:
    """Which bucket each offset ``j − i`` (key − query) falls in: a step curve (the x axis of
    :func:`visualize_bias_table`'s T5 curve is this curve's y axis).

    Args:
        num_buckets: total buckets (>= 4).
        max_distance: offset from which all share the last bucket of their direction.
        seq_len: draw offsets within ``±(L-1)`` (default ``±max_distance``).
        title: figure title.
    """
    num_buckets = check_int("num_buckets", num_buckets, minimum=4)
    max_distance = check_int("max_distance", max_distance, minimum=num_buckets // 4 + 1)
    reach = (check_int("seq_len", seq_len) - 1) if seq_len is not None else max_distance
    rel = torch.arange(-reach, reach + 1)  # (2 reach + 1,)
    buckets = t5_bucket(rel, num_buckets, max_distance).numpy()
    trace = go.Scatter(
        x=rel.numpy(), y=buckets, mode="lines+markers", line={"shape": "hv"}, name="bucket",
        hovertemplate="offset j − i = %{x}<br>bucket %{y}<extra></extra>",
    )  # fmt: skip
    layout = {
        "title": {"text": core.check_title(title), "x": 0.02},
        "xaxis": {"title": {"text": "offset j − i (key − query)"}, "zeroline": True},
        "yaxis": {"title": {"text": "bucket"}, "range": [-0.5, num_buckets - 0.5]},
        "width": 720, "height": 360, "hovermode": "closest",
    }  # fmt: skip
    return go.Figure(data=[trace], layout=layout)


def visualize_bias_table(
    bias_table: torch.Tensor | np.ndarray,
    save_path: str | Path | None = None,
    title: str = "Bias Table",
    *,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    cmap: str | None = None,
    cols: int | None = None,
    bias_type: str | None = None,
    max_distance: int | None = None,
) -> go.Figure:
    """The bias table per head: a 2D table as its ``(2h-1) x (2w-1)`` grid of offsets, a 1D table
    as a curve over offsets ``-(L-1) .. L-1``, a T5 table as a curve over its buckets.

    Args:
        bias_table: ``(T, H)`` (or ``(T,)`` for one head), e.g. ``rpb.effective_table()``.
        save_path: where to save the figure (``.html``, ``.png`` or ``.svg``), or None.
        title: figure title.
        window_size: ``(h, w)`` of a 2D table (``T = (2h-1)(2w-1)``, plus the class-token rows).
        seq_len: ``L`` of a 1D table (``T = 2L-1``); for a bucketed (T5) table the length whose
            offsets the hover lists. Neither given: ``T`` the square of an odd number -> square 2D
            window; other odd ``T`` -> 1D; otherwise ValueError.
        cmap: matplotlib or Plotly colormap name (2D grids; diverging scales centred at 0). Default
            ``"coolwarm"``, or ``"viridis"`` when every value is positive (nothing to centre: e.g.
            Swin V2's continuous bias, ``16·sigmoid(·)`` in ``(0, 16)``).
        cols: panels per row.
        bias_type: the family (one of :data:`relpos.families.BIAS_TYPES`) or None (a plain 1D or 2D
            table). A family with buckets (T5: ``T = num_buckets``) is drawn as curves over bucket
            indices (hover: the offsets ``j − i`` in each bucket). A family with class-token rows
            (BEiT: ``FAMILIES[bias_type].extra_rows``, named :data:`CLS_ROW_NAMES`) has them left
            out of the grid and written under it per head. The others are drawn as their offset grid
            (2D) or curve (1D).
        max_distance: bucketed families only: the table's ``max_distance`` (default 128), for the hover.

    Returns:
        The figure: grid cell ``(Δy, Δx)`` of head ``h`` shows
        ``table[(Δy + h - 1)(2w - 1) + (Δx + w - 1), h]``.
    """
    title, path = core.check_title(title), core.check_save_path(save_path)
    fam = None if bias_type is None else family(bias_type)
    table = core.as_table("bias_table", bias_table)
    if cmap is None:
        finite = table[np.isfinite(table)]
        cmap = "viridis" if finite.size and finite.min() > 0 else "coolwarm"
    if _bucketed(fam):
        fig = _t5_table_figure(table, title=title, seq_len=core.seq_len_or_none(seq_len),
                               max_distance=max_distance, value_label="bias")
        return _finish(fig, path)
    notes: list[str] = []
    cls_rows = None
    extra = fam.extra_rows if fam is not None else 0
    if extra:
        if table.shape[0] <= extra:
            raise ValueError(f"a {fam.name} table needs (2h-1)(2w-1) + {extra} rows, the table has {table.shape[0]}")
        table, cls_rows = table[:-extra], table[-extra:]  # (T-extra, H) grid rows, (extra, H) class-token rows
        notes.append("class-token rows below")
    fig = _table_figure(
        table, title=title, notes=notes, window=core.window_or_none(window_size),
        seq_len=core.seq_len_or_none(seq_len), cmap=cmap, value_label="bias", cols=cols,
    )  # fmt: skip
    if cls_rows is not None:
        shown = min(cls_rows.shape[1], 8)
        lines = [
            f"head {h}: " + ", ".join(f"{name} {cls_rows[k, h]:.3g}" for k, name in enumerate(CLS_ROW_NAMES))
            for h in range(shown)
        ]
        if cls_rows.shape[1] > shown:
            lines.append(f"... {cls_rows.shape[1] - shown} more heads")
        height = fig.layout.height or 440
        fig.update_layout(
            height=height + 18 * len(lines) + 20,
            margin={"b": 40 + 18 * len(lines)},
            meta={"cls_rows": cls_rows.tolist(), "cls_row_names": list(CLS_ROW_NAMES)},
        )
        fig.add_annotation(
            text="<br>".join(lines), xref="paper", yref="paper", x=0.0, y=0.0, yshift=-(30 + 9 * len(lines)),
            xanchor="left", yanchor="middle", showarrow=False, align="left", font={"size": 11},
        )
    return _finish(fig, path)


def visualize_position_index(
    index: torch.Tensor | np.ndarray,
    *,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    title: str = "Relative position index",
    cmap: str = "viridis",
    max_cells: int = 512,
    save_path: str | Path | None = None,
) -> go.Figure:
    """The ``(N, N)`` relative position index as a heatmap whose hover decodes each cell.

    Args:
        index: ``(N, N)`` integer index (query rows, key columns).
        window_size: ``(h, w)`` of a 2D window (hover: token coordinates and offset ``(Δy, Δx)``).
        seq_len: ``L`` of a 1D sequence (hover: offset ``i - j``).
            Neither given: recognised from the values when they match the 2D formula of a square
            window or the 1D formula; otherwise the hover shows ``i``, ``j`` and the row only.
        title: figure title.
        cmap: matplotlib or Plotly colormap name.
        max_cells: block-average above this many cells per side.
        save_path: where to save the figure, or None.

    Returns:
        The figure (z is the index itself).
    """
    title, path = core.check_title(title), core.check_save_path(save_path)
    idx = core.to_numpy("index", index, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[0] != idx.shape[1]:
        raise ValueError(f"index must have shape (N, N), got {tuple(idx.shape)}")
    n = idx.shape[0]
    window, seq_len = core.window_or_none(window_size), core.seq_len_or_none(seq_len)
    if window is None and seq_len is None:
        side = math.isqrt(n)
        if side * side == n and np.array_equal(idx, relative_position_index((side, side)).numpy()):
            window = (side, side)
        elif np.array_equal(idx, relative_position_index(n).numpy()):
            seq_len = n
    z = core.small_int(idx)
    fig = _matrix_figure(
        z[None], title=title, notes=[], cmap=cmap, zmid=None, window=window, seq_len=seq_len,
        index=None, max_cells=max_cells, with_row=False, value_label="table row r",
        value_fmt="d" if core.block_factor(n, max_cells) == 1 else ".1f",
    )  # fmt: skip
    # The index is an integer: say so in the hover's last line.
    tr = fig.data[0]
    tr.hovertemplate = tr.hovertemplate.replace("value = ", "table row r = ")
    return _finish(fig, path)


def _image_layer(image: Any, window: tuple[int, int]) -> dict[str, Any]:
    """``go.Image`` arguments: the input image as an RGB PNG data URI stretched over the ``(h, w)``
    grid (a PNG is a fraction of the size of the pixel array in the figure JSON)."""
    arr = core.to_numpy("image", image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # ambiguous tiny image: treat as (C, H, W) like torch
    if arr.ndim == 2:
        arr = arr[..., None]  # (H, W, 1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image must have shape (C, H, W) with C in 1, 3, 4, or (H, W); got {tuple(np.shape(image))}"
        )
    arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)  # (H, W, 3) grayscale -> RGB
    finite = np.isfinite(arr)
    lo = float(arr[finite].min()) if finite.any() else 0.0
    hi = float(arr[finite].max()) if finite.any() else 1.0
    scaled = np.nan_to_num((arr - lo) / (hi - lo if hi > lo else 1.0))
    rgb = (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)  # (H, W, 3)
    from PIL import Image

    pil = Image.fromarray(rgb)  # (H, W, 3) uint8 -> RGB
    if max(pil.size) > _IMAGE_MAX_PX:  # a backdrop needs no more pixels: smaller payload, faster
        scale = _IMAGE_MAX_PX / max(pil.size)
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    hi_px, wi_px = pil.height, pil.width
    dy, dx = window[0] / hi_px, window[1] / wi_px  # grid cells per image pixel
    return {"source": uri, "x0": -0.5 + dx / 2, "y0": -0.5 + dy / 2, "dx": dx, "dy": dy, "hoverinfo": "skip"}


def query_centric_figure(
    matrix: torch.Tensor | np.ndarray,
    query: int,
    window_size: tuple[int, int] | int,
    *,
    image: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    zmid: float | None = None,
    opacity: float | None = None,
    cols: int | None = None,
    save_path: str | Path | None = None,
) -> go.Figure:
    """One query's row of a bias or attention matrix on the window grid, one panel per head.

    Args:
        matrix: ``(N, N)``, ``(H, N, N)`` or ``(B, H, N, N)`` with ``N = h * w``.
        query: query token ``i`` in ``[0, N)`` (row-major: ``(y, x) = (i // w, i % w)``).
        window_size: ``(h, w)`` of the token grid.
        image: optional input image ``(C, H, W)`` or ``(H, W)`` drawn under a semi-transparent
            heatmap (stretched over the grid, min-max normalised).
        title: figure title (default names the query).
        cmap: matplotlib or Plotly colormap name.
        zmid: centre of a diverging scale (e.g. 0 for biases); None: data range.
        opacity: heatmap opacity (default 0.55 over an image, else 1).
        cols: panels per row.
        save_path: where to save the figure, or None.

    Returns:
        The figure: panel ``h`` cell ``(y, x)`` is ``matrix[h, query, y * w + x]``; the query cell
        is outlined.
    """
    mats, note = core.as_heads("matrix", matrix)
    window = check_window_size("window_size", window_size)
    h_, w_ = window
    n_heads, n = mats.shape[0], mats.shape[-1]
    core.check_tokens(n, window, None, "matrix")
    query = check_int("query", query, minimum=0, maximum=n - 1)
    qy, qx = divmod(query, w_)
    if title is None:
        title = f"Query i = {query} at (y, x) = ({qy}, {qx})"
    title, path = core.check_title(title), core.check_save_path(save_path)
    colorscale = resolve_colorscale(cmap)
    if zmid is not None:
        zmid = float(zmid)
    grids = mats[:, query, :].reshape(n_heads, h_, w_)  # (H, h, w): key j = y * w + x
    pairs = core.pair_customdata_2d(h_, w_, True)[query].astype(np.int32)  # (N, 7) of pairs (query, j)
    keys = np.arange(n, dtype=np.int32)[:, None]  # (N, 1)
    cd = core.small_int(np.concatenate([keys, pairs[:, 4:]], axis=1).reshape(h_, w_, 4))  # j, Δy, Δx, r
    tpl = (
        f"query i = {query} at ({qy}, {qx})<br>"
        "key j = %{customdata[0]} at (y, x) = (%{y}, %{x})<br>"
        "offset (Δy, Δx) = (%{customdata[1]}, %{customdata[2]})<br>"
        "table row r = %{customdata[3]}<br>value = %{z:.4g}"
    )
    zmin, zmax = core.color_range(grids, zmid is not None or is_diverging(colorscale), zmid)
    titles = [f"head {h}" for h in range(n_heads)] if n_heads > 1 else [""]
    layout, refs = core.grid_layout(titles, cols=cols, x_title="x", y_title="y", cells=(h_, w_))
    if opacity is None:
        opacity = 0.55 if image is not None else 1.0
    img_layer = _image_layer(image, window) if image is not None else None
    traces: list[Any] = []
    shapes = []
    for h in range(n_heads):
        xr, yr = refs[h]
        if img_layer is not None:
            traces.append(go.Image(**img_layer, xaxis=xr, yaxis=yr))
        traces.append(
            go.Heatmap(
                z=grids[h], x=np.arange(w_), y=np.arange(h_), customdata=cd, opacity=opacity,
                coloraxis="coloraxis", zmin=zmin, zmax=zmax, xaxis=xr, yaxis=yr,
                hovertemplate=tpl + f"<extra>{titles[h] or 'value'}</extra>",
            )
        )  # fmt: skip
        shapes.append(
            {
                "type": "rect", "xref": xr, "yref": yr, "x0": qx - 0.5, "x1": qx + 0.5,
                "y0": qy - 0.5, "y1": qy + 0.5, "line": {"color": "black", "width": 3},
            }
        )  # fmt: skip
    for k in range(n_heads):
        xname = "xaxis" if k == 0 else f"xaxis{k + 1}"
        yname = "yaxis" if k == 0 else f"yaxis{k + 1}"
        layout[xname]["range"] = [-0.5, w_ - 0.5]
        layout[yname]["range"] = [h_ - 0.5, -0.5]
        layout[yname].pop("autorange", None)
    layout["shapes"] = shapes
    layout["coloraxis"] = core.coloraxis_layout(colorscale, zmin, zmax, "value")
    layout["title"] = {"text": core.full_title(title, [note]), "x": 0.02}
    return _finish(go.Figure(data=traces, layout=layout), path)


def _has_number(records: Sequence[dict], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in records)


def _metric_xy(records: Sequence[dict], key: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        x, y = r.get(axis), r.get(key)
        if isinstance(x, bool) or isinstance(y, bool):
            continue
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def training_curves_figure(
    runs: Mapping[str, Sequence[dict]], *, title: str = "Training curves"
) -> go.Figure:
    """Loss and accuracy of one or several runs, overlaid.

    Args:
        runs: run name -> its ``metrics.jsonl`` records (:func:`relpos.experiments.rundir.read_metrics`):
            ``"kind": "step"`` lines give the train curves, ``"kind": "epoch"`` lines the eval
            points (and the train curves when a run logged no steps). Missing keys, nulls and
            empty lists are skipped.
        title: figure title.

    Returns:
        A two-panel figure (loss, accuracy); one colour per run, solid train, dashed eval.
    """
    title = core.check_title(title)
    if not isinstance(runs, Mapping):
        raise TypeError(
            f"runs must be a dict of run name -> list of metric records, got {type(runs).__name__}"
        )
    layout, refs = core.grid_layout(["loss", "accuracy"], cols=2, square=False, reverse_y=False, panel_px=380)
    layout["height"] = 420
    traces = []
    any_points = False
    cleaned: dict[str, list[dict]] = {}
    for name, records in runs.items():
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise TypeError(f"runs[{name!r}] must be a list of dicts, got {type(records).__name__}")
        cleaned[str(name)] = [r for r in records if isinstance(r, dict)]
    # One x axis for every run: steps when every run with records logged them, else epochs.
    with_data = [recs for recs in cleaned.values() if recs]
    axis = "step" if with_data and all(_has_number(recs, "step") for recs in with_data) else "epoch"
    for n_run, (name, records) in enumerate(cleaned.items()):
        steps = [r for r in records if r.get("kind") == "step"]
        epochs = [r for r in records if r.get("kind") == "epoch"]
        if not steps and not epochs:
            epochs = [r for r in records if "kind" not in r]
        color = _RUN_COLORS[n_run % len(_RUN_COLORS)]
        shown = False
        for panel, metric in enumerate(("loss", "accuracy")):
            xr, yr = refs[panel]
            for split, recs, dash, mode in (
                ("train", steps or epochs, "solid", "lines" if steps else "lines+markers"),
                ("eval", epochs, "dash", "lines+markers"),
            ):
                xs, ys = _metric_xy(recs, f"{split}_{metric}", axis)
                if xs.size == 0:
                    continue
                any_points = True
                traces.append(
                    go.Scatter(
                        x=xs, y=ys, mode=mode, name=f"{name} · {split}", legendgroup=str(name),
                        line={"color": color, "dash": dash}, xaxis=xr, yaxis=yr,
                        showlegend=panel == 0 or not shown,
                        hovertemplate=(
                            f"{name} · {split} {metric}<br>{axis} %{{x}}<br>%{{y:.4g}}<extra></extra>"
                        ),
                    )
                )  # fmt: skip
                shown = True
    layout["xaxis"]["title"] = layout["xaxis2"]["title"] = {"text": axis}
    layout["yaxis"]["title"] = {"text": "loss"}
    layout["yaxis2"]["title"] = {"text": "accuracy"}
    if not any_points:
        layout["annotations"] = list(layout["annotations"]) + [
            {"text": "no metrics yet", "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
             "showarrow": False, "font": {"size": 16, "color": "gray"}}
        ]  # fmt: skip
    layout["title"] = {"text": title, "x": 0.02}
    return go.Figure(data=traces, layout=layout)


def difference_figure(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    *,
    names: Sequence[str] = ("A", "B"),
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    kind: str = "auto",
    title: str | None = None,
    cmap: str = "coolwarm",
    max_cells: int = 512,
    cols: int | None = None,
    save_path: str | Path | None = None,
    bias_type: str | None = None,
    max_distance: int | None = None,
) -> go.Figure:
    """Difference ``b - a`` of two tables or biases of equal shape, per head, centred at 0.

    Args:
        a, b: two tables ``(T, H)`` or two biases ``(N, N)`` / ``(H, N, N)`` / ``(B, H, N, N)``.
        names: display names of ``a`` and ``b``.
        window_size: ``(h, w)`` (2D table grid, or bias hover with ``N = h * w``).
        seq_len: ``L`` for 1D tables or biases.
        kind: ``"table"``, ``"bias"`` or ``"auto"`` (3 or 4 dims, or 2 square dims -> bias;
            otherwise table).
        title: figure title (default ``"B − A"`` with the names).
        cmap: colormap name (a diverging one is the point: 0 sits in the middle).
        max_cells: block-average biases above this many cells per side.
        cols: panels per row.
        save_path: where to save the figure, or None.
        bias_type, max_distance: tables of a family, drawn as :func:`visualize_bias_table` draws
            them (buckets: a curve over buckets; class-token rows: the grid, those rows written below).

    Returns:
        The figure; the title carries ``max |b - a|``.
    """
    kind = check_choice("kind", kind, ("auto", "table", "bias"))
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != 2:
        raise TypeError(f"names must be a pair of str, got {names!r}")
    na, nb = (str(x) for x in names)
    arr_a, arr_b = core.to_numpy("a", a), core.to_numpy("b", b)
    if arr_a.shape != arr_b.shape:
        raise ValueError(f"a and b must have the same shape, got a {arr_a.shape} and b {arr_b.shape}")
    diff = arr_b - arr_a
    if title is None:
        title = f"{nb} − {na}"
    title, path = core.check_title(title), core.check_save_path(save_path)
    finite = diff[np.isfinite(diff)]
    note = f"max |{nb} − {na}| = {float(np.abs(finite).max()) if finite.size else float('nan'):.3g}"
    if kind == "auto":
        kind = "bias" if diff.ndim >= 3 or (diff.ndim == 2 and diff.shape[0] == diff.shape[1]) else "table"
    window, seq = core.window_or_none(window_size), core.seq_len_or_none(seq_len)
    fam = None if bias_type is None else family(bias_type)
    if kind == "table" and (_bucketed(fam) or (fam is not None and fam.extra_rows)):
        return visualize_bias_table(
            core.as_table("b - a", diff), save_path=path, title=core.full_title(title, [note]), window_size=window,
            seq_len=seq, cmap=cmap, cols=cols, bias_type=bias_type, max_distance=max_distance,
        )  # fmt: skip
    if kind == "table":
        fig = _table_figure(
            core.as_table("b - a", diff), title=title, notes=[note], window=window, seq_len=seq,
            cmap=cmap, value_label="difference", cols=cols,
        )  # fmt: skip
    else:
        mats, bnote = core.as_heads("b - a", diff)
        fig = _matrix_figure(
            mats, title=title, notes=[bnote, note], cmap=cmap, zmid=0.0, window=window, seq_len=seq,
            index=None, max_cells=max_cells, value_label="difference", cols=cols,
        )  # fmt: skip
    return _finish(fig, path)
