"""Figures: the plotted numbers are the input numbers, hover decodes cells by the Swin formula,
heads share one colour axis, large inputs are block-averaged, files are written as promised."""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from relpos.experiments import figure_export
from relpos.experiments import visualize as V
from relpos.experiments.colormaps import resolve_colorscale
from relpos.relative_position import get_relative_position_index_1d, get_relative_position_index_2d

torch.set_num_threads(1)

CHROMIUM = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if t.type == "heatmap"]


# ---------------------------------------------------------------- matrices: values, heads, colour


def test_attention_z_is_input_per_head_with_one_shared_colour_axis():
    w = torch.softmax(torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)), -1)
    fig = V.visualize_attention_weights(w, window_size=(3, 2))
    maps = _heatmaps(fig)
    assert len(maps) == 3  # batch element 0, one panel per head
    for h, tr in enumerate(maps):
        np.testing.assert_array_equal(tr.z, w[0, h].numpy())
        assert tr.coloraxis == "coloraxis"
        assert (tr.zmin, tr.zmax) == (maps[0].zmin, maps[0].zmax)
    assert maps[0].zmin == pytest.approx(float(w[0].min()))
    assert maps[0].zmax == pytest.approx(float(w[0].max()))
    assert fig.layout.coloraxis.cmin == maps[0].zmin and fig.layout.coloraxis.cmax == maps[0].zmax
    assert len({(t.xaxis, t.yaxis) for t in maps}) == 3  # three separate panels
    assert "batch element 0 of 2" in fig.layout.title.text


@pytest.mark.parametrize("heads, cols", [(16, 1), (12, None), (5, 2)])
def test_any_number_of_heads_lays_out_inside_the_figure(heads, cols):
    fig = V.visualize_bias_table(torch.randn(9, heads), cols=cols)
    assert len(fig.data) == heads
    for k in range(heads):
        name = "" if k == 0 else str(k + 1)
        for axis in (fig.layout[f"xaxis{name}"], fig.layout[f"yaxis{name}"]):
            assert 0.0 <= axis.domain[0] < axis.domain[1] <= 1.0
        assert fig.layout[f"xaxis{name}"].dtick == 1  # a tick per offset, no half cells


def test_bias_is_centred_at_zero_with_a_diverging_scale():
    bias = np.array([[[0.5, -2.0], [1.0, 0.0]]], dtype=np.float32)  # (1, 2, 2)
    fig = V.visualize_relative_position_bias(bias)
    tr = _heatmaps(fig)[0]
    np.testing.assert_array_equal(tr.z, bias[0])
    assert (tr.zmin, tr.zmax) == (-2.0, 2.0)
    masked = bias.copy()
    masked[0, 0, 1] = -np.inf  # a masked logit does not blow up the shared range
    assert _heatmaps(V.visualize_relative_position_bias(masked))[0].zmin == -1.0
    expected = go.Figure(layout={"coloraxis": {"colorscale": "RdBu_r"}}).layout.coloraxis.colorscale
    assert fig.layout.coloraxis.colorscale == expected


def test_hover_customdata_decodes_a_2x2_and_a_3x2_window_like_the_swin_index():
    for window in [(2, 2), (3, 2)]:
        h, w = window
        n = h * w
        index = get_relative_position_index_2d(window).numpy()
        fig = V.visualize_relative_position_bias(torch.zeros(n, n), window_size=window)
        tr = _heatmaps(fig)[0]
        assert "table row r = %{customdata[6]}" in tr.hovertemplate
        for i, j in [(0, 0), (0, n - 1), (n - 1, 0), (1, 2)]:
            yi, xi, yj, xj, dy, dx, r = (int(v) for v in tr.customdata[i, j])
            assert (yi, xi, yj, xj) == (i // w, i % w, j // w, j % w)
            assert (dy, dx) == (yi - yj, xi - xj)
            assert r == index[i, j]
    # (2, 2): query 0 = (0, 0), key 3 = (1, 1): offset (-1, -1), row 0 (DESIGN.md's matrix).
    cd = V.visualize_attention_weights(torch.rand(4, 4), window_size=(2, 2)).data[0].customdata
    assert cd[0, 3].tolist() == [0, 0, 1, 1, -1, -1, 0]


def test_hover_1d_gives_offset_and_row():
    tr = V.visualize_attention_weights(torch.rand(5, 5), seq_len=5).data[0]
    index = get_relative_position_index_1d(5).numpy()
    assert tr.customdata[4, 1].tolist() == [3, index[4, 1]]
    assert "offset i − j" in tr.hovertemplate


def test_large_window_keeps_coordinates_and_offset_in_int8():
    tr = V.visualize_attention_weights(torch.rand(196, 196), window_size=(14, 14)).data[0]
    assert tr.customdata.dtype == np.int8 and tr.customdata.shape == (196, 196, 6)
    assert tr.customdata[195, 0].tolist() == [13, 13, 0, 0, 13, 13]


def test_position_index_figure_plots_the_index_and_decodes_offsets():
    index = get_relative_position_index_2d((3, 2))
    fig = V.visualize_position_index(index, window_size=(3, 2))
    tr = fig.data[0]
    np.testing.assert_array_equal(tr.z, index.numpy())
    assert tr.customdata[5, 0].tolist() == [2, 1, 0, 0, 2, 1]
    assert "table row r = %{z:d}" in tr.hovertemplate
    # A square window's index is recognised without window_size.
    assert V.visualize_position_index(get_relative_position_index_2d(3)).data[0].customdata.shape == (9, 9, 6)


# ---------------------------------------------------------------- tables


def test_2d_table_is_drawn_as_its_offset_grid():
    h, w = 3, 2
    table = torch.randn((2 * h - 1) * (2 * w - 1), 4, generator=torch.Generator().manual_seed(1))
    fig = V.visualize_bias_table(table, window_size=(h, w))
    maps = _heatmaps(fig)
    assert len(maps) == 4 and len({(t.zmin, t.zmax) for t in maps}) == 1
    for k, tr in enumerate(maps):
        np.testing.assert_array_equal(tr.z, table[:, k].numpy().reshape(2 * h - 1, 2 * w - 1))
        np.testing.assert_array_equal(tr.y, np.arange(-(h - 1), h))  # Δy
        np.testing.assert_array_equal(tr.x, np.arange(-(w - 1), w))  # Δx
    # Query 4 = (2, 0), key 1 = (0, 1): offset (2, -1); its row by the library index.
    r = int(get_relative_position_index_2d((h, w))[4, 1])
    assert r == (2 + h - 1) * (2 * w - 1) + (-1 + w - 1)
    tr = maps[2]
    row, col = list(tr.y).index(2), list(tr.x).index(-1)
    assert tr.z[row, col] == table[r, 2].item()
    assert tr.customdata[row, col] == r


def test_1d_table_is_a_curve_over_offsets_and_geometry_is_inferred():
    table = torch.randn(15, 2)  # odd, not an odd square: 1D, L = 8
    fig = V.visualize_bias_table(table)
    assert [t.type for t in fig.data] == ["scatter", "scatter"]
    for k, tr in enumerate(fig.data):
        np.testing.assert_array_equal(tr.x, np.arange(-7, 8))
        np.testing.assert_array_equal(tr.y, table[:, k].numpy())
    assert _heatmaps(V.visualize_bias_table(torch.randn(25, 1)))[0].z.shape == (5, 5)  # 2D (3, 3)
    assert V.visualize_bias_table(torch.randn(9, 1), seq_len=5).data[0].type == "scatter"
    with pytest.raises(ValueError, match="window_size=.*seq_len"):
        V.visualize_bias_table(torch.randn(16, 2))
    with pytest.raises(ValueError, match="window_size"):
        V.visualize_bias_table(torch.randn(15, 2), window_size=(3, 3))


# ---------------------------------------------------------------- colour maps and inputs


def test_colormap_names_map_to_plotly_and_unknown_names_fail():
    assert resolve_colorscale("coolwarm") == "RdBu_r"
    assert resolve_colorscale("viridis") == "Viridis"
    assert resolve_colorscale("gray") == "gray"
    assert resolve_colorscale("Tealrose") == "Tealrose"  # Plotly names pass through
    with pytest.raises(ValueError, match="cmap.*coolwarm.*'nope'"):
        V.visualize_attention_weights(torch.rand(3, 3), cmap="nope")


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="attn_weights"):
        V.visualize_attention_weights([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="attn_weights"):
        V.visualize_attention_weights(torch.rand(2, 3))
    with pytest.raises(ValueError, match="window_size"):
        V.visualize_attention_weights(torch.rand(5, 5), window_size=(2, 2))
    with pytest.raises(ValueError, match="query"):
        V.query_centric_figure(torch.rand(4, 4), 4, (2, 2))
    with pytest.raises(ValueError, match="same shape"):
        V.difference_figure(torch.rand(9, 2), torch.rand(9, 3))


# ---------------------------------------------------------------- large matrices and payload


def test_block_averaging_equals_mean_pooling_and_the_title_says_so():
    x = _rng().random((2, 1024, 1024), dtype=np.float32)
    fig = V.visualize_attention_weights(x)
    assert "block-averaged 2×2" in fig.layout.title.text
    for h, tr in enumerate(_heatmaps(fig)):
        np.testing.assert_allclose(tr.z, x[h].reshape(512, 2, 512, 2).mean(axis=(1, 3)), rtol=1e-6)
        assert tr.x[0] == 0.5 and tr.customdata is None
    # Ragged last block: 5 cells, blocks of 3 -> [0:3], [3:5].
    small = np.arange(25, dtype=np.float32).reshape(5, 5)
    z = V.visualize_attention_weights(small, max_cells=2).data[0].z
    assert z[1, 0] == pytest.approx(small[3:5, 0:3].mean()) and z.shape == (2, 2)


def test_payloads_stay_small_and_binary():
    big = V.visualize_attention_weights(_rng().random((1024, 1024), dtype=np.float32))
    assert V.figure_payload_bytes(big) < 2_000_000
    vit = torch.softmax(torch.randn(196, 196), -1)
    plain = V.figure_payload_bytes(V.visualize_attention_weights(vit))
    assert 0.18e6 < plain < 0.30e6  # float32, base64: ~0.22 MB
    decoded = V.figure_payload_bytes(V.visualize_attention_weights(vit, window_size=(14, 14)))
    assert decoded < 0.65e6  # + int8 hover data: ~0.57 MB
    z = json.loads(V.visualize_attention_weights(vit).to_json())["data"][0]["z"]
    assert isinstance(z, dict) and z["dtype"] == "f4"  # binary, never a list


# ---------------------------------------------------------------- other figures


def test_query_centric_row_on_the_grid_with_image_and_marked_query():
    m = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(2))
    fig = V.query_centric_figure(m, 4, (3, 2), image=torch.rand(3, 12, 8), zmid=0.0, cmap="coolwarm")
    maps = _heatmaps(fig)
    assert len(maps) == 2 and sum(t.type == "image" for t in fig.data) == 2
    for h, tr in enumerate(maps):
        np.testing.assert_array_equal(tr.z, m[h, 4].numpy().reshape(3, 2))
        assert tr.zmin == -tr.zmax == -float(m[:, 4].abs().max())
    # key 1 = (0, 1), offset (2, -1), row (2 + 2) * 3 + (-1 + 1) = 12, as the library index says
    assert tr.customdata[0, 1].tolist() == [1, 2, -1, 12]
    assert int(get_relative_position_index_2d((3, 2))[4, 1]) == 12
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (-0.5, 0.5, 1.5, 2.5)  # query 4 = (2, 0)
    assert fig.data[0].source.startswith("data:image/png;base64,")


def test_training_curves_overlay_runs_and_tolerate_gaps():
    runs = {
        "a": [
            {"kind": "step", "step": 1, "epoch": 0, "train_loss": 2.0, "lr": 0.1},
            {"kind": "step", "step": 2, "epoch": 0, "train_loss": 1.5, "train_accuracy": 0.4},
            {"kind": "step", "step": 3, "epoch": 0, "train_loss": None},
            {"kind": "epoch", "step": 3, "epoch": 0, "eval_loss": 1.2, "eval_accuracy": 0.6},
        ],
        "b": [{"kind": "step", "step": 5, "train_loss": 1.0}],
        "empty": [],
    }
    fig = V.training_curves_figure(runs)
    by_name = {(t.name, t.yaxis): t for t in fig.data}
    np.testing.assert_array_equal(by_name[("a · train", "y")].y, [2.0, 1.5])
    np.testing.assert_array_equal(by_name[("a · eval", "y2")].y, [0.6])
    np.testing.assert_array_equal(by_name[("b · train", "y")].x, [5])
    assert fig.layout.xaxis.title.text == "step"
    assert len(V.training_curves_figure({}).data) == 0
    assert len(V.training_curves_figure({"x": []}).data) == 0


def test_difference_maps_are_b_minus_a_centred_at_zero():
    a, b = torch.randn(9, 2), torch.randn(9, 2)
    fig = V.difference_figure(a, b, names=("init", "learned"), window_size=(2, 2))
    maps = _heatmaps(fig)
    for k, tr in enumerate(maps):
        np.testing.assert_allclose(tr.z, (b - a)[:, k].numpy().reshape(3, 3), rtol=1e-6)
    assert maps[0].zmin == -maps[0].zmax and "learned − init" in fig.layout.title.text
    ba, bb = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    maps = _heatmaps(V.difference_figure(ba, bb, kind="bias"))
    assert len(maps) == 3
    np.testing.assert_allclose(maps[2].z, (bb - ba)[2].numpy(), rtol=1e-6)


# ---------------------------------------------------------------- saving


def test_html_is_self_contained_and_folders_are_created(tmp_path):
    path = tmp_path / "deep" / "er" / "fig.html"
    V.visualize_attention_weights(torch.rand(4, 4), save_path=path)
    text = path.read_text(encoding="utf-8")
    assert re.search(r"plotly\.js v\d", text) and len(text) > 1_000_000  # the library is inlined
    assert re.findall(r"<script\b[^>]*\bsrc=", text) == []  # and nothing is fetched


def test_figure_bytes_html_for_downloads():
    data = V.figure_bytes(V.visualize_bias_table(torch.randn(9, 1)), "html")
    assert data.lower().startswith(b"<!doctype html>") and b"plotly.js v" in data
    with pytest.raises(ValueError, match="fmt"):
        V.figure_bytes(go.Figure(), "gif")


def test_unknown_suffix_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\.html.*\.png.*\.svg"):
        V.save_figure(go.Figure(), tmp_path / "fig.jpg")


def test_no_browser_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(figure_export.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y chromium.*BROWSER_PATH"):
        V.save_figure(go.Figure(), tmp_path / "sub" / "fig.png")
    assert not (tmp_path / "sub").exists()
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(RuntimeError, match="BROWSER_PATH"):
        V.save_figure(go.Figure(), tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")
def test_png_through_kaleido_and_chromium(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", CHROMIUM)
    path = tmp_path / "png" / "table.png"
    V.visualize_bias_table(torch.randn(9, 2), save_path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


@pytest.mark.browser
def test_hover_decodes_a_cell_in_a_real_browser(tmp_path, browser):
    """plotly.js itself reads the binary (N, N, 7) customdata: hover a cell of the saved HTML."""
    path = tmp_path / "hover.html"
    V.visualize_attention_weights(torch.rand(6, 6), window_size=(3, 2), save_path=path)
    page = browser.new_page(viewport={"width": 800, "height": 700})
    try:
        page.goto(path.as_uri())
        box = page.locator(".nsewdrag").first.bounding_box()
        # Cell (row 3, column 4) of the 6 x 6 map: query 3 = (1, 1), key 4 = (2, 0).
        page.mouse.move(box["x"] + box["width"] * 4.5 / 6, box["y"] + box["height"] * 3.5 / 6)
        page.wait_for_function("() => document.querySelector('.hoverlayer').textContent.length > 0")
        text = page.evaluate("() => document.querySelector('.hoverlayer').textContent")
    finally:
        page.close()
    index = get_relative_position_index_2d((3, 2))
    assert "query i = 3 at (y, x) = (1, 1)" in text and "key j = 4 at (y, x) = (2, 0)" in text
    assert "offset (Δy, Δx) = (-1, 1)" in text and f"table row r = {int(index[3, 4])}" in text


# ---------------------------------------------------------------- bias families


def test_t5_table_is_a_curve_over_buckets_whose_hover_lists_the_offsets():
    from relpos.relative_position import t5_relative_position_bucket

    table = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))  # (num_buckets, H)
    fig = V.visualize_bias_table(table, bias_type="t5", seq_len=12, max_distance=6)
    assert [t.type for t in fig.data] == ["scatter"] * 3
    for k, tr in enumerate(fig.data):
        np.testing.assert_array_equal(tr.x, np.arange(8))  # x = bucket, not offset
        np.testing.assert_array_equal(tr.y, table[:, k].numpy())
    rel = torch.arange(-11, 12)  # every offset j - i of a length-12 sequence
    buckets = t5_relative_position_bucket(rel, 8, 6)
    for b in range(8):
        offs = rel[buckets == b]
        text, count = fig.data[0].customdata[b]
        assert int(count) == offs.numel()
        if offs.numel():
            lo, hi = int(offs.min()), int(offs.max())
            assert text == (str(lo) if lo == hi else f"{lo}..{hi}")
    assert sum(int(c) for _, c in fig.data[0].customdata) == 23
    step = V.t5_bucket_map_figure(8, 6, seq_len=12)
    np.testing.assert_array_equal(step.data[0].x, rel.numpy())
    np.testing.assert_array_equal(step.data[0].y, buckets.numpy())
    with pytest.raises(ValueError, match="bias_type"):
        V.visualize_bias_table(table, bias_type="t6")


def test_2d_cls_table_grid_leaves_out_the_three_class_token_rows():
    h, w = 2, 3
    t = (2 * h - 1) * (2 * w - 1)
    table = torch.randn(t + 3, 2, generator=torch.Generator().manual_seed(1))
    fig = V.visualize_bias_table(table, window_size=(h, w), bias_type="2d_cls")
    maps = _heatmaps(fig)
    for k, tr in enumerate(maps):
        np.testing.assert_array_equal(tr.z, table[:t, k].numpy().reshape(2 * h - 1, 2 * w - 1))
    np.testing.assert_allclose(np.array(fig.layout.meta["cls_rows"]), table[t:].numpy())
    note = fig.layout.annotations[-1].text
    assert f"cls → cls {table[t + 2, 1].item():.3g}" in note and "head 1" in note
    diff = V.difference_figure(table, table * 2, kind="table", window_size=(h, w), bias_type="2d_cls")
    np.testing.assert_allclose(_heatmaps(diff)[0].z, table[:t, 0].numpy().reshape(3, 5))
