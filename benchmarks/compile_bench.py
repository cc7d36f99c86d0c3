"""``torch.compile`` on the default model: what the first compiled step costs, what a step saves,
and so after how many steps compiling pays (the constants of ``relpos.experiments.compile``).

Usage: ``python -m benchmarks.compile_bench [--steps 40] [--threads N]`` prints the table
(``python -m benchmarks.run`` writes it into BENCHMARKS.md as the "compile" section).

Each measurement is a fresh process (``--worker``), so nothing is compiled in memory yet; both use
one new ``TORCHINDUCTOR_CACHE_DIR``: the first process compiles with a cold on-disk cache, the second
finds its kernels there (a warm cache: what a later run on the same machine pays). In each process:
a training step of the default preset (configs/default.yaml: batch 64, AdamW, grad clip, the LR
schedule; the same pieces as ``fit``) is timed eagerly, then compiled (``dynamic=False``, as
``train.compile`` does): the first compiled step less an eager one is the compile time (wall
clock: inductor compiles in worker processes); then blocks of 5 eager and 5 compiled steps
alternate, and the ratio is the median of the per-block ratios (a change of load hits both alike).
Threads: ``runqueue.threads_per_run()`` (what each run of the queue gets here), unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/compile_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "default.yaml"


def _steps_of(cfg: dict) -> int:
    """Training steps of a whole run of ``cfg`` (one process)."""
    return cfg["train"]["epochs"] * -(-cfg["data"]["num_train"] // cfg["train"]["batch_size"])


def worker(steps: int, threads: int) -> dict:
    """Time eager and compiled training steps of the default model in this process."""
    import torch
    from torch import nn

    from relpos.experiments.config import build_model, resolve_config
    from relpos.experiments.config_utils import load_config
    from relpos.experiments.engine import build_optimizer

    torch.set_num_threads(threads)
    cfg = resolve_config(load_config(CONFIG))
    d, t = cfg["data"], cfg["train"]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    total = _steps_of(cfg)
    optimizer, scheduler = build_optimizer(model, t, total, 0, torch.device("cpu"))
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(t["batch_size"], d["in_channels"], d["img_size"], d["img_size"])  # (B, C, H, W)
    y = torch.randint(0, d["num_classes"], (t["batch_size"],))

    def step(m: nn.Module) -> float:
        start = time.perf_counter()
        loss = criterion(m(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        optimizer.step()
        scheduler.step()
        return time.perf_counter() - start

    for _ in range(5):
        step(model)
    eager_before = statistics.median(step(model) for _ in range(10))
    compiled_model = torch.compile(model, dynamic=False)
    first = step(compiled_model)
    for _ in range(3):
        step(compiled_model)
    # Interleaved blocks of 5 steps, so that a change of load hits both kinds alike; ratios per block.
    eager, compiled = [], []
    for _ in range(max(1, steps // 5)):
        eager.append(sum(step(model) for _ in range(5)) / 5)
        compiled.append(sum(step(compiled_model) for _ in range(5)) / 5)
    return {"eager_s": statistics.median(eager), "compiled_s": statistics.median(compiled),
            "ratio": statistics.median(c / e for c, e in zip(compiled, eager)),
            "compile_s": first - eager_before, "threads": threads, "run_steps": total}


def measure(steps: int = 40, threads: int | None = None) -> list[dict]:
    """Two fresh processes sharing one new compile cache: ``[cold, warm]`` worker results."""
    if threads is None:
        from relpos.experiments.runqueue import threads_per_run

        threads = threads_per_run()
    out = []
    with tempfile.TemporaryDirectory(prefix="relpos-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        for label in ("cold", "warm"):
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.compile_bench", "--worker", "--steps", str(steps),
                 "--threads", str(threads)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
            )
            if proc.returncode:
                raise RuntimeError(f"compile_bench worker failed ({label}):\n{proc.stderr[-2000:]}")
            out.append({"cache": label, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return out


def compile_section(steps: int = 40, threads: int | None = None) -> str:
    """The markdown table of :func:`measure`, with the break-even and ``auto``'s constants."""
    from benchmarks.common import md_table
    from relpos.experiments.compile import MEASURED, break_even_steps, compile_pays

    results = measure(steps, threads)
    rows = []
    for r in results:
        saved = r["eager_s"] * (1.0 - r["ratio"])
        be = r["compile_s"] / saved if saved > 0 else float("inf")
        rows.append([r["cache"], f"{r['compile_s']:.1f}", f"{r['eager_s'] * 1e3:.1f}",
                     f"{r['compiled_s'] * 1e3:.1f}", f"{r['ratio']:.2f}", f"{be:.0f}"])
    cold = results[0]
    header = ["on-disk cache", "compile s", "eager ms/step", "compiled ms/step",
              "compiled / eager (per block)", "break-even steps"]
    verdict = "compiles" if compile_pays(cold["run_steps"], cold["eager_s"]) else "stays eager"
    note = (f"Default preset, batch 64, {cold['threads']} torch thread(s), {steps} timed steps each (medians). "
            f"`train.compile: auto` uses compile {MEASURED.compile_s:g} s and ratio {MEASURED.ratio:g} "
            f"(relpos/experiments/compile.py): break-even at this eager step "
            f"{break_even_steps(cold['eager_s']):.0f} steps; the default preset's {cold['run_steps']} steps: "
            f"auto {verdict}.")
    return md_table(header, rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each kind (medians)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: what a queued run gets)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.steps, args.threads or 1)))
        return 0
    print(compile_section(args.steps, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
