"""The run queue: background training processes started first in, first out, never more than a limit.

The filesystem is the registry (see :mod:`relpos.experiments.rundir`); nothing lives in memory that
a restart would lose. A run is a run directory in a runs root; :func:`submit` creates it in state
``queued``, and :func:`advance` starts the oldest queued runs while fewer than the limit are active.
Who advances, so that the queue moves with no browser and no daemon:

- :func:`submit` itself (a free slot is taken at once),
- every trainer as its last act, on every exit path (:func:`advance_after_run`, called by
  ``relpos.experiments.train.main``),
- ``cancel_run`` once a run is stopped, and :func:`reconcile` (the app on start, a waiting sweep),
  which also fails the runs whose process died without a word (``kill -9``, out of memory).

Every change to the queue happens under one exclusive file lock, ``<runs_root>/.jobs.lock``, so
two processes advancing at once never start one run twice, and a cancel racing a start is safe.

The limit is ``$RELPOS_MAX_CONCURRENT_RUNS`` (default 2), the same for the app and the CLI. Each
started run gets ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = ``RELPOS_THREADS`` = cores // limit
(at least 1); the trainer sets ``torch.set_num_threads`` from it, and the app server caps its own
torch threads at cores // (active runs + 1) (:func:`server_threads`). Measured on 2 cores with the
default preset: two runs at once with 2 threads each took 55.5 s, with 1 thread each 16.3 s.

A run directory as the queue sees it (the process files are :mod:`relpos.experiments.runproc`'s)::

    status.json   state "queued" (waiting, or handed to a trainer that has not started yet: then
                  "launched_at" is set), then the trainer's "running" ... "done"/"failed"/"cancelled";
                  "created_at" orders the queue; "config_path" and "overrides" say what to train
    process.json  {"pid", "command", "started_at"} of the launched trainer (written under the lock)
    output.log    the trainer's stdout and stderr (tracebacks end up here)

Only the launcher writes ``status.json`` before the trainer starts, and never after (the trainer
owns it from then on, so no write of one is lost to the other). The trainer's first write
(:func:`begin_run`) and a cancel's write both take the lock, so a cancel that lands before the
trainer's first write stops it instead of being overwritten by its "running".

About 445 lines, over the usual 400: the queue's invariants (one lock, FIFO, who advances) are
kept in one file so that every writer of a queued run's state is visible together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from relpos._validation import check_int
from relpos.experiments import rundir, runfolder
from relpos.experiments.runproc import (
    OUTPUT_LOG,
    PROCESS_FILE,
    is_alive,
    log_tail,
    override_args,
    read_json_safe,
    run_dirs,  # re-exported: callers list a runs root through the queue module
    trainer_command,
)

__all__ = [
    "ACTIVE_STATES",
    "LOCK_FILE",
    "MAX_RUNS_ENV",
    "RUNS_ROOT_ENV",
    "THREADS_ENV",
    "active_runs",
    "advance",
    "advance_after_run",
    "begin_run",
    "cancel_queued",
    "default_runs_root",
    "locked",
    "max_concurrent_runs",
    "queue_positions",
    "reconcile",
    "server_threads",
    "submit",
    "threads_from_env",
    "threads_per_run",
]

#: Environment variable naming the folder that holds run directories (default ``checkpoints``).
RUNS_ROOT_ENV = "RELPOS_RUNS_ROOT"
#: Environment variable with the most runs active (running or starting) at once; default 2.
MAX_RUNS_ENV = "RELPOS_MAX_CONCURRENT_RUNS"
DEFAULT_MAX_RUNS = 2
#: Environment variable the launcher sets for each run: the torch threads it may use.
THREADS_ENV = "RELPOS_THREADS"
LOCK_FILE = ".jobs.lock"
ACTIVE_STATES = frozenset({"queued", "running"})
_BASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# torchrun's variables: a run started by rank 0 of a distributed trainer must not think it is rank 0 too.
_DIST_ENV = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                       "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR",
                       "MASTER_PORT"})


# ----------------------------------------------------------------------------- settings


def default_runs_root() -> Path:
    """``$RELPOS_RUNS_ROOT`` or ``checkpoints``."""
    return Path(os.environ.get(RUNS_ROOT_ENV) or "checkpoints")


def max_concurrent_runs() -> int:
    """The most runs active at once: ``$RELPOS_MAX_CONCURRENT_RUNS``, default 2.

    Raises:
        ValueError: the variable is set to something other than an integer >= 1.
    """
    text = os.environ.get(MAX_RUNS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RUNS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{MAX_RUNS_ENV} = {text!r} is not allowed: an integer >= 1 (default {DEFAULT_MAX_RUNS})")
    return value


def _cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_run(limit: int | None = None) -> int:
    """Torch threads for each run when ``limit`` runs share this machine's cores (at least 1)."""
    limit = max_concurrent_runs() if limit is None else check_int("limit", limit)
    return max(1, _cores() // limit)


def threads_from_env() -> int | None:
    """``$RELPOS_THREADS`` as an int >= 1 (set by the launcher), or None when unset or malformed."""
    text = os.environ.get(THREADS_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def active_runs(root: str | Path) -> int:
    """Runs of ``root`` training now (launched by the queue or started from the CLI, process alive);
    runs still waiting in the queue do not count."""
    return _count_active(runfolder.read_runs(root, metrics=False))


def _count_active(records: list[runfolder.RunRecord]) -> int:
    """How many of ``records`` have a live trainer (read through the validated record, never raw JSON).

    A live trainer counts even in a broken folder (state unreadable) until its run is known to have ended.
    """
    return sum(1 for r in records if not r.waiting and r.state not in rundir.TERMINAL_STATES and r.pid is not None
               and is_alive(r.pid, r.path))


def server_threads(root: str | Path) -> int:
    """Torch threads for a process that computes beside the runs of ``root`` (the app server):
    cores // (active runs + 1), at least 1, so its forwards take no more than a run's share."""
    return max(1, _cores() // (active_runs(root) + 1))


def _thread_env(limit: int) -> dict[str, str]:
    n = str(threads_per_run(limit))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, THREADS_ENV: n}


# ----------------------------------------------------------------------------- the lock and the order


@contextlib.contextmanager
def locked(root: str | Path) -> Iterator[None]:
    """An exclusive lock on ``root/.jobs.lock``: every change to the queue happens inside one.

    ``flock`` locks belong to an open file, so two threads of one process exclude each other too.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def queue_positions(root: str | Path) -> dict[str, int]:
    """Run name -> place in the queue (1 = next to start) of every run waiting in ``root``.

    Read through :func:`relpos.experiments.runfolder.read_run`: a broken run folder never waits.
    """
    return runfolder.queue_order(runfolder.read_runs(root, metrics=False))


# ----------------------------------------------------------------------------- starting runs


def _reap_in_background(proc: subprocess.Popen) -> None:
    """Collect the exit status of a run this process started, so no zombie is left behind."""
    threading.Thread(target=proc.wait, name=f"relpos-reap-{proc.pid}", daemon=True).start()


def _fail_start(run_dir: Path, exc: Exception) -> None:
    rundir.update_status(run_dir, state="failed", error=f"could not start the trainer: {exc}",
                         eta_seconds=None)


def _launch(run_dir: Path, status: Mapping[str, Any], limit: int) -> bool:
    """Start the trainer of queued run ``run_dir`` (the lock is held); False when it could not start.

    ``status`` is the run's validated status (:attr:`relpos.experiments.runfolder.RunRecord.status`).
    """
    config_path = status.get("config_path")
    try:
        if not isinstance(config_path, str) or not Path(config_path).is_file():
            raise ValueError(f"its config {config_path!r} is not a file")
        command = trainer_command(config_path, run_dir, list(status.get("overrides") or []))
    except (TypeError, ValueError) as exc:
        _fail_start(run_dir, exc)
        return False
    now = time.time()
    rundir.update_status(run_dir, launched_at=now)  # the last write before the trainer owns the file
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV and not k.startswith("TORCHELASTIC_")}
    env.update(PYTHONUNBUFFERED="1", **_thread_env(limit))
    try:
        with open(run_dir / OUTPUT_LOG, "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, close_fds=True,
            )
    except OSError as exc:
        _fail_start(run_dir, exc)
        return False
    _reap_in_background(proc)
    rundir.atomic_write_json(run_dir / PROCESS_FILE, {"pid": proc.pid, "command": command, "started_at": now})
    return True


def _advance_locked(root: Path, limit: int) -> list[Path]:
    records = runfolder.read_runs(root, metrics=False)
    active = _count_active(records)
    by_name = {r.path.name: r for r in records}
    started = []
    for name in runfolder.queue_order(records):  # first in, first out
        if active >= limit:
            break
        record = by_name[name]
        if _launch(record.path, record.status, limit):
            started.append(record.path)
            active += 1
    return started


def advance(root: str | Path, limit: int | None = None) -> list[Path]:
    """Start the oldest queued runs in ``root`` while fewer than ``limit`` runs are active.

    Args:
        root: the runs root.
        limit: most active runs; default :func:`max_concurrent_runs`.

    Returns:
        The run directories started now (a queued run whose config is gone fails instead).
    """
    limit = max_concurrent_runs() if limit is None else check_int("limit", limit)
    root = Path(root).resolve()
    with locked(root):
        return _advance_locked(root, limit)


def advance_after_run(run_dir: str | Path | None, runs_root: str | Path) -> list[Path]:
    """A trainer's last act: its slot is free, so start what waits in its runs root.

    Only in a root the queue manages (one holding ``.jobs.lock``): a run trained into a folder of
    its own leaves no lock file behind. Under ``torchrun`` only rank 0 advances. Never raises (the
    run's own outcome must not change): a failure is printed on stderr.

    Args:
        run_dir: the run's directory (its parent is the root), or None for ``runs_root``.
        runs_root: the root when ``run_dir`` is None.
    """
    if os.environ.get("RANK", "0") != "0":
        return []
    root = Path(run_dir).resolve().parent if run_dir is not None else Path(runs_root).resolve()
    if not (root / LOCK_FILE).is_file():
        return []
    try:
        return advance(root)
    except Exception as exc:  # noqa: BLE001 - the queue waits for the next advancer instead
        print(f"relpos: could not advance the run queue in {root}: {exc}", file=sys.stderr)
        return []


def submit(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    runs_root: str | Path = "checkpoints",
    *,
    base: str = "run",
    limit: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Queue a run of ``config_path`` and start it at once when a slot is free.

    Args:
        config_path: the YAML config the trainer gets (``--config``).
        overrides: ``"key=value"`` items (``--set``), see :func:`override_args`.
        runs_root: folder of run directories (created if missing).
        base: the run's name (already safe for a folder name); the directory is
            ``<base>-<YYYYmmdd-HHMMSS>`` (:func:`relpos.experiments.rundir.new_run_dir`).
        limit: most active runs; default :func:`max_concurrent_runs`.
        extra: more fields for ``status.json`` (e.g. the sweep a run belongs to).

    Returns:
        The new run directory, in state ``queued`` (waiting, or already handed to a trainer).

    Raises:
        FileNotFoundError: ``config_path`` is not a file.
        ValueError: an unsafe ``base``, a malformed override, a bad ``limit``.
    """
    config_path = Path(config_path).resolve()
    if not config_path.is_file():
        raise FileNotFoundError(f"config_path {os.fspath(config_path)!r} is not a file")
    args = override_args(list(overrides))
    if not isinstance(base, str) or not _BASE_RE.match(base):
        raise ValueError(f"base {base!r} is not allowed: 1-100 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    limit = max_concurrent_runs() if limit is None else check_int("limit", limit)
    root = Path(runs_root).resolve()
    with locked(root):
        run_dir = rundir.new_run_dir(root, base)
        fields = dict(extra or {})
        fields.update(state="queued", name=run_dir.name, config_path=str(config_path), overrides=args,
                      created_at=time.time(), pid=None)
        rundir.update_status(run_dir, **fields)
        _advance_locked(root, limit)
    return run_dir


# ----------------------------------------------------------------------------- the trainer's first write


def begin_run(run_dir: str | Path, *, resume: bool = False, **fields: Any) -> dict | None:
    """The trainer's first write to ``status.json`` (``fields``: state "running", its pid...), unless a
    cancel landed first.

    A cancel may land after the launcher handed the run to a trainer and before that trainer's first
    write; the trainer must then not start (its "running" would overwrite the "cancelled"). So in a
    root the queue manages (one holding ``.jobs.lock``) the check and the write happen under the
    queue's lock, which ``cancel_run`` also takes for its write.

    Args:
        run_dir: the run directory.
        resume: the trainer continues a run (``--resume``): a cancelled run may be resumed.
        **fields: what to merge into ``status.json``.

    Returns:
        The new status, or None when the run was cancelled before any trainer started it (state
        ``cancelled``, no ``started_at``, not resumed): the trainer must exit without training.
    """
    run_dir = Path(run_dir)
    root = run_dir.resolve().parent
    lock = locked(root) if (root / LOCK_FILE).is_file() else contextlib.nullcontext()
    with lock:
        status = read_json_safe(run_dir, rundir.STATUS_FILE) or {}
        if not resume and status.get("state") == "cancelled" and not status.get("started_at"):
            return None
        return rundir.update_status(run_dir, **fields)


# ----------------------------------------------------------------------------- cancel and reconcile


def cancel_queued(run_dir: str | Path) -> dict | None:
    """Cancel ``run_dir`` if it still waits in the queue (it then never trains).

    Returns:
        The new status (state ``cancelled``), or None when the run is not waiting (it runs, it was
        just handed to a trainer, or it has ended): stop it through its process instead.
    """
    run_dir = Path(run_dir)
    with locked(run_dir.resolve().parent):
        record = runfolder.read_run(run_dir, metrics=False)
        if record is None or not record.waiting:
            return None
        return rundir.update_status(run_dir, state="cancelled", eta_seconds=None, error=None,
                                    cancelled_at=time.time(), stop_reason="cancelled while queued")


def reconcile(root: str | Path, limit: int | None = None) -> list[str]:
    """Fail the runs whose process is gone, then advance the queue.

    A run ``running`` (or handed to a trainer) whose process is dead cannot make progress any more:
    typically the machine or the app restarted mid-run, or the trainer was killed. It is marked
    ``failed`` with the tail of its log as the error. A run that waits in the queue is left alone,
    however old (queued runs survive restarts).

    Returns:
        The names of the runs marked failed.
    """
    limit = max_concurrent_runs() if limit is None else check_int("limit", limit)
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    changed = []
    with locked(root):
        for record in runfolder.read_runs(root, metrics=False):
            try:
                if _fail_if_dead(record):
                    changed.append(record.path.name)
            except Exception as exc:  # noqa: BLE001 - one run folder (unwritable, vanished) never stops the others
                print(f"relpos: reconcile skipped {record.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        _advance_locked(root, limit)
    return changed


def _fail_if_dead(record: runfolder.RunRecord) -> bool:
    """Mark ``record``'s run failed if it is active, not waiting, and its process is gone; whether it did.

    Only a run whose state is known (valid) and active is judged; a broken folder whose state cannot
    be read is left as it is (the list shows it broken, with the reason).
    """
    if record.state not in ACTIVE_STATES or record.waiting:
        return False
    pid = record.pid
    if pid is None:
        reason = "the run was marked active but no process id was ever recorded"
    elif is_alive(pid, record.path):
        return False
    else:
        reason = f"the training process (pid {pid}) ended without recording a final state"
    # Re-read now that the process is known dead: it may have written its final state
    # between the first read and the liveness check (a normal finish, not a failure).
    latest = runfolder.read_run(record.path, metrics=False)
    if latest is None or latest.state not in ACTIVE_STATES:
        return False
    tail = log_tail(record.path, lines=15)
    error = reason + (f"; last log lines:\n{tail}" if tail else "")
    rundir.update_status(record.path, state="failed", error=error, eta_seconds=None)
    return True
