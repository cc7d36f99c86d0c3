"""The training config: defaults, validation, ``--set`` overrides, and the model it describes.

A config is a plain dict with four parts (``configs/*.yaml`` are commented examples)::

    name, seed, description
    data:  dataset (relational|digits|synthetic|folder), img_size, patch_size, in_channels,
           num_classes, num_train, num_val, root (folder only), mark_size, noise_std, margin_deg
           (relational only), upsample (digits only)
    model: embed_dim, depth, num_heads, mlp_ratio, dropout, use_relative_position,
           position_embedding (auto|absolute|none), bias_type (1d|2d|2d_cls|t5|alibi|cpb), init_std,
           attn_impl (auto|sdpa|explicit), class_token, share_bias,
           rpb (extra RelativePositionBias keyword arguments, e.g. num_buckets for t5)
    train: epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr, grad_clip, label_smoothing,
           num_workers, device (auto|cpu|cuda|mps), amp, log_every

:func:`resolve_config` merges the defaults, checks every key (an unknown key, a wrong type or an
impossible combination raises :class:`ConfigError` naming the dotted key, the value and what is
allowed) and fills the values the dataset fixes (``null`` = "let the dataset decide"):
``in_channels`` and ``num_classes`` (digits: 1 and 10; relational: 3 and 4; folder: the number
of class sub-folders), ``num_train`` and ``num_val``. It is idempotent: a resolved config
resolves to itself. Everything is checked before any training starts.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from typing import Any

import yaml

from relpos.experiments.config_utils import ConfigError
from relpos.models.transformer import VisionTransformer
from relpos.relative_position import BIAS_TYPES

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "apply_overrides",
    "build_model",
    "model_kwargs",
    "resolve_config",
]

DEFAULT_CONFIG: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "description": "",
    "data": {
        "dataset": "relational",
        "img_size": 16,
        "patch_size": 4,
        "in_channels": None,  # null: fixed by the dataset (relational/synthetic/folder 3, digits 1)
        "num_classes": None,  # null: fixed by the dataset (relational 4, digits 10, folder: sub-folders)
        "num_train": None,  # null: the dataset's default (see _SIZE_DEFAULTS)
        "num_val": None,
        "root": None,  # folder only: root/<class>/<image>
        "mark_size": 2,  # relational only: side of each mark, pixels
        "noise_std": 0.0,  # relational only: background noise
        "margin_deg": 10.0,  # relational only: keep directions this far from a class boundary
        "upsample": "bilinear",  # digits only: bilinear | nearest
    },
    "model": {
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "dropout": 0.0,
        "use_relative_position": True,
        "position_embedding": "auto",
        "bias_type": "2d",
        "init_std": 0.02,
        "attn_impl": "auto",
        "class_token": False,  # classify from a class token (a 2D bias then needs bias_type 2d_cls)
        "share_bias": False,  # one relative position bias shared by all blocks
        "rpb": {},
    },
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.002,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "min_lr": 1.0e-5,
        "grad_clip": 1.0,  # max gradient norm; 0 = off
        "label_smoothing": 0.0,
        "num_workers": 0,
        "device": "auto",
        "amp": False,  # bf16 autocast, CUDA only (ignored elsewhere)
        "log_every": 20,  # steps between "step" lines in metrics.jsonl
    },
}

DATASETS = ("relational", "digits", "synthetic", "folder")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Dataset defaults for in_channels, num_classes and the split sizes (None: computed).
_CHANNELS = {"relational": 3, "synthetic": 3, "folder": 3, "digits": 1}
_CLASSES = {"relational": 4, "synthetic": 10, "digits": 10}
_SIZE_DEFAULTS = {"relational": (8192, 1024), "synthetic": (1024, 256)}

# Key specs: (kind, options). kinds: int, float, bool, str, choice, dict, optional variants.
_INT_MAX = 2**31 - 1
_SPEC: dict[str, tuple[str, dict]] = {
    "name": ("name", {}),
    "seed": ("int", {"minimum": 0, "maximum": 2**32 - 1}),
    "description": ("str", {}),
    "data.dataset": ("choice", {"choices": DATASETS}),
    "data.img_size": ("int", {"minimum": 1, "maximum": 4096}),
    "data.patch_size": ("int", {"minimum": 1, "maximum": 4096}),
    "data.in_channels": ("int?", {"minimum": 1, "maximum": 64}),
    "data.num_classes": ("int?", {"minimum": 1, "maximum": 100_000}),
    "data.num_train": ("int?", {"minimum": 1, "maximum": _INT_MAX}),
    "data.num_val": ("int?", {"minimum": 1, "maximum": _INT_MAX}),
    "data.root": ("str?", {}),
    "data.mark_size": ("int", {"minimum": 1, "maximum": 4096}),
    "data.noise_std": ("float", {"minimum": 0.0}),
    "data.margin_deg": ("float", {"minimum": 0.0}),
    "data.upsample": ("choice", {"choices": ("bilinear", "nearest")}),
    "model.embed_dim": ("int", {"minimum": 1, "maximum": 65536}),
    "model.depth": ("int", {"minimum": 1, "maximum": 1000}),
    "model.num_heads": ("int", {"minimum": 1, "maximum": 4096}),
    "model.mlp_ratio": ("float", {"minimum": 0.0, "min_inclusive": False}),
    "model.dropout": ("float", {"minimum": 0.0, "maximum": 1.0, "max_inclusive": False}),
    "model.use_relative_position": ("bool", {}),
    "model.position_embedding": ("choice", {"choices": ("auto", "absolute", "none")}),
    "model.bias_type": ("choice", {"choices": BIAS_TYPES}),
    "model.init_std": ("float", {"minimum": 0.0}),
    "model.attn_impl": ("choice", {"choices": ("auto", "sdpa", "explicit")}),
    "model.class_token": ("bool", {}),
    "model.share_bias": ("bool", {}),
    "model.rpb": ("dict", {}),
    "train.epochs": ("int", {"minimum": 1, "maximum": 1_000_000}),
    "train.batch_size": ("int", {"minimum": 1, "maximum": 1_000_000}),
    "train.lr": ("float", {"minimum": 0.0, "min_inclusive": False}),
    "train.weight_decay": ("float", {"minimum": 0.0}),
    "train.warmup_epochs": ("float", {"minimum": 0.0}),
    "train.min_lr": ("float", {"minimum": 0.0}),
    "train.grad_clip": ("float", {"minimum": 0.0}),
    "train.label_smoothing": ("float", {"minimum": 0.0, "maximum": 1.0, "max_inclusive": False}),
    "train.num_workers": ("int", {"minimum": 0, "maximum": 256}),
    "train.device": ("choice", {"choices": ("auto", "cpu", "cuda", "mps")}),
    "train.amp": ("bool", {}),
    "train.log_every": ("int", {"minimum": 1, "maximum": _INT_MAX}),
}
# rpb keys the model fills itself; the config sets them through model.bias_type / model.init_std.
_RPB_RESERVED = ("num_heads", "window_size", "seq_len", "bias_type", "init_std")


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def _check_value(key: str, value: Any) -> Any:
    """Check one value against its spec; returns it normalized (e.g. int -> float for floats)."""
    kind, opts = _SPEC[key]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise _fail(key, value, f"a value is required ({_describe(kind, opts)})")
    if kind == "name":
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise _fail(key, value, "1-100 characters of letters, digits, '.', '_' or '-', starting "
                        "with a letter or digit (it becomes a folder name)")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value
    if kind == "choice":
        if not isinstance(value, str) or value not in opts["choices"]:
            raise _fail(key, value, "one of " + ", ".join(opts["choices"]))
        return value
    if kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _fail(key, value, "a mapping of keyword arguments")
        return dict(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, _describe(kind, opts))
        if value < opts["minimum"] or value > opts.get("maximum", math.inf):
            raise _fail(key, value, _describe(kind, opts))
        return value
    # float: ints are fine; so is a numeric string such as "1e-3" (YAML 1.1 reads that as a string)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _fail(key, value, _describe(kind, opts)) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, value, _describe(kind, opts))
    value = float(value)
    lo, hi = opts.get("minimum"), opts.get("maximum")
    if lo is not None and (value < lo or (value == lo and not opts.get("min_inclusive", True))):
        raise _fail(key, value, _describe(kind, opts))
    if hi is not None and (value > hi or (value == hi and not opts.get("max_inclusive", True))):
        raise _fail(key, value, _describe(kind, opts))
    return value


def _describe(kind: str, opts: dict) -> str:
    if kind in ("int", "float"):
        lo, hi = opts.get("minimum"), opts.get("maximum")
        lb = "[" if opts.get("min_inclusive", True) else "("
        rb = "]" if opts.get("max_inclusive", True) else ")"
        rng = f"{lb}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{rb}"
        return f"an {kind} in {rng}" if kind == "int" else f"a number in {rng}"
    return kind


def _check_sections(cfg: dict) -> None:
    allowed_top = [k for k in DEFAULT_CONFIG]
    for key, value in cfg.items():
        if key not in DEFAULT_CONFIG:
            raise _fail(str(key), value, "unknown key; allowed top-level keys: " + ", ".join(allowed_top))
        if isinstance(DEFAULT_CONFIG[key], dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise _fail(key, value, f"a mapping with keys {', '.join(DEFAULT_CONFIG[key])}")
            for sub in value:
                if sub not in DEFAULT_CONFIG[key]:
                    raise _fail(
                        f"{key}.{sub}", value[sub], f"unknown key; allowed in {key}: " + ", ".join(DEFAULT_CONFIG[key])
                    )


def _merge(cfg: dict) -> dict:
    out = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in cfg.items():
        if isinstance(out[key], dict):
            out[key].update(copy.deepcopy(value or {}))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fill_data(cfg: dict) -> None:
    d = cfg["data"]
    name = d["dataset"]
    fixed_channels = {"digits": 1}
    if d["in_channels"] is None:
        d["in_channels"] = _CHANNELS[name]
    elif name in fixed_channels and d["in_channels"] != fixed_channels[name]:
        raise _fail("data.in_channels", d["in_channels"], f"{fixed_channels[name]} for dataset {name} (or null)")
    elif name == "folder" and d["in_channels"] not in (1, 3):
        raise _fail("data.in_channels", d["in_channels"], "1 (greyscale) or 3 (RGB) for dataset folder")
    if d["img_size"] % d["patch_size"]:
        raise _fail("data.patch_size", d["patch_size"], f"a divisor of data.img_size ({d['img_size']})")
    if name != "folder" and d["root"] is not None:
        raise _fail("data.root", d["root"], "null unless data.dataset is folder")

    if name == "relational":
        if d["num_classes"] is None:
            d["num_classes"] = _CLASSES[name]
        if d["num_classes"] not in (4, 8):
            raise _fail("data.num_classes", d["num_classes"], "4 or 8 for dataset relational (directions)")
        if d["img_size"] < 2 * d["mark_size"] + 1:
            raise _fail("data.mark_size", d["mark_size"], f"at most {(d['img_size'] - 1) // 2} for "
                        f"data.img_size {d['img_size']} (two marks with a gap must fit)")
        max_margin = 0.8 * 180.0 / d["num_classes"]
        if d["margin_deg"] > max_margin:
            raise _fail("data.margin_deg", d["margin_deg"], f"a number in [0, {max_margin:g}] for "
                        f"{d['num_classes']} classes")
    elif name == "synthetic":
        if d["num_classes"] is None:
            d["num_classes"] = _CLASSES[name]
    elif name == "digits":
        if d["num_classes"] is not None and d["num_classes"] != 10:
            raise _fail("data.num_classes", d["num_classes"], "10 for dataset digits (or null)")
        d["num_classes"] = 10
        if d["img_size"] < 8:
            raise _fail("data.img_size", d["img_size"], "at least 8 for dataset digits (native 8x8)")

    if name in _SIZE_DEFAULTS:
        default_train, default_val = _SIZE_DEFAULTS[name]
        d["num_train"] = default_train if d["num_train"] is None else d["num_train"]
        d["num_val"] = default_val if d["num_val"] is None else d["num_val"]
        return

    if name == "digits":
        from relpos.data.digits import DIGITS_NUM_SAMPLES

        total = DIGITS_NUM_SAMPLES
    else:
        if d["root"] is None:
            raise _fail("data.root", None, "the path of an existing folder with one sub-folder per class "
                        "(required for dataset folder)")
        from relpos.data.folder import scan_image_folder

        try:
            classes, samples = scan_image_folder(d["root"])
        except ValueError as exc:
            raise ConfigError(f"data.root = {d['root']!r} is not allowed: {exc}") from None
        if d["num_classes"] is not None and d["num_classes"] != len(classes):
            raise _fail("data.num_classes", d["num_classes"], f"{len(classes)} (the number of class "
                        f"sub-folders in {d['root']}) or null")
        d["num_classes"] = len(classes)
        total = len(samples)
        if total < 2:
            raise _fail("data.root", d["root"], "a folder with at least 2 images")
    if d["num_val"] is None:
        d["num_val"] = max(1, round(0.2 * total)) if d["num_train"] is None else max(0, min(total - d["num_train"], max(1, round(0.2 * total))))
        if d["num_val"] < 1:
            raise _fail("data.num_train", d["num_train"], f"at most {total - 1} (dataset {name} has {total} samples)")
    if d["num_train"] is None:
        d["num_train"] = total - d["num_val"]
        if d["num_train"] < 1:
            raise _fail("data.num_val", d["num_val"], f"at most {total - 1} (dataset {name} has {total} samples)")
    if d["num_train"] + d["num_val"] > total:
        raise _fail("data.num_train", d["num_train"], f"data.num_train + data.num_val ({d['num_val']}) at most "
                    f"{total} (dataset {name} has {total} samples)")


def _check_model(cfg: dict) -> None:
    m, d = cfg["model"], cfg["data"]
    if m["embed_dim"] % m["num_heads"]:
        raise _fail("model.num_heads", m["num_heads"], f"a divisor of model.embed_dim ({m['embed_dim']})")
    for k in m["rpb"]:
        if k in _RPB_RESERVED:
            raise _fail(f"model.rpb.{k}", m["rpb"][k], "not set here: the model fills num_heads, window_size "
                        "and seq_len, and model.bias_type / model.init_std set the others")
    if m["rpb"] and not m["use_relative_position"]:
        raise _fail("model.rpb", m["rpb"], "{} unless model.use_relative_position is true")
    if m["position_embedding"] == "auto" and not m["use_relative_position"]:
        pass  # auto = absolute: the usual ViT
    grid = d["img_size"] // d["patch_size"]
    if grid * grid > 65536:
        raise _fail("data.patch_size", d["patch_size"], f"large enough that the grid has at most 65536 patches "
                    f"(img_size {d['img_size']} gives {grid * grid})")
    # Refuse a model that would not fit in memory before anything is allocated (the estimate is
    # arithmetic on shapes; the budget is relpos.guards', RELPOS_MEMORY_BUDGET_MB).
    from relpos.guards import ResourceLimitError, check_budget, estimate_model_memory

    kw = model_kwargs(cfg)
    try:
        check_budget(estimate_model_memory(
            img_size=kw["img_size"], patch_size=kw["patch_size"], in_channels=kw["in_channels"],
            num_classes=kw["num_classes"], embed_dim=kw["embed_dim"], depth=kw["depth"],
            num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
            use_relative_position=kw["use_relative_position"], bias_type=m["bias_type"],
            class_token=kw["class_token"], share_bias=kw["share_bias"],
            position_embedding=kw["position_embedding"],
        ))
    except ResourceLimitError as exc:
        raise ConfigError(
            f"model (data.img_size {d['img_size']}, data.patch_size {d['patch_size']}, model.embed_dim "
            f"{m['embed_dim']}, model.depth {m['depth']}, model.num_heads {m['num_heads']}): {exc}"
        ) from None
    # Build a one-block copy of the model to catch anything the checks above missed, e.g. a keyword
    # in model.rpb that RelativePositionBias does not take (one block: ViT-B/16 checks in ~0.2 s).
    kwargs = {**model_kwargs(cfg), "depth": 1}
    try:
        VisionTransformer(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc).replace("rpb_kwargs", "model.rpb")
        raise ConfigError(f"model: {msg} (model = {cfg['model']!r})") from None


def _check_train(cfg: dict) -> None:
    t = cfg["train"]
    if t["warmup_epochs"] > t["epochs"]:
        raise _fail("train.warmup_epochs", t["warmup_epochs"], f"at most train.epochs ({t['epochs']})")
    if t["min_lr"] > t["lr"]:
        raise _fail("train.min_lr", t["min_lr"], f"at most train.lr ({t['lr']})")


def resolve_config(cfg: dict) -> dict:
    """Merge ``cfg`` into the defaults, check every key, and fill the dataset-derived values.

    Args:
        cfg: a (partial) config mapping, e.g. from ``load_config``.

    Returns:
        A new, complete config (``cfg`` is not modified).

    Raises:
        ConfigError: an unknown key, a wrong type, a value out of range or an impossible
            combination; the message names the dotted key, the value and what is allowed.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping, got {type(cfg).__name__}")
    _check_sections(cfg)
    out = _merge(cfg)
    for key in _SPEC:
        section, _, sub = key.partition(".")
        holder = out[section] if sub else out
        name = sub or section
        holder[name] = _check_value(key, holder[name])
    _fill_data(out)
    _check_model(out)
    _check_train(out)
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key such as train.epochs")
    return parts, value


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``--set`` style overrides (``"train.epochs=5"``; values parsed with ``yaml.safe_load``).

    Returns a new dict; ``cfg`` is not modified. Keys are checked against the schema here (an
    unknown key raises ``ConfigError``); values are checked by :func:`resolve_config`.
    ``model.rpb.<name>=value`` sets one extra RelativePositionBias keyword.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(cfg)
    for item in overrides:
        parts, value = _parse_override(item)
        top = parts[0]
        if top not in DEFAULT_CONFIG:
            raise ConfigError(f"{'.'.join(parts)}: unknown key; allowed top-level keys: " + ", ".join(DEFAULT_CONFIG))
        if not isinstance(DEFAULT_CONFIG[top], dict):
            if len(parts) != 1:
                raise ConfigError(f"{'.'.join(parts)}: unknown key ({top} is not a section)")
            out[top] = value
            continue
        if len(parts) == 1:
            raise ConfigError(f"{top}: is a section; set one key, e.g. {top}.{next(iter(DEFAULT_CONFIG[top]))}=...")
        sub = parts[1]
        if sub not in DEFAULT_CONFIG[top]:
            raise ConfigError(f"{top}.{sub}: unknown key; allowed in {top}: " + ", ".join(DEFAULT_CONFIG[top]))
        section = out.get(top)
        if not isinstance(section, dict):
            section = out[top] = {}
        if len(parts) == 2:
            section[sub] = value
        elif top == "model" and sub == "rpb" and len(parts) == 3:
            rpb = section.get("rpb")
            if not isinstance(rpb, dict):
                rpb = section["rpb"] = {}
            rpb[parts[2]] = value
        else:
            raise ConfigError(f"{'.'.join(parts)}: unknown key ({top}.{sub} is not a section)")
    return out


def model_kwargs(cfg: dict) -> dict:
    """``VisionTransformer`` keyword arguments of a *resolved* config."""
    d, m = cfg["data"], cfg["model"]
    rpb = None
    if m["use_relative_position"]:
        rpb = {**m["rpb"], "bias_type": m["bias_type"], "init_std": m["init_std"]}
    return {
        "img_size": d["img_size"],
        "patch_size": d["patch_size"],
        "in_channels": d["in_channels"],
        "num_classes": d["num_classes"],
        "embed_dim": m["embed_dim"],
        "depth": m["depth"],
        "num_heads": m["num_heads"],
        "mlp_ratio": m["mlp_ratio"],
        "dropout": m["dropout"],
        "use_relative_position": m["use_relative_position"],
        "rpb_kwargs": rpb,
        "position_embedding": m["position_embedding"],
        "attn_impl": m["attn_impl"],
        "class_token": m["class_token"],
        "share_bias": m["share_bias"],
    }


def build_model(cfg: dict) -> VisionTransformer:
    """The ``VisionTransformer`` a config describes (the config is resolved first)."""
    return VisionTransformer(**model_kwargs(resolve_config(cfg)))
