"""The computations behind the app's pages (relpos.explore), checked against explicit references."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from relpos import explore
from relpos.models.transformer import VisionTransformer

torch.set_num_threads(1)


def test_index_matrix_2x2_reference():
    ref = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    np.testing.assert_array_equal(explore.index_matrix("2d", (2, 2)), ref)
    np.testing.assert_array_equal(explore.index_matrix("1d", 3), [[2, 1, 0], [3, 2, 1], [4, 3, 2]])


def test_limits_are_enforced():
    with pytest.raises(ValueError, match="window_size"):
        explore.index_matrix("2d", (explore.MAX_WINDOW_SIDE + 1, 2))
    with pytest.raises(ValueError, match="seq_len"):
        explore.index_matrix("1d", explore.MAX_SEQ_LEN + 1)
    with pytest.raises(ValueError, match="bias_type"):
        explore.index_matrix("3d", 4)


@pytest.mark.parametrize("size", [(3, 5), (4, 4), (1, 6)])
def test_table_offsets_match_index_and_decode(size):
    h, w = size
    idx = explore.index_matrix("2d", size)
    offsets = explore.table_offsets("2d", size)
    assert offsets.shape == ((2 * h - 1) * (2 * w - 1), 2)
    n = h * w
    for i in range(n):
        for j in range(n):
            cell = explore.decode_cell("2d", size, i, j)
            assert cell["index"] == idx[i, j]
            assert cell["query"] == (i // w, i % w) and cell["key"] == (j // w, j % w)
            assert tuple(offsets[idx[i, j]]) == cell["offset"]
            assert cell["offset"] == (i // w - j // w, i % w - j % w)


def test_decode_1d_and_formula():
    cell = explore.decode_cell("1d", 5, 1, 4)
    assert cell == {"i": 1, "j": 4, "offset": -3, "seq_len": 5, "index": 1}
    assert explore.index_formula_latex(cell).endswith("= 1")
    cell2 = explore.decode_cell("2d", (3, 4), 5, 2)
    # (y, x) 5 -> (1, 1), 2 -> (0, 2): offset (1, -1); index (1 + 2) * 7 + (-1 + 3) = 23
    assert cell2["offset"] == (1, -1) and cell2["index"] == 23
    assert "= 23" in explore.index_formula_latex(cell2)
    with pytest.raises(ValueError, match="i must be"):
        explore.decode_cell("2d", (2, 2), 4, 0)


def test_preset_tables():
    t = explore.preset_table("zeros", "2d", (2, 3), 4)
    assert t.shape == (15, 4) and not t.any()
    loc = explore.preset_table("locality", "2d", (2, 3), 2, alpha=0.5)
    offsets = explore.table_offsets("2d", (2, 3))
    for r, (dy, dx) in enumerate(offsets):
        assert loc[r, 0].item() == pytest.approx(-0.5 * math.hypot(dy, dx))
        assert loc[r, 1].item() == pytest.approx(loc[r, 0].item())
    alibi = explore.preset_table("alibi", "1d", 4, 8, alpha=1.0)
    # head 0 slope 2^-1, offset -3 is row 0
    assert alibi[0, 0].item() == pytest.approx(-3 * 0.5)
    assert alibi[0, 7].item() == pytest.approx(-3 * 2.0**-8)
    r1 = explore.preset_table("random", "1d", 4, 2, alpha=2.0, seed=1)
    r2 = explore.preset_table("random", "1d", 4, 2, alpha=2.0, seed=1)
    assert torch.equal(r1, r2) and r1.std() > 0.5
    init = explore.preset_table("init", "1d", 50, 4, init_std=0.02, seed=0)
    assert init.abs().max() <= 0.04 + 1e-7
    with pytest.raises(ValueError, match="preset"):
        explore.preset_table("bogus", "1d", 4, 2)


def test_make_bias_and_arrays_match_gather():
    rpb = explore.make_bias("2d", (3, 4), 2, preset="locality", alpha=1.0)
    arr = explore.bias_arrays(rpb)
    table, bias, index = arr["table"], arr["bias"], arr["index"]
    assert bias.shape == (2, 12, 12)
    # bias[h, i, j] == table[index[i, j], h]
    np.testing.assert_array_equal(bias, table[index].transpose(2, 0, 1))
    assert bias[0, 5, 5] == 0.0 and bias[0, 0, 11] == pytest.approx(-math.hypot(2, 3))
    one = explore.bias_arrays(explore.make_bias("2d", (3, 4), 3, preset="random", seed=2), head=2)["bias"]
    full = explore.bias_arrays(explore.make_bias("2d", (3, 4), 3, preset="random", seed=2))["bias"]
    assert one.shape == (1, 12, 12)
    np.testing.assert_array_equal(one[0], full[2])


def test_demo_attention_shows_the_bias_effect():
    rpb = explore.make_bias("2d", (4, 4), 2, preset="locality", alpha=3.0)
    with_b, without = explore.demo_attention(explore.bias_arrays(rpb)["bias"], seed=0)
    assert with_b.shape == without.shape == (2, 16, 16)
    np.testing.assert_allclose(with_b.sum(-1), 1.0, atol=1e-5)
    # Locality: each query attends more to itself with the bias than without.
    diag_with = np.diagonal(with_b, axis1=1, axis2=2).mean()
    diag_without = np.diagonal(without, axis1=1, axis2=2).mean()
    assert diag_with > 2 * diag_without
    # Zero content: attention is exactly softmax of the bias row.
    w0, _ = explore.demo_attention(explore.bias_arrays(rpb)["bias"], content_scale=0.0)
    b = explore.bias_arrays(rpb)["bias"]
    ref = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(w0, ref, rtol=1e-5, atol=1e-7)


def small_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_channels=1, num_classes=4, embed_dim=16, depth=2,
                num_heads=2, use_relative_position=True)
    args.update(kw)
    return VisionTransformer(**args).eval()


def test_apply_bias_preset_copies_and_sets_every_layer():
    model = small_vit()
    before = [t.copy() for t in explore.bias_tables(model)]
    new = explore.apply_bias_preset(model, "zeros")
    assert new is not model
    for t_old, t_model in zip(before, explore.bias_tables(model)):
        np.testing.assert_array_equal(t_old, t_model)  # original untouched
    assert all(not t.any() for t in explore.bias_tables(new))
    with pytest.raises(ValueError, match="no relative position bias"):
        explore.apply_bias_preset(small_vit(use_relative_position=False), "zeros")


def test_attention_maps_with_and_without_bias():
    model = explore.apply_bias_preset(small_vit(), "locality", alpha=50.0)
    image = torch.randn(1, 16, 16)
    with_b = explore.attention_maps(model, image, with_bias=True)
    without = explore.attention_maps(model, image, with_bias=False)
    assert with_b.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(with_b.sum(-1), 1.0, atol=1e-5)
    # A strong locality bias makes attention nearly diagonal; without it, it is not.
    assert np.diagonal(with_b, axis1=2, axis2=3).mean() > 0.9
    assert np.diagonal(without, axis1=2, axis2=3).mean() < 0.5
    assert explore.layer_biases(model)[0].shape == (2, 16, 16)


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
    pic = explore.display_image(torch.stack([torch.zeros(4, 4), torch.ones(4, 4), torch.zeros(4, 4)]))
    assert pic.shape == (4, 4, 3) and pic.dtype == np.uint8 and pic[0, 0, 1] == 255


def test_save_upload_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        explore.save_upload(b"x" * 11, "a.pt", tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match=".pt or .pth"):
        explore.save_upload(b"x", "a.exe", tmp_path)
    with pytest.raises(ValueError, match="weights_only"):
        explore.save_upload(b"garbage", "a.pt", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    with pytest.raises(ValueError, match="weights_only"):
        explore.save_upload(buf.getvalue(), "../../evil.pt", tmp_path)
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    with pytest.raises(ValueError, match="not a relpos checkpoint"):
        explore.save_upload(buf.getvalue(), "list.pt", tmp_path)
    assert not (tmp_path.parent / "evil.pt").exists()
    uploads = tmp_path / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []  # nothing left behind


def test_list_checkpoints(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "best.pt").write_bytes(b"a")
    (tmp_path / "run1" / "notes.txt").write_bytes(b"a")
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "mine.pt").write_bytes(b"b")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pt"
    outside.write_bytes(b"c")
    (tmp_path / "uploads" / "link.pt").symlink_to(outside)
    rows = explore.list_checkpoints(tmp_path)
    assert sorted(r["label"] for r in rows) == ["run1/best.pt", "uploads/mine.pt"]
    assert {r["kind"] for r in rows} == {"run", "upload"}
    assert explore.list_checkpoints(tmp_path / "missing") == []


def test_table_difference_and_format_eta():
    a = np.ones((3, 2))
    np.testing.assert_array_equal(explore.table_difference(a, a * 0.5), 0.5 * a)
    with pytest.raises(ValueError, match="different shapes"):
        explore.table_difference(a, np.ones((4, 2)))
    assert explore.format_eta(65) == "1 min 05 s"
    assert explore.format_eta(12.4) == "12 s"
    assert explore.format_eta(None) == "–"
    assert explore.safe_download_name("../a b.pt") == "a-b.pt"


def small_cfg(**model):
    from relpos.experiments.config import resolve_config

    return resolve_config({"data": {"num_train": 32, "num_val": 16},
                           "model": {"embed_dim": 16, "depth": 2, "num_heads": 2, **model}})


def test_fresh_model_is_seeded_and_frozen():
    cfg = small_cfg()
    a, b = explore.fresh_model(cfg), explore.fresh_model(cfg)
    for ta, tb in zip(explore.bias_tables(a), explore.bias_tables(b)):
        np.testing.assert_array_equal(ta, tb)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    summary = explore.model_summary(a)
    assert summary["depth"] == 2 and summary["num_heads"] == 2 and summary["bias_type"] == "2d"
    assert summary["grid"] == (4, 4) and summary["num_tokens"] == 16
    assert explore.table_geometry(a) == {"bias_type": "2d", "window_size": (4, 4), "seq_len": None,
                                         "max_distance": None}


def test_sample_input_and_classes():
    cfg = small_cfg()
    image, label, classes = explore.sample_input(cfg, 3)
    assert image.shape == (3, 16, 16) and 0 <= label < 4
    assert classes == ("east", "north", "west", "south")
    assert explore.dataset_classes(cfg) == classes
    with pytest.raises(ValueError, match="index"):
        explore.sample_input(cfg, 16)


def test_check_run_settings_and_changed_overrides():
    cfg = small_cfg()
    assert explore.changed_overrides(cfg, {"model.depth": 2, "train.epochs": 3}) == {"train.epochs": 3}
    resolved = explore.check_run_settings(cfg, {"model.depth": 1, "model.use_relative_position": False})
    assert resolved["model"]["depth"] == 1 and resolved["model"]["use_relative_position"] is False
    with pytest.raises(ValueError, match="patch_size|img_size"):
        explore.check_run_settings(cfg, {"data.patch_size": 5})
    with pytest.raises(ValueError, match="num_heads|embed_dim"):
        explore.check_run_settings(cfg, {"model.num_heads": 3})


def test_center_token():
    assert explore.center_token((3, 3)) == 4
    assert explore.center_token((32, 32)) == 16 * 32 + 16
    assert explore.center_token((1, 8)) == 4


def test_check_run_settings_limits_the_patch_grid():
    cfg = small_cfg()
    explore.check_run_settings(cfg, {"data.img_size": 64, "data.patch_size": 2})  # 32x32: allowed
    with pytest.raises(ValueError, match="patch grid"):
        explore.check_run_settings(cfg, {"data.img_size": 128, "data.patch_size": 2})


def test_train_overrides():
    cfg = small_cfg()
    assert explore.train_overrides(cfg, depth=2, epochs=cfg["train"]["epochs"] + 1) == {
        "train.epochs": cfg["train"]["epochs"] + 1
    }
    switched = explore.train_overrides(cfg, dataset="digits", img_size=16)
    assert switched["data.dataset"] == "digits" and switched["data.in_channels"] is None
    resolved = explore.check_run_settings(cfg, switched)
    assert resolved["data"]["in_channels"] == 1 and resolved["data"]["num_classes"] == 10
    with pytest.raises(ValueError, match="unknown settings"):
        explore.train_overrides(cfg, colour="red")


def test_mean_attention_distance():
    eye = np.eye(4)
    np.testing.assert_allclose(explore.mean_attention_distance(eye, (2, 2)), [0.0])
    uniform = np.full((1, 4, 4), 0.25)
    # In a 2x2 grid each token has distances 0, 1, 1, sqrt(2) to the four tokens.
    np.testing.assert_allclose(explore.mean_attention_distance(uniform, (2, 2)), [(2 + math.sqrt(2)) / 4])
    with pytest.raises(ValueError, match="shape"):
        explore.mean_attention_distance(eye, (3, 3))


# --------------------------------------------------------------------------- bias families


@pytest.mark.parametrize("bias_type", explore.EXPLORE_BIAS_TYPES)
def test_make_bias_builds_every_family_and_arrays_match_the_module(bias_type):
    from relpos.relative_position import BIAS_TYPES, RelativePositionBias

    assert explore.EXPLORE_BIAS_TYPES is BIAS_TYPES
    size = (3, 4) if bias_type in ("2d", "2d_cls", "cpb", "alibi") else 10
    opts = {"t5": {"num_buckets": 8, "max_distance": 6}, "cpb": {"cpb_hidden_dim": 16}}.get(bias_type, {})
    learned = bias_type in explore.LEARNED_BIAS_TYPES
    rpb = explore.make_bias(bias_type, size, 3, preset="locality" if learned else "init", alpha=1.5, **opts)
    arr = explore.bias_arrays(rpb)
    np.testing.assert_array_equal(arr["table"], rpb.effective_table().numpy())
    np.testing.assert_array_equal(arr["bias"], rpb().numpy())
    n = 13 if bias_type == "2d_cls" else (12 if isinstance(size, tuple) else 10)
    assert arr["bias"].shape == (3, n, n)
    if not learned:  # the module's own table: alibi's slopes, cpb's seeded MLP
        kw = {"window_size": size} if isinstance(size, tuple) else {"seq_len": size}
        torch.manual_seed(0)
        ref = RelativePositionBias(3, bias_type=bias_type, **kw, **opts)
        np.testing.assert_allclose(arr["table"], ref.effective_table().detach().numpy(), rtol=1e-6)
        with pytest.raises(ValueError, match="preset"):
            explore.make_bias(bias_type, size, 3, preset="locality", **opts)


def test_presets_of_the_class_token_and_t5_tables():
    t = explore.preset_table("locality", "2d_cls", (2, 2), 2, alpha=2.0)
    assert t.shape == (9 + 3, 2)
    np.testing.assert_allclose(t[:9, 0].numpy(), -2.0 * np.hypot(*explore.table_offsets("2d", (2, 2)).T))
    assert torch.equal(t[9:], torch.zeros(3, 2))  # class-token rows at distance 0
    t5 = explore.preset_table("locality", "t5", 10, 1, alpha=1.0, num_buckets=8, max_distance=6)
    # buckets 0..3: offsets 0, -1, -2..-3, -4..; 4..7: (none: 0), 1, 2..3, 4.. -> smallest |offset|
    np.testing.assert_array_equal(t5[:, 0].numpy(), -np.array([0, 1, 2, 4, 0, 1, 2, 4], dtype=np.float32))
    assert not np.signbit(t[9:].numpy()).any()  # 0.0, not -0.0 (shown as "-0")
    with pytest.raises(ValueError, match="bias_type"):
        explore.preset_table("zeros", "alibi", (2, 2), 2)


def test_grid_part_drops_only_a_class_token():
    m = np.arange(5 * 5).reshape(1, 5, 5)
    np.testing.assert_array_equal(explore.grid_part(m, (2, 2)), m[:, 1:, 1:])
    assert explore.grid_part(m[:, 1:, 1:], (2, 2)).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="tokens"):
        explore.grid_part(m, (3, 3))


@pytest.mark.parametrize("kw", [{}, {"share_bias": True}, {"class_token": True, "rpb_kwargs": {"bias_type": "2d_cls"}}])
def test_diagnostics_table_pivots_bias_diagnostics_per_layer_and_head(kw):
    from relpos.diagnostics import bias_diagnostics

    model = small_vit(**kw)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = explore.diagnostics_table(model, x)
    diag = bias_diagnostics(model, x)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rows:
        b = diag["biases"][0 if len(diag["biases"]) == 1 else r["layer"]]
        a = diag["attention"][r["layer"]]
        for m in ("locality", "locality_ratio", "symmetry", "bias_entropy"):
            assert r[m] == pytest.approx(b[m][r["head"]])
        for m in ("kl", "entropy", "entropy_no_bias"):
            assert r[m] == pytest.approx(a[m][r["head"]])
    assert set(rows[0]) == {"layer", "head", *explore.DIAGNOSTIC_MEASURES}
    # The cached call measures once per (path, mtime, input): a changed model is not re-measured...
    first = explore.cached_diagnostics("m.pt", 1.0, model, x, input_key=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert explore.cached_diagnostics("m.pt", 1.0, model, x, input_key=0) == first
    # ...until its modification time changes.
    assert explore.cached_diagnostics("m.pt", 2.0, model, x, input_key=0) != first
