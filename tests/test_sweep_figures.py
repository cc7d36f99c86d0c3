"""relpos.experiments.sweep_figures: the leaderboard bars and the member curves, against hand numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relpos.experiments.sweep_figures import cell_colors, leaderboard_figure, sweep_curves_figure


def rows():
    return [
        {"label": "2d", "acc_mean": 0.97, "acc_std": 0.02, "accs": [0.95, 0.97, 0.99], "n": 3, "n_failed": 0,
         "n_pending": 0},
        {"label": "none", "acc_mean": 0.32, "acc_std": None, "accs": [0.32], "n": 1, "n_failed": 1, "n_pending": 0},
        {"label": "t5", "acc_mean": None, "acc_std": None, "accs": [], "n": 0, "n_failed": 0, "n_pending": 3},
    ]


def test_cell_colors_are_distinct_and_stable():
    colors = cell_colors([f"c{k}" for k in range(12)])
    assert len(set(colors.values())) == 12 and colors == cell_colors([f"c{k}" for k in range(12)])


def test_leaderboard_bars_error_bars_and_seed_dots():
    fig = leaderboard_figure(rows())
    bars, dots = fig.data
    assert list(bars.x) == ["2d", "none", "t5"]
    np.testing.assert_allclose(bars.y, [97.0, 32.0, 0.0])  # no finished member: no bar
    np.testing.assert_allclose(bars.error_y.array, [2.0, 0.0, 0.0])
    assert list(bars.text) == ["97.0 ± 2.0 (n=3)", "32.0 (n=1)", "pending"]
    assert list(fig.layout.xaxis.ticktext) == ["<b>2d</b><br>97.0 ± 2.0<br>(n=3)", "<b>none</b><br>32.0<br>(n=1)",
                                               "<b>t5</b><br>pending"]
    assert list(dots.x) == ["2d", "2d", "2d", "none"]
    np.testing.assert_allclose(dots.y, [95.0, 97.0, 99.0, 32.0])
    assert bars.marker.color[0] == cell_colors(["2d", "none", "t5"])["2d"]


def test_curves_band_is_min_to_max_over_seeds_and_mean_in_the_legend():
    curves = {
        "2d": [{"run": "a", "seed": 0, "x": np.array([10.0, 20.0]), "y": np.array([0.5, 0.9])},
               {"run": "b", "seed": 1, "x": np.array([10.0, 20.0]), "y": np.array([0.7, 0.8])},
               {"run": "c", "seed": 2, "x": np.array([10.0]), "y": np.array([0.6])}],  # still running
        "none": [{"run": "d", "seed": 0, "x": np.array([10.0, 20.0]), "y": np.array([0.3, 0.3])}],
        "t5": [{"run": "e", "seed": 0, "x": np.zeros(0), "y": np.zeros(0)}],  # nothing logged yet
    }
    fig = sweep_curves_figure(curves)
    by_name = {t.name: t for t in fig.data}
    band = by_name["2d band"]
    np.testing.assert_allclose(band.x, [10, 20, 20, 10])
    np.testing.assert_allclose(band.y, [70.0, 90.0, 80.0, 50.0])  # max forward, then min backward
    np.testing.assert_allclose(by_name["2d (n=3)"].y, [60.0, 85.0])  # mean of the seeds at each step
    assert "none band" not in by_name and by_name["none (n=1)"].showlegend is not False  # one seed: no band
    assert not [t for t in fig.data if t.name.startswith("t5")]
    assert [t.name for t in fig.data if t.showlegend is not False] == ["2d (n=3)", "none (n=1)"]
    assert math.isclose(len([t for t in fig.data if t.legendgroup == "2d"]), 1 + 3 + 1)


def test_empty_curves_say_so():
    fig = sweep_curves_figure({"2d": []})
    assert not fig.data and "no validation accuracy" in fig.layout.annotations[0].text


@pytest.mark.parametrize("builder", [leaderboard_figure, sweep_curves_figure])
def test_title_must_be_text(builder):
    with pytest.raises(TypeError, match="title"):
        builder(rows() if builder is leaderboard_figure else {}, title=3)
