"""The attention kernels behind :mod:`relpos.attention`, and the input checks they share.

Shape legend: ``B`` batch, ``H`` heads, ``Nq`` / ``Nk`` query / key tokens, ``D`` head dim,
``Dv`` value dim.

Every kernel computes ``softmax(q k^T * scale + bias) v``; they differ in what they materialize:

* :func:`explicit_attention` ("explicit"): the seed's formula; returns the ``(B, H, Nq, Nk)``
  weights too and applies dropout to them;
* :func:`inplace_attention` ("inplace"): no autograd, one ``(B, H, Nq, Nk)`` buffer, bias add and
  softmax written over the logits;
* :class:`BiasedAttentionFunction` ("biased_fused"): autograd through a bias, bias add and softmax
  in place, a hand-written backward;
* :func:`sdpa_attention` ("sdpa"): ``torch.nn.functional.scaled_dot_product_attention`` with the
  bias as a 4D float mask.

Which one runs is decided in one place, ``relpos.attention._choose_kernel``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "KERNELS",
    "BiasedAttentionFunction",
    "as_4d_mask",
    "check_bias",
    "check_qkv",
    "explicit_attention",
    "inplace_attention",
    "run_kernel",
    "sdpa_attention",
]

#: The kernel names ``relpos.attention._choose_kernel`` returns.
KERNELS: tuple[str, ...] = ("explicit", "inplace", "biased_fused", "sdpa")


def check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Raise TypeError/ValueError unless ``query (B, H, Nq, D)``, ``key (B, H, Nk, D)`` and
    ``value (B, H, Nk, Dv)`` are floating-point tensors that agree on ``B``, ``H``, ``D`` and ``Nk``."""
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


def check_bias(bias: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> None:
    """Raise TypeError/ValueError unless ``bias`` broadcasts to the logits ``(B, H, Nq, Nk)``."""
    if not isinstance(bias, torch.Tensor):
        raise TypeError(
            f"relative_position_bias must be a torch.Tensor of shape (H, N, N), got {type(bias).__name__}"
        )
    b, h, nq, _ = query.shape
    nk = key.shape[2]
    target = (b, h, nq, nk)
    shape = tuple(bias.shape)
    ok = 2 <= len(shape) <= 4 and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))
    if not ok:
        raise ValueError(
            f"relative_position_bias of shape {shape} does not broadcast to the attention logits "
            f"(B, H, N_q, N_k) = {target}; expected (H, N, N) = {(h, nq, nk)}"
        )


def as_4d_mask(bias: torch.Tensor) -> torch.Tensor:
    """View a ``(H, N, N)`` (or 2D) bias as ``(1, H, N, N)``: SDPA's CPU flash kernel takes a 4D
    float mask directly, while a 3D one sent it to a path 2-2.5x slower (torch 2.13, measured)."""
    if bias.dim() >= 4:
        return bias
    return bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))  # (1, H, N, N) view


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
    dropout: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's formula: ``(output (B, H, Nq, Dv), weights (B, H, Nq, Nk))``.

    ``weights`` are the softmax before ``dropout`` (a module such as ``nn.Dropout``, or None).
    """
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    out = (attn if dropout is None else dropout(attn)) @ v  # (B, H, Nq, Dv)
    return out, attn


def inplace_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` without autograd, one ``(B, H, Nq, Nk)`` buffer reused."""
    logits = torch.matmul(q * scale, k.transpose(-2, -1))  # (B, H, Nq, Nk)
    if bias is not None:
        logits.add_(bias)
    probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # row-wise, in place
    return torch.matmul(probs, v)  # (B, H, Nq, Dv)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """PyTorch's fused SDPA with the bias as a 4D float mask: output ``(B, H, Nq, Dv)``."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if bias is None else as_4d_mask(bias), dropout_p=dropout_p, scale=scale
    )  # (B, H, Nq, Dv)


class BiasedAttentionFunction(torch.autograd.Function):
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


def run_kernel(
    kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
    scale: float, dropout: torch.nn.Module, dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``kernel`` (one of :data:`KERNELS`) on checked inputs: ``(output, weights or None)``.

    ``dropout`` is the weights' dropout module (explicit kernel); ``dropout_p`` the probability the
    fused SDPA kernel applies (0 outside training). Output ``(B, H, Nq, Dv)``.
    """
    if kernel == "explicit":
        return explicit_attention(q, k, v, bias, scale, dropout)
    if kernel == "inplace":
        return inplace_attention(q, k, v, bias, scale), None
    if kernel == "biased_fused":
        return BiasedAttentionFunction.apply(q, k, v, bias, scale), None
    if kernel == "sdpa":
        return sdpa_attention(q, k, v, bias, scale, dropout_p), None
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
