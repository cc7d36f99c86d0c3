"""RoPE inside the model: MultiHeadAttention's rotary module, the ViT's rotary position embeddings,
their configs, schemes, checkpoints, grid moves, kernel choice, maps, diagnostics and memory.

The rotation itself is checked against timm in tests/test_rotary.py; here every number is checked
against a hand computation that does not use relpos.rotary's forward (complex multiplication of
channel pairs by ``exp(i * phase)``, the phase written out from the grid and the frequencies).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

import relpos.attention as attention_mod
from relpos import MultiHeadAttention, RotaryPositionEmbedding, VisionTransformer, bias_diagnostics
from relpos.attention import _choose_kernel, collect_attention_maps
from relpos.experiments.checkpoint import load_model_from_checkpoint, read_checkpoint, save_checkpoint
from relpos.experiments.config import ConfigError, apply_overrides, build_model, model_kwargs, resolve_config
from relpos.guards import estimate_model_memory
from relpos.rotary import apply_rotary, estimate_rotary_memory, resolve_rope_kwargs

IMG, PATCH, GRID = 16, 4, (4, 4)


def vit(**kw) -> VisionTransformer:
    args = dict(img_size=IMG, patch_size=PATCH, in_channels=3, num_classes=4, embed_dim=32, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args)


def hand_rotate(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Turn channel pairs ``(2k, 2k+1)`` of ``x (..., N, D)`` by ``phase (H or 1, N, D/2)`` as complex numbers."""
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())  # (..., N, D/2)
    return torch.view_as_real(z * torch.polar(torch.ones_like(phase), phase)).flatten(-2)  # (..., N, D)


def hand_phase(rope: RotaryPositionEmbedding) -> torch.Tensor:
    """``(H or 1, N, D/2)`` float64 angles written out from the module's documented rule (prefix: 0)."""
    h, w = rope.grid_size
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = ys.reshape(-1, 1).double(), xs.reshape(-1, 1).double()  # (n, 1): tokens row by row
    if rope.rescaled:
        (rh, rw) = rope.ref_grid_size
        y, x = y / h * rh, x / w * rw
    if rope.mode == "mixed":  # "xy": x * freqs[0] + y * freqs[1]
        f = rope.freqs.detach().double()  # (2, H, P)
        phase = x[None] * f[0][:, None, :] + y[None] * f[1][:, None, :]  # (H, n, P)
    else:  # "ij": the first half of the pairs turn with the row
        q = rope.head_dim // 4
        bands = 1.0 / rope.theta ** (torch.arange(q, dtype=torch.float64) / q)  # (D/4,)
        phase = torch.cat([y * bands, x * bands], dim=-1)[None]  # (1, n, P)
    pad = phase.new_zeros(phase.shape[0], rope.num_prefix_tokens, phase.shape[-1])
    return torch.cat([pad, phase], dim=1)  # (H or 1, N, P)


def synthetic_cfg(**model) -> dict:
    return {"data": {"dataset": "synthetic", "img_size": IMG, "patch_size": PATCH, "num_train": 8, "num_val": 8},
            "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, **model}}


# ----------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("mode", ["axial", "mixed"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_maps_are_softmax_of_rotated_logits(mode, with_bias):
    torch.manual_seed(1)
    kw = dict(use_relative_position=True, rpb_kwargs={"window_size": (3, 4)}) if with_bias else {}
    m = MultiHeadAttention(32, 2, rope_kwargs={"grid_size": (3, 4), "mode": mode}, **kw).eval()
    if with_bias:
        with torch.no_grad():
            m.relative_position_bias.relative_position_bias_table.normal_()
    x = torch.randn(2, 12, 32)
    (maps,) = collect_attention_maps(m, x)
    q, k, _ = m.qkv(x).reshape(2, 12, 3, 2, 16).permute(2, 0, 3, 1, 4).double()  # (B, H, N, D) each
    phase = hand_phase(m.rope)
    logits = hand_rotate(q, phase) @ hand_rotate(k, phase).transpose(-2, -1) * 16**-0.5  # (B, H, N, N)
    if with_bias:
        logits = logits + m.relative_position_bias().double()
    torch.testing.assert_close(maps.double(), logits.softmax(-1), atol=1e-6, rtol=1e-5)
    # The fused path (the one forward takes) gives the same output as the maps' explicit path.
    v = m.qkv(x).reshape(2, 12, 3, 2, 16)[:, :, 2].transpose(1, 2).double()  # (B, H, N, D)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 32)
    torch.testing.assert_close(m(x).double(), m.proj(out.float()).double(), atol=1e-5, rtol=1e-4)


def test_prefix_tokens_are_not_rotated_in_the_vit():
    model = vit(position_embedding="rope_mixed", class_token=True).eval()
    for _, rope in model.rotary_modules():
        assert rope.num_prefix_tokens == 1 and rope.grid_size == GRID
        q, k = torch.randn(2, 2, 17, 16), torch.randn(2, 2, 17, 16)
        rq, rk = rope(q, k)
        assert torch.equal(rq[:, :, 0], q[:, :, 0]) and torch.equal(rk[:, :, 0], k[:, :, 0])
        assert not torch.allclose(rq[:, :, 1:], q[:, :, 1:])


def test_each_layer_owns_its_rotary_module_and_keys_say_what_they_are():
    mixed = vit(position_embedding="rope_mixed", depth=3)
    keys = [k for k in mixed.state_dict() if "rope" in k]
    assert keys == [f"blocks.{i}.attn.rope.freqs" for i in range(3)]
    assert mixed.blocks[0].attn.rope.freqs.shape == (2, 2, 8)  # (2, H, D/2)
    assert not torch.equal(mixed.blocks[0].attn.rope.freqs, mixed.blocks[1].attn.rope.freqs)
    assert mixed.pos_embed is None and mixed.relative_position_biases() == []
    assert [n for n, _ in mixed.rotary_modules()] == [f"blocks.{i}.attn.rope" for i in range(3)]
    axial = vit(position_embedding="rope_axial")
    assert not [k for k in axial.state_dict() if "rope" in k]  # fixed: non-persistent buffers only
    assert axial.blocks[0].attn.rope.grid_indexing == "ij" and mixed.blocks[0].attn.rope.grid_indexing == "xy"
    both = vit(position_embedding="rope_axial+absolute", use_relative_position=True)
    assert both.pos_embed is not None and len(both.relative_position_biases()) == 2 and len(both.rotary_modules()) == 2
    assert both.position_embedding == "rope_axial+absolute"
    themed = vit(position_embedding="rope_axial", rope_kwargs={"theta": 50.0, "grid_indexing": "xy"})
    assert themed.blocks[1].attn.rope.theta == 50.0 and themed.blocks[1].attn.rope.grid_indexing == "xy"


def test_kernel_choice_with_rope_is_that_of_no_position(monkeypatch):
    seen: list[str] = []
    real = attention_mod.run_kernel
    monkeypatch.setattr(attention_mod, "run_kernel", lambda kernel, *a: (seen.append(kernel), real(kernel, *a))[1])
    for n_side in (4, 7, 14, 16):
        n = n_side * n_side
        for training in (True, False):
            picks = []
            for kw in ({"rope_kwargs": {"grid_size": n_side, "mode": "mixed"}}, {}):
                seen.clear()
                m = MultiHeadAttention(32, 2, **kw).train(training)
                x = torch.randn(1, n, 32, requires_grad=training)
                with torch.set_grad_enabled(training):
                    m(x)
                picks.append(seen[-1])
            assert picks[0] == picks[1], (n, training, picks)
            if training and n >= attention_mod.SDPA_MIN_TOKENS_TRAIN:
                assert picks[0] == "sdpa"
    # attn_impl="sdpa": the fused kernel at every size in training; a bias needing a gradient does not get it
    assert _choose_kernel(16, False, True, True, 0.0, "sdpa", need_weights=False) == "sdpa"
    assert _choose_kernel(196, True, True, True, 0.0, "auto", need_weights=False) == "biased_fused"


def test_training_with_rope_runs_flash_attention_forward_and_backward(one_thread):
    m = MultiHeadAttention(64, 4, rope_kwargs={"grid_size": (14, 14), "mode": "mixed"}).train()
    x = torch.randn(2, 196, 64, requires_grad=True)
    with profile() as prof:
        m(x).sum().backward()
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in names
    assert not any("softmax" in name for name in names)  # no math-kernel fallback
    assert m.rope.freqs.grad is not None and m.rope.freqs.grad.abs().sum() > 0


def test_eval_rotation_is_cached_until_freqs_change():
    m = MultiHeadAttention(32, 2, rope_kwargs={"grid_size": 4, "mode": "mixed"}).eval()
    with torch.no_grad():
        a = m.rope.cos_sin()[0]
        assert m.rope.cos_sin()[0] is a
        m.rope.freqs.mul_(2.0)
        assert m.rope.cos_sin()[0] is not a


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(rope_kwargs={"grid_size": 4, "num_heads": 4}), ValueError, r"rope_kwargs\['num_heads'\] \(4\).*\(2\)"),
        (dict(rope_kwargs={"grid_size": 4, "head_dim": 8}), ValueError, r"rope_kwargs\['head_dim'\]"),
        (dict(rope_kwargs={"mode": "mixed"}), ValueError, "needs grid_size"),
        (dict(rope_kwargs={"grid_size": 4, "base": 2}), ValueError, r"unknown keys \['base'\]"),
        (dict(rope_kwargs={"grid_size": 4, "theta": 0}), ValueError, r"rope_kwargs\['theta'\] must be in \(0.0"),
        (dict(rope_kwargs={"grid_size": 4, "grid_indexing": "yx"}), ValueError, r"grid_indexing'\] must be one of"),
        (dict(rope_kwargs={"grid_size": 4, "mode": "spiral"}), ValueError, "mode must be one of"),
        (dict(rope_kwargs=[4]), TypeError, "rope_kwargs must be a dict or None"),
    ],
)
def test_attention_rope_kwargs_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MultiHeadAttention(32, 2, **kwargs)


def test_attention_rope_errors_on_head_dim_and_tokens():
    with pytest.raises(ValueError, match="head_dim must be a multiple of 4 for mode='axial'.*got 6"):
        MultiHeadAttention(24, 4, rope_kwargs={"grid_size": 3})
    m = MultiHeadAttention(32, 2, rope_kwargs={"grid_size": 3})
    with pytest.raises(ValueError, match=r"N=10 tokens.*covers 9"):
        m(torch.randn(1, 10, 32))
    assert resolve_rope_kwargs({"grid_size": [4, 4]}, head_dim=8, num_heads=1, grid_size=(4, 4))["grid_size"] == [4, 4]


# ----------------------------------------------------------------------------------------- the ViT


def test_vit_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"rope_kwargs was given but position_embedding='absolute'.*'rope_axial'"):
        vit(position_embedding="absolute", rope_kwargs={"theta": 10.0})
    with pytest.raises(ValueError, match=r"rope_kwargs\['grid_size'\] \(\(3, 3\)\) must equal the model's grid_size"):
        vit(position_embedding="rope_axial", rope_kwargs={"grid_size": (3, 3)})
    with pytest.raises(ValueError, match=r"rope_kwargs\['mode'\] \('axial'\) must equal the model's mode \('mixed'\)"):
        vit(position_embedding="rope_mixed", rope_kwargs={"mode": "axial"})
    with pytest.raises(ValueError, match="position_embedding must be one of .*'rope_mixed\\+absolute', got 'rope'"):
        vit(position_embedding="rope")
    with pytest.raises(ValueError, match="head_dim must be a multiple of 4"):
        vit(position_embedding="rope_axial", embed_dim=24, num_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        vit(position_embedding="rope_axial", embed_dim=30, num_heads=4)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("pe", ["rope_axial", "rope_mixed+absolute"])
def test_set_window_size_moves_every_rotary_module(pe, rescale):
    torch.manual_seed(0)
    model = vit(position_embedding=pe, class_token=True).eval()
    x = torch.randn(2, 3, IMG, IMG)
    before = model(x)
    freqs = [m.freqs.clone() for _, m in model.rotary_modules() if m.is_learned]
    notes = model.set_window_size((6, 5), rope_rescale=rescale)
    assert sum("rotary" in n for n in notes) == 2 and model.rope_kwargs["grid_size"] == (6, 5)
    for _, m in model.rotary_modules():
        assert m.grid_size == (6, 5) and m.ref_grid_size == GRID and m.rescaled is rescale
        cos, _ = m.cos_sin()
        cos = cos if cos.dim() == 3 else cos[None]
        torch.testing.assert_close(cos.double(), hand_phase(m).cos().repeat_interleave(2, -1), atol=1e-6, rtol=0)
        if rescale:
            assert m.coordinate_steps() == pytest.approx((4 / 6, 4 / 5))
    assert [m.freqs for _, m in model.rotary_modules() if m.is_learned] == [] or all(
        torch.equal(a, m.freqs) for a, (_, m) in zip(freqs, model.rotary_modules()))
    assert model(torch.randn(2, 3, 24, 20)).shape == (2, 4)
    model.set_window_size(GRID)  # back at the training grid: the training coordinates either way
    if pe == "rope_axial":  # (the absolute embedding was resampled twice, so only RoPE alone comes back exactly)
        torch.testing.assert_close(model(x), before)
    with pytest.raises(TypeError, match="rope_rescale must be a bool"):
        model.set_window_size((5, 5), rope_rescale="yes")


CASES = [
    dict(position_embedding="rope_axial"),
    dict(position_embedding="rope_mixed"),
    dict(position_embedding="rope_mixed", class_token=True),
    dict(position_embedding="rope_axial+absolute"),
    dict(position_embedding="rope_mixed+absolute", class_token=True),
    dict(position_embedding="rope_mixed", use_relative_position=True, bias_type="2d"),
    dict(position_embedding="rope_axial", use_relative_position=True, bias_type="t5", class_token=True),
]


@pytest.mark.parametrize("model_cfg", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_vit_trains_saves_and_reloads(tmp_path, model_cfg):
    torch.manual_seed(0)
    cfg = resolve_config(synthetic_cfg(**{"use_relative_position": False, **model_cfg}))
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, IMG, IMG), torch.randint(0, 4, (8,))
    start = {k: v.clone() for k, v in model.state_dict().items() if "rope" in k}
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for k, v in start.items():  # learned mixed frequencies moved
        assert not torch.equal(v, model.state_dict()[k]), k
    path = tmp_path / "ck.pt"
    save_checkpoint(model, opt, 1, {"loss": losses[-1]}, path, config=cfg)
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["model"]["position_embedding"] == model_cfg["position_embedding"]
    rebuilt, ckpt = load_model_from_checkpoint(path)
    assert ckpt["config"]["model"]["scheme"] == cfg["model"]["scheme"]
    assert len(rebuilt.rotary_modules()) == 2 and rebuilt.position_embedding == model.position_embedding
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------- configs


def test_schemes_and_rope_options_in_configs():
    cfg = resolve_config({"model": {"scheme": "rope_mixed+absolute"}})
    m = cfg["model"]
    assert (m["position_embedding"], m["use_relative_position"], m["rope"]) == ("rope_mixed+absolute", False, {})
    assert resolve_config(cfg) == cfg  # idempotent
    assert model_kwargs(cfg)["rope_kwargs"] == {}
    named = resolve_config({"model": {"position_embedding": "rope_axial", "rope": {"theta": 50}}})
    assert named["model"]["scheme"] == "rope_axial+2d"  # the default config keeps its 2D bias
    assert model_kwargs(named)["rope_kwargs"] == {"theta": 50}
    over = resolve_config(apply_overrides({}, ["model.scheme=rope_axial", "model.rope.grid_indexing=xy"]))
    assert over["model"]["scheme"] == "rope_axial" and over["model"]["rope"] == {"grid_indexing": "xy"}
    model = build_model(over)
    assert model.blocks[0].attn.rope.grid_indexing == "xy" and model.relative_position_biases() == []
    assert model_kwargs(resolve_config({}))["rope_kwargs"] is None


@pytest.mark.parametrize(
    "model, match",
    [
        ({"rope": {"theta": 10.0}}, r"model.rope = .*unless model.position_embedding is a rotary one"),
        ({"scheme": "rope_axial", "rope": {"head_dim": 8}}, r"model.rope.head_dim = 8 is not allowed: not a rotary option"),
        ({"scheme": "rope_axial", "rope": {"theta": -1}}, r"model: model.rope\['theta'\] must be in \(0.0, inf\)"),
        ({"scheme": "rope_mixed", "rope": {"grid_indexing": "yx"}}, r"model.rope\['grid_indexing'\] must be one of"),
        ({"scheme": "rope_axial", "embed_dim": 24, "num_heads": 4},
         r"head_dim must be a multiple of 4.*head_dim = model.embed_dim / model.num_heads = 24 / 4 = 6"),
        ({"position_embedding": "rope"}, r"model.position_embedding = 'rope' is not allowed: one of .*rope_mixed"),
        ({"scheme": "rope_mixed", "position_embedding": "absolute"}, r"model.position_embedding = 'absolute'.*"
                                                                     r"'rope_mixed' with model.scheme"),
        ({"rope": [1]}, r"model.rope = \[1\] is not allowed: a mapping"),
    ],
)
def test_config_errors(model, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({"model": model})


def test_checkpoint_of_a_rope_model_rebuilds_its_model(tmp_path):
    cfg = resolve_config(synthetic_cfg(scheme="rope_mixed", rope={"theta": 20.0}, class_token=True))
    model = build_model(cfg)
    path = tmp_path / "rope.pt"
    save_checkpoint(model, None, 0, {}, path, config=cfg)
    ckpt = read_checkpoint(path)  # weights_only=True inside
    assert [k for k in ckpt["model"] if "rope" in k] == ["blocks.0.attn.rope.freqs", "blocks.1.attn.rope.freqs"]
    rebuilt, _ = load_model_from_checkpoint(path)
    for (_, a), (_, b) in zip(model.rotary_modules(), rebuilt.rotary_modules()):
        assert torch.equal(a.freqs, b.freqs) and b.theta == 20.0 and b.num_prefix_tokens == 1


# ----------------------------------------------------------------------------------------- probes


def test_diagnostics_on_a_rope_model_report_no_bias_rows():
    model = vit(position_embedding="rope_mixed").eval()
    diag = bias_diagnostics(model, torch.randn(2, 3, IMG, IMG))
    assert diag["biases"] == [] and len(diag["attention"]) == 2
    assert all(v == pytest.approx(0.0, abs=1e-12) for row in diag["attention"] for v in row["kl"])  # no bias to remove
    both = vit(position_embedding="rope_axial", use_relative_position=True).eval()
    assert len(bias_diagnostics(both)["biases"]) == 2


def test_memory_estimate_counts_one_rotary_module_per_block():
    kw = dict(img_size=IMG, patch_size=PATCH, in_channels=3, num_classes=4, embed_dim=32, depth=3, num_heads=2,
              mlp_ratio=4.0, class_token=True)
    for pe, mode in (("rope_axial", "axial"), ("rope_mixed+absolute", "mixed")):
        est = estimate_model_memory(**kw, position_embedding=pe, rope_kwargs={"theta": 5.0})
        one = estimate_rotary_memory(16, GRID, mode, num_heads=2, num_prefix_tokens=1)
        assert est.breakdown["rotary embeddings"] == 3 * one.total
    plain = estimate_model_memory(**kw, position_embedding="rope_mixed")
    with_abs = estimate_model_memory(**kw, position_embedding="rope_mixed+absolute")
    assert with_abs.breakdown["parameters"] - plain.breakdown["parameters"] == 16 * 32 * 4  # (1, N, C) floats
    train = estimate_model_memory(**kw, position_embedding="rope_axial", batch_size=8, training=True)
    assert train.breakdown["rotated queries and keys"] == 3 * 4 * 8 * 17 * 32 * 4


@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_complex_rotation_equals_the_real_form_values_and_gradients(mode):
    rope = RotaryPositionEmbedding(16, (3, 4), mode, num_heads=2, num_prefix_tokens=1).train()
    qkv = torch.randn(2, 13, 3, 2, 16).permute(2, 0, 3, 1, 4)  # q, k: strided views, as in the attention
    q, k = (t.detach().requires_grad_() for t in qkv[:2])
    rq, rk = rope(q, k)  # float32: apply_rotary_complex
    cos, sin = rope.cos_sin()
    torch.testing.assert_close(rq, apply_rotary(q, cos, sin), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rk, apply_rotary(k, cos, sin), atol=1e-6, rtol=1e-6)
    w = torch.randn_like(rq)
    grads = torch.autograd.grad((rq * w).sum() + rk.sum(), [q, k, *rope.parameters()])
    ref = torch.autograd.grad((apply_rotary(q, cos, sin) * w).sum() + apply_rotary(k, cos, sin).sum(),
                              [q, k, *rope.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    half = rope(q.detach().bfloat16(), k.detach().bfloat16())[0]  # no complex bf16: the real form
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), rq.detach(), atol=0.05, rtol=0.02)
