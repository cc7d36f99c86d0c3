"""The training config: defaults, validation, ``--set`` overrides, and the model it describes.

A config is a plain dict with four parts (``configs/*.yaml`` are commented examples)::

    name, seed, description
    data:  dataset (relational|digits|synthetic|folder), img_size, patch_size, in_channels,
           num_classes, num_train, num_val, root (folder only), mark_size, noise_std, margin_deg,
           train_region, val_region (relational only), upsample (digits only)
    model: scheme (a name for the next four keys, see below), embed_dim, depth, num_heads,
           mlp_ratio, dropout, use_relative_position,
           position_embedding (relpos.families.POSITION_EMBEDDINGS: auto|absolute|none, the rotary
           rope_axial|rope_mixed, alone or +absolute), bias_type (relpos.families.BIAS_TYPES), init_std,
           attn_impl (auto|sdpa|explicit), class_token, share_bias,
           rpb (extra RelativePositionBias keyword arguments, e.g. num_buckets for t5),
           rope (rotary options with a rope_* position_embedding: theta, grid_indexing ij|xy)
    train: epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr, grad_clip, label_smoothing,
           num_workers, device (auto|cpu|cuda|mps), amp, log_every, compile (auto|true|false: torch.compile,
           relpos.experiments.compile), tensorboard (also write event files, relpos.experiments.tensorboard)

:func:`resolve_config` merges the defaults, checks every key (an unknown key, a wrong type or an
impossible combination raises :class:`ConfigError` naming the dotted key, the value and what is
allowed) and fills the values the dataset fixes (``null`` = "let the dataset decide"):
``in_channels`` and ``num_classes`` (digits: 1 and 10; relational: 3 and 4; folder: the number
of class sub-folders), ``num_train`` and ``num_val``. It is idempotent: a resolved config
resolves to itself. Everything is checked before any training starts, on the config itself (no
model is built): the bias arguments by :func:`relpos.families.resolve_bias_kwargs`, the dataset by
:func:`relpos.data.build.resolve_data`, the model's memory by :mod:`relpos.experiments.budget`.
Training needs more than the model: :func:`resolve_training_config` also checks a run's peak memory
(:func:`check_training_memory`) and is what every way of starting a run calls.

Over the house 400 lines (about 630) because the schema table, its checker and the app's run settings
share the config's one vocabulary; the schema (``_SPEC``, ``_check_value``) is the natural next split.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from relpos.attention import ATTN_IMPLS
from relpos.data.build import DATASETS, resolve_data
from relpos.data.digits import UPSAMPLE_MODES
from relpos._limits import load_yaml, short_repr, short_text
from relpos.experiments.config_utils import ConfigError, load_config, preset_path
from relpos.families import (
    BIAS_TYPES,
    DEFAULT_BIAS_TYPE,
    FAMILY_OPTIONS,
    RPB_KWARGS,
    SCHEMES,
    family_options,
    position_parts,
    resolve_bias_kwargs,
    scheme_name,
    scheme_settings,
)
from relpos.experiments.budget import baseline_sizes, refuse_over_budget, training_memory
from relpos.guards import MemoryEstimate, estimate_model_memory
from relpos.models.transformer import POSITION_EMBEDDINGS, VisionTransformer
from relpos.rotary import resolve_rope_kwargs

__all__ = [
    "DEFAULT_CONFIG",
    "TRAIN_SETTINGS",
    "ConfigError",
    "apply_overrides",
    "build_model",
    "changed_overrides",
    "check_run_settings",
    "check_training_memory",
    "format_override",
    "fresh_model",
    "model_kwargs",
    "preset_config",
    "resolve_config",
    "resolve_training_config",
    "train_overrides",
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
        "num_train": None,  # null: the dataset's default (relpos.data.build.resolve_data)
        "num_val": None,
        "root": None,  # folder only: root/<class>/<image>
        "mark_size": 2,  # relational only: side of each mark, pixels
        "noise_std": 0.0,  # relational only: background noise
        "margin_deg": 10.0,  # relational only: keep directions this far from a class boundary
        "train_region": None,  # relational only: where the marks of the train split lie; null = anywhere
        "val_region": None,  # relational only: the same for the validation split (relpos.data.relational)
        "upsample": "bilinear",  # digits only: bilinear | nearest
    },
    "model": {
        "scheme": None,  # null: named after the keys below; else one of relpos.families.SCHEMES, which sets them
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "dropout": 0.0,
        "use_relative_position": True,
        "position_embedding": "auto",
        "bias_type": DEFAULT_BIAS_TYPE,
        "init_std": 0.02,
        "attn_impl": "auto",
        "class_token": False,  # classify from a class token (a 2D bias then needs bias_type 2d_cls)
        "share_bias": False,  # one relative position bias shared by all blocks
        "rpb": {},
        "rope": {},  # rotary options (theta, grid_indexing) with position_embedding rope_axial | rope_mixed
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
        "compile": "auto",  # torch.compile: auto (only when the run is long enough to pay) | true | false
        "tensorboard": False,  # also write TensorBoard event files into <run>/tensorboard/
    },
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

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
    "data.train_region": ("dataset?", {}),  # checked and normalized by relpos.data.build.resolve_data
    "data.val_region": ("dataset?", {}),
    "data.upsample": ("choice", {"choices": UPSAMPLE_MODES}),
    "model.scheme": ("str?", {}),  # checked against relpos.families.SCHEMES by _apply_scheme
    "model.embed_dim": ("int", {"minimum": 1, "maximum": 65536}),
    "model.depth": ("int", {"minimum": 1, "maximum": 1000}),
    "model.num_heads": ("int", {"minimum": 1, "maximum": 4096}),
    "model.mlp_ratio": ("float", {"minimum": 0.0, "min_inclusive": False}),
    "model.dropout": ("float", {"minimum": 0.0, "maximum": 1.0, "max_inclusive": False}),
    "model.use_relative_position": ("bool", {}),
    "model.position_embedding": ("choice", {"choices": POSITION_EMBEDDINGS}),
    "model.bias_type": ("choice", {"choices": BIAS_TYPES}),
    "model.init_std": ("float", {"minimum": 0.0}),
    "model.attn_impl": ("choice", {"choices": ATTN_IMPLS}),
    "model.class_token": ("bool", {}),
    "model.share_bias": ("bool", {}),
    "model.rpb": ("dict", {}),
    "model.rope": ("dict", {}),
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
    "train.compile": ("auto_bool", {}),
    "train.tensorboard": ("bool", {}),
}
# rpb keys the model fills itself; the config sets them through model.bias_type / model.init_std.
_RPB_RESERVED = tuple(k for k in RPB_KWARGS if not any(k in opts for opts in FAMILY_OPTIONS.values()))
# model.rope keys; the model fills head_dim, num_heads, grid_size, num_prefix_tokens, and mode comes
# from model.position_embedding.
_ROPE_OPTIONS = ("theta", "grid_indexing")


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    # short_repr: a value from a file may be huge or a shared-reference bomb; print 200 characters
    return ConfigError(f"{short_text(key)} = {short_repr(value)} is not allowed: {allowed}")


def _check_value(key: str, value: Any) -> Any:
    """Check one value against its spec; returns it normalized (e.g. int -> float for floats)."""
    kind, opts = _SPEC[key]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise _fail(key, value, f"a value is required ({_describe(kind, opts)})")
    if kind == "dataset":  # the dataset's own rules check it (relpos.data.build.resolve_data)
        return copy.deepcopy(value)
    if kind == "name":
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise _fail(key, value, "1-100 characters of letters, digits, '.', '_' or '-', starting "
                        "with a letter or digit (it becomes a folder name)")
        return value
    if kind == "auto_bool":  # true, false or auto (YAML reads true / false as booleans)
        if not isinstance(value, bool) and value != "auto":
            raise _fail(key, value, "auto, true or false")
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
    if kind == "auto_bool":
        return "auto, true or false"
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
    try:
        cfg["data"] = resolve_data(cfg["data"])  # the datasets' own defaults and rules
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_model(cfg: dict) -> None:
    """Everything the model would refuse, checked on the config (no model is built)."""
    m, d = cfg["model"], cfg["data"]
    if m["embed_dim"] % m["num_heads"]:
        raise _fail("model.num_heads", m["num_heads"], f"a divisor of model.embed_dim ({m['embed_dim']})")
    for k in m["rpb"]:
        if k in _RPB_RESERVED:
            raise _fail(f"model.rpb.{k}", m["rpb"][k], "not set here: the model fills num_heads, window_size "
                        "and seq_len, and model.bias_type / model.init_std set the others")
    if m["rpb"] and not m["use_relative_position"]:
        raise _fail("model.rpb", m["rpb"], "{} unless model.use_relative_position is true")
    if m["share_bias"] and not m["use_relative_position"]:
        raise _fail("model.share_bias", True, "false unless model.use_relative_position is true (no bias to share)")
    rotary = position_parts(m["position_embedding"], m["use_relative_position"])[0]
    for k in m["rope"]:
        if k not in _ROPE_OPTIONS:
            raise _fail(f"model.rope.{k}", m["rope"][k], "not a rotary option: model.rope takes theta and "
                        "grid_indexing (the model fills the sizes; model.position_embedding sets the mode)")
    if m["rope"] and rotary is None:
        raise _fail("model.rope", m["rope"], "{} unless model.position_embedding is a rotary one "
                    "(rope_axial, rope_mixed, rope_axial+absolute, rope_mixed+absolute)")
    grid = d["img_size"] // d["patch_size"]
    if grid * grid > 65536:
        raise _fail("data.patch_size", d["patch_size"], f"large enough that the grid has at most 65536 patches "
                    f"(img_size {d['img_size']} gives {grid * grid})")
    kw = model_kwargs(cfg)
    if m["use_relative_position"]:
        try:  # the one resolution of the bias arguments, as the model does it, and the option values
            rpb = resolve_bias_kwargs(kw["rpb_kwargs"], num_heads=m["num_heads"], grid=(grid, grid),
                                      class_token=m["class_token"])
            family_options(rpb["bias_type"], rpb)
        except (TypeError, ValueError) as exc:
            msg = str(exc).replace("rpb_kwargs", "model.rpb")
            model = short_repr(cfg["model"], 400)
            raise ConfigError(f"model: {short_text(msg, 400)} (model = {model})") from None
    if rotary is not None:
        head_dim = m["embed_dim"] // m["num_heads"]
        try:  # the rotary arguments as the model resolves them: options, head_dim (a multiple of 4)
            resolve_rope_kwargs(kw["rope_kwargs"], head_dim=head_dim, num_heads=m["num_heads"], grid_size=(grid, grid),
                                mode=rotary, num_prefix_tokens=int(m["class_token"]))
        except (TypeError, ValueError) as exc:
            msg = str(exc).replace("rope_kwargs", "model.rope")
            raise ConfigError(f"model: {short_text(msg, 400)} (model.position_embedding = "
                              f"{m['position_embedding']!r}, head_dim = model.embed_dim / model.num_heads = "
                              f"{m['embed_dim']} / {m['num_heads']} = {head_dim})") from None
    # Refuse a model that would not fit in memory before anything is allocated (the estimate is
    # arithmetic on shapes; the budget is relpos.guards', RELPOS_MEMORY_BUDGET_MB). The model alone:
    # training is checked by check_training_memory (relpos.experiments.budget).
    what = (f"model (data.img_size {d['img_size']}, data.patch_size {d['patch_size']}, model.embed_dim "
            f"{m['embed_dim']}, model.depth {m['depth']}, model.num_heads {m['num_heads']}, model.mlp_ratio "
            f"{m['mlp_ratio']:g})")
    refuse_over_budget(lambda c: estimate_model_memory(**model_kwargs(c)), cfg,
                       baseline_sizes(cfg, DEFAULT_CONFIG), what)


def check_training_memory(cfg: dict) -> MemoryEstimate:
    """Refuse training a *resolved* config whose peak memory exceeds the budget; return the estimate.

    The estimate is :func:`relpos.experiments.budget.training_memory` (model, optimizer, a step's
    activations for ``train.batch_size``, data, sampler, loaders, per-epoch diagnostics);
    :func:`resolve_config` checks only the model, so a preset can be inspected that cannot train here.

    Raises:
        ConfigError: over the budget; the message names the key that drives the estimate (e.g.
            ``data.img_size``, ``train.batch_size``, ``model.mlp_ratio``, ``data.num_train``), the
            estimate with its largest parts and the limit.
    """
    return refuse_over_budget(training_memory, cfg, baseline_sizes(cfg, DEFAULT_CONFIG))


def resolve_training_config(cfg: dict) -> dict:
    """:func:`resolve_config`, then :func:`check_training_memory`: a config that can train here.

    Every way a run starts calls it before anything exists (``fit``, the CLI, ``jobs.start_run``,
    ``--queue``, sweeps, the Train page), so a run that would not fit makes no folder and no process.
    """
    out = resolve_config(cfg)
    check_training_memory(out)
    return out


def _apply_scheme(m: dict, given: dict) -> None:
    """Spell ``model.scheme`` out into the keys it stands for, or name the scheme the keys describe.

    A scheme sets the keys of :data:`relpos.families.SCHEMES` ``[scheme]``; a key the config gives
    itself must agree with it (``position_embedding: auto`` agrees with what auto means there), else
    it is a ConfigError naming both. Without a scheme, ``model.scheme`` is filled with the name of
    what the keys describe, so every resolved config names its scheme (and resolving is idempotent).

    Args:
        m: the merged ``model`` section (changed in place).
        given: the ``model`` section as the config gave it (before the defaults).
    """
    scheme = m["scheme"]
    if scheme is None:
        m["scheme"] = scheme_name(m["use_relative_position"], m["position_embedding"], m["bias_type"])
        return
    try:
        settings = scheme_settings(scheme)
    except ValueError:
        raise _fail("model.scheme", scheme, "one of " + ", ".join(SCHEMES)) from None
    for key, value in settings.items():
        current = m[key]
        if key == "position_embedding" and current == "auto":
            uses_bias = settings.get("use_relative_position", m["use_relative_position"])
            current = "none" if uses_bias else "absolute"
        if current == value:
            continue
        if key in given:
            raise _fail(f"model.{key}", m[key], f"{value!r} with model.scheme = {scheme!r}, which sets it "
                        f"(give model.scheme or model.{key}, not both)")
        m[key] = value


def _override_scheme(model: dict, key: str, value: Any) -> None:
    """Make a ``--set`` of a scheme key win over the config file instead of contradicting it.

    ``model.scheme=X`` drops the keys X sets from the file's ``model`` section (so a sweep can vary
    the scheme over a preset that spells out its own); setting one of those keys on a config that
    names a scheme first spells the scheme out, then drops it (the keys then say it all).
    """
    if key == "scheme":
        if isinstance(value, str) and value in SCHEMES:
            for k in SCHEMES[value]:
                model.pop(k, None)
        return
    scheme = model.get("scheme")
    if isinstance(scheme, str) and scheme in SCHEMES and key in SCHEMES[scheme]:
        for k, v in SCHEMES[scheme].items():
            model.setdefault(k, v)
        model.pop("scheme")


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
    _apply_scheme(out["model"], cfg.get("model") or {})
    _fill_data(out)
    _check_model(out)
    _check_train(out)
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(
            f"override {short_repr(item)} must look like section.key=value, e.g. train.epochs=5")
    key, _, text = item.partition("=")
    key = key.strip()
    # the same bounded safe loader as config files (size, depth and alias expansion limited)
    value = load_yaml(text, f"override {short_repr(item)}", error=ConfigError) if text.strip() else None
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(
            f"override {short_repr(item)}: {short_repr(key)} is not a dotted key such as train.epochs")
    return parts, value


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``--set`` style overrides (``"train.epochs=5"``; values parsed with ``yaml.safe_load``
    semantics by :func:`relpos._limits.load_yaml`, bounded like a config file).

    Returns a new dict; ``cfg`` is not modified. Keys are checked against the schema here (an
    unknown key raises ``ConfigError``); values are checked by :func:`resolve_config`.
    ``model.rpb.<name>=value`` sets one extra RelativePositionBias keyword, ``model.rope.<name>=value``
    one rotary option.
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
            if top == "model":
                _override_scheme(section, sub, value)
            section[sub] = value
        elif top == "model" and sub in ("rpb", "rope") and len(parts) == 3:
            options = section.get(sub)
            if not isinstance(options, dict):
                options = section[sub] = {}
            options[parts[2]] = value
        else:
            raise ConfigError(f"{'.'.join(parts)}: unknown key ({top}.{sub} is not a section)")
    return out


def model_kwargs(cfg: dict) -> dict:
    """``VisionTransformer`` keyword arguments of a *resolved* config."""
    d, m = cfg["data"], cfg["model"]
    rpb = None
    if m["use_relative_position"]:
        rpb = {**m["rpb"], "bias_type": m["bias_type"], "init_std": m["init_std"]}
    rotary = position_parts(m["position_embedding"], m["use_relative_position"])[0]
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
        "rope_kwargs": None if rotary is None else dict(m.get("rope") or {}),
    }


def build_model(cfg: dict) -> VisionTransformer:
    """The ``VisionTransformer`` a config describes (the config is resolved first)."""
    return VisionTransformer(**model_kwargs(resolve_config(cfg)))


# --------------------------------------------------------------------------- the app's run settings


def preset_config(preset: str | Path) -> dict:
    """The resolved config of a preset name (``configs/<preset>.yaml`` over the defaults) or of a
    config file (:func:`relpos.experiments.config_utils.preset_path` finds it)."""
    return resolve_config(load_config(preset_path(preset)))


def fresh_model(cfg: dict) -> VisionTransformer:
    """A new, untrained model for ``cfg`` (seeded by ``cfg["seed"]``), in eval mode, frozen.

    The global RNG is left as it was (the seed applies inside a forked RNG).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", 0)))
        model = build_model(cfg)
    return model.eval().requires_grad_(False)


def format_override(key: str, value: Any) -> str:
    """``"key=value"`` as ``--set`` takes it: YAML scalars (``true``, ``null``), lists and dicts as
    JSON (which YAML reads back), anything else as ``str``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{key}={text}"


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def changed_overrides(cfg: dict, overrides: dict[str, Any]) -> dict[str, Any]:
    """Only the ``overrides`` (dotted key -> value) whose value differs from ``cfg``, so a run
    records what was changed."""
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
    """The ``--set`` overrides for :data:`TRAIN_SETTINGS`: only what differs from ``cfg``.

    Switching the dataset also resets the values the old dataset fixed (channels, classes,
    split sizes) to ``None`` so the new dataset fills them.

    Raises:
        ValueError: a setting that is not in :data:`TRAIN_SETTINGS`.
    """
    unknown = set(settings) - set(TRAIN_SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; allowed: {', '.join(TRAIN_SETTINGS)}")
    out = changed_overrides(cfg, {TRAIN_SETTINGS[k]: v for k, v in settings.items()})
    if "data.dataset" in out:
        out.update({key: None for key in _DATASET_DERIVED})
    return out


def check_run_settings(cfg: dict, overrides: dict[str, Any], *, max_grid_side: int | None = None) -> dict:
    """Apply ``overrides`` to ``cfg``, resolve it for training and build the model once: a readable
    error now instead of a failed run later.

    Args:
        cfg: a config (resolved or not).
        overrides: dotted key -> value (as :func:`train_overrides` returns).
        max_grid_side: refuse a patch grid wider than this many patches per side (the app's limit:
            attention cost grows with the square of the number of patches); None: no limit.

    Returns:
        The resolved config.

    Raises:
        ConfigError: a bad key or value, or a run that would not fit in the memory budget
        (:func:`check_training_memory`). ValueError: the patch grid is over ``max_grid_side``, or
        the model cannot be built (e.g. ``embed_dim`` not divisible by ``num_heads``).
    """
    new = resolve_config(apply_overrides(copy.deepcopy(cfg), [format_override(k, v) for k, v in overrides.items()]))
    data = new["data"]
    side = data["img_size"] // data["patch_size"]
    if max_grid_side is not None and side > max_grid_side:
        raise ValueError(
            f"data.img_size / data.patch_size = {data['img_size']} / {data['patch_size']} gives a "
            f"{side}x{side} patch grid; the app trains at most {max_grid_side}x{max_grid_side} patches "
            "(attention cost grows with the square of the number of patches): raise the patch size"
        )
    check_training_memory(new)  # as resolve_training_config, after the app's more specific grid limit
    with torch.random.fork_rng(devices=[]):
        build_model(new)
    return new
