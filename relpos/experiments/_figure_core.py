"""The machinery under :mod:`relpos.experiments.visualize`: input checks, block averaging, per-cell
hover data and the small-multiples layout. Private: the figure builders are the public API.

Shape legend: ``H`` heads (panels), ``N`` tokens (``h * w`` of a window, ``L`` of a sequence), ``T``
table rows. Offsets and table rows come from :mod:`relpos.geometry` (tokens row-major, offset =
query - key, Swin's row formula).

Over the house limit of about 400 lines: these are the four halves of one job (turn arrays into the
Plotly traces and layout every builder shares), each small, and splitting them further would make
every builder import from four places.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relpos._validation import check_int, check_window_size
from relpos.geometry import num_table_rows, pair_offsets, table_row, token_positions

__all__ = [
    "HOVER_BUDGET_BYTES",
    "VALUE_TEMPLATE",
    "as_heads",
    "as_table",
    "axis_ids",
    "block_average",
    "block_factor",
    "blocks",
    "check_save_path",
    "check_title",
    "check_tokens",
    "color_range",
    "coloraxis_layout",
    "full_title",
    "grid_layout",
    "grid_shape",
    "infer_table_geometry",
    "pair_customdata_1d",
    "pair_customdata_2d",
    "pair_hover",
    "seq_len_or_none",
    "small_int",
    "to_numpy",
    "window_or_none",
]


# ----------------------------------------------------------------------------------------------
# Input checks and conversion


def to_numpy(name: str, value: Any, *, dtype: Any = np.float32) -> np.ndarray:
    """A torch tensor or numpy array as a contiguous numpy array of ``dtype`` (a copy-free view
    when it already is one). Anything else is a TypeError naming ``name``."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype in (torch.bfloat16, torch.float16, torch.bool):
            value = value.float()
        arr = value.numpy()
    elif isinstance(value, np.ndarray):
        arr = value
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {arr.dtype}")
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(value).__name__}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_title(title: Any) -> str:
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {title!r} ({type(title).__name__})")
    return title


def check_save_path(save_path: Any) -> Path | None:
    if save_path is None:
        return None
    if not isinstance(save_path, (str, os.PathLike)):
        raise TypeError(
            f"save_path must be a str, a pathlib.Path or None, got {save_path!r} "
            f"({type(save_path).__name__})"
        )
    return Path(save_path)


def as_heads(name: str, value: Any) -> tuple[np.ndarray, str | None]:
    """``(N, N)``, ``(H, N, N)`` or ``(B, H, N, N)`` -> ``(H, N, N)`` float32 and a title note
    (``B`` > 1 keeps batch element 0 and says so)."""
    arr = to_numpy(name, value)
    note = None
    if arr.ndim == 4:
        if arr.shape[0] > 1:
            note = f"batch element 0 of {arr.shape[0]}"
        arr = arr[0]  # (H, N, N)
    elif arr.ndim == 2:
        arr = arr[None]  # (1, N, N)
    elif arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (N, N), (H, N, N) or (B, H, N, N), got {tuple(arr.shape)}"
        )
    if arr.shape[-1] != arr.shape[-2]:
        raise ValueError(
            f"{name} must be square in its last two dims (query x key), got {tuple(arr.shape)}"
        )
    return arr, note


def window_or_none(window_size: Any) -> tuple[int, int] | None:
    return None if window_size is None else check_window_size("window_size", window_size)


def seq_len_or_none(seq_len: Any) -> int | None:
    return None if seq_len is None else check_int("seq_len", seq_len)


def check_tokens(n: int, window: tuple[int, int] | None, seq_len: int | None, name: str) -> None:
    if window is not None and seq_len is not None:
        raise ValueError("pass window_size (2D) or seq_len (1D), not both")
    if window is not None and window[0] * window[1] != n:
        raise ValueError(
            f"window_size {window} has {window[0] * window[1]} tokens but {name} has N = {n}"
        )
    if seq_len is not None and seq_len != n:
        raise ValueError(f"seq_len {seq_len} does not match {name}'s N = {n}")


# ----------------------------------------------------------------------------------------------
# Block averaging


def blocks(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, n, k)
    sizes = np.minimum(starts + k, n) - starts
    return starts, sizes


def block_average(matrix: np.ndarray, k: int) -> np.ndarray:
    """Mean-pool the last two dims of ``matrix`` over ``k x k`` blocks (a ragged last block is
    averaged over the cells it has).

    Args:
        matrix: ``(..., N, M)`` array.
        k: block side (``1`` returns the input).

    Returns:
        ``(..., ceil(N / k), ceil(M / k))`` float32 array.
    """
    k = check_int("k", k)
    if k == 1:
        return matrix
    n, m = matrix.shape[-2:]
    rs, rsz = blocks(n, k)
    cs, csz = blocks(m, k)
    summed = np.add.reduceat(np.add.reduceat(matrix, rs, axis=-2, dtype=np.float64), cs, axis=-1)
    return (summed / np.outer(rsz, csz)).astype(np.float32)  # (..., n/k, m/k)


def block_factor(n: int, max_cells: int) -> int:
    return max(1, math.ceil(n / max_cells))


# ----------------------------------------------------------------------------------------------
# Per-cell hover data, cached per window


def small_int(arr: np.ndarray) -> np.ndarray:
    """The smallest signed int dtype that holds ``arr`` (smaller JSON payload)."""
    hi = int(np.abs(arr).max()) if arr.size else 0
    out = arr.astype(np.int8 if hi <= 127 else np.int16 if hi <= 32767 else np.int32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def pair_customdata_2d(h: int, w: int, with_row: bool) -> np.ndarray:
    """``(N, N, 7)`` per query/key pair: ``y_i, x_i, y_j, x_j, Δy, Δx, r`` (``r`` only when
    ``with_row``: an index figure shows ``r`` as its value)."""
    n = h * w
    ys, xs = token_positions((h, w)).numpy().T  # (N,), (N,)
    yi = np.broadcast_to(ys[:, None], (n, n))
    xi = np.broadcast_to(xs[:, None], (n, n))
    yj = np.broadcast_to(ys[None, :], (n, n))
    xj = np.broadcast_to(xs[None, :], (n, n))
    dy, dx = pair_offsets((h, w)).numpy()  # (N, N) each, query - key
    fields = [yi, xi, yj, xj, dy, dx]
    if with_row:
        fields.append(table_row(dy, dx, (h, w)))  # (N, N)
    return small_int(np.stack(fields, axis=-1))  # (N, N, 6 or 7)


@functools.lru_cache(maxsize=16)
def pair_customdata_1d(seq_len: int, with_row: bool) -> np.ndarray:
    """``(L, L, 2)`` per pair: offset ``i - j`` and table row ``r`` (or ``(L, L, 1)``)."""
    off = pair_offsets(seq_len)[1].numpy()  # (L, L): i - j
    fields = [off, table_row(0, off, seq_len)] if with_row else [off]
    return small_int(np.stack(fields, axis=-1))  # (L, L, 2 or 1)


VALUE_TEMPLATE = "value = %{z:.4g}"
#: Most raw bytes of per-cell hover data one figure carries, summed over its panels. Above it the
#: hover first drops the table row (which needs int16 for windows above 6x6; one dtype per array),
#: then the per-cell data altogether ("query i, key j, value" is left). A 14x14 window keeps
#: coordinates and offsets (int8) for up to two heads.
HOVER_BUDGET_BYTES = 500_000


def pair_hover(
    n: int,
    window: tuple[int, int] | None,
    seq_len: int | None,
    index: np.ndarray | None,
    *,
    n_panels: int = 1,
    with_row: bool = True,
    value: str = VALUE_TEMPLATE,
) -> tuple[np.ndarray | None, str]:
    """Customdata and hovertemplate for ``n_panels`` ``(N, N)`` query x key heatmaps: the richest
    hover whose per-cell data fits :data:`HOVER_BUDGET_BYTES`."""
    candidates: list[tuple[np.ndarray, str]] = []
    if window is not None:
        coords = (
            "query i = %{y} at (y, x) = (%{customdata[0]}, %{customdata[1]})<br>"
            "key j = %{x} at (y, x) = (%{customdata[2]}, %{customdata[3]})<br>"
            "offset (Δy, Δx) = (%{customdata[4]}, %{customdata[5]})<br>"
        )
        base = pair_customdata_2d(window[0], window[1], False)  # (N, N, 6)
        if with_row:
            full = (
                pair_customdata_2d(window[0], window[1], True)
                if index is None
                else small_int(np.concatenate([base, index[..., None]], axis=-1))
            )  # (N, N, 7)
            candidates.append((full, coords + "table row r = %{customdata[6]}<br>"))
        candidates.append((base, coords))
    elif seq_len is not None:
        one_d = "query i = %{y}<br>key j = %{x}<br>offset i − j = %{customdata[0]}<br>"
        base = pair_customdata_1d(seq_len, False)  # (L, L, 1)
        if with_row:
            full = (
                pair_customdata_1d(seq_len, True)
                if index is None
                else small_int(np.concatenate([base, index[..., None]], axis=-1))
            )  # (L, L, 2)
            candidates.append((full, one_d + "table row r = %{customdata[1]}<br>"))
        candidates.append((base, one_d))
    elif with_row and index is not None:
        rows_only = "query i = %{y}<br>key j = %{x}<br>table row r = %{customdata}<br>"
        candidates.append((small_int(index), rows_only))
    for cd, tpl in candidates:
        if cd.nbytes * n_panels <= HOVER_BUDGET_BYTES:
            return cd, tpl + value
    return None, "query i = %{y}<br>key j = %{x}<br>" + value


# ----------------------------------------------------------------------------------------------
# Layout: small multiples on one shared colour axis


def grid_shape(n_panels: int, cols: int | None) -> tuple[int, int]:
    if cols is None:
        cols = min(n_panels, 4)
    cols = check_int("cols", cols)
    cols = min(cols, n_panels)
    return math.ceil(n_panels / cols), cols


def axis_ids(k: int) -> tuple[str, str]:
    """Trace refs (``"x"``, ``"y"``) of panel ``k`` (0-based)."""
    return ("x", "y") if k == 0 else (f"x{k + 1}", f"y{k + 1}")


def grid_layout(
    titles: Sequence[str],
    *,
    cols: int | None = None,
    square: bool = True,
    reverse_y: bool = True,
    x_title: str | None = None,
    y_title: str | None = None,
    panel_px: int | None = None,
    cells: tuple[int, int] | None = None,
) -> tuple[dict, list[tuple[str, str]]]:
    """Axes, domains and panel titles for ``len(titles)`` panels in a grid (row-major).

    ``cells`` (rows, columns of each heatmap): sides of at most 12 cells get a tick on every cell
    (Plotly would otherwise label half-cells such as -0.5).

    Returns:
        The layout dict (without ``title``) and each panel's trace axis refs.
    """
    n = len(titles)
    rows, cols = grid_shape(n, cols)
    if panel_px is None:
        panel_px = 460 if n == 1 else 300 if n <= 4 else 240
    # Gaps in pixels (room for tick labels and panel titles), converted to paper fractions, so any
    # number of rows and columns fits.
    gap_x, gap_y = 56, 48
    paper_w = cols * panel_px + (cols - 1) * gap_x
    paper_h = rows * panel_px + (rows - 1) * gap_y
    hgap, vgap = gap_x / paper_w, gap_y / paper_h
    pw, ph = panel_px / paper_w, panel_px / paper_h
    layout: dict[str, Any] = {}
    refs = []
    annotations = []
    for k, text in enumerate(titles):
        r, c = divmod(k, cols)
        x0 = c * (pw + hgap)
        y1 = 1.0 - r * (ph + vgap)
        xr, yr = axis_ids(k)
        xname = "xaxis" if k == 0 else f"xaxis{k + 1}"
        yname = "yaxis" if k == 0 else f"yaxis{k + 1}"
        # Clamp: float error can put the last row's edge at -5e-17, which Plotly rejects.
        xa: dict[str, Any] = {"domain": [max(0.0, x0), min(1.0, x0 + pw)], "anchor": yr}
        ya: dict[str, Any] = {"domain": [max(0.0, y1 - ph), min(1.0, y1)], "anchor": xr}
        if square:
            ya.update(scaleanchor=xr, scaleratio=1, constrain="domain")
            xa.update(constrain="domain")
        if reverse_y:
            ya["autorange"] = "reversed"
        if cells is not None:
            if cells[0] <= 12:
                ya["dtick"] = 1
            if cells[1] <= 12:
                xa["dtick"] = 1
        if x_title and r == rows - 1:
            xa["title"] = {"text": x_title}
        if y_title and c == 0:
            ya["title"] = {"text": y_title}
        layout[xname], layout[yname] = xa, ya
        refs.append((xr, yr))
        if n > 1 and text:
            annotations.append(
                {
                    "text": text, "x": x0 + pw / 2, "y": y1, "xref": "paper", "yref": "paper",
                    "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                    "font": {"size": 13},
                }
            )  # fmt: skip
    margin = {"l": 64, "r": 40, "t": 84, "b": 56}
    layout["annotations"] = annotations
    layout["width"] = int(paper_w + margin["l"] + margin["r"] + 90)  # + colorbar
    layout["height"] = int(paper_h + margin["t"] + margin["b"])
    layout["margin"] = margin
    return layout, refs


def color_range(values: np.ndarray, diverging: bool, zmid: float | None) -> tuple[float, float]:
    """Shared ``(zmin, zmax)``: the finite data range, symmetric about ``zmid`` (default 0) for a
    diverging scale."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or ±inf (e.g. masked logits): skip them
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return (-1.0, 1.0) if diverging else (0.0, 1.0)
        lo, hi = float(finite.min()), float(finite.max())
    if diverging:
        mid = 0.0 if zmid is None else float(zmid)
        half = max(abs(lo - mid), abs(hi - mid)) or 1e-12
        return mid - half, mid + half
    if lo == hi:
        return lo - 0.5, hi + 0.5
    return lo, hi


def full_title(title: str, notes: Sequence[str | None]) -> str:
    notes = [n for n in notes if n]
    return title if not notes else f"{title} ({'; '.join(notes)})"


def coloraxis_layout(colorscale: str, zmin: float, zmax: float, label: str | None) -> dict:
    axis: dict[str, Any] = {"colorscale": colorscale, "cmin": zmin, "cmax": zmax}
    if label:
        axis["colorbar"] = {"title": {"text": label}}
    return axis


# ----------------------------------------------------------------------------------------------
# Tables


def infer_table_geometry(
    t: int, window: tuple[int, int] | None, seq_len: int | None
) -> tuple[tuple[int, int] | None, int | None]:
    """Resolve a table's geometry: explicit arguments first, then an odd square ``T`` -> square 2D
    window, then an odd ``T`` -> 1D."""
    if window is not None and seq_len is not None:
        raise ValueError("pass window_size (2D) or seq_len (1D), not both")
    if window is not None:
        if num_table_rows(window) != t:
            raise ValueError(
                f"window_size {window} needs (2h-1)(2w-1) = {num_table_rows(window)} table rows, "
                f"the table has {t}"
            )
        return window, None
    if seq_len is not None:
        if num_table_rows(seq_len) != t:
            raise ValueError(
                f"seq_len {seq_len} needs 2L-1 = {num_table_rows(seq_len)} table rows, the table has {t}"
            )
        return None, seq_len
    side = math.isqrt(t)
    if side * side == t and side % 2 == 1 and side > 1:
        return ((side + 1) // 2, (side + 1) // 2), None
    if t % 2 == 1:
        return None, (t + 1) // 2
    raise ValueError(
        f"cannot tell the geometry of a table with {t} rows: pass window_size=(h, w) with "
        "(2h-1)(2w-1) rows or seq_len=L with 2L-1 rows"
    )


def as_table(name: str, value: Any) -> np.ndarray:
    """A ``(T, H)`` table (a ``(T,)`` one is one head) as float32 numpy."""
    arr = to_numpy(name, value)
    if arr.ndim == 1:
        arr = arr[:, None]  # (T, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (T, H) (table rows x heads), got {tuple(arr.shape)}")
    return arr
