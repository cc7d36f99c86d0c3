"""Background training runs: start (or queue), list, cancel and reconcile them through their run directories.

The filesystem is the job registry (see :mod:`relpos.experiments.rundir`). A run is one
``python -m relpos.experiments.train --config ... --run-dir ...`` process in its own session (so its
process group can be stopped as a whole, DataLoader workers included). Nothing here keeps state in
memory that a restart would lose: the app can restart, a second tab can attach, and every run is
still listed and can still be cancelled.

Starting is never refused for being busy: beyond ``$RELPOS_MAX_CONCURRENT_RUNS`` (default 2) active
runs a run waits in state ``queued`` (first in, first out; ``queue_position`` in its row) and starts
by itself when a slot frees, with no browser open. The queue is :mod:`relpos.experiments.runqueue`'s,
the trainer processes and the files they add to a run directory (``output.log``, ``process.json``)
:mod:`relpos.experiments.runproc`'s; this module is the app's and the library's front door to them.

Safety: run directories are direct children of ``runs_root``; symlinks (a run dir, or a file in
it) are never followed out of ``runs_root``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relpos._file_limits import check_torch_archive
from relpos._fileio import display_name, display_text, is_inside, sanitize_name
from relpos._validation import check_float, check_int
from relpos.experiments import rundir, runfolder, runqueue
from relpos.experiments.runproc import OUTPUT_LOG, PROCESS_FILE, is_alive, log_tail, run_pid
from relpos.experiments.runproc import run_dirs as _run_dirs
from relpos.experiments.runproc import override_args as _override_args
from relpos.experiments.runproc import read_json_safe as _read_json_safe
from relpos.experiments.runqueue import (
    ACTIVE_STATES,
    RUNS_ROOT_ENV,
    default_runs_root,
    max_concurrent_runs,
    queue_positions,
)
from relpos.experiments.checkpoint import load_model_from_checkpoint
from relpos.experiments.config import apply_overrides, resolve_training_config
from relpos.experiments.config_utils import CONFIGS_DIR_ENV, configs_dir, list_presets, load_config, preset_path

__all__ = [
    "ACTIVE_STATES",
    "CONFIGS_DIR_ENV",
    "MAX_UPLOAD_BYTES",
    "OUTPUT_LOG",
    "PROCESS_FILE",
    "RUNS_ROOT_ENV",
    "RunLimitError",
    "advance_queue",
    "UPLOADS_DIR",
    "UPLOAD_SUFFIXES",
    "cancel_run",
    "configs_dir",
    "default_runs_root",
    "is_alive",
    "list_checkpoints",
    "list_presets",
    "list_runs",
    "log_tail",
    "max_concurrent_runs",
    "preset_path",
    "queue_positions",
    "reconcile_runs",
    "run_info",
    "run_pid",
    "save_upload",
    "start_run",
]

class RunLimitError(RuntimeError):
    """Kept for compatibility: :func:`start_run` queues a run beyond the limit instead of raising."""


#: Start the oldest queued runs while slots are free (``advance_queue(runs_root, limit=None)``).
advance_queue = runqueue.advance


def _resolve_root(runs_root: str | Path) -> Path:
    if not isinstance(runs_root, (str, os.PathLike)):
        raise TypeError(f"runs_root must be a str or Path, got {type(runs_root).__name__}")
    return Path(runs_root).resolve()


def _checked_run_dir(run_dir: str | Path, runs_root: str | Path | None) -> Path:
    """``run_dir`` as a real directory; when ``runs_root`` is given, a direct child of it."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a str or Path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if path.is_symlink():
        raise ValueError(f"run_dir {os.fspath(run_dir)!r} is a symlink; run directories never are")
    if not path.is_dir():
        raise FileNotFoundError(f"run_dir {os.fspath(run_dir)!r} is not a directory")
    if runs_root is not None:
        root = _resolve_root(runs_root)
        if path.resolve().parent != root:  # a direct child (stricter than _fileio.is_inside)
            raise ValueError(f"run_dir {os.fspath(run_dir)!r} is not a run directory inside {root}")
    return path


def start_run(
    preset_or_config_path: str | Path,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    runs_root: str | Path = "checkpoints",
    name: str | None = None,
    max_concurrent: int | None = None,
) -> Path:
    """Start a training run in the background, or queue it when the limit is reached; return its folder.

    Never refused for being busy: beyond ``max_concurrent`` active runs the run waits in state
    ``queued`` (first in, first out) and starts by itself when a slot frees (the finishing trainer,
    a cancel or the app's reconcile advances the queue; see :mod:`relpos.experiments.runqueue`).

    Args:
        preset_or_config_path: a preset name (``"default"``, ``"tiny"``: ``configs/<name>.yaml``)
            or a path to a YAML config.
        overrides: ``{"train.epochs": 3}`` or ``["train.epochs=3"]``, passed as ``--set``.
        runs_root: folder of run directories (created if missing).
        name: run name (sanitized); defaults to the preset's name. The directory is
            ``<name>-<YYYYmmdd-HHMMSS>`` with ``-2``, ``-3``... appended when taken.
        max_concurrent: most runs active at once when this one is placed; default
            ``$RELPOS_MAX_CONCURRENT_RUNS`` (2), which every later advance of the queue uses.

    Returns:
        The new run directory. Its ``status.json`` says ``queued`` until the trainer starts;
        the trainer then moves it on (``running`` ... ``done``/``failed``/``cancelled``).

    Raises:
        FileNotFoundError: no such preset or config file.
        ConfigError: (a ValueError) the config cannot train: a bad key or value, or a run over the
            memory budget (:func:`relpos.experiments.config.resolve_training_config`); nothing is
            created then, no folder and no process.
        ValueError: a malformed override or ``max_concurrent``.
    """
    config_path = preset_path(preset_or_config_path).resolve()
    args = _override_args(overrides)
    resolve_training_config(apply_overrides(load_config(config_path), args))  # refused before a folder exists
    limit = max_concurrent_runs() if max_concurrent is None else check_int("max_concurrent", max_concurrent)
    base = sanitize_name(name if name else config_path.stem)
    return runqueue.submit(config_path, args, _resolve_root(runs_root), base=base, limit=limit)


def _progress(status: Mapping[str, Any]) -> float:
    if status.get("state") == "done":
        return 1.0
    for num, den in (("step", "total_steps"), ("epoch", "epochs")):
        n, d = status.get(num), status.get(den)
        if isinstance(n, (int, float)) and isinstance(d, (int, float)) and d > 0:
            return float(min(1.0, max(0.0, n / d)))
    return 0.0


def _shown(text: Any, limit: int) -> str | None:
    return display_text(text, limit, multiline=False) if isinstance(text, str) else None


def _sweep_row(sweep: Mapping[str, Any] | None) -> dict | None:
    if not sweep:
        return None
    cell = {display_text(k, 200, multiline=False): _shown(v, 200) if isinstance(v, str) else v
            for k, v in (sweep.get("cell") or {}).items()}
    return {"name": _shown(sweep.get("name"), 200), "dir": _shown(sweep.get("dir"), 4096), "cell": cell,
            "seed": sweep.get("seed")}


def _row(record: runfolder.RunRecord, positions: Mapping[str, int]) -> dict:
    """A :func:`list_runs` row of a validated record: every text display-safe, every number checked."""
    status = record.status
    pid = record.pid
    # A broken run may still have a live trainer (Cancel must reach it): check unless it is known to have ended.
    alive = bool(pid is not None and record.state not in rundir.TERMINAL_STATES and is_alive(pid, record.path))
    error = display_text(status["error"], 4000) if isinstance(status.get("error"), str) else None
    if record.broken:
        error = f"broken run folder: {record.reason}" + (f"; its error: {error}" if error else "")
    return {
        "name": record.name,
        "path": str(record.path),
        "state": record.shown_state,
        "progress": _progress(status),
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs"),
        "accuracy": record.accuracy,
        "eta_seconds": status.get("eta_seconds"),
        "updated": status.get("updated_at"),
        "created": status.get("created_at") or status.get("started_at"),
        "error": error,
        "config_path": _shown(status.get("config_path"), 4096),
        "overrides": [display_text(o, 1000, multiline=False) for o in status.get("overrides") or []],
        "pid": pid,
        "alive": alive,
        "queue_position": positions.get(record.path.name),
        "sweep": _sweep_row(status.get("sweep")),
        "broken": record.broken,
        "problems": list(record.problems),
    }


def run_info(run_dir: str | Path, *, positions: Mapping[str, int] | None = None) -> dict | None:
    """One row of :func:`list_runs` for ``run_dir`` (None when it is not a run: no ``status.json``).

    ``positions`` (run folder name -> place in the queue, :func:`queue_positions` of the runs root)
    saves reading the whole queue once per row; by default it is read when the run is waiting.
    """
    record = runfolder.read_run(run_dir)
    if record is None:
        return None
    if positions is None:
        positions = queue_positions(record.path.parent) if record.waiting else {}
    return _row(record, positions)


def list_runs(runs_root: str | Path = "checkpoints") -> list[dict]:
    """Every run in ``runs_root``, newest first, read through :func:`relpos.experiments.runfolder.read_run`.

    Each row: ``name`` (the folder's name, display-safe), ``path`` (the real folder), ``state``
    (``queued``/``running``/``done``/``failed``/``cancelled``, or ``broken``), ``progress`` (0..1),
    ``epoch``, ``epochs``, ``accuracy`` (latest validation accuracy in [0, 1] or None),
    ``eta_seconds``, ``updated`` (epoch seconds), ``created``, ``error``, ``config_path``,
    ``overrides`` (the ``--set`` list), ``pid``, ``alive``, ``queue_position`` (1 = next to start;
    None unless waiting in the queue), ``sweep`` (``{"name", "dir", "cell", "seed"}`` for a sweep's
    member, else None), ``broken`` (bool) and ``problems`` (what failed its check; the ``error`` of
    a broken row says it too). Every text is printable UTF-8 and every number checked, so a row can
    be shown as it is. Directories without a ``status.json`` (e.g. ``uploads/``) and symlinks are
    skipped.

    Cheap whatever the runs hold: one bounded read of ``status.json`` and ``process.json`` per run,
    and the last 64 KiB of ``metrics.jsonl`` only for a run whose status has no accuracy yet
    (``benchmarks/listing_bench.py``).
    """
    records = runfolder.read_runs(runs_root)
    positions = runfolder.queue_order(records)
    rows = [_row(r, positions) for r in records]
    rows.sort(key=lambda r: (r["created"] or 0, r["name"]), reverse=True)
    return rows


def _finish_if_active(run_dir: Path, **fields: Any) -> dict:
    record = runfolder.read_run(run_dir, metrics=False)  # validated: a state of any JSON type is no state
    if record is not None and record.state in rundir.TERMINAL_STATES:
        return _read_json_safe(run_dir, rundir.STATUS_FILE) or {"state": record.state}
    return rundir.update_status(run_dir, **fields)


def cancel_run(run_dir: str | Path, grace: float = 10.0, runs_root: str | Path | None = None) -> dict:
    """Stop a run: SIGTERM to its process group, SIGKILL after ``grace`` seconds.

    A run still waiting in the queue is marked ``cancelled`` under the queue's lock and never
    trains. The run always ends in a terminal state: when the trainer wrote none before dying, the
    run is marked ``cancelled`` (under the lock; a trainer that had not made its first write yet
    then sees it and does not start, :func:`relpos.experiments.runqueue.begin_run`). A run that
    already finished is left as it is. The freed slot goes to the next queued run.

    Args:
        run_dir: the run directory.
        grace: seconds between SIGTERM and SIGKILL.
        runs_root: when given, ``run_dir`` must be a direct child of it.

    Returns:
        The final status.
    """
    grace = check_float("grace", grace, minimum=0.0)
    path = _checked_run_dir(run_dir, runs_root)
    queued = runqueue.cancel_queued(path)
    if queued is not None:
        return queued
    pid = run_pid(path)
    if pid is not None and is_alive(pid, path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while is_alive(pid, path) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_alive(pid, path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while is_alive(pid, path) and time.monotonic() < deadline:
                time.sleep(0.05)
    with runqueue.locked(path.resolve().parent):  # never interleaved with a launch or a trainer's first write
        status = _finish_if_active(path, state="cancelled", eta_seconds=None, cancelled_at=time.time())
    runqueue.advance(path.resolve().parent)
    return status


def reconcile_runs(runs_root: str | Path = "checkpoints", queued_timeout: float = 120.0) -> list[str]:
    """Mark runs whose process is gone as ``failed`` (with the log tail as the error), then advance the queue.

    A run ``running`` (or handed to a trainer) whose process is dead cannot make progress any more:
    typically the machine or the app restarted mid-run. A run waiting in the queue is not dead,
    however long it waits: it starts when a slot frees (``queued_timeout`` is kept for callers of
    the old signature and no longer used). Returns the names of the runs marked failed.
    """
    return runqueue.reconcile(_resolve_root(runs_root))


# --------------------------------------------------------------------------- checkpoints and uploads

#: Sub-folder of the runs root that holds uploaded checkpoints.
UPLOADS_DIR = "uploads"
#: Suffixes of relpos checkpoint files (runs write ``.pt``; an upload may be ``.pth``).
UPLOAD_SUFFIXES: tuple[str, ...] = (".pt", ".pth")
#: Upload limit for checkpoints (the server's own limit in .streamlit/config.toml is the outer one).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def list_checkpoints(runs_root: str | Path) -> list[dict]:
    """Checkpoints of runs (``<run>/best.pt``, ``last.pt``) and uploads (``uploads/*.pt``).

    Each row: ``label`` (``run/best.pt`` or ``uploads/name.pt``), ``path``, ``kind``
    (``run``/``upload``), ``run`` (run name as :func:`list_runs` shows it, or None), ``mtime``,
    ``size``. Labels and run names are display-safe (a folder named with non-UTF-8 bytes shows them
    as ``\\xff``; ``path`` is the real file). Symlinks, non-regular files and anything resolving
    outside ``runs_root`` are skipped. Newest first.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    real_root = root.resolve()
    rows = []

    def add(path: Path, kind: str, run: str | None) -> None:
        try:
            st = path.lstat()  # one look: a symlink or a folder is skipped, a vanished file too
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or not is_inside(path, real_root):
            return
        rows.append({"label": f"{display_name(path.parent.name)}/{display_name(path.name)}", "path": str(path),
                     "kind": kind, "run": run, "mtime": st.st_mtime, "size": st.st_size})

    for child in _run_dirs(root):
        if child.name == UPLOADS_DIR:
            with contextlib.suppress(OSError):
                for f in child.iterdir():
                    if f.suffix in UPLOAD_SUFFIXES:
                        add(f, "upload", None)
            continue
        for name in (rundir.BEST_CKPT, rundir.LAST_CKPT):
            add(child / name, "run", display_name(child.name))
    rows.sort(key=lambda r: r["mtime"], reverse=True)
    return rows


def save_upload(data: bytes, filename: str, runs_root: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Check an uploaded checkpoint and store it as ``<runs_root>/uploads/<safe name>.pt``.

    The bytes' zip directory is checked first (:func:`relpos._file_limits.check_torch_archive`:
    declared sizes against the memory budget, no zip bomb, no legacy format), then they are loaded
    once with ``torch.load(weights_only=True)`` (no code runs) and must rebuild a model
    (:func:`relpos.experiments.checkpoint.load_model_from_checkpoint`) before they are kept; every
    message names ``filename``, never the temporary file. The file name is sanitized; an existing
    file is never overwritten (``-2``, ``-3``...).

    Raises:
        ValueError: too large, wrong suffix, or not a relpos checkpoint (the message says why).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    max_bytes = check_int("max_bytes", max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"upload is {len(data)} bytes; the limit is {max_bytes} bytes")
    if not isinstance(filename, str):
        raise TypeError(f"filename must be a str, got {type(filename).__name__}")
    base = os.path.basename(filename.replace("\\", "/"))
    stem, suffix = os.path.splitext(base)
    if suffix.lower() not in UPLOAD_SUFFIXES:
        raise ValueError(f"filename {filename!r} must end in .pt or .pth (a relpos checkpoint)")
    check_torch_archive(data, repr(base))  # before anything is inflated or written; names the user's file
    folder = Path(runs_root) / UPLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        raise ValueError(f"{folder} is a symlink; refusing to write through it")
    safe = sanitize_name(stem, default="checkpoint")
    tmp = folder / f".{safe}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    rundir.atomic_write_bytes(tmp, bytes(data))
    try:
        load_model_from_checkpoint(tmp)  # must rebuild a model, else it is useless to the app
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        # the user's name, never the temporary one (replaced before the cut, so no part of it is left)
        text = str(exc).replace(str(tmp), repr(base)).replace(tmp.name, repr(base))
        why = (text.strip().splitlines() or [type(exc).__name__])[0][:800]
        raise ValueError(f"{base!r} is not a relpos checkpoint: {why}") from None
    for k in range(1, 1000):
        dest = folder / (f"{safe}.pt" if k == 1 else f"{safe}-{k}.pt")
        try:
            os.link(tmp, dest)  # atomic; fails if dest exists
        except FileExistsError:
            continue
        tmp.unlink(missing_ok=True)
        return dest
    tmp.unlink(missing_ok=True)
    raise ValueError(f"too many uploads named {safe!r}")
