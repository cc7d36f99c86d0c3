"""RoPE's probes: relpos.rope_probe.

A model's mean query and key, its position kernels and mixed frequencies, and the bias explorer's
demo, each checked against an explicit reference: the model's own pieces run by hand, the rotary
module's ``position_kernel`` / ``position_logits``, the closed form of the demo input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relpos import VisionTransformer, rope_probe
from relpos.rotary import content_directions


def vit(position_embedding="rope_mixed", **kw):
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=2, in_channels=3, num_classes=4, embed_dim=16, depth=2,
                             num_heads=2, position_embedding=position_embedding, **kw).eval()


def test_mean_query_key_equals_the_layers_own_pieces():
    model, image = vit(), torch.rand(3, 8, 8)
    mq, mk = rope_probe.mean_query_key(model, image, layer=0)
    with torch.no_grad():
        x = model.patch_embed(image[None])  # (1, 16, 16): no absolute embedding, no class token
        attn = model.blocks[0].attn
        qkv = attn.qkv(model.blocks[0].norm1(x)).reshape(1, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)  # (3, 1, H, N, D)
    torch.testing.assert_close(mq, qkv[0, 0].mean(1))
    torch.testing.assert_close(mk, qkv[1, 0].mean(1))
    assert not attn.qkv._forward_hooks  # the probe's hook is gone
    kernel = rope_probe.layer_kernel(model, 0, "mean", image=image)
    np.testing.assert_array_equal(kernel, attn.rope.position_kernel(mq, mk).numpy())


def test_mean_query_key_leaves_out_the_class_token():
    model, image = vit(class_token=True), torch.rand(3, 8, 8)
    mq, _ = rope_probe.mean_query_key(model, image, layer=1)
    seen = []
    handle = model.blocks[1].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(image[None])
    handle.remove()
    q = seen[0].reshape(1, 17, 3, 2, 8)[0, 1:, 0]  # (16, H, D): the grid tokens' queries
    torch.testing.assert_close(mq, q.mean(0))


def test_layer_kernel_ones_and_random_and_frequencies():
    model = vit()
    r1 = model.blocks[1].attn.rope
    u = content_directions("random", 8, 2, seed=4)
    np.testing.assert_array_equal(rope_probe.layer_kernel(model, 1, "random", seed=4), r1.position_kernel(u).numpy())
    freqs = rope_probe.mixed_frequencies(model)
    assert len(freqs) == 2
    np.testing.assert_array_equal(freqs[1], r1.freqs.detach().numpy())
    assert rope_probe.mixed_frequencies(vit("rope_axial")) == []
    summary = rope_probe.rotary_summary(model)
    assert summary == {"mode": "mixed", "theta": 10.0, "grid": (4, 4), "head_dim": 8, "num_heads": 2,
                       "grid_indexing": "xy", "layers": 2}
    assert rope_probe.rotary_summary(vit("absolute")) is None


def test_probe_errors_name_the_argument():
    model = vit()
    with pytest.raises(ValueError, match="layer"):
        rope_probe.layer_kernel(model, 2)
    with pytest.raises(ValueError, match="no rotary"):
        rope_probe.layer_kernel(vit("absolute"), 0)
    with pytest.raises(ValueError, match="direction"):
        rope_probe.layer_kernel(model, 0, "sideways")
    with pytest.raises(ValueError, match="needs a model and an input"):
        rope_probe.layer_kernel(model, 0, "mean")
    with pytest.raises(ValueError, match=r"image must have shape \(C, H, W\)"):
        rope_probe.mean_query_key(model, torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="model"):
        rope_probe.rotary_layers("model")
    with pytest.raises(ValueError, match="head"):
        rope_probe.rope_demo("axial", (3, 3), 2, 8, head=2)
    with pytest.raises(ValueError, match="alpha"):
        rope_probe.rope_demo("axial", (3, 3), 2, 8, alpha=-1.0)


@pytest.mark.parametrize("mode, size", [("axial", (3, 4)), ("mixed", (4, 3)), ("1d", 6)])
def test_rope_demo_against_its_closed_form(mode, size):
    # Content only (no noise): the logits are alpha * kernel(offset) rotated, alpha * u.u = alpha without.
    d = rope_probe.rope_demo(mode, size, 3, 8, head=1, seed=2, direction="random", alpha=1.5, content_scale=0.0)
    r = rope_probe.make_rotary(mode, size, 3, 8, seed=2)
    u = content_directions("random", 8, 3, seed=2)
    np.testing.assert_array_equal(d["kernel"], r.position_kernel(u).numpy())
    np.testing.assert_allclose(d["seen"], r.position_logits(u)[1].numpy(), atol=1e-5)
    n = d["seen"].shape[0]
    expected = torch.softmax(1.5 * torch.from_numpy(d["seen"]).double(), dim=-1).numpy()
    np.testing.assert_allclose(d["with"], expected, atol=1e-5)
    np.testing.assert_allclose(d["without"], np.full((n, n), 1.0 / n), atol=1e-6)
    assert (d["freqs"] is not None) == (mode == "mixed")
    if mode == "mixed":
        np.testing.assert_array_equal(d["freqs"], r.freqs.detach().numpy())


def test_rope_demo_rows_sum_to_one_and_the_global_rng_is_untouched():
    state = torch.random.get_rng_state()
    d = rope_probe.rope_demo("mixed", (5, 5), 4, 16, head=3, seed=0, alpha=2.0, content_scale=1.0)
    assert torch.equal(state, torch.random.get_rng_state())
    for k in ("with", "without"):
        assert d[k].shape == (25, 25)
        np.testing.assert_allclose(d[k].sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(d["with"], d["without"])
    again = rope_probe.rope_demo("mixed", (5, 5), 4, 16, head=3, seed=0, alpha=2.0, content_scale=1.0)
    np.testing.assert_array_equal(d["with"], again["with"])  # seeded: the same input every time
