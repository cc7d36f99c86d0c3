"""Bias families of RelativePositionBias against explicit references (BEiT, T5, ALiBi, Swin V2)."""

from __future__ import annotations

import math

import pytest
import torch

from relpos.relative_position import (
    BIAS_TYPES,
    RelativePositionBias,
    alibi_slopes,
    check_rpb_kwargs,
    get_relative_position_index_2d,
    get_relative_position_index_2d_cls,
    swinv2_log_coords,
    t5_relative_position_bucket,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- references, written out here
def beit_gen_relative_position_index(window_size):
    """BEiT's gen_relative_position_index (unilm beit / timm beit.py), ported line by line."""
    num_relative_distance = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) + 3
    window_area = window_size[0] * window_size[1]
    coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]), torch.arange(window_size[1]), indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window_size[0] - 1
    relative_coords[:, :, 1] += window_size[1] - 1
    relative_coords[:, :, 0] *= 2 * window_size[1] - 1
    relative_position_index = torch.zeros(size=(window_area + 1,) * 2, dtype=relative_coords.dtype)
    relative_position_index[1:, 1:] = relative_coords.sum(-1)
    relative_position_index[0, 0:] = num_relative_distance - 3
    relative_position_index[0:, 0] = num_relative_distance - 2
    relative_position_index[0, 0] = num_relative_distance - 1
    return relative_position_index


def t5_bucket_reference(relative_position: int, num_buckets: int, max_distance: int) -> int:
    """Mesh TensorFlow's _relative_position_bucket(bidirectional=True), scalar Python port."""
    ret = 0
    n = -relative_position
    num_buckets //= 2
    ret += int(n < 0) * num_buckets
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val_if_large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val_if_large, num_buckets - 1)


def alibi_get_slopes_reference(n):
    """Press et al.'s get_slopes (ofirpress/attention_with_linear_biases), verbatim."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + alibi_get_slopes_reference(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


# ---------------------------------------------------------------- registry
def test_registry_holds_every_family():
    assert BIAS_TYPES == ("1d", "2d", "2d_cls", "t5", "alibi", "cpb")


@pytest.mark.parametrize(
    "bias_type,kwargs,n",
    [
        ("1d", {"seq_len": 5}, 5),
        ("2d", {"window_size": (2, 3)}, 6),
        ("2d_cls", {"window_size": (2, 3)}, 7),
        ("t5", {"seq_len": 9}, 9),
        ("alibi", {"seq_len": 4}, 4),
        ("alibi", {"window_size": (3, 2)}, 6),
        ("cpb", {"window_size": (2, 3)}, 6),
    ],
)
def test_every_family_returns_h_n_n_and_gathers_its_table(bias_type, kwargs, n):
    m = RelativePositionBias(num_heads=3, bias_type=bias_type, **kwargs)
    bias = m()
    assert bias.shape == (3, n, n)
    assert m.num_tokens == n
    table = m.effective_table()  # (T, H)
    assert table.shape == (m.num_relative_positions, 3)
    ref = table[m.relative_position_index.view(-1)].view(n, n, 3).permute(2, 0, 1)
    torch.testing.assert_close(bias, ref)
    assert "relative_position_index" not in m.state_dict()


# ---------------------------------------------------------------- 2d_cls (BEiT)
@pytest.mark.parametrize("window", [(1, 1), (2, 2), (3, 4)])
def test_2d_cls_index_matches_beit(window):
    assert torch.equal(get_relative_position_index_2d_cls(window), beit_gen_relative_position_index(window))


def test_2d_cls_layout_and_table_rows():
    m = RelativePositionBias(num_heads=2, window_size=(2, 2), bias_type="2d_cls")
    t = m.num_relative_positions
    assert t == 9 + 3 and m.relative_position_bias_table.shape == (12, 2)
    idx = m.relative_position_index
    assert idx.shape == (5, 5)
    assert (idx[0, 1:] == t - 3).all() and (idx[1:, 0] == t - 2).all() and idx[0, 0] == t - 1
    assert torch.equal(idx[1:, 1:], get_relative_position_index_2d((2, 2)))
    with torch.no_grad():
        m.relative_position_bias_table.copy_(torch.arange(24.0).view(12, 2))
    bias = m()
    assert torch.equal(bias[:, 0, 3], torch.tensor([18.0, 19.0]))  # cls -> token: row 9
    assert torch.equal(bias[:, 3, 0], torch.tensor([20.0, 21.0]))  # token -> cls: row 10
    assert torch.equal(bias[:, 0, 0], torch.tensor([22.0, 23.0]))  # cls -> cls: row 11


# ---------------------------------------------------------------- t5
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20), (64, 256), (33, 100)])
def test_t5_bucket_matches_reference_over_offsets(num_buckets, max_distance):
    rel = torch.arange(-300, 301)
    got = t5_relative_position_bucket(rel, num_buckets, max_distance).tolist()
    expected = [t5_bucket_reference(r, num_buckets, max_distance) for r in rel.tolist()]
    assert got == expected


def test_t5_known_buckets_and_direction():
    b = t5_relative_position_bucket(torch.tensor([0, -1, 1, -7, 7, -8, -127, -128, -1000, 1000]))
    # positive offsets (key after query) live in the upper half
    assert b.tolist() == [0, 1, 17, 7, 23, 8, 15, 15, 15, 31]


def test_t5_index_is_bucket_of_key_minus_query():
    m = RelativePositionBias(num_heads=2, seq_len=40, bias_type="t5", num_buckets=16, max_distance=20)
    assert m.relative_position_bias_table.shape == (16, 2)
    idx = m.relative_position_index
    assert idx[0, 5] == t5_bucket_reference(5, 16, 20) == 8 + 4  # key 5 after query 0
    assert idx[5, 0] == t5_bucket_reference(-5, 16, 20) == 4
    assert idx[0, 39] == 15 and idx[39, 0] == 7


# ---------------------------------------------------------------- alibi
@pytest.mark.parametrize("n", range(1, 17))
def test_alibi_slopes_match_paper_reference(n):
    torch.testing.assert_close(
        alibi_slopes(n), torch.tensor(alibi_get_slopes_reference(n), dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_alibi_known_slopes():
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(1).tolist() == [2.0**-8]
    # 6 heads: the 4-head set (1/4, 1/16, 1/64, 1/256) then every other of the 8-head set (1/2, 1/8)
    assert alibi_slopes(6).tolist() == [0.25, 1 / 16, 1 / 64, 1 / 256, 0.5, 0.125]


def test_alibi_is_fixed_and_minus_slope_times_distance():
    m1 = RelativePositionBias(num_heads=8, seq_len=5, bias_type="alibi")
    assert list(m1.parameters()) == [] and dict(m1.state_dict()) == {}
    b = m1()
    assert b[0, 4, 1].item() == pytest.approx(-0.5 * 3)
    assert b[7, 1, 4].item() == pytest.approx(-(2.0**-8) * 3)
    assert torch.equal(b, b.transpose(1, 2))

    e = RelativePositionBias(num_heads=8, window_size=(3, 3), bias_type="alibi")()
    man = RelativePositionBias(num_heads=8, window_size=(3, 3), bias_type="alibi", alibi_distance="manhattan")()
    # token 0 = (0, 0), token 8 = (2, 2), token 5 = (1, 2)
    assert e[0, 0, 8].item() == pytest.approx(-0.5 * math.sqrt(8))
    assert man[0, 0, 8].item() == pytest.approx(-0.5 * 4)
    assert e[1, 5, 0].item() == pytest.approx(-0.25 * math.sqrt(5))
    assert man[1, 5, 0].item() == pytest.approx(-0.25 * 3)


# ---------------------------------------------------------------- cpb (Swin V2)
def test_swinv2_log_coords_2x2_by_hand():
    s = math.log2(9) / 3  # offset 1 / (2 - 1) * 8 = 8 -> log2(8 + 1) / log2(8)
    vals = [-s, 0.0, s]
    expected = torch.tensor([[[dy, dx] for dx in vals] for dy in vals])
    got = swinv2_log_coords((2, 2))
    assert got.shape == (3, 3, 2)
    torch.testing.assert_close(got, expected)


def test_swinv2_log_coords_pretrained_window():
    # window 3 normalized by a pretrained window of 5: offset 2 -> 2 / 4 * 8 = 4 -> log2(5) / 3
    got = swinv2_log_coords((3, 3), pretrained_window_size=(5, 5))
    assert got[4, 4, 0].item() == pytest.approx(math.log2(5) / 3)
    assert got[0, 2, 0].item() == pytest.approx(-math.log2(5) / 3)
    assert got[2, 3, 1].item() == pytest.approx(math.log2(3) / 3)  # offset 1 -> 2


def test_cpb_module_as_swin_v2():
    m = RelativePositionBias(num_heads=3, window_size=(2, 2), bias_type="cpb")
    assert [k for k in m.state_dict()] == ["cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight"]
    assert m.cpb_mlp[0].weight.shape == (512, 2) and m.cpb_mlp[2].weight.shape == (3, 512)
    assert m.relative_coords_table.shape == (3, 3, 2)
    # Swin V2 / timm order: MLP on the coords table, gather by the index, then 16 * sigmoid.
    table = m.cpb_mlp(m.relative_coords_table).view(-1, 3)
    ref = table[m.relative_position_index.view(-1)].view(4, 4, -1).permute(2, 0, 1)
    torch.testing.assert_close(m(), 16 * torch.sigmoid(ref))
    m().sum().backward()
    assert m.cpb_mlp[2].weight.grad is not None and m.cpb_mlp[2].weight.grad.abs().sum() > 0


def test_cpb_eval_cache_follows_mlp_weights():
    m = RelativePositionBias(num_heads=2, window_size=(2, 2), bias_type="cpb").eval()
    with torch.no_grad():
        a = m().clone()
        m.cpb_mlp[2].weight.add_(1.0)  # not the first source tensor
        b = m()
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------- validation
def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="seq_len is required for bias_type='t5'"):
        RelativePositionBias(num_heads=2, window_size=(3, 3), bias_type="t5")
    with pytest.raises(ValueError, match="window_size is required for bias_type='cpb'"):
        RelativePositionBias(num_heads=2, seq_len=4, bias_type="cpb")
    with pytest.raises(ValueError, match=r"\['num_buckets'\] do not apply to bias_type='2d'"):
        RelativePositionBias(num_heads=2, window_size=(3, 3), num_buckets=8)
    with pytest.raises(ValueError, match="alibi_distance must be one of"):
        RelativePositionBias(num_heads=2, seq_len=4, bias_type="alibi", alibi_distance="cosine")
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionBias(num_heads=2, seq_len=4, bias_type="t5", num_buckets=32, max_distance=8)
    with pytest.raises(ValueError, match=r"unknown keys \['foo'\]"):
        check_rpb_kwargs({"bias_type": "2d", "foo": 1})
    with pytest.raises(ValueError, match=r"\['cpb_hidden_dim'\] do not apply to bias_type='t5'"):
        check_rpb_kwargs({"bias_type": "t5", "cpb_hidden_dim": 64})
    with pytest.raises(ValueError, match="bias_type"):
        RelativePositionBias(num_heads=2, seq_len=4, bias_type="rope")


def test_learned_families_get_gradients_and_alibi_none():
    for bt, kw in [("t5", {"seq_len": 6}), ("2d_cls", {"window_size": (2, 2)})]:
        m = RelativePositionBias(num_heads=2, bias_type=bt, **kw)
        m().sum().backward()
        assert m.relative_position_bias_table.grad is not None
    a = RelativePositionBias(num_heads=2, seq_len=6, bias_type="alibi")
    assert not a().requires_grad
