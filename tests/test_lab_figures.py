"""relpos.experiments.lab_figures: the lab figures carry the summary's numbers, the paper's numbers,
and one shared colour scale for the attention maps."""

from __future__ import annotations

import numpy as np
import pytest

from relpos.experiments import lab_figures
from relpos.experiments.lab_report import PAPER_RESULTS


def _s(scheme, ev, mean, std, lo, hi, n=3, images=512):
    return {"scheme": scheme, "eval": ev, "n": n, "mean": mean, "std": std, "min": lo, "max": hi, "images": images}


SUMMARY = [_s("2d/bicubic", "grid=6x6", 0.98, 0.01, 0.97, 0.99), _s("2d/bicubic", "grid=12x12", 0.61, 0.17, 0.47, 0.81),
           _s("2d/bicubic", "grid=8x8", 0.88, 0.07, 0.8, 0.94), _s("2d/bicubic", "grid=8x8/finetuned", 0.99, 0.0, 0.99, 0.99),
           _s("cpb/log", "grid=6x6", 1.0, None, 1.0, 1.0, n=1), _s("cpb/log", "grid=8x8", 0.99, None, 0.99, 0.99, n=1)]


def test_transfer_figure_lines_bands_and_ratios():
    fig = lab_figures.transfer_figure(SUMMARY, (4, 4), colors={"cpb/log": "#123456"})
    names = [t.name for t in fig.data]
    assert names == ["2d/bicubic band", "2d/bicubic", "2d/bicubic, fine-tuned", "cpb/log"]  # one seed: no band
    band, line, tuned, cpb = fig.data
    np.testing.assert_allclose(line.x, [1.5, 2.0, 3.0])  # sorted by grid, x = grid / training grid
    np.testing.assert_allclose(line.y, [0.98, 0.88, 0.61])
    np.testing.assert_allclose(band.y, [0.99, 0.94, 0.81, 0.47, 0.8, 0.97])  # max forward, min back
    np.testing.assert_allclose(band.x, [1.5, 2.0, 3.0, 3.0, 2.0, 1.5])
    assert tuned.line.dash == "dash" and list(tuned.y) == [0.99] and cpb.line.color == "#123456"
    assert "0.880 ± 0.070 (3 seeds, 512 images; min 0.800, max 0.940)" in line.text[1]
    assert list(fig.layout.xaxis.ticktext) == ["6x6<br>1.5×", "8x8<br>2×", "12x12<br>3×"]
    with pytest.raises(ValueError, match="train"):
        lab_figures.transfer_figure(SUMMARY, (0, 0))


def test_paper_transfer_figure_is_table_1():
    p = PAPER_RESULTS["transfer"]
    fig = lab_figures.paper_transfer_figure()
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {f"{k}{s}" for k in p["rows"] for s in ("", ", fine-tuned")}
    np.testing.assert_allclose(by_name["2d/bicubic"].x, [1, 1.5, 2, 2.5, 3])
    np.testing.assert_allclose(by_name["cpb/log"].y, [81.8, 82.4, 81.7, 80.4, 79.1])
    np.testing.assert_allclose(by_name["cpb/linear, fine-tuned"].y, [81.7, 82.9, 83.3, 83.6, 83.7])
    assert "CVPR 2022, Table 1" in fig.layout.title.text


def test_bars_figure_groups_error_bars_and_seed_dots():
    summary = [_s("none", "region=seen", 0.42, 0.02, 0.4, 0.44), _s("2d", "region=seen", 0.95, 0.05, 0.9, 0.99),
               _s("2d", "region=unseen", 0.8, None, 0.8, 0.8, n=1)]
    rows = [{"scheme": "2d", "eval": "region=seen", "seed": s, "accuracy": a} for s, a in ((0, 0.9), (1, 0.99))]
    fig = lab_figures.bars_figure(summary, rows, groups=["region=seen", "region=unseen"], schemes=["2d", "cpb"],
                                  group_names={"region=seen": "seen"}, chance=0.25)
    seen, dots, unseen = fig.data
    assert list(seen.x) == ["2d", "none"] and seen.name == "seen" and unseen.name == "region=unseen"
    np.testing.assert_allclose(seen.y, [0.95, 0.42])
    np.testing.assert_allclose(seen.error_y.array, [0.05, 0.02])
    np.testing.assert_allclose(unseen.y, [0.8, np.nan])
    np.testing.assert_allclose(unseen.error_y.array, [0.0, 0.0])
    assert list(seen.text) == ["0.950 ± 0.050", "0.420 ± 0.020"] and seen.customdata[0] == "3 seeds, 512 images"
    assert dots.offsetgroup == "region=seen" and list(dots.y) == [0.9, 0.99] and list(dots.customdata) == [0, 1]
    assert fig.layout.barmode == "group" and fig.layout.scattermode == "group"
    assert fig.layout.shapes[0].y0 == 0.25  # the chance line


def test_shift_attention_figure_one_colour_scale_marks_and_region():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[2:4, 12:14, 0] = 255  # mark A (red)
    image[9:11, 3:5, 2] = 255  # mark B (blue)
    a = np.full((4, 4), 1 / 16)
    b = np.zeros((4, 4))
    b[2, 0] = 0.7  # the relative model looks at B
    fig = lab_figures.shift_attention_figure(image, {"absolute": a, "2d": b}, (2, 12, 9, 3), mark_size=2, patch=4,
                                             query=(0, 3), seen_cols=(0, 10))
    assert [t.type for t in fig.data] == ["image", "heatmap", "heatmap"]
    heat = fig.data[1:]
    assert {t.coloraxis for t in heat} == {"coloraxis"}
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(0.7)
    np.testing.assert_allclose(heat[1].z, b)
    np.testing.assert_allclose(heat[0].x, [1.5, 5.5, 9.5, 13.5])  # cell centres in pixels
    rects = [s for s in fig.layout.shapes if s.type == "rect" and s.line.width == 3]
    mark_a = [s for s in rects if s.line.color == lab_figures.MARK_COLORS["A"]]
    assert len(mark_a) == 3 and (mark_a[0].x0, mark_a[0].x1, mark_a[0].y0, mark_a[0].y1) == (11.5, 13.5, 1.5, 3.5)
    query = [s for s in rects if s.line.dash == "dot"]
    assert len(query) == 2 and (query[0].x0, query[0].y0) == (11.5, -0.5)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 3 and {s.x0 for s in lines} == {9.5}  # the end of the trained columns, every panel
    with pytest.raises(ValueError, match="patch grid"):
        lab_figures.shift_attention_figure(image, {"x": np.zeros((3, 3))}, (0, 0, 0, 0), mark_size=2, patch=4,
                                           query=(0, 0))


def test_scheme_colors_are_stable():
    colors = lab_figures.scheme_colors(["a", "b", "a"])
    assert list(colors) == ["a", "b"] and colors["a"] != colors["b"]
