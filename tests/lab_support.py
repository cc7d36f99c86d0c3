"""Fabricated lab sweeps for the app's tests (imported as ``lab_support``).

A folder written the way :mod:`relpos.experiments.sweep` and :mod:`relpos.experiments.labs` write
one: ``<runs_root>/sweeps/<name>-<time>/sweep.yaml`` (the checked spec and its members), one run
folder per member (``config.yaml``, ``status.json`` done, and with ``checkpoints`` an untrained
``last.pt`` of the tiny preset), and ``results.csv`` with the rows given. Nothing trains.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import apply_overrides, build_model, format_override, resolve_config
from relpos.experiments.config_utils import load_config, save_config
from relpos.experiments.labs import check_evaluate, write_results
from relpos.experiments.rundir import update_status
from relpos.experiments.sweep_results import SWEEP_FILE

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
#: Placement regions of the tiny 8x8 images for a fabricated shift lab.
TINY_REGIONS = ("data.train_region=[0, 6]", "data.val_region=[2, 8]")


def tiny_cfg(*overrides: str) -> dict:
    return resolve_config(apply_overrides(load_config(TINY), list(overrides)))


def fabricate_lab_sweep(
    runs_root: Path,
    name: str,
    evaluate: Mapping[str, Any],
    schemes: Sequence[str],
    seeds: Sequence[int],
    results: Iterable[Mapping[str, Any]] = (),
    *,
    overrides: Sequence[str] = (),
    checkpoints: bool = False,
    state: str = "done",
    stamp: str = "20250101-000000",
) -> Path:
    """Write a finished (``state``) lab sweep with ``results`` as its results.csv; return its folder.

    ``results`` rows may give ``run`` as ``(scheme, seed)``: it becomes that member's folder name.
    """
    sweep_dir = runs_root / "sweeps" / f"{name}-{stamp}"
    sweep_dir.mkdir(parents=True)
    members = []
    now = time.time()
    for scheme in schemes:
        for seed in seeds:
            run = runs_root / f"{name}-{scheme.replace('+', '_')}-s{seed}"
            run.mkdir()
            cfg = tiny_cfg(*overrides, f"model.scheme={scheme}", f"seed={seed}")
            save_config(cfg, run / "config.yaml")
            update_status(run, state=state, best_accuracy=None, started_at=now - 10, finished_at=now,
                          sweep={"name": name, "dir": str(sweep_dir), "cell": {"model.scheme": scheme}, "seed": seed})
            if checkpoints:
                torch.manual_seed(seed)
                save_checkpoint(build_model(cfg), None, 1, {}, run / "last.pt", config=cfg)
            members.append({"cell": {"model.scheme": scheme}, "seed": seed, "run": str(run),
                            "overrides": [*overrides, format_override("model.scheme", scheme), f"seed={seed}"],
                            "key": f"model.scheme={scheme} seed={seed}"})
    save_config({"name": name, "description": f"fabricated {evaluate['kind']} lab", "base": "tiny",
                 "grid": {"model.scheme": list(schemes)}, "seeds": list(seeds), "set": list(overrides),
                 "cell_set": {}, "evaluate": check_evaluate(dict(evaluate)), "created": now,
                 "runs_root": str(runs_root), "members": members}, sweep_dir / SWEEP_FILE)
    rows = []
    for r in results:
        r = dict(r)
        if isinstance(r.get("run"), tuple):
            scheme, seed = r["run"]
            r["run"] = f"{name}-{scheme.replace('+', '_')}-s{seed}"
        rows.append(r)
    write_results(sweep_dir, rows)
    return sweep_dir


def transfer_rows(numbers: Mapping[str, Mapping[int, Sequence[float]]], *, n: int = 64) -> list[dict]:
    """results.csv rows of a transfer lab: ``{result scheme: {grid: [accuracy per seed]}}``; the member
    is the result scheme's first part (``"2d/bicubic"`` -> scheme ``2d``)."""
    rows = []
    for label, by_grid in numbers.items():
        for grid, accs in by_grid.items():
            for seed, acc in enumerate(accs):
                rows.append({"run": (label.split("/")[0], seed), "scheme": label, "seed": seed,
                             "eval": f"grid={grid}x{grid}", "accuracy": acc, "n": n})
    return rows


def long_rows(numbers: Mapping[str, Mapping[str, Sequence[float]]], *, n: int = 64) -> list[dict]:
    """results.csv rows of a shift or ablation lab: ``{scheme: {eval: [accuracy per seed]}}``."""
    return [{"run": (scheme, seed), "scheme": scheme, "seed": seed, "eval": ev, "accuracy": acc, "n": n}
            for scheme, by_eval in numbers.items() for ev, accs in by_eval.items() for seed, acc in enumerate(accs)]
