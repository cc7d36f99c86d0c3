"""Timing, peak memory and environment helpers shared by the benchmark sections.

Timing: ``torch.utils.benchmark.Timer`` (with ``num_threads`` set explicitly), interleaved A/B
rounds after warm-up, medians over rounds, and ratios taken per round (both sides measured within
seconds of each other), then their median. The machine is shared, so the per-round ratio is the
robust number; absolute times are printed for scale.

Peak memory: the torch profiler with ``profile_memory=True``; every op's self allocation and every
free, ordered by time, summed into a running total whose maximum is the peak above the memory held
before the call (allocations an op frees before it returns, such as a fused kernel's per-thread
tiles, are not seen).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils import benchmark

THREADS = 2


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("numpy", "streamlit", "plotly"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs), torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        "threads": f"torch.get_num_threads() = {torch.get_num_threads()}",
    }


def _time_block(fn: Callable[[], object], number: int) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=THREADS)
    return timer.timeit(number).median  # seconds per call


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, block_s: float = 0.05, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Time each callable in interleaved rounds; ratios are against the first entry, per round.

    Returns ``{name: {"median_s", "min_s", "ratio", "min_ratio"}}`` where ``ratio`` is the median
    over rounds of ``t_name / t_first`` measured in the same round, and ``min_ratio`` the ratio of
    the fastest rounds (a cross-check: on a shared machine noise only ever adds time).
    """
    names = list(fns)
    per_call = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        per_call[name] = _time_block(fns[name], 1)
    numbers = {n: max(1, math.ceil(block_s / max(per_call[n], 1e-6))) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(_time_block(fns[n], numbers[n]))
    first = names[0]
    return {
        n: {
            "median_s": statistics.median(times[n]),
            "min_s": min(times[n]),
            "ratio": statistics.median(a / b for a, b in zip(times[n], times[first])),
            "min_ratio": min(times[n]) / min(times[first]),
        }
        for n in names
    }


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by ``fn()`` above what was held before it (profiler op granularity)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    points = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage]
    current = peak = 0
    for _, delta in sorted(points):
        current += delta
        peak = max(peak, current)
    return peak


def md_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"
