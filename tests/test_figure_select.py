"""relpos.experiments.figure_select: the click layer over heatmaps, what a click reports, selection marks."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from relpos.experiments import figure_select as fs
from relpos.experiments import visualize as viz
from relpos.geometry import relative_position_index


def pickers(fig: go.Figure) -> list[go.Scatter]:
    return [t for t in fig.data if t.type == "scatter" and t.meta == "relpos-pick"]


def test_picker_has_one_point_per_cell_with_panel_row_column_and_the_value():
    index = relative_position_index((2, 3)).numpy()  # (6, 6)
    fig = fs.add_cell_picker(viz.visualize_position_index(index, window_size=(2, 3)))
    (pick,) = pickers(fig)
    cd = np.asarray(pick.customdata)
    assert cd.shape[0] == 36
    # Point p is cell (row, column) = divmod(p, 6): panel 0, the row, the column, ..., the value last.
    rows, cols = np.divmod(np.arange(36), 6)
    np.testing.assert_array_equal(cd[:, 0], 0)
    np.testing.assert_array_equal(cd[:, 1], rows)
    np.testing.assert_array_equal(cd[:, 2], cols)
    np.testing.assert_array_equal(cd[:, -1], index[rows, cols])
    np.testing.assert_array_equal(np.asarray(pick.x), cols)
    np.testing.assert_array_equal(np.asarray(pick.y), rows)
    # Hover data of the heatmap, shifted by the three pick fields: (y_i, x_i) of query i = row.
    np.testing.assert_array_equal(cd[:, 3], rows // 3)
    np.testing.assert_array_equal(cd[:, 4], rows % 3)
    heat = fig.data[0]
    assert heat.hoverinfo == "skip" and heat.hovertemplate is None
    assert "%{customdata[3]}" in pick.hovertemplate and "%{z" not in pick.hovertemplate
    assert "%{customdata[9]:d}" in pick.hovertemplate  # the table row (the index's value) is the last field
    assert fig.layout.hoverdistance == -1


def test_picker_panels_are_the_heads_of_small_multiples():
    maps = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    fig = fs.add_cell_picker(viz.visualize_attention_weights(maps, window_size=(2, 2)))
    layers = pickers(fig)
    assert [t.xaxis for t in layers] == ["x", "x2", "x3"]
    for k, t in enumerate(layers):
        cd = np.asarray(t.customdata)
        np.testing.assert_array_equal(cd[:, 0], k)
        np.testing.assert_allclose(cd[:, -1], maps[k].reshape(-1))


def test_picker_above_the_budget_takes_every_sth_cell_and_says_so():
    z = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    fig = fs.add_cell_picker(go.Figure(go.Heatmap(z=z)), max_points=1000)
    (pick,) = pickers(fig)
    cd = np.asarray(pick.customdata)
    stride = 4  # ceil(sqrt(10000 / 1000))
    assert cd.shape[0] == (100 // stride) ** 2 <= 1000
    np.testing.assert_array_equal(np.unique(cd[:, 1]), np.arange(stride // 2, 100, stride))
    np.testing.assert_array_equal(cd[:, -1], z[cd[:, 1].astype(int), cd[:, 2].astype(int)])
    assert "every 4th" in pick.hovertemplate


def test_picker_needs_a_heatmap():
    with pytest.raises(ValueError, match="no heatmap"):
        fs.add_cell_picker(go.Figure(go.Scatter(x=[0], y=[0])))


def test_picked_cell_reads_streamlits_selection():
    point = {"curve_number": 5, "x": 1, "y": 2, "customdata": [2.0, 3.0, 4.0, 0.5]}
    event = {"selection": {"points": [point], "point_indices": [0], "box": [], "lasso": []}}
    assert fs.picked_cell(event) == (2, 3, 4)
    assert fs.picked_cell(event["selection"]) == (2, 3, 4)
    # Plotly's binary customdata is a typed array in the browser: Streamlit sends it as {"0": ..., "1": ...}.
    typed = {"selection": {"points": [{"customdata": {"1": 7.0, "0": 0.0, "2": 2.0, "3": 0.25}}]}}
    assert fs.picked_cell(typed) == (0, 7, 2)
    assert fs.picked_cell({"selection": {"points": []}}) is None
    assert fs.picked_cell(None) is None
    assert fs.picked_cell({"selection": {"points": [{"x": 1}]}}) is None  # a point of another trace


def test_mark_cells_outlines_the_cell_on_each_panel():
    fig = viz.visualize_attention_weights(np.ones((2, 4, 4)), window_size=(2, 2))
    fs.mark_cells(fig, [(1, 3)], panels=[1], color="red")
    (shape,) = fig.layout.shapes
    assert (shape.xref, shape.yref) == ("x2", "y2")
    assert (shape.x0, shape.x1, shape.y0, shape.y1) == (2.5, 3.5, 0.5, 1.5)
    with pytest.raises(ValueError, match="inside 4x4"):
        fs.mark_cells(fig, [(4, 0)])
    with pytest.raises(ValueError, match="panels"):
        fs.mark_cells(fig, [(0, 0)], panels=[2])


def test_mark_panel_frames_the_head_and_names_it():
    fig = viz.visualize_attention_weights(np.ones((3, 4, 4)), window_size=(2, 2))
    fs.mark_panel(fig, 2)
    (shape,) = fig.layout.shapes
    assert (shape.xref, shape.yref) == ("x3 domain", "y3 domain")
    assert fig.layout.annotations[2].text == "<b>head 2 · selected</b>"
    assert fig.layout.annotations[0].text == "head 0"
    with pytest.raises(ValueError, match="panel"):
        fs.mark_panel(fig, 3)


def test_image_grid_figure_is_clickable_per_patch():
    picture = np.zeros((8, 12, 3), np.uint8)
    fig = fs.image_grid_figure(picture, (2, 3), selected=(1, 2), title="input")
    assert fig.data[0].type == "image" and fig.data[0].source.startswith("data:image/png;base64,")
    (pick,) = pickers(fig)
    cd = np.asarray(pick.customdata)
    np.testing.assert_array_equal(cd[:, 1:3], [[y, x] for y in range(2) for x in range(3)])
    np.testing.assert_array_equal(cd[:, 3], np.arange(6))  # the token y * w + x
    outline = fig.layout.shapes[-1]
    assert (outline.x0, outline.x1, outline.y0, outline.y1) == (1.5, 2.5, 0.5, 1.5)
    assert len(fig.layout.shapes) == 1 + (3 - 1) + (2 - 1)  # the outline and the grid lines
    with pytest.raises(ValueError, match="inside the 2x3 grid"):
        fs.image_grid_figure(picture, (2, 3), selected=(2, 0))
    with pytest.raises(ValueError, match="uint8"):
        fs.image_grid_figure(picture.astype(np.float32), (2, 3))
