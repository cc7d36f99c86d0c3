"""Where tokens sit and which table row a (query, key) pair reads: the one home of that arithmetic.

Every other module (the bias families, the diagnostics, the presets, the figures, the app) takes its
offsets, distances and index rows from here, so the convention is written once.

Shape legend: ``N`` tokens (``h * w`` of a window, ``L`` of a sequence), ``T`` table rows.

A **size** is a 2D window ``(h, w)`` (a pair) or a 1D sequence length ``L`` (an int). A sequence is
the ``1 x L`` window: its index ``i - j + L - 1`` is the 2D index with ``h = 1``, so one formula
serves both.

Conventions (Swin / timm / BEiT, so their tables drop in unchanged):

* tokens flattened row by row, ``t -> (y, x) = (t // w, t % w)``;
* the offset of query ``i`` and key ``j`` is ``(Δy, Δx) = (y_i - y_j, x_i - x_j)`` (query - key);
* its table row is ``r = (Δy + h - 1) * (2w - 1) + (Δx + w - 1)``, ``T = (2h-1)(2w-1)``
  (1D: ``r = i - j + L - 1``, ``T = 2L - 1``); window ``(2, 2)`` gives
  ``[[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]``;
* a class token is token 0, before the grid; its :data:`~relpos.families.NUM_CLS_ROWS` rows follow the
  grid rows in the order of :data:`CLS_ROW_NAMES` (BEiT);
* T5 buckets the offset ``j - i`` (key - query, "memory - context"), the other way round.

Pure arithmetic: this module imports only torch, numpy and :mod:`relpos._validation`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from relpos._validation import check_choice, check_int, check_window_size

__all__ = [
    "CLS_ROW_NAMES",
    "DISTANCE_METRICS",
    "add_class_token",
    "center_token",
    "check_size",
    "decode_cell",
    "num_table_rows",
    "num_tokens",
    "pair_offsets",
    "relative_position_index",
    "strip_class_token",
    "t5_bucket",
    "t5_bucket_distances",
    "t5_bucket_offsets",
    "table_distances",
    "table_row",
    "table_offsets",
    "token_distances",
    "token_grid",
    "token_positions",
]

#: Names of the class-token rows after the grid rows of a table, in order (BEiT).
CLS_ROW_NAMES: tuple[str, ...] = ("cls → token", "token → cls", "cls → cls")
#: Distances between offsets: ``"euclidean"`` ``sqrt(Δy² + Δx²)`` or ``"manhattan"`` ``|Δy| + |Δx|``.
DISTANCE_METRICS: tuple[str, ...] = ("euclidean", "manhattan")


# --------------------------------------------------------------------------- sizes and tokens


def check_size(size: Any, name: str = "size") -> tuple[int, int] | int:
    """``size`` checked: a pair is a window ``(h, w)``, an int a sequence length ``L``.

    Raises:
        TypeError: neither an int nor a pair of ints.
        ValueError: a side or the length is not positive.
    """
    if isinstance(size, (tuple, list)):
        return check_window_size(name, size)
    return check_int(name, size)


def token_grid(size: Any) -> tuple[int, int]:
    """The token grid of a size: ``(h, w)`` for a window, ``(1, L)`` for a sequence."""
    size = check_size(size)
    return size if isinstance(size, tuple) else (1, size)


def num_tokens(size: Any) -> int:
    """``N``: ``h * w`` for a window, ``L`` for a sequence (a class token not included)."""
    h, w = token_grid(size)
    return h * w


def num_table_rows(size: Any, extra_rows: int = 0) -> int:
    """``T``: ``(2h-1)(2w-1)`` for a window, ``2L-1`` for a sequence, plus ``extra_rows``
    (e.g. :data:`~relpos.families.NUM_CLS_ROWS` for a class token)."""
    h, w = token_grid(size)
    return (2 * h - 1) * (2 * w - 1) + check_int("extra_rows", extra_rows, minimum=0)


def center_token(grid: Any) -> int:
    """The token at the centre of an ``(h, w)`` grid (row-major), a good default query."""
    h, w = check_window_size("grid", grid)
    return (h // 2) * w + w // 2


def token_positions(size: Any) -> torch.Tensor:
    """``(N, 2)`` int64 ``(y, x)`` of every token, row-major (a sequence: ``(0, t)``)."""
    h, w = token_grid(size)
    t = torch.arange(h * w)
    return torch.stack([t // w, t % w], dim=1)  # (N, 2)


def pair_offsets(size: Any) -> torch.Tensor:
    """``(2, N, N)`` int64 offsets ``(Δy, Δx) = query - key`` of every (query, key) pair (a sequence:
    ``Δy = 0``, ``Δx = i - j``)."""
    size = check_size(size)
    if isinstance(size, int):
        pos = torch.arange(size)
        out = torch.zeros(2, size, size, dtype=torch.long)  # (2, L, L)
        torch.sub(pos[:, None], pos[None, :], out=out[1])
        return out
    pos = token_positions(size).t()  # (2, N)
    return pos[:, :, None] - pos[:, None, :]  # (2, N, N)


def token_distances(size: Any) -> torch.Tensor:
    """``(N, N)`` float64 Euclidean distance between tokens (a sequence: ``|i - j|``, exactly)."""
    dy, dx = pair_offsets(size).double()  # (N, N) each
    return (dy * dy + dx * dx).sqrt()  # (N, N)


# --------------------------------------------------------------------------- the index and the table


def table_row(dy: Any, dx: Any, size: Any) -> Any:
    """The index formula: the table row of offset ``(Δy, Δx)`` (query - key) in a window ``(h, w)``,
    ``(Δy + h - 1)(2w - 1) + (Δx + w - 1)``; for a length ``L`` (``Δy = 0``) ``Δx + L - 1``.

    ``dy`` and ``dx`` may be ints, numpy arrays or tensors (of one shape); so is the result.
    """
    h, w = token_grid(size)
    return (dy + h - 1) * (2 * w - 1) + (dx + w - 1)


def relative_position_index(size: Any) -> torch.Tensor:
    """``(N, N)`` int64 relative position index: the table row each (query, key) pair reads.

    A window ``(h, w)``: Swin's ``(Δy + h - 1)(2w - 1) + (Δx + w - 1)``; a length ``L``:
    ``i - j + L - 1``. No memory guard here: :func:`relpos.relative_position.get_relative_position_index_2d`
    and ``_1d`` check the budget first.
    """
    size = check_size(size)
    if isinstance(size, tuple):
        dy, dx = pair_offsets(size)  # (N, N) each
        return table_row(dy, dx, size)  # (N, N)
    pos = torch.arange(size)
    return table_row(0, pos[:, None] - pos[None, :], size)  # (L, L) = i - j + L - 1


def table_offsets(size: Any) -> torch.Tensor:
    """The offset each table row stands for, row-major: ``(T, 2)`` int64 ``(Δy, Δx)`` for a window,
    ``(T,)`` int64 ``Δ = i - j`` (``-(L-1) .. L-1``) for a sequence."""
    size = check_size(size)
    if isinstance(size, tuple):
        h, w = size
        dy, dx = torch.meshgrid(torch.arange(-(h - 1), h), torch.arange(-(w - 1), w), indexing="ij")
        return torch.stack([dy.flatten(), dx.flatten()], dim=1)  # (T, 2); row r = table_row(dy, dx)
    return torch.arange(-(size - 1), size)  # (T,)


def table_distances(size: Any, metric: str = "euclidean") -> torch.Tensor:
    """``(T,)`` float64 length of the offset of each table row (:data:`DISTANCE_METRICS`; a
    sequence: ``|Δ|`` either way)."""
    metric = check_choice("metric", metric, DISTANCE_METRICS)
    offsets = table_offsets(size).double()
    if offsets.dim() == 1:
        return offsets.abs()  # (T,)
    if metric == "manhattan":
        return offsets.abs().sum(dim=1)  # (T,)
    return offsets.pow(2).sum(dim=1).sqrt()  # (T,)


def decode_cell(size: Any, i: int, j: int) -> dict:
    """Everything about cell ``(i, j)`` of the index, for captions and the formula.

    Returns:
        ``i``, ``j``, ``index`` (the table row) and, for a window, ``query`` and ``key`` as
        ``(y, x)``, ``offset`` ``(Δy, Δx)`` and ``window`` ``(h, w)``; for a sequence ``offset``
        ``i - j`` and ``seq_len``.
    """
    size = check_size(size)
    h, w = token_grid(size)
    i = check_int("i", i, minimum=0, maximum=h * w - 1)
    j = check_int("j", j, minimum=0, maximum=h * w - 1)
    (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
    dy, dx = yi - yj, xi - xj
    index = table_row(dy, dx, (h, w))
    if isinstance(size, tuple):
        return {"i": i, "j": j, "query": (yi, xi), "key": (yj, xj), "offset": (dy, dx),
                "window": (h, w), "index": index}
    return {"i": i, "j": j, "offset": dx, "seq_len": size, "index": index}


# --------------------------------------------------------------------------- class token


def add_class_token(index: torch.Tensor, grid_rows: int) -> torch.Tensor:
    """BEiT's index with a class token (token 0) before the grid: ``(N, N)`` -> ``(N+1, N+1)``.

    ``index[1:, 1:]`` is the grid index; the class-token pairs read the rows after the grid's
    ``grid_rows`` in the order of :data:`CLS_ROW_NAMES`: ``index[0, 1:] = grid_rows`` (cls -> token),
    ``index[1:, 0] = grid_rows + 1`` (token -> cls), ``index[0, 0] = grid_rows + 2`` (cls -> cls).
    """
    grid_rows = check_int("grid_rows", grid_rows)
    n = index.shape[0]
    out = torch.empty(n + 1, n + 1, dtype=index.dtype, device=index.device)  # (N+1, N+1)
    out[1:, 1:] = index
    out[0, 1:] = grid_rows
    out[1:, 0] = grid_rows + 1
    out[0, 0] = grid_rows + 2
    return out


def strip_class_token(matrix: Any, grid: Any) -> Any:
    """Drop a leading class token: ``(..., N+1, N+1)`` -> ``(..., N, N)`` when ``N = h * w``.

    Works on numpy arrays and tensors; matrices that already cover ``h * w`` tokens are returned as
    they are; other sizes are a ValueError.
    """
    h, w = check_window_size("grid", grid)
    n = matrix.shape[-1]
    if n == h * w:
        return matrix
    if n == h * w + 1:
        return matrix[..., 1:, 1:]  # (..., N, N) patch tokens only
    raise ValueError(f"matrix covers {n} tokens; grid {(h, w)} has {h * w} (or {h * w + 1} with a class token)")


# --------------------------------------------------------------------------- T5 buckets


def t5_bucket(relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bidirectional bucket of a relative position (``key_pos - query_pos``, "memory - context").

    Half the buckets hold positive offsets (key after query). In each half, offsets below
    ``max_exact = num_buckets // 4`` get a bucket each; larger ones share log-spaced buckets up to
    ``max_distance``, beyond which all fall into the last bucket (as T5's
    ``_relative_position_bucket(..., bidirectional=True)``).

    Args:
        relative_position: int tensor of any shape.
        num_buckets: total buckets (>= 4).
        max_distance: offset from which every offset shares the last bucket (> num_buckets // 4).

    Returns:
        int64 tensor of the same shape with values in ``[0, num_buckets - 1]``.
    """
    num_buckets = check_int("num_buckets", num_buckets, minimum=4)
    max_exact = num_buckets // 4  # exact buckets per direction
    max_distance = check_int("max_distance", max_distance, minimum=max_exact + 1)
    half = num_buckets // 2
    rel = relative_position.long()
    buckets = (rel > 0).long() * half
    n = rel.abs()
    is_small = n < max_exact
    # log-spaced buckets for max_exact <= n; clamp n >= max_exact so log never sees 0.
    n_large = n.clamp(min=max_exact).float()
    large = max_exact + (
        torch.log(n_large / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(is_small, n, large)


def t5_bucket_offsets(num_buckets: int, max_distance: int, reach: int | None = None) -> list[np.ndarray]:
    """For each bucket, the offsets ``j - i`` (key - query) that fall in it.

    Args:
        num_buckets, max_distance: as :func:`t5_bucket`.
        reach: consider offsets within ``±reach`` (e.g. ``L - 1`` for a sequence of ``L``); default
            ``max_distance`` (beyond it everything shares the last bucket of its direction).

    Returns:
        ``num_buckets`` int64 arrays, ascending (empty for a bucket no offset reaches).
    """
    reach = check_int("max_distance", max_distance) if reach is None else check_int("reach", reach, minimum=0)
    rel = torch.arange(-reach, reach + 1)  # (2 reach + 1,) offsets key - query
    buckets = t5_bucket(rel, num_buckets, max_distance).numpy()
    offs = rel.numpy()
    return [offs[buckets == b] for b in range(num_buckets)]


def t5_bucket_distances(num_buckets: int, max_distance: int) -> torch.Tensor:
    """``(num_buckets,)`` float32: the smallest ``|offset|`` in each bucket (0 for a bucket no
    offset reaches, e.g. bucket ``num_buckets // 2``: a positive offset is never 0)."""
    num_buckets = check_int("num_buckets", num_buckets, minimum=4)
    max_distance = check_int("max_distance", max_distance, minimum=num_buckets // 4 + 1)
    rel = torch.arange(-2 * max_distance, 2 * max_distance + 1)  # (4 max_distance + 1,)
    buckets = t5_bucket(rel, num_buckets, max_distance)
    out = torch.full((num_buckets,), float("inf"))
    out.scatter_reduce_(0, buckets, rel.abs().float(), reduce="amin")
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)  # (num_buckets,)
