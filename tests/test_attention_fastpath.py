"""The fast paths of the attention against the explicit path, and the eval bias cache.

Every fast path (SDPA with a 4D mask; the fused-explicit autograd function used in training when
the bias needs a gradient) must give the explicit path's outputs and gradients (w.r.t. x, the qkv
and proj weights and the bias table), with and without bias, in train and eval, at sizes around the
path thresholds, for 1D and 2D biases. Comparisons run in float64 so tolerances stay tight.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import relpos._attention_kernels as kernels
import relpos.attention as attention
from relpos import MultiHeadAttention, ScaledDotProductAttention
from relpos.relative_position import RelativePositionBias

torch.set_num_threads(1)

TOL = dict(rtol=1e-9, atol=1e-10)


def make_mha(rpb_kwargs: dict | None, impl: str, heads: int = 2, dim: int = 8) -> MultiHeadAttention:
    torch.manual_seed(3)
    m = MultiHeadAttention(
        dim, heads, use_relative_position=rpb_kwargs is not None, rpb_kwargs=rpb_kwargs, attn_impl=impl
    ).double()
    if m.relative_position_bias is not None:
        with torch.no_grad():  # a bias large enough to change the attention
            m.relative_position_bias.relative_position_bias_table.normal_(0.0, 1.0)
    return m


def run(m: MultiHeadAttention, x: torch.Tensor, train: bool) -> list[torch.Tensor | None]:
    """Output, then (train only) the gradients w.r.t. x, qkv.weight, proj.weight and the table."""
    m.train(train)
    m.zero_grad(set_to_none=True)
    if not train:
        with torch.no_grad():
            return [m(x)]
    xg = x.clone().requires_grad_()
    out = m(xg)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    rpb = m.relative_position_bias
    table_grad = rpb.relative_position_bias_table.grad if rpb is not None else None
    return [out.detach(), xg.grad, m.qkv.weight.grad, m.proj.weight.grad, table_grad]


# Sizes around the thresholds (SDPA_MIN_TOKENS_TRAIN = 196), 2D and 1D.
SIZES = [
    {"window_size": (2, 2)},
    {"window_size": (7, 7)},
    {"window_size": (13, 15)},  # N = 195
    {"window_size": (14, 14)},  # N = 196
    {"bias_type": "1d", "seq_len": 5},
    {"bias_type": "1d", "seq_len": 197},
]


def n_tokens(kw: dict) -> int:
    return kw["seq_len"] if "seq_len" in kw else kw["window_size"][0] * kw["window_size"][1]


@pytest.mark.parametrize("kw", SIZES, ids=lambda kw: f"{kw.get('bias_type', '2d')}-{n_tokens(kw)}")
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_every_path_matches_explicit(kw: dict, with_bias: bool, train: bool) -> None:
    n = n_tokens(kw)
    rpb_kwargs = kw if with_bias else None
    x = torch.randn(2, n, 8, dtype=torch.float64)
    expected = run(make_mha(rpb_kwargs, "explicit"), x, train)
    for impl in ("auto", "sdpa"):
        got = run(make_mha(rpb_kwargs, impl), x, train)
        for name, a, b in zip(["out", "d x", "d qkv", "d proj", "d table"], got, expected):
            if b is None:
                assert a is None, (impl, name)
            else:
                torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=impl, nm=name: f"{i} {nm}: {m}")


@pytest.mark.parametrize("bias_shape", ["HNN", "1HNN", "BHNN", "NN", "B1NN"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_function_gradients_for_every_bias_shape(bias_shape: str, batch: int) -> None:
    """The custom autograd function vs autograd through the explicit formula, all inputs."""
    H, Nq, Nk, D = 2, 6, 5, 4
    shapes = {"HNN": (H, Nq, Nk), "1HNN": (1, H, Nq, Nk), "BHNN": (batch, H, Nq, Nk),
              "NN": (Nq, Nk), "B1NN": (batch, 1, Nq, Nk)}
    q = torch.randn(batch, H, Nq, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, H, Nk, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batch, H, Nk, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(shapes[bias_shape], dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, H, Nq, 3, dtype=torch.float64)
    sdpa = ScaledDotProductAttention()
    out_f, attn = sdpa(q, k, v, bias, need_weights=False)
    assert attn is None
    grads_f = torch.autograd.grad(out_f, (q, k, v, bias), g)
    out_e, _ = sdpa(q, k, v, bias, need_weights=True)
    grads_e = torch.autograd.grad(out_e, (q, k, v, bias), g)
    torch.testing.assert_close(out_f, out_e, **TOL)
    for a, b in zip(grads_f, grads_e):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL)


def test_fused_function_gradcheck() -> None:
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    fn = kernels.BiasedAttentionFunction.apply
    assert torch.autograd.gradcheck(lambda *a: fn(*a, 0.7), (q, k, v, bias))


def test_fused_function_only_some_inputs_need_grad() -> None:
    """A frozen table: only q, k, v need gradients; and only the bias."""
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 5, 5, dtype=torch.float64)
    sdpa = ScaledDotProductAttention()
    for needs in [(True, True, True, False), (False, False, False, True), (False, True, False, True)]:
        ins = [t.clone().requires_grad_(r) for t, r in zip((q, k, v, bias), needs)]
        wanted = [t for t in ins if t.requires_grad]
        gf = torch.autograd.grad(sdpa(*ins, need_weights=False)[0].sum(), wanted)
        ge = torch.autograd.grad(sdpa(*ins, need_weights=True)[0].sum(), wanted)
        for a, b in zip(gf, ge):
            torch.testing.assert_close(a, b, **TOL)


# (num_tokens, has_bias, training, needs_grad, dropout, attn_impl, need_weights) -> kernel
KERNEL_TABLE = [
    # weights wanted, or attn_impl="explicit": always the explicit path
    ((16, True, False, False, 0.0, "auto", True), "explicit"),
    ((1024, False, True, True, 0.1, "sdpa", True), "explicit"),
    ((1024, True, False, False, 0.0, "explicit", False), "explicit"),
    # no autograd (eval / no_grad): in place below 256 tokens, SDPA from there; "sdpa" never in place
    ((255, True, False, False, 0.0, "auto", False), "inplace"),
    ((256, True, False, False, 0.0, "auto", False), "sdpa"),
    ((16, False, False, False, 0.0, "auto", False), "inplace"),
    ((16, True, False, False, 0.0, "sdpa", False), "sdpa"),
    ((16, True, True, False, 0.1, "auto", False), "sdpa"),  # training mode without grad: dropout in SDPA
    ((16, True, False, False, 0.1, "auto", False), "inplace"),  # eval: dropout inactive
    # autograd through a bias, dropout inactive: the custom function at every size
    ((1, True, True, True, 0.0, "auto", False), "biased_fused"),
    ((1024, True, False, True, 0.1, "auto", False), "biased_fused"),
    ((16, True, True, True, 0.0, "sdpa", False), "biased_fused"),
    # autograd otherwise (no bias, or dropout active): SDPA from 196 tokens, explicit below ("auto")
    ((195, False, True, True, 0.0, "auto", False), "explicit"),
    ((196, False, True, True, 0.0, "auto", False), "sdpa"),
    ((195, True, True, True, 0.1, "auto", False), "explicit"),
    ((196, True, True, True, 0.1, "auto", False), "sdpa"),
    ((16, True, True, True, 0.1, "sdpa", False), "sdpa"),
]


@pytest.mark.parametrize("args, kernel", KERNEL_TABLE)
def test_choose_kernel_table(args: tuple, kernel: str) -> None:
    """The one kernel choice, against the measured thresholds (attention.py's comment)."""
    assert attention._choose_kernel(*args) == kernel
    assert (attention.SDPA_MIN_TOKENS_EVAL, attention.SDPA_MIN_TOKENS_TRAIN) == (256, 196)


class _Calls:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *args):
        self.n += 1
        return self.fn(*args)


@pytest.mark.parametrize("n_side", [2, 7, 16])
def test_auto_training_with_bias_takes_the_fused_function(monkeypatch, n_side: int) -> None:
    calls = _Calls(kernels.BiasedAttentionFunction.apply)
    monkeypatch.setattr(kernels.BiasedAttentionFunction, "apply", calls)
    m = make_mha({"window_size": (n_side, n_side)}, "auto").train()
    m(torch.randn(2, n_side * n_side, 8, dtype=torch.float64)).sum().backward()
    assert calls.n == 1
    assert m.relative_position_bias.relative_position_bias_table.grad is not None


def test_dropout_in_training_never_takes_the_fused_function(monkeypatch) -> None:
    calls = _Calls(kernels.BiasedAttentionFunction.apply)
    monkeypatch.setattr(kernels.BiasedAttentionFunction, "apply", calls)
    for impl in ("auto", "sdpa"):
        m = MultiHeadAttention(8, 2, dropout=0.1, use_relative_position=True,
                               rpb_kwargs={"window_size": (4, 4)}, attn_impl=impl).train()
        m(torch.randn(2, 16, 8)).sum().backward()
        m.eval()  # eval: dropout inactive, but no autograd either
        with torch.no_grad():
            m(torch.randn(2, 16, 8))
    assert calls.n == 0


class _RecordOps(TorchDispatchMode):
    """Records every aten op and the number of elements of each tensor it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        numel = max((t.numel() for t in outs if isinstance(t, torch.Tensor)), default=0)
        self.ops.append((str(func), numel))
        return out


@pytest.mark.parametrize("n_side", [16, 32])
def test_eval_fused_path_materializes_no_weights(n_side: int) -> None:
    """Eval with a cached bias: one SDPA kernel, and no op returns B*H*N*N numbers (no weights)."""
    B, H, N = 2, 2, n_side * n_side
    m = MultiHeadAttention(8, H, use_relative_position=True, rpb_kwargs={"window_size": (n_side, n_side)}).eval()
    x = torch.randn(B, N, 8)
    with torch.no_grad():
        m(x)  # fills the bias cache
        with _RecordOps() as rec:
            m(x)
    names = [name for name, _ in rec.ops]
    assert any("scaled_dot_product" in name for name in names), names
    assert not any("softmax" in name or "index_select" in name for name in names), names
    assert max(numel for _, numel in rec.ops) < B * H * N * N


def test_sdpa_gets_a_4d_mask(monkeypatch) -> None:
    """A 3D mask sends SDPA's CPU kernel to a slower path; the module always passes 4D."""
    seen = []
    real = kernels.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention", spy)
    m = MultiHeadAttention(8, 2, use_relative_position=True, rpb_kwargs={"window_size": (16, 16)}).eval()
    with torch.no_grad():
        m(torch.randn(2, 256, 8))
    assert len(seen) == 1 and seen[0].shape == (1, 2, 256, 256)
    # attn_impl="sdpa" calls SDPA at every size; "auto" computes in place below the threshold.
    for impl, calls in (("sdpa", 1), ("auto", 0)):
        seen.clear()
        m = MultiHeadAttention(8, 2, use_relative_position=True, rpb_kwargs={"window_size": (3, 3)},
                               attn_impl=impl).eval()
        with torch.no_grad():
            m(torch.randn(2, 9, 8))
        assert len(seen) == calls, impl


# ---- the eval cache ------------------------------------------------------------------------


def fresh_bias(rpb: RelativePositionBias) -> torch.Tensor:
    """The bias gathered the Swin way from the current table, bypassing any cache."""
    table, index = rpb.relative_position_bias_table, rpb.relative_position_index
    n = index.shape[0]
    return table.detach()[index.view(-1)].view(n, n, -1).permute(2, 0, 1)


def make_rpb() -> RelativePositionBias:
    rpb = RelativePositionBias(num_heads=3, window_size=(3, 4))
    rpb.eval()
    return rpb


def test_cache_is_reused_while_the_table_is_unchanged() -> None:
    rpb = make_rpb()
    with torch.no_grad():
        first = rpb()
        assert rpb() is first
    torch.testing.assert_close(first, fresh_bias(rpb), rtol=0, atol=0)


def test_cache_follows_an_optimizer_step() -> None:
    rpb = make_rpb()
    with torch.no_grad():
        before = rpb().clone()
    opt = torch.optim.SGD(rpb.parameters(), lr=1.0)
    rpb.train()
    (rpb() ** 2).sum().backward()
    opt.step()
    rpb.eval()
    with torch.no_grad():
        after = rpb()
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, fresh_bias(rpb), rtol=0, atol=0)


def test_cache_follows_load_state_dict() -> None:
    rpb, other = make_rpb(), make_rpb()
    with torch.no_grad():
        other.relative_position_bias_table.normal_()
        rpb()
    rpb.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rpb(), fresh_bias(other), rtol=0, atol=0)


def test_cache_follows_dtype_changes_and_data_writes() -> None:
    rpb = make_rpb()
    with torch.no_grad():
        rpb()
    rpb.to(torch.float64)
    with torch.no_grad():
        b = rpb()
    assert b.dtype == torch.float64
    torch.testing.assert_close(b, fresh_bias(rpb), rtol=0, atol=0)
    rpb.relative_position_bias_table.data.add_(1.0)  # does not bump _version
    with torch.no_grad():
        torch.testing.assert_close(rpb(), fresh_bias(rpb), rtol=0, atol=0)


def test_module_eval_output_follows_the_table() -> None:
    """End to end: eval outputs after a weight update equal a freshly built module's."""
    m = make_mha({"window_size": (4, 4)}, "auto").eval()
    x = torch.randn(2, 16, 8, dtype=torch.float64)
    with torch.no_grad():
        m(x)
        m.relative_position_bias.relative_position_bias_table.mul_(-2.0)
        got = m(x)
    clone = copy.deepcopy(m)
    clone.attn_impl = "explicit"
    with torch.no_grad():
        torch.testing.assert_close(got, clone(x), **TOL)


def test_training_never_uses_the_cache() -> None:
    rpb = make_rpb()
    with torch.no_grad():
        cached = rpb()
    rpb.train()
    b = rpb()
    assert b is not cached and b.requires_grad


def test_invalidate_cache_rebuilds_the_bias() -> None:
    rpb = make_rpb()
    with torch.no_grad():
        first = rpb()
        rpb.invalidate_cache()
        second = rpb()
        assert second is not first and rpb() is second
    torch.testing.assert_close(second, fresh_bias(rpb), rtol=0, atol=0)
