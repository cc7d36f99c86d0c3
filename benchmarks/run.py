"""Run every benchmark and write the tables into BENCHMARKS.md.

Usage: ``python -m benchmarks.run [--quick] [--out BENCHMARKS.md] [--skip app,vit,rope,...]``
(``python benchmarks/run.py`` works too). The full run takes under ~10 minutes on 2 threads, the
quick one under 2. The tables replace the part of the output file between the ``results`` markers;
the hand-written notes around them are kept.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SECTIONS = ("equivalence", "module", "sweep", "gather", "rope", "vit", "threads", "compile", "listing", "app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and a shorter sweep (< 2 min)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"),
                   help="markdown file whose results block is replaced (default: BENCHMARKS.md)")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip, of {', '.join(SECTIONS)}")
    args = p.parse_args(argv)
    bad = [s for s in args.skip.split(",") if s and s not in SECTIONS]
    if bad:
        p.error(f"--skip got unknown section(s) {bad}; allowed: {', '.join(SECTIONS)}")
    return args


def write_results(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = f"{head}{BEGIN}\n{block}\n{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{block}\n{END}\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(common.THREADS)
    from benchmarks import app_bench, attention_bench, compile_bench, listing_bench, rope_bench, threads_bench, vit_bench

    start = time.perf_counter()
    rounds = 9 if args.quick else 25
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    env = common.environment()
    parts = [
        f"## Results ({'quick' if args.quick else 'full'} run)",
        f"Produced by `{command.strip()}` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- versions: {env['versions']}\n- CPU: {env['cpu']}\n- threads: {env['threads']}\n"
        f"- timing: interleaved rounds ({rounds}) after warm-up, medians; ratios are relpos / reference "
        "per round, then the median (lower is better).",
    ]
    for k, v in env.items():
        print(f"{k}: {v}", flush=True)
    ok = True
    records: list[dict] = []
    if "equivalence" not in skip:
        print("equivalence ...", flush=True)
        table, ok = attention_bench.equivalence()
        parts += ["### Equivalence: relpos vs reference, same weights (max abs difference)", table]
        if not ok:
            print("relpos and the reference DISAGREE: see the table", flush=True)
    if "module" not in skip or "gather" not in skip:
        print("module level ...", flush=True)
        table, records = attention_bench.module_level(rounds)
        parts += ["### Module level: qkv -> attention with 2D bias -> proj", table]
    if "sweep" not in skip:
        print("scaling sweep ...", flush=True)
        sides = [4, 8, 16, 32] if args.quick else [4, 8, 12, 16, 24, 32, 48, 64]
        table = attention_bench.scaling_sweep(sides, 5 if args.quick else 11)
        parts += ["### Scaling sweep (H=4, D=32, B = max(1, 1024 // N))", table]
    if "gather" not in skip and records:
        print("gather ...", flush=True)
        parts += ["### The bias gather alone, and its share of the module's time",
                  attention_bench.gather_share(rounds, records)]
    if "rope" not in skip:
        print("rope ...", flush=True)
        table, _ = rope_bench.rope_section(rounds)
        parts += ["### RoPE vs the 2D bias vs no position: MultiHeadAttention steps, ratios to no position "
                  "(benchmarks/rope_bench.py)", table]
    if "vit" not in skip:
        print("vit ...", flush=True)
        table, _ = vit_bench.vit_section(2 if args.quick else 5)
        parts += [f"### ViT (img 32, patch 4, embed 192, depth 6, heads 3, batch {vit_bench.BATCH}, AdamW(fused=True), "
                  "relative position bias)", table]
    if "threads" not in skip:
        print("threads ...", flush=True)
        parts += ["### Two runs at once: torch threads per run (benchmarks/threads_bench.py)",
                  threads_bench.threads_section(epochs=1, rounds=1 if args.quick else 2)]
    if "compile" not in skip:
        print("compile ...", flush=True)
        parts += ["### torch.compile on the default model: compile time, step time, break-even "
                  "(benchmarks/compile_bench.py)", compile_bench.compile_section(steps=20 if args.quick else 40)]
    if "listing" not in skip:
        print("listing ...", flush=True)
        mb = 50 if args.quick else 200
        parts += [f"### Listing runs: 100 runs, one with a {mb} MB metrics.jsonl, against the old full parse "
                  "(benchmarks/listing_bench.py)", listing_bench.listing_section(metrics_mb=mb, rounds=3 if args.quick else 5)]
    if "app" not in skip:
        print("app ...", flush=True)
        parts += ["### App: server-side render time at defaults (AppTest) and chart payloads",
                  app_bench.app_section()]
    parts.append(f"Total benchmark time: {time.perf_counter() - start:.0f} s.")
    block = "\n\n".join(parts)
    write_results(Path(args.out), block)
    print(block)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
