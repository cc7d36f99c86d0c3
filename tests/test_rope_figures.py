"""RoPE's figures: relpos.experiments.rope_figures.

The position kernel figure carries exactly ``RotaryPositionEmbedding.position_kernel`` laid out as a
2D table's offset grid (curves over the offsets in 1D); kernels and frequencies share one scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relpos.experiments import rope_figures as rf
from relpos.geometry import relative_position_index
from relpos.rotary import RotaryPositionEmbedding, content_directions


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def rope(mode="axial", grid=(3, 4), heads=2, head_dim=8, **kw):
    torch.manual_seed(0)
    return RotaryPositionEmbedding(head_dim, grid, mode=mode, num_heads=heads, **kw)


# ----------------------------------------------------------------------------- the kernel figure


@pytest.mark.parametrize("mode, indexing", [("axial", "ij"), ("axial", "xy"), ("mixed", "xy"), ("mixed", "ij")])
def test_kernel_figure_is_position_kernel_on_the_offset_grid(mode, indexing):
    r = rope(mode, (3, 4), heads=2, head_dim=8, grid_indexing=indexing)
    u = content_directions("random", 8, 2, seed=1)
    kernel = r.position_kernel(u)  # (2, 5, 7)
    fig = rf.position_kernel_figure(kernel, title="k")
    maps = heatmaps(fig)
    assert len(maps) == 2
    for h, trace in enumerate(maps):
        np.testing.assert_array_equal(np.asarray(trace.z), kernel[h].numpy())
        np.testing.assert_array_equal(trace.x, np.arange(-3, 4))  # Δx = x_i - x_j
        np.testing.assert_array_equal(trace.y, np.arange(-2, 3))  # Δy = y_i - y_j
        assert "q·k = " in trace.hovertemplate and "bias" not in trace.hovertemplate
    assert fig.layout.coloraxis.colorbar.title.text == "q·k"
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax  # diverging, centred at 0
    assert fig.layout.meta["kind"] == "position_kernel"
    # Gathered through the 2D index, the kernel is the logit matrix of the rotated contents.
    gathered = kernel.flatten(1)[:, relative_position_index((3, 4))]
    torch.testing.assert_close(gathered, r.position_logits(u), atol=1e-5, rtol=1e-5)


def test_kernel_figure_1d_is_curves_over_offsets():
    r = rope("1d", 5, heads=2, head_dim=8)
    kernel = r.position_kernel(content_directions("ones", 8, 2))  # (2, 9)
    fig = rf.position_kernel_figure(kernel)
    assert not heatmaps(fig)
    for h, trace in enumerate(fig.data):
        np.testing.assert_array_equal(trace.x, np.arange(-4, 5))
        np.testing.assert_allclose(trace.y, kernel[h].numpy(), rtol=1e-6)
    assert fig.layout.yaxis.title.text == "q·k"


def test_kernel_table_round_trip_and_errors():
    k = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    table, geo = rf.kernel_table(k)
    assert table.shape == (15, 2) and geo == {"window_size": (2, 3)}
    np.testing.assert_array_equal(table[:, 1].reshape(3, 5), k[1])
    assert rf.kernel_table(np.zeros((3, 7)))[1] == {"seq_len": 4}
    with pytest.raises(ValueError, match="odd sides"):
        rf.kernel_table(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(H, 2h-1, 2w-1\)"):
        rf.kernel_table(np.zeros(5))
    with pytest.raises(TypeError, match="kernel"):
        rf.kernel_table([[1.0]])
    with pytest.raises(ValueError, match="direction"):
        rf.kernel_caption("sideways")
    assert "RoPE has no table" in rf.kernel_caption("mean")


def test_share_kernel_scale_one_symmetric_range():
    a, b = np.full((1, 3, 3), 0.5, np.float32), np.linspace(-2, 1, 9, dtype=np.float32).reshape(1, 3, 3)
    figs = [rf.position_kernel_figure(a), rf.position_kernel_figure(b)]
    rf.share_kernel_scale(figs)
    for f in figs:
        assert heatmaps(f)[0].zmin == pytest.approx(-2.0) and heatmaps(f)[0].zmax == pytest.approx(2.0)
    curves = [rf.position_kernel_figure(np.array([[0.1, 1.0, 0.1]])), rf.position_kernel_figure(np.array([[-3.0, 1, 0]]))]
    rf.share_kernel_scale(curves)
    assert curves[0].layout.yaxis.range == curves[1].layout.yaxis.range == pytest.approx((-3.15, 3.15))


# ----------------------------------------------------------------------------- the frequencies figure


def test_mixed_frequencies_figure_points_and_one_scale():
    initial = rope("mixed", (4, 4), heads=3, head_dim=8).freqs.detach()  # (2, 3, 4)
    learned = initial * 1.5 + 0.1
    fig = rf.mixed_frequencies_figure(learned, initial)
    dots = [t for t in fig.data if t.mode == "markers"]
    before, after = dots[0::2], dots[1::2]
    assert len(before) == len(after) == 3
    for h in range(3):
        np.testing.assert_allclose(before[h].x, initial[0, h].numpy(), rtol=1e-6)  # freqs[0]: the column x
        np.testing.assert_allclose(before[h].y, initial[1, h].numpy(), rtol=1e-6)
        np.testing.assert_allclose(after[h].x, learned[0, h].numpy(), rtol=1e-6)
        np.testing.assert_allclose(after[h].y, learned[1, h].numpy(), rtol=1e-6)
    top = float(torch.cat([learned, initial]).abs().max())
    ranges = {tuple(fig.layout[f"{ax}axis{k if k > 1 else ''}"].range) for ax in "xy" for k in (1, 2, 3)}
    assert len(ranges) == 1  # every panel, both axes: one scale
    lo, hi = ranges.pop()
    assert lo == -hi and hi >= top
    alone = rf.mixed_frequencies_figure(learned)
    assert len(alone.data) == 3 and all(t.mode == "markers" for t in alone.data)
    with pytest.raises(ValueError, match="same shape"):
        rf.mixed_frequencies_figure(learned, initial[:, :2])
    with pytest.raises(ValueError, match=r"\(2, H, P\)"):
        rf.mixed_frequencies_figure(learned[0])
