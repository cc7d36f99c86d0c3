"""Move a relative position bias table to another window size (bicubic, or BEiT's geometric).

Shape legend: ``H`` heads, ``(h, w)`` window, ``S = (2h-1, 2w-1)`` the table as a grid of offsets,
``T = S[0] * S[1] (+ 3)`` table rows (the 3 class-token rows of BEiT are kept as they are, last).

Pure table math (torch, numpy, scipy): the resize lab that measures resized checkpoints is
:mod:`relpos.experiments.resize_lab`.

* ``"bicubic"``: the table as an ``(H, 2h-1, 2w-1)`` image, ``F.interpolate(mode="bicubic",
  align_corners=False)``, as timm's ``resize_rel_pos_bias_table`` and Swin's checkpoint loading.
* ``"geometric"``: BEiT's fine-tuning resize (unilm ``beit/run_class_finetuning.py``): the source
  offsets are placed at ``0, ±1, ±(1+q), ±(1+q+q²), ...`` with the ratio ``q`` found by bisection so
  that the outermost lands on the new half-width; a cubic spline through them (per axis, not-a-knot,
  which equals ``interp2d(kind="cubic")`` / ``RectBivariateSpline(s=0)`` on a grid) is read at the
  integer offsets of the new window. Near offsets keep their values; far ones are stretched.
  Shrinking uses the same construction with ``q < 1``. Needs scipy (installed with scikit-learn).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from relpos._validation import check_choice, check_window_size
from relpos.families import NUM_CLS_ROWS

__all__ = ["RESIZE_METHODS", "geometric_offsets", "resize_relative_position_bias_table"]

#: Values of ``method``.
RESIZE_METHODS: tuple[str, ...] = ("bicubic", "geometric")


def geometric_offsets(src: int, dst: int) -> list[float]:
    """BEiT's source positions for a table side of ``src`` offsets resized to ``dst``.

    Args:
        src: source side ``2h - 1`` (odd).
        dst: destination side ``2h' - 1`` (odd).

    Returns:
        ``src`` increasing positions ``[-d_n, ..., -d_1, 0, d_1, ..., d_n]`` with ``d_1 = 1`` and
        gaps growing (``dst > src``) or shrinking (``dst < src``) by a factor ``q``;
        ``d_n ≈ dst // 2``. The bisection for ``q`` is BEiT's (``[1.01, 1.5]``, tolerance 1e-6)
        when enlarging; ``[0.01, 0.99]`` when shrinking.
    """
    n = src // 2

    def gp(q: float) -> float:  # 1 + q + ... + q^(n-1)
        return (1.0 - q**n) / (1.0 - q)

    left, right = (1.01, 1.5) if dst >= src else (0.01, 0.99)
    q = (left + right) / 2.0
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if gp(q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(n):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


def _spline_axis(values: np.ndarray, src_pos: list[float], dst_pos: np.ndarray, axis: int) -> np.ndarray:
    """Interpolating spline (not-a-knot, cubic when there are >= 4 points) along ``axis``."""
    from scipy.interpolate import make_interp_spline

    x = np.asarray(src_pos, dtype=np.float64)
    k = min(3, len(x) - 1)
    moved = np.moveaxis(values, axis, 0)  # (src, ...)
    if k == 0:
        out = np.repeat(moved[:1], len(dst_pos), axis=0)
    else:
        spline = make_interp_spline(x, moved, k=k)
        # interp2d extrapolated to the nearest value; clamp to the source range as it did.
        out = spline(np.clip(dst_pos, x[0], x[-1]))  # (dst, ...)
    return np.moveaxis(out, 0, axis)


def _geometric(grid: torch.Tensor, dst: tuple[int, int]) -> torch.Tensor:
    """``(H, Sh, Sw) -> (H, Dh, Dw)`` by BEiT's geometric-progression spline."""
    values = grid.detach().double().cpu().numpy()  # (H, Sh, Sw)
    for axis, (s, d) in ((1, (grid.shape[1], dst[0])), (2, (grid.shape[2], dst[1]))):
        if s == d:
            continue
        t = d // 2
        dst_pos = np.arange(-t, t + 0.1, 1.0)  # (d,) integer offsets, as BEiT
        values = _spline_axis(values, geometric_offsets(s, d), dst_pos, axis)
    return torch.from_numpy(np.ascontiguousarray(values))


def resize_relative_position_bias_table(
    table: torch.Tensor,
    old_window: tuple[int, int],
    new_window: tuple[int, int],
    method: str = "bicubic",
) -> torch.Tensor:
    """Resize a ``(T, H)`` relative position bias table from ``old_window`` to ``new_window``.

    Args:
        table: ``(T, H)`` with ``T = (2h-1)(2w-1)`` or ``+ 3`` class-token rows (BEiT), which are
            kept unchanged at the end. A 1D table ``(2L-1, H)`` is the window ``(1, L)``.
        old_window: ``(h, w)`` the table was made for (an int means square).
        new_window: ``(h', w')`` to resize to.
        method: ``"bicubic"`` or ``"geometric"`` (see the module docstring).

    Returns:
        ``(T', H)`` table, ``T' = (2h'-1)(2w'-1) (+ 3)``, same dtype and device. Equal windows return
        a copy of ``table``.

    Raises:
        TypeError / ValueError: ``table`` is not a 2D tensor, or its rows do not match ``old_window``.
    """
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise TypeError(f"table must be a (T, H) tensor, got {shape}")
    oh, ow = check_window_size("old_window", old_window)
    nh, nw = check_window_size("new_window", new_window)
    check_choice("method", method, RESIZE_METHODS)
    src = (2 * oh - 1, 2 * ow - 1)
    dst = (2 * nh - 1, 2 * nw - 1)
    extra = table.shape[0] - src[0] * src[1]
    if extra not in (0, NUM_CLS_ROWS):
        raise ValueError(
            f"table has {table.shape[0]} rows but old_window {(oh, ow)} needs {src[0] * src[1]} "
            f"(or {src[0] * src[1] + NUM_CLS_ROWS} with BEiT's class-token rows)"
        )
    if src == dst:
        return table.clone()
    num_heads = table.shape[1]
    core, cls_rows = table[: src[0] * src[1]], table[src[0] * src[1] :]  # (Sh*Sw, H), (extra, H)
    grid = core.t().reshape(num_heads, src[0], src[1])  # (H, Sh, Sw)
    if method == "bicubic":
        out = F.interpolate(
            grid.unsqueeze(0).float(), size=dst, mode="bicubic", align_corners=False
        )[0]  # (H, Dh, Dw)
    else:
        out = _geometric(grid, dst)  # (H, Dh, Dw)
    out = out.reshape(num_heads, dst[0] * dst[1]).t()  # (Dh*Dw, H)
    out = out.to(dtype=table.dtype, device=table.device)
    return torch.cat([out, cls_rows], dim=0)  # (T', H)
