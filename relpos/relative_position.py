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
"cpb"      ``16 * sigmoid(cpb_mlp(log coords))``         Swin's 2D index
=========  ===========================================  ==========================================

Conventions (so Swin, timm and BEiT tables drop in unchanged):

* 1D: ``index[i, j] = i - j + L - 1``                                    (T = 2L - 1)
* 2D: tokens flattened row by row, ``t -> (y, x) = (t // w, t % w)``;
  ``index[i, j] = (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1)``  (T = (2h-1)(2w-1))
* ``relative_position_bias_table``: ``(T, H)`` parameter, truncated-normal init with ``init_std``.
* ``relative_position_index``: non-persistent ``(N, N)`` buffer (derived, so never in checkpoints).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.guards import check_bias_budget, check_budget

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
    "swinv2_log_coords",
    "t5_relative_position_bucket",
]

#: The bias families ``RelativePositionBias`` accepts as ``bias_type`` (the one registry of names).
BIAS_TYPES: tuple[str, ...] = ("1d", "2d", "2d_cls", "t5", "alibi", "cpb")

#: Family-specific keyword arguments; giving one to another family is a ``ValueError``.
FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {
    "1d": (),
    "2d": (),
    "2d_cls": (),
    "t5": ("num_buckets", "max_distance"),
    "alibi": ("alibi_distance",),
    "cpb": ("cpb_hidden_dim", "pretrained_window_size"),
}

_OPTION_NAMES: tuple[str, ...] = tuple(sorted({o for opts in FAMILY_OPTIONS.values() for o in opts}))

#: Every keyword ``RelativePositionBias`` accepts (what ``rpb_kwargs`` may hold).
RPB_KWARGS: tuple[str, ...] = ("num_heads", "window_size", "seq_len", "bias_type", "init_std", *_OPTION_NAMES)

#: Values of ``alibi_distance`` (only differ in 2D).
ALIBI_DISTANCES: tuple[str, ...] = ("euclidean", "manhattan")

#: Families whose tokens live on a 2D grid (``window_size``); "1d" and "t5" use ``seq_len``;
#: "alibi" is 2D when given a ``window_size`` and 1D when given only ``seq_len``.
_2D_FAMILIES: tuple[str, ...] = ("2d", "2d_cls", "cpb")
_LEARNED_FAMILIES: tuple[str, ...] = ("1d", "2d", "2d_cls", "t5")


def is_2d_family(bias_type: str, rpb_kwargs: dict | None = None) -> bool:
    """Whether ``bias_type`` (with these kwargs) biases a 2D grid (``window_size``) or a 1D sequence."""
    check_choice("bias_type", bias_type, BIAS_TYPES)
    if bias_type == "alibi":
        kw = rpb_kwargs or {}
        return kw.get("window_size") is not None or kw.get("seq_len") is None
    return bias_type in _2D_FAMILIES


def check_rpb_kwargs(rpb_kwargs: dict) -> dict:
    """Check the names in ``rpb_kwargs`` before building a bias from them.

    Raises:
        TypeError: ``rpb_kwargs`` is not a dict.
        ValueError: a key is not a :class:`RelativePositionBias` argument, or a family option is given
            to a family that does not take it; the message names the keys and what is allowed.
    """
    if not isinstance(rpb_kwargs, dict):
        raise TypeError(f"rpb_kwargs must be a dict, got {type(rpb_kwargs).__name__}")
    unknown = sorted(k for k in rpb_kwargs if k not in RPB_KWARGS)
    if unknown:
        raise ValueError(
            f"rpb_kwargs has unknown keys {unknown}; allowed: {', '.join(RPB_KWARGS)}"
        )
    bias_type = check_choice("rpb_kwargs['bias_type']", rpb_kwargs.get("bias_type", "2d"), BIAS_TYPES)
    _check_family_options(bias_type, {k: v for k, v in rpb_kwargs.items() if v is not None})
    return rpb_kwargs


def _check_family_options(bias_type: str, given: dict) -> None:
    foreign = sorted(
        k for k in given if k in _OPTION_NAMES and k not in FAMILY_OPTIONS[bias_type]
    )
    if foreign:
        allowed = FAMILY_OPTIONS[bias_type]
        raise ValueError(
            f"options {foreign} do not apply to bias_type={bias_type!r}; it takes "
            + (f"{', '.join(allowed)}" if allowed else "no family options")
        )


def get_relative_position_index_1d(seq_len: int) -> torch.Tensor:
    """Relative position index of a 1D sequence.

    Args:
        seq_len: sequence length ``L`` (positive int).

    Returns:
        ``(L, L)`` int64 tensor with ``index[i, j] = i - j + L - 1`` in ``[0, 2L - 2]``.
    """
    seq_len = check_int("seq_len", seq_len)
    check_budget(seq_len * seq_len * 8, f"the relative position index (seq_len {seq_len})")
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
    check_budget((h * w) ** 2 * 8 * 3, f"the relative position index (window ({h}, {w}))")  # rel is (2, N, N)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N), row-major tokens
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): (dy, dx) = query - key
    return (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)  # (N, N)


def get_relative_position_index_2d_cls(window_size: tuple[int, int]) -> torch.Tensor:
    """BEiT's relative position index for a class token (token 0) followed by an ``h x w`` grid.

    As BEiT's ``gen_relative_position_index``, with ``T = (2h-1)(2w-1) + 3``: ``index[1:, 1:]`` is the
    2D index, ``index[0, 1:] = T - 3`` (cls -> token), ``index[1:, 0] = T - 2`` (token -> cls),
    ``index[0, 0] = T - 1`` (cls -> cls).

    Returns:
        ``(h*w + 1, h*w + 1)`` int64 tensor with values in ``[0, T - 1]``.
    """
    h, w = check_window_size("window_size", window_size)
    t = (2 * h - 1) * (2 * w - 1) + 3
    n = h * w
    index = torch.zeros(n + 1, n + 1, dtype=torch.long)  # (N+1, N+1)
    index[1:, 1:] = get_relative_position_index_2d((h, w))
    index[0, 1:] = t - 3
    index[1:, 0] = t - 2
    index[0, 0] = t - 1
    return index


def t5_relative_position_bucket(
    relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
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


def _table_offsets_2d(window_size: tuple[int, int]) -> torch.Tensor:
    """``(T, 2)`` float64 offsets ``(dy, dx)`` of the rows of a 2D table, row-major."""
    h, w = window_size
    dy, dx = torch.meshgrid(
        torch.arange(-(h - 1), h, dtype=torch.float64),
        torch.arange(-(w - 1), w, dtype=torch.float64),
        indexing="ij",
    )  # each (2h-1, 2w-1)
    return torch.stack([dy.flatten(), dx.flatten()], dim=1)  # (T, 2)


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
    coords = _table_offsets_2d((h, w)).view(2 * h - 1, 2 * w - 1, 2)  # (2h-1, 2w-1, 2)
    coords = coords / torch.tensor([max(ph - 1, 1), max(pw - 1, 1)], dtype=torch.float64) * 8
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
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

    Attributes: ``num_heads``, ``bias_type``, ``window_size`` (or ``None`` in 1D), ``seq_len`` (the
    number of tokens ``N`` covered, class token included), ``num_relative_positions`` (``T``),
    ``relative_position_index`` (non-persistent ``(N, N)`` buffer), and per family:
    ``relative_position_bias_table`` (``(T, H)``: ``nn.Parameter`` for "1d", "2d", "2d_cls", "t5";
    a non-persistent buffer for "alibi"); for "cpb" ``cpb_mlp`` (``Linear(2, 512) -> ReLU ->
    Linear(512, H, bias=False)``) and ``relative_coords_table`` (non-persistent ``(2h-1, 2w-1, 2)``).
    :meth:`effective_table` returns the ``(T, H)`` table of any family.

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
        *,
        num_buckets: int | None = None,
        max_distance: int | None = None,
        alibi_distance: str | None = None,
        cpb_hidden_dim: int | None = None,
        pretrained_window_size: tuple[int, int] | None = None,
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
        }
        _check_family_options(bias_type, {k: v for k, v in options.items() if v is not None})
        if bias_type == "t5":
            self.num_buckets = check_int("num_buckets", 32 if num_buckets is None else num_buckets, minimum=4)
            self.max_distance = check_int(
                "max_distance",
                128 if max_distance is None else max_distance,
                minimum=self.num_buckets // 4 + 1,
            )
        if bias_type == "alibi":
            self.alibi_distance = check_choice(
                "alibi_distance", "euclidean" if alibi_distance is None else alibi_distance, ALIBI_DISTANCES
            )
        if bias_type == "cpb":
            self.cpb_hidden_dim = check_int("cpb_hidden_dim", 512 if cpb_hidden_dim is None else cpb_hidden_dim)
            self.pretrained_window_size = (
                None
                if pretrained_window_size is None
                else check_window_size("pretrained_window_size", pretrained_window_size)
            )

        self._cache: tuple[tuple, torch.Tensor] | None = None
        size = self._check_size(window_size, seq_len)
        check_bias_budget(self.num_heads, size, bias_type, num_buckets=num_buckets, cpb_hidden_dim=cpb_hidden_dim)
        self._build(size)
        if bias_type in _LEARNED_FAMILIES:
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

    # ---- geometry: one place that says which index and which fixed tensors each family uses
    def _check_size(self, window_size, seq_len):
        bt = self.bias_type
        if bt in _2D_FAMILIES or (bt == "alibi" and window_size is not None):
            if window_size is None:
                raise ValueError(
                    f"window_size is required for bias_type={bt!r}: pass (height, width), e.g. (7, 7)"
                )
            return check_window_size("window_size", window_size)
        if seq_len is None:
            raise ValueError(
                f"seq_len is required for bias_type={bt!r}"
                + (" (or window_size for a 2D ALiBi)" if bt == "alibi" else "")
                + ": pass a positive int, e.g. 16"
            )
        return check_int("seq_len", seq_len)

    def _build(self, size) -> None:
        """(Re)build the index and the fixed tensors for a window ``(h, w)`` or a length ``L``."""
        bt = self.bias_type
        if isinstance(size, tuple):
            h, w = size
            self.window_size: tuple[int, int] | None = size
            index = get_relative_position_index_2d_cls(size) if bt == "2d_cls" else get_relative_position_index_2d(size)
            self.num_relative_positions = (2 * h - 1) * (2 * w - 1) + (3 if bt == "2d_cls" else 0)
            offsets = _table_offsets_2d(size)  # (T, 2)
        else:
            self.window_size = None
            index = get_relative_position_index_1d(size)  # (L, L)
            self.num_relative_positions = 2 * size - 1
            offsets = torch.arange(-(size - 1), size, dtype=torch.float64)[:, None]  # (T, 1)
            if bt == "t5":
                pos = torch.arange(size)
                rel = pos[None, :] - pos[:, None]  # (L, L): key - query
                index = t5_relative_position_bucket(rel, self.num_buckets, self.max_distance)
                self.num_relative_positions = self.num_buckets
        self.seq_len = index.shape[0]
        device, dtype = self._device(), self._float_dtype()
        self.register_buffer("relative_position_index", index.to(device), persistent=False)  # (N, N)
        if bt == "alibi":
            if self.alibi_distance == "manhattan":
                dist = offsets.abs().sum(dim=1)  # (T,)
            else:
                dist = offsets.pow(2).sum(dim=1).sqrt()  # (T,)
            table = -dist[:, None] * alibi_slopes(self.num_heads)[None, :]  # (T, H)
            self.register_buffer(
                "relative_position_bias_table", table.to(device=device, dtype=dtype), persistent=False
            )
        if bt == "cpb":
            coords = swinv2_log_coords(size, self.pretrained_window_size)  # (2h-1, 2w-1, 2)
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
        """Whether token 0 is a class token (bias_type "2d_cls")."""
        return self.bias_type == "2d_cls"

    @property
    def is_learned_table(self) -> bool:
        """Whether ``relative_position_bias_table`` is an ``nn.Parameter`` (learned families)."""
        return self.bias_type in _LEARNED_FAMILIES

    def reset_parameters(self) -> None:
        if self.bias_type in _LEARNED_FAMILIES:
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
        from relpos.resize import RESIZE_METHODS, resize_relative_position_bias_table

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
        if self.bias_type in ("1d", "2d", "2d_cls"):
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
            self._cache = (key, self._gather(), snapshot)
        return self._cache[1]

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
