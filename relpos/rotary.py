"""Rotary position embedding (RoPE): relative position by rotating queries and keys, as timm does it.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens (``num_prefix_tokens + n``), ``n`` grid tokens
(``h * w`` flattened row by row, or ``L``), ``D`` head_dim, ``P = D // 2`` channel pairs.

Channels ``(2k, 2k+1)`` of a query or key form pair ``k``; at position ``p`` the pair turns by the
angle ``phi_k(p)`` (timm's ``rot`` / ``apply_rot_embed_cat`` with ``half=False``, LLaMA's complex
product)::

    out[2k]   = x[2k] cos(phi_k) - x[2k+1] sin(phi_k)
    out[2k+1] = x[2k+1] cos(phi_k) + x[2k] sin(phi_k)

``phi`` is linear in the position, so ``(R(p_q) q) . (R(p_k) k) = q^T R(phi(p_k) - phi(p_q)) k``: the
logit depends on the positions only through their offset. RoPE adds no bias, so attention keeps
PyTorch's fused kernel; prefix (class) tokens are not rotated (their cos is 1 and sin 0).

Modes (the angle of pair ``k`` of head ``h`` at row ``y``, column ``x``, or position ``t``):

* ``"axial"`` (fixed): ``y * b[k]`` for the first ``P/2`` pairs, ``x * b[k - P/2]`` for the others,
  ``b[j] = theta ** (-j / (D/4))``; ``grid_indexing="xy"`` swaps the halves. Nothing in the state dict.
* ``"mixed"`` (learned): ``x * freqs[0, h, k] + y * freqs[1, h, k]`` (with ``"xy"``, its default). The
  state dict holds ``freqs (2, H, P)``.
* ``"1d"`` (fixed): ``t * theta ** (-2k / D)``. Nothing in the state dict.

Mapping to timm (``timm/layers/pos_embed_sincos.py``): ``"axial"`` equals ``RotaryEmbeddingCat(dim=D,
temperature=theta, in_pixels=False, feat_shape=(h, w), grid_indexing=...)`` applied with
``apply_rot_embed_cat`` after the prefix, as ``timm/models/eva.py`` does. ``"mixed"`` is RoPE-ViT's
(Heo et al., 2024) ``RotaryEmbeddingMixed``: ``freqs`` initialised like ``init_random_2d_freqs`` with
``depth=1`` (so it equals one depth slice of timm's ``(2, depth, H, P)`` parameter) and the phase of
``get_mixed_freqs``. ``"1d"`` is the sequence RoPE of RoFormer / LLaMA (``precompute_freqs_cis``,
``apply_rotary_emb``) with the same adjacent-pair convention as the 2D modes (not HF's rotate-half).
``set_grid_size(new, rescale=True)`` is EVA's ``ref_feat_shape`` scheme: coordinates
``arange(new) / new * train``, so a larger grid interpolates inside the training range.

About 540 lines, over the usual 400: the rotation, its checks and the resolution of its arguments
(:func:`resolve_rope_kwargs`, for the attention, the ViT and the config), its position kernel (RoPE's
stand-in for a bias table) and its memory estimate are one concept, and splitting them would scatter the conventions
above over several files.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.guards import MemoryEstimate, check_budget, rotary_memory_parts

__all__ = [
    "DEFAULT_THETA",
    "DIRECTION_KINDS",
    "GRID_INDEXINGS",
    "ROPE_KWARGS",
    "ROTARY_MODES",
    "RotaryPositionEmbedding",
    "apply_rotary",
    "apply_rotary_complex",
    "axial_bands",
    "content_directions",
    "estimate_rotary_memory",
    "init_mixed_freqs",
    "resolve_rope_kwargs",
    "rotate_pairs",
    "sequence_bands",
]

ROTARY_MODES = ("axial", "mixed", "1d")
GRID_INDEXINGS = ("ij", "xy")
#: theta per mode: RoPE-ViT's axial (100) and mixed (10), the classic sequence RoPE (10000).
DEFAULT_THETA: Mapping[str, float] = MappingProxyType({"axial": 100.0, "mixed": 10.0, "1d": 10000.0})
#: grid_indexing per mode when None: timm's RotaryEmbeddingCat ("ij") and RotaryEmbeddingMixed ("xy").
_DEFAULT_INDEXING: Mapping[str, str] = MappingProxyType({"axial": "ij", "mixed": "xy", "1d": "ij"})
DIRECTION_KINDS = ("ones", "random")


# ---------------------------------------------------------------------------- functional pieces
def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """timm's ``rot``: ``[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]`` (each pair turned 90 degrees)."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)  # (..., P, 2) -> (..., D)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (..., N, D)`` by ``cos, sin`` (broadcastable, e.g. ``(N, D)`` or ``(H, N, D)``, each
    value repeated for both channels of a pair); the result has ``x``'s dtype."""
    out = x * cos + rotate_pairs(x) * sin
    return out if out.dtype == x.dtype else out.to(x.dtype)


def apply_rotary_complex(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` as one complex product (LLaMA's ``apply_rotary_emb``), for float32/float64.

    Pair ``(x[2k], x[2k+1])`` is the complex number ``x[2k] + i x[2k+1]``, multiplied by
    ``cis = cos + i sin`` of shape ``(N, D/2)`` or ``(H, N, D/2)``: the same two products per channel,
    in one pass over ``x`` (measured 2-10x faster than the real form's five; benchmarks/rope_bench.py).
    ``x`` may be a strided view (e.g. ``q`` split from ``qkv``); the result is ``x``'s dtype.
    """
    pairs = x.unflatten(-1, (-1, 2))  # (..., N, P, 2), a view
    if x.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-1]):
        pairs = pairs.contiguous()  # view_as_complex needs even strides and offset
    z = torch.view_as_complex(pairs)  # (..., N, P)
    out = torch.view_as_real(z * cis.to(z.dtype)).flatten(-2)  # (..., N, D)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def axial_bands(head_dim: int, theta: float) -> torch.Tensor:
    """``(D/4,)`` float32 bands ``theta ** (-j / (D/4))`` (timm ``freq_bands(D // 4, theta, step=1)``)."""
    n = head_dim // 4
    exp = torch.arange(0, n, dtype=torch.int64).to(torch.float32) / n
    return 1.0 / (theta**exp)


def sequence_bands(head_dim: int, theta: float) -> torch.Tensor:
    """``(D/2,)`` float32 bands ``theta ** (-2k / D)`` (LLaMA ``precompute_freqs_cis``)."""
    exp = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta**exp)


def init_mixed_freqs(head_dim: int, num_heads: int, theta: float = 10.0) -> torch.Tensor:
    """``(2, H, D/2)`` RoPE-Mixed frequencies ``[fx, fy]``: timm's ``init_random_2d_freqs`` with depth 1.

    Magnitudes ``theta ** (-4j / D)`` for ``j < D/4``; head ``h`` points the first ``D/4`` pairs at a
    random angle ``a_h`` (one ``torch.rand`` draw per head) and the others at ``a_h + pi / 2``.
    """
    mag = 1.0 / (theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim))  # (D/4,)
    angles = torch.rand(num_heads, 1, dtype=torch.float32) * 2 * torch.pi  # (H, 1)
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + torch.pi / 2)], dim=-1)  # (H, P)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + torch.pi / 2)], dim=-1)  # (H, P)
    return torch.stack([fx, fy], dim=0)  # (2, H, P)


def content_directions(kind: str, head_dim: int, num_heads: int = 1, seed: int = 0) -> torch.Tensor:
    """``(H, D)`` unit content directions for :meth:`RotaryPositionEmbedding.position_kernel`.

    ``"ones"``: all channels equal (the kernel is then the mean cosine of the pair angles);
    ``"random"``: a seeded Gaussian direction per head.
    """
    kind = check_choice("kind", kind, DIRECTION_KINDS)
    d, h = check_int("head_dim", head_dim), check_int("num_heads", num_heads)
    if kind == "ones":
        u = torch.ones(h, d)
    else:
        g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        u = torch.randn(h, d, generator=g)
    return u / u.norm(dim=-1, keepdim=True)


def _check_geometry(mode: Any, head_dim: Any, grid_size: Any, name: str = "grid_size"):
    """Validate ``mode``, ``head_dim`` and the grid; return ``(mode, head_dim, grid)``."""
    mode = check_choice("mode", mode, ROTARY_MODES)
    head_dim = check_int("head_dim", head_dim, minimum=2)
    multiple = 2 if mode == "1d" else 4
    if head_dim % multiple:
        why = "pairs of channels" if mode == "1d" else "whole channel pairs for each of the two axes"
        raise ValueError(
            f"head_dim must be a multiple of {multiple} for mode={mode!r} ({why}), got {head_dim}"
        )
    if mode == "1d":
        if isinstance(grid_size, (tuple, list)):
            raise TypeError(f"{name} must be an int sequence length L for mode='1d', got {grid_size!r}")
        return mode, head_dim, check_int(name, grid_size, maximum=2**31)
    return mode, head_dim, check_window_size(name, grid_size, maximum=2**31)


def estimate_rotary_memory(
    head_dim: int,
    grid_size: tuple[int, int] | int,
    mode: str = "axial",
    num_heads: int = 1,
    num_prefix_tokens: int = 0,
) -> MemoryEstimate:
    """Memory of one :class:`RotaryPositionEmbedding` (same arguments), float32.

    Parts: grid coordinates ``(n, 2)``; fixed modes: the ``cos``/``sin`` buffers ``(2, N, D)``;
    "mixed": ``freqs``, the phases ``(H, n, P)``, ``cos``/``sin`` ``(2, H, N, D)`` per forward and the
    same again for the eval cache. The rotated query and key are the attention's activations.
    """
    mode, head_dim, grid = _check_geometry(mode, head_dim, grid_size)
    h = check_int("num_heads", num_heads, maximum=2**31)
    n = grid if isinstance(grid, int) else grid[0] * grid[1]
    tokens = n + check_int("num_prefix_tokens", num_prefix_tokens, minimum=0, maximum=2**31)
    parts = rotary_memory_parts(mode == "mixed", head_dim, n, h, tokens - n)  # the arithmetic lives in guards
    size = f"seq_len {grid}" if isinstance(grid, int) else f"grid {grid}"
    return MemoryEstimate(f"RotaryPositionEmbedding({mode}, head_dim {head_dim}, {h} heads, {size})", parts)


#: Every keyword ``RotaryPositionEmbedding`` accepts (what ``rope_kwargs`` may hold).
ROPE_KWARGS: tuple[str, ...] = (
    "head_dim", "grid_size", "mode", "theta", "num_heads", "grid_indexing", "num_prefix_tokens"
)


def resolve_rope_kwargs(rope_kwargs: dict | None, *, head_dim: int, num_heads: int, **model: object) -> dict:
    """``RotaryPositionEmbedding`` keyword arguments: ``rope_kwargs`` checked, the layer's sizes filled.

    Args:
        rope_kwargs: keyword arguments of :class:`~relpos.rotary.RotaryPositionEmbedding` (names in
            :data:`ROPE_KWARGS`), or ``None`` (all from the caller).
        head_dim: the attention's ``D``; ``num_heads``: its ``H`` (both filled; given values must agree).
        **model: more values the caller fixes (a ViT: ``grid_size``, ``mode``, ``num_prefix_tokens``);
            given values must agree with them.

    Returns:
        A new dict with ``head_dim``, ``num_heads`` and ``grid_size``; every value checked without
        building anything (mode, the head_dim it allows, the grid, ``theta > 0``, ``grid_indexing``).

    Raises:
        TypeError: ``rope_kwargs`` is not a dict or None, or a value has the wrong type.
        ValueError: an unknown key, a value that disagrees with the layer or the model, no
            ``grid_size``, an odd or (2D) non-multiple-of-4 ``head_dim``, or a value out of range.
    """
    if rope_kwargs is None:
        rope_kwargs = {}
    if not isinstance(rope_kwargs, dict):
        raise TypeError(f"rope_kwargs must be a dict or None, got {type(rope_kwargs).__name__}")
    unknown = sorted(str(k) for k in rope_kwargs if k not in ROPE_KWARGS)
    if unknown:
        raise ValueError(f"rope_kwargs has unknown keys {unknown}; allowed: {', '.join(ROPE_KWARGS)}")
    kwargs = dict(rope_kwargs)
    for key, value in {"head_dim": head_dim, "num_heads": num_heads, **model}.items():
        given = kwargs.setdefault(key, value)
        if key == "grid_size" and isinstance(value, tuple):  # (h, w), [h, w] and a square's side agree
            given = check_window_size("rope_kwargs['grid_size']", given)
        if given != value:
            whose = "the attention's" if key in ("head_dim", "num_heads") else "the model's"
            raise ValueError(f"rope_kwargs['{key}'] ({given!r}) must equal {whose} {key} ({value!r})")
    if kwargs.get("grid_size") is None:
        raise ValueError("rope_kwargs needs grid_size: the (h, w) token grid (or the length L for mode '1d')")
    mode = kwargs.get("mode", "axial")
    estimate_rotary_memory(  # checks mode, head_dim (even; a multiple of 4 in 2D), the grid and the counts
        kwargs["head_dim"], kwargs["grid_size"], mode, kwargs["num_heads"], kwargs.get("num_prefix_tokens", 0)
    )
    if kwargs.get("theta") is not None:
        check_float("rope_kwargs['theta']", kwargs["theta"], minimum=0.0, min_inclusive=False)
    if kwargs.get("grid_indexing") is not None:
        check_choice("rope_kwargs['grid_indexing']", kwargs["grid_indexing"], GRID_INDEXINGS)
    return kwargs


# ---------------------------------------------------------------------------- the module
class RotaryPositionEmbedding(nn.Module):
    """Rotate queries and keys by their grid position (see the module docstring for the modes).

    Args:
        head_dim: ``D``; a multiple of 4 for the 2D modes, even for "1d".
        grid_size: ``(h, w)`` (an int means square) for "axial"/"mixed"; the length ``L`` for "1d".
        mode: "axial", "mixed" or "1d".
        theta: base of the frequencies; None: 100 (axial), 10 (mixed, used by the init only), 10000 (1d).
        num_heads: ``H``; "mixed" learns frequencies per head (``forward`` needs ``H`` heads); the fixed
            modes rotate every head alike and only use it for :meth:`position_kernel`'s output.
        grid_indexing: "ij" or "xy" (timm's meaning). "axial": "ij" turns the first half of the pairs
            with the row, "xy" with the column. "mixed": "xy" gives ``x * freqs[0] + y * freqs[1]``;
            "ij" follows timm's ``get_mixed_grid`` (``freqs[0]`` then multiplies the row). None: "ij"
            for "axial" (EVA), "xy" for "mixed" (RoPE-ViT). Ignored by "1d".
        num_prefix_tokens: tokens before the grid (class token, registers), left unrotated.

    Attributes:
        grid_size, ref_grid_size: the current grid and the one the module was built for (training).
        rescaled: whether the current coordinates are mapped onto ``ref_grid_size`` (EVA's scheme).
        freqs: ("mixed") the learned ``(2, H, P)`` parameter, the only state-dict entry.
        rope_cos, rope_sin: (fixed modes) non-persistent ``(N, D)`` buffers.
        grid_coords: non-persistent ``(n, 2)`` ``(y, x)`` coordinates (``(n, 1)`` for "1d").
    """

    def __init__(
        self,
        head_dim: int,
        grid_size: tuple[int, int] | int,
        mode: str = "axial",
        theta: float | None = None,
        num_heads: int = 1,
        grid_indexing: str | None = None,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.mode, self.head_dim, grid = _check_geometry(mode, head_dim, grid_size)
        self.theta = check_float(
            "theta", DEFAULT_THETA[self.mode] if theta is None else theta, minimum=0.0, min_inclusive=False
        )
        self.num_heads = check_int("num_heads", num_heads)
        indexing = _DEFAULT_INDEXING[self.mode] if grid_indexing is None else grid_indexing
        self.grid_indexing = check_choice("grid_indexing", indexing, GRID_INDEXINGS)
        self.num_prefix_tokens = check_int("num_prefix_tokens", num_prefix_tokens, minimum=0)
        self.ref_grid_size = grid
        self._cache: tuple | None = None
        check_budget(self.estimate_memory(grid))
        if self.mode == "mixed":
            self.freqs = nn.Parameter(torch.empty(2, self.num_heads, self.head_dim // 2))  # (2, H, P)
        else:
            make = axial_bands if self.mode == "axial" else sequence_bands
            bands = make(self.head_dim, self.theta)  # (D/4,) or (D/2,)
            self.register_buffer("bands", bands, persistent=False)
        self._build(grid, rescale=False)
        self.reset_parameters()

    # ---- geometry
    def estimate_memory(self, grid: tuple[int, int] | int | None = None) -> MemoryEstimate:
        """:func:`estimate_rotary_memory` of this module at ``grid`` (default: the current grid)."""
        grid = self.grid_size if grid is None else grid
        return estimate_rotary_memory(self.head_dim, grid, self.mode, self.num_heads, self.num_prefix_tokens)

    @property
    def num_tokens(self) -> int:
        """``N = num_prefix_tokens + n``, the tokens ``forward`` expects."""
        return self.num_prefix_tokens + self.grid_coords.shape[0]

    @property
    def is_learned(self) -> bool:
        """Whether the module has a parameter (``freqs``, mode "mixed")."""
        return self.mode == "mixed"

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        ref = self.freqs if self.mode == "mixed" else getattr(self, "rope_cos", None)
        if ref is None:
            return torch.device("cpu"), torch.float32
        return ref.device, ref.dtype

    def _axis_coords(self, size: int, ref: int) -> torch.Tensor:
        t = torch.arange(size, dtype=torch.int64).to(torch.float32)  # (size,)
        return t / size * ref if self.rescaled else t  # timm build_fourier_pos_embed's ref_feat_shape

    def coordinate_steps(self) -> tuple[float, ...]:
        """Coordinate units per grid step, per axis ``(y, x)`` or ``(t,)``: 1, or ``ref / size`` rescaled."""
        grid = self.grid_size if isinstance(self.grid_size, tuple) else (self.grid_size,)
        ref = self.ref_grid_size if isinstance(self.ref_grid_size, tuple) else (self.ref_grid_size,)
        return tuple(r / s if self.rescaled else 1.0 for s, r in zip(grid, ref))

    def _build(self, grid: tuple[int, int] | int, rescale: bool) -> None:
        device, dtype = self._device_dtype()
        self.grid_size = grid
        self.rescaled = bool(rescale) and grid != self.ref_grid_size
        if isinstance(grid, int):
            coords = self._axis_coords(grid, self.ref_grid_size)[:, None]  # (L, 1)
        else:
            (h, w), (rh, rw) = grid, self.ref_grid_size
            ys = self._axis_coords(h, rh)[:, None].expand(h, w)  # (h, w)
            xs = self._axis_coords(w, rw)[None, :].expand(h, w)  # (h, w)
            coords = torch.stack([ys, xs], dim=-1).reshape(h * w, 2)  # (n, 2) as (y, x), row by row
        coord_dtype = self.grid_coords.dtype if hasattr(self, "grid_coords") else torch.float32
        self.register_buffer("grid_coords", coords.to(device=device, dtype=coord_dtype), persistent=False)
        if self.mode != "mixed":
            cos, sin = self._cos_sin()  # (1, N, D) each, float32
            self.register_buffer("rope_cos", cos[0].to(dtype), persistent=False)  # (N, D)
            self.register_buffer("rope_sin", sin[0].to(dtype), persistent=False)  # (N, D)
        self._cache = None

    @torch.no_grad()
    def set_grid_size(self, new_grid: tuple[int, int] | int, rescale: bool = False) -> None:
        """Recompute for another grid (``(h, w)``, or ``L`` for "1d"); ``freqs`` are kept.

        Args:
            new_grid: the new grid.
            rescale: False: integer coordinates ``0..size-1`` (extrapolation beyond the training grid);
                True: EVA's scheme, ``arange(size) / size * train_size`` per axis, so every coordinate
                lies in ``[0, train_size)`` (interpolation). Back at the training grid the coordinates
                are the training integers either way.
        """
        if not isinstance(rescale, bool):
            raise TypeError(
                f"rescale must be a bool (True or False), got {rescale!r} ({type(rescale).__name__})"
            )
        _, _, grid = _check_geometry(self.mode, self.head_dim, new_grid, name="new_grid")
        check_budget(self.estimate_memory(grid))
        self._build(grid, rescale)

    def reset_parameters(self) -> None:
        """Draw new mixed frequencies (``init_mixed_freqs``); the fixed modes have nothing to reset."""
        if self.mode == "mixed":
            with torch.no_grad():
                self.freqs.copy_(init_mixed_freqs(self.head_dim, self.num_heads, self.theta))
        self._cache = None

    # ---- angles
    def pair_frequencies(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """Angular speed of every pair along each axis: ``(w_y, w_x)`` of shape ``(H', P)`` for the 2D
        modes (``H' = H`` for "mixed", 1 otherwise), ``(w_t,)`` of shape ``(1, P)`` for "1d"."""
        if self.mode == "1d":
            return (self.bands.to(dtype)[None],)  # (1, P)
        if self.mode == "mixed":
            f = self.freqs.to(dtype)  # (2, H, P): freqs[0] multiplies t_x of timm's get_mixed_grid
            return (f[1], f[0]) if self.grid_indexing == "xy" else (f[0], f[1])
        b = self.bands.to(dtype)[None]  # (1, D/4)
        zero = torch.zeros_like(b)
        first, second = torch.cat([b, zero], dim=-1), torch.cat([zero, b], dim=-1)  # (1, P) each
        return (first, second) if self.grid_indexing == "ij" else (second, first)

    def _phase(self) -> torch.Tensor:
        """``(H', n, P)`` angles of the grid tokens, float32 (or the frequencies' wider dtype)."""
        dtype = torch.promote_types(self.freqs.dtype, torch.float32) if self.is_learned else torch.float32
        coords = self.grid_coords.to(dtype)  # (n, 2) or (n, 1)
        omegas = self.pair_frequencies(dtype)
        if self.mode == "1d":
            return coords[None, :, 0:1] * omegas[0][:, None, :]  # (1, L, P)
        w_y, w_x = omegas
        # x first, then y: the order of timm's get_mixed_freqs (the sum of two rounded products).
        x, y = coords[None, :, 1:2], coords[None, :, 0:1]  # (1, n, 1) each
        return x * w_x[:, None, :] + y * w_y[:, None, :]  # (H', n, P)

    def _cos_sin(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of shape ``(H', N, D)`` in float32 (or the frequencies' wider dtype)."""
        phase = self._phase()  # (H', n, P)
        cos = phase.cos().repeat_interleave(2, dim=-1)  # (H', n, D)
        sin = phase.sin().repeat_interleave(2, dim=-1)  # (H', n, D)
        if self.num_prefix_tokens:
            pad = (cos.shape[0], self.num_prefix_tokens, self.head_dim)
            cos = torch.cat([cos.new_ones(pad), cos], dim=1)  # (H', N, D): prefix unrotated
            sin = torch.cat([sin.new_zeros(pad), sin], dim=1)
        return cos, sin

    def _cache_key(self) -> tuple:
        f = self.freqs
        return (id(f), f.data_ptr(), f._version, f.dtype, f.device, self.grid_coords.data_ptr(),
                torch.is_inference_mode_enabled())

    def cos_sin(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``: ``(N, D)`` buffers for the fixed modes, ``(H, N, D)`` for "mixed".

        "mixed" recomputes them from ``freqs`` when training or when a graph is needed; in eval it
        keeps them until ``freqs`` change (version counter, identity and a snapshot, which also
        catches writes through ``.data``), like ``RelativePositionBias``'s cache.
        """
        if self.mode != "mixed":
            return self.rope_cos, self.rope_sin
        if self.training or (torch.is_grad_enabled() and self.freqs.requires_grad):
            self._cache = None
            cos, sin = self._cos_sin()
            return cos.to(self.freqs.dtype), sin.to(self.freqs.dtype)
        key, cache = self._cache_key(), self._cache
        if cache is None or cache[0] != key or not torch.equal(cache[3], self.freqs):
            cos, sin = self._cos_sin()
            dtype = self.freqs.dtype
            self._cache = (key, cos.to(dtype), sin.to(dtype), self.freqs.detach().clone())
        return self._cache[1], self._cache[2]

    # ---- forward
    def _check_qk(self, q: Any, k: Any) -> None:
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor of shape (B, H, N, D), got {type(t).__name__}"
                )
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
            if t.dim() != 4:
                raise ValueError(f"{name} must have shape (B, H, N, D), got {tuple(t.shape)}")
        if q.shape != k.shape:
            raise ValueError(
                f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        _, h, n, d = q.shape
        if d != self.head_dim:
            raise ValueError(
                f"q has head_dim {d}, but this RotaryPositionEmbedding was built for {self.head_dim}"
            )
        if n != self.num_tokens:
            raise ValueError(
                f"q has N={n} tokens, but this RotaryPositionEmbedding covers {self.num_tokens} "
                f"(num_prefix_tokens={self.num_prefix_tokens} + grid {self.grid_size}); "
                "call set_grid_size(...) for another grid"
            )
        if self.mode == "mixed" and h != self.num_heads:
            raise ValueError(
                f"q has {h} heads, but mode='mixed' learned frequencies for num_heads={self.num_heads}"
            )

    def cis(self) -> torch.Tensor:
        """``cos + i sin`` per channel pair: complex ``(N, P)`` (fixed modes) or ``(H, N, P)`` ("mixed").

        From the (eval-cached) :meth:`cos_sin`; "mixed" with a graph (training) builds it from the
        ``(H, n, P)`` angles directly, skipping the ``(H, N, D)`` expansion ``cos_sin`` makes.
        """
        if self.is_learned and (self.training or (torch.is_grad_enabled() and self.freqs.requires_grad)):
            self._cache = None
            phase = self._phase()  # (H, n, P)
            cis = torch.complex(phase.cos(), phase.sin())  # (H, n, P): cos_sin's values, bit for bit
            pad = cis.new_ones(cis.shape[0], self.num_prefix_tokens, cis.shape[-1])
            return torch.cat([pad, cis], dim=1) if self.num_prefix_tokens else cis  # (H, N, P)
        cos, sin = self.cos_sin()  # (N, D) or (H, N, D)
        return torch.complex(cos[..., 0::2], sin[..., 0::2])  # (N, P) or (H, N, P)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` and ``k`` of shape ``(B, H, N, D)``; returns both, same shapes and dtypes.

        float32/float64: one complex product per tensor (:func:`apply_rotary_complex`); other dtypes
        (bf16/fp16 under autocast, which have no complex type here): :func:`apply_rotary`.
        """
        self._check_qk(q, k)
        if q.dtype in (torch.float32, torch.float64) and k.dtype == q.dtype:
            cis = self.cis()  # (N, P) or (H, N, P), broadcast over B (and H)
            return apply_rotary_complex(q, cis), apply_rotary_complex(k, cis)
        cos, sin = self.cos_sin()  # (N, D) or (H, N, D), broadcast over B (and H)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    # ---- what it does to attention
    def _directions(self, direction_q: Any, direction_k: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for name, u in (("direction_q", direction_q), ("direction_k", direction_k)):
            if not isinstance(u, torch.Tensor) or not u.is_floating_point():
                what = u.dtype if isinstance(u, torch.Tensor) else type(u).__name__
                raise TypeError(f"{name} must be a floating-point tensor of shape (D,) or (H, D), got {what}")
            d = self.head_dim
            if u.dim() not in (1, 2) or u.shape[-1] != d:
                raise ValueError(f"{name} must have shape ({d},) or (H, {d}), got {tuple(u.shape)}")
            if u.dim() == 2 and self.mode == "mixed" and u.shape[0] != self.num_heads:
                raise ValueError(f"{name} must have {self.num_heads} rows (one per head), got {u.shape[0]}")
            out.append(u.detach().reshape(-1, self.head_dim))  # (1 or H, D)
        rows = {u.shape[0] for u in out} - {1}
        if len(rows) > 1:
            raise ValueError(f"direction_q and direction_k must have as many rows, got {sorted(rows)}")
        heads = rows.pop() if rows else self.num_heads
        return out[0].expand(heads, -1), out[1].expand(heads, -1)  # (H, D) each

    @torch.no_grad()
    def position_kernel(self, direction_q: torch.Tensor, direction_k: torch.Tensor | None = None):
        """RoPE's equivalent of a bias table: the logit between fixed contents, per offset.

        With a query of content ``u_q`` at ``p_i`` and a key of content ``u_k`` at ``p_j``, the logit
        ``(R(p_i) u_q) . (R(p_j) u_k)`` (unscaled; attention multiplies it by ``D ** -0.5``) depends
        only on the offset. Per pair ``k`` it is ``A_k cos(w_k . d) - B_k sin(w_k . d)`` with
        ``d = p_i - p_j`` in coordinates, ``A_k = u_q[2k] u_k[2k] + u_q[2k+1] u_k[2k+1]`` and
        ``B_k = u_q[2k+1] u_k[2k] - u_q[2k] u_k[2k+1]``. Laid out like a 2D table: entry
        ``(dy + h - 1, dx + w - 1)`` for ``dy = y_i - y_j``, ``dx = x_i - x_j`` (``dt + L - 1`` in 1D),
        so ``kernel.flatten(1)[:, relative_position_index]`` is the ``(H, n, n)`` logit matrix.

        Args:
            direction_q: ``(D,)`` or ``(H, D)`` query content (see :func:`content_directions`).
            direction_k: the key content; None: the same as ``direction_q``.

        Returns:
            float32 ``(H, 2h - 1, 2w - 1)`` for the 2D modes, ``(H, 2L - 1)`` for "1d".
        """
        uq, uk = self._directions(direction_q, direction_q if direction_k is None else direction_k)
        omegas = self.pair_frequencies(torch.float64)  # (H', P) per axis
        uq, uk = uq.to(omegas[0]), uk.to(omegas[0])  # (H, D) float64, on the module's device
        a = uq[:, 0::2] * uk[:, 0::2] + uq[:, 1::2] * uk[:, 1::2]  # (H, P)
        b = uq[:, 1::2] * uk[:, 0::2] - uq[:, 0::2] * uk[:, 1::2]  # (H, P)
        sizes = (self.grid_size,) if self.mode == "1d" else self.grid_size
        offsets = [  # query - key along each axis, in coordinates: (2s - 1,)
            torch.arange(-(s - 1), s).to(omegas[0]) * step for s, step in zip(sizes, self.coordinate_steps())
        ]
        if self.mode == "1d":
            phase = offsets[0][None, :, None] * omegas[0][:, None, :]  # (1, 2L-1, P)
            a, b = a[:, None, :], b[:, None, :]  # (H, 1, P)
        else:
            (dy, dx), (w_y, w_x) = offsets, omegas
            phase_y = dy[None, :, None, None] * w_y[:, None, None, :]  # (H', 2h-1, 1, P)
            phase = phase_y + dx[None, None, :, None] * w_x[:, None, None, :]  # (H', 2h-1, 2w-1, P)
            a, b = a[:, None, None, :], b[:, None, None, :]  # (H, 1, 1, P)
        return (a * phase.cos() - b * phase.sin()).sum(-1).float()  # (H, 2h-1, 2w-1) or (H, 2L-1)

    @torch.no_grad()
    def position_logits(self, direction_q: torch.Tensor, direction_k: torch.Tensor | None = None):
        """``(H, n, n)`` unscaled logits between grid tokens all holding ``direction_q`` (queries) and
        ``direction_k`` (keys), computed by rotating them with this module (prefix tokens left out)."""
        uq, uk = self._directions(direction_q, direction_q if direction_k is None else direction_k)
        cos, sin = self.cos_sin()
        p = self.num_prefix_tokens
        cos, sin = cos[..., p:, :], sin[..., p:, :]  # (n, D) or (H, n, D)
        n = self.grid_coords.shape[0]
        dtype = cos.dtype
        q = apply_rotary(uq.to(dtype)[:, None, :].expand(-1, n, -1), cos, sin)  # (H, n, D)
        k = apply_rotary(uk.to(dtype)[:, None, :].expand(-1, n, -1), cos, sin)  # (H, n, D)
        return (q @ k.transpose(-2, -1)).float()  # (H, n, n)

    def extra_repr(self) -> str:
        size = f"seq_len={self.grid_size}" if self.mode == "1d" else f"grid_size={self.grid_size}"
        extra = f", ref_grid_size={self.ref_grid_size}, rescaled=True" if self.rescaled else ""
        indexing = "" if self.mode == "1d" else f", grid_indexing={self.grid_indexing!r}"
        return (
            f"head_dim={self.head_dim}, {size}, mode={self.mode!r}, theta={self.theta}, "
            f"num_heads={self.num_heads}{indexing}, num_prefix_tokens={self.num_prefix_tokens}{extra}"
        )

    # A cached tensor must not travel with deepcopy/pickling of the module.
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_cache"] = None
        return state

