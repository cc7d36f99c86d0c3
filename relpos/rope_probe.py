"""What a rotary position embedding (RoPE) does, read off a model or set up by hand (no streamlit).

RoPE has no bias table, but it has an equivalent: for fixed contents (a query direction ``u_q`` and a
key direction ``u_k``) the logit ``(R(p_i) u_q) . (R(p_j) u_k)`` depends only on the offset
``p_i - p_j`` (:meth:`relpos.rotary.RotaryPositionEmbedding.position_kernel`). This module chooses
those contents (:data:`KERNEL_DIRECTIONS`: all-ones, a seeded random direction, or a model's mean
query and key on an input), reads the rotary modules and the learned mixed frequencies off a model,
and builds the bias explorer's demo: fixed queries and keys attending with and without the rotation.

Shape legend: ``H`` heads, ``D`` head_dim, ``P = D // 2`` channel pairs, ``n`` grid tokens (``h * w``
or ``L``), ``N`` all tokens (a class token first), ``C`` image channels.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int
from relpos.attention import MultiHeadAttention
from relpos.geometry import relative_position_index
from relpos.rotary import DIRECTION_KINDS, RotaryPositionEmbedding, content_directions

__all__ = [
    "DIRECTION_LABELS",
    "KERNEL_DIRECTIONS",
    "demo_queries_keys",
    "kernel_directions",
    "layer_kernel",
    "make_rotary",
    "mean_query_key",
    "mixed_frequencies",
    "rope_demo",
    "rotary_layers",
    "rotary_summary",
]

#: Content directions a position kernel can be drawn for: those of :func:`relpos.rotary.content_directions`
#: and ``"mean"``, a model's mean (unrotated) query and key over the grid tokens of an input.
KERNEL_DIRECTIONS: tuple[str, ...] = (*DIRECTION_KINDS, "mean")
#: Each direction in words.
DIRECTION_LABELS: Mapping[str, str] = MappingProxyType({
    "ones": "all-ones (every channel equal)",
    "random": "random (seeded, one per head)",
    "mean": "the model's mean query and key",
})
#: Offset of the demo noise's seed from the direction's, so the two never share random numbers.
_NOISE_SEED_OFFSET = 7919


# ----------------------------------------------------------------------------- a model's rotary parts


def rotary_layers(model: nn.Module) -> list[RotaryPositionEmbedding]:
    """The rotary module of every attention layer that has one, in layer order (``blocks.<i>.attn.rope``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m.rope for m in model.modules() if isinstance(m, MultiHeadAttention) and m.rope is not None]


def rotary_summary(model: nn.Module) -> dict | None:
    """``{"mode", "theta", "grid", "head_dim", "num_heads", "grid_indexing", "layers"}`` of a model's
    rotary embedding (its first layer's; ``layers``: how many have one), or None without one."""
    ropes = rotary_layers(model)
    if not ropes:
        return None
    r = ropes[0]
    return {"mode": r.mode, "theta": r.theta, "grid": r.grid_size, "head_dim": r.head_dim,
            "num_heads": r.num_heads, "grid_indexing": r.grid_indexing, "layers": len(ropes)}


def _layer(model: nn.Module, layer: Any) -> tuple[MultiHeadAttention, RotaryPositionEmbedding]:
    """The ``layer``-th attention layer with a rotary module, and that module."""
    attns = [m for m in model.modules() if isinstance(m, MultiHeadAttention) and m.rope is not None]
    if not attns:
        raise ValueError("model has no rotary position embedding (position_embedding 'rope_axial' or 'rope_mixed')")
    layer = check_int("layer", layer, minimum=0, maximum=len(attns) - 1)
    return attns[layer], attns[layer].rope


@torch.no_grad()
def mean_query_key(model: nn.Module, image: torch.Tensor, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s mean query and key on ``image``, before the rotation: ``(H, D)`` each.

    The means run over the grid tokens (a class token, unrotated, is left out). The layer's ``qkv``
    output is read with a forward hook that records only this thread's forward, so other threads
    running the same (cached) model are neither seen nor disturbed.

    Args:
        model: a model with rotary attention layers (e.g. ``VisionTransformer(position_embedding="rope_mixed")``).
        image: one input ``(C, H, W)``.
        layer: which rotary layer (0-based).
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must have shape (C, H, W), got {shape}")
    attn, rope = _layer(model, layer)
    me, seen = threading.get_ident(), []

    def record(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        if threading.get_ident() == me:
            seen.append(out.detach())

    handle = attn.qkv.register_forward_hook(record)
    was_training = model.training
    try:
        model.eval()
        model(image[None].float())
    finally:
        handle.remove()
        model.train(was_training)
    B, N, _ = seen[0].shape
    qkv = seen[0].reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
    grid = qkv[:2, :, :, rope.num_prefix_tokens:]  # (2, B, H, n, D): the rotated tokens only
    mean = grid.float().mean(dim=(1, 3))  # (2, H, D)
    return mean[0], mean[1]


def kernel_directions(kind: str, rope: RotaryPositionEmbedding, *, seed: int = 0, model: nn.Module | None = None,
                      image: torch.Tensor | None = None, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key contents ``(H, D)`` a position kernel is drawn for.

    Args:
        kind: one of :data:`KERNEL_DIRECTIONS`: ``"ones"`` and ``"random"`` (unit vectors, the same for
            query and key: :func:`relpos.rotary.content_directions`), ``"mean"`` (:func:`mean_query_key`
            of ``model`` on ``image`` at ``layer``: their own lengths, so the kernel is in q·k units).
        rope: the rotary module (gives ``D`` and ``H``).
        seed: the random direction's seed.
        model, image, layer: for ``"mean"`` only.
    """
    kind = check_choice("direction", kind, KERNEL_DIRECTIONS)
    if kind == "mean":
        if model is None or image is None:
            raise ValueError("direction 'mean' needs a model and an input image (its mean query and key)")
        return mean_query_key(model, image, layer)
    u = content_directions(kind, rope.head_dim, rope.num_heads, seed)  # (H, D)
    return u, u


def layer_kernel(model: nn.Module, layer: int = 0, direction: str = "ones", *, image: torch.Tensor | None = None,
                 seed: int = 0) -> np.ndarray:
    """Layer ``layer``'s position kernel for content ``direction`` (:func:`kernel_directions`):
    float32 ``(H, 2h - 1, 2w - 1)`` over the offsets (``(H, 2L - 1)`` for a 1D rotation), entry
    ``(dy + h - 1, dx + w - 1)`` the unscaled logit ``q . k`` at offset ``(dy, dx)``."""
    _, rope = _layer(model, layer)
    uq, uk = kernel_directions(direction, rope, seed=seed, model=model, image=image, layer=layer)
    return rope.position_kernel(uq, uk).cpu().numpy()


def mixed_frequencies(model: nn.Module) -> list[np.ndarray]:
    """The learned frequencies ``freqs`` ``(2, H, P)`` of every "mixed" rotary layer, in layer order
    (``[0]`` multiplies the column ``x``, ``[1]`` the row ``y``); empty for fixed rotations."""
    return [r.freqs.detach().float().cpu().numpy().copy() for r in rotary_layers(model) if r.is_learned]


# ----------------------------------------------------------------------------- set up by hand


def make_rotary(mode: str, size: tuple[int, int] | int, heads: int, head_dim: int, theta: float | None = None,
                grid_indexing: str | None = None, seed: int = 0) -> RotaryPositionEmbedding:
    """A :class:`~relpos.rotary.RotaryPositionEmbedding` over a grid ``(h, w)`` (or ``L`` for "1d") with
    ``heads`` heads; a "mixed" one's frequencies drawn under ``seed`` (the global RNG is left as it was)."""
    seed = check_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RotaryPositionEmbedding(head_dim, size, mode=mode, theta=theta, num_heads=heads,
                                       grid_indexing=grid_indexing)


def demo_queries_keys(direction: torch.Tensor, n: int, *, alpha: float = 2.0, content_scale: float = 1.0,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed queries and keys ``(1, H, n, D)``: one shared content plus per-token noise.

    ``q_i = a u_h + content_scale * e_i`` and ``k_j = a u_h + content_scale * e'_j`` with
    ``a = sqrt(alpha * sqrt(D))``, so the shared part of the logit ``q_i . k_j / sqrt(D)`` is ``alpha *
    (u_h . u_h)`` without rotation (the same for every pair) and ``alpha * kernel(p_i - p_j)`` with it.

    Args:
        direction: ``(H, D)`` unit contents (:func:`relpos.rotary.content_directions`).
        n: tokens.
        alpha: the shared content's weight in the logits (0: noise only).
        content_scale: std of the per-token noise ``e`` (0: the shared content only).
        seed: seed of the noise.
    """
    if not isinstance(direction, torch.Tensor) or direction.dim() != 2:
        raise ValueError(f"direction must be a tensor of shape (H, D), got {getattr(direction, 'shape', direction)!r}")
    n = check_int("n", n)
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=100.0)
    content_scale = check_float("content_scale", content_scale, minimum=0.0, maximum=100.0)
    h, d = direction.shape
    g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0) + _NOISE_SEED_OFFSET)
    noise = torch.randn(2, 1, h, n, d, generator=g) * content_scale  # (2, 1, H, n, D)
    shared = math.sqrt(alpha * math.sqrt(d)) * direction.float()[None, :, None, :]  # (1, H, 1, D)
    return shared + noise[0], shared + noise[1]


@torch.no_grad()
def rope_demo(mode: str, size: tuple[int, int] | int, heads: int, head_dim: int, head: int = 0, *,
              theta: float | None = None, grid_indexing: str | None = None, seed: int = 0,
              direction: str = "ones", alpha: float = 2.0, content_scale: float = 1.0) -> dict[str, Any]:
    """What a rotary embedding does on its own: its position kernel and attention on a fixed input.

    Args:
        mode, size, heads, head_dim, theta, grid_indexing, seed: :func:`make_rotary`.
        head: the head whose attention maps are returned.
        direction: ``"ones"`` or ``"random"``: the shared content (:func:`relpos.rotary.content_directions`,
            seeded by ``seed``).
        alpha, content_scale: :func:`demo_queries_keys`.

    Returns:
        ``{"kernel"`` float32 ``(H, 2h-1, 2w-1)`` or ``(H, 2L-1)`` (:meth:`~relpos.rotary.RotaryPositionEmbedding.position_kernel`
        of the unit content), ``"seen"`` ``(n, n)`` head ``head``'s kernel gathered over the token pairs
        (``kernel[head].flatten()[relative_position_index]``: the unscaled ``q . k`` of the content
        alone), ``"with"``, ``"without"`` head ``head``'s attention ``(n, n)`` with the
        queries and keys rotated and as they are (rows sum to 1), ``"freqs"`` ``(2, H, P)`` for "mixed"
        (else None), ``"theta"``, ``"grid_indexing"``, ``"scale"`` (``D ** -0.5``)``}``, numpy arrays.
    """
    rope = make_rotary(mode, size, heads, head_dim, theta, grid_indexing, seed)
    head = check_int("head", head, minimum=0, maximum=rope.num_heads - 1)
    kind = check_choice("direction", direction, DIRECTION_KINDS)
    u = content_directions(kind, rope.head_dim, rope.num_heads, seed)  # (H, D)
    n = rope.num_tokens
    q, k = demo_queries_keys(u, n, alpha=alpha, content_scale=content_scale, seed=seed)  # (1, H, n, D)
    scale = rope.head_dim**-0.5
    qr, kr = rope(q, k)  # (1, H, n, D) each, rotated
    with_rot = ((qr[0, head] @ kr[0, head].T) * scale).softmax(-1)  # (n, n)
    without = ((q[0, head] @ k[0, head].T) * scale).softmax(-1)  # (n, n)
    kernel = rope.position_kernel(u)  # (H, 2h-1, 2w-1) or (H, 2L-1)
    seen = kernel[head].reshape(-1)[relative_position_index(rope.grid_size)]  # (n, n): q.k of u at each pair
    return {
        "kernel": kernel.numpy(),
        "seen": seen.numpy(),
        "with": with_rot.numpy(),
        "without": without.numpy(),
        "freqs": rope.freqs.detach().numpy().copy() if rope.is_learned else None,
        "theta": rope.theta,
        "grid_indexing": rope.grid_indexing,
        "scale": scale,
    }
