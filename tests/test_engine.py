"""The epoch engine: train_epoch / evaluate against loops written by hand, accuracy, the recipe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from relpos import VisionTransformer
from relpos.experiments import engine, train
from relpos.experiments.engine import accuracy, build_optimizer, evaluate, lr_at_step, train_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy(n=24, bs=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 5, generator=g), torch.randint(3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=bs), x, y


def test_train_epoch_steps_and_reports_means():
    loader, x, y = _toy()
    model = nn.Linear(5, 3)
    ref = nn.Linear(5, 3)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    seen = []
    out = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 0, progress=seen.append)
    # reference: the same loop by hand
    losses, correct = [], 0
    for xb, yb in loader:
        logits = ref(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        correct += int((logits.argmax(1) == yb).sum())
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        losses.append(float(loss.detach()))
    assert out["steps"] == 3 and len(seen) == 3 and seen[-1]["batch"] == 3
    assert math.isclose(out["loss"], sum(losses) / 3, rel_tol=1e-6)
    assert math.isclose(out["accuracy"], correct / 24) and 0 <= out["accuracy"] <= 1
    assert out["samples"] == 24 and out["correct"] == correct
    assert math.isclose(out["loss_sum"], sum(losses) * 8, rel_tol=1e-6)
    assert set(out) == {"loss", "accuracy", "steps", "samples", "loss_sum", "correct", "seconds", "stopped"}
    assert torch.allclose(model.weight, ref.weight) and model.training
    stopped = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 1, should_stop=lambda: True)
    assert stopped["stopped"] and stopped["steps"] == 1


def test_train_epoch_continues_running_totals():
    """A resumed epoch adds its batches to the saved sums (the partial-epoch checkpoint)."""
    loader, _, _ = _toy()
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every pass sees the same weights
    fresh = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 0)
    totals = {"loss_sum": 6.0, "correct": 5, "samples": 10}
    out = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 0, totals=totals)
    assert out["samples"] == 34 and out["correct"] == fresh["correct"] + 5
    assert math.isclose(out["loss_sum"], fresh["loss_sum"] + 6.0, rel_tol=1e-6)
    assert math.isclose(out["loss"], out["loss_sum"] / 34) and out["steps"] == 3


def test_evaluate_matches_reference_without_gradients():
    loader, x, y = _toy()
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    model.train()
    out = evaluate(model, loader, nn.CrossEntropyLoss(), "cpu")
    with torch.no_grad():
        logits = model[0](x)  # eval mode: dropout off
    assert math.isclose(out["loss"], float(nn.functional.cross_entropy(logits, y)), rel_tol=1e-5)
    assert out["accuracy"] == int((logits.argmax(1) == y).sum()) / 24
    assert set(out) == {"loss", "accuracy", "samples", "loss_sum", "correct"}
    assert model[0].weight.grad is None and model.training  # no gradients; mode restored


def test_empty_loader_gives_nan_loss_and_zero_accuracy():
    empty = DataLoader(TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)), batch_size=4)
    out = evaluate(nn.Linear(5, 3), empty, nn.CrossEntropyLoss(), "cpu")
    assert math.isnan(out["loss"]) and out["accuracy"] == 0.0 and out["samples"] == 0


def test_accuracy_counts_top1_hits():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 3.0, 2.0]])
    labels = torch.tensor([1, 0, 0, 2])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(logits[:0], labels[:0]) == 0.0


def test_lr_schedule():
    lrs = [lr_at_step(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decays monotonically
    # cosine half-way: min + (max - min) / 2
    assert lr_at_step(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55)


def test_build_optimizer_groups_and_schedule():
    model = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=2, embed_dim=8, depth=1,
                              num_heads=2, use_relative_position=True)
    cfg = {"lr": 0.5, "min_lr": 0.05, "weight_decay": 0.1}
    opt, sched = build_optimizer(model, cfg, total_steps=20, warmup_steps=4, device=torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"blocks.0.attn.relative_position_bias."
                                                          "relative_position_bias_table"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    seen = []
    for _ in range(20):
        seen.append(engine.current_lr(opt))
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at_step(s, 20, 4, 0.5, 0.05) for s in range(20)])


def test_train_reexports_the_seed_names():
    from relpos.experiments import checkpoint

    assert train.train_epoch is engine.train_epoch and train.evaluate is engine.evaluate
    assert train.lr_at_step is engine.lr_at_step
    assert train.save_checkpoint is checkpoint.save_checkpoint
    assert train.load_checkpoint is checkpoint.load_checkpoint
