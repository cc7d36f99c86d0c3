"""Listing runs stays cheap (issue 15, part 2): ``jobs.list_runs`` over 100 runs, one with a 200 MB metrics.jsonl.

The reference, written here, is the listing as it was before (commit a77a73c): every run's whole
``metrics.jsonl`` read and parsed on every list, for the row's accuracy. Both list the same
generated runs root (in a temporary folder): 99 finished runs with a few epoch lines each, and one
run in its first epoch (no accuracy in its ``status.json`` yet, so relpos reads the last 64 KiB of
its metrics) whose ``metrics.jsonl`` holds 200 MB of realistic step lines.

Measured: wall time per list (interleaved rounds, medians; the ratio is relpos / reference per
round, then the median, lower is better) and peak Python memory of one list (``tracemalloc``, in a
separate call so it does not slow the timed ones). Targets: relpos well under a second, and memory
independent of the metrics file's size.

Usage: ``python -m benchmarks.listing_bench [--metrics-mb 200] [--rounds 5]`` (or the ``listing``
section of ``python -m benchmarks.run``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import md_table, mib, ms
from relpos import jobs
from relpos.experiments import rundir

N_RUNS = 100
TARGET_S = 1.0


# ----------------------------------------------------------------------------- the runs root


def make_runs_root(root: Path, n_runs: int = N_RUNS, metrics_mb: int = 200) -> None:
    """``n_runs`` run folders under ``root``; the last one's metrics.jsonl is ``metrics_mb`` MB of step lines."""
    for i in range(n_runs - 1):
        run = root / f"run-{i:03d}"
        rundir.atomic_write_json(run / rundir.STATUS_FILE, {
            "state": "done", "epoch": 5, "epochs": 5, "step": 500, "total_steps": 500, "created_at": 1.7e9 + i,
            "updated_at": 1.7e9 + i + 60, "eval_accuracy": 0.9, "best_accuracy": 0.9, "config_path": "configs/tiny.yaml",
            "overrides": ["train.epochs=5"]})
        with open(run / rundir.METRICS_FILE, "w", encoding="utf-8") as f:
            for e in range(1, 6):
                f.write(rundir.json_line({"kind": "epoch", "epoch": e, "step": 100 * e, "train_loss": 1.0 / e,
                                          "train_accuracy": 0.5 + e / 20, "eval_accuracy": 0.5 + e / 12.5}) + "\n")
    big = root / "run-big"
    rundir.atomic_write_json(big / rundir.STATUS_FILE, {
        "state": "running", "epoch": 1, "epochs": 2, "step": 10**6, "total_steps": 2 * 10**6,
        "created_at": 1.7e9 + n_runs, "updated_at": 1.7e9 + n_runs + 60})
    line = rundir.json_line({"kind": "step", "step": 123456, "epoch": 1, "train_loss": 0.123456789,
                             "train_accuracy": 0.9876, "lr": 0.000987654321, "seconds": 1234.5678,
                             "images_per_second": 4321.98765}) + "\n"
    chunk = (line * (4 * 2**20 // len(line))).encode()  # about 4 MB of lines
    with open(big / rundir.METRICS_FILE, "wb") as f:
        for _ in range(max(1, metrics_mb * 2**20 // len(chunk))):
            f.write(chunk)


# ----------------------------------------------------------------------------- the reference (the old listing)


def _old_read_metrics(run_dir: Path) -> list[dict]:
    try:
        text = (run_dir / rundir.METRICS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def _old_accuracy(status: dict, records: list[dict]) -> float | None:
    for key in ("eval_accuracy", "val_accuracy", "best_accuracy", "accuracy"):
        if isinstance(status.get(key), (int, float)):
            return float(status[key])
    for record in reversed(records):
        if record.get("kind", "epoch") == "epoch":
            for key in ("eval_accuracy", "val_accuracy", "accuracy", "train_accuracy"):
                if isinstance(record.get(key), (int, float)):
                    return float(record[key])
    return None


def reference_list_runs(root: Path) -> list[dict]:
    """The old ``list_runs`` reduced to its reading: status and the whole metrics file of every run."""
    rows = []
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        status = rundir.read_json(child / rundir.STATUS_FILE)
        if status is None:
            continue
        records = _old_read_metrics(child)
        rows.append({"name": child.name, "state": status.get("state"), "accuracy": _old_accuracy(status, records)})
    return rows


# ----------------------------------------------------------------------------- measuring


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(root: Path, rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds of both listings, then one traced call each; checks they agree on accuracy."""
    fns = {"relpos": lambda: jobs.list_runs(root), "reference": lambda: reference_list_runs(root)}
    new = {r["name"]: r["accuracy"] for r in fns["relpos"]()}
    old = {r["name"]: r["accuracy"] for r in fns["reference"]()}
    if new != old:
        raise AssertionError(f"the listings disagree: {sorted(set(new.items()) ^ set(old.items()))[:4]}")
    times: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(rounds):
        for name in (fns if r % 2 == 0 else reversed(list(fns))):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["relpos"], times["reference"])]
    return {name: {"median_s": statistics.median(times[name]), "peak": _peak(fns[name]),
                   "ratio": statistics.median(ratios) if name == "relpos" else 1.0} for name in fns}


def listing_section(metrics_mb: int = 200, rounds: int = 5) -> str:
    """The markdown table of the listing benchmark."""
    with tempfile.TemporaryDirectory(prefix="relpos-listing-") as tmp:
        root = Path(tmp) / "runs"
        t0 = time.perf_counter()
        make_runs_root(root, metrics_mb=metrics_mb)
        made_s = time.perf_counter() - t0
        size = (root / "run-big" / rundir.METRICS_FILE).stat().st_size
        res = measure(root, rounds)
    rows = [[name, ms(r["median_s"]), mib(r["peak"]), f"{r['ratio']:.4f}"] for name, r in res.items()]
    ok = res["relpos"]["median_s"] < TARGET_S
    return "\n\n".join([
        md_table(["listing", "median ms per list", "peak MiB (tracemalloc)", "time ratio relpos / reference"], rows),
        f"{N_RUNS} runs, one with a {size / 2**20:.0f} MiB metrics.jsonl (generated in {made_s:.1f} s); "
        f"{rounds} interleaved rounds. relpos reads each status.json and process.json (at most 1 MiB each) and "
        "64 KiB of the big run's metrics; the reference parses every metrics file whole. "
        f"Target (under {TARGET_S:.0f} s per list): {'met' if ok else 'NOT met'}.",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics-mb", type=int, default=200, help="size of the big run's metrics.jsonl (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    args = p.parse_args(argv)
    print(listing_section(args.metrics_mb, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
