"""Scaled dot-product and multi-head self-attention with an optional relative position bias or rotary
position embedding.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens (query = key length), ``D`` head dim,
``C = H * D`` embedding dim.

Two paths compute the same thing:

* the **explicit** path (``ScaledDotProductAttention``): ``softmax(q k^T * scale + bias) v``; it
  materializes the ``(B, H, N, N)`` weights and returns them;
* the **fused** paths, which never return weights: ``torch.nn.functional.scaled_dot_product_attention``
  with the bias as a 4D float ``attn_mask`` (no ``(B, H, N, N)`` tensor at all), an in-place
  computation without autograd for small inputs, or, when autograd needs a gradient through the
  bias, a custom autograd function (bias add and softmax in place, a hand-written backward; SDPA's
  own backward would fall back to its math kernel there). The kernels live in
  :mod:`relpos._attention_kernels`; :func:`_choose_kernel` is the one place that picks one.

``MultiHeadAttention`` returns only its output, so it picks the faster path by size and mode
(``attn_impl="auto"``). A rotary position embedding (``rope_kwargs``, :mod:`relpos.rotary`) turns the
queries and keys after the ``qkv`` split and adds no bias, so a layer with RoPE alone takes exactly
the kernels of a layer without position (fused SDPA forward and backward from
``SDPA_MIN_TOKENS_TRAIN`` tokens in training), never the biased ones. Attention maps are an explicit
request: :func:`collect_attention_maps`.
That request, :func:`relative_position_bias_disabled` and its siblings for the other position parts
(:func:`rotary_position_disabled`, :func:`absolute_position_disabled`) are *context-local*: they live in
``contextvars.ContextVar`` values the layers read during the forward, never in flags written on the
modules, so threads (e.g. browser sessions) sharing one model never see each other's requests.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from relpos._attention_kernels import KERNELS, check_bias, check_qkv, run_kernel
from relpos._validation import check_bool, check_choice, check_float, check_int
from relpos.families import resolve_bias_kwargs
from relpos.guards import check_budget, estimate_attention_maps_for
from relpos.relative_position import RelativePositionBias
from relpos.rotary import RotaryPositionEmbedding, resolve_rope_kwargs

__all__ = [
    "ATTN_IMPLS",
    "MultiHeadAttention",
    "ScaledDotProductAttention",
    "collect_attention_maps",
    "absolute_position_disabled",
    "absolute_position_enabled",
    "relative_position_bias_disabled",
    "rotary_position_disabled",
]

#: Values of ``MultiHeadAttention(attn_impl=...)``.
ATTN_IMPLS: tuple[str, ...] = ("auto", "sdpa", "explicit")

# Path choice, measured on this CPU (2 threads; benchmarks/ and BENCHMARKS.md hold the sweep).
# Without autograd, MultiHeadAttention(attn_impl="auto") always takes the no-weights route; inside
# it, below SDPA_MIN_TOKENS_EVAL query tokens an in-place explicit computation (logits written once,
# bias added and softmax taken in place) beat SDPA (attention core, ms: N=16 0.24 vs 0.51,
# N=49 1.4 vs 1.9-2.1, N=196 4.0 vs 5.4), from N=256 SDPA wins (4.3 vs 5.7; N=1024 4.9 vs 5.7).
# SDPA always gets the bias as a 4D (1, H, N, N) mask: a 3D one sent it to a path 2-2.5x slower.
# In training a bias that needs a gradient takes the custom fused-explicit function
# (_attention_kernels.BiasedAttentionFunction) whenever dropout is inactive; SDPA (flash forward
# and backward) is used in training only without such a bias, from SDPA_MIN_TOKENS_TRAIN tokens on.
SDPA_MIN_TOKENS_EVAL = 256
SDPA_MIN_TOKENS_TRAIN = 196
BIASED_FUSED_MIN_TOKENS_TRAIN = 1


def _choose_kernel(
    num_tokens: int,
    has_bias: bool,
    training: bool,
    needs_grad: bool,
    dropout: float,
    attn_impl: str,
    need_weights: bool,
) -> str:
    """The one choice of attention kernel: ``"explicit"``, ``"inplace"``, ``"biased_fused"`` or ``"sdpa"``.

    Args:
        num_tokens: query tokens ``N``.
        has_bias: a bias is added to the logits.
        training: the attention module is in training mode.
        needs_grad: autograd records this call (grad enabled and some input or the bias requires it).
        dropout: the attention-weights dropout probability (active only when ``training``).
        attn_impl: ``"auto"`` (the measured thresholds above), ``"sdpa"`` (a fused kernel at every
            size) or ``"explicit"`` (always the weights path).
        need_weights: the caller needs the ``(B, H, N, N)`` weights (only "explicit" returns them).

    Rules: weights wanted -> explicit. With autograd: a bias and no active dropout -> the custom
    function; otherwise SDPA from ``SDPA_MIN_TOKENS_TRAIN`` tokens, explicit below ("auto"). Without
    autograd (grad off, or nothing requires a gradient): in place below ``SDPA_MIN_TOKENS_EVAL`` tokens
    ("auto", dropout inactive), SDPA otherwise.
    """
    if need_weights or attn_impl == "explicit":
        return "explicit"
    dropout_active = training and dropout > 0.0
    if needs_grad:
        if has_bias and not dropout_active:
            fused = attn_impl == "sdpa" or num_tokens >= BIASED_FUSED_MIN_TOKENS_TRAIN
            return "biased_fused" if fused else "explicit"
        return "sdpa" if attn_impl == "sdpa" or num_tokens >= SDPA_MIN_TOKENS_TRAIN else "explicit"
    if not dropout_active and attn_impl == "auto" and num_tokens < SDPA_MIN_TOKENS_EVAL:
        return "inplace"
    return "sdpa"


class _MapRequest:
    """One :func:`collect_attention_maps` call: which layers report, and the slots they fill."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.slots = {m: i for i, m in enumerate(layers)}  # layer -> position in ``maps``
        self.maps: list[torch.Tensor | None] = [None] * len(layers)


# Context-local modes read by MultiHeadAttention.forward (each thread starts with the defaults).
_MAP_REQUEST: contextvars.ContextVar[_MapRequest | None] = contextvars.ContextVar(
    "relpos_attention_map_request", default=None
)
_BIAS_OFF: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "relpos_attention_bias_off", default=frozenset()
)
_ROTARY_OFF: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "relpos_attention_rotary_off", default=frozenset()
)
_ABSOLUTE_OFF: contextvars.ContextVar[frozenset] = contextvars.ContextVar(
    "relpos_absolute_position_off", default=frozenset()
)


class ScaledDotProductAttention(nn.Module):
    """Explicit scaled dot-product attention that returns its weights.

    Args:
        scale: ``True`` scales the logits by ``D ** -0.5``; ``False`` leaves them unscaled;
            a positive float is used as the scale itself.
        dropout: dropout probability on the attention weights (training only).

    ``forward(query, key, value, relative_position_bias=None, need_weights=True)`` takes
    ``(B, H, N, D)`` tensors and a bias broadcastable to ``(B, H, N, N)`` (usually ``(H, N, N)``),
    and returns ``(output (B, H, N, D), attn (B, H, N, N))``. ``attn`` are the softmax weights before
    dropout. With ``need_weights=False`` it returns ``(output, None)`` from a fused path: SDPA (bias
    passed as a 4D float mask), or, when autograd needs gradients through a bias and dropout is
    inactive, a custom autograd function with the bias add and softmax done in place and its own
    backward (SDPA's backward would fall back to its math kernel for a mask that needs a gradient).
    A parent module that already chose a kernel (``_choose_kernel``) passes it as ``kernel=``.
    """

    def __init__(self, scale: bool | float = True, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(scale, bool):
            self.scale: bool | float = scale
        else:
            self.scale = check_float("scale", scale, minimum=0.0, min_inclusive=False)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.attn_drop = nn.Dropout(self.dropout)

    def scale_factor(self, head_dim: int) -> float:
        if self.scale is True:
            return head_dim**-0.5
        if self.scale is False:
            return 1.0
        return float(self.scale)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        relative_position_bias: torch.Tensor | None = None,
        need_weights: bool = True,
        *,
        kernel: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_qkv(query, key, value)
        bias = relative_position_bias
        if bias is not None:
            check_bias(bias, query, key)
            bias = bias.to(query.dtype)
        if kernel is None:
            needs_grad = torch.is_grad_enabled() and any(
                t.requires_grad for t in (query, key, value, bias) if t is not None
            )
            kernel = _choose_kernel(
                query.shape[2], bias is not None, self.training, needs_grad, self.dropout,
                attn_impl="sdpa", need_weights=need_weights,
            )
        else:
            check_choice("kernel", kernel, KERNELS)
            if need_weights and kernel != "explicit":
                raise ValueError(f"need_weights=True needs kernel='explicit', got kernel={kernel!r}")
        dropout_p = self.dropout if self.training else 0.0
        return run_kernel(
            kernel, query, key, value, bias, self.scale_factor(query.shape[-1]), self.attn_drop, dropout_p
        )  # (B, H, N, D), (B, H, N, N) or None

    def extra_repr(self) -> str:
        return f"scale={self.scale}, dropout={self.dropout}"


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with an optional relative position bias (timm/Swin layout).

    Args:
        embed_dim: model width ``C``; must be divisible by ``num_heads``.
        num_heads: number of heads ``H``.
        dropout: dropout on the attention weights and after the output projection.
        use_relative_position: add a :class:`RelativePositionBias` to the logits.
        rpb_kwargs: keyword arguments of :class:`RelativePositionBias`; ``num_heads`` defaults to
            this module's and must equal it when given.
        qkv_bias: bias in the fused ``qkv`` projection.
        attn_impl: ``"auto"`` (fastest path by size and mode), ``"sdpa"`` (always fused) or
            ``"explicit"`` (always materialize the weights).
        rope_kwargs: keyword arguments of :class:`~relpos.rotary.RotaryPositionEmbedding` (at least
            ``grid_size``; ``mode``, ``theta``, ``grid_indexing``, ``num_prefix_tokens`` optional):
            this layer then rotates its queries and keys (:func:`relpos.rotary.resolve_rope_kwargs` fills
            ``head_dim`` and ``num_heads``, which must agree when given). Works alone or with a
            relative position bias.

    Attributes: ``embed_dim``, ``num_heads``, ``head_dim``, ``qkv`` (``Linear(C, 3C)``),
    ``attention`` (:class:`ScaledDotProductAttention`), ``relative_position_bias``
    (``RelativePositionBias`` or ``None``), ``rope`` (``RotaryPositionEmbedding`` or ``None``; a
    learned "mixed" one is this layer's own: state-dict key ``rope.freqs``), ``proj`` (``Linear(C, C)``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        use_relative_position: bool = False,
        rpb_kwargs: dict | None = None,
        qkv_bias: bool = True,
        attn_impl: str = "auto",
        rope_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim)
        self.num_heads = check_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.head_dim = embed_dim // num_heads
        dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        check_bool("use_relative_position", use_relative_position)
        self.attn_impl = check_choice("attn_impl", attn_impl, ATTN_IMPLS)

        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=check_bool("qkv_bias", qkv_bias))
        self.attention = ScaledDotProductAttention(scale=True, dropout=dropout)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(dropout)
        self.relative_position_bias: RelativePositionBias | None = None
        if use_relative_position:
            self.relative_position_bias = RelativePositionBias(
                **resolve_rpb_kwargs(rpb_kwargs, self.num_heads)
            )
        elif rpb_kwargs is not None:
            raise ValueError(
                "rpb_kwargs was given but use_relative_position is False: "
                "set use_relative_position=True or drop rpb_kwargs"
            )
        self.rope: RotaryPositionEmbedding | None = None
        if rope_kwargs is not None:
            self.rope = RotaryPositionEmbedding(
                **resolve_rope_kwargs(rope_kwargs, head_dim=self.head_dim, num_heads=self.num_heads)
            )

    def forward(
        self, x: torch.Tensor, relative_position_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)``.

        ``relative_position_bias``: optional ``(H, N, N)`` bias from outside (e.g. one bias shared by
        all blocks), used instead of this layer's own; zeroed like it by the bias-disabled switch.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, N, {self.embed_dim}), got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        B, N, C = x.shape
        # The context switches serve inspection of the plain model; a compiled training graph reads none
        # of them (a ContextVar read breaks Dynamo's graph).
        compiling = torch.compiler.is_compiling()
        bias_off = not compiling and self in _BIAS_OFF.get()
        request = None if compiling else _MAP_REQUEST.get()
        slot = None if request is None else request.slots.get(self)
        bias = None if bias_off else relative_position_bias
        if bias is None and self.relative_position_bias is not None and not bias_off:
            n_bias = self.relative_position_bias.num_tokens
            if N != n_bias:
                raise ValueError(
                    f"x has {N} tokens but the relative position bias covers {n_bias} "
                    f"(window_size={self.relative_position_bias.window_size}, "
                    f"seq_len={self.relative_position_bias.seq_len})"
                )
            bias = self.relative_position_bias()  # (H, N, N)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        if self.rope is not None and (compiling or self not in _ROTARY_OFF.get()):
            q, k = self.rope(q, k)  # each (B, H, N, D), turned by position (prefix tokens untouched)
        bias_grad = bias is not None and bias.requires_grad
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or bias_grad)
        kernel = _choose_kernel(
            N, bias is not None, self.attention.training, needs_grad, self.attention.dropout, self.attn_impl,
            need_weights=slot is not None,
        )
        out, weights = self.attention(q, k, v, bias, need_weights=kernel == "explicit", kernel=kernel)
        if slot is not None:
            request.maps[slot] = weights  # (B, H, N, N)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, attn_impl={self.attn_impl!r}"


def resolve_rpb_kwargs(rpb_kwargs: dict | None, num_heads: int) -> dict:
    """``rpb_kwargs`` with ``num_heads`` filled and checked (:func:`relpos.families.resolve_bias_kwargs`)."""
    return resolve_bias_kwargs(rpb_kwargs, num_heads=num_heads)


def _attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


@contextlib.contextmanager
def _switched_off(switch: contextvars.ContextVar, modules: frozenset) -> Iterator[None]:
    """Add ``modules`` to the context-local set ``switch`` for the ``with`` block (nested blocks add up)."""
    token = switch.set(switch.get() | modules)
    try:
        yield
    finally:
        switch.reset(token)


@contextlib.contextmanager
def relative_position_bias_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as if every relative position bias were zero, inside the ``with`` block.

    The switch is context-local (a ``ContextVar``): it holds for forwards run by this thread (or
    asyncio task) inside the block, and other threads using the same model are unaffected.
    """
    mods = frozenset(m for _, m in _attention_modules(model))
    with _switched_off(_BIAS_OFF, mods):
        yield model


@contextlib.contextmanager
def rotary_position_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with every rotary position embedding switched off (queries and keys are not
    turned) inside the ``with`` block; context-local like :func:`relative_position_bias_disabled`."""
    mods = frozenset(m for _, m in _attention_modules(model) if m.rope is not None)
    with _switched_off(_ROTARY_OFF, mods):
        yield model


@contextlib.contextmanager
def absolute_position_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as if every absolute position embedding (a module's ``pos_embed`` tensor, e.g.
    the ViT's) were zero, inside the ``with`` block; context-local like
    :func:`relative_position_bias_disabled` (the models ask :func:`absolute_position_enabled`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mods = frozenset(m for m in model.modules() if isinstance(getattr(m, "pos_embed", None), torch.Tensor))
    with _switched_off(_ABSOLUTE_OFF, mods):
        yield model


def absolute_position_enabled(module: nn.Module) -> bool:
    """Whether ``module`` adds its absolute position embedding in this context (read by its forward)."""
    return torch.compiler.is_compiling() or module not in _ABSOLUTE_OFF.get()


@torch.no_grad()
def collect_attention_maps(
    model: nn.Module, *inputs: torch.Tensor, with_bias: bool = True
) -> list[torch.Tensor]:
    """Run one forward in eval mode on the explicit path and return every layer's attention maps.

    Args:
        model: any module containing :class:`MultiHeadAttention` layers (or one itself).
        inputs: the model's forward arguments (e.g. images ``(B, C, H, W)`` for the ViT).
        with_bias: ``False`` computes the maps with every relative position bias zeroed.

    Returns:
        A list with one ``(B, H, N, N)`` tensor of softmax weights per attention layer, in module
        order. The model's mode, paths and hooks are as they were when this returns.

    The request is context-local (no hooks, no flags on the modules), so several threads may collect
    maps from one shared model at once. A model already in eval mode is not written to at all; one
    in training mode is switched to eval for the call (do not train it in another thread meanwhile).
    """
    mods = _attention_modules(model)
    if not mods:
        raise ValueError(f"model ({type(model).__name__}) has no MultiHeadAttention layer")
    check_budget(estimate_attention_maps_for(model, *inputs))
    request = _MapRequest([m for _, m in mods])
    training = [m for m in model.modules() if m.training]
    token = _MAP_REQUEST.set(request)
    try:
        if training:
            model.eval()
        ctx = contextlib.nullcontext() if with_bias else relative_position_bias_disabled(model)
        with ctx:
            model(*inputs)
    finally:
        _MAP_REQUEST.reset(token)
        for m in training:
            m.training = True
    missing = [name for (name, _), a in zip(mods, request.maps) if a is None]
    if missing:
        raise RuntimeError(f"these attention layers did not run during the forward: {missing}")
    return request.maps  # type: ignore[return-value]
