"""Scaled dot-product and multi-head self-attention with an optional relative position bias.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens (query = key length), ``D`` head dim,
``C = H * D`` embedding dim.

Two paths compute the same thing:

* the **explicit** path (``ScaledDotProductAttention``): ``softmax(q k^T * scale + bias) v``; it
  materializes the ``(B, H, N, N)`` weights and returns them;
* the **fused** path, which never returns weights: ``torch.nn.functional.scaled_dot_product_attention``
  with the bias as a 4D float ``attn_mask`` (no ``(B, H, N, N)`` tensor at all), or, when autograd
  needs a gradient through the bias, ``_BiasedAttentionFunction`` (bias add and softmax in place, a
  hand-written backward; SDPA's own backward would fall back to its math kernel there).

``MultiHeadAttention`` returns only its output, so it picks the faster path by size and mode
(``attn_impl="auto"``). Attention maps are an explicit request: :func:`collect_attention_maps`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from relpos._validation import check_bool, check_choice, check_float, check_int
from relpos.guards import check_budget, estimate_attention_maps_for
from relpos.relative_position import RelativePositionBias

__all__ = [
    "ATTN_IMPLS",
    "MultiHeadAttention",
    "ScaledDotProductAttention",
    "collect_attention_maps",
    "relative_position_bias_disabled",
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
# (_BiasedAttentionFunction) whenever dropout is inactive; SDPA (flash forward and backward) is used
# in training only without such a bias, from SDPA_MIN_TOKENS_TRAIN tokens on.
SDPA_MIN_TOKENS_EVAL = 256
SDPA_MIN_TOKENS_TRAIN = 196
BIASED_FUSED_MIN_TOKENS_TRAIN = 1


def _check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, N, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    bq, hq, _, dq = query.shape
    bk, hk, nk, dk = key.shape
    bv, hv, nv, _ = value.shape
    if (bq, hq) != (bk, hk) or (bq, hq) != (bv, hv):
        raise ValueError(
            "query, key and value must agree on (B, H): got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if dq != dk:
        raise ValueError(f"query and key must have the same head dim D: got {dq} and {dk}")
    if nk != nv:
        raise ValueError(f"key and value must have the same length N: got {nk} and {nv}")


def _check_bias(bias: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> None:
    if not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"relative_position_bias must be a torch.Tensor of shape (H, N, N), got {type(bias).__name__}"
        )
    b, h, nq, _ = query.shape
    nk = key.shape[2]
    target = (b, h, nq, nk)
    shape = tuple(bias.shape)
    ok = 2 <= len(shape) <= 4 and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target))
    )
    if not ok:
        raise ValueError(
            f"relative_position_bias of shape {shape} does not broadcast to the attention logits "
            f"(B, H, N_q, N_k) = {target}; expected (H, N, N) = {(h, nq, nk)}"
        )


def _as_4d_mask(bias: torch.Tensor) -> torch.Tensor:
    """View a ``(H, N, N)`` (or 2D) bias as ``(1, H, N, N)``: SDPA's CPU flash kernel takes a 4D
    float mask directly, while a 3D one sent it to a path 2-2.5x slower (torch 2.13, measured)."""
    if bias.dim() >= 4:
        return bias
    return bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))  # (1, H, N, N) view


def _explicit_inplace_no_grad(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` without autograd, one ``(B, H, Nq, Nk)`` buffer reused."""
    logits = torch.matmul(q * scale, k.transpose(-2, -1))  # (B, H, Nq, Nk)
    if bias is not None:
        logits.add_(bias)
    probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # row-wise, in place
    return torch.matmul(probs, v)  # (B, H, Nq, Dv)


class _BiasedAttentionFunction(torch.autograd.Function):
    """``softmax(q k^T * scale + bias) v`` with a hand-written backward (no dropout).

    Why: SDPA's backward falls back to its math kernel when the float mask needs a gradient, and
    plain autograd keeps several ``(B, H, N, N)`` temporaries. Here the forward writes the logits
    once (bias copied into the buffer, then ``baddbmm_`` adds ``scale * q k^T``), takes the softmax
    in place and saves only ``P``; the backward computes ``dS = P * (dP - rowsum(dP * P))`` in place
    of ``dP`` and sums it over the batch for the bias (a view when ``B == 1``).

    Inputs: ``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)``, ``bias`` broadcastable to
    ``(B, H, Nq, Nk)`` in ``q``'s dtype, ``scale`` a float. Output ``(B, H, Nq, D)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # type: ignore[override]
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        qf = q.reshape(B * H, Nq, D)  # (BH, Nq, D)
        kf = k.reshape(B * H, Nk, D)  # (BH, Nk, D)
        vf = v.reshape(B * H, Nk, v.shape[-1])  # (BH, Nk, Dv)
        logits = torch.empty(B, H, Nq, Nk, dtype=q.dtype, device=q.device)
        logits.copy_(bias.expand(B, H, Nq, Nk))
        logits = logits.view(B * H, Nq, Nk).baddbmm_(qf, kf.transpose(1, 2), alpha=scale)  # (BH, Nq, Nk)
        # Row-wise kernel over the last dim: reading a row fully before writing it, so in place is safe.
        probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # (BH, Nq, Nk)
        out = torch.bmm(probs, vf)  # (BH, Nq, Dv)
        ctx.save_for_backward(qf, kf, vf, probs)
        ctx.scale = scale
        ctx.dims = (B, H, Nq, Nk)
        ctx.shapes = (q.shape, k.shape, v.shape, bias.shape)
        return out.view(B, H, Nq, v.shape[-1])  # (B, H, Nq, Dv)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        qf, kf, vf, probs = ctx.saved_tensors
        B, H, Nq, Nk = ctx.dims
        q_shape, k_shape, v_shape, bias_shape = ctx.shapes
        need_q, need_k, need_v, need_bias, _ = ctx.needs_input_grad
        g = grad_out.reshape(B * H, Nq, grad_out.shape[-1])  # (BH, Nq, Dv)
        grad_q = grad_k = grad_v = grad_bias = None
        if need_v:
            grad_v = torch.bmm(probs.transpose(1, 2), g).view(v_shape)  # (B, H, Nk, Dv)
        if need_q or need_k or need_bias:
            d = torch.bmm(g, vf.transpose(1, 2))  # (BH, Nq, Nk): dP
            # dS = P * (dP - rowsum(dP * P)), written over dP (row-wise kernel, as in the forward).
            d = torch.ops.aten._softmax_backward_data.out(d, probs, -1, probs.dtype, grad_input=d)
            if need_q:
                grad_q = torch.bmm(d, kf * ctx.scale).view(q_shape)  # (B, H, Nq, D)
            if need_k:
                grad_k = torch.bmm(d.transpose(1, 2), qf * ctx.scale).view(k_shape)  # (B, H, Nk, D)
            if need_bias:
                d4 = d.view(B, H, Nq, Nk)
                if B == 1 and len(bias_shape) == 3:
                    grad_bias = d4[0]  # (H, Nq, Nk) view, no copy
                else:
                    grad_bias = d4.sum_to_size(bias_shape)
        return grad_q, grad_k, grad_v, grad_bias, None


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
    """

    def __init__(self, scale: bool | float = True, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(scale, bool):
            self.scale: bool | float = scale
        else:
            self.scale = check_float("scale", scale, minimum=0.0, min_inclusive=False)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.attn_drop = nn.Dropout(self.dropout)
        # Set by MultiHeadAttention(attn_impl="auto") per call: below this many query tokens the
        # no-weights route without autograd computes in place instead of calling SDPA.
        self._inplace_below_tokens = 0

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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_qkv(query, key, value)
        if relative_position_bias is not None:
            _check_bias(relative_position_bias, query, key)
            relative_position_bias = relative_position_bias.to(query.dtype)
        scale = self.scale_factor(query.shape[-1])
        if not need_weights:
            dropout_p = self.dropout if self.training else 0.0
            bias = relative_position_bias
            if (
                bias is not None
                and dropout_p == 0.0
                and torch.is_grad_enabled()
                and any(t.requires_grad for t in (query, key, value, bias))
            ):
                out = _BiasedAttentionFunction.apply(query, key, value, bias, scale)  # (B, H, N, D)
                return out, None
            no_autograd = not torch.is_grad_enabled() or not any(
                t.requires_grad for t in (query, key, value, bias) if t is not None
            )
            if no_autograd and dropout_p == 0.0 and query.shape[2] < self._inplace_below_tokens:
                return _explicit_inplace_no_grad(query, key, value, bias, scale), None
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=None if bias is None else _as_4d_mask(bias),
                dropout_p=dropout_p,
                scale=scale,
            )  # (B, H, N, D)
            return out, None
        attn = (query * scale) @ key.transpose(-2, -1)  # (B, H, N, N)
        if relative_position_bias is not None:
            attn = attn + relative_position_bias
        attn = attn.softmax(dim=-1)
        out = self.attn_drop(attn) @ value  # (B, H, N, D)
        return out, attn

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

    Attributes: ``embed_dim``, ``num_heads``, ``head_dim``, ``qkv`` (``Linear(C, 3C)``),
    ``attention`` (:class:`ScaledDotProductAttention`), ``relative_position_bias``
    (``RelativePositionBias`` or ``None``), ``proj`` (``Linear(C, C)``).
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
        # Set by collect_attention_maps / relative_position_bias_disabled for one forward.
        self._force_weights = False
        self._bias_disabled = False

    def _use_sdpa(self, num_tokens: int, bias: torch.Tensor | None = None) -> bool:
        """Whether to call the attention with ``need_weights=False`` (a fused path)."""
        if self._force_weights or self.attn_impl == "explicit":
            return False
        if self.attn_impl == "sdpa":
            return True
        if not torch.is_grad_enabled():
            return True  # no weights needed: in place below SDPA_MIN_TOKENS_EVAL, SDPA from there
        dropout_active = self.training and self.attention.dropout > 0.0
        if bias is not None and not dropout_active:
            return num_tokens >= BIASED_FUSED_MIN_TOKENS_TRAIN
        return num_tokens >= SDPA_MIN_TOKENS_TRAIN

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
        bias = None if self._bias_disabled else relative_position_bias
        if bias is None and self.relative_position_bias is not None and not self._bias_disabled:
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
        fused = self._use_sdpa(N, bias)
        self.attention._inplace_below_tokens = SDPA_MIN_TOKENS_EVAL if self.attn_impl == "auto" else 0
        out, _ = self.attention(q, k, v, bias, need_weights=not fused)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, attn_impl={self.attn_impl!r}"


def resolve_rpb_kwargs(rpb_kwargs: dict | None, num_heads: int) -> dict:
    """Fill ``num_heads`` into ``rpb_kwargs`` and check that it agrees with the model's."""
    if rpb_kwargs is None:
        rpb_kwargs = {}
    if not isinstance(rpb_kwargs, dict):
        raise TypeError(f"rpb_kwargs must be a dict or None, got {type(rpb_kwargs).__name__}")
    kwargs = dict(rpb_kwargs)
    given = kwargs.setdefault("num_heads", num_heads)
    if given != num_heads:
        raise ValueError(
            f"rpb_kwargs['num_heads'] ({given!r}) must equal the attention's num_heads ({num_heads})"
        )
    return kwargs


def _attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


@contextlib.contextmanager
def relative_position_bias_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as if every relative position bias were zero, inside the ``with`` block."""
    mods = [m for _, m in _attention_modules(model)]
    before = [m._bias_disabled for m in mods]
    try:
        for m in mods:
            m._bias_disabled = True
        yield model
    finally:
        for m, b in zip(mods, before):
            m._bias_disabled = b


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
    """
    mods = _attention_modules(model)
    if not mods:
        raise ValueError(f"model ({type(model).__name__}) has no MultiHeadAttention layer")
    check_budget(estimate_attention_maps_for(model, *inputs))
    maps: list[torch.Tensor | None] = [None] * len(mods)
    handles = []

    def hook_for(i: int):
        def hook(_module, _args, output):
            maps[i] = output[1]

        return hook

    was_training = model.training
    try:
        model.eval()
        for i, (_, m) in enumerate(mods):
            m._force_weights = True
            handles.append(m.attention.register_forward_hook(hook_for(i)))
        ctx = contextlib.nullcontext() if with_bias else relative_position_bias_disabled(model)
        with ctx:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for _, m in mods:
            m._force_weights = False
        model.train(was_training)
    missing = [name for (name, _), a in zip(mods, maps) if a is None]
    if missing:
        raise RuntimeError(f"these attention layers did not run during the forward: {missing}")
    return maps  # type: ignore[return-value]
