"""Two training runs on one machine: how many torch threads each should get.

Usage: ``python -m benchmarks.threads_bench [--epochs 1] [--rounds 1] [--set KEY=VALUE ...]`` prints the table
(``python -m benchmarks.run`` writes it into BENCHMARKS.md as the "threads" section).

Each run is the real CLI (``python -m relpos.experiments.train --config configs/default.yaml``,
eager: ``train.compile=false``) in its own process, with ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` =
``RELPOS_THREADS`` set as the run queue sets them. Three cases, each timed from the first launch to
the last exit (start-up included; rounds interleave the cases, medians):

- one run alone with all the cores' threads,
- two runs at once with all the cores' threads each (every run uncapped: they oversubscribe),
- two runs at once with cores // 2 threads each (what the queue gives each of its 2 runs).

The issue measured, on a quiet 2-core machine with the whole default preset: one run alone 13.9 s;
two at once with 2 threads each 55.5 s; two at once with 1 thread each 16.3 s for both. That is why
``relpos.experiments.runqueue`` gives each run cores // limit threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/threads_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "default.yaml"


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cases(cores: int | None = None) -> list[tuple[str, int, int]]:
    """``(label, runs at once, threads per run)`` of the three cases on ``cores`` cores."""
    cores = _cores() if cores is None else cores
    half = max(1, cores // 2)
    return [
        (f"one run alone, {cores} threads", 1, cores),
        (f"two at once, {cores} threads each", 2, cores),
        (f"two at once, {half} thread{'s' if half > 1 else ''} each", 2, half),
    ]


def run_case(runs: int, threads: int, epochs: int, workdir: Path, overrides: tuple[str, ...] = ()) -> float:
    """Wall seconds from launching ``runs`` trainers at once to the last one's exit (``overrides``:
    more ``--set`` items for every run, e.g. ``data.num_train=1024`` for a smoke test)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "RELPOS_THREADS": str(threads), "RELPOS_RUNS_ROOT": str(workdir / "root"), "PYTHONUNBUFFERED": "1"}
    env.pop("RELPOS_MAX_CONCURRENT_RUNS", None)
    procs = []
    start = time.perf_counter()
    for k in range(runs):
        run_dir = Path(tempfile.mkdtemp(prefix=f"run{k}-", dir=workdir))
        command = [sys.executable, "-m", "relpos.experiments.train", "--config", str(CONFIG), "--run-dir",
                   str(run_dir / "run"), "--set", f"train.epochs={epochs}", "--set", "train.compile=false"]
        for item in overrides:
            command += ["--set", item]
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    failed = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            failed.append(err[-1000:])
    seconds = time.perf_counter() - start
    if failed:
        raise RuntimeError("a trainer failed:\n" + "\n".join(failed))
    return seconds


def measure(epochs: int = 1, rounds: int = 1, overrides: tuple[str, ...] = ()) -> list[dict]:
    """Every case of :func:`cases`, ``rounds`` times interleaved: ``[{"case", "runs", "threads", "seconds"}]``."""
    found = cases()
    times: dict[int, list[float]] = {i: [] for i in range(len(found))}
    with tempfile.TemporaryDirectory(prefix="relpos-threads-") as tmp:
        for r in range(rounds):
            order = range(len(found)) if r % 2 == 0 else reversed(range(len(found)))
            for i in order:
                _, runs, threads = found[i]
                times[i].append(run_case(runs, threads, epochs, Path(tmp), overrides))
                print(f"  threads: {found[i][0]}: {times[i][-1]:.1f} s", flush=True)
    return [{"case": label, "runs": runs, "threads": threads, "seconds": statistics.median(times[i])}
            for i, (label, runs, threads) in enumerate(found)]


def threads_section(epochs: int = 1, rounds: int = 1, overrides: tuple[str, ...] = ()) -> str:
    """The markdown table of :func:`measure`."""
    from benchmarks.common import md_table

    results = measure(epochs, rounds, overrides)
    alone = results[0]["seconds"]
    rows = [[r["case"], f"{r['seconds']:.1f}", f"{r['seconds'] / r['runs']:.1f}", f"{r['seconds'] / alone:.2f}"]
            for r in results]
    header = ["case", "wall s (all done)", "wall s per run", "vs one alone"]
    capped, uncapped = results[2]["seconds"], results[1]["seconds"]
    sets = "".join(f", {item}" for item in overrides)
    note = (f"configs/default.yaml with train.epochs={epochs}, train.compile=false{sets}, through the CLI (start-up "
            f"included), median of {rounds} round(s). Two runs capped at cores // 2 threads finish "
            f"{uncapped / capped:.1f}x sooner than two uncapped runs.")
    return md_table(header, rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1, help="train.epochs of every run (the preset has 6)")
    p.add_argument("--rounds", type=int, default=1, help="times each case runs (medians)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="another config override for every run (repeatable)")
    args = p.parse_args(argv)
    print(threads_section(args.epochs, args.rounds, tuple(args.overrides)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
