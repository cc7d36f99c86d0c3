"""Training: ``train_epoch`` / ``evaluate`` (the seed's functions), ``fit`` (a whole run), the CLI.

Command line::

    python -m relpos.experiments.train --config configs/default.yaml \\
        [--run-dir DIR | --runs-root checkpoints] [--resume] [--set train.epochs=5 ...]
    torchrun --nproc_per_node=2 -m relpos.experiments.train --config configs/default.yaml

A run writes into its run directory (see :mod:`relpos.experiments.rundir`): ``config.yaml``
(resolved), ``status.json`` (queued -> running -> done | failed | cancelled), ``metrics.jsonl``
(``"kind": "step"`` lines every ``train.log_every`` steps and ``"kind": "epoch"`` lines),
``train.log``, ``last.pt`` (end of every epoch, and on cancel) and ``best.pt`` (best eval accuracy).

Reproducibility: the training order of epoch ``e`` is a permutation drawn from ``seed + e``
(a seeded ``DistributedSampler``, also with one process); the DataLoader has its own generator, so
the global RNG only feeds dropout, and its state is saved in every checkpoint. The learning rate is
a function of the step (linear warm-up, then cosine to ``min_lr``). So ``--resume`` from
``last.pt``, even one written mid-epoch by a cancel, ends with the same weights on CPU as a run
that was never interrupted.

Signals: the first SIGTERM / SIGINT finishes the current step, saves ``last.pt`` and ends with
state ``cancelled`` (exit 0 for SIGTERM, 130 for SIGINT); a second SIGINT stops at once.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set): DistributedDataParallel (gloo on CPU, NCCL on
CUDA), each rank takes its shard of the same seeded permutation, metrics are summed across ranks,
and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from relpos.data.build import build_dataset
from relpos.diagnostics import bias_diagnostics
from relpos.experiments.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    unwrap_model,
)
from relpos.experiments.config import ConfigError, apply_overrides, build_model, resolve_config
from relpos.experiments.config_utils import load_config, save_config
from relpos.relative_position import RelativePositionBias
from relpos.experiments.rundir import (
    BEST_CKPT,
    CONFIG_FILE,
    LAST_CKPT,
    LOG_FILE,
    append_metrics,
    read_status,
    update_status,
)

__all__ = [
    "ResumableSampler",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "lr_at_step",
    "main",
    "resolve_device",
    "save_checkpoint",
    "train_epoch",
]

#: Tests only: when set to a folder, every rank writes ``weights-rank<r>.sha256`` there at the end.
WEIGHT_HASH_ENV = "RELPOS_TEST_WEIGHT_HASH_DIR"

logger = logging.getLogger("relpos.train")


# ----------------------------------------------------------------------------- building blocks


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device = 'cuda' is not allowed: no CUDA device here; use auto or cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError("train.device = 'mps' is not allowed: no MPS device here; use auto or cpu")
        return torch.device("mps")
    if name != "cpu":
        raise ConfigError(f"train.device = {name!r} is not allowed: one of auto, cpu, cuda, mps")
    return torch.device("cpu")


def lr_at_step(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (permutation seeded by ``seed + epoch``) that can start mid-epoch.

    With ``num_replicas=1`` it is a plain seeded shuffle; ``set_start_index(k)`` skips the first
    ``k`` indices of this rank's share (so a resumed epoch continues where the saved one stopped).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        self.start_index = max(0, min(int(start_index), self.num_samples))

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding (exact sums for evaluation)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker init: leave SIGTERM/SIGINT to the main process, which stops cleanly.

    The app stops a run by signalling its whole process group; a worker that died of it would turn
    a clean cancel into a failed run.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


# ----------------------------------------------------------------------------- the seed functions


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
    loss_sum = float((totals or {}).get("loss_sum", 0.0))
    correct = int((totals or {}).get("correct", 0))
    samples = int((totals or {}).get("samples", 0))
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
        lr = _current_lr(optimizer)
        if scheduler is not None:
            scheduler.step()
        steps += 1
        n = labels.shape[0]
        batch_loss = float(loss.detach())
        batch_correct = int((logits.detach().argmax(dim=-1) == labels).sum())
        loss_sum += batch_loss * n
        correct += batch_correct
        samples += n
        if progress is not None:
            progress({
                "epoch": epoch, "batch": steps, "batches": batches, "loss": batch_loss,
                "accuracy": batch_correct / n, "lr": lr, "samples": n,
            })
        if should_stop is not None and should_stop():
            stopped = True
            break
    return {
        "loss": loss_sum / samples if samples else float("nan"),
        "accuracy": correct / samples if samples else 0.0,
        "steps": steps,
        "samples": samples,
        "loss_sum": loss_sum,
        "correct": correct,
        "seconds": time.perf_counter() - start,
        "stopped": stopped,
    }


def evaluate(
    model: nn.Module, dataloader: DataLoader, criterion: nn.Module, device: torch.device | str, *, amp: bool = False
) -> dict:
    """Evaluate ``model`` on ``dataloader`` without gradients (eval mode; the mode is restored after).

    Returns:
        ``{"loss", "accuracy", "samples", "loss_sum", "correct"}``; accuracy is a fraction in [0, 1].
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, samples = 0.0, 0, 0
    try:
        with torch.no_grad():
            for images, labels in dataloader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with _autocast(device, amp):
                    logits = model(images)  # (B, K)
                    loss = criterion(logits.float(), labels)
                n = labels.shape[0]
                loss_sum += float(loss) * n
                correct += int((logits.argmax(dim=-1) == labels).sum())
                samples += n
    finally:
        model.train(was_training)
    return {
        "loss": loss_sum / samples if samples else float("nan"),
        "accuracy": correct / samples if samples else 0.0,
        "samples": samples,
        "loss_sum": loss_sum,
        "correct": correct,
    }


# ----------------------------------------------------------------------------- distributed helpers


class _Dist:
    """Rank, world size and the collectives ``fit`` needs (no-ops with one process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1 and "RANK" in os.environ
        self.owns_group = False

    def init(self, device_name: str) -> None:
        if not self.enabled or dist.is_initialized():
            return
        use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_str(self, value: str | None) -> str | None:
        if not self.enabled:
            return value
        obj = [value]
        dist.broadcast_object_list(obj, src=0)
        return obj[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- a whole run


def default_run_dir(name: str, runs_root: str | os.PathLike = "checkpoints") -> Path:
    """``<runs_root>/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... appended if it exists)."""
    base = Path(runs_root) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases, norms, position embeddings and bias tables (DeiT/timm practice).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or "pos_embed" in name or "relative_position" in name or "cls_token" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(unwrap_model(model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _setup_logging(run_dir: Path, to_stderr: bool) -> list[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handlers


class _StopFlag:
    """Set by SIGTERM/SIGINT (the first one); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, _frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


DIAGNOSTIC_IMAGES = 64


def _diagnostics_summary(model: nn.Module, images: torch.Tensor | None, device: torch.device) -> dict:
    """Bias diagnostics for an epoch line of metrics.jsonl (``diag/*`` keys; empty without a bias).

    Two forwards in eval mode on a fixed batch; consumes no random numbers, so resume stays exact.
    A diagnostic must never end a run: a failure is logged and skipped.
    """
    if images is None or not any(isinstance(m, RelativePositionBias) for m in model.modules()):
        return {}
    try:
        with torch.no_grad():
            return bias_diagnostics(model, images.to(device))["summary"]
    except Exception as exc:  # noqa: BLE001
        logger.warning("bias diagnostics skipped: %s", exc)
        return {}


def fit(
    cfg: dict,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    runs_root: str | os.PathLike = "checkpoints",
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = True,
    log_to_stderr: bool = True,
) -> dict:
    """Train the model ``cfg`` describes, writing everything into ``run_dir``.

    Args:
        cfg: a config (resolved here; a ConfigError is raised before anything is trained).
        run_dir: the run directory (default ``<runs_root>/<name>-<timestamp>``).
        resume: continue from ``run_dir/last.pt`` (start fresh, with a warning, when there is none).
        runs_root: parent of the default run directory.
        progress: called after every step with ``{"epoch", "epochs", "step", "total_steps", "loss",
            "lr", ...}`` (rank 0 only).
        should_stop: polled after every step; True stops like SIGTERM does (cancelled).
        handle_signals: install the SIGTERM/SIGINT handlers (main thread only).
        log_to_stderr: also print the log lines on stderr.

    Returns:
        The final ``status.json`` content (``state`` done or cancelled), plus ``run_dir`` and
        ``last_epoch`` (the last epoch record). Errors set state ``failed`` and re-raise.
    """
    cfg = resolve_config(cfg)
    dd = _Dist()
    dd.init(cfg["train"]["device"])
    stop = _StopFlag()
    if handle_signals:
        stop.install()
    handlers: list[logging.Handler] = []
    run_path: Path | None = None
    try:
        chosen = None
        if dd.is_main:
            chosen = str(Path(run_dir) if run_dir is not None else default_run_dir(cfg["name"], runs_root))
        run_path = Path(dd.broadcast_str(chosen))
        if dd.is_main:
            run_path.mkdir(parents=True, exist_ok=True)
            handlers = _setup_logging(run_path, log_to_stderr)
        try:
            return _fit(cfg, run_path, resume, dd, stop, should_stop, progress)
        except KeyboardInterrupt:
            if dd.is_main:
                logger.warning("interrupted (second Ctrl-C): stopping without a final checkpoint")
                update_status(run_path, state="cancelled", error="interrupted", pid=os.getpid())
            raise
        except BaseException as exc:
            if dd.is_main:
                logger.error("training failed:\n%s", traceback.format_exc())
                update_status(run_path, state="failed", error=f"{type(exc).__name__}: {exc}", pid=os.getpid())
            raise
    finally:
        stop.restore()
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        dd.close()


def _fit(
    cfg: dict,
    run_dir: Path,
    resume: bool,
    dd: _Dist,
    stop: _StopFlag,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[dict], None] | None,
) -> dict:
    t_cfg, seed = cfg["train"], cfg["seed"]
    device = resolve_device(t_cfg["device"], dd.local_rank)
    amp = t_cfg["amp"] and device.type == "cuda"
    last_path = run_dir / LAST_CKPT

    ckpt = None
    if resume:
        if last_path.is_file():
            ckpt = read_checkpoint(last_path)
        elif dd.is_main:
            logger.warning("--resume: %s does not exist; starting from scratch", last_path)
    if dd.is_main:
        prior = read_status(run_dir) or {}
        save_config(cfg, run_dir / CONFIG_FILE)
        update_status(
            run_dir,
            state="running",
            name=prior.get("name", cfg["name"]),
            pid=os.getpid(),
            error=None,
            started_at=prior.get("started_at") or time.time(),
            epochs=t_cfg["epochs"],
            device=str(device),
            world_size=dd.world,
        )
        logger.info("run %s: %s on %s (world size %d)", cfg["name"], run_dir, device, dd.world)

    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(seed + dd.rank)  # dropout stream: distinct per rank, reproducible
    train_ds, val_ds = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    # A fixed batch of validation images for the per-epoch bias diagnostics (rank 0 only).
    diag_images = (
        torch.stack([val_ds[i][0] for i in range(min(DIAGNOSTIC_IMAGES, len(val_ds)))]) if dd.is_main else None
    )
    sampler = ResumableSampler(train_ds, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=seed)
    pin = device.type == "cuda"
    loader_kwargs = {"num_workers": t_cfg["num_workers"], "pin_memory": pin}
    if t_cfg["num_workers"] > 0:
        loader_kwargs["worker_init_fn"] = _ignore_stop_signals
    train_loader = DataLoader(
        train_ds, batch_size=t_cfg["batch_size"], sampler=sampler,
        generator=torch.Generator().manual_seed(seed), **loader_kwargs,
    )
    val_loader = DataLoader(
        val_ds, batch_size=t_cfg["batch_size"], sampler=ShardSampler(len(val_ds), dd.world, dd.rank),
        generator=torch.Generator().manual_seed(seed), **loader_kwargs,
    )
    epochs, bs = t_cfg["epochs"], t_cfg["batch_size"]
    steps_per_epoch = math.ceil(sampler.num_samples / bs)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(t_cfg["warmup_epochs"] * steps_per_epoch)
    # The fused AdamW kernel made the optimizer step ~4x faster on this CPU (benchmarks/vit_bench.py).
    optimizer = torch.optim.AdamW(
        _param_groups(model, t_cfg["weight_decay"]), lr=t_cfg["lr"], weight_decay=t_cfg["weight_decay"],
        fused=True if device.type in ("cpu", "cuda") else None,
    )
    base_lr, min_lr = t_cfg["lr"], t_cfg["min_lr"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at_step(s, total_steps, warmup_steps, base_lr, min_lr) / base_lr
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=t_cfg["label_smoothing"])

    step, start_epoch, best, totals = 0, 0, -1.0, None
    if ckpt is not None:
        load_checkpoint(model, optimizer, last_path, scheduler=scheduler)
        step = int(ckpt["step"] or ckpt["epoch"] * steps_per_epoch)
        start_epoch = step // steps_per_epoch
        best = float(ckpt["extra"].get("best_accuracy", ckpt["metrics"].get("best_accuracy", -1.0)) or -1.0)
        totals = ckpt["extra"].get("partial_epoch")
        if ckpt["rng"]:
            from relpos.experiments.checkpoint import restore_rng_state

            restore_rng_state(ckpt["rng"])
        if dd.is_main:
            logger.info("resumed from %s at step %d (epoch %d)", last_path, step, start_epoch)
            saved = ckpt.get("config") or {}
            changed = [s for s in ("seed", "data", "model", "train") if s in saved and saved[s] != cfg[s]]
            if changed:
                logger.warning("the config differs from the checkpoint's in %s: the resumed run is not "
                               "the run that was interrupted", ", ".join(changed))
    if dd.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if dd.is_main:
        logger.info(
            "model %.3fM parameters; %d train / %d val samples; %d steps per epoch, %d epochs",
            n_params / 1e6, len(train_ds), len(val_ds), steps_per_epoch, epochs,
        )

    def stop_requested() -> bool:
        local = stop() or (should_stop is not None and should_stop())
        return dd.any(local, device)

    session_start, session_step0 = time.perf_counter(), step
    log_every = t_cfg["log_every"]
    window = {"loss_sum": 0.0, "correct": 0, "samples": 0, "t": time.perf_counter()}
    last_epoch_record: dict = {}
    status: dict = {}
    state = {"step": step}

    def eta() -> float | None:
        done = state["step"] - session_step0
        if done <= 0:
            return None
        return (time.perf_counter() - session_start) / done * (total_steps - state["step"])

    def on_step(info: dict, epoch: int) -> None:
        state["step"] += 1
        window["loss_sum"] += info["loss"] * info["samples"]
        window["correct"] += round(info["accuracy"] * info["samples"])
        window["samples"] += info["samples"]
        s = state["step"]
        if s % log_every == 0:
            ls, cs, ns = dd.sum([window["loss_sum"], window["correct"], window["samples"]], device)
            now = time.perf_counter()
            if dd.is_main:
                append_metrics(run_dir, {
                    "kind": "step", "step": s, "epoch": epoch + 1, "train_loss": ls / ns,
                    "train_accuracy": cs / ns, "lr": info["lr"], "seconds": now - session_start,
                    "images_per_second": ns / max(now - window["t"], 1e-9),
                })
                update_status(run_dir, step=s, total_steps=total_steps, epoch=epoch + 1, eta_seconds=eta())
            window.update(loss_sum=0.0, correct=0, samples=0, t=now)
        if progress is not None and dd.is_main:
            progress({**info, "epoch": epoch + 1, "epochs": epochs, "step": s, "total_steps": total_steps})

    if dd.is_main:
        update_status(run_dir, step=step, total_steps=total_steps, epoch=min(start_epoch + 1, epochs))
    cancelled = False
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        in_epoch = step - epoch * steps_per_epoch
        sampler.set_start_index(in_epoch * bs)
        t0 = time.perf_counter()
        result = train_epoch(
            model, train_loader, criterion, optimizer, device, epoch, scheduler=scheduler,
            progress=lambda info, e=epoch: on_step(info, e), grad_clip=t_cfg["grad_clip"], amp=amp,
            should_stop=stop_requested, totals=totals if in_epoch else None,
        )
        totals = None
        step = state["step"]
        if result["stopped"] and step < (epoch + 1) * steps_per_epoch:
            if dd.is_main:
                save_checkpoint(
                    model, optimizer, epoch, {"best_accuracy": best}, last_path, config=cfg,
                    scheduler=scheduler, step=step,
                    extra={"best_accuracy": best, "partial_epoch": {k: result[k] for k in ("loss_sum", "correct", "samples")}},
                )
            cancelled = True
            break
        tl, tc, tn = dd.sum([result["loss_sum"], result["correct"], result["samples"]], device)
        ev = evaluate(model, val_loader, criterion, device, amp=amp)
        el, ec, en = dd.sum([ev["loss_sum"], ev["correct"], ev["samples"]], device)
        seconds = time.perf_counter() - t0
        eval_acc = ec / en if en else 0.0
        improved = eval_acc > best
        best = max(best, eval_acc)
        record = {
            "kind": "epoch", "step": step, "epoch": epoch + 1, "train_loss": tl / tn, "train_accuracy": tc / tn,
            "eval_loss": el / en if en else None, "eval_accuracy": eval_acc, "lr": _current_lr(optimizer),
            "seconds": seconds, "images_per_second": result["samples"] * dd.world / max(result["seconds"], 1e-9),
            "best_accuracy": best,
        }
        last_epoch_record = record
        if dd.is_main:
            record.update(_diagnostics_summary(unwrap_model(model), diag_images, device))
            append_metrics(run_dir, record)
            metrics = {k: v for k, v in record.items() if k != "kind"}
            save_checkpoint(model, optimizer, epoch + 1, metrics, last_path, config=cfg, scheduler=scheduler,
                            step=step, extra={"best_accuracy": best})
            if improved:
                save_checkpoint(model, optimizer, epoch + 1, metrics, run_dir / BEST_CKPT, config=cfg,
                                scheduler=scheduler, step=step, extra={"best_accuracy": best})
            update_status(run_dir, epoch=epoch + 1, step=step, eta_seconds=eta(), best_accuracy=best,
                          eval_accuracy=eval_acc, eval_loss=record["eval_loss"])
            logger.info(
                "epoch %d/%d step %d: train loss %.4f acc %.4f | eval loss %.4f acc %.4f | lr %.2e | %.1fs",
                epoch + 1, epochs, step, record["train_loss"], record["train_accuracy"],
                record["eval_loss"] if en else float("nan"), eval_acc, record["lr"], seconds,
            )
        if stop_requested():
            cancelled = epoch + 1 < epochs
            break

    hash_dir = os.environ.get(WEIGHT_HASH_ENV)
    if hash_dir:
        Path(hash_dir).mkdir(parents=True, exist_ok=True)
        (Path(hash_dir) / f"weights-rank{dd.rank}.sha256").write_text(_weights_digest(model))
    if dd.is_main:
        final = "cancelled" if cancelled else "done"
        reason = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}.get(stop.signum, "stop requested")
        status = update_status(
            run_dir, state=final, step=step, eta_seconds=0.0 if final == "done" else None,
            error=None, best_accuracy=best if best >= 0 else None, finished_at=time.time(),
            stop_reason=reason if cancelled else None,
        )
        logger.info("%s at step %d/%d; best eval accuracy %.4f", final, step, total_steps, max(best, 0.0))
    return {**status, "run_dir": str(run_dir), "last_epoch": last_epoch_record, "signal": stop.signum}


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relpos-train",
        description="Train a relpos Vision Transformer from a YAML config (also under torchrun).",
    )
    p.add_argument("--config", help="YAML config (e.g. configs/default.yaml); with --resume, "
                   "defaults to the run directory's config.yaml")
    p.add_argument("--run-dir", help="run directory (default: <runs-root>/<name>-<timestamp>)")
    p.add_argument("--runs-root", default="checkpoints", help="parent of the default run directory")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def _tqdm_progress() -> tuple[Callable[[dict], None] | None, Callable[[], None]]:
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def on_step(info: dict) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=info["total_steps"], initial=info["step"] - 1, unit="step", dynamic_ncols=True)
        b = bar["bar"]
        b.update(1)
        b.set_postfix(epoch=f"{info['epoch']}/{info['epochs']}", loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}")

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return on_step, close


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (0 done or cancelled by SIGTERM, 130 SIGINT, 1 failed, 2 bad usage)."""
    args = _parser().parse_args(argv)
    if not args.config and not (args.resume and args.run_dir):
        _parser().error("--config is required (or --resume with --run-dir)")
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        path = args.config or (run_dir / CONFIG_FILE)
        cfg = resolve_config(apply_overrides(load_config(path), args.overrides))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"relpos-train: config error: {exc}", file=sys.stderr)
        if run_dir is not None and (read_status(run_dir) or {}).get("state") == "queued":
            update_status(run_dir, state="failed", error=f"config error: {exc}", pid=os.getpid())
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    if run_dir is not None and not args.resume and (run_dir / LAST_CKPT).exists():
        print(f"relpos-train: {run_dir} already holds {LAST_CKPT}; pass --resume to continue it "
              f"or choose another --run-dir", file=sys.stderr)
        return 2
    on_step, close_bar = _tqdm_progress()
    try:
        result = fit(cfg, run_dir, resume=args.resume, runs_root=args.runs_root, progress=on_step)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, CheckpointError) as exc:
        print(f"relpos-train: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - status.json and train.log hold the details
        print(f"relpos-train: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        close_bar()
    if result.get("state") == "cancelled" and result.get("signal") == signal.SIGINT:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
