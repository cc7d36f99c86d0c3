"""Table resizing (bicubic, BEiT's geometric) and set_window_size, against written-out references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from relpos.relative_position import (
    RelativePositionBias,
    get_relative_position_index_2d,
    get_relative_position_index_2d_cls,
    swinv2_log_coords,
)
from relpos.resize import geometric_offsets, resize_relative_position_bias_table

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- references
def keys_cubic(x: float, a: float = -0.75) -> float:
    """The cubic convolution kernel torch's bicubic uses (Keys, a = -0.75)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def bicubic_1d_reference(values: list[float], dst: int) -> list[float]:
    """align_corners=False bicubic resampling of a line, border taps clamped (as torch)."""
    src = len(values)
    out = []
    for i in range(dst):
        u = (i + 0.5) * src / dst - 0.5
        f = math.floor(u)
        out.append(
            sum(values[min(max(f + k, 0), src - 1)] * keys_cubic(u - (f + k)) for k in (-1, 0, 1, 2))
        )
    return out


def timm_resize_rel_pos_bias_table(rel_pos_bias, new_window_size, new_bias_shape):
    """timm.layers.pos_embed_rel.resize_rel_pos_bias_table_simple (2D table branch), ported."""
    dst_size = (new_window_size[0] * 2 - 1, new_window_size[1] * 2 - 1)
    dst_num_pos, _ = new_bias_shape
    src_num_pos, num_attn_heads = rel_pos_bias.shape
    num_extra_tokens = dst_num_pos - (dst_size[0] * dst_size[1])
    src_size = int((src_num_pos - num_extra_tokens) ** 0.5)
    src_size = (src_size, src_size)
    if num_extra_tokens:
        extra_tokens = rel_pos_bias[-num_extra_tokens:, :]
        rel_pos_bias = rel_pos_bias[:-num_extra_tokens, :]
    else:
        extra_tokens = None
    rel_pos_bias = torch.nn.functional.interpolate(
        rel_pos_bias.transpose(1, 0).reshape((1, -1, src_size[0], src_size[1])),
        size=dst_size,
        mode="bicubic",
        align_corners=False,
    ).view(-1, dst_num_pos - num_extra_tokens).transpose(0, 1)
    if extra_tokens is not None:
        rel_pos_bias = torch.cat((rel_pos_bias, extra_tokens), dim=0)
    return rel_pos_bias


def beit_geometric_reference(rel_pos_bias: torch.Tensor, src_size: int, dst_size: int) -> torch.Tensor:
    """BEiT's run_class_finetuning.py resize (square table, no extra rows), with scipy's
    RectBivariateSpline(s=0) standing in for the removed interp2d(kind='cubic')."""
    from scipy import interpolate

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_size // 2)
        if gp > dst_size // 2:
            right = q
        else:
            left = q
    dis = []
    cur = 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-_ for _ in reversed(dis)]
    x = r_ids + [0] + dis
    y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    all_rel_pos_bias = []
    for i in range(rel_pos_bias.shape[1]):
        z = rel_pos_bias[:, i].view(src_size, src_size).double().numpy()
        f = interpolate.RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)
        all_rel_pos_bias.append(torch.tensor(f(dy, dx)).contiguous().view(-1, 1))
    return torch.cat(all_rel_pos_bias, dim=-1)


# ---------------------------------------------------------------- resize function
@pytest.mark.parametrize("method", ["bicubic", "geometric"])
def test_identity_when_sizes_equal(method):
    table = torch.randn(7 * 5 + 3, 2)
    out = resize_relative_position_bias_table(table, (4, 3), (4, 3), method=method)
    assert torch.equal(out, table) and out is not table


def test_bicubic_known_small_values():
    # 1D table [0, 1, 2] (window 2) to 5 offsets (window 3): u = -0.2, 0.4, 1.0, 1.6, 2.2
    out = resize_relative_position_bias_table(torch.tensor([[0.0], [1.0], [2.0]]), (1, 2), (1, 3))
    expected = bicubic_1d_reference([0.0, 1.0, 2.0], 5)
    torch.testing.assert_close(out[:, 0], torch.tensor(expected))
    assert out[2, 0].item() == pytest.approx(1.0)  # offset 0 lands on the centre
    # u = 0.4: taps 0, 0, 1, 2 with weights k(1.4) = -0.108, k(0.4) = 0.72, k(0.6) = 0.46, k(1.6) = -0.072
    assert out[3 - 2, 0].item() == pytest.approx(0.46 - 2 * 0.072, abs=1e-6)


@pytest.mark.parametrize("src,dst", [(5, 9), (9, 5), (7, 13)])
def test_bicubic_1d_matches_kernel_reference(src, dst):
    vals = torch.randn(src).tolist()
    out = resize_relative_position_bias_table(torch.tensor(vals)[:, None], (1, (src + 1) // 2), (1, (dst + 1) // 2))
    torch.testing.assert_close(out[:, 0], torch.tensor(bicubic_1d_reference(vals, dst)), rtol=1e-5, atol=1e-5)


def test_bicubic_linear_table_keeps_centre_and_oddness_but_not_exact_linearity():
    # b(dy, dx) = 2 dy - 3 dx on a 4x4 window (7x7 offsets), resized to 7x7 (13x13 offsets).
    dy, dx = torch.meshgrid(torch.arange(-3.0, 4), torch.arange(-3.0, 4), indexing="ij")
    table = (2 * dy - 3 * dx).reshape(-1, 1)
    out = resize_relative_position_bias_table(table, (4, 4), (7, 7)).view(13, 13)
    assert out[6, 6].item() == pytest.approx(0.0, abs=1e-6)  # offset 0 -> 0
    torch.testing.assert_close(out, -out.flip(0, 1), rtol=0, atol=1e-5)  # odd stays odd
    # Bicubic is separable: rows then columns through the 1D kernel reference.
    rows = [bicubic_1d_reference(r, 13) for r in table.view(7, 7).tolist()]  # (7, 13)
    ref = torch.tensor([bicubic_1d_reference(list(c), 13) for c in zip(*rows)]).t()  # (13, 13)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Interior points (all 4 taps inside) follow the line only approximately: torch's kernel
    # (a = -0.75) does not reproduce linear functions exactly (a = -0.5 would): up to 0.15 off here.
    u = (torch.arange(13) + 0.5) * 7 / 13 - 0.5 - 3  # source offset of each new offset
    line = 2 * u[:, None] - 3 * u[None, :]
    err = (out - line)[4:9, 4:9].abs()
    assert 0.1 < err.max() < 0.16


@pytest.mark.parametrize("extra", [0, 3])
def test_bicubic_matches_timm_port(extra):
    table = torch.randn(7 * 7 + extra, 3)
    out = resize_relative_position_bias_table(table, (4, 4), (6, 6))
    ref = timm_resize_rel_pos_bias_table(table, (6, 6), (11 * 11 + extra, 3))
    torch.testing.assert_close(out, ref)
    if extra:
        assert torch.equal(out[-3:], table[-3:])


def test_geometric_offsets_as_beit():
    pos = geometric_offsets(13, 19)  # window 7 -> 10
    assert len(pos) == 13 and pos[6] == 0 and pos[7] == 1 and pos[5] == -1
    assert pos[-1] == pytest.approx(9, abs=1e-4)
    gaps = np.diff(pos[6:])
    assert np.all(np.diff(gaps) > 0)  # growing gaps
    q = gaps[1] / gaps[0]
    assert np.allclose(gaps[1:] / gaps[:-1], q)
    shrink = geometric_offsets(19, 13)
    assert shrink[-1] == pytest.approx(6, abs=1e-4) and np.all(np.diff(np.diff(shrink[9:])) < 0)


def test_geometric_matches_beit_reference():
    table = torch.randn(13 * 13, 2, dtype=torch.float64)
    out = resize_relative_position_bias_table(table, (7, 7), (10, 10), method="geometric")
    ref = beit_geometric_reference(table, 13, 19)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # near offsets (0, ±1 on both axes) sit on source points: unchanged
    src, dst = table.view(13, 13, 2), out.view(19, 19, 2)
    torch.testing.assert_close(dst[8:11, 8:11], src[5:8, 5:8])


def test_geometric_keeps_cls_rows_and_shrinks():
    table = torch.randn(13 * 13 + 3, 2)
    out = resize_relative_position_bias_table(table, (7, 7), (5, 5), method="geometric")
    assert out.shape == (81 + 3, 2) and torch.equal(out[-3:], table[-3:])
    centre = out[:-3].view(9, 9, 2)[3:6, 3:6]
    torch.testing.assert_close(centre, table[:-3].view(13, 13, 2)[5:8, 5:8], rtol=1e-5, atol=1e-5)


def test_resize_errors():
    with pytest.raises(ValueError, match="table has 10 rows but old_window"):
        resize_relative_position_bias_table(torch.zeros(10, 2), (2, 2), (3, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        resize_relative_position_bias_table(torch.zeros(9, 2), (2, 2), (3, 3), method="nearest")
    with pytest.raises(TypeError, match=r"\(T, H\)"):
        resize_relative_position_bias_table(torch.zeros(9), (2, 2), (3, 3))


# ---------------------------------------------------------------- set_window_size on the module
def test_set_window_size_learned_2d_and_cls():
    m = RelativePositionBias(num_heads=2, window_size=(3, 3), bias_type="2d")
    before = m.relative_position_bias_table.detach().clone()
    m.set_window_size((5, 4))
    torch.testing.assert_close(
        m.relative_position_bias_table.detach(), resize_relative_position_bias_table(before, (3, 3), (5, 4))
    )
    assert torch.equal(m.relative_position_index, get_relative_position_index_2d((5, 4)))
    assert m.window_size == (5, 4) and m.num_tokens == 20 and m().shape == (2, 20, 20)
    assert isinstance(m.relative_position_bias_table, torch.nn.Parameter)

    c = RelativePositionBias(num_heads=2, window_size=(3, 3), bias_type="2d_cls")
    cls_rows = c.relative_position_bias_table.detach()[-3:].clone()
    c.set_window_size((4, 4), method="geometric")
    assert c.relative_position_bias_table.shape == (49 + 3, 2)
    assert torch.equal(c.relative_position_bias_table.detach()[-3:], cls_rows)
    assert torch.equal(c.relative_position_index, get_relative_position_index_2d_cls((4, 4)))


def test_set_window_size_other_families():
    t5 = RelativePositionBias(num_heads=2, seq_len=8, bias_type="t5")
    table = t5.relative_position_bias_table.detach().clone()
    t5.set_window_size(20)
    assert torch.equal(t5.relative_position_bias_table.detach(), table) and t5().shape == (2, 20, 20)

    one = RelativePositionBias(num_heads=2, seq_len=4, bias_type="1d")
    one.set_window_size(6)
    assert one.relative_position_bias_table.shape == (11, 2) and one().shape == (2, 6, 6)

    alibi = RelativePositionBias(num_heads=4, window_size=(2, 2), bias_type="alibi")
    alibi.set_window_size((3, 5))
    torch.testing.assert_close(alibi(), RelativePositionBias(num_heads=4, window_size=(3, 5), bias_type="alibi")())

    cpb = RelativePositionBias(num_heads=2, window_size=(2, 2), bias_type="cpb")
    w = cpb.cpb_mlp[0].weight.detach().clone()
    cpb.set_window_size((3, 3))
    torch.testing.assert_close(cpb.relative_coords_table, swinv2_log_coords((3, 3)))
    assert torch.equal(cpb.cpb_mlp[0].weight.detach(), w) and cpb().shape == (2, 9, 9)

    with pytest.raises(TypeError, match="int sequence length"):
        t5.set_window_size((2, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        cpb.set_window_size((4, 4), method="area")
