"""Resource guard: estimate what a request would allocate and refuse it beyond a memory budget.

The app is shared (a class on one machine) and every size is a widget or a config value, so a
request such as a 128 x 128 window with 16 heads (a ``(16, 16384, 16384)`` bias, 17 GB) must be
refused with a clear message before anything is allocated, not die in the allocator.

Estimates are upper-bound arithmetic on the shapes (float32 = 4 bytes, int64 = 8 bytes), never an
allocation:

- :func:`estimate_bias_memory`: a :class:`~relpos.relative_position.RelativePositionBias`: its
  table ``(T, H)``, index ``(N, N)``, the ``(H, N, N)`` bias it returns and the eval cache.
- :func:`rotary_memory_parts`: a :class:`~relpos.rotary.RotaryPositionEmbedding` (its coordinates,
  ``cos``/``sin``, learned frequencies); ``relpos.rotary.estimate_rotary_memory`` checks and wraps it.
- :func:`estimate_model_memory`: a ``VisionTransformer``: parameters, biases, and for a batch the
  activations (all layers kept for backward when training, plus gradients and AdamW state).
- :func:`estimate_config_memory`: the model of a resolved config and its step on ``train.batch_size``
  (``relpos.experiments.budget`` adds the rest of a training run and checks it before one starts).
- :func:`estimate_attention_maps_memory`: ``collect_attention_maps``: ``B x H x N x N`` weights per
  layer (:func:`estimate_attention_maps_for` reads the sizes off a model and its input).

:func:`check_budget` raises :class:`ResourceLimitError` (a ``ValueError``) whose message gives the
estimate, its largest parts and the limit. The budget is ``RELPOS_MEMORY_BUDGET_MB`` (default
2048 MB), or what :func:`set_memory_budget` / the :func:`memory_budget` context manager set.

About 450 lines, over the usual 400: every estimator (bias, rotary, attention maps, model, config)
and the one budget they are checked against are one concept; split, each would re-derive the shapes.
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
from relpos.families import BIAS_TYPES, DEFAULT_BIAS_TYPE, family, position_parts, resolve_bias_kwargs

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
    "rotary_memory_parts",
    "set_memory_budget",
]

#: Environment variable holding the budget in MB (a positive number).
BUDGET_ENV = "RELPOS_MEMORY_BUDGET_MB"
DEFAULT_BUDGET_MB = 2048.0
MB = 1024 * 1024
FLOAT_BYTES = 4
INDEX_BYTES = 8
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
    """``(N, T, size text)`` of a bias family at a size (the family's flags say which size it takes)."""
    fam = family(bias_type)
    if (window_size is not None) if fam.grid == "either" else fam.is_2d():
        if window_size is None:
            raise ValueError(f"window_size is required for bias_type={bias_type!r}")
        h, w = check_window_size("window_size", window_size, maximum=2**31)
        n, t = h * w + int(fam.class_token), (2 * h - 1) * (2 * w - 1) + fam.extra_rows
        return n, t, f"window ({h}, {w})"
    if seq_len is None:
        raise ValueError(f"seq_len is required for bias_type={bias_type!r}")
    n = check_int("seq_len", seq_len, maximum=2**31)
    if "num_buckets" in fam.options:  # a bucketed table: T does not grow with the length
        return n, check_int("num_buckets", fam.options["num_buckets"] if num_buckets is None else num_buckets), f"seq_len {n}"
    return n, 2 * n - 1, f"seq_len {n}"


def estimate_bias_memory(
    num_heads: int,
    window_size: tuple[int, int] | int | None = None,
    seq_len: int | None = None,
    bias_type: str = DEFAULT_BIAS_TYPE,
    *,
    num_buckets: int | None = None,
    cpb_hidden_dim: int | None = None,
) -> MemoryEstimate:
    """Memory of one ``RelativePositionBias`` (same arguments) and of the bias it returns.

    Parts: the ``(T, H)`` table (plus the MLP and ``(T, 2)`` coordinates for a family with a
    ``cpb_hidden_dim``), the ``(N, N)`` int64 index, the ``(H, N, N)`` bias a forward returns and its
    eval cache.
    """
    num_heads = check_int("num_heads", num_heads, maximum=_BIG)
    bias_type = check_choice("bias_type", bias_type, BIAS_TYPES)
    n, t, size = _tokens_and_rows(bias_type, window_size, seq_len, num_buckets)
    parts = {
        "table (T x H)": t * num_heads * FLOAT_BYTES,
        "index (N x N)": n * n * INDEX_BYTES,
        "bias (H x N x N)": num_heads * n * n * FLOAT_BYTES,
        "bias cache (H x N x N)": num_heads * n * n * FLOAT_BYTES,
    }
    options = family(bias_type).options
    if "cpb_hidden_dim" in options:  # an MLP computes the table
        default = options["cpb_hidden_dim"]
        hidden = check_int("cpb_hidden_dim", default if cpb_hidden_dim is None else cpb_hidden_dim, maximum=_BIG)
        parts["cpb MLP and coordinates"] = (3 * hidden + hidden * num_heads + 2 * t) * FLOAT_BYTES
    return MemoryEstimate(f"RelativePositionBias({bias_type}, {num_heads} heads, {size})", parts)


def rotary_memory_parts(
    learned: bool, head_dim: int, grid_tokens: int, num_heads: int = 1, num_prefix_tokens: int = 0
) -> dict[str, int]:
    """Bytes of one rotary position embedding by part (float32), from checked sizes.

    The arithmetic behind ``relpos.rotary.estimate_rotary_memory`` (which checks the arguments) and the
    ViT estimate: grid coordinates ``(n, 2)``; fixed modes: ``cos``/``sin`` buffers ``(2, N, D)``;
    learned ("mixed"): ``freqs (2, H, D/2)``, phases ``(H, n, D/2)``, ``cos``/``sin`` ``(2, H, N, D)``
    per forward and as much again for the eval cache. ``N = num_prefix_tokens + grid_tokens``.
    """
    n, d, h = grid_tokens, head_dim, num_heads
    tokens, f, pairs = n + num_prefix_tokens, FLOAT_BYTES, head_dim // 2
    parts = {"grid coordinates (n x 2)": 2 * n * f}
    if learned:
        parts["freqs (2 x H x D/2)"] = 2 * h * pairs * f
        parts["phases (H x n x D/2)"] = h * n * pairs * f
        parts["cos and sin (2 x H x N x D)"] = 2 * h * tokens * d * f
        parts["eval cache (2 x H x N x D)"] = 2 * h * tokens * d * f
    else:
        parts["cos and sin (2 x N x D)"] = 2 * tokens * d * f
    return parts


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


#: ``VisionTransformer`` sizes the model estimate needs (no defaults of its own: the caller passes the
#: model's values, e.g. ``model_kwargs(cfg)``); the options it reads when given (absent = off / "auto");
#: the arguments it accepts and ignores.
_MODEL_SIZES = ("img_size", "patch_size", "in_channels", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio")
_MODEL_OPTIONS = {
    "use_relative_position": False, "rpb_kwargs": None, "position_embedding": "auto", "class_token": False,
    "share_bias": False, "rope_kwargs": None,
}
_MODEL_IGNORED = ("dropout", "attn_impl")


def estimate_model_memory(*, batch_size: int = 0, training: bool = False, **vit_kwargs: Any) -> MemoryEstimate:
    """Memory of a ``VisionTransformer`` built with ``vit_kwargs``, and of a forward on a batch.

    Args:
        batch_size: images per forward; 0 estimates the model alone.
        training: count gradients, AdamW state (two moments) and the activations of every layer
            (kept for backward); else the activations of one layer at a time.
        **vit_kwargs: the model's keyword arguments: the sizes are required (``img_size``,
            ``patch_size``, ``in_channels``, ``num_classes``, ``embed_dim``, ``depth``, ``num_heads``,
            ``mlp_ratio``); ``use_relative_position``, ``rpb_kwargs``, ``position_embedding``
            (a rotary one adds one rotary embedding per block), ``class_token`` and ``share_bias``
            are read when given (absent: off, ``"auto"``); ``rope_kwargs`` (theta, indexing: no
            effect on memory), ``dropout`` and ``attn_impl`` are accepted and ignored.

    Raises:
        TypeError: a missing or unknown keyword, or a value of the wrong type.
        ValueError: a value out of range (the message names it).
    """
    missing = [k for k in _MODEL_SIZES if k not in vit_kwargs]
    unknown = sorted(k for k in vit_kwargs if k not in (*_MODEL_SIZES, *_MODEL_OPTIONS, *_MODEL_IGNORED))
    if missing or unknown:
        raise TypeError(
            f"estimate_model_memory needs the VisionTransformer sizes {', '.join(_MODEL_SIZES)} and takes the "
            f"options {', '.join(_MODEL_OPTIONS)}" + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    kw = {**_MODEL_OPTIONS, **vit_kwargs}
    gh, gw = check_window_size("img_size", kw["img_size"], maximum=_BIG)
    p = check_int("patch_size", kw["patch_size"], maximum=_BIG)
    c_in = check_int("in_channels", kw["in_channels"], maximum=_BIG)
    classes = check_int("num_classes", kw["num_classes"], maximum=_BIG)
    d = check_int("embed_dim", kw["embed_dim"], maximum=_BIG)
    depth = check_int("depth", kw["depth"], maximum=_BIG)
    heads = check_int("num_heads", kw["num_heads"], maximum=_BIG)
    ratio = check_float("mlp_ratio", kw["mlp_ratio"], minimum=0.0, min_inclusive=False)
    rp = check_bool("use_relative_position", kw["use_relative_position"])
    cls = check_bool("class_token", kw["class_token"])
    share = check_bool("share_bias", kw["share_bias"])
    rotary, absolute = position_parts(kw["position_embedding"], rp)  # rope_kwargs: no effect on memory
    b = check_int("batch_size", batch_size, minimum=0, maximum=_BIG)
    training = check_bool("training", training)
    grid = (max(1, gh // p), max(1, gw // p))
    patches = grid[0] * grid[1]
    n = patches + int(cls)
    hidden = max(1, int(min(d * ratio, float(_BIG))))  # as the model's Mlp; any finite ratio is estimated
    params = (c_in * p * p * d + d) + (d if cls else 0) + (patches * d if absolute else 0)
    params += depth * (4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * hidden + hidden + d)
    params += 2 * d + d * classes + classes
    parts = {"parameters": params * FLOAT_BYTES}
    if rp:
        rpb = resolve_bias_kwargs(kw["rpb_kwargs"], num_heads=heads, grid=grid, class_token=cls)
        one = estimate_bias_memory(
            heads, rpb.get("window_size"), rpb.get("seq_len"), rpb["bias_type"],
            num_buckets=rpb.get("num_buckets"), cpb_hidden_dim=rpb.get("cpb_hidden_dim"),
        )
        parts["relative position biases"] = (1 if share else depth) * one.total
    if rotary is not None:  # one RotaryPositionEmbedding per block (relpos.rotary.estimate_rotary_memory)
        one_rope = rotary_memory_parts(rotary == "mixed", max(1, d // heads), patches, heads, int(cls))
        parts["rotary embeddings"] = depth * sum(one_rope.values())
    if training:
        parts["gradients"] = params * FLOAT_BYTES
        parts["optimizer state (AdamW)"] = 2 * params * FLOAT_BYTES
    if b:
        layers = depth if training else 1  # training keeps every layer's activations for backward
        parts["activations"] = layers * b * n * (10 * d + 2 * hidden) * FLOAT_BYTES  # qkv, proj, norms, MLP
        parts["attention logits and weights (L x B x H x N x N)"] = layers * 2 * b * heads * n * n * FLOAT_BYTES
        if rotary is not None:  # the rotated q and k and the turned copies autograd keeps
            parts["rotated queries and keys"] = layers * 4 * b * n * d * FLOAT_BYTES
        parts["input images"] = b * c_in * gh * gw * FLOAT_BYTES
    return MemoryEstimate(
        f"VisionTransformer(embed_dim {d}, depth {depth}, {heads} heads, {n} tokens"
        + (f", batch {b}" + (", training" if training else "") if b else "")
        + ")",
        parts,
    )


def estimate_config_memory(cfg: Mapping[str, Any], training: bool = True) -> MemoryEstimate:
    """:func:`estimate_model_memory` for a *resolved* config (``train.batch_size`` as the batch).

    The config's ``model`` section is read as ``relpos.experiments.config.model_kwargs`` reads it
    (``model.bias_type``, ``model.init_std`` and ``model.rpb`` make the ``rpb_kwargs``). What a
    training run holds beyond the model and its step (the data, the loaders, the per-epoch
    diagnostics) is added by ``relpos.experiments.budget.training_memory``.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f"cfg must be a config mapping, got {type(cfg).__name__}")
    try:
        d, m, t = cfg["data"], cfg["model"], cfg["train"]
        rpb = {**m.get("rpb", {}), "bias_type": m["bias_type"]} if m["use_relative_position"] else None
        kwargs = dict(
            img_size=d["img_size"], patch_size=d["patch_size"], in_channels=d["in_channels"] or 3,
            num_classes=d["num_classes"] or 10, embed_dim=m["embed_dim"], depth=m["depth"],
            num_heads=m["num_heads"], mlp_ratio=m["mlp_ratio"],
            use_relative_position=m["use_relative_position"], rpb_kwargs=rpb,
            class_token=m.get("class_token", False), share_bias=m.get("share_bias", False),
            position_embedding=m.get("position_embedding", "auto"), batch_size=t["batch_size"],
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cfg must be a resolved config (data, model, train sections): missing {exc}") from None
    return estimate_model_memory(**kwargs, training=training)


def check_bias_budget(
    num_heads: int,
    size: tuple[int, int] | int,
    bias_type: str = DEFAULT_BIAS_TYPE,
    *,
    num_buckets: int | None = None,
    cpb_hidden_dim: int | None = None,
) -> MemoryEstimate:
    """:func:`check_budget` of :func:`estimate_bias_memory`; ``size`` is a window ``(h, w)`` or a length."""
    window, length = (size, None) if isinstance(size, (tuple, list)) else (None, size)
    return check_budget(
        estimate_bias_memory(num_heads, window, length, bias_type, num_buckets=num_buckets, cpb_hidden_dim=cpb_hidden_dim)
    )


def check_model_budget(**vit_kwargs: Any) -> MemoryEstimate:
    """:func:`check_budget` of :func:`estimate_model_memory` (same keyword arguments)."""
    return check_budget(estimate_model_memory(**vit_kwargs))


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
