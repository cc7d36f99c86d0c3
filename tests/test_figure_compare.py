"""relpos.experiments.figure_compare: shared colour ranges, near-uniform maps, attention over the
untouched image with its marks, 1D rows as bars, TensorBoard smoothing and the diagnostics curves.

Every number is checked against a value worked out by hand or read from the library's own sources
(the dataset's ``positions``, the matrix passed in)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from relpos.experiments import figure_compare as fc
from relpos.experiments import visualize as viz
from relpos.experiments.config import resolve_config


# ----------------------------------------------------------------------------- shared range math


def test_shared_range_is_the_range_of_all_panels():
    a, b = np.array([0.10, 0.85, 0.40]), np.array([0.05, 0.37])
    ranges = fc.shared_range([a, b])
    assert [(r.zmin, r.zmax) for r in ranges] == [(0.05, 0.85), (0.05, 0.85)]
    assert not any(r.near_uniform for r in ranges) and all(r.note is None for r in ranges)


def test_per_panel_gives_each_its_own_range():
    ranges = fc.shared_range([np.array([0.10, 0.85]), np.array([0.05, 0.37])], per_panel=True)
    assert [(r.zmin, r.zmax) for r in ranges] == [(0.10, 0.85), (0.05, 0.37)]


def test_signed_values_get_a_symmetric_range_about_zero():
    ranges = fc.shared_range([np.array([-1.0, 0.5]), np.array([0.2, 2.0])])
    assert [(r.zmin, r.zmax) for r in ranges] == [(-2.0, 2.0), (-2.0, 2.0)]
    ranges = fc.shared_range([np.array([1.0, 3.0])], diverging=True, zmid=2.0)
    assert (ranges[0].zmin, ranges[0].zmax) == (1.0, 3.0)


def test_non_finite_values_are_ignored():
    ranges = fc.shared_range([np.array([np.nan, 0.2, 0.9]), np.array([np.inf, 0.1])])
    assert (ranges[0].zmin, ranges[0].zmax) == (0.1, 0.9)


# ----------------------------------------------------------------------------- near uniform


def test_a_fresh_models_attention_is_near_uniform():
    """The issue's numbers: 0.0605-0.064 over 16 patches (uniform = 0.0625) is not structure."""
    values = np.array([0.0605, 0.0625, 0.064, 0.0631])
    assert fc.is_near_uniform(values)  # spread 0.0035 <= 0.2 * mean 0.0625
    r = fc.color_range_of(values)
    assert (r.zmin, r.zmax, r.near_uniform) == (0.0, 0.064, True)
    assert r.note == "near uniform (0.0605–0.064): scale from 0"


def test_structure_and_signed_values_are_not_near_uniform():
    assert not fc.is_near_uniform(np.array([0.01, 0.5, 0.2]))
    assert not fc.is_near_uniform(np.array([-0.01, 0.01]))  # a bias, not a distribution
    assert not fc.is_near_uniform(np.array([0.3]))  # one value says nothing
    assert fc.is_near_uniform(np.array([1.0, 1.1]), rel_tol=0.1) and not fc.is_near_uniform(
        np.array([1.0, 1.2]), rel_tol=0.1)


def test_a_flat_map_beside_a_structured_one_is_named_not_stretched():
    flat, peaked = np.full(16, 1 / 16) + np.linspace(-0.001, 0.001, 16), np.eye(4).ravel() / 4
    r_peaked, r_flat = fc.shared_range([peaked, flat])
    assert (r_flat.zmin, r_flat.zmax) == (0.0, 0.25)  # on the structured map's scale: it looks flat
    assert r_flat.near_uniform and r_flat.note.startswith("near uniform (0.0615–0.0635)")
    assert not r_peaked.near_uniform and r_peaked.note is None
    both_flat = fc.shared_range([flat, flat * 1.01])
    assert both_flat[0].zmin == 0.0  # the shared range itself is near uniform: anchored at 0


def test_anchor_zero_starts_a_non_negative_scale_at_zero():
    r = fc.color_range_of(np.array([0.2, 0.9]), anchor_zero=True)
    assert (r.zmin, r.zmax) == (0.0, 0.9)


# ----------------------------------------------------------------------------- share_color_axis


def test_share_color_axis_gives_two_figures_one_axis_and_one_colorbar():
    a = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    b = np.array([[0.4, 0.6], [0.5, 0.5]], dtype=np.float32)
    fa, fb = viz.visualize_attention_weights(a), viz.visualize_attention_weights(b)
    assert fa.layout.coloraxis.cmax != fb.layout.coloraxis.cmax  # each its own range before
    ranges = fc.share_color_axis([fa, fb])
    for fig in (fa, fb):
        assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == pytest.approx((0.1, 0.9))
        assert (fig.data[0].zmin, fig.data[0].zmax) == pytest.approx((0.1, 0.9))
    assert fa.layout.coloraxis.showscale is False and fb.layout.coloraxis.showscale is True
    assert fa.layout.margin.r == fb.layout.margin.r + 100  # the colorbar's room kept: panels of one size
    assert ranges[0] == ranges[1]


def test_share_color_axis_per_panel_and_the_near_uniform_title():
    flat = np.full((4, 4), 0.25, dtype=np.float32) + np.float32(0.001) * np.eye(4, dtype=np.float32)
    peaked = np.eye(4, dtype=np.float32)
    fa = viz.visualize_attention_weights(peaked, title="with")
    fb = viz.visualize_attention_weights(flat, title="without")
    fc.share_color_axis([fa, fb], per_panel=True)
    assert (fa.layout.coloraxis.cmin, fa.layout.coloraxis.cmax) == (0.0, 1.0)
    assert (fb.layout.coloraxis.cmin, fb.layout.coloraxis.cmax) == pytest.approx((0.0, 0.251))
    assert fb.layout.title.text.startswith("without<br><sup>near uniform (0.25–0.251)")
    assert fa.layout.title.text == "with"
    assert fb.layout.margin.t == (fa.layout.margin.t or 60) + fc._NOTE_LINE_PX  # room for the note's line


def test_share_color_axis_leaves_curve_figures_alone_and_refuses_non_figures():
    curve = viz.visualize_bias_table(np.arange(7, dtype=np.float32)[:, None], seq_len=4)
    assert fc.share_color_axis([curve]) and curve.layout.coloraxis.cmin is None
    assert fc.share_color_axis([]) == []
    with pytest.raises(TypeError, match=r"figs\[0\]"):
        fc.share_color_axis([np.zeros(3)])


# ----------------------------------------------------------------------------- attention over the image


def _relational_cfg() -> dict:
    return resolve_config({"data": {"dataset": "relational", "img_size": 16, "patch_size": 4, "mark_size": 2,
                                    "num_train": 32, "num_val": 16}, "model": {"embed_dim": 16, "depth": 1,
                                                                               "num_heads": 2}})


def test_sample_marks_are_the_datasets_own_positions():
    from relpos.data.build import build_dataset

    cfg = _relational_cfg()
    val = build_dataset(cfg, "val")
    for index in (0, 5):
        marks = fc.sample_marks(cfg, index)
        assert [(m.label, m.size) for m in marks] == [("A", 2), ("B", 2)]
        ya, xa, yb, xb = val.dataset.positions(val.indices[index])  # the split is a Subset of the full set
        assert [(m.y, m.x) for m in marks] == [(ya, xa), (yb, xb)]
        image, _ = val[index]  # A is red, B is blue, where the marks say
        assert image[0, ya, xa] == 1 and image[2, ya, xa] == 0 and image[2, yb, xb] == 1 and image[0, yb, xb] == 0
    other = resolve_config({"data": {"dataset": "synthetic", "img_size": 16, "patch_size": 4, "num_train": 8,
                                     "num_val": 8}, "model": {"embed_dim": 16, "depth": 1, "num_heads": 2}})
    assert fc.sample_marks(other, 0) == []


def test_attention_over_image_keeps_the_values_and_draws_the_marks():
    rng = np.random.default_rng(0)
    attn = rng.dirichlet(np.ones(16), size=(2, 16)).astype(np.float32)  # (H, N, N)
    picture = np.zeros((16, 16, 3), dtype=np.uint8)
    marks = [fc.Mark("A", "#ff2d2d", 8, 4, 2), fc.Mark("B", "#2d6bff", 0, 12, 2)]
    fig = fc.attention_over_image(attn, 5, (4, 4), picture, marks=marks, title="t")
    heat = [t for t in fig.data if t.type == "heatmap"]
    for h in range(2):
        np.testing.assert_allclose(heat[h].z, attn[h, 5].reshape(4, 4))
    assert [t.type for t in fig.data].count("image") == 2  # the picture itself, under every panel
    assert fig.layout.meta["overlay"] == "veil"
    assert fig.layout.coloraxis.colorscale[0][1] == "rgba(215, 222, 235, 0.9)"  # a light fog over a black picture
    assert fig.layout.coloraxis.colorscale[-1][1].endswith("0.0)")  # clear at the top of the scale
    # Mark A at pixels y 8..9, x 4..5 of a 16-pixel side over 4 cells: cells y 1.5..2.0, x 0.5..1.0.
    rects = [s for s in fig.layout.shapes if s.line.color == "#ff2d2d"]
    assert len(rects) == 2  # one per panel
    assert (rects[0].x0, rects[0].x1, rects[0].y0, rects[0].y1) == (0.5, 1.0, 1.5, 2.0)
    labels = [a.text for a in fig.layout.annotations if a.text in ("<b>A</b>", "<b>B</b>")]
    assert labels == ["<b>A</b>", "<b>B</b>"] * 2
    assert all(a.font.size >= 18 for a in fig.layout.annotations if a.text in ("<b>A</b>", "<b>B</b>"))


def test_a_light_picture_gets_a_dark_veil_and_contours_keep_the_hover():
    attn = np.full((16, 16), 1 / 16, dtype=np.float32)
    attn[3] = np.linspace(0, 2 / 16, 16)
    light = np.full((16, 16, 3), 230, dtype=np.uint8)
    veil = fc.attention_over_image(attn, 3, (4, 4), light)
    assert veil.layout.coloraxis.colorscale[0][1] == fc.VEIL[0][1]
    lines = fc.attention_over_image(attn, 3, (4, 4), light, style="contours")
    contour = [t for t in lines.data if t.type == "contour"]
    heat = [t for t in lines.data if t.type == "heatmap"]
    assert len(contour) == 1 and heat[0].opacity == 0.0 and heat[0].hovertemplate  # the hover stays
    np.testing.assert_allclose(contour[0].z, attn[3].reshape(4, 4))
    fc.share_color_axis([lines, fc.attention_over_image(attn, 3, (4, 4), light, style="contours")])
    assert lines.layout.coloraxis.showscale is False  # lines are labelled: no colorbar
    assert contour[0].contours.size == pytest.approx(0.125 / 6)  # six levels over the range 0..0.125
    with pytest.raises(ValueError, match="style"):
        fc.attention_over_image(attn, 3, (4, 4), light, style="blend")


def test_share_color_axis_anchors_veils_at_zero():
    attn = np.full((4, 4), 0.2, dtype=np.float32)
    attn[1] = [0.1, 0.2, 0.3, 0.4]
    pic = np.zeros((4, 4, 3), dtype=np.uint8)
    f = fc.attention_over_image(attn, 1, (2, 2), pic)
    (r,) = fc.share_color_axis([f])
    assert (r.zmin, r.zmax) == (0.0, pytest.approx(0.4))


# ----------------------------------------------------------------------------- 1D bars


def test_query_bars_figure_puts_every_row_on_one_axis():
    fig = fc.query_bars_figure({"with bias": [0.1, 0.6, 0.3], "without bias": [0.3, 0.4, 0.3]}, 1, title="q")
    assert [t.type for t in fig.data] == ["bar", "bar"]
    np.testing.assert_allclose(fig.data[0].y, [0.1, 0.6, 0.3])
    np.testing.assert_allclose(fig.data[1].x, [0, 1, 2])
    assert fig.layout.barmode == "group" and fig.layout.shapes[0].x0 == 1  # the query's line
    with pytest.raises(ValueError, match="same length"):
        fc.query_bars_figure({"a": [1, 2], "b": [1, 2, 3]}, 0)
    with pytest.raises(ValueError, match="query"):
        fc.query_bars_figure({"a": [1, 2]}, 2)


# ----------------------------------------------------------------------------- curves


def test_ema_smooth_matches_tensorboard_by_hand():
    # weight 0.5: s = 0.5, 1.25, 2.125 before debiasing by 1 - 0.5^k = 0.5, 0.75, 0.875.
    np.testing.assert_allclose(fc.ema_smooth([1.0, 2.0, 3.0], 0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875])
    np.testing.assert_allclose(fc.ema_smooth([4.0, 7.0], 0.0), [4.0, 7.0])  # no smoothing
    out = fc.ema_smooth([1.0, math.nan, 3.0], 0.5)  # NaN passes through and is skipped
    assert math.isnan(out[1]) and out[2] == pytest.approx((0.25 + 1.5) / 0.75)
    np.testing.assert_allclose(fc.ema_smooth([2.0] * 5, 0.9), [2.0] * 5)  # a constant stays put
    with pytest.raises(ValueError, match="weight"):
        fc.ema_smooth([1.0], 1.0)


def _records() -> list[dict]:
    steps = [{"kind": "step", "step": s, "epoch": 1, "train_loss": 1.0 / s, "train_accuracy": 0.1 * s}
             for s in range(1, 6)]
    epochs = [{"kind": "epoch", "step": 5 * e, "epoch": e, "eval_loss": 0.5, "eval_accuracy": 0.5 + 0.1 * e,
               "diag/locality_ratio": 1.0 - 0.1 * e, "diag/symmetry": 0.2 * e} for e in (1, 2)]
    return steps + epochs


def test_smoothed_curves_keep_the_raw_faint_and_a_uirevision():
    fig = fc.smoothed_curves_figure({"run": _records()}, smoothing=0.5, uirevision="run")
    assert fig.layout.uirevision == "run"
    raws = [t for t in fig.data if t.opacity == 0.25]
    smooth = [t for t in fig.data if t.opacity != 0.25]
    train_loss = next(t for t in smooth if t.name == "run · train" and t.yaxis == "y")
    raw_loss = next(t for t in raws if t.yaxis == "y" and len(t.y) == 5)
    np.testing.assert_allclose(raw_loss.y, [1.0 / s for s in range(1, 6)])
    np.testing.assert_allclose(train_loss.y, fc.ema_smooth(raw_loss.y, 0.5))
    three = _records() + [{"kind": "epoch", "step": 15, "epoch": 3, "eval_loss": 0.4, "eval_accuracy": 0.95}]
    evals = [t for t in fc.smoothed_curves_figure({"run": three}, smoothing=0.9).data
             if t.name == "run · eval" and t.yaxis == "y2"]
    np.testing.assert_allclose(evals[0].y, [0.6, 0.7, 0.95])  # evaluation points stay as measured
    plain = fc.smoothed_curves_figure({"run": _records()})
    assert not [t for t in plain.data if t.opacity == 0.25] and plain.layout.uirevision == "curves"


def test_diagnostics_curves_figure_plots_the_logged_series():
    fig = fc.diagnostics_curves_figure({"a": _records(), "b": []})
    assert [t.yaxis for t in fig.data] == ["y", "y2"]  # locality_ratio, symmetry: the measures logged
    np.testing.assert_allclose(fig.data[0].y, [0.9, 0.8])
    np.testing.assert_allclose(fig.data[1].x, [1, 2])
    assert fig.layout.yaxis.title.text == "locality_ratio" and fig.layout.uirevision == "diagnostics"
    assert fc.has_diagnostics({"a": _records()}) and not fc.has_diagnostics({"b": [{"eval_accuracy": 0.3}]})
    empty = fc.diagnostics_curves_figure({"nobias": [{"kind": "epoch", "epoch": 1, "eval_accuracy": 0.3}]})
    assert not empty.data and "no diagnostics" in empty.layout.annotations[0].text
    assert isinstance(empty, go.Figure)
    with pytest.raises(ValueError, match="measures"):
        fc.diagnostics_curves_figure({"a": []}, measures=("nearness",))
