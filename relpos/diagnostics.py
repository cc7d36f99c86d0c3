"""What a relative position bias does, per head, and the probes that read it off a model.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens, ``L`` layers, ``T`` table rows, ``K`` classes.

Measures (all per head; lower/higher as noted):

* **locality**: the expected distance between query and key under ``softmax(bias)`` alone, averaged
  over queries (in patches: Euclidean on the 2D grid, ``|i - j|`` in 1D). Small = local. ``locality_ratio``
  divides by the same expectation under uniform attention (1 = no preference, < 1 local, > 1 far).
* **symmetry**: Pearson correlation of ``b(i, j)`` with ``b(j, i)`` over ``i != j``, i.e. of
  ``b(Δ)`` with ``b(-Δ)``: 1 symmetric, -1 antisymmetric (a constant bias counts as symmetric).
* **bias_entropy**: entropy of ``softmax(bias)`` averaged over queries (``log N`` = uniform).
* **kl** (needs inputs): ``KL(attn with bias || attn without bias)`` on real inputs, averaged over
  batch and queries; the bias is removed from every layer at once
  (:func:`relpos.collect_attention_maps` with ``with_bias=False``). 0 when the bias does nothing.
* **entropy** (needs inputs): entropy of the attention with the bias, averaged over batch and queries.

A class token (BEiT's 2D family) is left out of locality and symmetry (it has no grid position).

Model probes (any ``nn.Module`` holding :class:`RelativePositionBias` modules, not only the ViT):
:func:`bias_modules`, :func:`bias_tables`, :func:`layer_biases`, :func:`table_geometry`,
:func:`model_summary`, :func:`attention_maps`, :func:`predict`; :func:`diagnostics_table` pivots the
measures per (layer, head) for the app. None of them changes the model's parameters.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from relpos._validation import check_window_size
from relpos.attention import (
    MultiHeadAttention,
    absolute_position_disabled,
    collect_attention_maps,
    relative_position_bias_disabled,
    rotary_position_disabled,
)
from relpos.geometry import strip_class_token
from relpos.geometry import token_distances as grid_distances
from relpos.relative_position import RelativePositionBias

__all__ = [
    "DIAGNOSTIC_MEASURES",
    "attention_entropy",
    "attention_kl",
    "attention_maps",
    "bias_diagnostics",
    "bias_modules",
    "bias_tables",
    "diagnostics_rows",
    "diagnostics_table",
    "layer_biases",
    "locality_score",
    "mean_attention_distance",
    "model_summary",
    "position_disabled",
    "position_parts_of",
    "predict",
    "softmax_entropy",
    "symmetry_score",
    "table_geometry",
    "token_distances",
]

#: The per-head measures of :func:`bias_diagnostics`, with one line each (what the app shows).
DIAGNOSTIC_MEASURES: dict[str, str] = {
    "locality": "expected query-key distance (patches) under softmax of the bias alone; small = local",
    "locality_ratio": "locality divided by the same under uniform attention (1 = no preference, < 1 local)",
    "symmetry": "correlation of b(Δ) with b(−Δ): 1 symmetric, −1 antisymmetric",
    "bias_entropy": "entropy of softmax of the bias alone (log N = uniform)",
    "kl": "KL(attention with bias ‖ without) on this input: how far the bias moves attention (0 = not at all)",
    "entropy": "entropy of the attention with the bias on this input (low = focused)",
    "entropy_no_bias": "entropy of the same attention with every bias removed",
}
_EPS = 1e-12


def _size(rpb: RelativePositionBias) -> tuple[int, int] | int:
    """The window ``(h, w)`` of a 2D bias, else its sequence length ``N``."""
    return rpb.window_size if rpb.window_size is not None else rpb.seq_len


def token_distances(rpb: RelativePositionBias) -> torch.Tensor:
    """``(N, N)`` float64 distances between the tokens a bias covers (class token excluded).

    2D families: Euclidean distance between grid positions (row-major tokens); 1D: ``|i - j|``
    (:func:`relpos.geometry.token_distances`).
    """
    return grid_distances(_size(rpb))


def locality_score(bias: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Expected query-key distance under ``softmax(bias)`` per head, averaged over queries.

    Args:
        bias: ``(H, N, N)`` bias (query rows, key columns).
        distances: ``(N, N)`` distances.

    Returns:
        ``(H,)`` float64.
    """
    p = bias.double().softmax(dim=-1)  # (H, N, N)
    return (p * distances.double()).sum(-1).mean(-1)  # (H,)


def symmetry_score(bias: torch.Tensor) -> torch.Tensor:
    """Correlation of ``bias[h, i, j]`` with ``bias[h, j, i]`` over ``i != j``, per head: ``(H,)``.

    1 for a symmetric bias (``b(Δ) = b(-Δ)``), -1 for an antisymmetric one; a bias that is constant
    off the diagonal is symmetric (1).
    """
    b = bias.double()
    n = b.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=b.device)
    x = b[:, off]  # (H, N(N-1))
    y = b.transpose(1, 2)[:, off]  # (H, N(N-1))
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    den = (x.pow(2).sum(-1) * y.pow(2).sum(-1)).sqrt()  # (H,)
    corr = (x * y).sum(-1) / den.clamp_min(_EPS)
    scale = b.abs().amax(dim=(1, 2)).clamp_min(1.0)
    return torch.where(den <= 1e-9 * scale * scale * n * n, torch.ones_like(corr), corr)


def softmax_entropy(bias: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(bias)`` per head, averaged over queries: ``(H, N, N) -> (H,)``."""
    logp = bias.double().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(-1).mean(-1)


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of attention weights, averaged over batch and queries: ``(B, H, N, N) -> (H,)``."""
    p = attn.double()
    return -(p * p.clamp_min(_EPS).log()).sum(-1).mean(dim=(0, 2))


def attention_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row, averaged over batch and queries: two ``(B, H, N, N)`` -> ``(H,)``."""
    p, q = p.double(), q.double()
    kl = (p * (p.clamp_min(_EPS).log() - q.clamp_min(_EPS).log())).sum(-1)  # (B, H, N)
    return kl.clamp_min(0.0).mean(dim=(0, 2))


def _grid_part(rpb: RelativePositionBias, bias: torch.Tensor) -> torch.Tensor:
    """``(H, N, N)`` without a class token (a 2D bias over ``h * w + 1`` tokens)."""
    return bias if rpb.window_size is None else strip_class_token(bias, rpb.window_size)


@torch.no_grad()
def bias_diagnostics(model: nn.Module, inputs: torch.Tensor | tuple | None = None) -> dict:
    """Per-layer, per-head diagnostics of every relative position bias in ``model``.

    Args:
        model: a model holding :class:`RelativePositionBias` modules (or one itself).
        inputs: optional forward arguments (a tensor or a tuple, e.g. images ``(B, C, H, W)``): with
            them, attention KL and entropy are measured too (one forward with and one without bias).

    Returns:
        ``{"biases": [...], "attention": [...], "summary": {...}}``. ``biases``: one dict per bias
        module (a shared bias once) with ``name``, ``bias_type``, ``num_heads`` and per-head lists
        ``locality``, ``locality_ratio``, ``symmetry``, ``bias_entropy``. ``attention`` (empty without
        inputs): one dict per attention layer with ``name``, per-head ``kl``, ``entropy``,
        ``entropy_no_bias``. ``summary``: flat ``{"diag/<measure>": float}`` means over layers and
        heads, ready for a metrics.jsonl line.
    """
    was_training = model.training
    model.eval()
    try:
        biases = []
        for name, m in model.named_modules():
            if not isinstance(m, RelativePositionBias):
                continue
            bias = _grid_part(m, m().detach().double())  # (H, N, N)
            dist = token_distances(m).to(bias.device)  # (N, N)
            loc = locality_score(bias, dist)  # (H,)
            uniform = dist.mean()
            biases.append({
                "name": name or "relative_position_bias",
                "bias_type": m.bias_type,
                "num_heads": m.num_heads,
                "locality": loc.tolist(),
                "locality_ratio": (loc / uniform.clamp_min(_EPS)).tolist(),
                "symmetry": symmetry_score(bias).tolist(),
                "bias_entropy": softmax_entropy(bias).tolist(),
            })
        attention = []
        if inputs is not None:
            args = inputs if isinstance(inputs, tuple) else (inputs,)
            with_b = collect_attention_maps(model, *args, with_bias=True)
            without = collect_attention_maps(model, *args, with_bias=False)
            names = [n for n, mod in model.named_modules() if isinstance(mod, MultiHeadAttention)]
            for name, a, b in zip(names, with_b, without):
                attention.append({
                    "name": name or "attention",
                    "kl": attention_kl(a, b).tolist(),
                    "entropy": attention_entropy(a).tolist(),
                    "entropy_no_bias": attention_entropy(b).tolist(),
                })
    finally:
        model.train(was_training)

    def mean(rows: list[dict], key: str) -> float:
        vals = [v for r in rows for v in r[key]]
        return float(sum(vals) / len(vals)) if vals else math.nan

    summary: dict[str, float] = {}
    if biases:
        for key in ("locality", "locality_ratio", "symmetry", "bias_entropy"):
            summary[f"diag/{key}"] = mean(biases, key)
    if attention:
        for key in ("kl", "entropy", "entropy_no_bias"):
            summary[f"diag/{key}"] = mean(attention, key)
    return {"biases": biases, "attention": attention, "summary": summary}


def diagnostics_rows(diag: dict) -> list[dict]:
    """Flatten :func:`bias_diagnostics` output to rows ``{"layer", "head", "measure", "value"}``.

    ``layer`` is the bias module's name for bias measures and the attention layer's name for
    ``kl`` / ``entropy`` / ``entropy_no_bias`` (pivot on ``measure`` for a per-head table).
    """
    rows = []
    for group, measures in (
        ("biases", ("locality", "locality_ratio", "symmetry", "bias_entropy")),
        ("attention", ("kl", "entropy", "entropy_no_bias")),
    ):
        for layer in diag.get(group, []):
            for measure in measures:
                for head, value in enumerate(layer[measure]):
                    rows.append({"layer": layer["name"], "head": head, "measure": measure, "value": float(value)})
    return rows


def diagnostics_table(model: nn.Module, inputs: torch.Tensor | None = None) -> list[dict]:
    """:func:`bias_diagnostics` pivoted by measure: one row per (layer, head).

    Each row: ``layer`` (block index in attention order), ``head``, then every
    :data:`DIAGNOSTIC_MEASURES` key the model has (the attention measures only with ``inputs``).
    A bias shared by all blocks gives its bias measures to every block's rows.

    Args:
        model: a model with relative position biases (none: ``[]``).
        inputs: e.g. images ``(B, C, H, W)`` for the KL and entropy measures, or None.
    """
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


# --------------------------------------------------------------------------- model probes


def bias_modules(model: nn.Module) -> list[RelativePositionBias]:
    """The model's :class:`RelativePositionBias` modules in layer order (a shared one once)."""
    return [m for m in model.modules() if isinstance(m, RelativePositionBias)]


def bias_tables(model: nn.Module) -> list[np.ndarray]:
    """One ``(T, H)`` table per bias module (learned, fixed or computed; empty without a bias)."""
    with torch.no_grad():
        return [m.effective_table().detach().cpu().float().numpy().copy() for m in bias_modules(model)]


def layer_biases(model: nn.Module) -> list[np.ndarray]:
    """One ``(H, N, N)`` gathered bias per bias module, as in eval mode."""
    out = []
    with torch.no_grad():
        for m in bias_modules(model):
            was_training = m.training
            m.eval()
            try:
                out.append(m().detach().cpu().float().numpy().copy())
            finally:
                m.train(was_training)
    return out


def table_geometry(model: nn.Module) -> dict:
    """``{"bias_type", "window_size", "seq_len", "max_distance"}`` of the model's first bias, as
    :func:`relpos.experiments.visualize.visualize_bias_table` takes them (``seq_len`` only for a 1D
    bias, ``max_distance`` only for a family with that option; all None without a bias)."""
    rpbs = bias_modules(model)
    if not rpbs:
        return {"bias_type": None, "window_size": None, "seq_len": None, "max_distance": None}
    m = rpbs[0]
    return {
        "bias_type": m.bias_type,
        "window_size": m.window_size,
        "seq_len": m.seq_len if m.window_size is None else None,
        "max_distance": getattr(m, "max_distance", None),
    }


def position_parts_of(model: nn.Module) -> tuple[str, ...]:
    """The position parts ``model`` holds, in the order ``("relative", "rotary", "absolute")``: a
    relative bias, a rotary embedding in some attention layer, an absolute embedding (a ``pos_embed``
    tensor). Empty for a model without position information."""
    mods = list(model.modules())
    parts = []
    if any(isinstance(m, RelativePositionBias) for m in mods):
        parts.append("relative")
    if any(isinstance(m, MultiHeadAttention) and m.rope is not None for m in mods):
        parts.append("rotary")
    if any(isinstance(getattr(m, "pos_embed", None), torch.Tensor) for m in mods):
        parts.append("absolute")
    return tuple(parts)


def position_disabled(model: nn.Module, part: str | None) -> contextlib.AbstractContextManager:
    """The context manager that switches position part ``part`` of ``model`` off for the forwards in
    its block (``"relative"``, ``"rotary"``, ``"absolute"``; None: nothing). Context-local."""
    switches = {"relative": relative_position_bias_disabled, "rotary": rotary_position_disabled,
                "absolute": absolute_position_disabled}
    if part is None:
        return contextlib.nullcontext(model)
    if part not in switches:
        raise ValueError(f"part must be one of {', '.join(map(repr, switches))} or None, got {part!r}")
    return switches[part](model)


def model_summary(model: nn.Module) -> dict:
    """``depth``, ``num_heads``, ``grid`` (h, w), ``num_tokens``, ``bias_type`` (or None), ``params``,
    and its position parts: ``rotary`` (the rotary mode or None), ``absolute`` (bool), ``position``
    (:func:`position_parts_of`)."""
    rpbs = bias_modules(model)
    grid = tuple(getattr(model, "grid_size", ()) or ())
    rope = next((m.rope for m in model.modules() if isinstance(m, MultiHeadAttention) and m.rope is not None), None)
    parts = position_parts_of(model)
    return {
        "rotary": None if rope is None else rope.mode,
        "absolute": "absolute" in parts,
        "position": parts,
        "depth": getattr(model, "depth", len(rpbs)),
        "num_heads": getattr(model, "num_heads", rpbs[0].num_heads if rpbs else None),
        "grid": grid,
        "num_tokens": grid[0] * grid[1] if len(grid) == 2 else None,
        "bias_type": rpbs[0].bias_type if rpbs else None,
        "params": sum(p.numel() for p in model.parameters()),
    }


def attention_maps(model: nn.Module, image: torch.Tensor, with_bias: bool = True) -> np.ndarray:
    """Every layer's attention on one image ``(C, H, W)``: ``(L, H, N, N)`` numpy.

    ``with_bias=False`` zeroes every relative position bias for this forward only. The maps and the
    bias switch are context-local (:mod:`relpos.attention`): sessions sharing one model never see
    each other's requests.
    """
    if image.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    maps = collect_attention_maps(model, image[None], with_bias=with_bias)  # L x (1, H, N, N)
    return torch.stack([m[0] for m in maps]).numpy()  # (L, H, N, N)


def predict(model: nn.Module, image: torch.Tensor, with_bias: bool = True) -> np.ndarray:
    """Class probabilities ``(K,)`` for one image ``(C, H, W)`` (bias zeroed if ``with_bias=False``)."""
    if image.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    ctx = contextlib.nullcontext() if with_bias else relative_position_bias_disabled(model)
    with ctx, torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            return model(image[None]).softmax(-1)[0].numpy()  # (K,)
        finally:
            model.train(was_training)


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
        a = a[None]  # (1, N, N)
    h, w = check_window_size("grid", grid)
    n = h * w
    if a.ndim != 3 or a.shape[1:] != (n, n):
        raise ValueError(f"attn must have shape (H, {n}, {n}) for grid {(h, w)}, got {a.shape}")
    dist = grid_distances((h, w)).numpy()  # (N, N)
    return (a * dist[None]).sum(axis=-1).mean(axis=-1)  # (H,)
