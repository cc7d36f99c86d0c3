"""Property-based tests (hypothesis) of the relative position index and RelativePositionBias.

Deterministic (derandomized, no example database) and bounded (a few dozen small examples per
property), so the file runs in seconds and fails the same way on every machine.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relpos.relative_position import (
    RelativePositionBias,
    get_relative_position_index_1d,
    get_relative_position_index_2d,
    get_relative_position_index_2d_cls,
)

settings.register_profile(
    "relpos",
    derandomize=True,
    database=None,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
RELPOS = settings.get_profile("relpos")  # applied per test: other files keep their own settings

lengths = st.integers(min_value=1, max_value=24)
sides = st.integers(min_value=1, max_value=7)
windows = st.tuples(sides, sides)
heads = st.integers(min_value=1, max_value=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _coords_2d(h: int, w: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(h) for x in range(w)]  # row-major tokens


def _check_bijection(index: torch.Tensor, offsets: list[tuple[int, ...]], t: int) -> None:
    """Each distinct offset maps to one row, each row to one offset, and every row in [0, T) is used."""
    row_of: dict[tuple[int, ...], int] = {}
    offset_of: dict[int, tuple[int, ...]] = {}
    n = index.shape[0]
    for i in range(n):
        for j in range(n):
            off = tuple(a - b for a, b in zip(offsets[i], offsets[j]))  # query - key
            row = int(index[i, j])
            assert row_of.setdefault(off, row) == row, f"offset {off} maps to rows {row_of[off]} and {row}"
            assert offset_of.setdefault(row, off) == off, f"row {row} holds offsets {offset_of[row]} and {off}"
    assert sorted(offset_of) == list(range(t)), "some table rows are never used"


@RELPOS
@given(lengths)
def test_index_1d_properties(seq_len):
    index = get_relative_position_index_1d(seq_len)
    t = 2 * seq_len - 1
    assert index.shape == (seq_len, seq_len) and index.dtype == torch.int64
    assert int(index.min()) >= 0 and int(index.max()) < t
    centre = t // 2
    assert torch.equal(index + index.T, torch.full_like(index, 2 * centre))
    assert torch.equal(index.diagonal(), torch.full((seq_len,), centre))
    _check_bijection(index, [(i,) for i in range(seq_len)], t)
    i, j = seq_len - 1, 0  # explicit reference: i - j + L - 1
    assert int(index[i, j]) == i - j + seq_len - 1


@RELPOS
@given(windows)
def test_index_2d_properties(window):
    h, w = window
    index = get_relative_position_index_2d(window)
    n, t = h * w, (2 * h - 1) * (2 * w - 1)
    assert index.shape == (n, n) and index.dtype == torch.int64
    assert int(index.min()) >= 0 and int(index.max()) < t
    centre = t // 2
    assert centre == (h - 1) * (2 * w - 1) + (w - 1)
    assert torch.equal(index + index.T, torch.full_like(index, 2 * centre))
    coords = _coords_2d(h, w)
    _check_bijection(index, coords, t)
    for i in (0, n - 1):  # explicit reference: (dy + h - 1)(2w - 1) + (dx + w - 1)
        for j in (0, n - 1):
            dy, dx = coords[i][0] - coords[j][0], coords[i][1] - coords[j][1]
            assert int(index[i, j]) == (dy + h - 1) * (2 * w - 1) + (dx + w - 1)


@RELPOS
@given(windows)
def test_index_2d_cls_properties(window):
    h, w = window
    index = get_relative_position_index_2d_cls(window)
    t = (2 * h - 1) * (2 * w - 1) + 3
    assert index.shape == (h * w + 1,) * 2 and index.dtype == torch.int64
    assert int(index.min()) >= 0 and int(index.max()) < t
    assert torch.equal(index[1:, 1:], get_relative_position_index_2d(window))
    assert set(index[0, 1:].tolist()) <= {t - 3} and set(index[1:, 0].tolist()) <= {t - 2} and int(index[0, 0]) == t - 1


def _gather_by_hand(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    n = index.shape[0]
    out = torch.empty(table.shape[1], n, n, dtype=table.dtype)
    for i in range(n):
        for j in range(n):
            out[:, i, j] = table[index[i, j]]
    return out


@RELPOS
@given(windows, heads, st.sampled_from(["2d", "2d_cls"]), st.integers(0, 2**16))
def test_bias_2d_equals_table_at_index(window, num_heads, bias_type, seed):
    torch.manual_seed(seed)
    rpb = RelativePositionBias(num_heads, window_size=window, bias_type=bias_type, init_std=1.0)
    n = window[0] * window[1] + (bias_type == "2d_cls")
    t = rpb.num_relative_positions
    table = rpb.relative_position_bias_table
    assert table.shape == (t, num_heads)
    assert rpb.relative_position_index.shape == (n, n)
    assert int(rpb.relative_position_index.max()) < t
    bias = rpb()
    assert bias.shape == (num_heads, n, n) and bias.dtype == torch.float32
    assert torch.equal(bias, _gather_by_hand(table.detach(), rpb.relative_position_index))
    rpb.eval()
    with torch.no_grad():
        assert torch.equal(rpb(), bias.detach())  # the eval cache returns the same numbers


@RELPOS
@given(lengths, heads, st.integers(0, 2**16))
def test_bias_1d_equals_table_at_index(seq_len, num_heads, seed):
    torch.manual_seed(seed)
    rpb = RelativePositionBias(num_heads, seq_len=seq_len, bias_type="1d", init_std=1.0)
    assert rpb.num_relative_positions == 2 * seq_len - 1
    bias = rpb()
    assert bias.shape == (num_heads, seq_len, seq_len)
    ref = _gather_by_hand(rpb.relative_position_bias_table.detach(), get_relative_position_index_1d(seq_len))
    assert torch.equal(bias, ref)
    # a Toeplitz matrix per head: the bias depends on i - j only
    for d in range(-(seq_len - 1), seq_len):
        diag = bias[:, :, :].diagonal(offset=-d, dim1=1, dim2=2)  # entries with i - j = d
        assert torch.equal(diag, diag[:, :1].expand_as(diag))


@RELPOS
@given(windows, heads)
def test_bias_gradient_reaches_each_row_once_per_pair(window, num_heads):
    """d(sum bias)/d(table[r, h]) is the number of (i, j) pairs whose offset is row r."""
    rpb = RelativePositionBias(num_heads, window_size=window, bias_type="2d")
    rpb().sum().backward()
    counts = torch.bincount(rpb.relative_position_index.flatten(), minlength=rpb.num_relative_positions)
    grad = rpb.relative_position_bias_table.grad
    assert torch.equal(grad, counts[:, None].float().expand_as(grad))
    h, w = window  # offset (dy, dx) occurs (h - |dy|)(w - |dx|) times: check the centre row
    assert int(counts[rpb.num_relative_positions // 2]) == h * w
