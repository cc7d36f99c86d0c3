"""The runs table behind the Train page: a run's config in columns, filters, groups, and a run's settings.

Streamlit-free (the app is one client): the page draws what these functions return.

* :func:`run_columns` reads a run directory into the columns the table shows: its position
  ``scheme``, ``seed``, ``preset`` and the ``changed`` keys (``key=value`` against the config it
  started from). A run started from the terminal has no ``config_path`` in its status; its preset is
  then the ``name`` in its ``config.yaml`` when such a preset exists.
* :func:`filter_runs` and :func:`group_runs` (accuracy mean ± sample std per group).
* :func:`compose_scheme` / :func:`split_scheme`: a scheme (:data:`relpos.families.SCHEMES`) as its two
  parts, what is added to the patches (an embedding) and what is added to the attention logits (a
  bias family), so a page can offer every scheme with two choices.
* :func:`run_overrides`: the ``--set`` overrides of the Train page's settings (scheme, family
  options, seed and :data:`relpos.experiments.config.TRAIN_SETTINGS`), only what differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from relpos._fileio import display_name, display_text
from relpos._validation import check_choice
from relpos.experiments import rundir, runfolder
from relpos.experiments.config import ConfigError, apply_overrides, format_override, resolve_config, train_overrides
from relpos.experiments.config_utils import list_presets, load_config, preset_path
from relpos.families import FAMILIES, POSITION_EMBEDDINGS, SCHEME_KEYS, SCHEMES, family_options

__all__ = [
    "BIAS_CHOICES",
    "EMBEDDING_CHOICES",
    "GROUP_KEYS",
    "changed_keys",
    "compose_scheme",
    "filter_runs",
    "group_runs",
    "read_run_config",
    "run_columns",
    "run_overrides",
    "seeds_from",
    "split_scheme",
]

#: What can be added to the patch embeddings: every ``position_embedding`` but "auto".
EMBEDDING_CHOICES: tuple[str, ...] = tuple(pe for pe in POSITION_EMBEDDINGS if pe != "auto")
#: What can be added to the attention logits: nothing, or a bias family.
BIAS_CHOICES: tuple[str, ...] = ("none", *FAMILIES)
#: Columns the runs table can be grouped by.
GROUP_KEYS: tuple[str, ...] = ("scheme", "preset", "seed", "state", "sweep", "changed")
_IGNORED = ("name", "description")  # config keys that name a run and change nothing it learns


# ----------------------------------------------------------------------------- schemes in two parts


def compose_scheme(embedding: str, bias: str) -> str:
    """The scheme of an embedding and a bias: ``("none", "2d") -> "2d"``, ``("absolute", "none") ->
    "absolute"``, ``("rope_mixed", "t5") -> "rope_mixed+t5"``.

    Raises:
        ValueError: ``embedding`` not in :data:`EMBEDDING_CHOICES` or ``bias`` not in :data:`BIAS_CHOICES`.
    """
    check_choice("embedding", embedding, EMBEDDING_CHOICES)
    check_choice("bias", bias, BIAS_CHOICES)
    if bias == "none":
        return embedding
    return bias if embedding == "none" else f"{embedding}+{bias}"


def split_scheme(scheme: str) -> tuple[str, str]:
    """``(embedding, bias)`` of a scheme, the inverse of :func:`compose_scheme`.

    Raises:
        ValueError: ``scheme`` is not one of :data:`relpos.families.SCHEMES`.
    """
    settings = SCHEMES[check_choice("scheme", scheme, tuple(SCHEMES))]
    bias = settings["bias_type"] if settings["use_relative_position"] else "none"
    return settings["position_embedding"], bias


# ----------------------------------------------------------------------------- a run's config


def read_run_config(run_dir: str | Path) -> dict | None:
    """The resolved config of a run: its ``config.yaml`` (written when it starts), else the config file
    and overrides its status names (a queued run); None when neither can be read or resolved."""
    run_dir = Path(run_dir)
    status = _status(run_dir)
    config = run_dir / rundir.CONFIG_FILE
    try:
        if config.is_file() and not config.is_symlink():
            return resolve_config(load_config(config))
        if isinstance(status.get("config_path"), str):
            return resolve_config(apply_overrides(load_config(status["config_path"]), status.get("overrides") or []))
    except (ConfigError, OSError, ValueError, TypeError):
        return None
    return None


def _status(run_dir: Path) -> Mapping[str, Any]:
    """The validated fields of a run's ``status.json`` (:func:`relpos.experiments.runfolder.read_run`)."""
    record = runfolder.read_run(run_dir, metrics=False)
    return record.status if record is not None else {}


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):  # an empty section adds no key (model.rpb: {} is "no options")
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def changed_keys(cfg: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """``key=value`` for every config key whose value in ``cfg`` differs from ``base`` (both resolved).

    The run's name and description are left out; when ``model.scheme`` changed, the keys it stands
    for (:data:`relpos.families.SCHEME_KEYS`) are left out too (the scheme says it).
    """
    new, old = _flatten(cfg), _flatten(base)
    out = {k: v for k, v in new.items() if k not in _IGNORED and old.get(k, None) != v}
    out.update({k: None for k in old if k not in new and k not in _IGNORED})  # e.g. a dropped model.rpb option
    if "model.scheme" in out:
        for key in SCHEME_KEYS:
            out.pop(f"model.{key}", None)
    return [format_override(k, v) for k, v in out.items()]


def _base_config(status: Mapping[str, Any], cfg: Mapping[str, Any] | None) -> tuple[str, dict | None]:
    """``(preset label, resolved config the run started from)``; ``("?", None)`` when unknown."""
    path = status.get("config_path")
    try:
        if isinstance(path, str) and Path(path).is_file():
            stem = Path(path).stem
            label = stem if stem in list_presets() and preset_path(stem).resolve() == Path(path).resolve() \
                else Path(path).name
            return label, resolve_config(load_config(path))
        name = cfg.get("name") if cfg else None
        if isinstance(name, str) and name in list_presets():
            return name, resolve_config(load_config(preset_path(name)))
    except (ConfigError, OSError, ValueError, TypeError):
        pass
    return (Path(path).name if isinstance(path, str) else "?"), None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def run_columns(run_dir: str | Path) -> dict[str, Any]:
    """The config columns of one run, read from its folder.

    Returns:
        ``{"scheme", "seed", "preset", "changed" (list of key=value), "epochs", "num_val",
        "wall_s" (finished_at - started_at, None unless both), "sweep" (its sweep's name or None)}``;
        ``scheme``/``seed``/``epochs``/``num_val`` are None and ``preset`` "?" when nothing can be read.
    """
    run_dir = Path(run_dir)
    status = _status(run_dir)
    cfg = read_run_config(run_dir)
    preset, base = _base_config(status, cfg)
    start, end = _number(status.get("started_at")), _number(status.get("finished_at"))
    sweep = status.get("sweep")
    return {
        "scheme": cfg["model"]["scheme"] if cfg else None,
        "seed": cfg["seed"] if cfg else None,
        "preset": display_name(preset),  # a file name from the run folder: display-safe
        "changed": changed_keys(cfg, base) if cfg and base else [],
        "epochs": cfg["train"]["epochs"] if cfg else None,
        "num_val": cfg["data"]["num_val"] if cfg else None,
        "wall_s": round(end - start, 2) if start is not None and end is not None and end >= start else None,
        "sweep": display_text(sweep["name"], 200) if sweep and isinstance(sweep.get("name"), str) else None,
    }


# ----------------------------------------------------------------------------- filter and group


def _cell_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "nothing"
    return "" if value is None else str(value)


def filter_runs(rows: Iterable[Mapping[str, Any]], text: str) -> list[Mapping[str, Any]]:
    """The rows where every whitespace-separated word of ``text`` occurs (any case) in the run's name,
    state, scheme, preset, seed, sweep or changed keys; all rows for an empty ``text``."""
    words = [w.lower() for w in str(text or "").split()]
    out = []
    for r in rows:
        hay = " ".join(_cell_text(r.get(k)) for k in ("name", *GROUP_KEYS)).lower()
        if all(w in hay for w in words):
            out.append(r)
    return out


def group_runs(rows: Iterable[Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    """One row per value of column ``key`` (first-seen order): runs, how many have an accuracy, its
    mean and sample standard deviation (n - 1; None below two), and the best.

    Raises:
        ValueError: ``key`` is not one of :data:`GROUP_KEYS`.
    """
    check_choice("key", key, GROUP_KEYS)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_cell_text(r.get(key)) or "–", []).append(r)
    out = []
    for value, members in groups.items():
        accs = [a for a in (_number(m.get("accuracy")) for m in members) if a is not None]
        mean = sum(accs) / len(accs) if accs else None
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else None
        out.append({key: value, "runs": len(members), "n": len(accs), "acc_mean": mean, "acc_std": std,
                    "acc_best": max(accs) if accs else None})
    return out


# ----------------------------------------------------------------------------- the Train page's settings


def run_overrides(cfg: Mapping[str, Any], *, scheme: str, options: Mapping[str, Any] | None = None,
                  seed: int | None = None, **settings: Any) -> dict[str, Any]:
    """The overrides (dotted key -> value) of a run of resolved config ``cfg`` with these settings.

    Args:
        cfg: the preset's resolved config.
        scheme: one of :data:`relpos.families.SCHEMES`.
        options: the options of the scheme's bias family (:attr:`BiasFamily.options`); values equal
            to the family's defaults are left out, and so are options of a scheme without a bias.
        seed: the run's seed (None: the preset's).
        **settings: :data:`relpos.experiments.config.TRAIN_SETTINGS` values (dataset, img_size, ...).

    Returns:
        Only what differs from ``cfg``: ``model.scheme`` when the scheme changes, ``model.rpb`` (a
        whole dict) when the family options change, ``seed``, and the settings.

    Raises:
        ValueError: an unknown scheme or setting, or a family option out of range.
    """
    embedding, bias = split_scheme(scheme)
    out: dict[str, Any] = {}
    if scheme != cfg["model"]["scheme"]:
        out["model.scheme"] = scheme
    rpb: dict[str, Any] = {}
    if bias != "none":
        chosen = family_options(bias, {k: v for k, v in (options or {}).items() if k in FAMILIES[bias].options})
        rpb = {k: v for k, v in chosen.items() if v != FAMILIES[bias].options[k]}
    if rpb != dict(cfg["model"].get("rpb") or {}):
        out["model.rpb"] = rpb
    if seed is not None and int(seed) != cfg["seed"]:
        out["seed"] = int(seed)
    out.update(train_overrides(dict(cfg), **settings))
    return out


def seeds_from(first: int, repeat: int) -> list[int]:
    """``repeat`` consecutive seeds starting at ``first`` (the Train page's "repeat x N seeds")."""
    return [int(first) + k for k in range(max(1, int(repeat)))]
