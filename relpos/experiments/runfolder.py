"""A run folder read as untrusted data: one validated record per run (:func:`read_run`).

Anything under the runs folder may have been written by a crashed process, an old version, another
user or an attacker: every field of ``status.json`` / ``process.json`` / ``metrics.jsonl`` may have
any JSON type, be NaN, huge or not UTF-8; a folder name may be any bytes; a file may be a symlink.
Every reader of a run folder (the run list, the queue, reconcile, the app's pages) goes through
:func:`read_run`, which promises:

- **It never raises** for what is in the folder. A run whose files or fields fail the checks below
  is still one :class:`RunRecord`, ``broken``, with ``problems`` saying which file, which field, the
  value (cut by :func:`relpos._limits.short_repr`) and what is allowed. Every other run is unaffected.
- **Nothing is followed out of the folder**: a symlinked run folder, ``status.json``,
  ``process.json``, ``metrics.jsonl``, ``config.yaml``, checkpoint or log is refused (a problem), and
  files are opened with ``O_NOFOLLOW`` as regular files only
  (:func:`relpos.experiments.rundir.read_run_file`).
- **Bounded**: ``status.json`` and ``process.json`` at most 1 MiB each, and at most the last 64 KiB
  of ``metrics.jsonl`` (only when ``status.json`` holds no accuracy), whatever the files' sizes.
- **Typed and in range**: a field that fails its check (:data:`STATUS_FIELDS`) is left out of
  ``status``, so no bad value reaches arithmetic or formatting code. States are one of
  :data:`relpos.experiments.rundir.RUN_STATES`; times are finite epoch seconds in
  ``[0, MAX_TIME]``; a pid is an int in ``[1, 2**22]``; epochs and steps ints in ``[0, 2**53]``;
  accuracies in ``[0, 1]``; overrides a list of at most 256 strings; and so on.
- **Display-safe names**: ``name`` is the folder's name as printable UTF-8 (undecodable bytes as
  ``\\xff``, :func:`relpos._fileio.display_name`); ``path`` keeps the real one (``os.fsencode``
  round-trips).

Unknown fields are ignored (a newer version may add some); only the known ones are checked.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relpos._fileio import display_name, display_text
from relpos._limits import short_repr
from relpos.experiments import rundir
from relpos.experiments.runproc import OUTPUT_LOG, PROCESS_FILE, check_pid, run_dirs

__all__ = [
    "BROKEN",
    "MAX_TIME",
    "PROCESS_FIELDS",
    "STATUS_FIELDS",
    "TAIL_BYTES",
    "RunRecord",
    "queue_order",
    "read_run",
    "read_runs",
]

#: The state a list shows for a run whose folder failed a check.
BROKEN = "broken"
#: Latest believable time, epoch seconds (2100-01-01 UTC); ``time.localtime`` handles every time up to it.
MAX_TIME = 4_102_444_800.0
#: Bytes of the end of ``metrics.jsonl`` read for a row's accuracy when ``status.json`` has none.
TAIL_BYTES = 64 * 1024
_MAX_COUNT = 2**53
_MAX_DURATION = 10 * 365 * 86_400.0  # an ETA beyond ten years is no estimate
_MAX_PATH = 4096
_MAX_ITEMS = 256  # overrides, cells of a sweep
_MAX_COMMAND = 1024
_MAX_REASON = 2000
# Files a run folder may hold besides status/process/metrics: never symlinks, always regular files.
_OTHER_FILES = (rundir.CONFIG_FILE, rundir.BEST_CKPT, rundir.LAST_CKPT, rundir.LOG_FILE, OUTPUT_LOG)


class _Invalid(ValueError):
    """A value failed its check; the message says what is allowed."""


# ----------------------------------------------------------------------------- checks, one per kind of field


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid("a number")
    if isinstance(value, int) and abs(value) > _MAX_COUNT:
        raise _Invalid("a number of magnitude at most 2**53")
    value = float(value)
    if not math.isfinite(value):
        raise _Invalid("a finite number")
    return value


def _ranged(low: float, high: float, what: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        try:
            number = _number(value)
        except _Invalid:
            raise _Invalid(what) from None
        if not low <= number <= high:
            raise _Invalid(what)
        return number
    return check


def _count(low: int = 0) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_COUNT:
            raise _Invalid(f"an integer in [{low}, 2**53]")
        return value
    return check


def _state(value: Any) -> str:
    if not isinstance(value, str) or value not in rundir.RUN_STATES:
        raise _Invalid(f"one of {', '.join(rundir.RUN_STATES)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string")
    return value


def _path_text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_PATH or "\x00" in value:
        raise _Invalid(f"a path (a string of 1 to {_MAX_PATH} characters, no NUL)")
    return value


def _strings(limit: int, what: str) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        if (not isinstance(value, list) or len(value) > limit
                or not all(isinstance(v, str) and len(v) <= _MAX_PATH and "\x00" not in v for v in value)):
            raise _Invalid(f"{what} (a list of at most {limit} strings of at most {_MAX_PATH} characters)")
        return list(value)
    return check


def _pid(value: Any) -> int:
    pid = check_pid(value)
    if pid is None:
        raise _Invalid("a process id (an integer in [1, 2**22])")
    return pid


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    return _number(value)


def _sweep(value: Any) -> dict:
    """``{"name", "dir", "cell", "seed"}`` of a sweep's member (what :mod:`relpos.experiments.sweep` writes)."""
    what = "a sweep tag {name: str, dir: str, cell: {str: number or str}, seed: int}"
    if not isinstance(value, dict):
        raise _Invalid(what)
    cell = value.get("cell", {})
    try:
        out = {
            "name": None if value.get("name") is None else _text(value["name"]),
            "dir": None if value.get("dir") is None else _path_text(value["dir"]),
            "seed": None if value.get("seed") is None else _count()(value["seed"]),
        }
        if not isinstance(cell, dict) or len(cell) > _MAX_ITEMS:
            raise _Invalid(what)
        out["cell"] = {str(k): _scalar(v) for k, v in cell.items()}
    except _Invalid:
        raise _Invalid(what) from None
    return out


_TIME = _ranged(0.0, MAX_TIME, "a time (finite epoch seconds in [0, 4102444800])")
_FRACTION = _ranged(0.0, 1.0, "an accuracy in [0, 1]")
_DURATION = _ranged(0.0, _MAX_DURATION, "a duration in seconds in [0, 3.2e8]")
_REAL = _ranged(-1e300, 1e300, "a finite number")

#: The checked fields of ``status.json``: name -> check (None is always allowed, except for ``state``).
STATUS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "state": _state,
    "name": _text,
    "error": _text,
    "stop_reason": _text,
    "device": _text,
    "config_path": _path_text,
    "overrides": _strings(_MAX_ITEMS, "overrides"),
    "epoch": _count(),
    "epochs": _count(),
    "step": _count(),
    "total_steps": _count(),
    "world_size": _count(1),
    "params": _count(),
    "pid": _pid,
    "eta_seconds": _DURATION,
    "created_at": _TIME,
    "started_at": _TIME,
    "updated_at": _TIME,
    "launched_at": _TIME,
    "finished_at": _TIME,
    "cancelled_at": _TIME,
    "eval_accuracy": _FRACTION,
    "val_accuracy": _FRACTION,
    "best_accuracy": _FRACTION,
    "accuracy": _FRACTION,
    "eval_loss": _REAL,
    "sweep": _sweep,
}
#: The checked fields of ``process.json`` (written by the queue's launcher).
PROCESS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "pid": _pid,
    "command": _strings(_MAX_COMMAND, "a command"),
    "started_at": _TIME,
}
_STATUS_ACCURACY = ("eval_accuracy", "val_accuracy", "best_accuracy", "accuracy")
_METRICS_ACCURACY = ("eval_accuracy", "val_accuracy", "accuracy", "train_accuracy")


def _checked(obj: Mapping[str, Any], fields: Mapping[str, Callable[[Any], Any]], file: str,
             problems: list[str]) -> dict:
    """The fields of ``obj`` that pass their check (None kept as None); a problem per one that fails."""
    out = {}
    for key, check in fields.items():
        if key not in obj:
            continue
        value = obj[key]
        if value is None and key != "state":
            out[key] = None
            continue
        try:
            out[key] = check(value)
        except _Invalid as exc:
            problems.append(f"{file}: {key} = {short_repr(value, 60)} is not {exc}")
    return out


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RunRecord:
    """One run folder, validated.

    Attributes:
        path: the run folder (its real name; ``os.fsencode(path.name)`` gives the bytes back).
        name: the folder's name as a page shows it (printable UTF-8, see module docstring).
        state: the state in ``status.json`` when valid (one of ``RUN_STATES``), else None.
        status: the fields of ``status.json`` that passed :data:`STATUS_FIELDS` (failed ones are absent).
        process: the fields of ``process.json`` that passed :data:`PROCESS_FIELDS` (``{}`` when none).
        problems: one line per check that failed (file, field, value, what is allowed); empty when sound.
        accuracy: the latest validation accuracy in ``[0, 1]`` (``status.json``, else the end of
            ``metrics.jsonl`` when read), or None.
    """

    path: Path
    name: str
    state: str | None
    status: Mapping[str, Any]
    process: Mapping[str, Any]
    problems: tuple[str, ...]
    accuracy: float | None = None

    @property
    def broken(self) -> bool:
        """Whether any check failed (the list shows the run as ``broken``, with :attr:`reason`)."""
        return bool(self.problems)

    @property
    def shown_state(self) -> str:
        """The state a list shows: :data:`BROKEN` for a broken run, else :attr:`state`."""
        return BROKEN if self.broken or self.state is None else self.state

    @property
    def reason(self) -> str | None:
        """The problems on one line, cut to 2000 characters (None when sound)."""
        return display_text("; ".join(self.problems), _MAX_REASON) if self.problems else None

    @property
    def pid(self) -> int | None:
        """The run's process id: ``process.json``'s (the launcher's), else ``status.json``'s."""
        return self.process.get("pid") or self.status.get("pid")

    @property
    def waiting(self) -> bool:
        """Queued and not yet handed to a trainer (a broken run never starts)."""
        return (self.state == "queued" and not self.broken and self.status.get("launched_at") is None
                and self.pid is None)


def _file_problem(run_dir: Path, name: str) -> str | None:
    """Why ``run_dir / name`` is refused (a symlink, not a regular file), or None (fine or absent)."""
    try:
        mode = (run_dir / name).lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"{name} cannot be examined: {exc.strerror or exc}"
    if stat.S_ISLNK(mode):
        return f"{name} is a symlink; files of a run folder are never followed"
    if not stat.S_ISREG(mode):
        return f"{name} is not a regular file"
    return None


def _tail_accuracy(tail: rundir.MetricsTail) -> float | None:
    for record in reversed(tail.records):
        if record.get("kind", "epoch") != "epoch":
            continue
        for key in _METRICS_ACCURACY:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
                return float(value)
    return None


def read_run(run_dir: str | os.PathLike, *, metrics: bool = True) -> RunRecord | None:
    """The validated record of one run folder, or None when it is not a run (no ``status.json`` at all).

    Args:
        run_dir: the run folder.
        metrics: when ``status.json`` holds no accuracy, read the last :data:`TAIL_BYTES` of
            ``metrics.jsonl`` for it (the queue and reconcile need no accuracy and pass False).

    Returns:
        A :class:`RunRecord` (``broken`` with its problems when a check failed), or None when
        ``run_dir`` is not a folder or holds no ``status.json``.

    Raises:
        TypeError: ``run_dir`` is not a str or path.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a str or path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    name = display_name(path.name)
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return RunRecord(path, name, None, {}, {}, ("the run folder is a symlink; it is never followed",))
    if not stat.S_ISDIR(mode):
        return None
    try:
        (path / rundir.STATUS_FILE).lstat()
    except FileNotFoundError:
        return None
    except OSError:
        pass  # read below, which says why
    problems: list[str] = []
    status: dict = {}
    try:
        raw = rundir.read_json_object(path / rundir.STATUS_FILE)
        status = _checked(raw or {}, STATUS_FIELDS, rundir.STATUS_FILE, problems)
        if raw is not None and "state" not in raw:
            problems.append(f"{rundir.STATUS_FILE} has no state")
    except rundir.RunFileError as exc:
        problems.append(str(exc))
    process: dict = {}
    try:
        process = _checked(rundir.read_json_object(path / PROCESS_FILE) or {}, PROCESS_FIELDS, PROCESS_FILE,
                           problems)
    except rundir.RunFileError as exc:
        problems.append(str(exc))
    for other in (rundir.METRICS_FILE, *_OTHER_FILES):
        problem = _file_problem(path, other)
        if problem is not None:
            problems.append(problem)
    accuracy = next((status[k] for k in _STATUS_ACCURACY if status.get(k) is not None), None)
    if accuracy is None and metrics:
        accuracy = _tail_accuracy(rundir.read_metrics_tail(path, TAIL_BYTES))
    return RunRecord(path, name, status.get("state"), status, process, tuple(problems), accuracy)


def read_runs(root: str | os.PathLike, *, metrics: bool = True) -> list[RunRecord]:
    """The record of every run folder directly in ``root`` (symlinked folders skipped), by folder name.

    Never raises for what is in ``root``: a folder whose reading fails unexpectedly is one broken
    record saying so. ``[]`` when ``root`` is not a folder.
    """
    records = []
    for child in run_dirs(root):
        try:
            record = read_run(child, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - one bad folder must never hide the others
            record = RunRecord(child, display_name(child.name), None, {}, {},
                               (f"the run folder could not be read: {type(exc).__name__}: {short_repr(str(exc))}",))
        if record is not None:
            records.append(record)
    return records


def queue_order(records: Iterable[RunRecord]) -> dict[str, int]:
    """Folder name -> place in the queue (1 = next to start) of the waiting runs among ``records``.

    First in, first out: by ``created_at`` (a run without one first), then by folder name.
    """
    waiting = sorted((r.status.get("created_at") or 0.0, os.fsencode(r.path.name), r.path.name)
                     for r in records if r.waiting)
    return {name: k + 1 for k, (_, _, name) in enumerate(waiting)}
