"""relpos.rotary against a reference transcribed from timm (tests/rope_reference.py) and LLaMA."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import rope_reference as ref
from relpos.guards import ResourceLimitError, memory_budget
from relpos.rotary import (
    DEFAULT_THETA,
    RotaryPositionEmbedding,
    apply_rotary,
    content_directions,
    estimate_rotary_memory,
    init_mixed_freqs,
    rotate_pairs,
)

# float32 rounding: the operations are the same as upstream's, so most comparisons are exact;
# the tolerance covers the few that are not (complex products, float64 kernels).
TOL = dict(rtol=1e-6, atol=1e-6)


def qk(b, h, n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shape = (b, h, n, d)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def index_2d(h, w):
    """DESIGN.md's 2D relative position index: (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1)."""
    t = torch.arange(h * w)
    y, x = t // w, t % w
    return (y[:, None] - y[None, :] + h - 1) * (2 * w - 1) + (x[:, None] - x[None, :] + w - 1)


def index_1d(n):
    t = torch.arange(n)
    return t[:, None] - t[None, :] + n - 1


def depends_only_on_index(logits, index):
    """logits (H, n, n) takes one value per index value (per head)."""
    table = torch.zeros(logits.shape[0], int(index.max()) + 1, dtype=logits.dtype)
    table[:, index.reshape(-1)] = logits.reshape(logits.shape[0], -1)  # any representative per offset
    return torch.allclose(table[:, index], logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- against timm
def test_rotate_pairs_is_timm_rot():
    x = torch.arange(6.0)
    assert torch.equal(rotate_pairs(x), torch.tensor([-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]))
    y = torch.randn(2, 3, 4, 8)
    assert torch.equal(rotate_pairs(y), ref.rot(y))


@pytest.mark.parametrize("grid_indexing", ["ij", "xy"])
@pytest.mark.parametrize(
    "grid,head_dim,theta,npt", [((7, 7), 32, None, 0), ((3, 5), 16, 10000.0, 1), ((4, 6), 24, 50.0, 2)]
)
def test_axial_equals_timm_rotary_embedding_cat(grid_indexing, grid, head_dim, theta, npt):
    m = RotaryPositionEmbedding(
        head_dim, grid, mode="axial", theta=theta, grid_indexing=grid_indexing, num_prefix_tokens=npt
    )
    timm = ref.RotaryEmbeddingCat(
        dim=head_dim,
        temperature=DEFAULT_THETA["axial"] if theta is None else theta,
        in_pixels=False,
        feat_shape=list(grid),
        grid_indexing=grid_indexing,
    )
    sin, cos = timm.get_embed().chunk(2, -1)
    torch.testing.assert_close(m.rope_cos[npt:], cos, **TOL)
    torch.testing.assert_close(m.rope_sin[npt:], sin, **TOL)
    q, k = qk(2, 3, npt + grid[0] * grid[1], head_dim)
    rq, rk = m(q, k)
    torch.testing.assert_close(rq, ref.eva_apply_rope(q, timm.get_embed(), npt), **TOL)
    torch.testing.assert_close(rk, ref.eva_apply_rope(k, timm.get_embed(), npt), **TOL)


def test_axial_ij_first_half_turns_with_the_row():
    first, second = slice(0, 4), slice(4, 8)
    for indexing, (row_half, col_half) in (("ij", (first, second)), ("xy", (second, first))):
        m = RotaryPositionEmbedding(8, (3, 4), grid_indexing=indexing)
        angles = torch.atan2(m.rope_sin, m.rope_cos).view(3, 4, 8)  # (h, w, D)
        rows, cols = angles[..., row_half], angles[..., col_half]
        assert torch.equal(rows, rows[:, :1].expand_as(rows)) and not torch.equal(rows[0], rows[1])
        assert torch.equal(cols, cols[:1].expand_as(cols)) and not torch.equal(cols[:, 0], cols[:, 1])


@pytest.mark.parametrize("grid_indexing", [None, "xy", "ij"])
def test_mixed_equals_timm_rotary_embedding_mixed(grid_indexing):
    head_dim, heads, grid, npt = 16, 4, (3, 5), 1
    torch.manual_seed(7)
    m = RotaryPositionEmbedding(
        head_dim, grid, mode="mixed", num_heads=heads, grid_indexing=grid_indexing, num_prefix_tokens=npt
    )
    torch.manual_seed(7)
    freqs = ref.init_random_2d_freqs(head_dim, 1, heads, temperature=10.0)  # (2, 1, H, P)
    assert m.freqs.shape == (2, heads, head_dim // 2)
    assert torch.equal(m.freqs.detach(), freqs[:, 0])
    t_x, t_y = ref.get_mixed_grid(list(grid), grid_indexing or "xy")
    emb = ref.get_mixed_freqs(freqs[:, 0], t_x, t_y)  # (H, n, 2D)
    q, k = qk(2, heads, npt + 15, head_dim)
    rq, rk = m(q, k)
    torch.testing.assert_close(rq, ref.eva_apply_rope(q, emb, npt), **TOL)
    torch.testing.assert_close(rk, ref.eva_apply_rope(k, emb, npt), **TOL)


def test_mixed_layer_equals_a_depth_slice_of_timm():
    """Each layer's parameter is one depth slice: same construction, same numbers (set from a slice)."""
    torch.manual_seed(0)
    timm = ref.RotaryEmbeddingMixed(dim=4 * 16, depth=3, num_heads=4)  # head_dim 16
    emb = timm.get_embed([4, 4])  # (depth, H, n, 2D)
    q, k = qk(1, 4, 16, 16)
    for depth in range(3):
        m = RotaryPositionEmbedding(16, 4, mode="mixed", num_heads=4)
        m.load_state_dict({"freqs": timm.freqs.detach()[:, depth]})
        torch.testing.assert_close(m(q, k)[0], ref.apply_rot_embed_cat(q, emb[depth]), **TOL)


def test_mixed_layers_built_in_sequence_draw_timms_depth_slices():
    torch.manual_seed(11)
    freqs = ref.init_random_2d_freqs(32, 3, 4)  # (2, depth, H, P)
    torch.manual_seed(11)
    layers = [RotaryPositionEmbedding(32, (2, 2), mode="mixed", num_heads=4) for _ in range(3)]
    for depth, m in enumerate(layers):
        assert torch.equal(m.freqs.detach(), freqs[:, depth])


def test_mixed_default_phase_is_x_times_freqs0_plus_y_times_freqs1():
    m = RotaryPositionEmbedding(8, (2, 3), mode="mixed", num_heads=2)
    with torch.no_grad():
        m.freqs.copy_(torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0.5, 0, 0], [0, 0, 0, 0]]]))
    cos, sin = m.cos_sin()  # (H, n, D)
    angle = torch.atan2(sin, cos)[0].view(2, 3, 8)  # head 0
    y, x = torch.meshgrid(torch.arange(2.0), torch.arange(3.0), indexing="ij")
    torch.testing.assert_close(angle[..., 0], x)  # freqs[0] multiplies the column
    torch.testing.assert_close(angle[..., 2], 0.5 * y)  # freqs[1] multiplies the row


def test_1d_equals_llama():
    m = RotaryPositionEmbedding(16, 12, mode="1d")
    q, k = qk(2, 3, 12, 16)
    cis = ref.precompute_freqs_cis(16, 12, theta=10000.0)
    rq, rk = m(q, k)
    torch.testing.assert_close(rq, ref.apply_rotary_emb_bhnd(q, cis), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, ref.apply_rotary_emb_bhnd(k, cis), rtol=1e-5, atol=1e-5)
    # and with timm's language bands: freq_bands(D, theta, step=2)
    torch.testing.assert_close(m.bands, ref.freq_bands(16, 10000.0, step=2), rtol=0, atol=0)


# ---------------------------------------------------------------------------- the relative property
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(head_dim=16, grid_size=(4, 5), mode="axial"),
        dict(head_dim=16, grid_size=(4, 5), mode="axial", grid_indexing="xy"),
        dict(head_dim=16, grid_size=(4, 5), mode="mixed", num_heads=3),
        dict(head_dim=16, grid_size=(4, 5), mode="mixed", num_heads=3, grid_indexing="ij"),
    ],
)
def test_2d_logits_depend_only_on_the_offset(kwargs):
    torch.manual_seed(1)
    m = RotaryPositionEmbedding(**kwargs)
    h, w = kwargs["grid_size"]
    heads = kwargs.get("num_heads", 2)
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(heads, 16, generator=g), torch.randn(heads, 16, generator=g)
    q = u[None, :, None, :].expand(1, heads, h * w, 16)  # same content at every position
    k = v[None, :, None, :].expand(1, heads, h * w, 16)
    rq, rk = m(q, k)
    logits = (rq @ rk.transpose(-2, -1))[0]  # (H, n, n)
    assert depends_only_on_index(logits, index_2d(h, w))
    # shifting both positions by the same amount keeps the logit: (0,0)->(1,2) equals (2,1)->(3,3)
    a, b = logits[:, 0 * w + 0, 1 * w + 2], logits[:, 2 * w + 1, 3 * w + 3]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the content matters: without rotation the logit would be constant
    assert logits.std() > 1e-3


def test_1d_logits_depend_only_on_the_offset():
    m = RotaryPositionEmbedding(32, 20, mode="1d")
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(32, generator=g), torch.randn(32, generator=g)
    rq, rk = m(u.expand(1, 1, 20, 32), v.expand(1, 1, 20, 32))
    logits = (rq @ rk.transpose(-2, -1))[0]
    assert depends_only_on_index(logits, index_1d(20))
    torch.testing.assert_close(logits[0, 3, 7], logits[0, 12, 16])


def test_prefix_tokens_untouched():
    for mode, grid in (("axial", (3, 3)), ("mixed", (3, 3)), ("1d", 9)):
        m = RotaryPositionEmbedding(8, grid, mode=mode, num_heads=2, num_prefix_tokens=2)
        q, k = qk(3, 2, 11, 8)
        rq, rk = m(q, k)
        assert torch.equal(rq[:, :, :2], q[:, :, :2]) and torch.equal(rk[:, :, :2], k[:, :, :2])
        assert not torch.equal(rq[:, :, 3:], q[:, :, 3:])  # grid tokens (but the first) do turn


def test_rotation_keeps_norms_and_dtype():
    m = RotaryPositionEmbedding(16, (3, 3), mode="axial")
    q, k = qk(2, 2, 9, 16)
    rq, _ = m(q, k)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    qb, kb = q.bfloat16(), k.bfloat16()
    assert m(qb, kb)[0].dtype == torch.bfloat16
    m64 = RotaryPositionEmbedding(16, (3, 3), mode="mixed", num_heads=2).double()
    assert m64(q.double(), k.double())[0].dtype == torch.float64


# ---------------------------------------------------------------------------- learning
def test_gradients_reach_freqs_and_match_the_reference():
    torch.manual_seed(5)
    m = RotaryPositionEmbedding(16, (3, 4), mode="mixed", num_heads=2)
    q, k = qk(2, 2, 12, 16)
    rq, rk = m(q, k)
    (rq * rk).sum().backward()
    assert m.freqs.grad is not None and m.freqs.grad.abs().sum() > 0
    freqs = m.freqs.detach().clone()[:, None].requires_grad_(True)  # (2, 1, H, P)
    t_x, t_y = ref.get_mixed_grid([3, 4], "xy")
    emb = ref.get_mixed_freqs(freqs, t_x, t_y)[0]
    (ref.apply_rot_embed_cat(q, emb) * ref.apply_rot_embed_cat(k, emb)).sum().backward()
    torch.testing.assert_close(m.freqs.grad, freqs.grad[:, 0], rtol=1e-4, atol=1e-5)


def test_state_dict_keys_say_what_they_are():
    assert list(RotaryPositionEmbedding(8, (2, 2), mode="mixed", num_heads=3).state_dict()) == ["freqs"]
    assert list(RotaryPositionEmbedding(8, (2, 2), mode="axial").state_dict()) == []
    assert list(RotaryPositionEmbedding(8, 4, mode="1d").state_dict()) == []
    assert [n for n, _ in RotaryPositionEmbedding(8, (2, 2), mode="mixed").named_parameters()] == ["freqs"]


def test_eval_cache_reused_and_invalidated_when_freqs_change():
    m = RotaryPositionEmbedding(8, (3, 3), mode="mixed", num_heads=2).eval()
    q, k = qk(1, 2, 9, 8)
    with torch.no_grad():
        c1, _ = m.cos_sin()
        c2, _ = m.cos_sin()
        assert c1 is c2  # cached
        out1 = m(q, k)[0]
        m.freqs.mul_(2.0)  # in place, bumps the version counter
        c3, _ = m.cos_sin()
        assert c3 is not c1 and not torch.equal(c3, c1)
        m.freqs.data.add_(0.5)  # through .data: caught by the snapshot
        c4, _ = m.cos_sin()
        assert not torch.equal(c4, c3)
        m.load_state_dict({"freqs": m.freqs.detach() * 0})
        c5, _ = m.cos_sin()
        assert torch.equal(c5, torch.ones_like(c5))
        assert torch.equal(m(q, k)[0], q) and not torch.equal(out1, q)
    m.train()
    c6, _ = m.cos_sin()
    assert c6 is not m.cos_sin()[0]  # training recomputes every time


def test_cache_across_inference_mode():
    m = RotaryPositionEmbedding(8, (3, 3), mode="mixed", num_heads=2, num_prefix_tokens=1).eval()
    q, k = qk(1, 2, 10, 8)
    with torch.inference_mode():
        a = m(q, k)[0]
    with torch.no_grad():
        b = m(q, k)[0]
    c = m(q, k)[0]  # eval with grad enabled: a graph to freqs, no cache
    assert torch.equal(a, b) and torch.equal(b, c) and c.requires_grad


def test_no_cache_in_training_and_copies_drop_it():
    m = RotaryPositionEmbedding(8, (2, 2), mode="mixed", num_heads=1).eval()
    with torch.no_grad():
        m.cos_sin()
    assert m._cache is not None
    assert copy.deepcopy(m)._cache is None and pickle.loads(pickle.dumps(m))._cache is None
    with torch.no_grad():
        c, _ = m.cos_sin()
    torch.testing.assert_close(copy.deepcopy(m).cos_sin()[0], c)


# ---------------------------------------------------------------------------- other grids
@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_set_grid_size_without_rescale_equals_a_fresh_module(mode):
    torch.manual_seed(0)
    m = RotaryPositionEmbedding(16, (4, 4), mode=mode, num_heads=2, num_prefix_tokens=1)
    torch.manual_seed(0)
    fresh = RotaryPositionEmbedding(16, (6, 5), mode=mode, num_heads=2, num_prefix_tokens=1)
    m.set_grid_size((6, 5))
    assert m.grid_size == (6, 5) and m.ref_grid_size == (4, 4) and not m.rescaled and m.num_tokens == 31
    assert torch.equal(m.grid_coords, fresh.grid_coords)
    for a, b in zip(m.cos_sin(), fresh.cos_sin()):
        assert torch.equal(a, b)
    q, k = qk(1, 2, 31, 16)
    assert torch.equal(m(q, k)[0], fresh(q, k)[0])


@pytest.mark.parametrize("grid_indexing", ["ij", "xy"])
def test_set_grid_size_rescale_is_evas_scheme(grid_indexing):
    m = RotaryPositionEmbedding(16, (4, 6), mode="axial", grid_indexing=grid_indexing)
    trained = m.rope_cos.clone()
    m.set_grid_size((8, 9), rescale=True)
    assert m.rescaled
    ys, xs = m.grid_coords[:, 0], m.grid_coords[:, 1]
    assert ys.min() == 0 and ys.max() < 4 and xs.max() < 6  # inside the training grid's range
    torch.testing.assert_close(ys.view(8, 9)[:, 0], torch.arange(8.0) / 8 * 4)
    torch.testing.assert_close(xs.view(8, 9)[0], torch.arange(9.0) / 9 * 6)
    timm = ref.RotaryEmbeddingCat(16, temperature=100.0, in_pixels=False, feat_shape=[8, 9],
                                  ref_feat_shape=[4, 6], grid_indexing=grid_indexing)
    sin, cos = timm.get_embed().chunk(2, -1)
    torch.testing.assert_close(m.rope_cos, cos, **TOL)
    torch.testing.assert_close(m.rope_sin, sin, **TOL)
    m.set_grid_size((4, 6), rescale=True)  # back at the training grid: exactly the training tables
    assert not m.rescaled and torch.equal(m.rope_cos, trained)


def test_rescale_keeps_the_relative_property_in_coordinates():
    m = RotaryPositionEmbedding(16, (3, 3), mode="mixed", num_heads=2)
    m.set_grid_size((6, 6), rescale=True)
    u = content_directions("random", 16, 2, seed=1)
    logits = m.position_logits(u)
    assert depends_only_on_index(logits, index_2d(6, 6))
    kernel = m.position_kernel(u).flatten(1)
    torch.testing.assert_close(kernel[:, index_2d(6, 6)], logits, rtol=1e-4, atol=1e-4)


def test_1d_set_grid_size_and_rescale():
    m = RotaryPositionEmbedding(8, 10, mode="1d")
    m.set_grid_size(20)
    assert m.num_tokens == 20 and torch.equal(m.grid_coords[:, 0], torch.arange(20.0))
    m.set_grid_size(20, rescale=True)
    torch.testing.assert_close(m.grid_coords[:, 0], torch.arange(20.0) / 20 * 10)
    with pytest.raises(TypeError, match="new_grid must be an int"):
        m.set_grid_size((4, 5))


# ---------------------------------------------------------------------------- the position kernel
@pytest.mark.parametrize(
    "kwargs,n,index",
    [
        (dict(head_dim=16, grid_size=(3, 4), mode="axial", num_heads=2), 12, index_2d(3, 4)),
        (dict(head_dim=16, grid_size=(3, 4), grid_indexing="xy", num_heads=2), 12, index_2d(3, 4)),
        (dict(head_dim=16, grid_size=(4, 3), mode="mixed", num_heads=3, num_prefix_tokens=1), 12,
         index_2d(4, 3)),
        (dict(head_dim=8, grid_size=7, mode="1d", num_heads=1), 7, index_1d(7)),
    ],
)
def test_position_kernel_equals_brute_force(kwargs, n, index):
    torch.manual_seed(4)
    m = RotaryPositionEmbedding(**kwargs)
    heads, d, npt = kwargs["num_heads"], kwargs["head_dim"], kwargs.get("num_prefix_tokens", 0)
    uq = content_directions("random", d, heads, seed=0)
    uk = content_directions("random", d, heads, seed=1)
    kernel = m.position_kernel(uq, uk)
    grid = kwargs["grid_size"]
    sizes = (grid,) if isinstance(grid, int) else grid
    expected_shape = (heads, *(2 * s - 1 for s in sizes))
    assert kernel.shape == expected_shape and kernel.dtype == torch.float32
    # brute force: the module's own forward on the contents placed at every token, all pairs
    q = torch.cat([torch.zeros(1, heads, npt, d), uq[None, :, None, :].expand(1, heads, n, d)], dim=2)
    k = torch.cat([torch.zeros(1, heads, npt, d), uk[None, :, None, :].expand(1, heads, n, d)], dim=2)
    rq, rk = m(q, k)
    brute = (rq @ rk.transpose(-2, -1))[0, :, npt:, npt:]  # (H, n, n)
    torch.testing.assert_close(kernel.flatten(1)[:, index], brute, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.position_logits(uq, uk), brute, rtol=1e-5, atol=1e-5)


def test_position_kernel_ones_is_the_mean_cosine():
    m = RotaryPositionEmbedding(16, (5, 5), mode="axial", num_heads=1)
    kernel = m.position_kernel(content_directions("ones", 16))  # (1, 9, 9)
    assert kernel[0, 4, 4] == pytest.approx(1.0)  # zero offset
    bands = m.bands.double()
    dy = torch.arange(-4, 5.0, dtype=torch.float64)
    expected_row = (torch.cos(dy[:, None] * bands).sum(-1) + bands.numel()) / 8  # dx = 0: half the pairs turn
    torch.testing.assert_close(kernel[0, :, 4].double(), expected_row, rtol=1e-6, atol=1e-6)
    assert torch.allclose(kernel[0], kernel[0].flip(0).flip(1))  # same content for q and k: symmetric


def test_content_directions():
    assert content_directions("ones", 4, 2).shape == (2, 4)
    torch.testing.assert_close(content_directions("random", 8, 3, seed=2).norm(dim=-1), torch.ones(3))
    assert torch.equal(content_directions("random", 8, seed=5), content_directions("random", 8, seed=5))
    with pytest.raises(ValueError, match="kind must be one of"):
        content_directions("mean", 8)


# ---------------------------------------------------------------------------- errors and the guard
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(head_dim=6, grid_size=(2, 2)), ValueError, "head_dim must be a multiple of 4 for mode='axial'"),
        (dict(head_dim=7, grid_size=(2, 2), mode="mixed"), ValueError, "head_dim must be a multiple of 4"),
        (dict(head_dim=7, grid_size=4, mode="1d"), ValueError, "must be a multiple of 2 for mode='1d'"),
        (dict(head_dim=8, grid_size=(2, 2), mode="polar"), ValueError, "mode must be one of 'axial'"),
        (dict(head_dim=8, grid_size=(0, 2)), ValueError, r"grid_size\[0\] \(height\) must be an int"),
        (dict(head_dim=8, grid_size="7x7"), TypeError, "grid_size must be a"),
        (dict(head_dim=8, grid_size=(2, 2), mode="1d"), TypeError, "grid_size must be an int sequence"),
        (dict(head_dim=8, grid_size=(2, 2), theta=0.0), ValueError, "theta must be in"),
        (dict(head_dim=8, grid_size=(2, 2), num_heads=0), ValueError, "num_heads must be an int"),
        (dict(head_dim=8, grid_size=(2, 2), grid_indexing="yx"), ValueError, "grid_indexing must be one of"),
        (dict(head_dim=8, grid_size=(2, 2), num_prefix_tokens=-1), ValueError, "num_prefix_tokens must be"),
        (dict(head_dim=8.0, grid_size=(2, 2)), TypeError, "head_dim must be an int"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RotaryPositionEmbedding(**kwargs)


def test_forward_errors():
    m = RotaryPositionEmbedding(8, (2, 3), mode="mixed", num_heads=2, num_prefix_tokens=1)
    q, k = qk(1, 2, 7, 8)
    with pytest.raises(ValueError, match=r"q has N=6 tokens, but this RotaryPositionEmbedding covers 7"):
        m(q[:, :, 1:], k[:, :, 1:])
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        m(q, k[:1, :1])
    with pytest.raises(ValueError, match="head_dim 4"):
        m(q[..., :4], k[..., :4])
    with pytest.raises(ValueError, match="3 heads, but mode='mixed' learned frequencies for num_heads=2"):
        m(torch.randn(1, 3, 7, 8), torch.randn(1, 3, 7, 8))
    with pytest.raises(TypeError, match="q must be a floating-point tensor, got dtype torch.int64"):
        m(torch.ones(1, 2, 7, 8, dtype=torch.long), k)
    with pytest.raises(ValueError, match=r"k must have shape \(B, H, N, D\)"):
        m(q, k[0])
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        m(q.tolist(), k)
    with pytest.raises(TypeError, match="rescale must be a bool"):
        m.set_grid_size((3, 3), rescale=1)
    with pytest.raises(ValueError, match="direction_q must have shape"):
        m.position_kernel(torch.ones(4))
    with pytest.raises(ValueError, match="must have 2 rows"):
        m.position_kernel(torch.ones(3, 8))
    # the fixed modes rotate any number of heads alike
    a = RotaryPositionEmbedding(8, (2, 3))
    assert a(torch.randn(2, 5, 6, 8), torch.randn(2, 5, 6, 8))[0].shape == (2, 5, 6, 8)


def test_memory_estimate_and_guard():
    est = estimate_rotary_memory(64, (14, 14), "axial", num_prefix_tokens=1)
    assert est.breakdown["cos and sin (2 x N x D)"] == 2 * 197 * 64 * 4
    mixed = estimate_rotary_memory(64, (14, 14), "mixed", num_heads=4)
    assert mixed.breakdown["freqs (2 x H x D/2)"] == 2 * 4 * 32 * 4
    assert mixed.breakdown["cos and sin (2 x H x N x D)"] == 2 * 4 * 196 * 64 * 4
    assert RotaryPositionEmbedding(64, (14, 14), num_prefix_tokens=1).estimate_memory().total == est.total
    with memory_budget(1.0):  # 1 MB
        with pytest.raises(ResourceLimitError, match="RotaryPositionEmbedding"):
            RotaryPositionEmbedding(64, (512, 512))
        m = RotaryPositionEmbedding(64, (8, 8))
        with pytest.raises(ResourceLimitError):
            m.set_grid_size((512, 512))
        assert m.grid_size == (8, 8)


def test_functional_apply_rotary_broadcasts_over_heads():
    m = RotaryPositionEmbedding(8, (2, 2))
    x = torch.randn(2, 3, 4, 8)
    assert torch.equal(apply_rotary(x, m.rope_cos, m.rope_sin), m(x, x)[0])
    assert init_mixed_freqs(8, 3).shape == (2, 3, 4)


def test_to_moves_buffers_and_rebuild_keeps_dtype():
    m = RotaryPositionEmbedding(8, (2, 2)).double()
    assert m.rope_cos.dtype == torch.float64
    m.set_grid_size((3, 3))
    assert m.rope_cos.dtype == torch.float64 and m.rope_cos.shape == (9, 8)
    assert "mode='axial'" in repr(m) and "grid_size=(3, 3)" in repr(m)
