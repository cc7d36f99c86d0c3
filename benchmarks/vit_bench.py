"""ViT training step and inference: images/s and the fraction of this machine's fp32 matmul rate.

FLOPs are counted analytically (2 per multiply-add) over the matmuls: patch embedding, qkv,
q k^T, attention @ v, proj, the MLP and the head. A training step counts 3x the forward
(backward = 2x forward); AdamW, norms and activations are not counted (they are the overhead the
fraction exposes). The matmul rate is a 1024 x 1024 x 1024 fp32 ``@`` timed in the same rounds.
"""

from __future__ import annotations

import torch
from torch import nn

from torch.profiler import ProfilerActivity, profile

from benchmarks.common import interleaved, md_table, ms
from relpos import VisionTransformer

VIT = dict(img_size=32, patch_size=4, in_channels=3, num_classes=10, embed_dim=192, depth=6,
           num_heads=3, use_relative_position=True)
BATCH = 128
MATMUL_N = 1024


def forward_flops_per_image(img_size: int, patch_size: int, in_channels: int, num_classes: int,
                            embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                            **_: object) -> int:
    n = (img_size // patch_size) ** 2
    c, hidden = embed_dim, int(embed_dim * mlp_ratio)
    patch = 2 * n * in_channels * patch_size**2 * c
    block = 2 * n * c * 3 * c + 2 * 2 * n * n * c + 2 * n * c * c + 2 * 2 * n * c * hidden
    return patch + depth * block + 2 * c * num_classes


CATEGORIES = {
    "matmul (mm, addmm, bmm, baddbmm, conv)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                                              "aten::baddbmm_", "aten::mkldnn_convolution",
                                              "aten::convolution_backward"),
    "copies (layout changes, stack/cat)": ("aten::copy_", "aten::cat", "aten::clone"),
    "softmax fwd+bwd": ("aten::_softmax", "aten::_softmax_backward_data"),
    "layer norm fwd+bwd": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "GELU fwd+bwd": ("aten::gelu", "aten::gelu_backward"),
    "AdamW (fused)": ("aten::_fused_adamw_",),
    "bias gather fwd+bwd": ("aten::index_select", "aten::scatter_add_", "aten::index_add_"),
}


def step_breakdown(step) -> list[list[str]]:
    """Share of a training step's self CPU time by op category (torch profiler, one step)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals: dict[str, float] = {}
    all_time = 0.0
    for ev in prof.key_averages():
        all_time += ev.self_cpu_time_total
        cat = next((c for c, names in CATEGORIES.items() if ev.key in names), "other (adds, sums, fills, ...)")
        totals[cat] = totals.get(cat, 0.0) + ev.self_cpu_time_total
    return [[c, f"{t / all_time:.0%}"] for c, t in sorted(totals.items(), key=lambda kv: -kv[1])]


def vit_section(rounds: int) -> tuple[str, dict]:
    torch.manual_seed(0)
    model = VisionTransformer(**VIT)
    # fused=True: one kernel for all parameters (about 4x faster than the default per-parameter loop
    # here); it is the AdamW a training loop on this CPU should use.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(BATCH, 3, VIT["img_size"], VIT["img_size"])
    y = torch.randint(0, VIT["num_classes"], (BATCH,))
    loss_fn = nn.CrossEntropyLoss()
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)

    def matmul() -> None:
        a @ b

    # The forward's matmuls at this model's own shapes (no other op): what MKL reaches at K = 192.
    n_tok = (VIT["img_size"] // VIT["patch_size"]) ** 2
    c, d = VIT["embed_dim"], VIT["embed_dim"] // VIT["num_heads"]
    t = torch.randn(BATCH * n_tok, c)  # (B*N, C)
    w_qkv, w_proj = torch.randn(c, 3 * c), torch.randn(c, c)
    w_fc1, w_fc2 = torch.randn(c, 4 * c), torch.randn(4 * c, c)
    h4 = torch.randn(BATCH * n_tok, 4 * c)
    qh = torch.randn(BATCH * VIT["num_heads"], n_tok, d)  # (B*H, N, D)
    sh = torch.randn(BATCH * VIT["num_heads"], n_tok, n_tok)  # (B*H, N, N)

    def model_matmuls() -> None:
        for _ in range(VIT["depth"]):
            t @ w_qkv, torch.bmm(qh, qh.transpose(1, 2)), torch.bmm(sh, qh), t @ w_proj, t @ w_fc1, h4 @ w_fc2

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    res = interleaved({"matmul": matmul, "train": train_step, "infer": infer, "shaped": model_matmuls},
                      rounds, block_s=0.3, warmup=1)
    mm_flops = 2 * MATMUL_N**3
    fwd = forward_flops_per_image(**VIT) * BATCH
    rate = mm_flops / res["matmul"]["median_s"]
    out = {}
    rows = []
    for name, flops in (("train step (fwd + bwd + AdamW)", 3 * fwd), ("inference (eval, no_grad)", fwd)):
        key = "train" if name.startswith("train") else "infer"
        t = res[key]["median_s"]
        # per-round fraction: (flops / t) / (mm_flops / t_mm) = flops/mm_flops / ratio
        frac = (flops / mm_flops) / res[key]["ratio"]
        out[key] = frac
        rows.append([name, ms(t), f"{BATCH / t:.0f}", f"{flops / 1e9:.1f}", f"{flops / t / 1e9:.1f}",
                     f"**{frac:.2f}**" + (" (≥ 0.75 " + ("met)" if frac >= 0.75 else "MISSED)") if key == "train" else "")])
    rows.append([f"fp32 matmul {MATMUL_N}³ (the reference rate)", ms(res["matmul"]["median_s"]), "",
                 f"{mm_flops / 1e9:.2f}", f"{rate / 1e9:.1f}", "1.00"])
    shaped_flops = fwd - forward_flops_per_image(**{**VIT, "depth": 0}) * BATCH  # the blocks' matmuls
    rows.append(["the blocks' forward matmuls alone, at the model's shapes", ms(res["shaped"]["median_s"]), "",
                 f"{shaped_flops / 1e9:.1f}", f"{shaped_flops / res['shaped']['median_s'] / 1e9:.1f}",
                 f"{(shaped_flops / mm_flops) / res['shaped']['ratio']:.2f} (the ceiling for this model)"])
    header = ["what", "ms", "images/s", "GFLOP per call", "GFLOP/s", "fraction of matmul rate"]
    breakdown = md_table(["op category (one profiled train step)", "share of self CPU time"], step_breakdown(train_step))
    print(f"  vit: train fraction {out['train']:.2f}, infer {out['infer']:.2f}, matmul {rate / 1e9:.0f} GFLOP/s", flush=True)
    return md_table(header, rows) + "\n\n" + breakdown, out
