"""Every bias family in the models; class token; one shared bias; set_window_size on the model."""

from __future__ import annotations

import pytest
import torch

from relpos import collect_attention_maps
from relpos.models.transformer import TransformerBlock, VisionTransformer
from relpos.relative_position import BIAS_TYPES, RelativePositionBias

torch.set_num_threads(1)


def tiny_vit(**kw) -> VisionTransformer:
    args = dict(img_size=8, patch_size=2, in_channels=3, num_classes=5, embed_dim=16, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args)


def family_kwargs(bias_type: str) -> dict:
    return {
        "1d": {},
        "2d": {},
        "2d_cls": {},
        "t5": {"num_buckets": 8, "max_distance": 16},
        "alibi": {"alibi_distance": "manhattan"},
        "cpb": {"cpb_hidden_dim": 16},
    }[bias_type]


@pytest.mark.parametrize("bias_type", BIAS_TYPES)
def test_every_family_trains_in_the_vit(bias_type):
    cls = bias_type == "2d_cls"
    model = tiny_vit(
        use_relative_position=True,
        rpb_kwargs={"bias_type": bias_type, **family_kwargs(bias_type)},
        class_token=cls,
    )
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    rpbs = model.relative_position_biases()
    assert len(rpbs) == 2
    n = 16 + int(cls)
    for _, m in rpbs:
        assert m.bias_type == bias_type and m().shape == (2, n, n)
    maps = collect_attention_maps(model, x)
    assert [a.shape for a in maps] == [(2, 2, n, n)] * 2


def test_family_options_pass_through():
    m = tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "t5", "num_buckets": 8, "max_distance": 16})
    rpb = m.blocks[0].attn.relative_position_bias
    assert rpb.relative_position_bias_table.shape == (8, 2) and rpb.max_distance == 16 and rpb.seq_len == 16
    m = tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "cpb", "cpb_hidden_dim": 16})
    assert m.blocks[1].attn.relative_position_bias.cpb_mlp[0].weight.shape == (16, 2)
    m = tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "alibi", "alibi_distance": "manhattan"})
    rpb = m.blocks[0].attn.relative_position_bias
    assert rpb.window_size == (4, 4) and rpb.alibi_distance == "manhattan"
    assert not any("relative_position" in k for k in m.state_dict())


def test_bad_rpb_kwargs_are_named():
    with pytest.raises(ValueError, match=r"unknown keys \['buckets'\]"):
        tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "t5", "buckets": 8})
    with pytest.raises(ValueError, match=r"\['num_buckets'\] do not apply to bias_type='2d'"):
        tiny_vit(use_relative_position=True, rpb_kwargs={"num_buckets": 8})
    with pytest.raises(ValueError, match="needs class_token=True"):
        tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "2d_cls"})
    with pytest.raises(ValueError, match="use bias_type='2d_cls'"):
        tiny_vit(use_relative_position=True, class_token=True)
    with pytest.raises(ValueError, match="share_bias=True needs use_relative_position=True"):
        tiny_vit(share_bias=True)


def test_class_token_is_token_zero_and_classifies():
    model = tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "2d_cls"}, class_token=True).eval()
    assert model.cls_token.shape == (1, 1, 16)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, 17, 16)
        torch.testing.assert_close(model(x), model.head(feats[:, 0]))
        assert not torch.allclose(model(x), model.head(feats.mean(dim=1)))
    # a 1D family covers the class token too
    m1 = tiny_vit(use_relative_position=True, rpb_kwargs={"bias_type": "1d"}, class_token=True)
    assert m1.blocks[0].attn.relative_position_bias.seq_len == 17
    assert m1(x).shape == (3, 5)
    # without class token: mean pooling, as before
    m0 = tiny_vit(use_relative_position=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(m0(x), m0.head(m0.forward_features(x).mean(dim=1)))


def test_shared_bias_once_in_state_dict_and_same_as_copied_per_block_tables():
    shared = tiny_vit(use_relative_position=True, share_bias=True).eval()
    per_block = tiny_vit(use_relative_position=True).eval()
    keys = [k for k in shared.state_dict() if "relative_position" in k]
    assert keys == ["rel_pos_bias.relative_position_bias_table"]
    n_table = 7 * 7 * 2
    n_shared = sum(p.numel() for p in shared.parameters())
    n_per = sum(p.numel() for p in per_block.parameters())
    assert n_per - n_shared == n_table  # depth 2: one table fewer
    assert len(shared.relative_position_biases()) == 1

    # copy the shared weights into the per-block model, the shared table into each block
    sd = {k: v for k, v in shared.state_dict().items() if not k.startswith("rel_pos_bias.")}
    for i in range(2):
        sd[f"blocks.{i}.attn.relative_position_bias.relative_position_bias_table"] = (
            shared.rel_pos_bias.relative_position_bias_table.detach().clone()
        )
    per_block.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(shared(x), per_block(x))
    maps_s = collect_attention_maps(shared, x, with_bias=False)
    maps_p = collect_attention_maps(per_block, x, with_bias=False)
    for a, b in zip(maps_s, maps_p):
        torch.testing.assert_close(a, b)

    shared.train()
    shared(x).sum().backward()
    assert shared.rel_pos_bias.relative_position_bias_table.grad.abs().sum() > 0


def test_block_forward_still_takes_x_alone():
    block = TransformerBlock(16, 2, use_relative_position=True, rpb_kwargs={"window_size": (2, 2)})
    x = torch.randn(1, 4, 16)
    assert block(x).shape == (1, 4, 16)
    zero = torch.zeros(2, 4, 4)
    with torch.no_grad():
        block.attn.relative_position_bias.relative_position_bias_table.zero_()
        torch.testing.assert_close(block(x), block(x, zero))


def test_vit_set_window_size_moves_every_part():
    model = tiny_vit(use_relative_position=True, position_embedding="absolute").eval()
    notes = model.set_window_size((6, 5))
    assert model.grid_size == (6, 5) and model.patch_embed.img_size == (12, 10)
    assert model.pos_embed.shape == (1, 30, 16)
    for _, m in model.relative_position_biases():
        assert m.window_size == (6, 5) and m.relative_position_bias_table.shape == (11 * 9, 2)
    assert any("resized (bicubic)" in n for n in notes) and any("pos_embed" in n for n in notes)
    assert model(torch.randn(1, 3, 12, 10)).shape == (1, 5)
    assert model.set_window_size((6, 5)) == []


@pytest.mark.parametrize("bias_type", ["t5", "alibi", "cpb", "2d_cls", "1d"])
def test_vit_set_window_size_each_family(bias_type):
    cls = bias_type == "2d_cls"
    model = tiny_vit(
        use_relative_position=True, rpb_kwargs={"bias_type": bias_type, **family_kwargs(bias_type)},
        class_token=cls, share_bias=True,
    )
    model.set_window_size(3)
    n = 9 + int(cls)
    assert model.rel_pos_bias().shape == (2, n, n)
    assert model(torch.randn(1, 3, 6, 6)).shape == (1, 5)
    assert isinstance(model.rel_pos_bias, RelativePositionBias)
