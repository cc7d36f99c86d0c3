"""Test-only reference for rotary position embedding, transcribed from timm and Meta's LLaMA.

Nothing here is imported by ``relpos``: it is the yardstick ``tests/test_rotary.py`` measures
:class:`relpos.rotary.RotaryPositionEmbedding` against. Each function is a minimal, faithful copy of
the named upstream function (same arithmetic in the same order, so results agree to the last bit
where the operations are the same); arguments the tests never use (pixel bands' device handling,
fx tracing decorators, batch helpers) are left out. Upstream code is read through the search tools
(timm cannot be installed here).

Sources:

* ``huggingface/pytorch-image-models``, ``timm/layers/pos_embed_sincos.py``:
  ``pixel_freq_bands``, ``freq_bands``, ``swap_shape_xy``, ``build_fourier_pos_embed``,
  ``build_rotary_pos_embed``, ``rot``, ``apply_rot_embed_cat``, ``RotaryEmbeddingCat`` (its
  ``__init__`` / ``_get_pos_embed_values`` / ``get_embed``), ``init_random_2d_freqs``,
  ``get_mixed_grid``, ``get_mixed_freqs``, ``RotaryEmbeddingMixed`` (``freqs`` and ``get_embed``).
* ``huggingface/pytorch-image-models``, ``timm/models/eva.py``: ``EvaAttention.forward`` applies the
  embedding to the tokens after the ``num_prefix_tokens`` prefix and concatenates the prefix back
  (:func:`eva_apply_rope`); ``Eva.__init__`` builds ``RotaryEmbeddingCat(embed_dim // num_heads,
  in_pixels=False, feat_shape=grid, ref_feat_shape=..., temperature=rope_temperature,
  grid_indexing=rope_grid_indexing)`` or ``RotaryEmbeddingMixed(embed_dim, depth, num_heads,
  temperature, grid_indexing)``; RoPE-ViT's registrations use ``rope_grid_indexing='xy'``,
  temperature 100 (axial) and 10 (mixed).
* ``meta-llama/llama``, ``llama/model.py``: ``precompute_freqs_cis`` and ``apply_rotary_emb`` (the
  1D sequence RoPE, adjacent channel pairs as complex numbers), for the ``"1d"`` mode.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------
# timm/layers/pos_embed_sincos.py


def pixel_freq_bands(num_bands: int, max_freq: float = 224.0, linear_bands: bool = True) -> torch.Tensor:
    """timm ``pixel_freq_bands`` (only used with ``in_pixels=True``; kept for completeness)."""
    if linear_bands:
        bands = torch.linspace(1.0, max_freq / 2, num_bands, dtype=torch.float32)
    else:
        bands = 2 ** torch.linspace(0, math.log(max_freq, 2) - 1, num_bands, dtype=torch.float32)
    return bands * torch.pi


def freq_bands(num_bands: int, temperature: float = 10000.0, step: int = 2) -> torch.Tensor:
    """timm ``freq_bands``: ``1 / temperature ** (arange(0, num_bands, step) / num_bands)``."""
    exp = torch.arange(0, num_bands, step, dtype=torch.int64).to(torch.float32) / num_bands
    bands = 1.0 / (temperature**exp)
    return bands


def swap_shape_xy(seq: List[int]) -> List[int]:
    """timm ``swap_shape_xy``."""
    if len(seq) < 2:
        return seq
    return [seq[1], seq[0]] + list(seq[2:])


def build_fourier_pos_embed(
    feat_shape: List[int],
    bands: Optional[torch.Tensor] = None,
    num_bands: int = 64,
    max_res: int = 224,
    temperature: float = 10000.0,
    linear_bands: bool = False,
    in_pixels: bool = True,
    ref_feat_shape: Optional[List[int]] = None,
    grid_offset: float = 0.0,
    grid_indexing: str = "ij",
    dtype: torch.dtype = torch.float32,
) -> List[torch.Tensor]:
    """timm ``build_fourier_pos_embed`` (``include_grid=False``): ``[sin, cos]`` of shape
    ``(*feat_shape, len(feat_shape), num_bands)``."""
    if bands is None:
        if in_pixels:
            bands = pixel_freq_bands(num_bands, float(max_res), linear_bands=linear_bands)
        else:
            bands = freq_bands(num_bands, temperature=temperature, step=1)

    if grid_indexing == "xy":
        feat_shape = swap_shape_xy(feat_shape)
        if ref_feat_shape is not None:
            ref_feat_shape = swap_shape_xy(ref_feat_shape)

    if in_pixels:
        t = [torch.linspace(-1.0, 1.0, steps=s, dtype=torch.float32) for s in feat_shape]
    else:
        t = [torch.arange(s, dtype=torch.int64).to(torch.float32) + grid_offset for s in feat_shape]

    if ref_feat_shape is not None:
        # eva's scheme for resizing rope embeddings (ref shape = pretrain)
        t = [x / f * r for x, f, r in zip(t, feat_shape, ref_feat_shape)]

    grid = torch.stack(torch.meshgrid(t, indexing=grid_indexing), dim=-1)
    grid = grid.unsqueeze(-1)
    pos = grid * bands

    pos_sin, pos_cos = pos.sin().to(dtype=dtype), pos.cos().to(dtype=dtype)
    return [pos_sin, pos_cos]


def build_rotary_pos_embed(
    feat_shape: List[int],
    bands: Optional[torch.Tensor] = None,
    dim: int = 64,
    max_res: int = 224,
    temperature: float = 10000.0,
    linear_bands: bool = False,
    in_pixels: bool = True,
    ref_feat_shape: Optional[List[int]] = None,
    grid_offset: float = 0.0,
    grid_indexing: str = "ij",
    dtype: torch.dtype = torch.float32,
):
    """timm ``build_rotary_pos_embed``: ``(sin, cos)``, each ``(prod(feat_shape), dim)``, every
    frequency repeated for the two channels of its pair (``repeat_interleave(2, -1)``)."""
    sin_emb, cos_emb = build_fourier_pos_embed(
        feat_shape,
        bands=bands,
        num_bands=dim // 4,
        max_res=max_res,
        temperature=temperature,
        linear_bands=linear_bands,
        in_pixels=in_pixels,
        ref_feat_shape=ref_feat_shape,
        grid_offset=grid_offset,
        grid_indexing=grid_indexing,
        dtype=dtype,
    )
    num_spatial_dim = 1
    for x in feat_shape:
        num_spatial_dim *= x
    sin_emb = sin_emb.reshape(num_spatial_dim, -1).repeat_interleave(2, -1)
    cos_emb = cos_emb.reshape(num_spatial_dim, -1).repeat_interleave(2, -1)
    return sin_emb, cos_emb


def rot(x: torch.Tensor) -> torch.Tensor:
    """timm ``rot``: ``[x0, x1, x2, x3] -> [-x1, x0, -x3, x2]``."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def apply_rot_embed_cat(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """timm ``apply_rot_embed_cat`` (``half=False``): ``emb = cat([sin, cos], -1)``."""
    sin_emb, cos_emb = emb.chunk(2, -1)
    return x * cos_emb + rot(x) * sin_emb


class RotaryEmbeddingCat(nn.Module):
    """timm ``RotaryEmbeddingCat`` in its fixed-shape ("embed") mode: ``get_embed()`` returns the
    ``(prod(feat_shape), 2 * dim)`` buffer ``cat([sin, cos], -1)``."""

    def __init__(
        self,
        dim: int,
        max_res: int = 224,
        temperature: float = 10000,
        in_pixels: bool = True,
        linear_bands: bool = False,
        feat_shape: Optional[List[int]] = None,
        ref_feat_shape: Optional[List[int]] = None,
        grid_offset: float = 0.0,
        grid_indexing: str = "ij",
    ) -> None:
        super().__init__()
        assert feat_shape is not None, "the reference only transcribes the fixed-shape mode"
        self.dim = dim
        self.max_res = max_res
        self.temperature = temperature
        self.in_pixels = in_pixels
        self.linear_bands = linear_bands
        self.feat_shape = feat_shape
        self.ref_feat_shape = ref_feat_shape
        self.grid_offset = grid_offset
        self.grid_indexing = grid_indexing
        self.register_buffer("pos_embed", self._get_pos_embed_values(feat_shape), persistent=False)

    def _get_pos_embed_values(self, feat_shape: List[int]) -> torch.Tensor:
        embeds = build_rotary_pos_embed(
            feat_shape=feat_shape,
            dim=self.dim,
            max_res=self.max_res,
            temperature=self.temperature,
            linear_bands=self.linear_bands,
            in_pixels=self.in_pixels,
            ref_feat_shape=self.ref_feat_shape,
            grid_offset=self.grid_offset,
            grid_indexing=self.grid_indexing,
        )
        return torch.cat(embeds, -1)

    def update_feat_shape(self, feat_shape: List[int]) -> None:
        if feat_shape != self.feat_shape:
            self.pos_embed = self._get_pos_embed_values(feat_shape)
            self.feat_shape = feat_shape

    def get_embed(self) -> torch.Tensor:
        return self.pos_embed


def init_random_2d_freqs(
    head_dim: int,
    depth: int,
    num_heads: int,
    temperature: float = 10.0,
    rotate: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """timm ``init_random_2d_freqs``: ``(2, depth, num_heads, head_dim // 2)``, ``[fx, fy]``."""
    mag = 1.0 / (temperature ** (torch.arange(0, head_dim, 4, dtype=dtype) / head_dim))
    mag = mag.unsqueeze(0).unsqueeze(0)  # (1, 1, L)
    if rotate:
        angles = torch.rand(depth, num_heads, 1, dtype=dtype) * 2 * torch.pi
    else:
        angles = torch.zeros(depth, num_heads, 1, dtype=dtype)
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + torch.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + torch.pi / 2)], dim=-1)
    return torch.stack([fx, fy], dim=0)


def get_mixed_grid(shape: List[int], grid_indexing: str = "ij", dtype: torch.dtype = torch.float32):
    """timm ``get_mixed_grid``: flattened ``(t_x, t_y)``; with ``"xy"``, ``t_x`` is the column."""
    if grid_indexing == "xy":
        shape = swap_shape_xy(shape)
    x_pos, y_pos = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float32),
        torch.arange(shape[1], dtype=torch.float32),
        indexing=grid_indexing,
    )
    t_x = x_pos.to(dtype).flatten()
    t_y = y_pos.to(dtype).flatten()
    return t_x, t_y


def get_mixed_freqs(freqs: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    """timm ``get_mixed_freqs``: ``cat([sin, cos], -1)`` of ``t_x * freqs[0] + t_y * freqs[1]``,
    shape ``(*freqs.shape[1:-1], N, 2 * head_dim)``."""
    dtype = freqs.dtype
    freqs = freqs.float()
    freqs_x = t_x.unsqueeze(-1) @ freqs[0].unsqueeze(-2)
    freqs_y = t_y.unsqueeze(-1) @ freqs[1].unsqueeze(-2)
    combined = freqs_x + freqs_y
    sin_emb = torch.sin(combined).repeat_interleave(2, -1)
    cos_emb = torch.cos(combined).repeat_interleave(2, -1)
    rope_embeds = torch.cat([sin_emb, cos_emb], dim=-1)
    return rope_embeds.to(dtype)


class RotaryEmbeddingMixed(nn.Module):
    """timm ``RotaryEmbeddingMixed``: a ``freqs`` parameter ``(2, depth, num_heads, head_dim // 2)``;
    ``get_embed(shape)`` is ``(depth, num_heads, N, 2 * head_dim)``, block ``i`` uses slice ``i``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        temperature: float = 10.0,
        grid_indexing: str = "xy",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.num_heads = num_heads
        self.temperature = temperature
        self.grid_indexing = grid_indexing
        head_dim = dim // num_heads
        assert head_dim % 4 == 0, f"head_dim must be divisible by 4, got {head_dim}"
        freqs = init_random_2d_freqs(head_dim, depth, num_heads, temperature=temperature, rotate=True)
        self.freqs = nn.Parameter(freqs)

    def get_embed(self, shape: List[int]) -> torch.Tensor:
        t_x, t_y = get_mixed_grid(shape, grid_indexing=self.grid_indexing)
        return get_mixed_freqs(self.freqs, t_x, t_y)


# ----------------------------------------------------------------------------------------------
# timm/models/eva.py


def eva_apply_rope(x: torch.Tensor, rope: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """``EvaAttention.forward``'s rope step: rotate the tokens after the prefix, keep the prefix."""
    npt = num_prefix_tokens
    return torch.cat([x[:, :, :npt, :], apply_rot_embed_cat(x[:, :, npt:, :], rope)], dim=2)


# ----------------------------------------------------------------------------------------------
# meta-llama/llama, llama/model.py (the 1D sequence RoPE)


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """LLaMA ``precompute_freqs_cis``: complex ``(end, dim // 2)``, ``exp(i * t * theta ** (-2k / dim))``."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb_bhnd(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """LLaMA ``apply_rotary_emb`` for one tensor, on ``(B, H, N, D)`` instead of LLaMA's
    ``(B, N, H, D)``: adjacent channels ``(2k, 2k+1)`` are one complex number, multiplied by
    ``freqs_cis[t, k]``."""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, H, N, D/2)
    out = torch.view_as_real(x_ * freqs_cis[None, None]).flatten(3)  # (B, H, N, D)
    return out.type_as(x)
