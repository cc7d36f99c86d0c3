"""Attention against a float64 reference, the fused path against the explicit one, and the maps."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from relpos import (
    MultiHeadAttention,
    ScaledDotProductAttention,
    VisionTransformer,
    collect_attention_maps,
    relative_position_bias_disabled,
)
from relpos.relative_position import RelativePositionBias


def reference_attention(q, k, v, bias=None, scale=None):
    """softmax(q k^T * scale + bias) v in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    if bias is not None:
        logits = logits + bias.double()
    w = torch.exp(logits - logits.amax(-1, keepdim=True))
    w = w / w.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bhmd->bhnd", w, v), w


def reference_mha(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The timm/Swin forward, written out, in float64."""
    B, N, C = x.shape
    H, D = m.num_heads, m.head_dim
    qkv = x.double() @ m.qkv.weight.double().T + m.qkv.bias.double()
    q, k, v = qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    bias = None
    if m.relative_position_bias is not None:
        rpb = m.relative_position_bias
        table, index = rpb.relative_position_bias_table, rpb.relative_position_index
        bias = table[index.view(-1)].view(N, N, H).permute(2, 0, 1)
    out, _ = reference_attention(q, k, v, bias)
    out = out.transpose(1, 2).reshape(B, N, C)
    return out @ m.proj.weight.double().T + m.proj.bias.double()


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("need_weights", [True, False])
def test_sdpa_module_matches_float64(with_bias: bool, need_weights: bool) -> None:
    q, k, v = torch.randn(3, 2, 3, 10, 8).unbind(0)
    bias = torch.randn(3, 10, 10) if with_bias else None
    out, attn = ScaledDotProductAttention()(q, k, v, bias, need_weights=need_weights)
    ref_out, ref_w = reference_attention(q, k, v, bias)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    if need_weights:
        assert attn.shape == (2, 3, 10, 10)
        torch.testing.assert_close(attn.double(), ref_w, rtol=1e-5, atol=1e-6)
    else:
        assert attn is None


def test_scale_false_and_float() -> None:
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    out, _ = ScaledDotProductAttention(scale=False)(q, k, v)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, scale=1.0)[0])
    out, _ = ScaledDotProductAttention(scale=0.3)(q, k, v)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, scale=0.3)[0])


@pytest.mark.parametrize("impl", ["explicit", "sdpa", "auto"])
@pytest.mark.parametrize("window", [(2, 3), (7, 7), (15, 14)])
@pytest.mark.parametrize("train", [False, True])
def test_mha_matches_reference_on_every_path(impl: str, window, train: bool) -> None:
    n = window[0] * window[1]
    m = MultiHeadAttention(
        32, 4, use_relative_position=True, rpb_kwargs={"window_size": window}, attn_impl=impl
    )
    with torch.no_grad():
        m.relative_position_bias.relative_position_bias_table.normal_(0, 1.0)
    m.train(train)
    x = torch.randn(2, n, 32)
    with torch.set_grad_enabled(train):
        out = m(x)
    torch.testing.assert_close(out.double(), reference_mha(m, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_side", [7, 15])
def test_fused_and_explicit_gradients_agree(n_side: int) -> None:
    torch.manual_seed(1)
    a = MultiHeadAttention(16, 2, use_relative_position=True, rpb_kwargs={"window_size": (n_side, n_side)},
                           attn_impl="explicit")
    b = MultiHeadAttention(16, 2, use_relative_position=True, rpb_kwargs={"window_size": (n_side, n_side)},
                           attn_impl="sdpa")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, n_side * n_side, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (a(xa) ** 2).sum().backward()
    (b(xb) ** 2).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    ga = a.relative_position_bias.relative_position_bias_table.grad
    gb = b.relative_position_bias.relative_position_bias_table.grad
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_mha_attributes_and_state_dict_keys() -> None:
    m = MultiHeadAttention(
        embed_dim=96, num_heads=4, use_relative_position=True,
        rpb_kwargs={"num_heads": 4, "window_size": (7, 7), "bias_type": "2d"},
    )
    assert (m.embed_dim, m.num_heads, m.head_dim) == (96, 4, 24)
    assert isinstance(m.attention, ScaledDotProductAttention)
    assert m.qkv.weight.shape == (288, 96) and m.proj.weight.shape == (96, 96)
    assert sorted(m.state_dict()) == [
        "proj.bias", "proj.weight", "qkv.bias", "qkv.weight",
        "relative_position_bias.relative_position_bias_table",
    ]
    assert m(torch.randn(2, 49, 96)).shape == (2, 49, 96)
    assert MultiHeadAttention(96, 4).relative_position_bias is None


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(embed_dim=96, num_heads=5), ValueError, "divisible"),
        (dict(embed_dim=0, num_heads=1), ValueError, "embed_dim"),
        (dict(embed_dim=96, num_heads=4, dropout=1.5), ValueError, "dropout"),
        (dict(embed_dim=96, num_heads=4, use_relative_position=True,
              rpb_kwargs={"num_heads": 8, "window_size": (7, 7)}), ValueError, "num_heads"),
        (dict(embed_dim=96, num_heads=4, use_relative_position=True), ValueError, "window_size"),
        (dict(embed_dim=96, num_heads=4, use_relative_position="yes"), TypeError, "use_relative_position"),
        (dict(embed_dim=96, num_heads=4, rpb_kwargs={"window_size": (7, 7)}), ValueError, "use_relative_position"),
        (dict(embed_dim=96, num_heads=4, attn_impl="flash"), ValueError, "attn_impl"),
    ],
)
def test_mha_bad_arguments(kwargs: dict, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        MultiHeadAttention(**kwargs)


def test_forward_shape_errors_are_clear() -> None:
    m = MultiHeadAttention(32, 4, use_relative_position=True, rpb_kwargs={"window_size": (3, 3)})
    with pytest.raises(ValueError, match="9"):
        m(torch.randn(1, 10, 32))  # 10 tokens, bias covers 9
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(1, 9, 31))
    sdpa = ScaledDotProductAttention()
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="head dim"):
        sdpa(q, torch.randn(1, 2, 4, 7), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="key and value"):
        sdpa(q, q, torch.randn(1, 2, 5, 8))
    with pytest.raises(ValueError, match="relative_position_bias"):
        sdpa(q, q, q, torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="query"):
        sdpa(torch.randn(2, 4, 8), q, q)


def test_collect_attention_maps_leaves_no_state_behind() -> None:
    model = VisionTransformer(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=32,
                              depth=3, num_heads=2, use_relative_position=True)
    model.train()
    hooks_before = [len(m._forward_hooks) for m in model.modules()]
    x = torch.randn(2, 1, 16, 16)
    maps = collect_attention_maps(model, x)
    assert len(maps) == 3 and all(a.shape == (2, 2, 16, 16) for a in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 16))
    assert model.training
    assert [len(m._forward_hooks) for m in model.modules()] == hooks_before
    assert not any(getattr(m, "_force_weights", False) for m in model.modules())
    # The first layer's maps equal softmax(qk^T*scale + bias) computed by hand.
    model.eval()
    with torch.no_grad():
        blk = model.blocks[0]
        tokens = model.patch_embed(x)
        ref = reference_mha_weights(blk.attn, blk.norm1(tokens))
    torch.testing.assert_close(maps[0].double(), ref, rtol=1e-4, atol=1e-6)


def reference_mha_weights(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    B, N, _ = x.shape
    qkv = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    bias = m.relative_position_bias() if m.relative_position_bias is not None else None
    return reference_attention(qkv[0], qkv[1], qkv[2], bias)[1]


def test_maps_without_bias_and_disabled_context() -> None:
    model = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=2, embed_dim=8,
                              depth=1, num_heads=2, use_relative_position=True).eval()
    with torch.no_grad():
        model.blocks[0].attn.relative_position_bias.relative_position_bias_table.normal_(0, 3.0)
    x = torch.randn(1, 1, 8, 8)
    with_b = collect_attention_maps(model, x)[0]
    without = collect_attention_maps(model, x, with_bias=False)[0]
    assert not torch.allclose(with_b, without)
    with torch.no_grad():
        zeroed = model.blocks[0].attn.relative_position_bias.relative_position_bias_table.zero_()
        del zeroed
    torch.testing.assert_close(collect_attention_maps(model, x)[0], without)


def _biases(model: torch.nn.Module) -> list[RelativePositionBias]:
    return [m for m in model.modules() if isinstance(m, RelativePositionBias)]


def test_bias_disabled_context_zeroes_the_bias_and_leaves_no_state() -> None:
    model = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=2, embed_dim=8,
                              depth=2, num_heads=2, use_relative_position=True).eval()
    with torch.no_grad():
        for rpb in _biases(model):
            rpb.relative_position_bias_table.normal_(0, 3.0)
    x = torch.randn(3, 1, 8, 8)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for rpb in _biases(zeroed):
            rpb.relative_position_bias_table.zero_()
        with_bias, expected = model(x), zeroed(x)
        state = [dict(vars(m)) for m in model.modules()]
        with relative_position_bias_disabled(model) as same:
            assert same is model
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
            with relative_position_bias_disabled(model):  # nested: still off, and still off after
                torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
            torch.testing.assert_close(zeroed(x), expected)  # another model: unaffected
        assert [set(vars(m)) for m in model.modules()] == [set(d) for d in state]  # no flag written
        torch.testing.assert_close(model(x), with_bias, rtol=0, atol=0)


def test_collect_requires_attention_layers() -> None:
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        collect_attention_maps(torch.nn.Linear(2, 2), torch.randn(1, 2))


# ---- context-local modes: many threads, one shared model --------------------------------------


def _shared_model() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=16,
                              depth=2, num_heads=2, use_relative_position=True).eval()
    with torch.no_grad():
        for rpb in _biases(model):
            rpb.relative_position_bias_table.normal_(0, 3.0)  # large: with and without differ clearly
    return model


def _expected(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Single-threaded references: maps and outputs with the bias and with it zeroed by hand."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for rpb in _biases(zeroed):
            rpb.relative_position_bias_table.zero_()
        return {
            "maps": [a.clone() for a in collect_attention_maps(model, x)],
            "maps_off": [a.clone() for a in collect_attention_maps(zeroed, x)],
            "out": model(x).clone(),
            "out_off": zeroed(x).clone(),
        }


def test_threads_sharing_a_model_get_their_own_maps_and_bias_switch() -> None:
    """8 threads at once on one model: maps with and without the bias, outputs with the bias on and
    switched off. Every result equals the single-threaded one (a switch written on the shared modules
    would leak into the other threads' forwards)."""
    model = _shared_model()
    inputs = [torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    expected = [_expected(model, x) for x in inputs]
    barrier, errors = threading.Barrier(8), []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for it in range(12):
                k = (t + it) % len(inputs)
                x, ref = inputs[k], expected[k]
                kind = (t + it) % 4
                if kind == 0:
                    got, want = collect_attention_maps(model, x), ref["maps"]
                elif kind == 1:
                    got, want = collect_attention_maps(model, x, with_bias=False), ref["maps_off"]
                elif kind == 2:
                    with torch.no_grad():
                        got, want = [model(x)], [ref["out"]]
                else:
                    with relative_position_bias_disabled(model), torch.no_grad():
                        got, want = [model(x)], [ref["out_off"]]
                assert len(got) == len(want)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"thread {t} it {it} "
                                               f"kind {kind}: {m}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[:3]
    assert not model.training


def test_a_switch_held_by_one_thread_never_reaches_another() -> None:
    """Deterministic interleaving: thread A holds the bias-off switch (and a map request) open while
    thread B runs forwards; B sees the bias, A does not, and neither sees the other's map request."""
    model = _shared_model()
    x = torch.randn(1, 1, 16, 16)
    ref = _expected(model, x)
    a_inside, b_done, results = threading.Event(), threading.Event(), {}

    def thread_a() -> None:
        with relative_position_bias_disabled(model), torch.no_grad():
            a_inside.set()
            b_done.wait(60)
            results["a_out"] = model(x)
            results["a_maps"] = collect_attention_maps(model, x)  # bias still off inside the block

    def thread_b() -> None:
        a_inside.wait(60)
        with torch.no_grad():
            results["b_out"] = model(x)
        results["b_maps"] = collect_attention_maps(model, x)
        b_done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    torch.testing.assert_close(results["b_out"], ref["out"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["a_out"], ref["out_off"], rtol=1e-5, atol=1e-6)
    for got, want in zip(results["b_maps"], ref["maps"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(results["a_maps"], ref["maps_off"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref["out"], ref["out_off"])  # the test can tell the two apart
