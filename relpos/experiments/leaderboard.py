"""Sweeps for the Experiments page: build a spec, count and time it, queue it, and read its leaderboard.

Streamlit-free (the app is one client; the page draws what these functions return). Queuing goes
through :func:`relpos.experiments.sweep.load_spec` and :func:`~relpos.experiments.sweep.run_sweep`,
as the CLI does, so a sweep started here and one started from a terminal are the same thing: a
folder ``<runs root>/sweeps/<name>-<YYYYmmdd-HHMMSS>/`` whose members wait in the one run queue.

* :func:`build_spec`: a spec from a page's choices (schemes, their family options through the
  spec's ``cell_set``, keys to vary, seeds); :func:`count_runs` and :func:`estimate` say how many
  runs and about how long, from measured wall times of finished runs of the same preset, else from
  the figure in the preset's header comment (:func:`header_seconds`), and say which.
* :func:`queue_sweep`, :func:`prepare_lesson` (the demo set, ``configs/sweeps/lesson.yaml``, always
  into ``<runs root>/sweeps/lesson`` so preparing again only re-queues what is missing) and
  :func:`lesson_state`.
* :func:`leaderboard_rows` (one row per cell, best first) and :func:`sweep_curves` (every
  member's validation curve, grouped by cell) of :func:`relpos.experiments.sweep.load_sweep`'s dict;
  :func:`sweep_signature` changes whenever a member writes, for caches.

About 420 lines, a little over the house limit: building, timing, queuing and reading a sweep are the
page's one subject, and each part is a few short functions.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relpos._fileio import sanitize_name
from relpos._limits import load_yaml
from relpos.experiments import rundir, runfolder, runqueue
from relpos.experiments.config import ConfigError, apply_overrides, format_override, resolve_config
from relpos.experiments.config_utils import configs_dir, list_presets, load_config, save_config
from relpos.experiments.run_table import read_run_config, split_scheme
from relpos.experiments.sweep import SweepSpecError, check_spec, expand, load_spec, run_sweep
from relpos.experiments.sweep_results import SWEEP_FILE
from relpos.families import FAMILIES

__all__ = [
    "LESSON_DIR",
    "LESSON_SPEC",
    "MAX_APP_SEEDS",
    "SPEC_FILE",
    "VARY_KEYS",
    "build_spec",
    "cell_label",
    "count_runs",
    "estimate",
    "header_seconds",
    "leaderboard_rows",
    "lesson_state",
    "parse_values",
    "prepare_lesson",
    "queue_sweep",
    "spec_files",
    "sweep_curves",
    "sweep_signature",
    "sweeps_root",
]

#: The demo set's spec (in ``configs/sweeps/``) and its one folder under ``<runs root>/sweeps/``.
LESSON_SPEC = "lesson.yaml"
LESSON_DIR = "lesson"
#: The spec a sweep built in the app is saved as, inside its sweep folder.
SPEC_FILE = "spec.yaml"
#: Seeds per cell the app offers.
MAX_APP_SEEDS = 5
#: Config keys the app offers to vary (besides the scheme).
VARY_KEYS: tuple[str, ...] = ("train.epochs", "train.lr", "train.batch_size", "train.weight_decay",
                              "model.depth", "model.num_heads", "model.embed_dim", "data.img_size",
                              "data.patch_size")
# Figures in a preset's header comment: "68 s wall", "about a minute", "a couple of seconds".
_HEADER_TIMES = ((re.compile(r"(\d+(?:\.\d+)?)\s*s(?:econds)?\s+wall"), None),
                 (re.compile(r"about a minute"), 60.0),
                 (re.compile(r"a couple of seconds"), 3.0))


def sweeps_root(runs_root: str | Path) -> Path:
    """The folder of the sweeps of a runs root (``<runs_root>/sweeps``, where the CLI puts them)."""
    return Path(runs_root) / "sweeps"


def spec_files(folder: str | Path | None = None) -> list[Path]:
    """The shipped sweep specs (``configs/sweeps/*.yaml``), sorted by name."""
    folder = Path(folder) if folder is not None else configs_dir() / "sweeps"
    return sorted(p for p in folder.glob("*.yaml") if p.is_file() and not p.is_symlink())


# ----------------------------------------------------------------------------- building a spec


def parse_values(text: str, key: str = "values") -> list:
    """``"0.001, 0.003"`` -> ``[0.001, 0.003]``: comma-separated YAML scalars, empty items dropped.

    Raises:
        ValueError: an item that is not a YAML scalar; the message names ``key``.
    """
    values = []
    for item in str(text or "").split(","):
        if not item.strip():
            continue
        value = load_yaml(item.strip(), f"{key} value {item.strip()!r}")
        if isinstance(value, (list, dict)) or value is None:
            raise ValueError(f"{key}: {item.strip()!r} is not allowed: a number, true/false or a word")
        values.append(value)
    return values


def build_spec(name: str, base: str, schemes: Sequence[str], *, options: Mapping[str, Mapping[str, Any]] | None = None,
               vary: Mapping[str, Sequence[Any]] | None = None, seeds: int = 1, description: str = "") -> dict:
    """A sweep spec (the YAML's dict) from a page's choices.

    Args:
        name: the sweep's name (sanitized).
        base: a preset name.
        schemes: the position schemes to compare (``model.scheme`` values), in order.
        options: scheme -> its bias family's options; only values other than the family's defaults
            are kept, as ``cell_set`` entries for that scheme's cells.
        vary: more ``--set`` keys -> lists of values (the grid is their product with the schemes).
        seeds: seeds per cell (1 .. :data:`MAX_APP_SEEDS`).
        description: one line.

    Raises:
        SweepSpecError: no scheme, a duplicate, or a spec :func:`relpos.experiments.sweep.check_spec` refuses.
    """
    schemes = list(schemes)
    if not schemes or len(set(schemes)) != len(schemes):
        raise SweepSpecError(f"schemes = {schemes!r} is not allowed: one or more distinct schemes")
    if not isinstance(seeds, int) or not 1 <= seeds <= MAX_APP_SEEDS:
        raise SweepSpecError(f"seeds = {seeds!r} is not allowed: 1 to {MAX_APP_SEEDS} in the app")
    grid: dict[str, list] = {"model.scheme": schemes}
    grid.update({k: list(v) for k, v in (vary or {}).items() if k != "model.scheme"})
    cell_set = {}
    for scheme in schemes:
        bias = split_scheme(scheme)[1]
        if bias == "none":
            continue
        defaults = FAMILIES[bias].options
        changed = {f"model.rpb.{k}": v for k, v in (options or {}).get(scheme, {}).items()
                   if k in defaults and v != defaults[k]}
        if changed:
            cell_set[format_override("model.scheme", scheme)] = changed
    spec = {"name": sanitize_name(name, default="sweep"), "description": description, "base": base,
            "grid": grid, "seeds": seeds}
    if cell_set:
        spec["cell_set"] = cell_set
    check_spec(spec, source="the sweep built here")
    return spec


def count_runs(spec: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(cells, seeds per cell, runs)`` of a checked or raw spec."""
    checked = spec if "cell_set" in spec and isinstance(spec.get("seeds"), list) else check_spec(dict(spec))
    members = expand(dict(checked))
    seeds = len(checked["seeds"])
    return len(members) // seeds, seeds, len(members)


# ----------------------------------------------------------------------------- how long it takes


def header_seconds(preset: str) -> float | None:
    """The wall time of one run of ``preset`` its YAML's header comment states (``"68 s wall"``,
    ``"about a minute"``), else None."""
    try:
        text = (configs_dir() / f"{preset}.yaml").read_text(encoding="utf-8")
    except OSError:
        return None
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    joined = " ".join(header)
    for pattern, seconds in _HEADER_TIMES:
        match = pattern.search(joined)
        if match:
            return float(match.group(1)) if seconds is None else seconds
    return None


def _preset_epochs(preset: str) -> int | None:
    try:
        return int(resolve_config(load_config(configs_dir() / f"{preset}.yaml"))["train"]["epochs"])
    except (ConfigError, OSError, ValueError, TypeError, KeyError):
        return None


def _per_run(preset: str, epochs: int, runs: Sequence[Mapping[str, Any]]) -> tuple[float | None, str]:
    finished = [r for r in runs if r.get("state") == "done" and r.get("preset") == preset
                and r.get("wall_s") and r.get("epochs")]
    same = [float(r["wall_s"]) for r in finished if r["epochs"] == epochs]
    if same:
        return statistics.median(same), f"measured: median wall time of {len(same)} finished '{preset}' run(s)"
    if finished:
        per_epoch = statistics.median(float(r["wall_s"]) / r["epochs"] for r in finished)
        return per_epoch * epochs, (f"measured: {len(finished)} finished '{preset}' run(s), "
                                    f"scaled to {epochs} epochs")
    seconds, own = header_seconds(preset), _preset_epochs(preset)
    if seconds is not None and own:
        return seconds * epochs / own, f"from configs/{preset}.yaml's header ({seconds:g} s for {own} epochs)"
    return None, f"unknown: no finished '{preset}' run yet and no time in configs/{preset}.yaml's header"


def estimate(spec: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], *, limit: int | None = None) -> dict:
    """How many runs a spec queues and about how long they take.

    Args:
        spec: a spec (raw or checked); its ``base`` is a preset name.
        runs: rows with ``state``, ``preset``, ``epochs`` and ``wall_s`` (the runs table's rows).
        limit: runs at once (default :func:`relpos.experiments.runqueue.max_concurrent_runs`).

    Returns:
        ``{"cells", "seeds", "runs", "per_run_s" (None if unknown), "total_s" (None if unknown),
        "limit", "source" (where the time comes from, in words)}``. The total assumes the runs go
        ``limit`` at a time, each on its share of the cores (the queue caps their threads).
    """
    checked = check_spec(dict(spec)) if not isinstance(spec.get("seeds"), list) else dict(spec)
    cells, seeds, n = count_runs(checked)
    limit = runqueue.max_concurrent_runs() if limit is None else int(limit)
    base = str(checked["base"])
    preset = base if base in list_presets() else Path(base).stem
    try:
        epochs_of = resolve_config(apply_overrides(load_config(configs_dir() / f"{preset}.yaml"),
                                                   checked["set"]))["train"]["epochs"]
    except (ConfigError, OSError, ValueError, TypeError):
        epochs_of = _preset_epochs(preset) or 1
    counts = Counter(
        next((int(o.split("=", 1)[1]) for o in m["overrides"][::-1] if o.startswith("train.epochs=")), epochs_of)
        for m in expand(checked))  # epochs -> members (the last train.epochs override wins)
    total, sources = 0.0, set()
    for epochs, k in counts.items():
        seconds, source = _per_run(preset, epochs, runs)
        sources.add(source)
        total = None if seconds is None or total is None else total + k * seconds
    per_run = None if total is None or not n else total / n
    return {"cells": cells, "seeds": seeds, "runs": n, "limit": limit, "per_run_s": per_run,
            "total_s": None if per_run is None else math.ceil(n / limit) * per_run,
            "source": "; ".join(sorted(sources))}


# ----------------------------------------------------------------------------- queuing


def _new_sweep_dir(runs_root: Path, name: str) -> Path:
    base = sweeps_root(runs_root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free sweep folder named {base.name}-N under {base.parent}")


def queue_sweep(spec: str | Path | Mapping[str, Any], runs_root: str | Path, *, seeds: int | None = None,
                sweep_dir: str | Path | None = None) -> Path:
    """Queue every member of a sweep (as ``relpos-sweep --no-wait`` does) and return its folder.

    Args:
        spec: a spec file, or a spec dict (:func:`build_spec`), which is saved as ``spec.yaml`` in
            the new sweep folder first (so the folder says how to run it again).
        runs_root: where the members' run folders go; the sweep folder is under ``<runs_root>/sweeps``.
        seeds: seeds per cell instead of the spec's (``--seeds``).
        sweep_dir: the sweep folder (default: a new ``<name>-<YYYYmmdd-HHMMSS>``); an earlier run
            of the same spec there keeps its finished members.

    Raises:
        SweepSpecError: a bad spec or a member the config refuses (nothing is queued then).
        FileNotFoundError: no spec file.
    """
    root = Path(runs_root)
    created = None
    if isinstance(spec, Mapping):
        checked = check_spec(dict(spec), source="the sweep built here")
        if sweep_dir is None:
            sweep_dir = created = _new_sweep_dir(root, checked["name"])
        save_config(dict(spec), Path(sweep_dir) / SPEC_FILE)
        spec = Path(sweep_dir) / SPEC_FILE
    try:
        loaded = load_spec(spec, seeds=seeds)
        if sweep_dir is None:
            sweep_dir = created = _new_sweep_dir(root, loaded["name"])
        run_sweep(loaded, sweep_dir=sweep_dir, runs_root=root, wait=False, progress=False)
    except (SweepSpecError, FileNotFoundError):
        if created is not None and not (created / SWEEP_FILE).exists():  # leave no empty sweep behind
            (created / SPEC_FILE).unlink(missing_ok=True)
            created.rmdir()
        raise
    return Path(sweep_dir)


def prepare_lesson(runs_root: str | Path) -> Path:
    """Queue the demo set (``configs/sweeps/lesson.yaml``) into ``<runs_root>/sweeps/lesson``.

    Members already done or still queued/running there are kept; failed or cancelled ones are
    queued again. Returns the folder.
    """
    folder = sweeps_root(runs_root) / LESSON_DIR
    return queue_sweep(configs_dir() / "sweeps" / LESSON_SPEC, runs_root, sweep_dir=folder)


def lesson_state(runs_root: str | Path) -> dict | None:
    """The demo set's progress: ``{"dir", "total", "done", "failed", "active"}``, or None before
    it was ever prepared."""
    folder = sweeps_root(runs_root) / LESSON_DIR
    try:
        sweep = load_config(folder / SWEEP_FILE)
    except (OSError, ConfigError):
        return None
    states = [_member_state(m.get("run")) for m in sweep.get("members") or []]
    return {"dir": str(folder), "total": len(states), "done": states.count("done"),
            "failed": sum(s in ("failed", "cancelled", "missing") for s in states),
            "active": sum(s in runqueue.ACTIVE_STATES for s in states)}


def _member_state(run: Any) -> str:
    """A member run's state, validated (:func:`relpos.experiments.runfolder.read_run`): ``broken`` for a
    folder that fails its checks, ``missing`` for none."""
    record = runfolder.read_run(run, metrics=False) if isinstance(run, str) and run else None
    return "missing" if record is None else record.shown_state


# ----------------------------------------------------------------------------- reading a sweep


def sweep_signature(sweep_dir: str | Path) -> tuple:
    """Changes whenever the sweep or one of its members writes (modification times), for caches."""
    sweep_dir = Path(sweep_dir)

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    try:
        members = load_config(sweep_dir / SWEEP_FILE).get("members") or []
    except (OSError, ConfigError):
        return (str(sweep_dir), 0.0)
    runs = [Path(m["run"]) for m in members if isinstance(m, dict) and m.get("run")]
    return (str(sweep_dir), mtime(sweep_dir / SWEEP_FILE),
            *((mtime(r / rundir.STATUS_FILE), mtime(r / rundir.METRICS_FILE)) for r in runs))


def cell_label(cell: Mapping[str, Any], cell_set: Mapping[str, Sequence[str]] | None = None) -> str:
    """How a cell reads: its scheme alone (``"2d"``), else ``key=value`` items joined by `` · `` with
    the keys shortened to their last part; its ``cell_set`` options in brackets."""
    parts = [str(v) if k == "model.scheme" else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in cell.items()]
    extra = [x.rsplit(".", 1)[-1] for k, v in cell.items() for x in (cell_set or {}).get(format_override(k, v), [])]
    return " · ".join(parts) + (f" ({', '.join(extra)})" if extra else "")


def _num_val(members: Sequence[Mapping[str, Any]]) -> int | None:
    for m in members:
        cfg = read_run_config(m["run"]) if m.get("run") else None
        if cfg is not None:
            return int(cfg["data"]["num_val"])
    return None


def leaderboard_rows(sweep: Mapping[str, Any]) -> list[dict]:
    """One row per cell of a loaded sweep (:func:`relpos.experiments.sweep.load_sweep`), best first.

    Returns:
        ``[{"rank", "label", "cell", "n" (finished), "n_failed", "n_pending", "acc_mean", "acc_std"
        (sample std over seeds, None below two), "accs" (each finished seed's best validation
        accuracy), "val_images", "wall_s_mean", "params_mean", "steps_to_95_mean"}]``; cells without
        a finished member come last, in grid order.
    """
    keys = list(sweep.get("grid") or {})
    members = list(sweep.get("members") or [])
    runs = list(sweep.get("runs") or [])
    out = []
    for cell in sweep.get("summary") or []:
        picked = [(m, r) for m, r in zip(members, runs) if all(r.get(k) == cell[k] for k in keys)]
        key_cell = {k: cell[k] for k in keys}
        out.append({
            "label": cell_label(key_cell, sweep.get("cell_set")), "cell": key_cell,
            "n": cell["n"], "n_failed": cell["n_failed"], "n_pending": cell["n_pending"],
            "acc_mean": cell["acc_mean"], "acc_std": cell["acc_std"],
            "accs": [r["best_val_acc"] for _, r in picked if r["state"] == "done" and r["best_val_acc"] is not None],
            "val_images": _num_val([m for m, _ in picked]),
            "wall_s_mean": cell.get("wall_s_mean"), "params_mean": cell.get("params_mean"),
            "steps_to_95_mean": cell.get("steps_to_95_mean"),
        })
    out.sort(key=lambda r: (r["acc_mean"] is None, -(r["acc_mean"] or 0.0)))
    for rank, row in enumerate(out, start=1):
        row["rank"] = rank
    return out


def sweep_curves(sweep: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Every member's validation accuracy per logged epoch, grouped by cell (grid order).

    Returns:
        ``{cell label: [{"run" (folder name), "path", "seed", "state", "x" (steps, or epochs when a
        run logged no steps) (E,), "y" (accuracy) (E,)}]}``; members without a folder are left out.
    """
    keys = list(sweep.get("grid") or {})
    out: dict[str, list[dict]] = {}
    for m, r in zip(sweep.get("members") or [], sweep.get("runs") or []):
        label = cell_label({k: m["cell"].get(k) for k in keys}, sweep.get("cell_set"))
        group = out.setdefault(label, [])
        if not m.get("run"):
            continue
        points = [(rec.get("step", rec.get("epoch")), rec.get("eval_accuracy"))
                  for rec in rundir.read_metrics(m["run"]) if rec.get("kind") == "epoch"]
        points = [(float(x), float(y)) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))]
        xs, ys = (np.array(v, dtype=float) for v in zip(*points)) if points else (np.zeros(0), np.zeros(0))
        group.append({"run": Path(m["run"]).name, "path": m["run"], "seed": m["seed"], "state": r["state"],
                      "x": xs, "y": ys})
    return out


def is_active(sweep: Mapping[str, Any]) -> bool:
    """Whether a member of a loaded sweep is still queued or running."""
    return any(r.get("state") in runqueue.ACTIVE_STATES for r in sweep.get("runs") or [])
