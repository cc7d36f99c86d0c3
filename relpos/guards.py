"""Resource guard: estimate what a request would allocate and refuse it beyond a memory budget.

The app is shared (a class on one machine) and every size is a widget or a config value, so a
request such as a 128 x 128 window with 16 heads (a ``(16, 16384, 16384)`` bias, 17 GB) must be
refused with a clear message before anything is allocated, not die in the allocator.

Estimates are upper-bound arithmetic on the shapes (float32 = 4 bytes, int64 = 8 bytes), never an
allocation:

- :func:`estimate_bias_memory`: a :class:`~relpos.relative_position.RelativePositionBias`: its
  table ``(T, H)``, index ``(N, N)``, the ``(H, N, N)`` bias it returns and the eval cache.
- :func:`estimate_model_memory`: a ``VisionTransformer``: parameters, biases, and for a batch the
  activations (all layers kept for backward when training, plus gradients and AdamW state).
- :func:`estimate_attention_maps_memory`: ``collect_attention_maps``: ``B x H x N x N`` weights per
  layer (:func:`estimate_attention_maps_for` reads the sizes off a model and its input).

:func:`check_budget` raises :class:`ResourceLimitError` (a ``ValueError``) whose message gives the
estimate, its largest parts and the limit. The budget is ``RELPOS_MEMORY_BUDGET_MB`` (default
2048 MB), or what :func:`set_memory_budget` / the :func:`memory_budget` context manager set.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from relpos._validation import check_bool, check_choice, check_float, check_int, check_window_size

__all__ = [
    "BUDGET_ENV",
    "DEFAULT_BUDGET_MB",
    "MemoryEstimate",
    "ResourceLimitError",
    "check_bias_budget",
    "check_budget",
    "check_model_budget",
    "estimate_attention_maps_for",
    "estimate_attention_maps_memory",
    "estimate_bias_memory",
    "estimate_config_memory",
    "estimate_memory",
    "estimate_model_memory",
    "format_bytes",
    "memory_budget",
    "memory_budget_bytes",
    "set_memory_budget",
]

#: Environment variable holding the budget in MB (a positive number).
BUDGET_ENV = "RELPOS_MEMORY_BUDGET_MB"
DEFAULT_BUDGET_MB = 2048.0
MB = 1024 * 1024
FLOAT_BYTES = 4
INDEX_BYTES = 8
_BIAS_TYPES = ("1d", "2d", "2d_cls", "t5", "alibi", "cpb")  # as relpos.relative_position.BIAS_TYPES
_BIG = 2**62  # argument ceiling: sizes are checked, not allocated, so only absurd values are refused

_lock = threading.Lock()
_override_mb: float | None = None


class ResourceLimitError(ValueError):
    """A request whose estimated memory exceeds the budget (the message gives both)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of one request, by part.

    Attributes:
        what: what was estimated, e.g. ``"RelativePositionBias(2d, 16 heads, window (128, 128))"``.
        breakdown: bytes per part, e.g. ``{"bias (H x N x N)": ..., "index (N x N)": ...}``.
    """

    what: str
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Total bytes."""
        return int(sum(self.breakdown.values()))

    def __int__(self) -> int:
        return self.total

    def __add__(self, other: MemoryEstimate) -> MemoryEstimate:
        parts = dict(self.breakdown)
        for k, v in other.breakdown.items():
            parts[k] = parts.get(k, 0) + v
        return MemoryEstimate(f"{self.what} + {other.what}", parts)

    def describe(self, parts: int = 4) -> str:
        """``"1.0 GB: bias (H x N x N) 512.0 MB, ..."``: the total and its largest parts."""
        items = sorted(self.breakdown.items(), key=lambda kv: -kv[1])[:parts]
        shown = ", ".join(f"{k} {format_bytes(v)}" for k, v in items if v > 0)
        return f"{format_bytes(self.total)}" + (f" ({shown})" if shown else "")


def format_bytes(n: int | float) -> str:
    """``1536 -> "1.5 KB"``; binary units (KB = 1024 bytes)."""
    n = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


# --------------------------------------------------------------------------- the budget


def _parse_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{BUDGET_ENV} must be a positive number of MB, got {text!r}")
    return value


def memory_budget_bytes() -> int:
    """The current budget in bytes: the override if set, else ``RELPOS_MEMORY_BUDGET_MB``, else 2048 MB."""
    with _lock:
        override = _override_mb
    if override is not None:
        return int(override * MB)
    text = os.environ.get(BUDGET_ENV, "").strip()
    return int((_parse_budget(text) if text else DEFAULT_BUDGET_MB) * MB)


def set_memory_budget(mb: float | None) -> float | None:
    """Set the budget in MB for this process (``None``: back to the environment/default).

    Returns:
        The previous override (None if there was none), so it can be restored.
    """
    global _override_mb
    if mb is not None:
        mb = check_float("mb", mb, minimum=0.0, min_inclusive=False)
    with _lock:
        previous, _override_mb = _override_mb, mb
    return previous


@contextlib.contextmanager
def memory_budget(mb: float | None) -> Iterator[None]:
    """Within the block, the budget is ``mb`` MB (``None``: the environment/default)."""
    previous = set_memory_budget(mb)
    try:
        yield
    finally:
        set_memory_budget(previous)


def check_budget(estimate: MemoryEstimate | int, what: str | None = None) -> MemoryEstimate:
    """Raise :class:`ResourceLimitError` if ``estimate`` exceeds the budget; return it otherwise.

    Args:
        estimate: a :class:`MemoryEstimate` or a number of bytes.
        what: how to name the request in the message (default: ``estimate.what``).
    """
    if isinstance(estimate, bool) or not isinstance(estimate, (MemoryEstimate, int)):
        raise TypeError(f"estimate must be a MemoryEstimate or an int of bytes, got {type(estimate).__name__}")
    if isinstance(estimate, int):
        estimate = MemoryEstimate(what or "this request", {"total": check_int("estimate", estimate, minimum=0)})
    if what is not None and not isinstance(what, str):
        raise TypeError(f"what must be a str or None, got {type(what).__name__}")
    limit = memory_budget_bytes()
    if estimate.total > limit:
        raise ResourceLimitError(
            f"{what or estimate.what} would need about {estimate.describe()} of memory, over the limit "
            f"of {format_bytes(limit)}: ask for less (fewer heads, a smaller window, image or batch), "
            f"or raise the limit with the {BUDGET_ENV} environment variable"
        )
    return estimate


# --------------------------------------------------------------------------- estimates


def _tokens_and_rows(bias_type: str, window_size: Any, seq_len: Any, num_buckets: Any) -> tuple[int, int, str]:
    """``(N, T, size text)`` of a bias family at a size."""
    if bias_type in ("2d", "2d_cls", "cpb") or (bias_type == "alibi" and window_size is not None):
        if window_size is None:
            raise ValueError(f"window_size is required for bias_type={bias_type!r}")
        h, w = check_window_size("window_size", window_size, maximum=2**31)
        n, t = h * w, (2 * h - 1) * (2 * w - 1)
        if bias_type == "2d_cls":
            n, t = n + 1, t + 3
        return n, t, f"window ({h}, {w})"
    if seq_len is None:
        raise ValueError(f"seq_len is required for bias_type={bias_type!r}")
    n = check_int("seq_len", seq_len, maximum=2**31)
    t = check_int("num_buckets", 32 if num_buckets is None else num_buckets) if bias_type == "t5" else 2 * n - 1
    return n, t, f"seq_len {n}"


def estimate_bias_memory(
    num_heads: int,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    bias_type: str = "2d",
    *,
    num_buckets: int | None = None,
    cpb_hidden_dim: int | None = None,
) -> MemoryEstimate:
    """Memory of one ``RelativePositionBias`` (same arguments) and of the bias it returns.

    Parts: the ``(T, H)`` table (plus the MLP and ``(T, 2)`` coordinates for "cpb"), the
    ``(N, N)`` int64 index, the ``(H, N, N)`` bias a forward returns and its eval cache.
    """
    num_heads = check_int("num_heads", num_heads, maximum=_BIG)
    bias_type = check_choice("bias_type", bias_type, _BIAS_TYPES)
    n, t, size = _tokens_and_rows(bias_type, window_size, seq_len, num_buckets)
    parts = {
        "table (T x H)": t * num_heads * FLOAT_BYTES,
        "index (N x N)": n * n * INDEX_BYTES,
        "bias (H x N x N)": num_heads * n * n * FLOAT_BYTES,
        "bias cache (H x N x N)": num_heads * n * n * FLOAT_BYTES,
    }
    if bias_type == "cpb":
        hidden = check_int("cpb_hidden_dim", 512 if cpb_hidden_dim is None else cpb_hidden_dim, maximum=_BIG)
        parts["cpb MLP and coordinates"] = (3 * hidden + hidden * num_heads + 2 * t) * FLOAT_BYTES
    return MemoryEstimate(f"RelativePositionBias({bias_type}, {num_heads} heads, {size})", parts)


def estimate_attention_maps_memory(
    batch_size: int, num_heads: int, num_tokens: int, num_layers: int = 1
) -> MemoryEstimate:
    """Memory of ``num_layers`` attention maps of shape ``(B, H, N, N)`` (float32)."""
    b = check_int("batch_size", batch_size, maximum=_BIG)
    h = check_int("num_heads", num_heads, maximum=_BIG)
    n = check_int("num_tokens", num_tokens, maximum=_BIG)
    layers = check_int("num_layers", num_layers, maximum=_BIG)
    return MemoryEstimate(
        f"attention maps ({layers} layer(s) of {b} x {h} x {n} x {n})",
        {"attention weights (L x B x H x N x N)": layers * b * h * n * n * FLOAT_BYTES},
    )


def estimate_model_memory(
    img_size: int | tuple[int, int] = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    num_classes: int = 1000,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    use_relative_position: bool = False,
    bias_type: str = "2d",
    class_token: bool = False,
    share_bias: bool = False,
    position_embedding: str = "auto",
    batch_size: int = 0,
    training: bool = False,
) -> MemoryEstimate:
    """Memory of a ``VisionTransformer`` (same arguments), and of a forward on a batch.

    Args:
        batch_size: images per forward; 0 estimates the model alone.
        training: count gradients, AdamW state (two moments) and the activations of every layer
            (kept for backward); else the activations of one layer at a time.
    """
    gh, gw = check_window_size("img_size", img_size, maximum=_BIG)
    p = check_int("patch_size", patch_size, maximum=_BIG)
    c_in = check_int("in_channels", in_channels, maximum=_BIG)
    classes = check_int("num_classes", num_classes, maximum=_BIG)
    d = check_int("embed_dim", embed_dim, maximum=_BIG)
    depth = check_int("depth", depth, maximum=_BIG)
    heads = check_int("num_heads", num_heads, maximum=_BIG)
    ratio = check_float("mlp_ratio", mlp_ratio, minimum=0.0, min_inclusive=False, maximum=float(_BIG))
    rp = check_bool("use_relative_position", use_relative_position)
    cls = check_bool("class_token", class_token)
    share = check_bool("share_bias", share_bias)
    pos = check_choice("position_embedding", position_embedding, ("auto", "absolute", "none"))
    b = check_int("batch_size", batch_size, minimum=0, maximum=_BIG)
    training = check_bool("training", training)
    grid = (gh // p, gw // p)
    patches = max(1, grid[0] * grid[1])
    n = patches + int(cls)
    hidden = int(d * ratio)
    absolute = pos == "absolute" or (pos == "auto" and not rp)
    params = (c_in * p * p * d + d) + (d if cls else 0) + (patches * d if absolute else 0)
    params += depth * (4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * hidden + hidden + d)
    params += 2 * d + d * classes + classes
    parts = {"parameters": params * FLOAT_BYTES}
    if rp:
        bias_kind = bias_type if bias_type in _BIAS_TYPES else "2d"
        one = (
            estimate_bias_memory(heads, grid, None, bias_kind)
            if bias_kind in ("2d", "2d_cls", "cpb", "alibi") and min(grid) >= 1
            else estimate_bias_memory(heads, None, n, bias_kind)
        )
        parts["relative position biases"] = (1 if share else depth) * one.total
    if training:
        parts["gradients"] = params * FLOAT_BYTES
        parts["optimizer state (AdamW)"] = 2 * params * FLOAT_BYTES
    if b:
        layer = b * n * (10 * d + 2 * hidden) + 2 * b * heads * n * n  # tokens + attention logits/weights
        parts["activations"] = (depth if training else 1) * layer * FLOAT_BYTES
        parts["input images"] = b * c_in * gh * gw * FLOAT_BYTES
    return MemoryEstimate(
        f"VisionTransformer(embed_dim {d}, depth {depth}, {heads} heads, {n} tokens"
        + (f", batch {b}" + (", training" if training else "") if b else "")
        + ")",
        parts,
    )


def estimate_config_memory(cfg: Mapping[str, Any], training: bool = True) -> MemoryEstimate:
    """:func:`estimate_model_memory` for a *resolved* config (``train.batch_size`` as the batch)."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"cfg must be a config mapping, got {type(cfg).__name__}")
    try:
        d, m, t = cfg["data"], cfg["model"], cfg["train"]
        kwargs = dict(
            img_size=d["img_size"], patch_size=d["patch_size"], in_channels=d["in_channels"] or 3,
            num_classes=d["num_classes"] or 10, embed_dim=m["embed_dim"], depth=m["depth"],
            num_heads=m["num_heads"], mlp_ratio=m["mlp_ratio"],
            use_relative_position=m["use_relative_position"], bias_type=m["bias_type"],
            class_token=m.get("class_token", False), share_bias=m.get("share_bias", False),
            position_embedding=m.get("position_embedding", "auto"), batch_size=t["batch_size"],
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cfg must be a resolved config (data, model, train sections): missing {exc}") from None
    return estimate_model_memory(**kwargs, training=training)


def check_bias_budget(
    num_heads: int,
    size: tuple[int, int] | int,
    bias_type: str = "2d",
    *,
    num_buckets: int | None = None,
    cpb_hidden_dim: int | None = None,
) -> MemoryEstimate:
    """:func:`check_budget` of :func:`estimate_bias_memory`; ``size`` is a window ``(h, w)`` or a length."""
    window, length = (size, None) if isinstance(size, (tuple, list)) else (None, size)
    return check_budget(
        estimate_bias_memory(num_heads, window, length, bias_type, num_buckets=num_buckets, cpb_hidden_dim=cpb_hidden_dim)
    )


def check_model_budget(**kwargs: Any) -> MemoryEstimate:
    """:func:`check_budget` of :func:`estimate_model_memory` (same keyword arguments)."""
    return check_budget(estimate_model_memory(**kwargs))


_ESTIMATORS = {
    "bias": estimate_bias_memory,
    "model": estimate_model_memory,
    "attention_maps": estimate_attention_maps_memory,
}


def estimate_memory(kind: str, **kwargs: Any) -> MemoryEstimate:
    """One entry point: ``kind`` is ``"bias"``, ``"model"`` or ``"attention_maps"``; ``kwargs`` go
    to :func:`estimate_bias_memory`, :func:`estimate_model_memory` or
    :func:`estimate_attention_maps_memory`."""
    kind = check_choice("kind", kind, tuple(_ESTIMATORS))
    return _ESTIMATORS[kind](**kwargs)


def estimate_attention_maps_for(model: Any, *inputs: Any) -> MemoryEstimate:
    """What ``collect_attention_maps(model, *inputs)`` would return, from the model and its input.

    The batch is the first input's first dimension; the tokens are the model's patch grid (plus its
    class token) for a ``VisionTransformer``, else the input's second dimension ``(B, N, C)``; the
    heads and layers come from the model's ``MultiHeadAttention`` modules. Unknown sizes: an
    empty estimate (nothing refused).
    """
    x = inputs[0] if inputs else None
    shape = tuple(getattr(x, "shape", ()))
    if not shape or not hasattr(model, "modules"):
        return MemoryEstimate("attention maps (sizes unknown)", {})
    b = int(shape[0])
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "num_patches"):
        n = int(patch_embed.num_patches) + int(bool(getattr(model, "class_token", False)))
    elif len(shape) == 3:
        n = int(shape[1])
    else:
        return MemoryEstimate("attention maps (sizes unknown)", {})
    heads = [int(m.num_heads) for m in model.modules() if type(m).__name__ == "MultiHeadAttention"]
    if not heads or b < 1 or n < 1:
        return MemoryEstimate("attention maps (sizes unknown)", {})
    per = {h: heads.count(h) for h in heads}
    parts = {"attention weights (L x B x H x N x N)": sum(c * b * h * n * n * FLOAT_BYTES for h, c in per.items())}
    return MemoryEstimate(f"attention maps ({len(heads)} layer(s) of {b} x {max(heads)} x {n} x {n})", parts)
