"""The run directory: the filesystem is the job registry.

A run directory holds everything about one training run, so the app can restart, a second tab can
attach, and nothing is lost. A new one is named ``<name>-<YYYYmmdd-HHMMSS>`` (:func:`new_run_dir`,
for the CLI and the app alike); :class:`RunLogger` writes a run's status and metrics::

    <run_dir>/config.yaml     resolved config
    <run_dir>/status.json     {"state", "epoch", "epochs", "step", "total_steps", "eta_seconds",
                               "pid", "error", "name", "started_at", "updated_at", ...}
    <run_dir>/metrics.jsonl   one JSON object per logged step ("kind": "step") and per epoch
                              ("kind": "epoch")
    <run_dir>/train.log       human-readable log
    <run_dir>/last.pt, best.pt

Every whole-file write goes through :func:`relpos._fileio.atomic_write_bytes` (temporary file in the
same folder, fsync, ``os.replace``; re-exported here with ``atomic_write_json`` and ``read_json``): a
reader never sees half a file, and a crash leaves the old file intact.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from relpos._fileio import atomic_write_bytes, atomic_write_json, json_line, read_json

__all__ = [
    "RUN_STATES",
    "TERMINAL_STATES",
    "RunLogger",
    "append_metrics",
    "attach_run_log",
    "atomic_write_bytes",
    "atomic_write_json",
    "detach_run_log",
    "new_run_dir",
    "read_json",
    "read_metrics",
    "read_status",
    "update_status",
]

RUN_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
LAST_CKPT = "last.pt"
BEST_CKPT = "best.pt"


def read_status(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / STATUS_FILE)


def update_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into ``status.json`` (atomically) and return the new status."""
    if "state" in fields and fields["state"] not in RUN_STATES:
        raise ValueError(f"state must be one of {RUN_STATES}, got {fields['state']!r}")
    status = read_status(run_dir) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl`` (one ``write`` call, flushed)."""
    line = json_line(record) + "\n"
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete JSON line of ``metrics.jsonl``; a torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


# ----------------------------------------------------------------------------- naming and logging


def new_run_dir(runs_root: str | Path, name: str) -> Path:
    """Create and return a new run directory ``<runs_root>/<name>-<YYYYmmdd-HHMMSS>``.

    The one naming rule for run directories, used by the CLI (``fit`` without ``--run-dir``) and by
    the app (``jobs.start_run``): the name first, so runs of one config sort together; ``-2``,
    ``-3``... are appended when the folder is taken. ``os.mkdir`` is atomic, so two starters in the
    same second never share a folder. ``name`` must already be a safe folder name (config names
    are checked by the config; the app sanitizes its own).
    """
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 10_000):
        path = root / (base if k == 1 else f"{base}-{k}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a unique run directory for {base!r} in {root}")


def attach_run_log(
    logger: logging.Logger, run_dir: str | Path, to_stderr: bool = False
) -> list[logging.Handler]:
    """Send ``logger``'s INFO lines to ``<run_dir>/train.log`` (and stderr); returns the handlers."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8")]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handlers


def detach_run_log(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Remove and close the handlers :func:`attach_run_log` returned."""
    for h in handlers:
        logger.removeHandler(h)
        h.close()


class RunLogger:
    """The bookkeeping of one training run: ``"step"`` lines, ``"epoch"`` lines and ``status.json``.

    Every rank calls it (the per-step window is summed across ranks with ``reduce``, a collective),
    but only the writer (rank 0, ``write=True``) touches the run directory.

    Args:
        run_dir: the run directory.
        step: the optimizer step the session starts at (non-zero when resumed).
        total_steps: steps of the whole run (for the ETA).
        log_every: a ``"step"`` line every this many steps.
        write: whether this process writes (rank 0).
        reduce: sums a list of numbers over the ranks (default: identity, one process).
    """

    def __init__(self, run_dir: str | Path, *, step: int, total_steps: int, log_every: int,
                 write: bool = True, reduce=None) -> None:
        self.run_dir, self.write = Path(run_dir), write
        self.step, self.total_steps, self.log_every = step, total_steps, log_every
        self.reduce = reduce if reduce is not None else (lambda values: values)
        self._start = self._window_start = time.perf_counter()
        self._step0 = step
        self._window = [0.0, 0, 0]  # loss_sum, correct, samples since the last "step" line

    def eta(self) -> float | None:
        """Seconds left, from this session's pace (None before its first step)."""
        done = self.step - self._step0
        if done <= 0:
            return None
        return (time.perf_counter() - self._start) / done * (self.total_steps - self.step)

    def status(self, **fields: Any) -> dict:
        """Merge ``fields`` into ``status.json`` (writer only; others get ``{}``)."""
        return update_status(self.run_dir, **fields) if self.write else {}

    def on_step(self, info: dict, epoch: int) -> None:
        """Count one optimizer step (``info`` from ``train_epoch``'s progress; ``epoch`` 1-based)."""
        self.step += 1
        n = info["samples"]
        self._window[0] += info["loss"] * n
        self._window[1] += round(info["accuracy"] * n)
        self._window[2] += n
        if self.step % self.log_every:
            return
        loss_sum, correct, samples = self.reduce(self._window)
        now = time.perf_counter()
        if self.write:
            append_metrics(self.run_dir, {
                "kind": "step", "step": self.step, "epoch": epoch, "train_loss": loss_sum / samples,
                "train_accuracy": correct / samples, "lr": info["lr"], "seconds": now - self._start,
                "images_per_second": samples / max(now - self._window_start, 1e-9),
            })
            update_status(self.run_dir, step=self.step, total_steps=self.total_steps, epoch=epoch,
                          eta_seconds=self.eta())
        self._window, self._window_start = [0.0, 0, 0], now

    def on_epoch(self, record: dict) -> None:
        """Append an ``"epoch"`` line (the caller saves its checkpoints, then updates :meth:`status`)."""
        if self.write:
            append_metrics(self.run_dir, record)
