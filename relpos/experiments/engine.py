"""The epoch engine: ``train_epoch``, ``evaluate`` and ``accuracy`` (DeiT's ``engine.py`` split),
with the optimization recipe they run under (AdamW groups, warm-up + cosine schedule).

Shape legend: ``B`` batch, ``C`` channels, ``H, W`` image size, ``K`` classes.

These functions know nothing about run directories, ranks or checkpoints: :func:`relpos.experiments.
train.fit` orchestrates them (and re-exports ``train_epoch`` / ``evaluate``, the seed's names).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from relpos.diagnostics import bias_diagnostics
from relpos.relative_position import RelativePositionBias

__all__ = [
    "DIAGNOSTIC_IMAGES",
    "accuracy",
    "build_optimizer",
    "current_lr",
    "diagnostics_summary",
    "evaluate",
    "lr_at_step",
    "train_epoch",
]

#: Validation images fed to the per-epoch bias diagnostics.
DIAGNOSTIC_IMAGES = 64

logger = logging.getLogger("relpos.train")


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Top-1 hits of ``logits (B, K)`` against ``labels (B,)``."""
    return int((logits.detach().argmax(dim=-1) == labels).sum())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits (B, K)`` against ``labels (B,)``, a fraction in [0, 1]."""
    return _hits(logits, labels) / labels.shape[0] if labels.shape[0] else 0.0


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def lr_at_step(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases, norms, position embeddings, bias tables and learned rotary frequencies
    # (DeiT/timm practice; RoPE-ViT's no_weight_decay lists "freqs").
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim <= 1 or "pos_embed" in name or "relative_position" in name or "cls_token" in name
                or "rope." in name)
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, train_cfg: Mapping[str, Any], total_steps: int, warmup_steps: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases, norms, embeddings, bias tables) and its per-step LR schedule.

    ``train_cfg`` is a resolved config's ``train`` section (``lr``, ``min_lr``, ``weight_decay``).
    """
    # The fused AdamW kernel made the optimizer step ~4x faster on this CPU (benchmarks/vit_bench.py).
    optimizer = torch.optim.AdamW(
        _param_groups(model, train_cfg["weight_decay"]), lr=train_cfg["lr"],
        weight_decay=train_cfg["weight_decay"], fused=True if device.type in ("cpu", "cuda") else None,
    )
    base_lr, min_lr = train_cfg["lr"], train_cfg["min_lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at_step(s, total_steps, warmup_steps, base_lr, min_lr) / base_lr
    )
    return optimizer, scheduler


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Meter:
    """Running ``loss_sum``, ``correct`` and ``samples`` of a pass; ``result`` is its summary."""

    def __init__(self, totals: Mapping[str, Any] | None = None) -> None:
        totals = totals or {}
        self.loss_sum = float(totals.get("loss_sum", 0.0))
        self.correct = int(totals.get("correct", 0))
        self.samples = int(totals.get("samples", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
        """Count one batch (``loss`` its mean); returns its ``(loss, correct, samples)``."""
        n = labels.shape[0]
        batch_loss, batch_correct = float(loss.detach()), _hits(logits, labels)
        self.loss_sum += batch_loss * n
        self.correct += batch_correct
        self.samples += n
        return batch_loss, batch_correct, n

    def result(self, **extra: Any) -> dict:
        """``{"loss", "accuracy", "samples", "loss_sum", "correct", **extra}`` (means over the samples)."""
        return {
            "loss": self.loss_sum / self.samples if self.samples else float("nan"),
            "accuracy": self.correct / self.samples if self.samples else 0.0,
            "samples": self.samples,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            **extra,
        }


def train_epoch(
    model: nn.Module,
    dataloader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    epoch: int,
    *,
    scheduler: Any = None,
    progress: Callable[[dict], None] | None = None,
    grad_clip: float = 0.0,
    amp: bool = False,
    should_stop: Callable[[], bool] | None = None,
    totals: dict | None = None,
) -> dict:
    """Train ``model`` for one pass over ``dataloader``.

    Args:
        model: the model (put in train mode here).
        dataloader: yields ``(images (B, C, H, W), labels (B,))``.
        criterion: loss on ``(logits (B, K), labels (B,))``, e.g. ``nn.CrossEntropyLoss``.
        optimizer: stepped once per batch.
        device: where the batches go.
        epoch: epoch number, passed on to ``progress``.
        scheduler: LR scheduler stepped after every optimizer step, or None.
        progress: called after every step with ``{"epoch", "batch", "batches", "loss", "accuracy",
            "lr", "samples"}`` (loss/accuracy of that batch); it must not raise.
        grad_clip: max global gradient norm (0 = no clipping).
        amp: bf16 autocast (CUDA only; ignored elsewhere).
        should_stop: checked after every step; True ends the epoch early (``"stopped": True``).
        totals: running ``{"loss_sum", "correct", "samples"}`` to continue (a resumed epoch).

    Returns:
        ``{"loss", "accuracy", "steps", "samples", "loss_sum", "correct", "seconds", "stopped"}``:
        mean loss and accuracy (a fraction in [0, 1]) over the samples seen, ``steps`` taken here.
    """
    device = torch.device(device)
    model.train()
    meter = _Meter(totals)
    steps, stopped, start = 0, False, time.perf_counter()
    batches = len(dataloader)
    for images, labels in dataloader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)  # (B, K)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip and grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        lr = current_lr(optimizer)
        if scheduler is not None:
            scheduler.step()
        steps += 1
        batch_loss, batch_correct, n = meter.add(loss, logits, labels)
        if progress is not None:
            progress({
                "epoch": epoch, "batch": steps, "batches": batches, "loss": batch_loss,
                "accuracy": batch_correct / n, "lr": lr, "samples": n,
            })
        if should_stop is not None and should_stop():
            stopped = True
            break
    return meter.result(steps=steps, seconds=time.perf_counter() - start, stopped=stopped)


def evaluate(
    model: nn.Module,
    dataloader: DataLoader,
    criterion: nn.Module,
    device: torch.device | str,
    *,
    amp: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Evaluate ``model`` on ``dataloader`` without gradients (eval mode; the mode is restored after).

    Args:
        should_stop: checked before every batch; True ends the pass early, so a cancel never waits
            for a long evaluation (``fit`` then saves ``last.pt``; the evaluation runs on resume).

    Returns:
        ``{"loss", "accuracy", "samples", "loss_sum", "correct"}`` over the samples seen; accuracy is
        a fraction in [0, 1]. With ``should_stop``, also ``"stopped"`` (True when it ended the pass).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meter = _Meter()
    stopped = False
    try:
        with torch.no_grad():
            for images, labels in dataloader:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with _autocast(device, amp):
                    logits = model(images)  # (B, K)
                    loss = criterion(logits.float(), labels)
                meter.add(loss, logits, labels)
    finally:
        model.train(was_training)
    return meter.result(**({"stopped": stopped} if should_stop is not None else {}))


def diagnostics_summary(model: nn.Module, images: torch.Tensor | None, device: torch.device) -> dict:
    """Bias diagnostics for an epoch line of metrics.jsonl (``diag/*`` keys; empty without a bias).

    Two forwards in eval mode on a fixed batch ``images (B, C, H, W)``; consumes no random numbers,
    so resume stays exact. A diagnostic must never end a run: a failure is logged and skipped.
    """
    if images is None or not any(isinstance(m, RelativePositionBias) for m in model.modules()):
        return {}
    try:
        with torch.no_grad():
            return bias_diagnostics(model, images.to(device))["summary"]
    except Exception as exc:  # noqa: BLE001
        logger.warning("bias diagnostics skipped: %s", exc)
        return {}
