"""The ViT: the seed's example, pre-norm blocks, position options, rpb_kwargs checks."""

from __future__ import annotations

import pytest
import torch

from relpos import TransformerBlock, VisionTransformer


def small_vit(**kw) -> VisionTransformer:
    args = dict(img_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    args.update(kw)
    return VisionTransformer(**args)


def test_seed_vit_b16_example_builds_and_runs() -> None:
    model = VisionTransformer(
        img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=768, depth=12,
        num_heads=12, use_relative_position=True,
        rpb_kwargs={"num_heads": 12, "window_size": (14, 14), "bias_type": "2d"},
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert model.pos_embed is None  # relative bias only: no class token, no absolute embedding
    rpb = model.blocks[0].attn.relative_position_bias
    assert rpb.relative_position_bias_table.shape == (729, 12)


def test_block_is_pre_norm() -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, mlp_ratio=2.0).eval()
    x = torch.randn(2, 5, 16)
    h = x + blk.attn(blk.norm1(x))
    expected = h + blk.mlp(blk.norm2(h))
    torch.testing.assert_close(blk(x), expected)
    assert blk.mlp.fc1.out_features == 32


def test_position_embedding_options() -> None:
    assert small_vit().pos_embed.shape == (1, 16, 32)  # absolute by default without the bias
    rel = small_vit(use_relative_position=True)
    assert rel.pos_embed is None
    assert rel.blocks[1].attn.relative_position_bias.window_size == (4, 4)
    both = small_vit(use_relative_position=True, position_embedding="absolute")
    assert both.pos_embed is not None and both.blocks[0].attn.relative_position_bias is not None
    none = small_vit(position_embedding="none")
    assert none.pos_embed is None and none.blocks[0].attn.relative_position_bias is None
    # Without any position information the model is permutation invariant over patches.
    none.eval()
    x = torch.randn(2, 3, 16, 16)
    xp = x.view(2, 3, 4, 4, 4, 4).flip(2).reshape(2, 3, 16, 16)  # permute patch rows
    torch.testing.assert_close(none(x), none(xp), rtol=1e-4, atol=1e-5)


def test_one_dimensional_bias_over_patches() -> None:
    m = small_vit(use_relative_position=True, rpb_kwargs={"bias_type": "1d"})
    assert m.blocks[0].attn.relative_position_bias.seq_len == 16
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_state_dict_names_follow_timm() -> None:
    keys = set(small_vit(use_relative_position=True).state_dict())
    for k in ["patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
              "blocks.0.attn.proj.weight", "blocks.0.attn.relative_position_bias.relative_position_bias_table",
              "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.bias", "norm.weight", "head.weight"]:
        assert k in keys
    assert not any("relative_position_index" in k for k in keys)


def test_trains_one_step() -> None:
    m = small_vit(use_relative_position=True)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    table = m.blocks[0].attn.relative_position_bias.relative_position_bias_table
    before = table.detach().clone()
    assert table.grad is not None and table.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, table.detach())


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(img_size=18), ValueError, "divisible"),
        (dict(embed_dim=30), ValueError, "divisible"),
        (dict(depth=0), ValueError, "depth"),
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(use_relative_position=True, rpb_kwargs={"window_size": (7, 7)}), ValueError, "patch grid"),
        (dict(use_relative_position=True, rpb_kwargs={"num_heads": 2}), ValueError, "num_heads"),
        (dict(use_relative_position=True, rpb_kwargs={"bias_type": "1d", "seq_len": 10}), ValueError, "seq_len"),
        (dict(position_embedding="sinusoidal"), ValueError, "position_embedding"),
        (dict(mlp_ratio=0), ValueError, "mlp_ratio"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        small_vit(**kwargs)


def test_wrong_image_shape_is_clear() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        small_vit()(torch.randn(1, 3, 32, 32))
