"""Bias tables set by hand: what a teacher shows before (or instead of) training one.

A preset fills a family's ``(T, H)`` table from the geometry of its rows (:mod:`relpos.geometry`):
``locality`` is ``-alpha * distance``, ``alibi`` the same with ALiBi's head slopes, and so on.
:func:`make_bias` builds a fresh bias of any family with its table set, :func:`apply_bias_preset`
does it to every layer of a copy of a model, :func:`demo_attention` shows what a bias does to
attention on its own. Nothing here mutates a module it is given.

Shape legend: ``H`` heads, ``N`` tokens, ``T`` table rows, ``D`` head dim.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.attention import ScaledDotProductAttention
from relpos.diagnostics import bias_modules
from relpos.families import FAMILIES, BiasFamily, check_rpb_kwargs, family, family_options
from relpos.geometry import num_table_rows, t5_bucket_distances, table_distances
from relpos.guards import check_budget
from relpos.relative_position import RelativePositionBias, alibi_slopes

__all__ = [
    "BIAS_PRESETS",
    "apply_bias_preset",
    "bias_arrays",
    "demo_attention",
    "demo_logits",
    "learned_families",
    "make_bias",
    "preset_table",
]

#: Table presets: ``init`` is the module's own truncated-normal init; ``zeros``; ``random`` a normal
#: with std ``alpha``; ``locality`` ``-alpha * distance`` in every head; ``alibi``
#: ``-alpha * m_h * distance`` with ALiBi's head slopes ``m_h`` (:func:`~relpos.relative_position.alibi_slopes`).
BIAS_PRESETS: tuple[str, ...] = ("init", "zeros", "random", "locality", "alibi")


def learned_families() -> tuple[str, ...]:
    """The families with a learned table a preset can set (``FAMILIES[name].learned``)."""
    return tuple(name for name, fam in FAMILIES.items() if fam.learned)


def _family_size(fam: BiasFamily, size: Any) -> tuple[int, int] | int:
    """A window ``(h, w)`` for a 2D family (ALiBi is drawn 2D here), a length ``L`` for a 1D one."""
    if fam.is_2d():
        return check_window_size("window_size", size)
    return check_int("seq_len", size)


def _row_distances(fam: BiasFamily, size: tuple[int, int] | int, options: dict) -> torch.Tensor:
    """``(T,)`` float32 distance each table row stands for: a T5 bucket's smallest ``|offset|``, else
    the Euclidean length of the row's offset; class-token rows are at distance 0."""
    if "num_buckets" in options:
        return t5_bucket_distances(options["num_buckets"], options["max_distance"])
    dist = table_distances(size).float()  # (T,)
    return torch.cat([dist, torch.zeros(fam.extra_rows)])  # (T + extra_rows,)


def preset_table(
    preset: str,
    bias_type: str,
    size: Any,
    num_heads: int,
    alpha: float = 1.0,
    seed: int = 0,
    init_std: float = 0.02,
    **options: Any,
) -> torch.Tensor:
    """A ``(T, H)`` bias table for one of :data:`BIAS_PRESETS`.

    Args:
        preset: ``init`` (truncated normal with ``init_std``, as the module initializes),
            ``zeros``, ``random`` (normal with std ``alpha``), ``locality`` (``-alpha * distance``
            in every head) or ``alibi`` (``-alpha * m_h * distance`` with ALiBi's slopes ``m_h``).
        bias_type, size: a learned family (:func:`learned_families`) and its size: a window
            ``(h, w)`` for a 2D family, a length ``L`` for a 1D one. Class-token rows sit at
            distance 0; a T5 bucket's distance is the smallest ``|offset|`` it holds.
        num_heads: ``H``.
        alpha: strength of ``random``, ``locality`` and ``alibi``.
        seed: seed of ``init`` and ``random``.
        init_std: std of ``init``.
        **options: the family's options (T5: ``num_buckets``, ``max_distance``; defaults as the module).
    """
    check_choice("preset", preset, BIAS_PRESETS)
    check_choice("bias_type", bias_type, learned_families())
    fam = FAMILIES[bias_type]
    size = _family_size(fam, size)
    num_heads = check_int("num_heads", num_heads)
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=100.0)
    seed = check_int("seed", seed, minimum=0)
    init_std = check_float("init_std", init_std, minimum=0.0, maximum=10.0)
    options = family_options(bias_type, options)
    if "num_buckets" in options:  # the bucket distances scan offsets up to ±2 max_distance
        rows, scanned = options["num_buckets"], 4 * options["max_distance"] + 1
    else:
        rows, scanned = num_table_rows(size, fam.extra_rows), 0
    check_budget(rows * num_heads * 4 * 3 + scanned * 8 * 3,
                 f"a {bias_type} preset table ({rows} rows x {num_heads} heads)")
    dist = _row_distances(fam, size, options)  # (T,)
    t = dist.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if preset == "zeros":
        return torch.zeros(t, num_heads)
    if preset == "init":
        if init_std == 0:
            return torch.zeros(t, num_heads)
        x = torch.randn(t, num_heads, generator=gen) * init_std
        return x.clamp(-2 * init_std, 2 * init_std)  # truncated at ±2 std, like the module
    if preset == "random":
        return torch.randn(t, num_heads, generator=gen) * alpha
    if preset == "locality":
        return (-alpha * dist)[:, None].expand(t, num_heads) + 0.0  # (T, H); + 0.0 turns -0.0 into 0.0
    return -alpha * dist[:, None] * alibi_slopes(num_heads).float()[None, :] + 0.0  # (T, H)


def make_bias(
    bias_type: str,
    size: Any,
    num_heads: int,
    init_std: float = 0.02,
    seed: int = 0,
    preset: str = "init",
    alpha: float = 1.0,
    **options: Any,
) -> RelativePositionBias:
    """A fresh :class:`RelativePositionBias` of any family (eval mode, no gradients).

    Args:
        bias_type: one of :data:`relpos.families.BIAS_TYPES`.
        size: a window ``(h, w)`` for a 2D family (ALiBi is drawn on a 2D window here), a length
            ``L`` for a 1D one (the plain 1D table, T5).
        num_heads: ``H``.
        init_std: std of the learned tables' init.
        seed: seed of the module's init (and of the ``init``/``random`` presets).
        preset: learned families: their table becomes :func:`preset_table`; families without a
            learned table (fixed or computed) take only ``"init"``.
        alpha: strength of the preset.
        **options: the family's options (``num_buckets``, ``max_distance``, ``alibi_distance``,
            ``cpb_hidden_dim``); another family's option is a ValueError.
    """
    fam = family(bias_type)
    size = _family_size(fam, size)
    num_heads = check_int("num_heads", num_heads)
    options = {k: v for k, v in options.items() if v is not None}
    kwargs = {"window_size": size} if isinstance(size, tuple) else {"seq_len": size}
    check_rpb_kwargs({"bias_type": bias_type, **kwargs, **options})
    if not fam.learned and preset != "init":
        check_choice("preset", preset, BIAS_PRESETS)
        raise ValueError(
            f"preset {preset!r} cannot apply to bias_type {bias_type!r} ({fam.label}): it has no learned "
            f"table to set ({fam.description}); use preset 'init'"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rpb = RelativePositionBias(num_heads=num_heads, bias_type=bias_type, init_std=init_std, **kwargs, **options)
    if fam.learned:
        own = {k: getattr(rpb, k) for k in fam.options}  # the options the module resolved
        table = preset_table(preset, bias_type, size, num_heads, alpha=alpha, seed=seed, init_std=init_std, **own)
        with torch.no_grad():
            rpb.relative_position_bias_table.copy_(table)
    return rpb.eval().requires_grad_(False)


def bias_arrays(rpb: RelativePositionBias, head: int | None = None) -> dict[str, np.ndarray]:
    """``{"table": (T, H), "bias": (H, N, N), "index": (N, N)}`` of a bias module, as numpy.

    With ``head``, ``bias`` is that head's only, ``(1, N, N)`` (a 32x32 window with 16 heads is
    64 MB in full).
    """
    with torch.no_grad():
        table = rpb.effective_table().detach().float()  # (T, H): learned, fixed or computed
        index = rpb.relative_position_index
        if head is None:
            bias = rpb().detach().float()  # (H, N, N)
        else:
            head = check_int("head", head, minimum=0, maximum=rpb.num_heads - 1)
            bias = table[:, head][index][None]  # (1, N, N)
        return {"table": table.numpy().copy(), "bias": bias.numpy().copy(), "index": index.numpy().copy()}


def apply_bias_preset(model: nn.Module, preset: str, alpha: float = 1.0, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer's table set to :func:`preset_table`.

    Layer ``l`` uses ``seed + l`` for ``random``/``init``. The given model is never changed.

    Raises:
        ValueError: the model has no relative position bias, or its family has no learned table.
    """
    check_choice("preset", preset, BIAS_PRESETS)
    rpbs = bias_modules(model)
    if not rpbs:
        raise ValueError("this model has no relative position bias: presets need use_relative_position=True")
    fam = FAMILIES[rpbs[0].bias_type]
    if not fam.learned:
        raise ValueError(
            f"table presets apply to learned tables ({', '.join(learned_families())}); this model uses "
            f"bias_type {fam.name!r} ({fam.label}), which has none to set: choose 'as loaded'"
        )
    new = copy.deepcopy(model).eval()
    for layer, m in enumerate(bias_modules(new)):
        size = m.window_size if m.window_size is not None else m.seq_len
        own = {k: getattr(m, k) for k in FAMILIES[m.bias_type].options}
        table = preset_table(preset, m.bias_type, size, m.num_heads, alpha=alpha, seed=seed + layer,
                             init_std=m.init_std, **own)
        with torch.no_grad():
            m.relative_position_bias_table.copy_(table)
    return new


def _demo_queries_keys(h: int, n: int, seed: int, head_dim: int, content_scale: float) -> tuple[torch.Tensor, ...]:
    """The fixed random queries and keys of :func:`demo_attention`, ``(1, H, N, D)`` each."""
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    q = torch.randn(1, h, n, head_dim, generator=gen) * content_scale  # (1, H, N, D)
    k = torch.randn(1, h, n, head_dim, generator=gen) * content_scale  # (1, H, N, D)
    return q, k


def demo_logits(
    num_heads: int,
    num_tokens: int,
    seed: int = 0,
    head_dim: int = 16,
    content_scale: float = 1.0,
) -> np.ndarray:
    """The content logits ``q k^T / sqrt(D)`` of :func:`demo_attention`'s fixed input.

    ``softmax(demo_logits(H, N, ...) + bias)`` is ``demo_attention(bias, ...)[0]`` for an
    ``(H, N, N)`` bias (same seed, head dim and content scale): the formula's first step.

    Returns:
        ``(H, N, N)`` float32.
    """
    num_heads, num_tokens = check_int("num_heads", num_heads), check_int("num_tokens", num_tokens)
    head_dim = check_int("head_dim", head_dim, maximum=256)
    content_scale = check_float("content_scale", content_scale, minimum=0.0, maximum=100.0)
    q, k = _demo_queries_keys(num_heads, num_tokens, seed, head_dim, content_scale)  # (1, H, N, D) each
    return (q[0] @ k[0].transpose(-2, -1) * head_dim**-0.5).numpy()  # (H, N, N)


def demo_attention(
    bias: torch.Tensor | np.ndarray,
    seed: int = 0,
    head_dim: int = 16,
    content_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention on a fixed input, with and without ``bias``: what the bias does on its own.

    Queries and keys are fixed random vectors (seeded, std ``content_scale``), so the logits
    ``q k^T / sqrt(D)`` are the same in both maps and only the bias differs.

    Args:
        bias: ``(H, N, N)`` bias.
        seed: seed of the queries and keys.
        head_dim: ``D``.
        content_scale: std of queries and keys (0 leaves only the bias).

    Returns:
        ``(with_bias, without_bias)``, each ``(H, N, N)`` softmax weights (rows sum to 1).
    """
    bias = torch.as_tensor(bias, dtype=torch.float32)
    if bias.dim() != 3 or bias.shape[1] != bias.shape[2]:
        raise ValueError(f"bias must have shape (H, N, N), got {tuple(bias.shape)}")
    head_dim = check_int("head_dim", head_dim, maximum=256)
    content_scale = check_float("content_scale", content_scale, minimum=0.0, maximum=100.0)
    h, n, _ = bias.shape
    q, k = _demo_queries_keys(h, n, seed, head_dim, content_scale)  # (1, H, N, D) each
    v = torch.zeros(1, h, n, 1)
    attn = ScaledDotProductAttention()
    with torch.no_grad():
        _, with_bias = attn(q, k, v, bias)
        _, without = attn(q, k, v, None)
    return with_bias[0].numpy(), without[0].numpy()  # (H, N, N) each
