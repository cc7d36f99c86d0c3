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

Reading: a run folder is untrusted data (a crashed process, an old version, another user may have
written it). Every read here goes through :func:`read_run_file`: never through a symlink
(``O_NOFOLLOW``), only a regular file (a FIFO or a device is refused, never waited on), never more
than a stated number of bytes. JSON is parsed strictly (UTF-8; ``NaN``, ``Infinity`` and floats that
overflow become ``None``; a document nested past the parser's depth is refused). ``metrics.jsonl``
is read from its end and at most :data:`MAX_METRICS_BYTES` of it (:func:`read_metrics_tail` says how
much was left out); its records keep only finite numbers, bounded text and ``None``. The validated
view of a whole run folder, field by field, is :func:`relpos.experiments.runfolder.read_run`.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from relpos._fileio import atomic_write_bytes, atomic_write_json, display_text, json_line, read_json

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_METRICS_BYTES",
    "RUN_STATES",
    "TERMINAL_STATES",
    "MetricsTail",
    "RunFileError",
    "RunLogger",
    "append_metrics",
    "attach_run_log",
    "atomic_write_bytes",
    "atomic_write_json",
    "clean_record",
    "detach_run_log",
    "new_run_dir",
    "read_json",
    "read_json_object",
    "read_metrics",
    "read_metrics_tail",
    "read_run_file",
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
#: Largest ``status.json`` / ``process.json`` read, in bytes (a real one is about 1 KB; a failed
#: run's error with its log tail a few KB).
MAX_JSON_BYTES = 1 << 20
#: How much of ``metrics.jsonl`` :func:`read_metrics` parses by default: its last 8 MiB (about
#: 30,000 step lines; a default-preset run writes a few hundred).
MAX_METRICS_BYTES = 8 << 20
_MAX_EXACT_INT = 2**53  # larger ints in a metrics line become None (not exact as floats; 10**400 overflows numpy)
_MAX_RECORD_KEYS = 256
_MAX_RECORD_TEXT = 200


class RunFileError(ValueError):
    """A file of a run folder that cannot be read safely; the message names the file and says why."""


class MetricsTail(NamedTuple):
    """What :func:`read_metrics_tail` read of ``metrics.jsonl``.

    Attributes:
        records: the JSON objects of the part read, cleaned (:func:`clean_record`), in file order.
        size: the file's size in bytes (0 when there is none).
        skipped_bytes: bytes before the part read (0: the whole file was read).
        bad_lines: lines of the part read that were not a JSON object in UTF-8 (a torn last line
            counts); they are skipped.
        problem: why the file could not be read at all (a symlink, not a regular file), else None.
    """

    records: list[dict]
    size: int
    skipped_bytes: int
    bad_lines: int
    problem: str | None


def read_run_file(path: str | Path, max_bytes: int, *, tail: bool = False) -> tuple[bytes, int] | None:
    """``(data, size)`` of a file of a run folder, never through a symlink; None when it does not exist.

    Args:
        path: the file.
        max_bytes: the most bytes read.
        tail: read the last ``max_bytes`` of a larger file (else a larger file is refused).

    Returns:
        The bytes read and the file's size, or None when there is no such file.

    Raises:
        RunFileError: the file is a symlink, not a regular file, larger than ``max_bytes`` (without
            ``tail``) or cannot be opened or read; the message names it.
    """
    path = Path(path)
    name = path.name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO opens at once (and is refused below), never blocks
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunFileError(f"{name} is a symlink; files of a run folder are never followed") from None
        raise RunFileError(f"{name} cannot be opened: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RunFileError(f"{name} is not a regular file")
            size = st.st_size
            if size > max_bytes and not tail:
                raise RunFileError(f"{name} is {size} bytes; the limit is {max_bytes}")
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(min(size, max_bytes))  # a file that grows meanwhile is read as it was
        except OSError as exc:
            raise RunFileError(f"{name} cannot be read: {exc.strerror or exc}") from None
    return data, size


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _loads(text: str) -> Any:
    """Strict JSON: NaN/Infinity and floats that overflow become None."""
    return json.loads(text, parse_constant=lambda _: None, parse_float=_finite_float)


def read_json_object(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict | None:
    """The JSON object in a file of a run folder (:func:`read_run_file`'s rules); None when it does not exist.

    ``NaN``, ``Infinity`` and overflowing floats are read as None; the values are otherwise as stored
    (any JSON type): :mod:`relpos.experiments.runfolder` validates them.

    Raises:
        RunFileError: unsafe or unreadable (see :func:`read_run_file`), not UTF-8, not JSON (or nested
            past the parser's depth), or not an object; the message names the file.
    """
    got = read_run_file(path, max_bytes)
    if got is None:
        return None
    name = Path(path).name
    try:
        obj = _loads(got[0].decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{name} is not UTF-8 text (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{name} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{name} holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_status(run_dir: str | Path) -> dict | None:
    """The object in ``status.json``, or None when it is missing, unsafe or unreadable (:func:`read_json_object`)."""
    try:
        return read_json_object(Path(run_dir) / STATUS_FILE)
    except RunFileError:
        return None


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


def _clean_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return display_text(value, _MAX_RECORD_TEXT)
    return None  # a list or an object: no metric is one


def clean_record(obj: dict) -> dict:
    """A metrics line made safe for arithmetic and display: numbers finite (ints within 2**53), text
    printable and at most 200 characters, anything else (lists, objects) None; at most 256 keys."""
    out = {}
    for key, value in obj.items():
        if len(out) >= _MAX_RECORD_KEYS:
            break
        out[display_text(str(key), _MAX_RECORD_TEXT, multiline=False)] = _clean_value(value)
    return out


def read_metrics_tail(run_dir: str | Path, max_bytes: int = MAX_METRICS_BYTES) -> MetricsTail:
    """The JSON lines of the last ``max_bytes`` of ``metrics.jsonl``, cleaned, and how much was left out.

    Never raises for what is in the file: a symlink or a non-regular file gives no records and a
    ``problem``; lines that are not UTF-8 JSON objects are counted in ``bad_lines`` and skipped; a
    line cut by the start of the part read is dropped.
    """
    try:
        got = read_run_file(Path(run_dir) / METRICS_FILE, max_bytes, tail=True)
    except RunFileError as exc:
        return MetricsTail([], 0, 0, 0, str(exc))
    if got is None:
        return MetricsTail([], 0, 0, 0, None)
    data, size = got
    skipped = size - len(data)
    if skipped > 0:  # the first line may be the end of one that starts before the part read
        cut = data.find(b"\n") + 1
        data, skipped = data[cut:], skipped + cut
    records, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = _loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(clean_record(obj))
        else:
            bad += 1
    return MetricsTail(records, size, skipped, bad, None)


def read_metrics(run_dir: str | Path, max_bytes: int = MAX_METRICS_BYTES) -> list[dict]:
    """The JSON lines of ``metrics.jsonl`` (its last ``max_bytes``), cleaned; a torn line is skipped.

    See :func:`read_metrics_tail`, which also says how much of the file was left out.
    """
    return read_metrics_tail(run_dir, max_bytes).records


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
        return max(0.0, (time.perf_counter() - self._start) / done * (self.total_steps - self.step))

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
