"""Module-level attention benchmarks: relpos ``MultiHeadAttention`` against the Swin reference.

Sections: equivalence on the same weights, eval forward and train forward+backward at the issue's
configs, the scaling sweep over N, and the bias gather alone with its share of the module's time.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved, md_table, mib, ms, peak_memory_bytes
from benchmarks.reference import SwinReferenceAttention
from relpos import MultiHeadAttention

#: (window side, heads, head dim, batch) from the issue.
CONFIGS: list[tuple[int, int, int, int]] = [(7, 4, 32, 64), (14, 6, 64, 8), (16, 8, 64, 4), (32, 4, 32, 1)]
#: Targets (ratio relpos / reference), by window side.
EVAL_TARGET = {7: 1.0, 14: 0.9, 16: 0.9, 32: 0.35}
TRAIN_TARGET = {7: 1.0, 14: 1.0, 16: 1.0, 32: 0.55}


def build_pair(side: int, heads: int, head_dim: int, seed: int = 0) -> tuple[MultiHeadAttention, SwinReferenceAttention]:
    """A relpos module (default ``attn_impl="auto"``) and the reference with the same weights."""
    torch.manual_seed(seed)
    m = MultiHeadAttention(
        heads * head_dim, heads, use_relative_position=True, rpb_kwargs={"window_size": (side, side)}
    )
    with torch.no_grad():  # a bias that matters, so the equivalence check can fail
        m.relative_position_bias.relative_position_bias_table.normal_(0.0, 1.0)
    return m, SwinReferenceAttention.from_relpos(m)


def _grads(mod: torch.nn.Module, x: torch.Tensor, table: torch.Tensor) -> list[torch.Tensor]:
    mod.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_()
    out = mod(xg)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return [out.detach(), xg.grad, table.grad, mod.qkv.weight.grad, mod.proj.weight.grad]


def equivalence(configs=CONFIGS) -> tuple[str, bool]:
    """Max abs differences relpos vs reference: eval output; train output and gradients."""
    rows, ok = [], True
    for side, heads, head_dim, batch in configs:
        m, ref = build_pair(side, heads, head_dim)
        x = torch.randn(min(batch, 4), side * side, heads * head_dim)
        m.eval(), ref.eval()
        with torch.no_grad():
            d_eval = (m(x) - ref(x)).abs().max().item()
        m.train(), ref.train()
        a = _grads(m, x, m.relative_position_bias.relative_position_bias_table)
        b = _grads(ref, x, ref.relative_position_bias_table)
        diffs = [(u - v).abs().max().item() for u, v in zip(a, b)]
        good = d_eval < 1e-4 and all(d < 1e-3 for d in diffs)
        ok &= good
        rows.append([f"{side}x{side}", f"{d_eval:.1e}"] + [f"{d:.1e}" for d in diffs] + ["yes" if good else "**NO**"])
    header = ["window", "eval out", "train out", "d x", "d table", "d qkv.weight", "d proj.weight", "equal"]
    return md_table(header, rows), ok


def train_fn(mod: torch.nn.Module, x: torch.Tensor):
    """One training step of ``mod`` on ``x`` (forward, sum, backward), as a callable to time."""
    def fn() -> None:
        mod.zero_grad(set_to_none=True)
        x.grad = None
        mod(x).sum().backward()

    return fn


def eval_fn(mod: torch.nn.Module, x: torch.Tensor):
    """One no-grad forward of ``mod`` on ``x``, as a callable to time."""
    def fn() -> None:
        with torch.no_grad():
            mod(x)

    return fn


def module_level(rounds: int, configs=CONFIGS) -> tuple[str, list[dict]]:
    """Eval and train times, ratios and eval peak memory at the issue's configs."""
    rows, records = [], []
    for side, heads, head_dim, batch in configs:
        m, ref = build_pair(side, heads, head_dim)
        x = torch.randn(batch, side * side, heads * head_dim)
        m.eval(), ref.eval()
        ev = interleaved({"ref": eval_fn(ref, x), "relpos": eval_fn(m, x)}, rounds)
        with torch.no_grad():
            mem_ref = peak_memory_bytes(lambda: ref(x))
            mem_rel = peak_memory_bytes(lambda: m(x))
        m.train(), ref.train()
        xg = x.clone().requires_grad_()
        tr = interleaved({"ref": train_fn(ref, xg), "relpos": train_fn(m, xg)}, rounds)
        rec = dict(window=side, heads=heads, head_dim=head_dim, batch=batch, eval=ev, train=tr,
                   mem_ref=mem_ref, mem_rel=mem_rel)
        records.append(rec)
        e_ratio, t_ratio = ev["relpos"]["ratio"], tr["relpos"]["ratio"]
        rows.append([
            f"{side}x{side}, H={heads}, D={head_dim}, B={batch}",
            ms(ev["ref"]["median_s"]), ms(ev["relpos"]["median_s"]),
            f"**{e_ratio:.2f}** (≤ {EVAL_TARGET[side]}) {'met' if e_ratio <= EVAL_TARGET[side] else 'MISSED'}",
            f"{ev['relpos']['min_ratio']:.2f}",
            ms(tr["ref"]["median_s"]), ms(tr["relpos"]["median_s"]),
            f"**{t_ratio:.2f}** (≤ {TRAIN_TARGET[side]}) {'met' if t_ratio <= TRAIN_TARGET[side] else 'MISSED'}",
            f"{tr['relpos']['min_ratio']:.2f}",
            mib(mem_ref), mib(mem_rel), f"{mem_rel / max(mem_ref, 1):.3f}",
        ])
        print(f"  module {side}x{side}: eval {e_ratio:.2f}, train {t_ratio:.2f}, "
              f"eval mem {mem_rel / max(mem_ref, 1):.3f}", flush=True)
    header = ["config", "eval ref ms", "eval relpos ms", "eval ratio (target)", "eval min-ratio",
              "train ref ms", "train relpos ms", "train ratio (target)", "train min-ratio",
              "eval peak ref MiB", "eval peak relpos MiB", "mem ratio (≤ 0.1 at 32x32)"]
    return md_table(header, rows), records


def scaling_sweep(sides: list[int], rounds: int, heads: int = 4, head_dim: int = 32) -> str:
    """Time and peak memory against N, eval and train, batch so that B * N >= 1024 tokens."""
    rows = []
    for side in sides:
        n = side * side
        batch = max(1, 1024 // n)
        m, ref = build_pair(side, heads, head_dim)
        x = torch.randn(batch, n, heads * head_dim)
        r = max(3, rounds if n <= 1024 else 3)
        m.eval(), ref.eval()
        ev = interleaved({"ref": eval_fn(ref, x), "relpos": eval_fn(m, x)}, r, warmup=1)
        with torch.no_grad():
            em_ref, em_rel = peak_memory_bytes(lambda: ref(x)), peak_memory_bytes(lambda: m(x))
        m.train(), ref.train()
        xg = x.clone().requires_grad_()
        tr = interleaved({"ref": train_fn(ref, xg), "relpos": train_fn(m, xg)}, r, warmup=1)
        tm_ref = peak_memory_bytes(train_fn(ref, xg))
        tm_rel = peak_memory_bytes(train_fn(m, xg))
        rows.append([
            n, f"{side}x{side}", batch,
            ms(ev["ref"]["median_s"]), ms(ev["relpos"]["median_s"]),
            f"{ev['relpos']['ratio']:.2f} ({ev['relpos']['min_ratio']:.2f})",
            ms(tr["ref"]["median_s"]), ms(tr["relpos"]["median_s"]),
            f"{tr['relpos']['ratio']:.2f} ({tr['relpos']['min_ratio']:.2f})",
            mib(em_ref), mib(em_rel), mib(tm_ref), mib(tm_rel),
        ])
        print(f"  sweep N={n}: eval {ev['relpos']['ratio']:.2f}, train {tr['relpos']['ratio']:.2f}", flush=True)
    header = ["N", "window", "B", "eval ref ms", "eval relpos ms", "eval ratio (min-ratio)", "train ref ms",
              "train relpos ms", "train ratio (min-ratio)", "eval peak ref MiB", "eval peak relpos MiB",
              "train peak ref MiB", "train peak relpos MiB"]
    return md_table(header, rows)


def gather_share(rounds: int, module_records: list[dict]) -> str:
    """The bias gather alone (forward in eval; forward+backward in train) and its share of the module."""
    rows = []
    for rec in module_records:
        side, heads = rec["window"], rec["heads"]
        m, ref = build_pair(side, heads, rec["head_dim"])
        rpb = m.relative_position_bias
        n = side * side
        grad = torch.randn(heads, n, n)
        rpb.eval()
        with torch.no_grad():
            rpb()  # fill the eval cache

        def ref_eval() -> None:
            with torch.no_grad():
                ref.gather_bias()

        def rel_eval() -> None:
            with torch.no_grad():
                rpb()

        def ref_train() -> None:
            ref.relative_position_bias_table.grad = None
            ref.gather_bias().backward(grad)

        def rel_train() -> None:
            rpb.relative_position_bias_table.grad = None
            rpb.train()
            rpb().backward(grad)

        ev = interleaved({"ref": ref_eval, "relpos": rel_eval}, rounds)
        tr = interleaved({"ref": ref_train, "relpos": rel_train}, rounds)
        mod_e, mod_t = rec["eval"], rec["train"]
        rows.append([
            f"{side}x{side}, H={heads}",
            ms(ev["ref"]["median_s"]), ms(ev["relpos"]["median_s"]),
            f"{ev['ref']['median_s'] / mod_e['ref']['median_s']:.0%}",
            f"{ev['relpos']['median_s'] / mod_e['relpos']['median_s']:.0%}",
            ms(tr["ref"]["median_s"]), ms(tr["relpos"]["median_s"]), f"{tr['relpos']['ratio']:.2f}",
            f"{tr['ref']['median_s'] / mod_t['ref']['median_s']:.0%}",
            f"{tr['relpos']['median_s'] / mod_t['relpos']['median_s']:.0%}",
        ])
    header = ["config", "eval gather ref ms", "eval relpos ms (cached)", "share of ref eval",
              "share of relpos eval", "train gather fwd+bwd ref ms", "relpos ms", "ratio",
              "share of ref train", "share of relpos train"]
    return md_table(header, rows)
