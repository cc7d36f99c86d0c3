"""Importing relative position bias tables from Swin / BEiT / timm / HF state dicts (tiny fixtures)."""

from __future__ import annotations

import io
import pickle

import pytest
import safetensors.torch
import torch

from relpos.checkpoint_import import (
    import_checkpoint,
    import_into,
    infer_window_size,
    inspect_state_dict,
    load_state_dict,
)
from relpos.models.transformer import VisionTransformer
from relpos.relative_position import get_relative_position_index_2d, get_relative_position_index_2d_cls
from relpos.resize import resize_relative_position_bias_table

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixtures with the projects' key names
def swin_state_dict(prefix: str = "", attn: str = "attn", window: int = 3, heads=(2, 4), depths=(2, 1)):
    """Official Swin / timm Swin names (``attn``), or HF Swin (``prefix='swin.encoder.'``, ``attention.self``)."""
    t = (2 * window - 1) ** 2
    sd = {f"{prefix}patch_embed.proj.weight" if not prefix else "swin.embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 4, 4)}
    for s, (h, d) in enumerate(zip(heads, depths)):
        for b in range(d):
            base = f"{prefix}layers.{s}.blocks.{b}.{attn}."
            sd[base + "relative_position_bias_table"] = torch.randn(t, h)
            sd[base + "relative_position_index"] = get_relative_position_index_2d((window, window))
            sd[base + "qkv.weight" if attn == "attn" else base + "query.weight"] = torch.zeros(24, 8)
        if s == 0:
            sd[f"{prefix}layers.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
    sd["head.weight" if not prefix else "classifier.weight"] = torch.zeros(10, 8)
    return sd


def beit_timm_state_dict(window: int = 4, heads: int = 2, depth: int = 2, shared: bool = False):
    t = (2 * window - 1) ** 2 + 3
    sd = {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 2, 2)}
    if shared:
        sd["rel_pos_bias.relative_position_bias_table"] = torch.randn(t, heads)
        sd["rel_pos_bias.relative_position_index"] = get_relative_position_index_2d_cls((window, window))
    for i in range(depth):
        if not shared:
            sd[f"blocks.{i}.attn.relative_position_bias_table"] = torch.randn(t, heads)
            sd[f"blocks.{i}.attn.relative_position_index"] = get_relative_position_index_2d_cls((window, window))
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.zeros(24, 8)
    return sd


def beit_hf_state_dict(window: int = 4, heads: int = 2, depth: int = 2, shared: bool = False):
    t = (2 * window - 1) ** 2 + 3
    sd = {"beit.embeddings.cls_token": torch.zeros(1, 1, 8)}
    if shared:
        sd["beit.encoder.relative_position_bias.relative_position_bias_table"] = torch.randn(t, heads)
    for i in range(depth):
        if not shared:
            sd[f"beit.encoder.layer.{i}.attention.attention.relative_position_bias.relative_position_bias_table"] = (
                torch.randn(t, heads)
            )
        sd[f"beit.encoder.layer.{i}.attention.attention.query.weight"] = torch.zeros(8, 8)
    return sd


def tiny_vit(**kw) -> VisionTransformer:
    args = dict(img_size=8, patch_size=2, num_classes=3, embed_dim=8, depth=2, num_heads=2,
                use_relative_position=True)
    args.update(kw)
    return VisionTransformer(**args)


def by_key(report):
    return {k.key: k for k in report.keys}


# ---------------------------------------------------------------- reading files
def test_official_swin_pth_nested_under_model(tmp_path):
    sd = swin_state_dict()
    path = tmp_path / "swin_tiny_patch4_window3.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    report = import_checkpoint(path)
    assert [(t.layer, t.stage, t.block, t.num_heads, t.window_size, t.has_cls_rows) for t in report.tables] == [
        (0, 0, 0, 2, (3, 3), False),
        (1, 0, 1, 2, (3, 3), False),
        (2, 1, 0, 4, (3, 3), False),
    ]
    keys = by_key(report)
    k = keys["layers.1.blocks.0.attn.relative_position_bias_table"]
    assert k.action == "renamed" and k.target == "blocks.2.attn.relative_position_bias.relative_position_bias_table"
    assert "window (3, 3), 4 heads" in k.note
    idx = keys["layers.0.blocks.0.attn.relative_position_index"]
    assert idx.action == "dropped" and "matches the Swin/BEiT index" in idx.note
    assert keys["layers.0.blocks.1.attn_mask"].action == "dropped"
    assert keys["head.weight"].note == "not a relative position bias"
    assert report.counts() == {"mapped": 0, "renamed": 3, "dropped": len(sd) - 3}
    torch.testing.assert_close(report.tables[2].table, sd["layers.1.blocks.0.attn.relative_position_bias_table"])
    assert "Swin (official/timm)" in report.summary()


def test_hf_swin_bin_and_ddp_prefix(tmp_path):
    sd = swin_state_dict(prefix="swin.encoder.", attn="attention.self")
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    report = import_checkpoint(path)
    assert [t.source for t in report.tables] == ["HF Swin"] * 3
    assert report.tables[2].target == "blocks.2.attn.relative_position_bias.relative_position_bias_table"


def test_timm_beit_safetensors_shared_and_per_block(tmp_path):
    path = tmp_path / "beit.safetensors"
    safetensors.torch.save_file(beit_timm_state_dict(shared=True), str(path))
    report = import_checkpoint(path)
    (t,) = report.tables
    assert t.layer is None and t.has_cls_rows and t.window_size == (4, 4) and t.num_heads == 2
    assert t.kind == "table" and t.bias_type == "2d_cls"
    assert by_key(report)["rel_pos_bias.relative_position_bias_table"].action == "mapped"

    data = io.BytesIO()
    torch.save(beit_timm_state_dict(), data)
    report = import_checkpoint(data.getvalue(), filename="upload.pt")
    assert [t.layer for t in report.tables] == [0, 1]
    assert by_key(report)["blocks.1.attn.relative_position_bias_table"].target == (
        "blocks.1.attn.relative_position_bias.relative_position_bias_table"
    )


def test_hf_beit_names():
    report = inspect_state_dict(beit_hf_state_dict())
    assert [(t.source, t.layer, t.window_size, t.has_cls_rows) for t in report.tables] == [
        ("HF BEiT", 0, (4, 4), True), ("HF BEiT", 1, (4, 4), True)
    ]
    report = inspect_state_dict(beit_hf_state_dict(shared=True))
    assert [(t.source, t.layer) for t in report.tables] == [("HF BEiT (shared)", None)]


def test_window_inference():
    assert infer_window_size(169) == ((7, 7), False)
    assert infer_window_size(169 + 3) == ((7, 7), True)
    assert infer_window_size(45) is None  # (3, 5) needs the index
    assert infer_window_size(45, get_relative_position_index_2d((3, 5))) == ((3, 5), False)
    assert infer_window_size(45, get_relative_position_index_2d((5, 3))) == ((5, 3), False)  # the index decides
    assert infer_window_size(45, get_relative_position_index_2d((3, 5)).flip(0)) is None  # no Swin layout
    assert infer_window_size(48, get_relative_position_index_2d_cls((3, 5))) == ((3, 5), True)
    report = inspect_state_dict({"blocks.0.attn.relative_position_bias_table": torch.zeros(45, 2)})
    assert report.tables == [] and "fit no" in report.keys[0].note


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="suffix '.txt'"):
        load_state_dict(tmp_path / "weights.txt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="evil.pth is not a zip-format torch file"):  # legacy: never unpickled
        load_state_dict(path)
    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)  # the same payload in torch's zip format: weights_only refuses it
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(path)


# ---------------------------------------------------------------- into a relpos model
def test_relpos_round_trip_is_all_mapped():
    src = tiny_vit()
    report = inspect_state_dict(src.state_dict())
    assert {k.action for k in report.keys if k.target} == {"mapped"}
    dst = tiny_vit()
    actions = import_into(dst, report)
    assert [a.action for a in actions] == ["mapped", "mapped"]
    for (_, a), (_, b) in zip(src.relative_position_biases(), dst.relative_position_biases()):
        assert torch.equal(a.relative_position_bias_table, b.relative_position_bias_table)


def test_beit_into_2d_drops_cls_rows_and_into_2d_cls_keeps_them():
    sd = beit_timm_state_dict(window=4, heads=2)
    model = tiny_vit()  # 2d, grid 4x4
    actions = import_into(model, sd)
    assert [a.action for a in actions] == ["mapped", "mapped"]
    assert "dropped the 3 class-token rows" in actions[0].note
    torch.testing.assert_close(
        model.blocks[1].attn.relative_position_bias.relative_position_bias_table.detach(),
        sd["blocks.1.attn.relative_position_bias_table"][:-3],
    )
    cls_model = tiny_vit(class_token=True, rpb_kwargs={"bias_type": "2d_cls"})
    import_into(cls_model, sd)
    torch.testing.assert_close(
        cls_model.blocks[0].attn.relative_position_bias.relative_position_bias_table.detach(),
        sd["blocks.0.attn.relative_position_bias_table"],
    )


@pytest.mark.parametrize("method", ["bicubic", "geometric"])
def test_other_window_is_resized_and_says_so(method):
    sd = swin_state_dict(window=7, heads=(2,), depths=(2,))
    model = tiny_vit()
    actions = import_into(model, sd, method=method)
    assert [a.action for a in actions] == ["resized", "resized"]
    assert f"resized (7, 7) -> (4, 4) ({method})" in actions[0].note
    expected = resize_relative_position_bias_table(
        sd["layers.0.blocks.1.attn.relative_position_bias_table"], (7, 7), (4, 4), method=method
    )
    torch.testing.assert_close(
        model.blocks[1].attn.relative_position_bias.relative_position_bias_table.detach(), expected
    )


def test_shared_into_per_block_heads_mismatch_and_shared_model():
    shared_sd = beit_hf_state_dict(shared=True)
    model = tiny_vit()
    actions = import_into(model, shared_sd)
    assert all("copied into every block" in a.note for a in actions)
    assert torch.equal(
        model.blocks[0].attn.relative_position_bias.relative_position_bias_table,
        model.blocks[1].attn.relative_position_bias.relative_position_bias_table,
    )
    wrong_heads = beit_timm_state_dict(heads=4)
    actions = import_into(tiny_vit(), wrong_heads)
    assert [a.action for a in actions] == ["skipped", "skipped"]
    assert "heads differ: checkpoint 4, model 2" in actions[0].note
    shared_model = tiny_vit(share_bias=True)
    (a,) = import_into(shared_model, beit_timm_state_dict())
    assert a.target == "rel_pos_bias" and "from layer 0" in a.note


def test_swin_v2_cpb_mlp_into_cpb_model():
    sd = {
        "swinv2.encoder.layers.0.blocks.0.attention.self.continuous_position_bias_mlp.0.weight": torch.randn(16, 2),
        "swinv2.encoder.layers.0.blocks.0.attention.self.continuous_position_bias_mlp.0.bias": torch.randn(16),
        "swinv2.encoder.layers.0.blocks.0.attention.self.continuous_position_bias_mlp.2.weight": torch.randn(2, 16),
        "swinv2.encoder.layers.0.blocks.0.attention.self.relative_coords_table": torch.zeros(1, 7, 7, 2),
    }
    report = inspect_state_dict(sd)
    (t,) = report.tables
    assert t.kind == "mlp" and t.bias_type == "cpb" and t.num_heads == 2 and t.source == "HF Swin V2"
    model = tiny_vit(depth=1, rpb_kwargs={"bias_type": "cpb", "cpb_hidden_dim": 16})
    (a,) = import_into(model, report)
    assert a.action == "mapped"
    m = model.blocks[0].attn.relative_position_bias
    assert torch.equal(m.cpb_mlp[2].weight, sd[next(k for k in sd if k.endswith("2.weight"))])
    assert by_key(report)["swinv2.encoder.layers.0.blocks.0.attention.self.relative_coords_table"].action == "dropped"


def test_import_into_errors():
    with pytest.raises(ValueError, match="no RelativePositionBias"):
        import_into(tiny_vit(use_relative_position=False), {})
    with pytest.raises(ValueError, match="method must be one of"):
        import_into(tiny_vit(), {}, method="linear")
