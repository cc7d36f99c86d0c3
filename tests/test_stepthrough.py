"""relpos.experiments.stepthrough and its figure: the formula's steps for one query, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relpos import presets
from relpos.experiments import stepthrough as stp
from relpos.experiments import stepthrough_figure as sf
from relpos.families import FAMILIES


def test_formula_row_against_a_hand_computation():
    out = stp.formula_row([1.0, 2.0, 0.0], [0.0, -1.0, -2.0])
    np.testing.assert_allclose(out["biased"], [1.0, 1.0, -2.0])
    e = [math.e, math.e, math.exp(-2.0)]
    np.testing.assert_allclose(out["weights"], [v / sum(e) for v in e], rtol=1e-6)
    e0 = [math.e, math.exp(2.0), 1.0]
    np.testing.assert_allclose(out["weights_without"], [v / sum(e0) for v in e0], rtol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        stp.formula_row([1.0, 2.0], [0.0])


def hand_logits(n: int, seed: int, content: float, head_dim: int = 16) -> np.ndarray:
    """The Bias explorer's fixed input, written out: one head's q, k ~ N(0, content^2), q k^T / sqrt(d)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, n, head_dim, generator=gen) * content
    k = torch.randn(1, 1, n, head_dim, generator=gen) * content
    return (q[0, 0] @ k[0, 0].T / math.sqrt(head_dim)).numpy()  # (N, N)


def test_step_through_of_locality_on_a_2x2_window():
    # Window (2, 2), query 0 at (0, 0): keys at distances 0, 1, 1, sqrt(2); locality bias = -alpha * distance.
    s = stp.step_through("2d", (2, 2), 2, 1, 0, preset="locality", alpha=1.5, seed=3, content_scale=0.7)
    bias = -1.5 * np.array([[0.0, 1.0], [1.0, math.sqrt(2.0)]])
    np.testing.assert_allclose(s["bias"], bias, rtol=1e-6)
    logits = hand_logits(4, seed=3, content=0.7)[0].reshape(2, 2)
    np.testing.assert_allclose(s["logits"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["biased"], logits + bias, rtol=1e-5, atol=1e-6)
    e = np.exp(logits + bias)
    np.testing.assert_allclose(s["weights"], e / e.sum(), rtol=1e-5)
    assert s["grid"] == (2, 2) and s["query_yx"] == (0, 0) and s["class_token"] is None


def test_step_three_is_the_pages_attention_map():
    rpb = presets.make_bias("2d", (3, 4), 4, preset="alibi", alpha=2.0, seed=1)
    bias = presets.bias_arrays(rpb, head=2)["bias"]  # (1, N, N), what the page passes
    with_b, without = presets.demo_attention(bias, seed=1, content_scale=1.3)
    s = stp.step_through("2d", (3, 4), 4, 2, 6, preset="alibi", alpha=2.0, seed=1, content_scale=1.3)
    np.testing.assert_allclose(s["weights"].reshape(-1), with_b[0, 6], atol=1e-6)
    np.testing.assert_allclose(s["weights_without"].reshape(-1), without[0, 6], atol=1e-6)
    logits = presets.demo_logits(1, 12, seed=1, content_scale=1.3)
    np.testing.assert_allclose(logits[0], hand_logits(12, seed=1, content=1.3), rtol=1e-5, atol=1e-6)


def test_a_class_token_keeps_its_share_apart():
    kind = next(n for n, f in FAMILIES.items() if f.class_token)
    s = stp.step_through(kind, (2, 2), 2, 0, 3, preset="locality", alpha=1.0)
    assert s["weights"].shape == (2, 2)
    assert s["weights"].sum() + s["class_token"]["weights"] == pytest.approx(1.0, abs=1e-6)


def test_alpha_sweep_scales_the_locality_bias():
    sweep = stp.alpha_sweep("2d", (3, 3), 2, 0, 4, alphas=(0.0, 1.0, 2.5), preset="locality")
    np.testing.assert_allclose(sweep["bias"][0], 0.0, atol=1e-7)
    np.testing.assert_allclose(sweep["bias"][2], 2.5 * sweep["bias"][1], rtol=1e-6)
    one = stp.step_through("2d", (3, 3), 2, 0, 4, preset="locality", alpha=2.5)
    np.testing.assert_allclose(sweep["weights"][2], one["weights"], atol=1e-6)
    np.testing.assert_allclose(sweep["logits"], one["logits"])
    with pytest.raises(ValueError, match="alphas"):
        stp.alpha_sweep("2d", (3, 3), 2, 0, 4, alphas=())


def test_figure_fills_the_panels_step_by_step():
    s = stp.step_through("2d", (3, 3), 2, 0, 4, preset="locality", alpha=2.0)
    one = sf.step_through_figure(s, 1)
    assert [np.isnan(np.asarray(t.z, dtype=float)).all() for t in one.data[:4]] == [False, True, True, True]
    two = sf.step_through_figure(s, 2)
    assert [np.isnan(np.asarray(t.z, dtype=float)).all() for t in two.data[:4]] == [False, False, False, True]
    three = sf.step_through_figure(s, 3)
    np.testing.assert_allclose(np.asarray(three.data[3].z), s["weights"])
    # The three logit panels share one axis, symmetric and wide enough for all three.
    lo, hi = three.layout.coloraxis.cmin, three.layout.coloraxis.cmax
    assert lo == -hi and hi >= max(np.abs(s[k]).max() for k in ("logits", "bias", "biased")) - 1e-6
    assert three.layout.coloraxis2.cmin == 0.0 and three.data[3].coloraxis == "coloraxis2"
    with pytest.raises(ValueError, match="step"):
        sf.step_through_figure(s, 4)


def test_figure_animates_alpha_with_frames_and_a_slider():
    s = stp.step_through("2d", (3, 3), 2, 0, 4, preset="locality", alpha=2.0)
    sweep = stp.alpha_sweep("2d", (3, 3), 2, 0, 4, preset="locality")
    fig = sf.step_through_figure(s, 3, sweep=sweep, alpha=2.0)
    assert len(fig.frames) == len(stp.ALPHA_FRAMES) == 21
    assert all(list(f.traces) == [1, 2, 3] for f in fig.frames)
    np.testing.assert_allclose(np.asarray(fig.frames[-1].data[2].z), sweep["weights"][-1])
    assert fig.layout.sliders[0].active == stp.ALPHA_FRAMES.index(2.0)
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"
    # The colour axes hold still over the sweep: wide enough for alpha = 5.
    assert fig.layout.coloraxis.cmax >= np.abs(sweep["biased"]).max() - 1e-6
    assert sf.step_through_figure(s, 2, sweep=sweep).frames == ()  # only the softmax step animates


def test_a_sequence_gives_bars_over_the_key():
    s = stp.step_through("1d", 6, 2, 1, 2, preset="locality", alpha=1.0)
    fig = sf.step_through_figure(s, 3)
    assert [t.type for t in fig.data] == ["bar"] * 4
    np.testing.assert_allclose(np.asarray(fig.data[1].y), -1.0 * np.abs(np.arange(6) - 2))
    assert list(fig.layout.yaxis.range) == list(fig.layout.yaxis3.range)  # logit panels on one axis
