"""Sweeps: one base config, a grid of ``--set`` keys times seeds, every member trained through the run queue.

A spec is a YAML file (``configs/sweeps/*.yaml``)::

    name: families              # letters, digits, '.', '_', '-' (default: the file's name)
    description: ...            # optional
    base: default               # a preset name or a config path (relative paths: from the spec's folder)
    grid:                       # --set keys -> lists of values; the cells are their product, in order
      model.scheme: [none, absolute, 2d]
    seeds: 3                    # a count (seeds 0, 1, 2) or a list of seeds; 1 to 20 per cell
    set: {train.epochs: 6}      # optional: fixed --set overrides for every member
    cell_set:                   # optional: more --set overrides for the cells with one grid value
      model.scheme=t5: {model.rpb.num_buckets: 16}   # (e.g. a family's options for its cells only)
    evaluate: {kind: transfer, grids: [6, 8, 12]}   # optional: a lab step once the members are done
                                # (relpos.experiments.labs: results.csv, results.md)

Command line (also the console script ``relpos-sweep``)::

    python -m relpos.experiments.sweep --spec configs/sweeps/families.yaml [--seeds N]
        [--set key=value ...] [--sweep-dir D] [--runs-root R] [--no-wait]

Every member's config is resolved before anything is queued (a bad cell fails the whole sweep, exit
2, with a message naming the key). Members are ordinary runs in the runs root (so the app lists
them) whose ``status.json`` carries ``sweep: {name, dir, cell, seed}``. The sweep folder
(``<runs_root>/sweeps/<name>-<YYYYmmdd-HHMMSS>`` or ``--sweep-dir``) holds::

    sweep.yaml    the resolved spec and its members (cell, seed, run folder)
    runs.csv      one row per member (state and measures); summary.csv one row per cell (n, acc_mean,
                  acc_std over seeds, ...); summary.md the same, readable
    (:mod:`relpos.experiments.sweep_results` reads the members and writes these; ``load_sweep``,
    ``list_sweeps`` and ``summarize`` are re-exported here)

Running a spec again into the same folder skips its finished members (and waits for the ones still
queued or running); failed and cancelled ones are queued again. Exit codes: 0 every member done,
1 some member failed or was cancelled, 2 a bad spec.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from relpos._fileio import sanitize_name
from relpos.experiments import runfolder, runqueue
from relpos.experiments.config import ConfigError, apply_overrides, format_override, resolve_training_config
from relpos.experiments.config_utils import load_config, preset_path, save_config
from relpos.experiments.labs import check_evaluate, evaluate_sweep
from relpos.experiments.sweep_results import SWEEP_FILE, list_sweeps, load_sweep, summarize

__all__ = [
    "SPEC_KEYS",
    "SweepSpecError",
    "expand",
    "list_sweeps",
    "load_spec",
    "load_sweep",
    "main",
    "run_sweep",
    "summarize",
]

#: Keys a spec may have (``base`` and ``grid`` or ``seeds`` are what make it a sweep).
SPEC_KEYS = ("name", "description", "base", "grid", "seeds", "set", "cell_set", "evaluate")
MAX_SEEDS = 20


class SweepSpecError(ValueError):
    """A sweep spec that cannot be run; the message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- the spec


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise SweepSpecError(
                f"seeds = {value!r} is not allowed: a count in 1..{MAX_SEEDS} or a list of seeds")
        return list(range(value))
    if isinstance(value, list) and 1 <= len(value) <= MAX_SEEDS and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value
    ) and len(set(value)) == len(value):
        return list(value)
    raise SweepSpecError(f"seeds = {value!r} is not allowed: a count in 1..{MAX_SEEDS} or a list of "
                         f"1..{MAX_SEEDS} distinct seeds >= 0")


def check_spec(spec: Any, *, source: str = "spec", default_name: str = "sweep") -> dict:
    """The checked, normalized spec: ``{name, description, base, grid, seeds (list), set (list of k=v)}``.

    Raises:
        SweepSpecError: an unknown key, a missing ``base``, an empty or non-list grid entry, seeds
            outside 1..20, a malformed ``set``; the message names ``source`` and the key.
    """
    if not isinstance(spec, dict):
        raise SweepSpecError(f"{source}: a sweep spec must be a mapping, got {type(spec).__name__}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise SweepSpecError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(SPEC_KEYS)}")
    name = spec.get("name", default_name)
    if not isinstance(name, str) or sanitize_name(name) != name:
        raise SweepSpecError(f"{source}: name = {name!r} is not allowed: letters, digits, '.', '_', '-' "
                             "(at most 48), starting with a letter or digit")
    base = spec.get("base")
    if not isinstance(base, str) or not base:
        raise SweepSpecError(f"{source}: base = {base!r} is not allowed: a preset name or a config path")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepSpecError(f"{source}: grid must map --set keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepSpecError(
                f"{source}: grid.{key} = {values!r} is not allowed: a non-empty list of values")
        if key == "seed":
            raise SweepSpecError(f"{source}: grid.seed is not allowed: give the seeds with 'seeds'")
    fixed = spec.get("set") or {}
    if isinstance(fixed, dict):
        fixed = [format_override(str(k), v) for k, v in fixed.items()]
    if not isinstance(fixed, list) or not all(isinstance(x, str) and "=" in x for x in fixed):
        raise SweepSpecError(
            f"{source}: set must be a mapping of --set keys to values, got {spec.get('set')!r}")
    clash = sorted({x.split("=", 1)[0].strip() for x in fixed} & set(grid))
    if clash:
        raise SweepSpecError(
            f"{source}: set and grid both give {clash}: each key is fixed or varied, not both")
    grid = {str(k): list(v) for k, v in grid.items()}
    return {
        "name": name, "description": str(spec.get("description") or ""), "base": base,
        "grid": grid, "seeds": _seeds(spec.get("seeds", 1)),
        "set": fixed, "cell_set": _cell_set(spec.get("cell_set"), grid, source),
        "evaluate": check_evaluate(spec.get("evaluate"), source=source, error=SweepSpecError),
    }


def _cell_set(value: Any, grid: dict, source: str) -> dict[str, list[str]]:
    """``cell_set`` checked: ``{"key=value" of a grid cell: ["k=v", ...]}`` (the cells' extra overrides)."""
    if not value:
        return {}
    conditions = {format_override(k, v) for k, values in grid.items() for v in values}
    if not isinstance(value, dict):
        raise SweepSpecError(f"{source}: cell_set must map 'key=value' of a grid cell to --set overrides, "
                             f"got {value!r}")
    out = {}
    for cond, items in value.items():
        if cond not in conditions:
            raise SweepSpecError(f"{source}: cell_set.{cond} is not allowed: the condition must be a grid key "
                                 f"and one of its values, one of {sorted(conditions)}")
        if not isinstance(items, dict) or not items:
            raise SweepSpecError(f"{source}: cell_set.{cond} = {items!r} is not allowed: a non-empty mapping "
                                 "of --set keys to values")
        clash = sorted({str(k) for k in items} & (set(grid) | {"seed"}))
        if clash:
            raise SweepSpecError(f"{source}: cell_set.{cond} sets {clash}, which the grid or the seeds vary")
        out[cond] = [format_override(str(k), v) for k, v in items.items()]
    return out


def load_spec(path: str | Path, *, seeds: int | None = None, overrides: Sequence[str] = ()) -> dict:
    """Read and check the spec in ``path``; ``seeds`` (a count) and ``overrides`` (``k=v``) from the CLI.

    The returned spec also has ``base_path`` (the config file of ``base``, resolved) and
    ``spec_path``. CLI overrides apply to every member after the spec's ``set``.

    Raises:
        SweepSpecError: a bad spec, a ``base`` that is neither a preset nor a file, an override of
            a grid key. FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    try:
        raw = load_config(path)
    except ConfigError as exc:
        raise SweepSpecError(str(exc)) from None
    spec = check_spec(raw, source=str(path), default_name=sanitize_name(path.stem, default="sweep"))
    if seeds is not None:
        spec["seeds"] = _seeds(seeds)
    extra = list(overrides)
    if not all(isinstance(x, str) and "=" in x for x in extra):
        raise SweepSpecError(f"--set items must look like key=value, got {extra!r}")
    clash = sorted({x.split("=", 1)[0].strip() for x in extra} & (set(spec["grid"]) | {"seed"}))
    if clash:
        raise SweepSpecError(f"--set {clash} is varied by the sweep (grid or seeds); change the spec instead")
    spec["set"] = spec["set"] + extra
    candidate = path.parent / spec["base"]
    try:
        is_file = candidate.suffix in (".yaml", ".yml") and candidate.is_file()
        base_path = candidate if is_file else preset_path(spec["base"])
    except FileNotFoundError as exc:
        raise SweepSpecError(f"{path}: base = {spec['base']!r} is not allowed: {exc}") from None
    spec.update(base_path=str(Path(base_path).resolve()), spec_path=str(path.resolve()))
    return spec


def expand(spec: dict) -> list[dict]:
    """Every member of a checked spec, cell by cell (grid order), seed by seed.

    Returns:
        ``[{"cell": {key: value}, "seed": s, "overrides": ["k=v", ...], "key": "..."}]``; the
        overrides are the spec's ``set``, the cell's values, its ``cell_set`` items and ``seed=s``,
        in that order.
    """
    keys = list(spec["grid"])
    extra_by_cond = spec.get("cell_set") or {}
    members = []
    for values in itertools.product(*(spec["grid"][k] for k in keys)):
        cell = dict(zip(keys, values))
        given = [format_override(k, v) for k, v in cell.items()]
        extra = [x for cond in given for x in extra_by_cond.get(cond, [])]
        for seed in spec["seeds"]:
            overrides = [*spec["set"], *given, *extra, f"seed={seed}"]
            key = _member_key(cell, seed, extra)
            members.append({"cell": cell, "seed": seed, "overrides": overrides, "key": key})
    return members


def _member_key(cell: dict, seed: int, extra: Sequence[str] = ()) -> str:
    return " ".join([*(format_override(k, v) for k, v in cell.items()), *extra, f"seed={seed}"])


def resolve_members(spec: dict, members: list[dict]) -> None:
    """Resolve every member's config now (nothing is queued when one fails).

    Raises:
        SweepSpecError: the config of a member is refused; the message names the cell and the key.
    """
    base = load_config(spec["base_path"])
    for m in members:
        try:
            resolve_training_config(apply_overrides(base, m["overrides"]))  # memory included
        except (ConfigError, ValueError) as exc:
            raise SweepSpecError(f"sweep {spec['name']!r}, cell {m['key']}: {exc}") from None


# ----------------------------------------------------------------------------- running


def _previous(sweep_dir: Path) -> dict:
    """The ``sweep.yaml`` an earlier run of a spec left in ``sweep_dir`` (empty if none)."""
    try:
        return load_config(sweep_dir / SWEEP_FILE)
    except (OSError, ConfigError):
        return {}


def run_sweep(
    spec: dict,
    *,
    sweep_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    wait: bool = True,
    progress: bool = True,
    poll_s: float = 1.0,
) -> dict:
    """Queue every member of ``spec`` (from :func:`load_spec`) not already done, wait, and summarize.

    Args:
        spec: a loaded spec.
        sweep_dir: the sweep folder (default ``<runs_root>/sweeps/<name>-<YYYYmmdd-HHMMSS>``); a
            folder of an earlier run of the spec keeps its finished members.
        runs_root: where the members' run folders go (default ``$RELPOS_RUNS_ROOT`` or ``checkpoints``).
        wait: wait for every member (the queue is reconciled every ``poll_s`` seconds); False
            returns once they are queued.
        progress: a tqdm bar on stderr while waiting.

    Returns:
        :func:`summarize`'s dict of the sweep folder.

    Raises:
        SweepSpecError: a member's config is refused (nothing is queued then).
    """
    members = expand(spec)
    resolve_members(spec, members)
    root = Path(runs_root) if runs_root is not None else runqueue.default_runs_root()
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else (
        root / "sweeps" / f"{spec['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    earlier = _previous(sweep_dir)
    previous = {m.get("key"): m.get("run") for m in earlier.get("members") or [] if isinstance(m, dict)}
    for m in members:
        run = previous.get(m["key"])
        state = _run_state(run)
        if state == "done" or state in runqueue.ACTIVE_STATES:
            m["run"] = run
            continue
        slug = "-".join(str(v) for v in m["cell"].values())
        tag = {"name": spec["name"], "dir": str(sweep_dir.resolve()), "cell": m["cell"], "seed": m["seed"]}
        m["run"] = str(runqueue.submit(spec["base_path"], m["overrides"], root,
                                       base=sanitize_name(f"{spec['name']}-{slug}-s{m['seed']}"),
                                       extra={"sweep": tag}))
    record = {k: v for k, v in spec.items()}
    record.update(created=earlier.get("created") or time.time(), runs_root=str(root.resolve()),
                  members=members)
    save_config(record, sweep_dir / SWEEP_FILE)
    summary = summarize(sweep_dir)
    if wait:
        summary = _wait(sweep_dir, root, members, progress, poll_s)
        if spec.get("evaluate"):  # the lab step: results.csv and results.md (relpos.experiments.labs)
            summary["lab"] = evaluate_sweep(sweep_dir)
    return summary


def _run_state(run: Any) -> str | None:
    """A member run's state, validated (:func:`relpos.experiments.runfolder.read_run`); None when unknown."""
    record = runfolder.read_run(run, metrics=False) if isinstance(run, str) and run else None
    return None if record is None else record.state


def _wait(sweep_dir: Path, root: Path, members: list[dict], progress: bool, poll_s: float) -> dict:
    bar = tqdm(total=len(members), unit="run", desc=sweep_dir.name, disable=not progress, dynamic_ncols=True)
    finished = 0
    try:
        while True:
            runqueue.reconcile(root)  # fails runs whose trainer died; starts what waits
            states = [_run_state(m["run"]) for m in members]
            now = sum(s not in runqueue.ACTIVE_STATES for s in states)
            if now != finished:
                bar.update(now - finished)
                finished = now
                summarize(sweep_dir)
            if finished == len(members):
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    return summarize(sweep_dir)


def main(argv: list[str] | None = None) -> int:
    """The CLI: 0 when every member is done, 1 when some failed or were cancelled, 2 for a bad spec."""
    p = argparse.ArgumentParser(prog="relpos-sweep", description="Train every cell x seed of a sweep spec "
                                "through the run queue and summarize the results.")
    p.add_argument("--spec", required=True, help="sweep spec (e.g. configs/sweeps/families.yaml)")
    p.add_argument("--seeds", type=int, help=f"seeds per cell (1..{MAX_SEEDS}), overriding the spec's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every member, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--sweep-dir", help="the sweep folder (default: <runs-root>/sweeps/<name>-<time>); "
                   "an earlier one keeps its finished members")
    p.add_argument("--runs-root",
                   help="folder of run directories (default: $RELPOS_RUNS_ROOT, else checkpoints)")
    p.add_argument("--no-wait", action="store_true", help="return once every member is queued")
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec, seeds=args.seeds, overrides=args.overrides)
        summary = run_sweep(spec, sweep_dir=args.sweep_dir, runs_root=args.runs_root, wait=not args.no_wait,
                            progress=sys.stderr.isatty())
    except (SweepSpecError, FileNotFoundError) as exc:
        print(f"relpos-sweep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relpos-sweep: stopped waiting; the members stay queued and run on", file=sys.stderr)
        return 130
    print(summary["dir"])
    print(Path(summary["dir"], "summary.md").read_text(), end="")
    if args.no_wait:
        return 0
    return 1 if any(r["state"] != "done" for r in summary["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
