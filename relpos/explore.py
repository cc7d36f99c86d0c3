"""The computations behind the app's pages: plain numbers in, tensors and numpy arrays out.

Every page of the app is a thin client of this module (widgets -> one call here -> a figure from
:mod:`relpos.experiments.visualize`), so what the app shows is tested here without a browser.
Nothing here imports streamlit, and nothing mutates a model it is given (presets copy first).

Shape legend: ``H`` heads, ``N`` tokens (``h * w`` for a 2D window, ``L`` for 1D), ``T`` table rows,
``L_layers`` attention layers, ``C`` image channels.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relpos._validation import check_choice, check_float, check_int, check_window_size
from relpos.attention import (
    ScaledDotProductAttention,
    collect_attention_maps,
    relative_position_bias_disabled,
)
from relpos.jobs import list_presets, preset_path, sanitize_name
from relpos.relative_position import (
    BIAS_TYPES,
    RelativePositionBias,
    alibi_slopes,
    check_rpb_kwargs,
    get_relative_position_index_1d,
    get_relative_position_index_2d,
    t5_relative_position_bucket,
)

__all__ = [
    "BIAS_PRESETS",
    "CHECKPOINT_SUFFIXES",
    "DIAGNOSTIC_MEASURES",
    "EXPLORE_BIAS_TYPES",
    "INDEX_BIAS_TYPES",
    "LEARNED_BIAS_TYPES",
    "MAX_HEADS",
    "MAX_IMAGE_UPLOAD_BYTES",
    "MAX_SEQ_LEN",
    "MAX_UPLOAD_BYTES",
    "MAX_WINDOW_SIDE",
    "TRAIN_SETTINGS",
    "UPLOADS_DIR",
    "apply_bias_preset",
    "attention_maps",
    "bias_arrays",
    "bias_tables",
    "center_token",
    "changed_overrides",
    "check_run_settings",
    "dataset_classes",
    "decode_cell",
    "demo_attention",
    "diagnostics_table",
    "cached_diagnostics",
    "family_grid",
    "grid_part",
    "display_image",
    "format_eta",
    "fresh_model",
    "image_from_upload",
    "index_formula_latex",
    "index_matrix",
    "initial_tables",
    "layer_biases",
    "list_checkpoints",
    "list_presets",
    "load_checkpoint_model",
    "make_bias",
    "mean_attention_distance",
    "model_summary",
    "num_tokens",
    "predict",
    "preset_config",
    "preset_table",
    "rpb_modules",
    "safe_download_name",
    "sample_input",
    "save_upload",
    "table_difference",
    "table_geometry",
    "table_offsets",
    "train_overrides",
    "upscale_nearest",
]

#: Largest window side (2D) and sequence length (1D) the app offers: 32 x 32 = 1024 tokens keeps
#: every page responsive (index and bias matrices of 1024 x 1024, block-averaged when drawn).
MAX_WINDOW_SIDE = 32
MAX_SEQ_LEN = 1024
MAX_HEADS = 16
#: Upload limit for checkpoints (the server's own limit in .streamlit/config.toml is the outer one).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_IMAGE_UPLOAD_BYTES = 10 * 1024 * 1024
UPLOADS_DIR = "uploads"
#: Table presets a teacher can apply by hand. ``init`` is the module's own truncated-normal init;
#: ``random`` a normal with std ``alpha``; ``locality`` ``-alpha * distance`` in every head;
#: ``alibi`` ``-alpha * m_h * distance`` with ALiBi's head slopes ``m_h`` (:func:`alibi_slopes`).
BIAS_PRESETS: tuple[str, ...] = ("init", "zeros", "random", "locality", "alibi")
#: The bias families the bias explorer draws: every family of the library (the same tuple).
EXPLORE_BIAS_TYPES: tuple[str, ...] = BIAS_TYPES
#: The position index pages (index matrix, decoded cells) cover the plain 2D window and 1D sequence.
INDEX_BIAS_TYPES: tuple[str, ...] = ("2d", "1d")
#: Families with a learned table that :data:`BIAS_PRESETS` can overwrite ("alibi" is fixed, "cpb"
#: is computed by an MLP: neither has a table to edit).
LEARNED_BIAS_TYPES: tuple[str, ...] = ("1d", "2d", "2d_cls", "t5")
#: The explorer's 2D families (a window ``(h, w)``); "1d" and "t5" take a length ``L``. The explorer
#: draws "alibi" on a 2D window (as in a ViT).
_EXPLORE_2D: tuple[str, ...] = ("2d", "2d_cls", "cpb", "alibi")
#: The per-head measures of :func:`relpos.diagnostics.bias_diagnostics`, with one line each.
DIAGNOSTIC_MEASURES: dict[str, str] = {
    "locality": "expected query-key distance (patches) under softmax of the bias alone; small = local",
    "locality_ratio": "locality divided by the same under uniform attention (1 = no preference, < 1 local)",
    "symmetry": "correlation of b(Δ) with b(−Δ): 1 symmetric, −1 antisymmetric",
    "bias_entropy": "entropy of softmax of the bias alone (log N = uniform)",
    "kl": "KL(attention with bias ‖ without) on this input: how far the bias moves attention (0 = not at all)",
    "entropy": "entropy of the attention with the bias on this input (low = focused)",
    "entropy_no_bias": "entropy of the same attention with every bias removed",
}
CHECKPOINT_SUFFIXES = (".pt", ".pth")
_FORWARD_LOCK = threading.RLock()


# --------------------------------------------------------------------------- windows and indices


def _check_size(bias_type: str, size: Any) -> tuple[int, int] | int:
    check_choice("bias_type", bias_type, INDEX_BIAS_TYPES)
    if bias_type == "2d":
        return check_window_size("window_size", size, maximum=MAX_WINDOW_SIDE)
    return check_int("seq_len", size, maximum=MAX_SEQ_LEN)


def _check_family_size(bias_type: str, size: Any) -> tuple[int, int] | int:
    check_choice("bias_type", bias_type, EXPLORE_BIAS_TYPES)
    if bias_type in _EXPLORE_2D:
        return check_window_size("window_size", size, maximum=MAX_WINDOW_SIDE)
    return check_int("seq_len", size, maximum=MAX_SEQ_LEN)


def family_grid(bias_type: str, size: Any) -> tuple[int, int]:
    """The explorer's token grid of a family: ``(h, w)`` for 2D families, ``(1, L)`` for "1d"/"t5"."""
    size = _check_family_size(bias_type, size)
    return size if isinstance(size, tuple) else (1, size)


def grid_part(matrix: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Drop a leading class token: ``(..., N+1, N+1)`` -> ``(..., N, N)`` when ``N + 1 = h*w + 1``.

    Matrices that already cover ``h * w`` tokens are returned as they are; others are a ValueError.
    """
    h, w = check_window_size("grid", grid)
    n = matrix.shape[-1]
    if n == h * w:
        return matrix
    if n == h * w + 1:
        return matrix[..., 1:, 1:]  # (..., N, N) patch tokens only
    raise ValueError(f"matrix covers {n} tokens; grid {(h, w)} has {h * w} (or {h * w + 1} with a class token)")


def num_tokens(bias_type: str, size: Any) -> int:
    """``N``: ``h * w`` for a 2D window, ``L`` for 1D."""
    size = _check_size(bias_type, size)
    return size[0] * size[1] if bias_type == "2d" else size  # type: ignore[index,return-value]


def center_token(grid: tuple[int, int]) -> int:
    """The token at the centre of an ``(h, w)`` grid (row-major), a good default query."""
    h, w = check_window_size("grid", grid)
    return (h // 2) * w + w // 2


def index_matrix(bias_type: str, size: Any) -> np.ndarray:
    """The ``(N, N)`` relative position index of a 1D sequence (``size = L``) or 2D window (``(h, w)``)."""
    size = _check_size(bias_type, size)
    if bias_type == "2d":
        return get_relative_position_index_2d(size).numpy()
    return get_relative_position_index_1d(size).numpy()


def table_offsets(bias_type: str, size: Any) -> np.ndarray:
    """The offset each table row stands for: ``(T, 2)`` ``(Δy, Δx)`` for 2D, ``(T,)`` ``Δ`` for 1D.

    Row ``r`` of a 2D table is ``(Δy + h - 1) * (2w - 1) + (Δx + w - 1)`` with ``Δ = query - key``.
    """
    size = _check_size(bias_type, size)
    if bias_type == "2d":
        h, w = size  # type: ignore[misc]
        rows = np.arange((2 * h - 1) * (2 * w - 1))
        return np.stack([rows // (2 * w - 1) - (h - 1), rows % (2 * w - 1) - (w - 1)], axis=1)  # (T, 2)
    return np.arange(2 * size - 1) - (size - 1)  # type: ignore[operator]


def decode_cell(bias_type: str, size: Any, i: int, j: int) -> dict:
    """Everything about cell ``(i, j)`` of the index matrix, for captions and the formula.

    Returns a dict with ``i``, ``j``, ``index`` (the table row) and, for 2D, ``query`` and ``key``
    as ``(y, x)``, ``offset`` ``(Δy, Δx)`` and ``window`` ``(h, w)``; for 1D ``offset`` ``i - j``
    and ``seq_len``.
    """
    size = _check_size(bias_type, size)
    n = num_tokens(bias_type, size)
    i = check_int("i", i, minimum=0, maximum=n - 1)
    j = check_int("j", j, minimum=0, maximum=n - 1)
    if bias_type == "2d":
        h, w = size  # type: ignore[misc]
        (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
        dy, dx = yi - yj, xi - xj
        index = (dy + h - 1) * (2 * w - 1) + (dx + w - 1)
        return {"i": i, "j": j, "query": (yi, xi), "key": (yj, xj), "offset": (dy, dx),
                "window": (h, w), "index": index}
    return {"i": i, "j": j, "offset": i - j, "seq_len": size, "index": i - j + size - 1}


def index_formula_latex(cell: dict) -> str:
    """The index formula of :func:`decode_cell`'s cell with its numbers filled in (LaTeX)."""
    if "window" in cell:
        h, w = cell["window"]
        dy, dx = cell["offset"]
        return (
            rf"\text{{index}}[{cell['i']}, {cell['j']}] = (\Delta y + h - 1)(2w - 1) + (\Delta x + w - 1)"
            rf" = ({dy} + {h - 1}) \cdot {2 * w - 1} + ({dx} + {w - 1}) = {cell['index']}"
        )
    length = cell["seq_len"]
    return (
        rf"\text{{index}}[{cell['i']}, {cell['j']}] = i - j + L - 1"
        rf" = {cell['i']} - {cell['j']} + {length - 1} = {cell['index']}"
    )


# --------------------------------------------------------------------------- bias tables and presets


def _t5_bucket_distances(num_buckets: int, max_distance: int) -> torch.Tensor:
    """``(num_buckets,)``: the smallest ``|offset|`` in each T5 bucket (0 for a bucket no offset
    reaches, e.g. bucket ``num_buckets // 2``: a positive offset is never 0)."""
    rel = torch.arange(-2 * max_distance, 2 * max_distance + 1)  # (4 max_distance + 1,)
    buckets = t5_relative_position_bucket(rel, num_buckets, max_distance)
    out = torch.full((num_buckets,), float("inf"))
    out.scatter_reduce_(0, buckets, rel.abs().float(), reduce="amin")
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)  # (num_buckets,)


def _distances(bias_type: str, size: Any, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """``(T,)`` distance each table row stands for (class-token rows and rows of 2D ALiBi: as 2D)."""
    if bias_type == "t5":
        return _t5_bucket_distances(num_buckets, max_distance)
    if bias_type in _EXPLORE_2D:
        offsets = torch.as_tensor(table_offsets("2d", size), dtype=torch.float32)
        dist = offsets.pow(2).sum(dim=1).sqrt()  # (T,) Euclidean |(Δy, Δx)|
        if bias_type == "2d_cls":
            dist = torch.cat([dist, torch.zeros(3)])  # (T + 3,): the class-token rows are at distance 0
        return dist
    offsets = torch.as_tensor(table_offsets("1d", size), dtype=torch.float32)
    return offsets.abs()  # (T,)


def preset_table(
    preset: str,
    bias_type: str,
    size: Any,
    num_heads: int,
    alpha: float = 1.0,
    seed: int = 0,
    init_std: float = 0.02,
    *,
    num_buckets: int | None = None,
    max_distance: int | None = None,
) -> torch.Tensor:
    """A ``(T, H)`` bias table for one of :data:`BIAS_PRESETS`.

    Args:
        preset: ``init`` (truncated normal with ``init_std``, as the module initializes),
            ``zeros``, ``random`` (normal with std ``alpha``), ``locality`` (``-alpha * distance``
            in every head) or ``alibi`` (``-alpha * m_h * distance`` with ALiBi's slopes ``m_h``).
        bias_type, size: a learned family (:data:`LEARNED_BIAS_TYPES`): ``"2d"``/``"2d_cls"`` and
            ``(h, w)``, or ``"1d"``/``"t5"`` and ``L``. "2d_cls" puts its 3 class-token rows at
            distance 0; "t5" uses each bucket's smallest ``|offset|`` as its distance.
        num_heads: ``H``.
        alpha: strength of ``random``, ``locality`` and ``alibi``.
        seed: seed of ``init`` and ``random``.
        init_std: std of ``init``.
        num_buckets, max_distance: "t5" only (defaults 32 and 128, as the module).
    """
    check_choice("preset", preset, BIAS_PRESETS)
    check_choice("bias_type", bias_type, LEARNED_BIAS_TYPES)
    size = _check_family_size(bias_type, size)
    num_heads = check_int("num_heads", num_heads, maximum=64)
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=100.0)
    seed = check_int("seed", seed, minimum=0)
    init_std = check_float("init_std", init_std, minimum=0.0, maximum=10.0)
    t5 = {}
    if bias_type == "t5":
        nb = check_int("num_buckets", 32 if num_buckets is None else num_buckets, minimum=4, maximum=1024)
        md = check_int("max_distance", 128 if max_distance is None else max_distance, minimum=nb // 4 + 1,
                       maximum=100_000)
        t5 = {"num_buckets": nb, "max_distance": md}
    dist = _distances(bias_type, size, **t5)  # (T,)
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
        bias_type: one of :data:`EXPLORE_BIAS_TYPES`.
        size: ``(h, w)`` for "2d", "2d_cls", "cpb" and "alibi" (drawn on a 2D window here), ``L``
            for "1d" and "t5".
        num_heads: ``H``.
        init_std: std of the learned tables' init.
        seed: seed of the module's init (and of the ``init``/``random`` presets).
        preset: learned families: their table becomes :func:`preset_table`; "alibi" (fixed) and
            "cpb" (computed by an MLP) have no table to set and take only ``"init"``.
        alpha: strength of the preset.
        **options: the family's options (``num_buckets``, ``max_distance``, ``alibi_distance``,
            ``cpb_hidden_dim``); another family's option is a ValueError.
    """
    size = _check_family_size(bias_type, size)
    num_heads = check_int("num_heads", num_heads, maximum=MAX_HEADS)
    if "cpb_hidden_dim" in options and options["cpb_hidden_dim"] is not None:
        check_int("cpb_hidden_dim", options["cpb_hidden_dim"], maximum=4096)
    options = {k: v for k, v in options.items() if v is not None}
    kwargs = {"window_size": size} if isinstance(size, tuple) else {"seq_len": size}
    check_rpb_kwargs({"bias_type": bias_type, **kwargs, **options})
    if bias_type not in LEARNED_BIAS_TYPES and preset != "init":
        check_choice("preset", preset, BIAS_PRESETS)
        raise ValueError(
            f"preset {preset!r} cannot apply to bias_type {bias_type!r}: "
            + ("ALiBi's table is fixed by its head slopes (no parameters)" if bias_type == "alibi"
               else "cpb's table is computed by its MLP (16·sigmoid(MLP(log coordinates)))")
            + "; use preset 'init'"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rpb = RelativePositionBias(num_heads=num_heads, bias_type=bias_type, init_std=init_std, **kwargs, **options)
    if bias_type in LEARNED_BIAS_TYPES:
        t5 = {k: getattr(rpb, k) for k in ("num_buckets", "max_distance")} if bias_type == "t5" else {}
        table = preset_table(preset, bias_type, size, num_heads, alpha=alpha, seed=seed, init_std=init_std, **t5)
        with torch.no_grad():
            rpb.relative_position_bias_table.copy_(table)
    return rpb.eval().requires_grad_(False)


def bias_arrays(rpb: RelativePositionBias, head: int | None = None) -> dict[str, np.ndarray]:
    """``{"table": (T, H), "bias": (H, N, N), "index": (N, N)}`` of a bias module, as numpy.

    With ``head``, ``bias`` is that head's only, ``(1, N, N)`` (a 32x32 window with 16 heads is
    64 MB in full).
    """
    with torch.no_grad():
        table = _table(rpb).detach().float()  # (T, H)
        index = rpb.relative_position_index
        if head is None:
            bias = rpb().detach().float()  # (H, N, N)
        else:
            head = check_int("head", head, minimum=0, maximum=rpb.num_heads - 1)
            bias = table[:, head][index][None]  # (1, N, N)
        return {"table": table.numpy().copy(), "bias": bias.numpy().copy(), "index": index.numpy().copy()}


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
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    q = torch.randn(1, h, n, head_dim, generator=gen) * content_scale  # (1, H, N, D)
    k = torch.randn(1, h, n, head_dim, generator=gen) * content_scale  # (1, H, N, D)
    v = torch.zeros(1, h, n, 1)
    attn = ScaledDotProductAttention()
    with torch.no_grad():
        _, with_bias = attn(q, k, v, bias)
        _, without = attn(q, k, v, None)
    return with_bias[0].numpy(), without[0].numpy()  # (H, N, N) each


def mean_attention_distance(attn: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """How far attention reaches: ``sum_j attn[h, i, j] * |pos_i - pos_j|``, averaged over queries.

    Args:
        attn: ``(N, N)`` or ``(H, N, N)`` attention weights (rows sum to 1).
        grid: ``(h, w)`` token grid with ``N = h * w`` (``(1, L)`` for a sequence).

    Returns:
        ``(H,)`` mean Euclidean distance in tokens (patches) per head.
    """
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    h, w = check_window_size("grid", grid)
    n = h * w
    if a.ndim != 3 or a.shape[1:] != (n, n):
        raise ValueError(f"attn must have shape (H, {n}, {n}) for grid {(h, w)}, got {a.shape}")
    ys, xs = np.divmod(np.arange(n), w)
    dist = np.hypot(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :])  # (N, N)
    return (a * dist[None]).sum(axis=-1).mean(axis=-1)  # (H,)


# --------------------------------------------------------------------------- models


def rpb_modules(model: nn.Module) -> list[RelativePositionBias]:
    """The model's :class:`RelativePositionBias` modules, in layer order."""
    return [m for m in model.modules() if isinstance(m, RelativePositionBias)]


def _table(m: RelativePositionBias) -> torch.Tensor:
    # Every family reduces to a (T, H) table: learned, fixed (alibi) or computed (cpb).
    return m.effective_table() if hasattr(m, "effective_table") else m.relative_position_bias_table


def bias_tables(model: nn.Module) -> list[np.ndarray]:
    """One ``(T, H)`` table per layer (empty when the model has no relative position bias)."""
    with torch.no_grad():
        return [_table(m).detach().cpu().float().numpy().copy() for m in rpb_modules(model)]


def layer_biases(model: nn.Module) -> list[np.ndarray]:
    """One ``(H, N, N)`` gathered bias per layer."""
    out = []
    with _FORWARD_LOCK, torch.no_grad():
        for m in rpb_modules(model):
            was_training = m.training
            m.eval()
            try:
                out.append(m().detach().cpu().float().numpy().copy())
            finally:
                m.train(was_training)
    return out


def table_geometry(model: nn.Module) -> dict:
    """``{"bias_type", "window_size", "seq_len", "max_distance"}`` of the model's first bias, as
    :func:`relpos.experiments.visualize.visualize_bias_table` takes them (``max_distance``: "t5" only)."""
    rpbs = rpb_modules(model)
    if not rpbs:
        return {"bias_type": None, "window_size": None, "seq_len": None, "max_distance": None}
    m = rpbs[0]
    return {
        "bias_type": m.bias_type,
        "window_size": m.window_size,
        "seq_len": m.seq_len if m.window_size is None else None,
        "max_distance": getattr(m, "max_distance", None) if m.bias_type == "t5" else None,
    }


def apply_bias_preset(model: nn.Module, preset: str, alpha: float = 1.0, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer's table set to :func:`preset_table`.

    Layer ``l`` uses ``seed + l`` for ``random``/``init``. The given model is never changed.

    Raises:
        ValueError: the model has no relative position bias.
    """
    check_choice("preset", preset, BIAS_PRESETS)
    rpbs = rpb_modules(model)
    if not rpbs:
        raise ValueError("this model has no relative position bias: presets need use_relative_position=True")
    if rpbs[0].bias_type not in LEARNED_BIAS_TYPES:
        raise ValueError(
            f"table presets apply to learned tables ({', '.join(LEARNED_BIAS_TYPES)}); this model uses "
            f"bias_type {rpbs[0].bias_type!r}, whose table is "
            + ("fixed by ALiBi's slopes" if rpbs[0].bias_type == "alibi" else "computed by an MLP")
            + ": choose 'as loaded'"
        )
    new = copy.deepcopy(model).eval()
    for layer, m in enumerate(rpb_modules(new)):
        size = m.window_size if m.window_size is not None else m.seq_len
        t5 = {k: getattr(m, k) for k in ("num_buckets", "max_distance")} if m.bias_type == "t5" else {}
        table = preset_table(preset, m.bias_type, size, m.num_heads, alpha=alpha, seed=seed + layer,
                             init_std=m.init_std, **t5)
        with torch.no_grad():
            m.relative_position_bias_table.copy_(table)
    return new


def model_summary(model: nn.Module) -> dict:
    """``depth``, ``num_heads``, ``grid`` (h, w), ``num_tokens``, ``bias_type`` (or None), ``params``."""
    rpbs = rpb_modules(model)
    grid = tuple(getattr(model, "grid_size", ()) or ())
    return {
        "depth": getattr(model, "depth", len(rpbs)),
        "num_heads": getattr(model, "num_heads", rpbs[0].num_heads if rpbs else None),
        "grid": grid,
        "num_tokens": grid[0] * grid[1] if len(grid) == 2 else None,
        "bias_type": rpbs[0].bias_type if rpbs else None,
        "params": sum(p.numel() for p in model.parameters()),
    }


def preset_config(preset: str) -> dict:
    """The resolved config of a preset (``configs/<preset>.yaml`` over the defaults)."""
    from relpos.experiments.config import resolve_config
    from relpos.experiments.config_utils import load_config

    return resolve_config(load_config(preset_path(preset)))


def fresh_model(cfg: dict) -> nn.Module:
    """A new, untrained model for ``cfg`` (seeded by ``cfg["seed"]``), in eval mode."""
    from relpos.experiments.config import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", 0)))
        model = build_model(cfg)
    return model.eval().requires_grad_(False)


def initial_tables(cfg: dict) -> list[np.ndarray]:
    """The ``(T, H)`` tables a run with ``cfg`` started from (its model rebuilt with its seed)."""
    return bias_tables(fresh_model(cfg))


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def changed_overrides(cfg: dict, overrides: dict[str, Any]) -> dict[str, Any]:
    """Only the ``overrides`` whose value differs from ``cfg`` (so a run records what was changed)."""
    return {k: v for k, v in overrides.items() if _get(cfg, k) != v}


#: The Train page's settings and the config keys they set.
TRAIN_SETTINGS: dict[str, str] = {
    "dataset": "data.dataset",
    "img_size": "data.img_size",
    "patch_size": "data.patch_size",
    "depth": "model.depth",
    "num_heads": "model.num_heads",
    "use_relative_position": "model.use_relative_position",
    "epochs": "train.epochs",
    "lr": "train.lr",
}
#: Data keys a dataset fixes by itself (``null`` lets :func:`resolve_config` fill them).
_DATASET_DERIVED = ("data.in_channels", "data.num_classes", "data.num_train", "data.num_val")


def train_overrides(cfg: dict, **settings: Any) -> dict[str, Any]:
    """The ``--set`` overrides for the Train page's settings: only what differs from ``cfg``.

    Switching the dataset also resets the values the old dataset fixed (channels, classes,
    split sizes) to ``None`` so the new dataset fills them.
    """
    unknown = set(settings) - set(TRAIN_SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; allowed: {', '.join(TRAIN_SETTINGS)}")
    out = changed_overrides(cfg, {TRAIN_SETTINGS[k]: v for k, v in settings.items()})
    if "data.dataset" in out:
        out.update({key: None for key in _DATASET_DERIVED})
    return out


def check_run_settings(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Apply ``overrides`` to ``cfg``, resolve and build the model once: a readable error now
    instead of a failed run later. Returns the resolved config.
    """
    from relpos.experiments.config import apply_overrides, build_model, resolve_config

    new = resolve_config(apply_overrides(copy.deepcopy(cfg), [f"{k}={_yaml_value(v)}" for k, v in overrides.items()]))
    data = new["data"]
    side = data["img_size"] // data["patch_size"]
    if side > MAX_WINDOW_SIDE:
        raise ValueError(
            f"data.img_size / data.patch_size = {data['img_size']} / {data['patch_size']} gives a "
            f"{side}x{side} patch grid; the app trains at most {MAX_WINDOW_SIDE}x{MAX_WINDOW_SIDE} patches "
            "(attention cost grows with the square of the number of patches): raise the patch size"
        )
    with torch.random.fork_rng(devices=[]):
        build_model(new)
    return new


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict]:
    """``(model, checkpoint dict)`` from a checkpoint file (``weights_only=True``), eval mode."""
    from relpos.experiments.checkpoint import load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(path)
    return model.eval().requires_grad_(False), ckpt


def sample_input(cfg: dict, index: int = 0, split: str = "val") -> tuple[torch.Tensor, int, tuple[str, ...]]:
    """Sample ``index`` of the config's dataset: ``(image (C, H, W), label, class names)``."""
    from relpos.data import build_dataset

    dataset = build_dataset(cfg, split)
    index = check_int("index", index, minimum=0, maximum=len(dataset) - 1)
    image, label = dataset[index]
    return image, int(label), tuple(getattr(dataset, "classes", ()))


def dataset_classes(cfg: dict) -> tuple[str, ...]:
    """Class names of the config's dataset, or ``()`` when the dataset cannot be built here."""
    from relpos.data import build_dataset

    try:
        return tuple(getattr(build_dataset(cfg, "val"), "classes", ()))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def image_from_upload(data: bytes, img_size: int, in_channels: int) -> torch.Tensor:
    """An uploaded picture as a model input ``(C, img_size, img_size)`` in ``[0, 1]``.

    Raises:
        ValueError: too large, or not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) > MAX_IMAGE_UPLOAD_BYTES:
        raise ValueError(f"image is {len(data)} bytes; the limit is {MAX_IMAGE_UPLOAD_BYTES} bytes")
    img_size = check_int("img_size", img_size, maximum=1024)
    in_channels = check_int("in_channels", in_channels, maximum=4)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 40_000_000:
                raise ValueError(f"image is {im.width}x{im.height}; at most 40 megapixels are accepted")
            im = im.convert("L" if in_channels == 1 else "RGB").resize((img_size, img_size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not an image Pillow can read (PNG, JPEG, ...): {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]  # (1, H, W)
    else:
        arr = arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if arr.shape[0] != in_channels:
        arr = np.resize(arr, (in_channels, img_size, img_size)) if in_channels > 3 else arr[:in_channels]
    return torch.from_numpy(np.ascontiguousarray(arr))


def display_image(image: torch.Tensor) -> np.ndarray:
    """A model input ``(C, H, W)`` as an ``(H, W, 3)`` uint8 picture (min-max scaled)."""
    x = image.detach().float()
    if x.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(x.shape)}")
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])  # (3, H, W)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)


def upscale_nearest(picture: np.ndarray, min_side: int = 160) -> np.ndarray:
    """Blow a small ``(H, W, 3)`` picture up by an integer factor (nearest neighbour, crisp pixels)."""
    k = max(1, -(-int(min_side) // max(1, min(picture.shape[:2]))))
    return np.repeat(np.repeat(picture, k, axis=0), k, axis=1)  # (k*H, k*W, 3)


def attention_maps(model: nn.Module, image: torch.Tensor, with_bias: bool = True) -> np.ndarray:
    """Every layer's attention on one image: ``(L_layers, H, N, N)`` numpy.

    ``with_bias=False`` zeroes every relative position bias for this forward only.
    """
    if image.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    # collect_attention_maps flips per-module flags for one forward: serialize forwards so two
    # threads (two browser tabs) sharing one cached model never see each other's flags.
    with _FORWARD_LOCK:
        maps = collect_attention_maps(model, image[None], with_bias=with_bias)  # L x (1, H, N, N)
    return torch.stack([m[0] for m in maps]).numpy()  # (L, H, N, N)


def predict(model: nn.Module, image: torch.Tensor, with_bias: bool = True) -> np.ndarray:
    """Class probabilities ``(K,)`` for one image ``(C, H, W)`` (bias zeroed if ``with_bias=False``)."""
    ctx = contextlib.nullcontext() if with_bias else relative_position_bias_disabled(model)
    with _FORWARD_LOCK, ctx, torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            return model(image[None]).softmax(-1)[0].numpy()
        finally:
            model.train(was_training)


# --------------------------------------------------------------------------- checkpoints and uploads


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def list_checkpoints(runs_root: str | Path) -> list[dict]:
    """Checkpoints of runs (``<run>/best.pt``, ``last.pt``) and uploads (``uploads/*.pt``).

    Each row: ``label`` (``run/best.pt`` or ``uploads/name.pt``), ``path``, ``kind``
    (``run``/``upload``), ``run`` (run name or None), ``mtime``, ``size``. Symlinks and
    anything resolving outside ``runs_root`` are skipped. Newest first.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    rows = []

    def add(path: Path, kind: str, run: str | None) -> None:
        if path.is_symlink() or not path.is_file() or not _inside(path, root):
            return
        st = path.stat()
        rows.append({"label": f"{path.parent.name}/{path.name}", "path": str(path), "kind": kind,
                     "run": run, "mtime": st.st_mtime, "size": st.st_size})

    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        if child.name == UPLOADS_DIR:
            for f in child.iterdir():
                if f.suffix in CHECKPOINT_SUFFIXES:
                    add(f, "upload", None)
            continue
        for name in ("best.pt", "last.pt"):
            add(child / name, "run", child.name)
    rows.sort(key=lambda r: r["mtime"], reverse=True)
    return rows


def save_upload(data: bytes, filename: str, runs_root: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Check an uploaded checkpoint and store it as ``<runs_root>/uploads/<safe name>.pt``.

    The bytes are loaded with ``torch.load(weights_only=True)`` (no code runs) and must rebuild a
    model (:func:`relpos.experiments.checkpoint.load_model_from_checkpoint`) before anything is
    written. The file name is sanitized; an existing file is never overwritten (``-2``, ``-3``...).

    Raises:
        ValueError: too large, wrong suffix, or not a relpos checkpoint (the message says why).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    max_bytes = check_int("max_bytes", max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"upload is {len(data)} bytes; the limit is {max_bytes} bytes")
    if not isinstance(filename, str):
        raise TypeError(f"filename must be a str, got {type(filename).__name__}")
    base = os.path.basename(filename.replace("\\", "/"))
    stem, suffix = os.path.splitext(base)
    if suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"filename {filename!r} must end in .pt or .pth (a relpos checkpoint)")
    try:
        obj = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a safe checkpoint"
        raise ValueError(f"{base!r} is not a checkpoint torch can load safely (weights_only=True): "
                         f"{(str(exc).splitlines() or [type(exc).__name__])[0][:300]}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{base!r} holds a {type(obj).__name__}, not a relpos checkpoint dict")
    folder = Path(runs_root) / UPLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        raise ValueError(f"{folder} is a symlink; refusing to write through it")
    safe = sanitize_name(stem, default="checkpoint")
    from relpos.experiments import rundir

    tmp = folder / f".{safe}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    rundir.atomic_write_bytes(tmp, bytes(data))
    try:
        load_checkpoint_model(tmp)  # must rebuild a model, else it is useless to the app
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{base!r} is not a relpos checkpoint: {(str(exc).splitlines() or [type(exc).__name__])[0][:800]}") from None
    for k in range(1, 1000):
        dest = folder / (f"{safe}.pt" if k == 1 else f"{safe}-{k}.pt")
        try:
            os.link(tmp, dest)  # atomic; fails if dest exists
        except FileExistsError:
            continue
        tmp.unlink(missing_ok=True)
        return dest
    tmp.unlink(missing_ok=True)
    raise ValueError(f"too many uploads named {safe!r}")


def table_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` of two ``(T, H)`` tables, with a clear error when their shapes differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"the two tables have different shapes {a.shape} and {b.shape}: compare runs with the "
            "same window and number of heads"
        )
    return a - b


def format_eta(seconds: float | None) -> str:
    """``"1 min 05 s"`` / ``"12 s"`` / ``"–"``."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def safe_download_name(name: str) -> str:
    """A file name for a download button (no path, no odd characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(name)) or "download"


# --------------------------------------------------------------------------- diagnostics


def diagnostics_table(model: nn.Module, inputs: torch.Tensor | None = None) -> list[dict]:
    """:func:`relpos.diagnostics.bias_diagnostics` pivoted by measure: one row per (layer, head).

    Each row: ``layer`` (block index in attention order), ``head``, then every
    :data:`DIAGNOSTIC_MEASURES` key the model has (the attention measures only with ``inputs``).
    A bias shared by all blocks gives its bias measures to every block's rows.

    Args:
        model: a model with relative position biases (none: ``[]``).
        inputs: e.g. images ``(B, C, H, W)`` for the KL and entropy measures, or None.
    """
    from relpos.attention import MultiHeadAttention
    from relpos.diagnostics import bias_diagnostics, diagnostics_rows

    with _FORWARD_LOCK:
        diag = bias_diagnostics(model, inputs)
    attn_names = [n or "attention" for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    bias_names = [b["name"] for b in diag["biases"]]

    def layers_of(name: str) -> list[int]:
        if name in attn_names:
            return [attn_names.index(name)]
        own = [k for k, a in enumerate(attn_names) if name.startswith(a + ".")]
        if own:
            return own
        return list(range(len(attn_names))) if len(bias_names) == 1 else [bias_names.index(name)]

    table: dict[tuple[int, int], dict] = {}
    for row in diagnostics_rows(diag):
        for layer in layers_of(row["layer"]):
            key = (layer, row["head"])
            table.setdefault(key, {"layer": layer, "head": row["head"]})[row["measure"]] = row["value"]
    return [table[k] for k in sorted(table)]


_DIAG_CACHE: dict[tuple, list[dict]] = {}
_DIAG_LOCK = threading.Lock()
_DIAG_MAX = 16


def cached_diagnostics(path: str | Path, modified: float, model: nn.Module, inputs: torch.Tensor | None,
                       input_key: Any = None) -> list[dict]:
    """:func:`diagnostics_table` once per ``(path, modified, input_key)``: the app's cached call.

    Args:
        path: the checkpoint (or a source name) the model came from.
        modified: its modification time (a rewritten file is measured again).
        model: the model loaded from ``path``.
        inputs: its inputs (see :func:`diagnostics_table`).
        input_key: a hashable name of ``inputs`` (e.g. the sample index).

    Returns:
        A fresh copy of the rows (callers may change it).
    """
    key = (str(path), float(modified), input_key)
    with _DIAG_LOCK:
        hit = _DIAG_CACHE.get(key)
    if hit is None:
        hit = diagnostics_table(model, inputs)
        with _DIAG_LOCK:
            if len(_DIAG_CACHE) >= _DIAG_MAX:
                _DIAG_CACHE.pop(next(iter(_DIAG_CACHE)))
            _DIAG_CACHE[key] = hit
    return [dict(r) for r in hit]
