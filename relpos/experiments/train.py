"""Training: ``fit`` (a whole run) and the CLI; ``train_epoch`` / ``evaluate`` (the seed's names) re-exported.

Command line::

    python -m relpos.experiments.train --config configs/default.yaml \\
        [--run-dir DIR | --runs-root checkpoints] [--resume] [--set train.epochs=5 ...]
    python -m relpos.experiments.train --config configs/default.yaml --queue [--set ...]
    torchrun --nproc_per_node=2 -m relpos.experiments.train --config configs/default.yaml

A run writes into its run directory (see :mod:`relpos.experiments.rundir`; by default
``<runs-root>/<name>-<YYYYmmdd-HHMMSS>``): ``config.yaml`` (resolved), ``status.json`` (queued ->
running -> done | failed | cancelled), ``metrics.jsonl`` (``"kind": "step"`` lines every
``train.log_every`` steps and ``"kind": "epoch"`` lines), ``train.log``, ``last.pt`` (end of every
epoch, and on cancel) and ``best.pt`` (best eval accuracy).

Reproducibility: the training order of epoch ``e`` is a permutation drawn from ``seed + e``
(a seeded ``DistributedSampler``, also with one process); the DataLoader has its own generator, so
the global RNG only feeds dropout, and its state is saved in every checkpoint. The learning rate is
a function of the step (linear warm-up, then cosine to ``min_lr``). So ``--resume`` from
``last.pt``, even one written mid-epoch by a cancel, ends with the same weights on CPU as a run
that was never interrupted. With ``last.pt`` gone, ``--resume`` continues from ``best.pt`` (the last
epoch kept), else from scratch; ``best.pt`` is only ever replaced by an epoch that beats the accuracy
it records (a ``best.pt`` that cannot be read or records none stops the run: exit 2).

Before anything starts (no folder, no process) the config is resolved for training
(:func:`relpos.experiments.config.resolve_training_config`): a run whose estimated peak memory is
over the budget (``RELPOS_MEMORY_BUDGET_MB``) is refused with exit 2, naming the key that drives it.

``--queue`` trains in the background through the run queue the app uses
(:mod:`relpos.experiments.runqueue`: one limit, first in first out) and prints the run directory.
Every trainer's last act, on every exit path, is to start what waits in that queue; a started run
takes its torch threads from ``$RELPOS_THREADS`` (cores // limit, set by the queue).

Signals: the first SIGTERM / SIGINT finishes the current step (or evaluation batch), saves
``last.pt`` and ends with state ``cancelled`` (exit 0 for SIGTERM, 130 for SIGINT); a second SIGINT
stops at once. A cancel during an evaluation keeps the trained epoch; ``--resume`` evaluates it first.
A cancel that lands before the trainer's first status write stops it before it trains
(:func:`relpos.experiments.runqueue.begin_run`).

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set): DistributedDataParallel (gloo on CPU, NCCL on
CUDA), each rank takes its shard of the same seeded permutation, metrics are summed across ranks,
and only rank 0 writes files.

The pieces: :mod:`relpos.experiments.engine` (one epoch of training or evaluation, the optimizer
and LR schedule), :mod:`relpos.experiments.distributed` (device, ranks, loaders, stop signals),
:class:`relpos.experiments.rundir.RunLogger` (status and metrics lines),
:mod:`relpos.experiments.compile` (``train.compile``: the module the steps drive) and
:mod:`relpos.experiments.tensorboard` (``train.tensorboard``: ``metrics.jsonl`` mirrored into event
files under ``<run>/tensorboard/``). This file keeps ``fit``'s orchestration and the CLI together,
the seed's entry point, at about 540 lines (over the house 400: the resume rules, which check what
last.pt and best.pt record, sit beside the loop that writes them).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from relpos._limits import short_repr
from relpos.data.build import build_dataset
from relpos.experiments.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from relpos.experiments.compile import training_model
from relpos.experiments.config import ConfigError, apply_overrides, build_model, resolve_training_config
from relpos.experiments.config_utils import load_config, save_config
from relpos.experiments.distributed import ResumableSampler, _Dist, _StopFlag, rank_loaders, resolve_device
from relpos.experiments.engine import (
    DIAGNOSTIC_IMAGES,
    build_optimizer,
    current_lr,
    diagnostics_summary,
    evaluate,
    lr_at_step,
    train_epoch,
)
from relpos.experiments.rundir import (
    BEST_CKPT,
    CONFIG_FILE,
    LAST_CKPT,
    RunLogger,
    attach_run_log,
    detach_run_log,
    new_run_dir,
    read_status,
    update_status,
)
from relpos.experiments import runqueue
from relpos.experiments.tensorboard import TensorBoardMirror

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

logger = logging.getLogger("relpos.train")


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
        run_dir: the run directory (default: a new ``<runs_root>/<name>-<YYYYmmdd-HHMMSS>``).
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
    cfg = resolve_training_config(cfg)  # refused here (memory included) before any folder or process
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
            chosen = str(Path(run_dir) if run_dir is not None else new_run_dir(runs_root, cfg["name"]))
        run_path = Path(dd.broadcast_str(chosen))
        if dd.is_main:
            run_path.mkdir(parents=True, exist_ok=True)
            handlers = attach_run_log(logger, run_path, log_to_stderr)
        try:
            result = _fit(cfg, run_path, resume, dd, stop, should_stop, progress)
            # Every rank finishes before any tears the group down: a rank that destroyed its gloo group
            # while rank 0 still wrote the final status aborted ("terminate called without an active
            # exception", seen once in a full test run). Not on failure: a peer may never arrive.
            dd.barrier()
            return result
        except KeyboardInterrupt:
            if dd.is_main:
                logger.warning("interrupted (second Ctrl-C): stopping without a final checkpoint")
                update_status(run_path, state="cancelled", error="interrupted", pid=os.getpid())
            raise
        except (ConfigError, CheckpointError) as exc:  # refused before training: the message says it all
            if dd.is_main:
                logger.error("not trained: %s", exc)
                state = (read_status(run_path) or {}).get("state")
                if isinstance(state, str) and state in runqueue.ACTIVE_STATES:
                    update_status(run_path, state="failed", error=f"{type(exc).__name__}: {exc}", pid=os.getpid())
            raise
        except BaseException as exc:
            if dd.is_main:
                logger.error("training failed:\n%s", traceback.format_exc())
                update_status(run_path, state="failed", error=f"{type(exc).__name__}: {exc}", pid=os.getpid())
            raise
    finally:
        stop.restore()
        detach_run_log(logger, handlers)
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

    ckpt, resume_path = None, _resume_source(run_dir) if resume else None
    if resume_path is not None:
        ckpt = read_checkpoint(resume_path)
    if resume and dd.is_main and resume_path != last_path:
        logger.warning("--resume: %s does not exist; %s", last_path, "starting from scratch"
                       if resume_path is None else f"continuing from {resume_path.name} (epoch "
                       f"{ckpt['epoch']}), the last epoch kept")
    recorded_best = _recorded_best(run_dir)  # a better best.pt is never replaced by a worse epoch
    begun = True
    if dd.is_main:
        prior = read_status(run_dir) or {}
        begun = runqueue.begin_run(
            run_dir, resume=resume,
            state="running",
            name=prior.get("name", cfg["name"]) if isinstance(prior.get("name"), str) else cfg["name"],
            pid=os.getpid(),
            error=None,
            started_at=prior.get("started_at") if _is_time(prior.get("started_at")) else time.time(),
            epochs=t_cfg["epochs"],
            device=str(device),
            world_size=dd.world,
        ) is not None
        if begun:
            save_config(cfg, run_dir / CONFIG_FILE)
            logger.info("run %s: %s on %s (world size %d)", cfg["name"], run_dir, device, dd.world)
        else:
            logger.warning("run %s was cancelled before it started: not training", run_dir)
    if dd.broadcast_str("run" if begun else "stop") != "run":
        status = read_status(run_dir) or {}
        return {**status, "run_dir": str(run_dir), "last_epoch": {}, "signal": stop.signum}

    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(seed + dd.rank)  # dropout stream: distinct per rank, reproducible
    train_ds, val_ds = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    sampler, train_loader, val_loader = rank_loaders(
        train_ds, val_ds, batch_size=t_cfg["batch_size"], num_workers=t_cfg["num_workers"], seed=seed,
        world=dd.world, rank=dd.rank, device=device,
    )
    # A fixed batch of validation images for the per-epoch bias diagnostics (rank 0 only).
    n_diag = min(DIAGNOSTIC_IMAGES, len(val_ds))
    diag_images = torch.stack([val_ds[i][0] for i in range(n_diag)]) if dd.is_main else None
    epochs, bs = t_cfg["epochs"], t_cfg["batch_size"]
    steps_per_epoch = math.ceil(sampler.num_samples / bs)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(t_cfg["warmup_epochs"] * steps_per_epoch)
    optimizer, scheduler = build_optimizer(model, t_cfg, total_steps, warmup_steps, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=t_cfg["label_smoothing"])

    step, start_epoch, best, totals = 0, 0, recorded_best, None
    if ckpt is not None:
        step, start_epoch, saved_best, totals = _resume_point(ckpt, resume_path, steps_per_epoch)
        load_checkpoint(model, optimizer, resume_path, scheduler=scheduler)
        best = max(best, saved_best)
        if ckpt["rng"]:
            restore_rng_state(ckpt["rng"])
        if dd.is_main:
            logger.info("resumed from %s at step %d (epoch %d)", resume_path, step, start_epoch)
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
    save = functools.partial(save_checkpoint, model, optimizer, config=cfg, scheduler=scheduler)
    log = RunLogger(run_dir, step=step, total_steps=total_steps, log_every=t_cfg["log_every"],
                    write=dd.is_main, reduce=lambda values: dd.sum(values, device))
    mirror = TensorBoardMirror(run_dir) if t_cfg["tensorboard"] and dd.is_main else None  # metrics -> event files
    # train.compile: what train_epoch drives (evaluation, diagnostics and checkpoints use `model` itself)
    trained = training_model(model, t_cfg["compile"], total_steps - step, device, distributed=dd.enabled)

    def stop_requested() -> bool:
        local = stop() or (should_stop is not None and should_stop())
        return dd.any(local, device)

    def on_step(info: dict, epoch: int) -> None:  # epoch 0-based
        log.on_step(info, epoch + 1)
        if mirror is not None and log.step % t_cfg["log_every"] == 0:
            mirror.sync()
        if progress is not None and dd.is_main:
            progress({**info, "epoch": epoch + 1, "epochs": epochs, "step": log.step,
                      "total_steps": total_steps})

    log.status(step=step, total_steps=total_steps, epoch=min(start_epoch + 1, epochs))
    cancelled, last_epoch_record = False, {}
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        in_epoch = step - epoch * steps_per_epoch
        sampler.set_start_index(in_epoch * bs)
        t0 = time.perf_counter()
        result = train_epoch(
            trained, train_loader, criterion, optimizer, device, epoch, scheduler=scheduler,
            progress=lambda info, e=epoch: on_step(info, e), grad_clip=t_cfg["grad_clip"], amp=amp,
            should_stop=stop_requested, totals=totals if in_epoch else None,
        )
        resumed, totals = totals if in_epoch else None, None
        step = log.step
        if result["stopped"] and step < (epoch + 1) * steps_per_epoch:
            if dd.is_main:
                partial = {k: result[k] for k in ("loss_sum", "correct", "samples")}
                save(epoch, {"best_accuracy": best}, last_path, step=step,
                     extra={"best_accuracy": best, "partial_epoch": partial})
            cancelled = True
            break
        tl, tc, tn = dd.sum([result["loss_sum"], result["correct"], result["samples"]], device)
        # A signal stops the evaluation between batches (this rank's flag: evaluation has no collectives).
        ev = evaluate(model, val_loader, criterion, device, amp=amp, should_stop=stop)
        if dd.any(ev["stopped"], device):  # cancelled mid-evaluation: keep the epoch, evaluate it on resume
            if dd.is_main:
                partial = {k: result[k] for k in ("loss_sum", "correct", "samples")}
                save(epoch, {"best_accuracy": best}, last_path, step=step,
                     extra={"best_accuracy": best, "partial_epoch": partial, "eval_pending": True})
            cancelled = True
            break
        el, ec, en = dd.sum([ev["loss_sum"], ev["correct"], ev["samples"]], device)
        seconds = time.perf_counter() - t0
        eval_acc = ec / en if en else 0.0
        improved = eval_acc > best
        best = max(best, eval_acc)
        record = {
            "kind": "epoch", "step": step, "epoch": epoch + 1, "train_loss": tl / tn,
            "train_accuracy": tc / tn, "eval_loss": el / en if en else None, "eval_accuracy": eval_acc,
            "lr": current_lr(optimizer), "seconds": seconds,
            "images_per_second": (result["samples"] - (resumed or {}).get("samples", 0)) * dd.world
            / max(result["seconds"], 1e-9) if result["steps"] else None,
            "best_accuracy": best,
        }
        last_epoch_record = record
        if dd.is_main:
            record.update(diagnostics_summary(unwrap_model(model), diag_images, device))
            log.on_epoch(record)
            if mirror is not None:
                mirror.sync()
            metrics = {k: v for k, v in record.items() if k != "kind"}
            save(epoch + 1, metrics, last_path, step=step, extra={"best_accuracy": best})
            if improved:
                save(epoch + 1, metrics, run_dir / BEST_CKPT, step=step, extra={"best_accuracy": best})
            log.status(epoch=epoch + 1, step=step, eta_seconds=log.eta(), best_accuracy=best,
                       eval_accuracy=eval_acc, eval_loss=record["eval_loss"])
            logger.info(
                "epoch %d/%d step %d: train loss %.4f acc %.4f | eval loss %.4f acc %.4f | lr %.2e | %.1fs",
                epoch + 1, epochs, step, record["train_loss"], record["train_accuracy"],
                record["eval_loss"] if en else float("nan"), eval_acc, record["lr"], seconds,
            )
        if stop_requested():
            cancelled = epoch + 1 < epochs
            break

    dd.write_weight_digest(model)  # tests only (distributed.WEIGHT_HASH_ENV)
    status: dict = {}
    if dd.is_main:
        final = "cancelled" if cancelled else "done"
        status = log.status(
            state=final, step=step, eta_seconds=0.0 if final == "done" else None,
            error=None, best_accuracy=best if best >= 0 else None, finished_at=time.time(),
            stop_reason=stop.reason if cancelled else None,
        )
        logger.info("%s at step %d/%d; best eval accuracy %.4f", final, step, total_steps, max(best, 0.0))
    return {**status, "run_dir": str(run_dir), "last_epoch": last_epoch_record, "signal": stop.signum}


def _is_time(value: Any) -> bool:
    return _is_number(value) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _resume_point(ckpt: dict, path: Path, steps_per_epoch: int) -> tuple[int, int, float, dict | None]:
    """``(step, first epoch to run, best accuracy, partial-epoch totals)`` a checkpoint records, checked.

    An epoch whose evaluation a cancel interrupted (``eval_pending``) is run again from its end: no
    step, then its evaluation. Raises CheckpointError naming the file and the field that is wrong.
    """
    extra = ckpt["extra"] if isinstance(ckpt["extra"], dict) else {}
    metrics = ckpt["metrics"] if isinstance(ckpt["metrics"], dict) else {}
    step, epoch = ckpt["step"], ckpt["epoch"]
    if not step and _is_count(epoch):
        step = epoch * steps_per_epoch
    if not _is_count(step):
        raise CheckpointError(f"{path}: step = {short_repr(step, 60)} is not an optimizer step (an int >= 0)")
    pending = extra.get("eval_pending") is True and step > 0
    totals = extra.get("partial_epoch")
    if totals is not None and not (isinstance(totals, dict) and all(
            _is_number(totals.get(k)) and totals[k] >= 0 for k in ("loss_sum", "correct", "samples"))):
        raise CheckpointError(f"{path}: partial_epoch = {short_repr(totals, 120)} is not the running totals "
                              "of an epoch (loss_sum, correct, samples >= 0)")
    best = extra.get("best_accuracy", metrics.get("best_accuracy"))
    best = float(best) if _is_fraction(best) else -1.0
    return step, ((step - 1) if pending else step) // steps_per_epoch, best, totals


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _resume_source(run_dir: Path) -> Path | None:
    """``--resume``'s checkpoint: ``last.pt``, else ``best.pt`` (the last epoch kept), else None."""
    for name in (LAST_CKPT, BEST_CKPT):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def _recorded_best(run_dir: Path) -> float:
    """The eval accuracy ``best.pt`` records (-1.0 without one), so that a worse epoch never replaces it.

    Raises:
        CheckpointError: ``best.pt`` exists but cannot be read, or records no accuracy in [0, 1]
            (then nothing could tell whether an epoch beats it, so nothing may overwrite it).
    """
    path = run_dir / BEST_CKPT
    if not path.exists() and not path.is_symlink():
        return -1.0
    ckpt = read_checkpoint(path)
    extra = ckpt["extra"] if isinstance(ckpt["extra"], dict) else {}
    metrics = ckpt["metrics"] if isinstance(ckpt["metrics"], dict) else {}
    value = extra.get("best_accuracy", metrics.get("eval_accuracy"))
    if not _is_fraction(value):
        raise CheckpointError(
            f"{path} records no eval accuracy in [0, 1] (best_accuracy = {short_repr(value, 60)}), so no "
            "epoch could be known to beat it: move it away to train in this run directory")
    return float(value)


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relpos-train",
        description="Train a relpos Vision Transformer from a YAML config (also under torchrun).",
    )
    p.add_argument("--config", help="YAML config (e.g. configs/default.yaml); with --resume, "
                   "defaults to the run directory's config.yaml")
    p.add_argument("--run-dir", help="run directory (default: <runs-root>/<name>-<timestamp>)")
    p.add_argument("--runs-root", help="parent of the default run directory and home of the run queue "
                   "(default: $RELPOS_RUNS_ROOT, else checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--queue", action="store_true", help="train in the background through the run queue "
                   "(the app's; at most $RELPOS_MAX_CONCURRENT_RUNS at once) and print the run directory")
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


def _enqueue(args: argparse.Namespace, runs_root: Path) -> int:
    """``--queue``: check the config, queue the run (it starts at once when a slot is free), print its folder."""
    if args.resume or args.run_dir or args.print_config or not args.config:
        print("relpos-train: --queue takes --config, --set and --runs-root (the queue names the run "
              "directory; --resume, --run-dir and --print-config train in the foreground)", file=sys.stderr)
        return 2
    try:
        # never queue a config that cannot train (a bad key, or over the memory budget)
        cfg = resolve_training_config(apply_overrides(load_config(args.config), args.overrides))
        run_dir = runqueue.submit(args.config, args.overrides, runs_root, base=cfg["name"])
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"relpos-train: config error: {exc}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (0 done or cancelled by SIGTERM, 130 SIGINT, 1 failed, 2 bad usage).

    With ``--queue`` the run is queued (0 once it is). Otherwise, whatever the outcome, the last act
    is to advance the run queue of the runs root (:func:`runqueue.advance_after_run`).
    """
    args = _parser().parse_args(argv)
    runs_root = Path(args.runs_root) if args.runs_root else runqueue.default_runs_root()
    if args.queue:
        return _enqueue(args, runs_root)
    threads = runqueue.threads_from_env()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _main(args, runs_root)
    finally:
        runqueue.advance_after_run(args.run_dir, runs_root)


def _main(args: argparse.Namespace, runs_root: Path) -> int:
    if not args.config and not (args.resume and args.run_dir):
        _parser().error("--config is required (or --resume with --run-dir)")
    run_dir = Path(args.run_dir) if args.run_dir else None
    try:
        path = args.config or (run_dir / CONFIG_FILE)
        cfg = resolve_training_config(apply_overrides(load_config(path), args.overrides))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"relpos-train: config error: {exc}", file=sys.stderr)
        if run_dir is not None and (read_status(run_dir) or {}).get("state") == "queued":
            update_status(run_dir, state="failed", error=f"config error: {exc}", pid=os.getpid())
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    if run_dir is not None and not args.resume and (run_dir / LAST_CKPT).exists():
        print(f"relpos-train: {run_dir} already holds {LAST_CKPT}; pass --resume to continue it "
              f"or choose another --run-dir", file=sys.stderr)
        return 2
    on_step, close_bar = _tqdm_progress()
    try:
        result = fit(cfg, run_dir, resume=args.resume, runs_root=runs_root, progress=on_step)
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
