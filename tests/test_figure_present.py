"""relpos.experiments.figure_present: fonts of 18 px or more, the title handed over, a height that fits a
projector."""

from __future__ import annotations

import numpy as np
import pytest

from relpos.experiments import stepthrough as stp
from relpos.experiments import stepthrough_figure as sf
from relpos.experiments import visualize as viz
from relpos.experiments.figure_present import PRESENTER_FONT_PX, presenter_layout, take_title


def test_every_font_is_raised():
    maps = np.random.default_rng(0).random((4, 9, 9))
    fig = presenter_layout(viz.visualize_attention_weights(maps, window_size=(3, 3), title="Attention"))
    layout = fig.layout
    assert PRESENTER_FONT_PX >= 18
    assert layout.font.size >= 18 and layout.title.font.size >= 18 and layout.hoverlabel.font.size >= 18
    for name in ("xaxis", "yaxis", "xaxis4", "yaxis4"):
        assert layout[name].tickfont.size >= 18
    assert layout.xaxis.title.font.size >= 18  # "key j"
    assert all(a.font.size >= 18 for a in layout.annotations)  # panel titles, 13 px before
    assert layout.coloraxis.colorbar.tickfont.size >= 18 and layout.coloraxis.colorbar.title.font.size >= 18
    assert layout.yaxis.constraintoward == "top"  # a square map hugs its title


def test_take_title_hands_the_title_over_and_the_top_margin_shrinks():
    title = "With the relative bias · layer 0, head 0 · near uniform (0.0611–0.0642): scale from 0"
    fig = viz.query_centric_figure(np.ones((9, 9)), 4, (3, 3), title=title)
    assert take_title(fig) == title and not fig.layout.title.text
    assert take_title(fig) == ""
    presenter_layout(fig)
    assert fig.layout.margin.t < 84  # no title: little room above the map
    heads = viz.visualize_attention_weights(np.ones((2, 4, 4)), window_size=(2, 2), title="")
    presenter_layout(heads)
    assert heads.layout.margin.t >= 36 + 18  # the panel titles keep their room


def test_height_is_capped_but_not_for_an_animation():
    fig = presenter_layout(viz.query_centric_figure(np.ones((9, 9)), 4, (3, 3)), max_height=470)
    assert fig.layout.height == 470  # 600 before
    s = stp.step_through("2d", (3, 3), 2, 0, 4, preset="locality", alpha=2.0)
    anim = sf.step_through_figure(s, 3, sweep=stp.alpha_sweep("2d", (3, 3), 2, 0, 4))
    before_plot = anim.layout.height - anim.layout.margin.t - anim.layout.margin.b
    presenter_layout(anim, max_height=470)
    assert anim.layout.height - anim.layout.margin.t - anim.layout.margin.b == before_plot  # slider stays put
    with pytest.raises(ValueError, match="font_px"):
        presenter_layout(fig, font_px=4)
