"""Relative position indices and the learnable relative position bias (Swin / timm conventions).

Shape legend: ``H`` heads, ``N`` tokens (``N = h * w`` for a 2D window, ``L`` for 1D),
``T`` table rows (``num_relative_positions``).

Conventions (so Swin, timm and BEiT tables drop in unchanged):

* 1D: ``index[i, j] = i - j + L - 1``                                    (T = 2L - 1)
* 2D: tokens flattened row by row, ``t -> (y, x) = (t // w, t % w)``;
  ``index[i, j] = (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1)``  (T = (2h-1)(2w-1))
* ``relative_position_bias_table``: ``(T, H)`` parameter, truncated-normal init with ``init_std``.
* ``relative_position_index``: non-persistent ``(N, N)`` buffer (derived, so never in checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size

__all__ = [
    "BIAS_TYPES",
    "RelativePositionBias",
    "get_relative_position_index_1d",
    "get_relative_position_index_2d",
]

#: The bias families ``RelativePositionBias`` accepts as ``bias_type``.
BIAS_TYPES: tuple[str, ...] = ("1d", "2d")


def get_relative_position_index_1d(seq_len: int) -> torch.Tensor:
    """Relative position index of a 1D sequence.

    Args:
        seq_len: sequence length ``L`` (positive int).

    Returns:
        ``(L, L)`` int64 tensor with ``index[i, j] = i - j + L - 1`` in ``[0, 2L - 2]``.
    """
    seq_len = check_int("seq_len", seq_len)
    pos = torch.arange(seq_len)
    return pos[:, None] - pos[None, :] + (seq_len - 1)  # (L, L)


def get_relative_position_index_2d(window_size: tuple[int, int]) -> torch.Tensor:
    """Relative position index of a 2D window, exactly as Swin computes it.

    Args:
        window_size: ``(h, w)`` of the window (an int means a square window).

    Returns:
        ``(h*w, h*w)`` int64 tensor with values in ``[0, (2h-1)(2w-1) - 1]``.
        For ``(2, 2)``: ``[[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]``.
    """
    h, w = check_window_size("window_size", window_size)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N), row-major tokens
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): (dy, dx) = query - key
    return (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)  # (N, N)


class RelativePositionBias(nn.Module):
    """Learnable relative position bias: one scalar per (relative offset, head).

    Args:
        num_heads: number of attention heads ``H``.
        window_size: ``(h, w)`` of the token grid; required for ``bias_type="2d"``.
        seq_len: sequence length ``L``; required for ``bias_type="1d"``.
        bias_type: ``"1d"`` or ``"2d"``.
        init_std: standard deviation of the truncated-normal table init (cut at ±2 std).

    ``forward()`` returns the ``(H, N, N)`` bias to add to the scaled attention logits.
    In training it is gathered anew on every call (so gradients reach the table); in eval mode
    without autograd it is cached until the table, the index, the device or the dtype changes.

    Example:
        >>> rpb = RelativePositionBias(num_heads=8, window_size=(7, 7), bias_type="2d")
        >>> rpb().shape
        torch.Size([8, 49, 49])
    """

    def __init__(
        self,
        num_heads: int,
        window_size: tuple[int, int] | None = None,
        seq_len: int | None = None,
        bias_type: str = "2d",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads)
        self.bias_type = check_choice("bias_type", bias_type, BIAS_TYPES)
        self.init_std = check_float("init_std", init_std, minimum=0.0)
        if bias_type == "2d":
            if window_size is None:
                raise ValueError(
                    "window_size is required for bias_type='2d': pass (height, width), e.g. (7, 7)"
                )
            self.window_size: tuple[int, int] | None = check_window_size("window_size", window_size)
            self.seq_len = self.window_size[0] * self.window_size[1]
            index = get_relative_position_index_2d(self.window_size)
            h, w = self.window_size
            self.num_relative_positions = (2 * h - 1) * (2 * w - 1)
        else:
            if seq_len is None:
                raise ValueError("seq_len is required for bias_type='1d': pass a positive int, e.g. 16")
            self.seq_len = check_int("seq_len", seq_len)
            self.window_size = None
            index = get_relative_position_index_1d(self.seq_len)
            self.num_relative_positions = 2 * self.seq_len - 1

        self.relative_position_bias_table = nn.Parameter(
            torch.empty(self.num_relative_positions, self.num_heads)
        )  # (T, H)
        self.register_buffer("relative_position_index", index, persistent=False)  # (N, N)
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        """``N``, the number of query (and key) tokens the bias covers."""
        return self.seq_len

    def reset_parameters(self) -> None:
        std = self.init_std
        if std == 0:
            nn.init.zeros_(self.relative_position_bias_table)
        else:
            nn.init.trunc_normal_(self.relative_position_bias_table, std=std, a=-2 * std, b=2 * std)
        self._cache = None

    def _cache_key(self) -> tuple:
        table, index = self.relative_position_bias_table, self.relative_position_index
        return (
            id(table),
            table.data_ptr(),
            table._version,
            table.dtype,
            table.device,
            index.data_ptr(),
            index._version,
            torch.is_inference_mode_enabled(),
        )

    def _gather(self) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        # Head-major gather: (H, T).index_select over a flat index is several times faster than
        # table[index.view(-1)].view(N, N, H).permute(2, 0, 1).contiguous(), forward and backward.
        table_hm = self.relative_position_bias_table.t().contiguous()  # (H, T)
        return table_hm.index_select(1, self.relative_position_index.view(-1)).view(
            self.num_heads, n, n
        )  # (H, N, N)

    def forward(self) -> torch.Tensor:
        """Return the bias of shape ``(num_heads, N, N)``."""
        needs_graph = torch.is_grad_enabled() and self.relative_position_bias_table.requires_grad
        if self.training or needs_graph:
            self._cache = None
            return self._gather()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._gather())
        return self._cache[1]

    def extra_repr(self) -> str:
        size = f"window_size={self.window_size}" if self.bias_type == "2d" else f"seq_len={self.seq_len}"
        return f"num_heads={self.num_heads}, {size}, bias_type={self.bias_type!r}, init_std={self.init_std}"

    # A cached tensor must not travel with deepcopy/pickling of the module.
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_cache"] = None
        return state
