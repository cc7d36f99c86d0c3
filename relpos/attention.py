"""Scaled dot-product and multi-head self-attention with an optional relative position bias.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens (query = key length), ``D`` head dim,
``C = H * D`` embedding dim.

Two paths compute the same thing:

* the **explicit** path (``ScaledDotProductAttention``): ``softmax(q k^T * scale + bias) v``; it
  materializes the ``(B, H, N, N)`` weights and returns them;
* the **fused** path: ``torch.nn.functional.scaled_dot_product_attention`` with the bias as a float
  ``attn_mask``; it never returns weights and, from a few hundred tokens on, is faster and uses far
  less memory.

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

# Token counts from which the fused kernel beats the explicit path on CPU. First sweep, 2 threads
# (module level, 2D bias): eval at N=49 / 144 the explicit path was 1.4x / 1.3x faster, at N=196
# even, at N=1024 SDPA 1.85x faster. In training a bias that needs a gradient sends SDPA's backward
# to its math kernel, so the two are within ~15% up to N=256. benchmarks/ holds the full sweep.
SDPA_MIN_TOKENS_EVAL = 196
SDPA_MIN_TOKENS_TRAIN = 196


def _check_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, N, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D), got shape {tuple(t.shape)}")
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


class ScaledDotProductAttention(nn.Module):
    """Explicit scaled dot-product attention that returns its weights.

    Args:
        scale: ``True`` scales the logits by ``D ** -0.5``; ``False`` leaves them unscaled;
            a positive float is used as the scale itself.
        dropout: dropout probability on the attention weights (training only).

    ``forward(query, key, value, relative_position_bias=None, need_weights=True)`` takes
    ``(B, H, N, D)`` tensors and a bias broadcastable to ``(B, H, N, N)`` (usually ``(H, N, N)``),
    and returns ``(output (B, H, N, D), attn (B, H, N, N))``. ``attn`` are the softmax weights before
    dropout. With ``need_weights=False`` it runs the fused kernel and returns ``(output, None)``.
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_qkv(query, key, value)
        if relative_position_bias is not None:
            _check_bias(relative_position_bias, query, key)
            relative_position_bias = relative_position_bias.to(query.dtype)
        scale = self.scale_factor(query.shape[-1])
        if not need_weights:
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=relative_position_bias,
                dropout_p=self.dropout if self.training else 0.0,
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

    def _use_sdpa(self, num_tokens: int) -> bool:
        if self._force_weights or self.attn_impl == "explicit":
            return False
        if self.attn_impl == "sdpa":
            return True
        threshold = SDPA_MIN_TOKENS_TRAIN if torch.is_grad_enabled() else SDPA_MIN_TOKENS_EVAL
        return num_tokens >= threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, N, {self.embed_dim}), got {shape}")
        B, N, C = x.shape
        bias = None
        if self.relative_position_bias is not None and not self._bias_disabled:
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
        out, _ = self.attention(q, k, v, bias, need_weights=not self._use_sdpa(N))  # (B, H, N, D)
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
