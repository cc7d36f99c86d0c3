"""The app with a rotary position embedding (RoPE), server side (AppTest) and in a real browser.

The bias explorer's rotary mode draws relpos.rope_probe.rope_demo's numbers (the position kernel, the
fixed input's attention with and without the rotation, one colour scale); the Attention maps page
offers "rotation off" for a RoPE model and draws its position kernel for the content chosen there
(the layer's mean query and key included); Checkpoints & compare shows a trained RoPE-Mixed run's
frequencies before vs after training and its kernel, and a fixed rotation's kernel. The browser test
screenshots the bias explorer in RoPE mode (tests/artifacts/2_bias_explorer_rope.png).
"""

from __future__ import annotations

import numpy as np
import pytest

from app_support.frame import W_LAYER
from app_support.state import SEL_SOURCE
from relpos import explore, jobs, rope_probe
from relpos.experiments.checkpoint import load_model_from_checkpoint
from relpos.experiments.config import fresh_model, preset_config, resolve_config
from relpos.experiments.train import fit
from test_app import assert_clean, charts, decode, heatmap_z, new_app, open_page, saved_checkpoint
from browser_support import assert_no_exception, new_page, shot, streamlit_server, wait_charts, wait_idle


def scatters(fig: dict) -> list[dict]:
    return [t for t in fig["data"] if t.get("type") == "scatter" and t.get("mode") == "markers"
            and "head" in (t.get("hovertemplate") or "")]


def rotary_on(at):
    at.radio(key="be_position").set_value("rotary (RoPE)").run()
    assert_clean(at, "rotary")
    return at


def test_bias_explorer_rotary_mode_draws_the_library_numbers(runs_root):
    at = rotary_on(open_page(new_app().run(), "bias"))
    figs = charts(at)
    assert {"be_rope_kernel", "be_rope_attn_with", "be_rope_attn_without", "be_rope_seen",
            "be_rope_full_with", "be_rope_full_without"} <= set(figs)
    assert not {"be_table", "be_steps"} & set(figs)  # the bias family's charts are not drawn
    # Page defaults: axial, 7x7, 4 heads, d = 16, theta 100, ij, seed 0, all-ones, alpha 2, content 1.
    head, query = at.slider(key="be_head").value, at.slider(key="be_query").value
    ref = rope_probe.rope_demo("axial", (7, 7), 4, 16, head, theta=100.0, grid_indexing="ij", seed=0,
                               direction="ones", alpha=2.0, content_scale=1.0)
    for h in range(4):
        np.testing.assert_allclose(heatmap_z(figs["be_rope_kernel"], h), ref["kernel"][h], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(heatmap_z(figs["be_rope_attn_with"]).reshape(-1), ref["with"][query], rtol=1e-5)
    np.testing.assert_allclose(heatmap_z(figs["be_rope_attn_without"]).reshape(-1), ref["without"][query], rtol=1e-5)
    np.testing.assert_allclose(heatmap_z(figs["be_rope_seen"]).reshape(-1), ref["seen"][query], rtol=1e-5, atol=1e-6)
    with_trace, without_trace = (next(t for t in figs[k]["data"] if t["type"] == "heatmap")
                                 for k in ("be_rope_attn_with", "be_rope_attn_without"))
    assert (with_trace["zmin"], with_trace["zmax"]) == (without_trace["zmin"], without_trace["zmax"])  # one scale
    assert any("RoPE has no table" in c.value for c in at.caption)
    # Mixed: its frequencies at init; random direction, another theta and head dim; then 1d.
    at.selectbox(key="be_rope_mode").set_value("mixed").run()
    at.selectbox(key="be_rope_direction").set_value("random").run()
    at.number_input(key="be_rope_theta_mixed").set_value(5.0).run()
    at.selectbox(key="be_rope_head_dim").set_value(8).run()
    assert_clean(at, "mixed")
    figs = charts(at)
    ref = rope_probe.rope_demo("mixed", (7, 7), 4, 8, head, theta=5.0, grid_indexing="xy", seed=0,
                               direction="random", alpha=2.0, content_scale=1.0)
    np.testing.assert_allclose(heatmap_z(figs["be_rope_kernel"], 2), ref["kernel"][2], rtol=1e-6, atol=1e-7)
    dots = scatters(figs["be_rope_freqs"])
    np.testing.assert_allclose(decode(dots[1]["x"]), ref["freqs"][0, 1], rtol=1e-6)  # head 1's f_x
    at.selectbox(key="be_rope_mode").set_value("1d").run()
    assert_clean(at, "1d")
    assert "be_rope_attn_bars" in charts(at)
    # The largest window the widgets allow, then back to the bias families: the window is kept.
    at.selectbox(key="be_rope_mode").set_value("axial").run()
    at.number_input(key="be_h").set_value(explore.MAX_WINDOW_SIDE)
    at.number_input(key="be_w").set_value(explore.MAX_WINDOW_SIDE).run()
    assert_clean(at, "largest window")
    at.radio(key="be_position").set_value("relative bias").run()
    assert_clean(at, "back to the families")
    assert at.session_state["be_h"] == explore.MAX_WINDOW_SIDE and "be_table" in charts(at)


def test_attention_maps_with_a_rope_model(runs_root):
    at = new_app().run()
    at.session_state[SEL_SOURCE] = "preset:default_rope"
    open_page(at, "attention")
    assert list(at.selectbox(key="am_part").options) == ["rotary embedding"]
    figs = charts(at)
    assert {"am_query_with", "am_query_without", "am_heads", "am_diff", "am_rope_fig"} <= set(figs)
    cfg = preset_config("default_rope")
    model = fresh_model(cfg)
    np.testing.assert_allclose(heatmap_z(figs["am_rope_fig"], 1), rope_probe.layer_kernel(model, 0, "ones")[1],
                               rtol=1e-6, atol=1e-7)
    # The layer's mean query and key on the shown sample.
    at.radio(key="am_rope").set_value("mean").run()
    assert_clean(at, "mean")
    image = explore.sample_input(cfg, 0)[0]
    ref = rope_probe.layer_kernel(model, 0, "mean", image=image)
    for h in range(ref.shape[0]):
        np.testing.assert_allclose(heatmap_z(charts(at)["am_rope_fig"], h), ref[h], rtol=1e-4, atol=1e-5)
    at.sidebar.selectbox(key=W_LAYER).set_value(1).run()
    assert_clean(at, "layer 1")
    assert "layer 1" in charts(at)["am_rope_fig"]["layout"]["title"]["text"]


def trained_rope_run(root) -> str:
    cfg = preset_config("tiny")
    cfg["model"].update(use_relative_position=False, position_embedding="rope_mixed", scheme=None)
    cfg["train"].update(lr=0.02)  # let the frequencies move visibly in two short epochs
    fit(resolve_config(cfg), root / "rope-mixed", log_to_stderr=False, handle_signals=False)
    return str(root / "rope-mixed" / "best.pt")


def test_checkpoints_show_mixed_frequencies_before_and_after(runs_root):
    path = trained_rope_run(runs_root)
    model, ckpt = load_model_from_checkpoint(path)
    learned = rope_probe.mixed_frequencies(model)[0]  # (2, H, P) of layer 0
    initial = rope_probe.mixed_frequencies(fresh_model(ckpt["config"]))[0]
    assert np.abs(learned - initial).max() > 1e-3  # training moved them
    at = new_app().run()
    at.session_state[SEL_SOURCE] = "ckpt:" + path
    open_page(at, "checkpoints")
    assert at.selectbox(key="ck_a").value == path
    figs = charts(at)
    assert {"ck_rope_freqs", "ck_rope_kernel", "ck_rope_kernel_initial"} <= set(figs)
    dots = scatters(figs["ck_rope_freqs"])  # per head: before, after
    for h in range(learned.shape[1]):
        np.testing.assert_allclose(decode(dots[2 * h]["x"]), initial[0, h], rtol=1e-6)
        np.testing.assert_allclose(decode(dots[2 * h]["y"]), initial[1, h], rtol=1e-6)
        np.testing.assert_allclose(decode(dots[2 * h + 1]["x"]), learned[0, h], rtol=1e-6)
        np.testing.assert_allclose(decode(dots[2 * h + 1]["y"]), learned[1, h], rtol=1e-6)
    np.testing.assert_allclose(heatmap_z(figs["ck_rope_kernel"], 0), rope_probe.layer_kernel(model, 0)[0],
                               rtol=1e-6, atol=1e-7)
    after, before = (next(t for t in figs[k]["data"] if t["type"] == "heatmap")
                     for k in ("ck_rope_kernel", "ck_rope_kernel_initial"))
    assert (after["zmin"], after["zmax"]) == (before["zmin"], before["zmax"])  # one scale
    at.radio(key="ck_rope_direction").set_value("random").run()
    assert_clean(at, "random direction")


def test_checkpoints_show_a_fixed_rotations_kernel(runs_root):
    (runs_root / jobs.UPLOADS_DIR).mkdir()
    path = saved_checkpoint(runs_root / jobs.UPLOADS_DIR / "axial.pt", position_embedding="rope_axial",
                            use_relative_position=False)
    at = new_app().run()
    at.session_state[SEL_SOURCE] = "ckpt:" + str(path)
    open_page(at, "checkpoints")
    figs = charts(at)
    assert "ck_rope_kernel" in figs and "ck_rope_freqs" not in figs
    model, _ = load_model_from_checkpoint(path)
    np.testing.assert_allclose(heatmap_z(figs["ck_rope_kernel"], 1), rope_probe.layer_kernel(model, 0)[1],
                               rtol=1e-6, atol=1e-7)
    assert any("fixed" in c.value for c in at.caption)


@pytest.mark.browser
@pytest.mark.slow
def test_rope_pages_in_the_browser(tmp_path_factory, browser):
    """The bias explorer in RoPE mode, then the Attention maps and Checkpoints pages with a RoPE-Mixed
    model (a saved fresh checkpoint, opened by a deep link): no exception, their charts, screenshots."""
    with streamlit_server(tmp_path_factory) as server:
        uploads = server["runs_root"] / jobs.UPLOADS_DIR
        uploads.mkdir()
        saved_checkpoint(uploads / "rope.pt", position_embedding="rope_mixed", use_relative_position=False)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        try:
            pg = new_page(context)
            pg.goto(f"{server['url']}/bias_explorer")
            wait_idle(pg)
            pg.get_by_text("rotary (RoPE)", exact=True).click()
            wait_idle(pg)
            assert_no_exception(pg, "bias explorer, rotary")
            assert wait_charts(pg, 6) >= 6
            assert pg.get_by_text("RoPE has no table", exact=False).count() >= 1
            shot(pg, "2_bias_explorer_rope")
            for path, name, charts_at_least in (("attention_maps", "3_attention_maps_rope", 4),
                                                ("checkpoints", "5_checkpoints_rope", 2)):
                pg.goto(f"{server['url']}/{path}?model=uploads/rope.pt")
                wait_idle(pg)
                assert_no_exception(pg, path)
                assert wait_charts(pg, charts_at_least) >= charts_at_least, path
                assert pg.get_by_text("position kernel", exact=False).count() >= 1, path
                shot(pg, name)
        finally:
            context.close()
