"""A sweep's results: each member's measures, the per-cell summary, and the files that hold them.

Read from the member run folders (the filesystem is the registry), so the app, the CLI and a later
look all see the same numbers (:mod:`relpos.experiments.sweep` queues the members)::

    <sweep_dir>/sweep.yaml    the resolved spec and its members (cell, seed, run folder)
    <sweep_dir>/runs.csv      one row per member: run, state, seed, the grid keys, best_val_acc,
                              steps_to_95, wall_s, params, error
    <sweep_dir>/summary.csv   one row per cell: the grid keys, n (finished), n_failed, n_pending,
                              acc_mean, acc_std, steps_to_95_mean, n_reached_95, wall_s_mean, params_mean
    <sweep_dir>/summary.md    the same, readable, accuracy as mean ± std

Measures: ``best_val_acc`` is the run's best validation accuracy (status, else its epoch lines);
``steps_to_95`` the step of the first epoch line with validation accuracy >= 0.95 (blank if never);
``wall_s`` the trainer's ``finished_at - started_at``; ``params`` from the status, else counted on
the model the run's ``config.yaml`` builds. ``acc_std`` is the sample standard deviation over seeds
(n - 1 in the denominator; blank below 2 finished members); failed, cancelled and missing members
count in ``n_failed``, not in ``n``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from relpos._fileio import atomic_write_bytes, display_name
from relpos.experiments import rundir, runfolder, runqueue
from relpos.experiments.config import ConfigError, build_model, resolve_config
from relpos.experiments.config_utils import load_config
from relpos.experiments.runproc import run_dirs

__all__ = [
    "MEASURES",
    "SWEEP_FILE",
    "list_sweeps",
    "load_sweep",
    "member_row",
    "summarize",
    "summary_rows",
]

SWEEP_FILE = "sweep.yaml"
RUN_COLUMNS = ("run", "state", "seed")
MEASURES = ("best_val_acc", "steps_to_95", "wall_s", "params")
SUMMARY_COLUMNS = ("n", "n_failed", "n_pending", "acc_mean", "acc_std", "steps_to_95_mean", "n_reached_95",
                   "wall_s_mean", "params_mean")
TARGET_ACCURACY = 0.95
FAILED_STATES = frozenset({"failed", "cancelled", "missing", runfolder.BROKEN})


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _params(run_dir: Path, status: dict, cache: dict) -> int | None:
    """The model's parameter count: from the status, else by building the run's config (cached)."""
    if _number(status.get("params")) is not None:
        return int(status["params"])
    config = run_dir / rundir.CONFIG_FILE
    if not config.is_file() or config.is_symlink():
        return None
    try:
        cfg = resolve_config(load_config(config))
        key = repr(cfg["data"]) + repr(cfg["model"])
        if key not in cache:
            with torch.random.fork_rng(devices=[]):
                cache[key] = sum(p.numel() for p in build_model(cfg).parameters())
        return cache[key]
    except (ConfigError, ValueError, TypeError, OSError):
        return None


def member_row(member: dict, grid_keys: Sequence[str], cache: dict | None = None) -> dict:
    """One row of ``runs.csv`` for a member (``run`` is its folder name; ``state`` "missing" if gone)."""
    run_dir = Path(member.get("run") or "")
    # Validated (a member's folder is untrusted data): a broken one is state "broken", with the reason.
    record = runfolder.read_run(run_dir, metrics=False) if isinstance(member.get("run"), str) and member["run"] else None
    row: dict[str, Any] = {"run": display_name(run_dir.name) if member.get("run") else "", "seed": member["seed"]}
    row.update({k: member["cell"].get(k) for k in grid_keys})
    if record is None:
        return {**row, "state": "missing", **dict.fromkeys(MEASURES), "error": None}
    status = record.status
    epochs = [r for r in rundir.read_metrics(run_dir) if r.get("kind") == "epoch"]
    accs = [a for a in (_number(r.get("eval_accuracy")) for r in epochs) if a is not None]
    best = _number(status.get("best_accuracy"))
    reached = next((r.get("step") for r in epochs
                    if (_number(r.get("eval_accuracy")) or 0.0) >= TARGET_ACCURACY), None)
    start, end = _number(status.get("started_at")), _number(status.get("finished_at"))
    error = record.reason if record.broken else status.get("error")
    return {
        **row, "state": record.shown_state,
        "best_val_acc": best if best is not None else (max(accs) if accs else None),
        "steps_to_95": reached,
        "wall_s": round(end - start, 2) if start is not None and end is not None else None,
        "params": _params(run_dir, status, {} if cache is None else cache),
        "error": str(error).splitlines()[0][:300] if error else None,
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summary_rows(rows: list[dict], grid_keys: Sequence[str]) -> list[dict]:
    """One row per cell (first-seen order): n finished, failures, accuracy mean and std over seeds."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(repr(r[k]) for k in grid_keys), []).append(r)
    out = []
    for members in cells.values():
        done = [r for r in members if r["state"] == "done"]
        acc_mean, acc_std = _mean_std([r["best_val_acc"] for r in done if r["best_val_acc"] is not None])
        reached = [r["steps_to_95"] for r in done if r["steps_to_95"] is not None]
        walls = [r["wall_s"] for r in done if r["wall_s"] is not None]
        params = [r["params"] for r in done if r["params"] is not None]
        out.append({
            **{k: members[0][k] for k in grid_keys},
            "n": len(done),
            "n_failed": sum(r["state"] in FAILED_STATES for r in members),
            "n_pending": sum(r["state"] in runqueue.ACTIVE_STATES for r in members),
            "acc_mean": acc_mean, "acc_std": acc_std,
            "steps_to_95_mean": _mean_std(reached)[0], "n_reached_95": len(reached),
            "wall_s_mean": _mean_std(walls)[0], "params_mean": _mean_std(params)[0],
        })
    return out


def _csv(rows: list[dict], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                         for c in columns])
    return buf.getvalue().encode()


def _markdown(sweep: dict, rows: list[dict], cells: list[dict], grid_keys: Sequence[str]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    def num(v: float | None, fmt: str = ".0f") -> str:
        return "–" if v is None else format(v, fmt)

    lines = [f"# Sweep {sweep['name']}", ""]
    if sweep.get("description"):
        lines += [sweep["description"], ""]
    done = sum(r["state"] == "done" for r in rows)
    failed = sum(r["state"] in FAILED_STATES for r in rows)
    lines += [f"Base `{sweep['base']}`, seeds {sweep['seeds']}, {len(rows)} members: {done} done, "
              f"{failed} failed, {len(rows) - done - failed} pending. Accuracy: best validation accuracy "
              "in %, mean ± std over seeds.", ""]
    head = [*grid_keys, "n", "accuracy (%)", f"steps to {TARGET_ACCURACY:.0%}", "wall s", "params", "failed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        acc = "–" if c["acc_mean"] is None else pct(c["acc_mean"]) + (
            "" if c["acc_std"] is None else f" ± {100 * c['acc_std']:.2f}")
        reach = "never" if c["n"] and not c["n_reached_95"] else num(c["steps_to_95_mean"]) + (
            "" if c["n_reached_95"] == c["n"] else f" ({c['n_reached_95']}/{c['n']} seeds)")
        cols = [*(str(c[k]) for k in grid_keys), str(c["n"]), acc, reach, num(c["wall_s_mean"], ".1f"),
                num(c["params_mean"]), str(c["n_failed"])]
        lines.append("| " + " | ".join(cols) + " |")
    failures = [r for r in rows if r["state"] in FAILED_STATES]
    if failures:
        lines += ["", "Failed members:", ""]
        lines += [f"- `{r['run'] or '(never queued)'}` (seed {r['seed']}, {r['state']}): {r['error'] or ''}"
                  for r in failures]
    return "\n".join(lines) + "\n"


def load_sweep(sweep_dir: str | Path) -> dict:
    """A sweep as it stands now: ``sweep.yaml`` plus ``runs`` and ``summary`` rows read from the members.

    Raises:
        FileNotFoundError: no ``sweep.yaml`` in ``sweep_dir``.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_config(sweep_dir / SWEEP_FILE)
    keys = list(sweep.get("grid") or {})
    cache: dict = {}
    rows = [member_row(m, keys, cache) for m in sweep.get("members") or []]
    return {**sweep, "dir": str(sweep_dir), "runs": rows, "summary": summary_rows(rows, keys)}


def summarize(sweep_dir: str | Path) -> dict:
    """Rebuild ``runs.csv``, ``summary.csv`` and ``summary.md`` from the member folders.

    Returns:
        :func:`load_sweep`'s dict.
    """
    sweep = load_sweep(sweep_dir)
    keys = list(sweep.get("grid") or {})
    sweep_dir = Path(sweep_dir)
    atomic_write_bytes(sweep_dir / "runs.csv", _csv(sweep["runs"], [*RUN_COLUMNS, *keys, *MEASURES, "error"]))
    atomic_write_bytes(sweep_dir / "summary.csv", _csv(sweep["summary"], [*keys, *SUMMARY_COLUMNS]))
    markdown = _markdown(sweep, sweep["runs"], sweep["summary"], keys)
    atomic_write_bytes(sweep_dir / "summary.md", markdown.encode())
    return sweep


def list_sweeps(root: str | Path | None = None) -> list[dict]:
    """The sweeps under ``root`` (default ``<runs root>/sweeps``), newest first.

    Each row: ``name``, ``dir``, ``created``, ``members`` (count), ``spec_path``. Folders without a
    readable ``sweep.yaml`` are skipped.
    """
    root = Path(root) if root is not None else runqueue.default_runs_root() / "sweeps"
    rows = []
    for child in run_dirs(root):
        try:
            sweep = load_config(child / SWEEP_FILE)
        except (OSError, ConfigError):
            continue
        rows.append({"name": sweep.get("name", child.name), "dir": str(child),
                     "created": sweep.get("created"), "members": len(sweep.get("members") or []),
                     "spec_path": sweep.get("spec_path")})
    return sorted(rows, key=lambda r: (r["created"] or 0, r["dir"]), reverse=True)
