"""The attention formula one step at a time, for one query: ``softmax(QK^T / sqrt(d) + B)``.

The Bias explorer shows what a hand-set bias does to attention on a fixed random input
(:func:`relpos.presets.demo_attention`). This module takes one query's row of that computation
apart: the content logits ``QK^T / sqrt(d)`` (step 1), the bias row ``B`` and their sum (step 2),
and the softmax of the sum (step 3), each as a map over the keys; and the same for a sweep of the
preset strength alpha (the page animates it). Numbers only: the figure is
:mod:`relpos.experiments.stepthrough_figure`.

The input is the page's: one head's random queries and keys (seeded, std ``content_scale``, head
dim 16), so the step-3 map is exactly the page's "with bias" map of that query.

Shape legend: ``N`` tokens (``h * w`` patches, plus 1 with a class token), ``A`` alphas,
``(h, w)`` the token grid (``(1, L)`` for a sequence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from relpos import geometry, presets
from relpos._validation import check_int
from relpos.families import family

__all__ = ["ALPHA_FRAMES", "ALPHA_PRESETS", "STEP_TITLES", "alpha_sweep", "formula_row", "step_through"]

#: What each step adds, as the figure titles its panels (step -> titles of the panels it shows).
STEP_TITLES: dict[int, tuple[str, ...]] = {
    1: ("QKᵀ/√d",),
    2: ("+ B (bias)", "= QKᵀ/√d + B"),
    3: ("softmax",),
}
#: The alphas of the animation: 0 to 5 in steps of 0.25 (the Bias explorer's slider range).
ALPHA_FRAMES: tuple[float, ...] = tuple(np.round(np.arange(0.0, 5.0 + 1e-9, 0.25), 2).tolist())
#: The table presets whose values depend on alpha (the others give the same bias at every alpha).
ALPHA_PRESETS: tuple[str, ...] = tuple(p for p in presets.BIAS_PRESETS if p not in ("init", "zeros"))


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (shifted by the maximum), as float32."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def formula_row(logits: Any, bias: Any) -> dict[str, np.ndarray]:
    """One query's row through the formula.

    Args:
        logits: ``(..., N)`` content logits ``q k^T / sqrt(d)`` of the query against every key.
        bias: ``(..., N)`` the bias the query adds to them (same shape).

    Returns:
        ``{"logits", "bias", "biased" (logits + bias), "weights" (softmax of biased),
        "weights_without" (softmax of logits)}``, each ``(..., N)`` float32; weights sum to 1.
    """
    logits, bias = np.asarray(logits, dtype=np.float32), np.asarray(bias, dtype=np.float32)
    if logits.shape != bias.shape or logits.ndim == 0:
        raise ValueError(f"logits and bias must have one shape (..., N), got {logits.shape} and {bias.shape}")
    biased = logits + bias
    return {"logits": logits, "bias": bias, "biased": biased, "weights": _softmax(biased),
            "weights_without": _softmax(logits)}


def _setup(bias_type: str, size: Any, query: int, seed: int, content_scale: float) -> tuple:
    """``(grid, patch tokens n, query row in the full matrix, class token?, the query's logits (N,))``."""
    fam = family(bias_type)
    grid = geometry.token_grid(size)
    n = geometry.num_tokens(size)
    query = check_int("query", query, minimum=0, maximum=n - 1)
    cls = bool(fam.class_token)
    n_all = n + int(cls)
    row = query + int(cls)  # the class token is token 0
    logits = presets.demo_logits(1, n_all, seed=seed, content_scale=content_scale)[0, row]  # (N,)
    return grid, n, row, cls, logits


def _on_grid(values: np.ndarray, grid: tuple[int, int], cls: bool) -> np.ndarray:
    """``(..., N)`` over all keys -> ``(..., h, w)`` over the patch keys (a class token dropped)."""
    return values[..., int(cls):].reshape(*values.shape[:-1], *grid)  # (..., h, w)


def step_through(
    bias_type: str,
    size: Any,
    num_heads: int,
    head: int,
    query: int,
    *,
    init_std: float = 0.02,
    seed: int = 0,
    preset: str = "init",
    alpha: float = 1.0,
    content_scale: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One query of the Bias explorer through the formula, as maps over the keys.

    Args:
        bias_type: a family of :data:`relpos.families.BIAS_TYPES` (as :func:`relpos.presets.make_bias`).
        size: window ``(h, w)`` or sequence length ``L``.
        num_heads: heads of the bias; ``head`` is the one shown.
        head: the head whose bias row is added.
        query: the query patch ``i`` in ``[0, h * w)`` (row-major; a class token not counted).
        init_std, seed, preset, alpha, options: the bias (:func:`relpos.presets.make_bias`); ``seed``
            also seeds the random queries and keys.
        content_scale: std of the random queries and keys (0: the logits are all 0).

    Returns:
        ``{"grid": (h, w), "query": query, "query_yx": (y, x), "logits", "bias", "biased", "weights",
        "weights_without"}`` (maps ``(h, w)`` over the patch keys) and ``"class_token"``: ``None``, or
        the same five numbers for the class-token key (its weight is the share the maps leave out).
    """
    grid, _n, row, cls, logits = _setup(bias_type, size, query, seed, content_scale)
    rpb = presets.make_bias(bias_type, size, num_heads, init_std=init_std, seed=seed, preset=preset,
                            alpha=alpha, **dict(options or {}))
    bias = presets.bias_arrays(rpb, head=head)["bias"][0, row]  # (N,)
    steps = formula_row(logits, bias)  # (N,) each
    out: dict[str, Any] = {"grid": grid, "query": int(query), "query_yx": divmod(int(query), grid[1])}
    out.update({name: _on_grid(v, grid, cls) for name, v in steps.items()})
    out["class_token"] = {name: float(v[0]) for name, v in steps.items()} if cls else None
    return out


def alpha_sweep(
    bias_type: str,
    size: Any,
    num_heads: int,
    head: int,
    query: int,
    *,
    alphas: Sequence[float] = ALPHA_FRAMES,
    init_std: float = 0.02,
    seed: int = 0,
    preset: str = "locality",
    content_scale: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`step_through` of one query for every alpha in ``alphas`` (the logits do not change).

    Returns:
        ``{"alphas": (A,), "logits": (h, w), "bias", "biased", "weights": (A, h, w) each}``.
    """
    alphas = np.asarray(list(alphas), dtype=np.float32)
    if alphas.ndim != 1 or alphas.size == 0 or not np.isfinite(alphas).all():
        raise ValueError(f"alphas must be a non-empty sequence of finite numbers, got {alphas.tolist()}")
    grid, _n, row, cls, logits = _setup(bias_type, size, query, seed, content_scale)
    rows = []
    for a in alphas:
        rpb = presets.make_bias(bias_type, size, num_heads, init_std=init_std, seed=seed, preset=preset,
                                alpha=float(a), **dict(options or {}))
        rows.append(presets.bias_arrays(rpb, head=head)["bias"][0, row])  # (N,)
    steps = formula_row(np.broadcast_to(logits, (len(rows), logits.shape[0])), np.stack(rows))  # (A, N) each
    return {"alphas": alphas, "logits": _on_grid(logits, grid, cls),
            **{name: _on_grid(steps[name], grid, cls) for name in ("bias", "biased", "weights")}}
