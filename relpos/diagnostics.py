"""What a relative position bias does, per head: locality, symmetry, how far it moves attention.

Shape legend: ``B`` batch, ``H`` heads, ``N`` tokens, ``L`` layers.

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

A class token (bias_type "2d_cls") is left out of locality and symmetry (it has no grid position).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from relpos.attention import MultiHeadAttention, collect_attention_maps
from relpos.relative_position import RelativePositionBias

__all__ = [
    "attention_entropy",
    "attention_kl",
    "bias_diagnostics",
    "diagnostics_rows",
    "locality_score",
    "softmax_entropy",
    "symmetry_score",
    "token_distances",
]

_EPS = 1e-12


def token_distances(rpb: RelativePositionBias) -> torch.Tensor:
    """``(N, N)`` float distances between the tokens a bias covers (class token excluded).

    2D families: Euclidean distance between grid positions (row-major tokens); 1D: ``|i - j|``.
    """
    if rpb.window_size is not None:
        h, w = rpb.window_size
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()  # (N, 2)
        return torch.cdist(pos, pos)  # (N, N)
    pos = torch.arange(rpb.seq_len, dtype=torch.float64)
    return (pos[:, None] - pos[None, :]).abs()  # (N, N)


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
    return bias[:, 1:, 1:] if rpb.has_class_token else bias  # (H, N, N) without the class token


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
