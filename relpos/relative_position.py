"""Relative position indices and the relative position bias families (Swin / timm conventions).

Shape legend: ``H`` heads, ``N`` tokens (``N = h * w`` for a 2D window, ``L`` for 1D, ``h * w + 1``
with a class token), ``T`` table rows (``num_relative_positions``).

Every family is "a ``(T, H)`` table + an ``(N, N)`` int64 index"; one head-major gather turns them into
the ``(H, N, N)`` bias. Only where the table comes from, and how the index is built, differs:

=========  ===========================================  ==========================================
bias_type  table ``(T, H)``                              index ``(N, N)``
=========  ===========================================  ==========================================
"1d"       learned parameter, ``T = 2L - 1``             ``i - j + L - 1``
"2d"       learned parameter, ``T = (2h-1)(2w-1)``       Swin's 2D index (below)
"2d_cls"   learned parameter, ``T = (2h-1)(2w-1) + 3``   BEiT's index with a class token (token 0)
"t5"       learned parameter, ``T = num_buckets``        T5 bucket of ``j - i`` (key - query)
"alibi"    fixed buffer ``-slope_h * distance(offset)``  the 1D or 2D index
"cpb"      ``16 * sigmoid(cpb_mlp(log/lin coords))``    Swin's 2D index
=========  ===========================================  ==========================================

Conventions (so Swin, timm and BEiT tables drop in unchanged):

* 1D: ``index[i, j] = i - j + L - 1``                                    (T = 2L - 1)
* 2D: tokens flattened row by row, ``t -> (y, x) = (t // w, t % w)``;
  ``index[i, j] = (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1)``  (T = (2h-1)(2w-1))
* ``relative_position_bias_table``: ``(T, H)`` parameter, truncated-normal init with ``init_std``.
* ``relative_position_index``: non-persistent ``(N, N)`` buffer (derived, so never in checkpoints).

What each family *is* (grid, learned, resizable, class-token rows, options) is
:data:`relpos.families.FAMILIES`; the offsets and the index formula are :mod:`relpos.geometry`'s. This
file (about 500 lines, over the house 400) is the seed module: the public index functions and the one
:class:`RelativePositionBias` class that implements every family, kept together as one concept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.families import (
    ALIBI_DISTANCES,
    BIAS_TYPES,
    DEFAULT_BIAS_TYPE,
    FAMILIES,
    FAMILY_OPTIONS,
    RPB_KWARGS,
    BiasFamily,
    check_rpb_kwargs,
    family_options,
    is_2d_family,
)
from relpos.geometry import (
    add_class_token,
    num_table_rows,
    relative_position_index,
    t5_bucket,
    table_distances,
    table_offsets,
)
from relpos.guards import check_bias_budget, check_budget
from relpos.resize import RESIZE_METHODS, resize_relative_position_bias_table

__all__ = [
    "ALIBI_DISTANCES",
    "BIAS_TYPES",
    "FAMILY_OPTIONS",
    "RPB_KWARGS",
    "RelativePositionBias",
    "alibi_slopes",
    "check_rpb_kwargs",
    "get_relative_position_index_1d",
    "get_relative_position_index_2d",
    "get_relative_position_index_2d_cls",
    "is_2d_family",
    "swinv2_linear_coords",
    "swinv2_log_coords",
    "t5_relative_position_bucket",
]

def get_relative_position_index_1d(seq_len: int) -> torch.Tensor:
    """Relative position index of a 1D sequence.

    Args:
        seq_len: sequence length ``L`` (positive int).

    Returns:
        ``(L, L)`` int64 tensor with ``index[i, j] = i - j + L - 1`` in ``[0, 2L - 2]``.
    """
    seq_len = check_int("seq_len", seq_len)
    check_budget(seq_len * seq_len * 8, f"the relative position index (seq_len {seq_len})")
    return relative_position_index(seq_len)  # (L, L)


def get_relative_position_index_2d(window_size: tuple[int, int]) -> torch.Tensor:
    """Relative position index of a 2D window, exactly as Swin computes it.

    Args:
        window_size: ``(h, w)`` of the window (an int means a square window).

    Returns:
        ``(h*w, h*w)`` int64 tensor with values in ``[0, (2h-1)(2w-1) - 1]``.
        For ``(2, 2)``: ``[[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]``.
    """
    h, w = check_window_size("window_size", window_size)
    check_budget((h * w) ** 2 * 8 * 3, f"the relative position index (window ({h}, {w}))")  # rel is (2, N, N)
    return relative_position_index((h, w))  # (N, N)


def get_relative_position_index_2d_cls(window_size: tuple[int, int]) -> torch.Tensor:
    """BEiT's relative position index for a class token (token 0) followed by an ``h x w`` grid.

    As BEiT's ``gen_relative_position_index``, with ``T = (2h-1)(2w-1) + 3``: ``index[1:, 1:]`` is the
    2D index, ``index[0, 1:] = T - 3`` (cls -> token), ``index[1:, 0] = T - 2`` (token -> cls),
    ``index[0, 0] = T - 1`` (cls -> cls).

    Returns:
        ``(h*w + 1, h*w + 1)`` int64 tensor with values in ``[0, T - 1]``.
    """
    h, w = check_window_size("window_size", window_size)
    return add_class_token(get_relative_position_index_2d((h, w)), num_table_rows((h, w)))  # (N+1, N+1)


def t5_relative_position_bucket(
    relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """T5's bidirectional bucket of ``key_pos - query_pos``: :func:`relpos.geometry.t5_bucket` (the
    arithmetic and its documentation live there; this is the family's public name)."""
    return t5_bucket(relative_position, num_buckets, max_distance)  # the arithmetic: relpos.geometry


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al., ``get_slopes``), as a float64 ``(H,)`` tensor.

    For ``H`` a power of two: ``2 ** (-8 (h + 1) / H)``, ``h = 0..H-1`` (8 heads: 1/2, 1/4, ..., 1/256).
    Otherwise: the slopes of the closest smaller power of two ``m``, then every other slope of the
    ``2m`` set (``2 ** (-4 (2k + 1) / m)``, ``k = 0..H-m-1``).
    """
    num_heads = check_int("num_heads", num_heads)
    m = 1 << (num_heads.bit_length() - 1)  # largest power of two <= H
    first = [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]
    rest = [2.0 ** (-4.0 * (2 * k + 1) / m) for k in range(num_heads - m)]
    return torch.tensor(first + rest, dtype=torch.float64)


def swinv2_log_coords(
    window_size: tuple[int, int], pretrained_window_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Swin V2's log-spaced relative coordinates, the input of the continuous position bias MLP.

    ``(dy, dx)`` in ``[-(h-1), h-1] x [-(w-1), w-1]`` divided by ``(h-1, w-1)`` (or by the pretrained
    window's ``(h'-1, w'-1)``; a side of 1 divides by 1), times 8, then
    ``sign(x) * log2(|x| + 1) / log2(8)``.

    Returns:
        ``(2h-1, 2w-1, 2)`` float32 tensor (last axis ``(dy, dx)``).
    """
    h, w = check_window_size("window_size", window_size)
    ph, pw = (h, w)
    if pretrained_window_size is not None:
        ph, pw = check_window_size("pretrained_window_size", pretrained_window_size)
    coords = table_offsets((h, w)).double().view(2 * h - 1, 2 * w - 1, 2)  # (2h-1, 2w-1, 2)
    coords = coords / torch.tensor([max(ph - 1, 1), max(pw - 1, 1)], dtype=torch.float64) * 8
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
    return coords.float()


def swinv2_linear_coords(
    window_size: tuple[int, int], pretrained_window_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """The linear-spaced coordinates Swin V2 compares its log-spaced ones with (its Table 1).

    ``(dy, dx)`` divided by ``(h-1, w-1)`` (or by the pretrained window's ``(h'-1, w'-1)``; a side of 1
    divides by 1), nothing more: ``[-1, 1]`` at the pretrained window, as :func:`swinv2_log_coords`,
    but a window three times larger reaches ``±3`` where the log-spaced ones reach about ``±1.5``.

    Returns:
        ``(2h-1, 2w-1, 2)`` float32 tensor (last axis ``(dy, dx)``).
    """
    h, w = check_window_size("window_size", window_size)
    ph, pw = (h, w)
    if pretrained_window_size is not None:
        ph, pw = check_window_size("pretrained_window_size", pretrained_window_size)
    coords = table_offsets((h, w)).double().view(2 * h - 1, 2 * w - 1, 2)  # (2h-1, 2w-1, 2)
    coords = coords / torch.tensor([max(ph - 1, 1), max(pw - 1, 1)], dtype=torch.float64)
    return coords.float()


class RelativePositionBias(nn.Module):
    """Relative position bias of one family (``bias_type``): one scalar per (relative offset, head).

    Args:
        num_heads: number of attention heads ``H``.
        window_size: ``(h, w)`` of the token grid; required for "2d", "2d_cls" and "cpb", and makes
            "alibi" 2D.
        seq_len: sequence length ``L``; required for "1d" and "t5" (and "alibi" without window_size).
        bias_type: one of :data:`BIAS_TYPES` (see the module docstring for what each does).
        init_std: standard deviation of the truncated-normal init (cut at ±2 std) of learned tables.
        num_buckets: "t5" only: number of buckets (default 32).
        max_distance: "t5" only: offset from which all offsets share the last bucket (default 128).
        alibi_distance: "alibi" only: ``"euclidean"`` (default) or ``"manhattan"`` distance in 2D.
        cpb_hidden_dim: "cpb" only: hidden width of ``cpb_mlp`` (default 512, as Swin V2).
        pretrained_window_size: "cpb" only: normalize the log coordinates by this window instead.
        cpb_coords: "cpb" only: ``"log"`` (default, :func:`swinv2_log_coords`) or ``"linear"``
            (:func:`swinv2_linear_coords`) coordinates for the MLP.

    Attributes: ``num_heads``, ``bias_type``, ``window_size`` (or ``None`` in 1D), ``seq_len`` (the
    number of tokens ``N`` covered, class token included), ``num_relative_positions`` (``T``),
    ``relative_position_index`` (non-persistent ``(N, N)`` buffer), and per family:
    ``relative_position_bias_table`` (``(T, H)``: ``nn.Parameter`` for "1d", "2d", "2d_cls", "t5";
    a non-persistent buffer for "alibi"); for "cpb" ``cpb_mlp`` (``Linear(2, 512) -> ReLU ->
    Linear(512, H, bias=False)``) and ``relative_coords_table`` (non-persistent ``(2h-1, 2w-1, 2)``).
    :meth:`effective_table` returns the ``(T, H)`` table of any family; ``family`` is the
    :class:`~relpos.families.BiasFamily` whose flags (learned, resizable, class token) the branches read.

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
        bias_type: str = DEFAULT_BIAS_TYPE,
        init_std: float = 0.02,
        *,
        num_buckets: int | None = None,
        max_distance: int | None = None,
        alibi_distance: str | None = None,
        cpb_hidden_dim: int | None = None,
        pretrained_window_size: tuple[int, int] | None = None,
        cpb_coords: str | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads)
        self.bias_type = check_choice("bias_type", bias_type, BIAS_TYPES)
        self.init_std = check_float("init_std", init_std, minimum=0.0)
        options = {
            "num_buckets": num_buckets,
            "max_distance": max_distance,
            "alibi_distance": alibi_distance,
            "cpb_hidden_dim": cpb_hidden_dim,
            "pretrained_window_size": pretrained_window_size,
            "cpb_coords": cpb_coords,
        }
        # The family's options with their defaults, checked, as attributes (e.g. ``self.num_buckets``).
        for name, value in family_options(bias_type, options).items():
            setattr(self, name, value)

        # (cache key, (H, N, N) bias, snapshot of the table sources)
        self._cache: tuple[tuple, torch.Tensor, list[torch.Tensor]] | None = None
        size = self._check_size(window_size, seq_len)
        check_bias_budget(self.num_heads, size, bias_type, num_buckets=num_buckets, cpb_hidden_dim=cpb_hidden_dim)
        self._build(size)
        if self.family.learned:
            self.relative_position_bias_table = nn.Parameter(
                torch.empty(self.num_relative_positions, self.num_heads)
            )  # (T, H)
        elif bias_type == "cpb":
            self.cpb_mlp = nn.Sequential(
                nn.Linear(2, self.cpb_hidden_dim, bias=True),
                nn.ReLU(inplace=True),
                nn.Linear(self.cpb_hidden_dim, self.num_heads, bias=False),
            )
        self.reset_parameters()

    @property
    def family(self) -> BiasFamily:
        """What this bias's family is (:data:`relpos.families.FAMILIES` entry)."""
        return FAMILIES[self.bias_type]

    # ---- geometry: one place that says which index and which fixed tensors each family uses
    def _check_size(self, window_size, seq_len):
        bt, fam = self.bias_type, self.family
        either = fam.grid == "either"  # 2D with a window_size, else 1D
        if (window_size is not None) if either else fam.is_2d():
            if window_size is None:
                raise ValueError(
                    f"window_size is required for bias_type={bt!r}: pass (height, width), e.g. (7, 7)"
                )
            return check_window_size("window_size", window_size)
        if seq_len is None:
            raise ValueError(
                f"seq_len is required for bias_type={bt!r}"
                + (f" (or window_size for a 2D {fam.label})" if either else "")
                + ": pass a positive int, e.g. 16"
            )
        return check_int("seq_len", seq_len)

    def _build(self, size) -> None:
        """(Re)build the index and the fixed tensors for a window ``(h, w)`` or a length ``L``."""
        bt, fam = self.bias_type, self.family
        if isinstance(size, tuple):
            h, w = size
            self.window_size: tuple[int, int] | None = size
            index = get_relative_position_index_2d_cls(size) if fam.class_token else get_relative_position_index_2d(size)
            self.num_relative_positions = (2 * h - 1) * (2 * w - 1) + fam.extra_rows
        else:
            self.window_size = None
            index = get_relative_position_index_1d(size)  # (L, L)
            self.num_relative_positions = 2 * size - 1
            if bt == "t5":
                pos = torch.arange(size)
                rel = pos[None, :] - pos[:, None]  # (L, L): key - query
                index = t5_relative_position_bucket(rel, self.num_buckets, self.max_distance)
                self.num_relative_positions = self.num_buckets
        self.seq_len = index.shape[0]
        device, dtype = self._device(), self._float_dtype()
        self.register_buffer("relative_position_index", index.to(device), persistent=False)  # (N, N)
        if bt == "alibi":
            dist = table_distances(size, self.alibi_distance)  # (T,) float64, per table row
            table = -dist[:, None] * alibi_slopes(self.num_heads)[None, :]  # (T, H)
            self.register_buffer(
                "relative_position_bias_table", table.to(device=device, dtype=dtype), persistent=False
            )
        if bt == "cpb":
            make = swinv2_log_coords if self.cpb_coords == "log" else swinv2_linear_coords
            coords = make(size, self.pretrained_window_size)  # (2h-1, 2w-1, 2)
            self.register_buffer("relative_coords_table", coords.to(device=device, dtype=dtype), persistent=False)
        self._cache = None

    def _device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def _float_dtype(self) -> torch.dtype:
        """The floating dtype the module was moved to (float32 until then)."""
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    @property
    def num_tokens(self) -> int:
        """``N``, the number of query (and key) tokens the bias covers."""
        return self.seq_len

    @property
    def has_class_token(self) -> bool:
        """Whether token 0 is a class token (a family with ``class_token``, BEiT's)."""
        return self.family.class_token

    @property
    def is_learned_table(self) -> bool:
        """Whether ``relative_position_bias_table`` is an ``nn.Parameter`` (learned families)."""
        return self.family.learned

    def reset_parameters(self) -> None:
        if self.family.learned:
            std = self.init_std
            if std == 0:
                nn.init.zeros_(self.relative_position_bias_table)
            else:
                nn.init.trunc_normal_(self.relative_position_bias_table, std=std, a=-2 * std, b=2 * std)
        elif self.bias_type == "cpb":
            for m in self.cpb_mlp:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        self._cache = None

    # ---- the table every family reduces to
    def effective_table(self) -> torch.Tensor:
        """The ``(T, H)`` table the index gathers from (learned, fixed, or computed by ``cpb_mlp``)."""
        if self.bias_type == "cpb":
            out = self.cpb_mlp(self.relative_coords_table)  # (2h-1, 2w-1, H)
            return 16 * torch.sigmoid(out.view(-1, self.num_heads))  # (T, H)
        return self.relative_position_bias_table

    def _table_sources(self) -> list[torch.Tensor]:
        """The tensors the table is computed from (a change to any invalidates the eval cache)."""
        if self.bias_type == "cpb":
            return [*self.cpb_mlp.parameters(), self.relative_coords_table]
        return [self.relative_position_bias_table]

    def _table_requires_grad(self) -> bool:
        return any(t.requires_grad for t in self._table_sources())

    def _sources_cache_key(self) -> tuple:
        """Cache-key part for the table sources beyond the first (``cpb``'s MLP weights)."""
        return tuple((id(t), t.data_ptr(), t._version) for t in self._table_sources()[1:])

    # ---- moving the bias to another window / length
    @torch.no_grad()
    def set_window_size(self, new_window: tuple[int, int] | int, method: str = "bicubic") -> None:
        """Move the bias to another window (2D families) or sequence length (1D families).

        Learned 2D tables ("2d", "2d_cls") and the "1d" table are resized with
        :func:`relpos.resize.resize_relative_position_bias_table` (``method`` "bicubic" or
        "geometric"; the 3 class-token rows are kept as they are). "t5" keeps its table (buckets do
        not depend on the length); "alibi" and "cpb" rebuild their fixed tensors. The index is rebuilt.
        A resized table is a new ``nn.Parameter``: build optimizers after calling this.

        Args:
            new_window: ``(h, w)`` for 2D families, the new ``seq_len`` (an int) for 1D ones.
            method: ``"bicubic"`` or ``"geometric"``.
        """
        check_choice("method", method, RESIZE_METHODS)
        if self.window_size is not None:
            new = check_window_size("new_window", new_window)
            old = self.window_size
        else:
            if isinstance(new_window, (tuple, list)):
                raise TypeError(
                    f"new_window must be an int sequence length for bias_type={self.bias_type!r} "
                    f"(1D), got {new_window!r}"
                )
            new = check_int("new_window", new_window)
            old = self.seq_len
        if new == old:
            return
        check_bias_budget(self.num_heads, new, self.bias_type, num_buckets=getattr(self, "num_buckets", None),
                          cpb_hidden_dim=getattr(self, "cpb_hidden_dim", None))
        if self.family.resizable:
            old_w = old if isinstance(old, tuple) else (1, old)
            new_w = new if isinstance(new, tuple) else (1, new)
            table = resize_relative_position_bias_table(
                self.relative_position_bias_table.detach(), old_w, new_w, method=method
            )  # (T', H)
            self.relative_position_bias_table = nn.Parameter(
                table, requires_grad=self.relative_position_bias_table.requires_grad
            )
        self._build(new)

    def _cache_key(self) -> tuple:
        table, index = self._table_sources()[0], self.relative_position_index
        return (
            id(table),
            table.data_ptr(),
            table._version,
            table.dtype,
            table.device,
            index.data_ptr(),
            index._version,
            torch.is_inference_mode_enabled(),
            self._sources_cache_key(),
        )

    def _gather(self) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        # Head-major gather: (H, T).index_select over a flat index is several times faster than
        # table[index.view(-1)].view(N, N, H).permute(2, 0, 1).contiguous(), forward and backward.
        table_hm = self.effective_table().t().contiguous()  # (H, T)
        return table_hm.index_select(1, self.relative_position_index.view(-1)).view(
            self.num_heads, n, n
        )  # (H, N, N)

    def forward(self) -> torch.Tensor:
        """Return the bias of shape ``(num_heads, N, N)``."""
        needs_graph = torch.is_grad_enabled() and self._table_requires_grad()
        if self.training or needs_graph:
            self._cache = None
            return self._gather()
        key = self._cache_key()
        sources = self._table_sources()
        cache = self._cache
        # The key catches in-place updates (optimizer steps, load_state_dict), new tensors and
        # .to(); the snapshot comparison (a few thousand numbers) also catches writes through
        # ``.data``, which do not bump ``_version``.
        if (
            cache is None
            or cache[0] != key
            or len(cache) < 3
            or not all(torch.equal(a, b) for a, b in zip(cache[2], sources))
        ):
            snapshot = [t.detach().clone() for t in sources]
            cache = (key, self._gather(), snapshot)
            self._cache = cache  # one assignment: a thread sharing this module sees old or new
        return cache[1]

    def invalidate_cache(self) -> None:
        """Drop the eval-mode bias cache (call after writing the table sources behind its back).

        The cache already notices optimizer steps, ``load_state_dict``, ``.to()`` and writes through
        ``.data``; this is for code that replaces the table sources in a way it cannot see.
        """
        self._cache = None

    def extra_repr(self) -> str:
        size = f"window_size={self.window_size}" if self.window_size is not None else f"seq_len={self.seq_len}"
        extra = "".join(
            f", {k}={getattr(self, k)!r}" for k in FAMILY_OPTIONS[self.bias_type] if hasattr(self, k)
        )
        return (
            f"num_heads={self.num_heads}, {size}, bias_type={self.bias_type!r}, "
            f"init_std={self.init_std}{extra}"
        )

    # A cached tensor must not travel with deepcopy/pickling of the module.
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_cache"] = None
        return state
