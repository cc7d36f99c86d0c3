"""relpos.guards: memory estimates checked against hand counts and real tensors; the budget."""

from __future__ import annotations

import pytest
import torch

from relpos.guards import (
    BUDGET_ENV,
    MemoryEstimate,
    ResourceLimitError,
    check_bias_budget,
    check_budget,
    check_model_budget,
    estimate_attention_maps_for,
    estimate_attention_maps_memory,
    estimate_bias_memory,
    estimate_config_memory,
    estimate_memory,
    estimate_model_memory,
    format_bytes,
    memory_budget,
    memory_budget_bytes,
    set_memory_budget,
)
from relpos.models.transformer import VisionTransformer
from relpos.relative_position import RelativePositionBias

MB = 1024 * 1024
#: The ViT sizes estimate_model_memory needs (ViT-B/16 on ImageNet, the VisionTransformer defaults).
VIT_B = dict(img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
             mlp_ratio=4.0)


def test_bias_estimate_matches_the_tensors_it_counts():
    est = estimate_bias_memory(4, (5, 7), bias_type="2d")
    rpb = RelativePositionBias(4, (5, 7), bias_type="2d")
    table, index = rpb.relative_position_bias_table, rpb.relative_position_index
    bias = rpb()
    assert est.breakdown["table (T x H)"] == table.numel() * table.element_size() == 9 * 13 * 4 * 4
    assert est.breakdown["index (N x N)"] == index.numel() * index.element_size() == 35 * 35 * 8
    assert est.breakdown["bias (H x N x N)"] == bias.numel() * bias.element_size() == 4 * 35 * 35 * 4
    assert est.total == sum(est.breakdown.values())
    # 1d, 2d_cls, t5: N and T as the module says
    for kwargs in ({"seq_len": 9, "bias_type": "1d"}, {"window_size": (3, 4), "bias_type": "2d_cls"},
                   {"seq_len": 9, "bias_type": "t5", "num_buckets": 8}):
        est = estimate_bias_memory(3, **kwargs)
        rpb = RelativePositionBias(3, **kwargs)
        assert est.breakdown["table (T x H)"] == rpb.num_relative_positions * 3 * 4
        assert est.breakdown["index (N x N)"] == rpb.num_tokens**2 * 8


def test_the_issue_example_is_refused_with_estimate_and_limit():
    est = estimate_memory("bias", num_heads=16, window_size=(128, 128), bias_type="2d")
    n = 128 * 128
    assert est.breakdown["bias (H x N x N)"] == 16 * n * n * 4  # 16 GiB
    with memory_budget(2048):
        with pytest.raises(ResourceLimitError) as err:
            check_budget(est)
    msg = str(err.value)
    assert "2.0 GB" in msg and "GB" in msg.split("over the limit")[0] and BUDGET_ENV in msg
    assert isinstance(err.value, ValueError)


def test_model_estimate_counts_parameters_exactly():
    kwargs = dict(img_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=24, depth=2, num_heads=3,
                  mlp_ratio=2.0)
    for extra in ({}, {"use_relative_position": True}, {"class_token": True, "use_relative_position": True,
                                                         "rpb_kwargs": {"bias_type": "2d_cls"}}):
        model = VisionTransformer(**kwargs, **extra)
        n_params = sum(p.numel() for p in model.parameters())
        rpb_params = sum(p.numel() for m in model.relative_position_biases() for p in m[1].parameters())
        est = estimate_model_memory(**kwargs, **extra)
        assert est.breakdown["parameters"] == (n_params - rpb_params) * 4, extra
        if model.use_relative_position:  # one bias per block (depth 2), each as its module says
            one = model.relative_position_biases()[0][1]
            assert one.window_size == (4, 4)
            expected = estimate_bias_memory(3, one.window_size, bias_type=one.bias_type)
            assert est.breakdown["relative position biases"] == 2 * expected.total, extra
    train = estimate_model_memory(**kwargs, batch_size=8, training=True)
    infer = estimate_model_memory(**kwargs, batch_size=8)
    assert train.breakdown["optimizer state (AdamW)"] == 2 * train.breakdown["parameters"]
    assert train.breakdown["activations"] == 2 * infer.breakdown["activations"]  # depth 2: all layers kept


def test_attention_maps_estimates():
    est = estimate_attention_maps_memory(2, 3, 16, num_layers=4)
    assert est.total == 4 * 2 * 3 * 16 * 16 * 4
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=4, embed_dim=12, depth=2, num_heads=3)
    x = torch.zeros(5, 3, 16, 16)
    from relpos.attention import collect_attention_maps

    maps = collect_attention_maps(model, x)
    assert estimate_attention_maps_for(model, x).total == sum(m.numel() * m.element_size() for m in maps)
    assert estimate_attention_maps_for(model).total == 0  # unknown sizes: nothing refused


def test_config_estimate(tmp_path):
    from relpos.experiments.config import resolve_config
    from relpos.experiments.config_utils import load_config

    cfg = resolve_config(load_config("configs/tiny.yaml"))
    est = estimate_config_memory(cfg)
    assert 0 < est.total < 50 * MB and "gradients" in est.breakdown
    with pytest.raises(ValueError, match="resolved config"):
        estimate_config_memory({"data": {}})


def test_budget_env_override_and_context(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert memory_budget_bytes() == 2048 * MB
    monkeypatch.setenv(BUDGET_ENV, "10")
    assert memory_budget_bytes() == 10 * MB
    with memory_budget(1):
        assert memory_budget_bytes() == MB
        with pytest.raises(ResourceLimitError, match="1.0 MB"):
            check_budget(2 * MB, "two megabytes")
        assert check_budget(MB // 2).total == MB // 2
    assert memory_budget_bytes() == 10 * MB
    previous = set_memory_budget(3)
    try:
        assert previous is None and memory_budget_bytes() == 3 * MB
    finally:
        set_memory_budget(None)
    for bad in ("abc", "-5", "0", "nan", "inf"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=BUDGET_ENV):
            memory_budget_bytes()


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: estimate_bias_memory(0, (3, 3)), ValueError, "num_heads"),
        (lambda: estimate_bias_memory(2, None, bias_type="2d"), ValueError, "window_size"),
        (lambda: estimate_bias_memory(2, seq_len=None, bias_type="1d"), ValueError, "seq_len"),
        (lambda: estimate_bias_memory(2, (3, 3), bias_type="3d"), ValueError, "bias_type"),
        (lambda: estimate_bias_memory(2, "ab"), TypeError, "window_size"),
        (lambda: estimate_attention_maps_memory(1.5, 2, 3), TypeError, "batch_size"),
        (lambda: estimate_model_memory(**{**VIT_B, "embed_dim": -1}), ValueError, "embed_dim"),
        (lambda: estimate_model_memory(**{**VIT_B, "mlp_ratio": float("nan")}), ValueError, "mlp_ratio"),
        (lambda: estimate_model_memory(embed_dim=8), TypeError, r"missing \['img_size'"),
        (lambda: estimate_model_memory(**VIT_B, bias_type="2d"), TypeError, r"unknown \['bias_type'\]"),
        (lambda: estimate_memory("gpu"), ValueError, "kind"),
        (lambda: check_budget("1 GB"), TypeError, "estimate"),
        (lambda: check_budget(-1), ValueError, "estimate"),
        (lambda: set_memory_budget(0), ValueError, "mb"),
        (lambda: set_memory_budget("big"), TypeError, "mb"),
    ],
)
def test_bad_arguments(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_check_helpers():
    with memory_budget(1):
        assert check_bias_budget(2, (3, 3)).total == estimate_bias_memory(2, (3, 3)).total
        assert check_bias_budget(2, 9, "1d").total == estimate_bias_memory(2, seq_len=9, bias_type="1d").total
        with pytest.raises(ResourceLimitError, match="RelativePositionBias"):
            check_bias_budget(4, (64, 64))
        with pytest.raises(ResourceLimitError, match="VisionTransformer"):
            check_model_budget(**{**VIT_B, "embed_dim": 1024, "depth": 24, "num_heads": 16})


def test_format_and_sum():
    assert format_bytes(512) == "512 bytes" and format_bytes(1536) == "1.5 KB" and format_bytes(3 * MB) == "3.0 MB"
    a = MemoryEstimate("a", {"x": 1, "y": 2})
    b = MemoryEstimate("b", {"x": 10})
    assert (a + b).breakdown == {"x": 11, "y": 2} and int(a + b) == 13
    assert "x" in MemoryEstimate("c", {"x": 2 * MB, "y": 1}).describe(parts=1)


def test_step_parts_and_any_finite_mlp_ratio():
    small = dict(img_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=24, depth=3, num_heads=2,
                 mlp_ratio=2.0)
    est = estimate_model_memory(**small, batch_size=8, training=True)
    n, hidden = 16, 48
    assert est.breakdown["activations"] == 3 * 8 * n * (10 * 24 + 2 * hidden) * 4
    assert est.breakdown["attention logits and weights (L x B x H x N x N)"] == 3 * 2 * 8 * 2 * n * n * 4
    assert est.breakdown["input images"] == 8 * 3 * 16 * 16 * 4
    # any finite ratio is estimated (and refused by the budget), never a ValueError about its size
    huge = estimate_model_memory(**{**small, "mlp_ratio": 1e300})
    assert huge.total > 2**60 and "parameters" in huge.breakdown
    with pytest.raises(ResourceLimitError, match="VisionTransformer"):
        check_model_budget(**{**small, "mlp_ratio": 1e300})
    tiny = estimate_model_memory(**{**small, "mlp_ratio": 1e-6})  # as the model: at least one hidden unit
    model = VisionTransformer(**{**small, "mlp_ratio": 1e-6})
    assert tiny.breakdown["parameters"] == sum(p.numel() for p in model.parameters()) * 4
