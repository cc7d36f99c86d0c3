"""Index formulas against brute force, the bias module against a hand-written gather."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from relpos import (
    RelativePositionBias,
    get_relative_position_index_1d,
    get_relative_position_index_2d,
)


def brute_index_2d(h: int, w: int) -> torch.Tensor:
    """Swin's formula, one cell at a time; rows are numbered over offsets (dy, dx) row-major."""
    n = h * w
    out = torch.empty(n, n, dtype=torch.long)
    for i, j in itertools.product(range(n), repeat=2):
        (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
        out[i, j] = (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    return out


def test_index_2d_worked_example() -> None:
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(get_relative_position_index_2d((2, 2)), expected)


@pytest.mark.parametrize("window", [(1, 1), (1, 5), (3, 2), (4, 4), (7, 7), (5, 3)])
def test_index_2d_matches_brute_force(window: tuple[int, int]) -> None:
    idx = get_relative_position_index_2d(window)
    assert idx.dtype == torch.long
    assert torch.equal(idx, brute_index_2d(*window))


def test_index_2d_matches_swin_reference_code() -> None:
    # The exact sequence of operations in Swin's WindowAttention.__init__.
    wh, ww = 3, 5
    coords = torch.stack(torch.meshgrid([torch.arange(wh), torch.arange(ww)], indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    rel = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    assert torch.equal(get_relative_position_index_2d((wh, ww)), rel.sum(-1))


@pytest.mark.parametrize("seq_len", [1, 2, 5, 16])
def test_index_1d_formula(seq_len: int) -> None:
    idx = get_relative_position_index_1d(seq_len)
    for i, j in itertools.product(range(seq_len), repeat=2):
        assert idx[i, j] == i - j + seq_len - 1
    assert idx.shape == (seq_len, seq_len)


def test_offsets_map_one_to_one_onto_table_rows() -> None:
    h, w = 4, 3
    idx = get_relative_position_index_2d((h, w))
    assert set(idx.unique().tolist()) == set(range((2 * h - 1) * (2 * w - 1)))
    row_of = {}
    for i, j in itertools.product(range(h * w), repeat=2):
        off = (i // w - j // w, i % w - j % w)
        assert row_of.setdefault(off, int(idx[i, j])) == int(idx[i, j])
    assert len(set(row_of.values())) == len(row_of)


@pytest.mark.parametrize(
    "kwargs, n, t",
    [
        (dict(num_heads=8, window_size=(7, 7), bias_type="2d", init_std=0.02), 49, 169),
        (dict(num_heads=3, window_size=(2, 5), bias_type="2d"), 10, 27),
        (dict(num_heads=4, seq_len=16, bias_type="1d"), 16, 31),
    ],
)
def test_bias_shapes_and_gather(kwargs: dict, n: int, t: int) -> None:
    rpb = RelativePositionBias(**kwargs)
    h = kwargs["num_heads"]
    assert rpb.num_heads == h and rpb.bias_type == kwargs["bias_type"]
    assert rpb.num_relative_positions == t
    assert isinstance(rpb.relative_position_bias_table, torch.nn.Parameter)
    assert rpb.relative_position_bias_table.shape == (t, h)
    assert rpb.relative_position_index.shape == (n, n)
    bias = rpb()
    assert bias.shape == (h, n, n)
    table, index = rpb.relative_position_bias_table, rpb.relative_position_index
    expected = table[index.view(-1)].view(n, n, h).permute(2, 0, 1)  # the Swin gather
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)


def test_table_init_truncated_normal() -> None:
    torch.manual_seed(0)
    rpb = RelativePositionBias(num_heads=16, window_size=(16, 16), init_std=0.02)
    table = rpb.relative_position_bias_table.detach()
    assert table.abs().max() <= 0.04 + 1e-7  # cut at 2 std
    assert 0.012 < table.std() < 0.02  # truncation shrinks the std to ~0.88 * 0.02
    zero = RelativePositionBias(num_heads=2, window_size=(3, 3), init_std=0.0)
    assert torch.count_nonzero(zero.relative_position_bias_table) == 0


def test_state_dict_holds_the_table_not_the_index() -> None:
    rpb = RelativePositionBias(num_heads=2, window_size=(3, 3))
    assert list(rpb.state_dict()) == ["relative_position_bias_table"]
    assert "relative_position_index" in dict(rpb.named_buffers())


def test_gradient_reaches_table_in_training() -> None:
    rpb = RelativePositionBias(num_heads=2, window_size=(3, 3))
    rpb.train()
    (rpb() * torch.arange(81.0).view(1, 9, 9)).sum().backward()
    grad = rpb.relative_position_bias_table.grad
    # Each table row collects the weights of every (i, j) with that offset.
    index = rpb.relative_position_index
    expected = torch.zeros(25).index_add_(0, index.view(-1), torch.arange(81.0))
    torch.testing.assert_close(grad[:, 0], expected)
    torch.testing.assert_close(grad[:, 1], expected)


def test_eval_cache_reuses_and_invalidates() -> None:
    rpb = RelativePositionBias(num_heads=2, window_size=(3, 3)).eval()
    with torch.no_grad():
        first = rpb()
        assert rpb() is first  # cached
        rpb.relative_position_bias_table.add_(1.0)  # in-place change bumps the version
        second = rpb()
    assert second is not first
    torch.testing.assert_close(second, first + 1.0)
    # load_state_dict copies in place: the cache must notice.
    rpb.load_state_dict({"relative_position_bias_table": torch.zeros(25, 2)})
    with torch.no_grad():
        assert torch.count_nonzero(rpb()) == 0
    # dtype change replaces the parameter.
    with torch.no_grad():
        assert rpb.double()().dtype == torch.float64


def test_eval_with_grad_enabled_still_builds_a_graph() -> None:
    rpb = RelativePositionBias(num_heads=2, seq_len=4, bias_type="1d").eval()
    rpb().sum().backward()
    assert rpb.relative_position_bias_table.grad is not None


def test_deepcopy_drops_the_cache() -> None:
    rpb = RelativePositionBias(num_heads=2, window_size=(2, 2)).eval()
    with torch.no_grad():
        rpb()
    clone = copy.deepcopy(rpb)
    assert clone._cache is None
    with torch.no_grad():
        torch.testing.assert_close(clone(), rpb())


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(num_heads=0, window_size=(7, 7)), ValueError, "num_heads"),
        (dict(num_heads=2.5, window_size=(7, 7)), TypeError, "num_heads"),
        (dict(num_heads=True, window_size=(7, 7)), TypeError, "num_heads"),
        (dict(num_heads=2), ValueError, "window_size"),
        (dict(num_heads=2, bias_type="1d"), ValueError, "seq_len"),
        (dict(num_heads=2, window_size=(7, 7), bias_type="3d"), ValueError, "bias_type"),
        (dict(num_heads=2, window_size=(7, 0)), ValueError, "window_size"),
        (dict(num_heads=2, window_size=(7, 7, 7)), TypeError, "window_size"),
        (dict(num_heads=2, window_size="7x7"), TypeError, "window_size"),
        (dict(num_heads=2, seq_len=-3, bias_type="1d"), ValueError, "seq_len"),
        (dict(num_heads=2, window_size=(3, 3), init_std=-1.0), ValueError, "init_std"),
        (dict(num_heads=2, window_size=(3, 3), init_std=float("nan")), ValueError, "init_std"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        RelativePositionBias(**kwargs)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "4", None])
def test_index_functions_validate(bad) -> None:
    with pytest.raises((TypeError, ValueError), match="seq_len"):
        get_relative_position_index_1d(bad)
    with pytest.raises((TypeError, ValueError), match="window_size"):
        get_relative_position_index_2d((bad, 3))
