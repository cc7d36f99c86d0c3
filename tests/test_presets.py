"""Bias tables set by hand (relpos.presets), checked against explicit references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relpos import presets as P
from relpos.diagnostics import bias_tables
from relpos.families import BIAS_TYPES, FAMILIES
from relpos.geometry import table_offsets
from relpos.models.transformer import VisionTransformer
from relpos.relative_position import RelativePositionBias


def small_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_channels=1, num_classes=4, embed_dim=16, depth=2,
                num_heads=2, use_relative_position=True)
    args.update(kw)
    return VisionTransformer(**args).eval()


def test_learned_families_come_from_the_flags():
    assert P.learned_families() == tuple(n for n in BIAS_TYPES if FAMILIES[n].learned)
    assert set(P.learned_families()) == {"1d", "2d", "2d_cls", "t5"}


def test_preset_tables():
    t = P.preset_table("zeros", "2d", (2, 3), 4)
    assert t.shape == (15, 4) and not t.any()
    loc = P.preset_table("locality", "2d", (2, 3), 2, alpha=0.5)
    for r, (dy, dx) in enumerate(table_offsets((2, 3)).tolist()):
        assert loc[r, 0].item() == pytest.approx(-0.5 * math.hypot(dy, dx))
        assert loc[r, 1].item() == pytest.approx(loc[r, 0].item())
    alibi = P.preset_table("alibi", "1d", 4, 8, alpha=1.0)
    # head 0 slope 2^-1, offset -3 is row 0
    assert alibi[0, 0].item() == pytest.approx(-3 * 0.5)
    assert alibi[0, 7].item() == pytest.approx(-3 * 2.0**-8)
    r1 = P.preset_table("random", "1d", 4, 2, alpha=2.0, seed=1)
    r2 = P.preset_table("random", "1d", 4, 2, alpha=2.0, seed=1)
    assert torch.equal(r1, r2) and r1.std() > 0.5
    init = P.preset_table("init", "1d", 50, 4, init_std=0.02, seed=0)
    assert init.abs().max() <= 0.04 + 1e-7
    with pytest.raises(ValueError, match="preset"):
        P.preset_table("bogus", "1d", 4, 2)


def test_preset_table_errors_name_the_argument():
    with pytest.raises(ValueError, match="bias_type"):
        P.preset_table("zeros", "alibi", (2, 2), 2)
    with pytest.raises(TypeError, match="window_size"):
        P.preset_table("zeros", "2d", "big", 2)
    with pytest.raises(ValueError, match="options"):
        P.preset_table("zeros", "2d", (2, 2), 2, num_buckets=8)
    with pytest.raises(ValueError, match="memory"):
        P.preset_table("zeros", "2d", (10**5, 10**5), 16)


def test_presets_of_the_class_token_and_t5_tables():
    t = P.preset_table("locality", "2d_cls", (2, 2), 2, alpha=2.0)
    assert t.shape == (9 + 3, 2)
    offsets = table_offsets((2, 2)).numpy()
    np.testing.assert_allclose(t[:9, 0].numpy(), -2.0 * np.hypot(*offsets.T))
    assert torch.equal(t[9:], torch.zeros(3, 2))  # class-token rows at distance 0
    assert not np.signbit(t[9:].numpy()).any()  # 0.0, not -0.0 (shown as "-0")
    t5 = P.preset_table("locality", "t5", 10, 1, alpha=1.0, num_buckets=8, max_distance=6)
    # buckets 0..3: offsets 0, -1, -2..-3, -4..; 4..7: (none: 0), 1, 2..3, 4.. -> smallest |offset|
    np.testing.assert_array_equal(t5[:, 0].numpy(), -np.array([0, 1, 2, 4, 0, 1, 2, 4], dtype=np.float32))
    assert P.preset_table("zeros", "t5", 10, 3).shape == (32, 3)  # the module's default buckets


def test_make_bias_and_arrays_match_gather():
    rpb = P.make_bias("2d", (3, 4), 2, preset="locality", alpha=1.0)
    arr = P.bias_arrays(rpb)
    table, bias, index = arr["table"], arr["bias"], arr["index"]
    assert bias.shape == (2, 12, 12)
    # bias[h, i, j] == table[index[i, j], h]
    np.testing.assert_array_equal(bias, table[index].transpose(2, 0, 1))
    assert bias[0, 5, 5] == 0.0 and bias[0, 0, 11] == pytest.approx(-math.hypot(2, 3))
    one = P.bias_arrays(P.make_bias("2d", (3, 4), 3, preset="random", seed=2), head=2)["bias"]
    full = P.bias_arrays(P.make_bias("2d", (3, 4), 3, preset="random", seed=2))["bias"]
    assert one.shape == (1, 12, 12)
    np.testing.assert_array_equal(one[0], full[2])
    assert not rpb.training and not any(p.requires_grad for p in rpb.parameters())


@pytest.mark.parametrize("bias_type", BIAS_TYPES)
def test_make_bias_builds_every_family_and_arrays_match_the_module(bias_type):
    fam = FAMILIES[bias_type]
    size = (3, 4) if fam.is_2d() else 10
    opts = {"t5": {"num_buckets": 8, "max_distance": 6}, "cpb": {"cpb_hidden_dim": 16}}.get(bias_type, {})
    rpb = P.make_bias(bias_type, size, 3, preset="locality" if fam.learned else "init", alpha=1.5, **opts)
    arr = P.bias_arrays(rpb)
    np.testing.assert_array_equal(arr["table"], rpb.effective_table().numpy())
    np.testing.assert_array_equal(arr["bias"], rpb().numpy())
    n = 13 if fam.class_token else (12 if isinstance(size, tuple) else 10)
    assert arr["bias"].shape == (3, n, n)
    if not fam.learned:  # the module's own table: alibi's slopes, cpb's seeded MLP
        kw = {"window_size": size} if isinstance(size, tuple) else {"seq_len": size}
        torch.manual_seed(0)
        ref = RelativePositionBias(3, bias_type=bias_type, **kw, **opts)
        np.testing.assert_allclose(arr["table"], ref.effective_table().detach().numpy(), rtol=1e-6)
        with pytest.raises(ValueError, match="preset"):
            P.make_bias(bias_type, size, 3, preset="locality", **opts)


def test_make_bias_refuses_another_familys_options():
    with pytest.raises(ValueError, match="num_buckets"):
        P.make_bias("2d", (2, 2), 2, num_buckets=8)


def test_demo_attention_shows_the_bias_effect():
    rpb = P.make_bias("2d", (4, 4), 2, preset="locality", alpha=3.0)
    b = P.bias_arrays(rpb)["bias"]
    with_b, without = P.demo_attention(b, seed=0)
    assert with_b.shape == without.shape == (2, 16, 16)
    np.testing.assert_allclose(with_b.sum(-1), 1.0, atol=1e-5)
    # Locality: each query attends more to itself with the bias than without.
    diag_with = np.diagonal(with_b, axis1=1, axis2=2).mean()
    diag_without = np.diagonal(without, axis1=1, axis2=2).mean()
    assert diag_with > 2 * diag_without
    # Zero content: attention is exactly softmax of the bias row.
    w0, _ = P.demo_attention(b, content_scale=0.0)
    ref = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(w0, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        P.demo_attention(np.zeros((4, 4)))


def test_apply_bias_preset_copies_and_sets_every_layer():
    model = small_vit()
    before = [t.copy() for t in bias_tables(model)]
    new = P.apply_bias_preset(model, "zeros")
    assert new is not model
    for t_old, t_model in zip(before, bias_tables(model)):
        np.testing.assert_array_equal(t_old, t_model)  # original untouched
    assert all(not t.any() for t in bias_tables(new))
    seeded = P.apply_bias_preset(model, "random", seed=3)
    tables = bias_tables(seeded)
    np.testing.assert_array_equal(tables[1], P.preset_table("random", "2d", (4, 4), 2, seed=4).numpy())
    with pytest.raises(ValueError, match="no relative position bias"):
        P.apply_bias_preset(small_vit(use_relative_position=False), "zeros")
    with pytest.raises(ValueError, match="as loaded"):
        P.apply_bias_preset(small_vit(rpb_kwargs={"bias_type": "alibi"}), "zeros")
