"""The index and offset arithmetic (relpos.geometry), checked against explicit references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relpos import geometry as G
from relpos.families import NUM_CLS_ROWS


def test_index_2x2_and_1d_references():
    ref = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]  # DESIGN.md, window (2, 2)
    assert G.relative_position_index((2, 2)).tolist() == ref
    assert G.relative_position_index(3).tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]
    assert G.relative_position_index((2, 2)).dtype == torch.int64


@pytest.mark.parametrize("size", [(3, 5), (4, 4), (1, 6), (5, 1)])
def test_index_is_swins_loop_formula(size):
    h, w = size
    idx = G.relative_position_index(size)
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            assert idx[i, j] == (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)


def test_a_sequence_is_the_one_row_window():
    for length in (1, 2, 7):
        assert torch.equal(G.relative_position_index(length), G.relative_position_index((1, length)))
        assert G.table_offsets(length).tolist() == G.table_offsets((1, length))[:, 1].tolist()
    assert G.token_grid(7) == (1, 7) and G.token_grid((3, 4)) == (3, 4) and G.token_grid([2, 5]) == (2, 5)
    assert G.num_tokens((3, 4)) == 12 and G.num_tokens(9) == 9


@pytest.mark.parametrize("size", [(3, 5), (4, 4), (1, 6)])
def test_table_offsets_match_index_and_decode(size):
    h, w = size
    idx = G.relative_position_index(size)
    offsets = G.table_offsets(size)
    assert offsets.shape == (G.num_table_rows(size), 2) == ((2 * h - 1) * (2 * w - 1), 2)
    for i in range(h * w):
        for j in range(h * w):
            cell = G.decode_cell(size, i, j)
            assert cell["index"] == idx[i, j]
            assert cell["query"] == (i // w, i % w) and cell["key"] == (j // w, j % w)
            assert tuple(offsets[idx[i, j]].tolist()) == cell["offset"]
            assert cell["offset"] == (i // w - j // w, i % w - j % w)
    dy, dx = G.pair_offsets(size)
    assert torch.equal(offsets[idx][..., 0], dy) and torch.equal(offsets[idx][..., 1], dx)


def test_decode_1d():
    assert G.decode_cell(5, 1, 4) == {"i": 1, "j": 4, "offset": -3, "seq_len": 5, "index": 1}
    # (y, x) 5 -> (1, 1), 2 -> (0, 2): offset (1, -1); index (1 + 2) * 7 + (-1 + 3) = 23
    cell = G.decode_cell((3, 4), 5, 2)
    assert cell["offset"] == (1, -1) and cell["index"] == 23 and cell["window"] == (3, 4)
    with pytest.raises(ValueError, match="i must be"):
        G.decode_cell((2, 2), 4, 0)
    with pytest.raises(TypeError, match="size"):
        G.decode_cell("2d", 0, 0)


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="size"):
        G.relative_position_index((0, 3))
    with pytest.raises(ValueError, match="size"):
        G.num_tokens(0)
    with pytest.raises(TypeError, match="size"):
        G.token_grid((1, 2, 3))
    with pytest.raises(ValueError, match="extra_rows"):
        G.num_table_rows((2, 2), -1)
    assert G.num_table_rows((2, 3), NUM_CLS_ROWS) == 15 + 3 and G.num_table_rows(4) == 7


def test_positions_and_distances():
    assert G.token_positions((2, 3)).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    d = G.token_distances((2, 2))
    assert d.dtype == torch.float64 and d[0, 3].item() == pytest.approx(math.sqrt(2)) and d[0, 1] == 1
    assert G.token_distances(4).tolist() == [[abs(i - j) for j in range(4)] for i in range(4)]
    eu, man = G.table_distances((2, 3)), G.table_distances((2, 3), "manhattan")
    for r, (dy, dx) in enumerate(G.table_offsets((2, 3)).tolist()):
        assert eu[r].item() == pytest.approx(math.hypot(dy, dx)) and man[r].item() == abs(dy) + abs(dx)
    assert G.table_distances(3).tolist() == [2, 1, 0, 1, 2] == G.table_distances(3, "manhattan").tolist()
    with pytest.raises(ValueError, match="metric"):
        G.table_distances(3, "chebyshev")


def test_center_token():
    assert G.center_token((3, 3)) == 4
    assert G.center_token((32, 32)) == 16 * 32 + 16
    assert G.center_token((1, 8)) == 4


def test_class_token_rows_follow_the_grid_rows():
    assert len(G.CLS_ROW_NAMES) == NUM_CLS_ROWS
    grid = G.relative_position_index((2, 2))
    idx = G.add_class_token(grid, 9)
    assert idx.shape == (5, 5) and torch.equal(idx[1:, 1:], grid)
    assert idx[0, 1:].tolist() == [9] * 4 and idx[1:, 0].tolist() == [10] * 4 and idx[0, 0] == 11  # BEiT


def test_strip_class_token_drops_only_a_class_token():
    m = np.arange(5 * 5).reshape(1, 5, 5)
    np.testing.assert_array_equal(G.strip_class_token(m, (2, 2)), m[:, 1:, 1:])
    assert G.strip_class_token(m[:, 1:, 1:], (2, 2)).shape == (1, 4, 4)
    assert G.strip_class_token(torch.zeros(2, 5, 5), (2, 2)).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="tokens"):
        G.strip_class_token(m, (3, 3))


def test_t5_buckets_by_hand():
    # 8 buckets, max_distance 6: max_exact 2; offsets j - i <= 0 in 0..3, > 0 in 4..7
    rel = torch.arange(-7, 8)
    expected = [3, 3, 3, 3, 2, 2, 1, 0, 5, 6, 6, 7, 7, 7, 7]
    assert G.t5_bucket(rel, 8, 6).tolist() == expected
    per = G.t5_bucket_offsets(8, 6, reach=7)
    assert [p.tolist() for p in per] == [[0], [-1], [-3, -2], [-7, -6, -5, -4], [], [1], [2, 3], [4, 5, 6, 7]]
    assert sum(p.size for p in G.t5_bucket_offsets(8, 6)) == 13  # default reach: ±max_distance
    # the smallest |offset| per bucket (bucket 4 holds no offset: 0)
    assert G.t5_bucket_distances(8, 6).tolist() == [0, 1, 2, 4, 0, 1, 2, 4]
    with pytest.raises(ValueError, match="max_distance"):
        G.t5_bucket_distances(8, 2)


def test_table_row_is_the_index_formula_on_ints_arrays_and_tensors():
    assert G.table_row(0, 0, (2, 2)) == 4 and G.table_row(-1, -1, (2, 2)) == 0 and G.table_row(1, 1, (2, 2)) == 8
    assert G.table_row(0, -3, 5) == 1  # 1D: i - j + L - 1
    dy, dx = G.pair_offsets((3, 4))
    assert torch.equal(G.table_row(dy, dx, (3, 4)), G.relative_position_index((3, 4)))
    np.testing.assert_array_equal(G.table_row(dy.numpy(), dx.numpy(), (3, 4)), G.relative_position_index((3, 4)).numpy())
    assert G.pair_offsets(4)[0].abs().sum() == 0 and G.pair_offsets(4)[1].tolist()[0] == [0, -1, -2, -3]
