"""The app's streamlit-free policy (relpos.explore): limits, inputs, formatting, checked by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from relpos import explore
from relpos.families import BIAS_TYPES, FAMILIES
from relpos.geometry import decode_cell


def test_limits_are_enforced():
    assert explore.check_app_size((explore.MAX_WINDOW_SIDE, 2)) == (explore.MAX_WINDOW_SIDE, 2)
    assert explore.check_app_size(explore.MAX_SEQ_LEN) == explore.MAX_SEQ_LEN
    with pytest.raises(ValueError, match="window_size"):
        explore.check_app_size((explore.MAX_WINDOW_SIDE + 1, 2))
    with pytest.raises(ValueError, match="seq_len"):
        explore.check_app_size(explore.MAX_SEQ_LEN + 1)
    with pytest.raises(ValueError, match="window_size"):
        explore.check_app_size((0, 3))
    with pytest.raises(TypeError, match="seq_len"):
        explore.check_app_size("2d")


def test_the_pages_families_come_from_the_flags():
    assert explore.EXPLORE_BIAS_TYPES == BIAS_TYPES
    assert explore.INDEX_BIAS_TYPES == ("2d", "1d")  # the plain window and sequence tables, 2D first
    assert all(FAMILIES[k].learned and not FAMILIES[k].extra_rows for k in explore.INDEX_BIAS_TYPES)


def test_index_formula_latex_fills_in_the_numbers():
    cell = decode_cell(5, 1, 4)
    assert explore.index_formula_latex(cell).endswith("= 1")
    assert "1 - 4 + 4" in explore.index_formula_latex(cell)
    # (y, x) 5 -> (1, 1), 2 -> (0, 2): offset (1, -1); index (1 + 2) * 7 + (-1 + 3) = 23
    latex = explore.index_formula_latex(decode_cell((3, 4), 5, 2))
    assert r"(1 + 2) \cdot 7 + (-1 + 3) = 23" in latex


def test_image_from_upload_and_display():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(buf, format="PNG")
    x = explore.image_from_upload(buf.getvalue(), img_size=16, in_channels=3)
    assert x.shape == (3, 16, 16)
    assert x[0].min().item() == pytest.approx(1.0) and x[1].max().item() == 0.0
    g = explore.image_from_upload(buf.getvalue(), img_size=8, in_channels=1)
    assert g.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="not an image"):
        explore.image_from_upload(b"not an image", 16, 3)
    with pytest.raises(TypeError, match="data"):
        explore.image_from_upload("text", 16, 3)
    pic = explore.display_image(torch.stack([torch.zeros(4, 4), torch.ones(4, 4), torch.zeros(4, 4)]))
    assert pic.shape == (4, 4, 3) and pic.dtype == np.uint8 and pic[0, 0, 1] == 255
    big = explore.upscale_nearest(pic, 10)
    assert big.shape == (12, 12, 3) and (big[:3, :3] == pic[0, 0]).all()


def test_table_difference_and_formatting():
    a = np.ones((3, 2))
    np.testing.assert_array_equal(explore.table_difference(a, a * 0.5), 0.5 * a)
    with pytest.raises(ValueError, match="different shapes"):
        explore.table_difference(a, np.ones((4, 2)))
    assert explore.format_eta(65) == "1 min 05 s"
    assert explore.format_eta(12.4) == "12 s"
    assert explore.format_eta(None) == "–" and explore.format_eta(float("nan")) == "–"
    assert explore.safe_download_name("../a b.pt") == "a-b.pt"
    assert explore.safe_download_name("") == "download"


def small_cfg(**model):
    from relpos.experiments.config import resolve_config

    return resolve_config({"data": {"num_train": 32, "num_val": 16},
                           "model": {"embed_dim": 16, "depth": 2, "num_heads": 2, **model}})


def test_sample_input_and_classes():
    cfg = small_cfg()
    image, label, classes = explore.sample_input(cfg, 3)
    assert image.shape == (3, 16, 16) and 0 <= label < 4
    assert classes == ("east", "north", "west", "south")
    assert explore.dataset_classes(cfg) == classes
    with pytest.raises(ValueError, match="index"):
        explore.sample_input(cfg, 16)
    assert explore.dataset_classes({**cfg, "data": {**cfg["data"], "dataset": "folder", "root": "/nonexistent"}}) == ()


def test_load_checkpoint_model_is_frozen_in_eval_mode(tmp_path):
    from relpos.experiments.checkpoint import save_checkpoint
    from relpos.experiments.config import build_model

    cfg = small_cfg()
    model = build_model(cfg).train()
    save_checkpoint(model, None, 0, {}, tmp_path / "m.pt", config=cfg)
    loaded, ckpt = explore.load_checkpoint_model(tmp_path / "m.pt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert ckpt["config"]["model"] == cfg["model"]
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name
