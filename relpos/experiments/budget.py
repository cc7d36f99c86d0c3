"""The memory budget of a config: what its model and a training run would hold, checked before either exists.

Two checks, both arithmetic on the config (nothing is allocated, no run folder is made):

- **The model** (``relpos.experiments.config.resolve_config``): parameters and relative position
  biases, what inspecting a preset builds (``fresh_model``, the app's pages).
- **A training run** (:func:`training_memory`, checked by ``resolve_training_config`` before
  ``fit``, the CLI, the run queue, sweeps and the Train page start anything): the model with its
  gradients and AdamW state, a step's activations and ``(B, H, N, N)`` attention maps for
  ``train.batch_size`` (``relpos.guards.estimate_config_memory``), plus

  * the data :func:`relpos.data.build.build_dataset` keeps (:func:`relpos.data.build.estimate_data_memory`),
  * the shuffled order of ``data.num_train`` indices the sampler lists every epoch (Python ints:
    about 48 bytes each measured with ``tracemalloc``, 64 counted),
  * the batches the DataLoader workers prefetch (two per worker),
  * the per-epoch bias diagnostics on up to ``DIAGNOSTIC_IMAGES`` validation images (every layer's
    attention maps twice), as far as they exceed a training step (they run once it is freed).

Over the budget (``relpos.guards``: ``RELPOS_MEMORY_BUDGET_MB``, default 2048) the refusal is a
``ConfigError`` naming the key that drives the estimate: the one whose reset to the default
config's value lowers it most (:func:`largest_contributor`), the estimate with its largest parts,
and the limit.

``configs/vit_b16.yaml`` is for inspection: its model (86 M parameters, about 380 MB) passes the
model check, so the app builds it; training it (batch 8 at 224 x 224) needs about 2.7 GB, so it is
refused under the default budget and trains only with a larger ``RELPOS_MEMORY_BUDGET_MB``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from relpos._limits import short_repr
from relpos.data.build import default_split_sizes, estimate_data_memory
from relpos.experiments.config_utils import ConfigError
from relpos.experiments.engine import DIAGNOSTIC_IMAGES
from relpos.guards import (
    BUDGET_ENV,
    FLOAT_BYTES,
    MemoryEstimate,
    estimate_config_memory,
    format_bytes,
    memory_budget_bytes,
)

__all__ = [
    "ORDER_BYTES", "SIZE_KEYS", "baseline_sizes", "largest_contributor", "refuse_over_budget", "training_memory",
]

#: The config keys memory grows with: the candidates a refusal may name.
SIZE_KEYS: tuple[str, ...] = (
    "data.img_size", "data.patch_size", "data.in_channels", "data.num_classes", "data.num_train",
    "data.num_val", "model.embed_dim", "model.depth", "model.num_heads", "model.mlp_ratio",
    "train.batch_size", "train.num_workers",
)
#: Bytes the training sampler holds per index of ``data.num_train`` while it lists an epoch's order.
ORDER_BYTES = 64
_STEP = ("activations", "attention logits and weights (L x B x H x N x N)", "input images")


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def training_memory(cfg: Mapping[str, Any]) -> MemoryEstimate:
    """Peak memory of training a *resolved* config, by part (see the module docstring).

    Raises:
        ValueError: ``cfg`` is not a resolved config.
    """
    est = estimate_config_memory(cfg, training=True)
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    parts = dict(est.breakdown)
    parts.update(estimate_data_memory(d))
    parts["training order (data.num_train indices)"] = ORDER_BYTES * d["num_train"]
    if t["num_workers"]:
        parts["loader prefetch (2 batches per worker)"] = 2 * t["num_workers"] * parts["input images"]
    images = min(DIAGNOSTIC_IMAGES, d["num_val"])
    if m["use_relative_position"] and images:
        n = (d["img_size"] // d["patch_size"]) ** 2 + int(m["class_token"])
        heads, depth = m["num_heads"], m["depth"]
        step = {k: v * images // t["batch_size"] for k, v in est.breakdown.items() if k in _STEP}
        diag = 2 * depth * images * heads * n * n * FLOAT_BYTES  # the maps with and without the bias
        diag += sum(step.values()) // depth  # one layer's forward on the images (no gradients)
        diag += (1 if m["share_bias"] else depth) * (2 * heads * n * n + n * n) * 8  # biases in float64
        freed = sum(v for k, v in est.breakdown.items() if k in _STEP)
        if diag > freed:
            parts["bias diagnostics (beyond a training step)"] = diag - freed
    what = est.what.replace("VisionTransformer(", "training a VisionTransformer(")
    return MemoryEstimate(what.replace(", training)", f", data.num_train {d['num_train']})"), parts)


def baseline_sizes(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The reference value of each :data:`SIZE_KEYS` key: the ``defaults`` config's (the split sizes
    of ``cfg``'s own dataset, which a finite dataset's files bound, so they are left out for it)."""
    out = {k: _get(defaults, k) for k in SIZE_KEYS}
    sizes = default_split_sizes(cfg["data"]["dataset"])
    out["data.num_train"], out["data.num_val"] = sizes if sizes is not None else (None, None)
    out["data.in_channels"] = out["data.in_channels"] or 3
    out["data.num_classes"] = out["data.num_classes"] or 10
    return {k: v for k, v in out.items() if v is not None}


def largest_contributor(
    estimate: Callable[[dict], MemoryEstimate | int], cfg: Mapping[str, Any], baseline: Mapping[str, Any]
) -> tuple[str, int] | None:
    """The key that drives ``estimate(cfg)``: the one of ``baseline`` whose value there lowers it most.

    Each key (dotted, e.g. ``"data.img_size"``) is reset alone in a copy of ``cfg`` and the estimate
    taken again; a key missing from ``cfg``, or whose reset the estimate refuses, is skipped.

    Returns:
        ``(key, bytes with it reset)``, or None when no reset lowers the estimate.
    """
    total = int(estimate(dict(cfg)))
    best: tuple[str, int] | None = None
    for key, value in baseline.items():
        trial = copy.deepcopy(dict(cfg))
        *parents, leaf = key.split(".")
        node = _get(trial, ".".join(parents)) if parents else trial
        if not isinstance(node, dict) or leaf not in node or node[leaf] == value:
            continue
        node[leaf] = value
        try:
            lower = int(estimate(trial))
        except (TypeError, ValueError):
            continue
        if lower < total and (best is None or lower < best[1]):
            best = (key, lower)
    return best


def refuse_over_budget(
    estimate: Callable[[dict], MemoryEstimate], cfg: Mapping[str, Any], baseline: Mapping[str, Any],
    what: str | None = None,
) -> MemoryEstimate:
    """``estimate(cfg)`` if it fits the budget; else a ConfigError naming the key that drives it.

    Args:
        estimate: bytes of a config (e.g. :func:`training_memory`).
        cfg: a resolved config.
        baseline: reference values of the keys that may be named (:func:`baseline_sizes`).
        what: how to call the request (default: the estimate's own name).

    Raises:
        ConfigError: over the budget: ``"<key> = <value> makes this too big: <what> would need about
            <estimate> (<largest parts>) of memory, over the limit of <budget>; with <key> = <reference>
            it would need about <less> ..."``.
    """
    est = estimate(dict(cfg))
    limit = memory_budget_bytes()
    if est.total <= limit:
        return est
    need = (f"{what or est.what} would need about {est.describe()} of memory, over the limit of "
            f"{format_bytes(limit)}")
    hint = f"or raise the limit with the {BUDGET_ENV} environment variable"
    driver = largest_contributor(estimate, cfg, baseline)
    if driver is None:
        raise ConfigError(f"{need}; no size is above the default config's: {hint}")
    key, lower = driver
    raise ConfigError(
        f"{key} = {short_repr(_get(cfg, key), 80)} makes this too big: {need}; with {key} = {baseline[key]!r} "
        f"it would need about {format_bytes(lower)}. Move {key} toward {baseline[key]!r} (or change another "
        f"size), {hint}"
    )
