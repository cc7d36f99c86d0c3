"""The resize lab: bias at offsets read off the bias, and a saved checkpoint moved to a new size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import build_model, resolve_config
from relpos.experiments.config_utils import load_config
from relpos.experiments.resize_lab import bias_at_offsets, resize_lab
from relpos.relative_position import RelativePositionBias

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_bias_at_offsets_reads_the_table():
    m = RelativePositionBias(num_heads=2, window_size=(3, 3), bias_type="2d_cls")
    with torch.no_grad():
        m.relative_position_bias_table.copy_(torch.arange(56.0).view(28, 2))
    got = bias_at_offsets(m, ((0, 1), (-1, 0), (2, 2), (3, 0)))
    # row of (dy, dx) = (dy + 2) * 5 + (dx + 2); (3, 0) is outside a 3x3 window
    assert got == {(0, 1): [26.0, 27.0], (-1, 0): [14.0, 15.0], (2, 2): [48.0, 49.0]}
    one = RelativePositionBias(num_heads=1, seq_len=4, bias_type="alibi")
    assert bias_at_offsets(one, ((0, -2), (0, 1), (1, 0))) == {(0, -2): [-2 / 256], (0, 1): [-1 / 256]}


def test_resize_lab_on_a_saved_checkpoint(tmp_path):
    cfg = resolve_config(load_config(ROOT / "configs" / "tiny.yaml"))
    model = build_model(cfg)
    path = tmp_path / "best.pt"
    save_checkpoint(model, None, 1, {}, path, config=cfg)
    lab = resize_lab(str(path), 12, max_samples=16)
    assert lab["old_grid"] == (4, 4) and lab["new_grid"] == (6, 6)
    assert [r["model"] for r in lab["accuracy"]] == ["original", "bicubic", "bicubic, bias off", "geometric"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in lab["accuracy"])
    assert lab["tables"]["original"].shape == (49, 2) and lab["tables"]["geometric"].shape == (121, 2)
    assert {r["model"] for r in lab["offsets"]} == {"original", "bicubic", "geometric"}
    assert any("resized (geometric)" in n for n in lab["notes"]["geometric"])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_lab(str(path), 13)


@pytest.mark.slow
def test_resize_lab_page_renders(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cfg = resolve_config(load_config(ROOT / "configs" / "tiny.yaml"))
    save_checkpoint(build_model(cfg), None, 1, {}, tmp_path / "tiny-run" / "best.pt", config=cfg)
    monkeypatch.setenv("RELPOS_RUNS_ROOT", str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))  # app.py's folder is on the path when served; alone we must
    at = AppTest.from_file(str(ROOT / "pages" / "6_resize_lab.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    acc = at.dataframe[0].value
    assert list(acc["model"]) == ["original", "bicubic", "bicubic, bias off", "geometric"]
    assert len(at.get("plotly_chart")) == 3
    at.slider(key="rl_grid").set_value(3).run()
    assert not at.exception and at.dataframe[0].value["img_size"].tolist()[1] == 6


@pytest.mark.parametrize("bias_type", ["alibi", "cpb", "2d"])
def test_set_window_size_keeps_dtype(bias_type):
    m = RelativePositionBias(num_heads=2, window_size=(2, 2), bias_type=bias_type).double()
    m.set_window_size((3, 3))
    bias = m()
    assert bias.dtype == torch.float64 and bias.shape == (2, 9, 9)
