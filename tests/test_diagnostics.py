"""Bias diagnostics against explicit small references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relpos.diagnostics import (
    DIAGNOSTIC_MEASURES,
    attention_entropy,
    attention_kl,
    attention_maps,
    bias_diagnostics,
    bias_modules,
    bias_tables,
    diagnostics_rows,
    diagnostics_table,
    layer_biases,
    locality_score,
    mean_attention_distance,
    model_summary,
    predict,
    softmax_entropy,
    symmetry_score,
    table_geometry,
    token_distances,
)
from relpos.models.transformer import VisionTransformer
from relpos.relative_position import RelativePositionBias

torch.set_num_threads(1)


def tiny_vit(**kw) -> VisionTransformer:
    args = dict(img_size=8, patch_size=2, num_classes=3, embed_dim=8, depth=2, num_heads=2,
                use_relative_position=True)
    args.update(kw)
    return VisionTransformer(**args)


def test_token_distances():
    d1 = token_distances(RelativePositionBias(num_heads=1, seq_len=3, bias_type="1d"))
    assert d1.tolist() == [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    d2 = token_distances(RelativePositionBias(num_heads=1, window_size=(2, 2), bias_type="2d_cls"))
    assert d2.shape == (4, 4) and d2[0, 3].item() == pytest.approx(math.sqrt(2)) and d2[0, 1] == 1


def test_locality_references():
    dist = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    b = 0.7
    bias = torch.tensor([[[0.0, b], [b, 0.0]]])  # (1, 2, 2)
    # p(other token) = e^b / (1 + e^b) = sigmoid(b), at distance 1
    assert locality_score(bias, dist).item() == pytest.approx(1 / (1 + math.exp(-b)))
    rpb = RelativePositionBias(num_heads=1, seq_len=3, bias_type="1d")
    d = token_distances(rpb)
    zeros = torch.zeros(1, 3, 3)
    assert locality_score(zeros, d).item() == pytest.approx(8 / 9)  # mean distance
    assert locality_score(-d[None], d).item() < locality_score(zeros, d).item()
    assert locality_score(-100 * d[None], d).item() == pytest.approx(0.0, abs=1e-6)


def test_symmetry_references():
    sym = RelativePositionBias(num_heads=4, window_size=(3, 3), bias_type="alibi")()
    torch.testing.assert_close(symmetry_score(sym), torch.ones(4, dtype=torch.float64))
    one = RelativePositionBias(num_heads=1, seq_len=5, bias_type="1d")
    with torch.no_grad():
        one.relative_position_bias_table.copy_(torch.arange(-4.0, 5)[:, None])  # b(Δ) = Δ: antisymmetric
    assert symmetry_score(one()).item() == pytest.approx(-1.0)
    assert symmetry_score(torch.zeros(2, 4, 4)).tolist() == [1.0, 1.0]
    # b(Δ) = Δ + |Δ|: half symmetric, half antisymmetric -> correlation 0 over pairs (Δ, -Δ)
    with torch.no_grad():
        off = torch.arange(-4.0, 5)
        one.relative_position_bias_table.copy_((off + off.abs())[:, None])
    x = one()[0]
    ref = torch.corrcoef(torch.stack([x[~torch.eye(5, dtype=bool)], x.t()[~torch.eye(5, dtype=bool)]]))[0, 1]
    assert symmetry_score(one()).item() == pytest.approx(ref.item())


def test_entropy_and_kl_references():
    uniform = torch.full((2, 3, 5, 5), 0.2)
    torch.testing.assert_close(attention_entropy(uniform), torch.full((3,), math.log(5), dtype=torch.float64))
    torch.testing.assert_close(softmax_entropy(torch.zeros(2, 7, 7)), torch.full((2,), math.log(7), dtype=torch.float64))
    p = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    q = torch.tensor([0.9, 0.1]).view(1, 1, 1, 2)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert attention_kl(p, q).item() == pytest.approx(expected)
    assert attention_kl(p, p).item() == 0.0


def test_bias_diagnostics_zero_bias_means_no_kl():
    model = tiny_vit(rpb_kwargs={"init_std": 0.0})
    x = torch.randn(2, 3, 8, 8)
    diag = bias_diagnostics(model, x)
    assert len(diag["biases"]) == 2 and len(diag["attention"]) == 2
    assert diag["summary"]["diag/kl"] == pytest.approx(0.0, abs=1e-12)
    assert diag["summary"]["diag/symmetry"] == 1.0
    assert diag["summary"]["diag/locality_ratio"] == pytest.approx(1.0)
    assert diag["summary"]["diag/bias_entropy"] == pytest.approx(math.log(16))
    assert model.training  # mode restored


def test_bias_diagnostics_local_bias_moves_attention():
    model = tiny_vit()
    for _, m in model.relative_position_biases():
        d = token_distances(m).float()
        with torch.no_grad():
            # a table whose bias is -2 * distance in every head
            off = torch.tensor([[dy, dx] for dy in range(-3, 4) for dx in range(-3, 4)], dtype=torch.float32)
            m.relative_position_bias_table.copy_((-2 * off.norm(dim=1))[:, None].expand(-1, 2))
        assert torch.allclose(m()[0], -2 * d, atol=1e-5)
    diag = bias_diagnostics(model, torch.randn(2, 3, 8, 8))
    s = diag["summary"]
    assert s["diag/locality_ratio"] < 0.5 and s["diag/kl"] > 0.1
    assert s["diag/entropy"] < s["diag/entropy_no_bias"]
    assert set(s) == {"diag/locality", "diag/locality_ratio", "diag/symmetry", "diag/bias_entropy",
                      "diag/kl", "diag/entropy", "diag/entropy_no_bias"}
    assert all(isinstance(v, float) for v in s.values())


def test_bias_diagnostics_shared_cls_and_no_inputs():
    model = tiny_vit(share_bias=True, class_token=True, rpb_kwargs={"bias_type": "2d_cls"})
    diag = bias_diagnostics(model)
    assert [b["name"] for b in diag["biases"]] == ["rel_pos_bias"]
    assert diag["attention"] == [] and "diag/kl" not in diag["summary"]
    assert len(diag["biases"][0]["locality"]) == 2
    assert bias_diagnostics(tiny_vit(use_relative_position=False))["summary"] == {}


def test_diagnostics_rows_long_format():
    diag = bias_diagnostics(tiny_vit(depth=1), torch.randn(1, 3, 8, 8))
    rows = diagnostics_rows(diag)
    assert len(rows) == (4 + 3) * 2  # measures x heads
    kl = [r for r in rows if r["measure"] == "kl"]
    assert [r["layer"] for r in kl] == ["blocks.0.attn"] * 2 and [r["value"] for r in kl] == diag["attention"][0]["kl"]


# --------------------------------------------------------------------------- the app's pivot and probes


def small_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_channels=1, num_classes=4, embed_dim=16, depth=2,
                num_heads=2, use_relative_position=True)
    args.update(kw)
    return VisionTransformer(**args).eval()


@pytest.mark.parametrize("kw", [{}, {"share_bias": True}, {"class_token": True, "rpb_kwargs": {"bias_type": "2d_cls"}}])
def test_diagnostics_table_pivots_bias_diagnostics_per_layer_and_head(kw):
    model = small_vit(**kw)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = diagnostics_table(model, x)
    diag = bias_diagnostics(model, x)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rows:
        b = diag["biases"][0 if len(diag["biases"]) == 1 else r["layer"]]
        a = diag["attention"][r["layer"]]
        for m in ("locality", "locality_ratio", "symmetry", "bias_entropy"):
            assert r[m] == pytest.approx(b[m][r["head"]])
        for m in ("kl", "entropy", "entropy_no_bias"):
            assert r[m] == pytest.approx(a[m][r["head"]])
    assert set(rows[0]) == {"layer", "head", *DIAGNOSTIC_MEASURES}
    assert diagnostics_table(small_vit(use_relative_position=False)) == []


def test_attention_maps_with_and_without_bias():
    from relpos.presets import apply_bias_preset

    model = apply_bias_preset(small_vit(), "locality", alpha=50.0)
    image = torch.randn(1, 16, 16)
    with_b = attention_maps(model, image, with_bias=True)
    without = attention_maps(model, image, with_bias=False)
    assert with_b.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(with_b.sum(-1), 1.0, atol=1e-5)
    # A strong locality bias makes attention nearly diagonal; without it, it is not.
    assert np.diagonal(with_b, axis1=2, axis2=3).mean() > 0.9
    assert np.diagonal(without, axis1=2, axis2=3).mean() < 0.5
    biases = layer_biases(model)
    assert len(biases) == 2 and biases[0].shape == (2, 16, 16)
    np.testing.assert_array_equal(biases[1], bias_modules(model)[1]().detach().numpy())
    with pytest.raises(ValueError, match="shape"):
        attention_maps(model, image[None])


def test_predict_with_and_without_bias():
    model = small_vit()
    image = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(image[None]).softmax(-1)[0].numpy()
        for m in bias_modules(model):  # zero every table: the same as switching the bias off
            m.relative_position_bias_table.zero_()
        ref_off = model(image[None]).softmax(-1)[0].numpy()
    off = predict(model, image, with_bias=False)
    np.testing.assert_allclose(off, ref_off, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(small_vit(), image), ref, rtol=1e-5, atol=1e-6)
    assert off.shape == (4,) and off.sum() == pytest.approx(1.0, abs=1e-5)


def test_tables_summary_and_geometry_read_off_the_model():
    model = small_vit()
    tables = bias_tables(model)
    assert [t.shape for t in tables] == [(49, 2), (49, 2)]
    np.testing.assert_array_equal(tables[0], bias_modules(model)[0].relative_position_bias_table.detach().numpy())
    summary = model_summary(model)
    assert summary["depth"] == 2 and summary["num_heads"] == 2 and summary["bias_type"] == "2d"
    assert summary["grid"] == (4, 4) and summary["num_tokens"] == 16
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert table_geometry(model) == {"bias_type": "2d", "window_size": (4, 4), "seq_len": None, "max_distance": None}
    t5 = small_vit(rpb_kwargs={"bias_type": "t5", "max_distance": 20})
    assert table_geometry(t5) == {"bias_type": "t5", "window_size": None, "seq_len": 16, "max_distance": 20}
    none = small_vit(use_relative_position=False)
    assert bias_tables(none) == [] and model_summary(none)["bias_type"] is None
    assert table_geometry(none)["bias_type"] is None


def test_mean_attention_distance():
    eye = np.eye(4)
    np.testing.assert_allclose(mean_attention_distance(eye, (2, 2)), [0.0])
    uniform = np.full((1, 4, 4), 0.25)
    # In a 2x2 grid each token has distances 0, 1, 1, sqrt(2) to the four tokens.
    np.testing.assert_allclose(mean_attention_distance(uniform, (2, 2)), [(2 + math.sqrt(2)) / 4])
    np.testing.assert_allclose(mean_attention_distance(np.full((3, 3), 1 / 3), (1, 3)), [8 / 9])
    with pytest.raises(ValueError, match="shape"):
        mean_attention_distance(eye, (3, 3))
