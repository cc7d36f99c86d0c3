"""Background training runs: start, list, cancel and reconcile them through their run directories.

The filesystem is the job registry (see :mod:`relpos.experiments.rundir`). A run is one
``python -m relpos.experiments.train --config ... --run-dir ...`` process in its own session (so its
process group can be stopped as a whole, DataLoader workers included). Nothing here keeps state in
memory that a restart would lose: the app can restart, a second tab can attach, and every run is
still listed and can still be cancelled.

Files this module adds to a run directory::

    <run_dir>/output.log    the process's stdout and stderr (tracebacks end up here)
    <run_dir>/process.json  {"pid", "command", "started_at"} of the launched process

Safety: run directories are direct children of ``runs_root``; symlinks (a run dir, or a file in
it) are never followed out of ``runs_root``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from relpos._validation import check_float, check_int
from relpos.experiments import rundir

__all__ = [
    "ACTIVE_STATES",
    "CONFIGS_DIR_ENV",
    "OUTPUT_LOG",
    "PROCESS_FILE",
    "RUNS_ROOT_ENV",
    "RunLimitError",
    "cancel_run",
    "configs_dir",
    "default_runs_root",
    "is_alive",
    "list_presets",
    "list_runs",
    "log_tail",
    "preset_path",
    "reconcile_runs",
    "run_info",
    "run_pid",
    "sanitize_name",
    "start_run",
]

#: Environment variable naming the folder that holds run directories (default ``checkpoints``).
RUNS_ROOT_ENV = "RELPOS_RUNS_ROOT"
#: Environment variable naming the folder of preset configs (default: ``configs/`` of the repo).
CONFIGS_DIR_ENV = "RELPOS_CONFIGS_DIR"
OUTPUT_LOG = "output.log"
PROCESS_FILE = "process.json"
LOCK_FILE = ".jobs.lock"
TRAIN_MODULE = "relpos.experiments.train"
ACTIVE_STATES = frozenset({"queued", "running"})

_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Popen objects of the runs this process started, so finished children are reaped (not zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap_children() -> None:
    """Collect the exit status of finished runs this process started (no zombies are left)."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)


class RunLimitError(RuntimeError):
    """Starting a run would exceed the limit on concurrent runs."""


def default_runs_root() -> Path:
    """``$RELPOS_RUNS_ROOT`` or ``checkpoints``."""
    return Path(os.environ.get(RUNS_ROOT_ENV) or "checkpoints")


def configs_dir() -> Path:
    """``$RELPOS_CONFIGS_DIR``, else ``configs/`` next to the package, else ``./configs``."""
    env = os.environ.get(CONFIGS_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1] / "configs"
    return repo if repo.is_dir() else Path("configs")


def list_presets(folder: str | Path | None = None) -> list[str]:
    """Names of the preset configs (``<name>.yaml`` in ``folder``), ``default`` first."""
    folder = Path(folder) if folder is not None else configs_dir()
    names = sorted(p.stem for p in folder.glob("*.yaml") if p.is_file() and not p.is_symlink())
    return sorted(names, key=lambda n: (n != "default", n))


def preset_path(preset_or_path: str | Path, folder: str | Path | None = None) -> Path:
    """The config file of a preset name (``"tiny"``) or an explicit ``.yaml`` path.

    Raises:
        FileNotFoundError: neither a preset of that name nor a file at that path exists; the
            message lists the presets.
    """
    if not isinstance(preset_or_path, (str, os.PathLike)):
        raise TypeError(
            f"preset_or_config_path must be a preset name or a path, got {type(preset_or_path).__name__}"
        )
    text = os.fspath(preset_or_path)
    folder = Path(folder) if folder is not None else configs_dir()
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    path = Path(text)
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"preset_or_config_path {text!r} is neither a preset in {folder} "
        f"({', '.join(list_presets(folder)) or 'none found'}) nor a config file"
    )


def sanitize_name(name: str | None, default: str = "run", max_len: int = 48) -> str:
    """A file-name-safe run name: letters, digits, ``.``, ``_``, ``-``; never ``.``/``..``/empty."""
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    clean = _NAME_RE.sub("-", name).strip(".-_")[:max_len].strip(".-_")
    return clean or default


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
        if path.resolve().parent != root:
            raise ValueError(f"run_dir {os.fspath(run_dir)!r} is not a run directory inside {root}")
    return path


def _safe_file(run_dir: Path, name: str) -> Path | None:
    """``run_dir / name`` if it is a regular file that is not a symlink, else None."""
    path = run_dir / name
    if path.is_symlink() or not path.is_file():
        return None
    return path


def _read_json_safe(run_dir: Path, name: str) -> dict | None:
    path = _safe_file(run_dir, name)
    return rundir.read_json(path) if path is not None else None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root/.jobs.lock`` (serializes start and reconcile across processes)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)  # JSON is YAML: the CLI's parser reads it back
    return str(value)


def _override_args(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"train.epochs": 2}`` or ``["train.epochs=2"]`` -> ``["train.epochs=2"]`` (keys checked)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        pairs = [(str(k), _format_value(v)) for k, v in overrides.items()]
    elif isinstance(overrides, Sequence) and not isinstance(overrides, (str, bytes)):
        pairs = []
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"overrides items must be 'key.path=value' strings, got {item!r}")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v))
    else:
        raise TypeError(f"overrides must be a dict, a list of 'key=value' strings or None, got {overrides!r}")
    out = []
    for k, v in pairs:
        if not _KEY_RE.match(k):
            raise ValueError(f"override key {k!r} must be a dotted name like 'train.epochs'")
        if "\n" in v or "\x00" in v:
            raise ValueError(f"override value for {k!r} must be a single line, got {v!r}")
        out.append(f"{k}={v}")
    return out


def _pid_matches(pid: int, run_dir: Path | None) -> bool:
    """True unless /proc shows that ``pid`` is a zombie or an unrelated process (pid reuse)."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if run_dir is not None:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
            if TRAIN_MODULE not in cmdline or run_dir.name not in cmdline:
                return False
    except (OSError, IndexError):
        pass  # no /proc (not Linux) or the process just ended: fall back on kill(0)
    return True


def is_alive(pid: int | None, run_dir: str | Path | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie; when ``run_dir`` is given, that run's trainer)."""
    if pid is None or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:  # reaps it
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return _pid_matches(pid, Path(run_dir) if run_dir is not None else None)


def run_pid(run_dir: str | Path) -> int | None:
    """The pid of a run's process: from ``process.json`` (the launcher's), else ``status.json``."""
    run_dir = Path(run_dir)
    for name in (PROCESS_FILE, rundir.STATUS_FILE):
        data = _read_json_safe(run_dir, name) or {}
        pid = data.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            return pid
    return None


def log_tail(run_dir: str | Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of the run's ``output.log`` (else ``train.log``); ``""`` if none."""
    lines = check_int("lines", lines)
    run_dir = Path(run_dir)
    for name in (OUTPUT_LOG, rundir.LOG_FILE):
        path = _safe_file(run_dir, name)
        if path is None:
            continue
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
        tail = text.splitlines()[-lines:]
        if tail:
            return "\n".join(tail)
    return ""


def _active_count(root: Path) -> int:
    count = 0
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        status = _read_json_safe(child, rundir.STATUS_FILE) or {}
        if status.get("state") not in ACTIVE_STATES:
            continue
        pid = run_pid(child)
        if pid is None or is_alive(pid, child):
            count += 1
    return count


def _unique_run_dir(root: Path, base: str) -> Path:
    """Create and return a new directory ``root/base[-k]`` (``os.mkdir`` is atomic)."""
    for k in range(1, 10_000):
        path = root / (base if k == 1 else f"{base}-{k}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a unique run directory for {base!r} in {root}")


def start_run(
    preset_or_config_path: str | Path,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    runs_root: str | Path = "checkpoints",
    name: str | None = None,
    max_concurrent: int = 2,
) -> Path:
    """Start a training run in the background and return its run directory.

    Args:
        preset_or_config_path: a preset name (``"default"``, ``"tiny"``: ``configs/<name>.yaml``)
            or a path to a YAML config.
        overrides: ``{"train.epochs": 3}`` or ``["train.epochs=3"]``, passed as ``--set``.
        runs_root: folder of run directories (created if missing).
        name: run name (sanitized); defaults to the preset's name. The directory is
            ``<YYYYmmdd-HHMMSS>-<name>`` with ``-2``, ``-3``... appended when taken.
        max_concurrent: most runs queued or running at once in ``runs_root``.

    Returns:
        The new run directory. Its ``status.json`` says ``queued`` before the process starts;
        the trainer then moves it on (``running`` ... ``done``/``failed``/``cancelled``).

    Raises:
        RunLimitError: ``max_concurrent`` runs are already active.
        FileNotFoundError: no such preset or config file.
        ValueError: a malformed override.
    """
    config_path = preset_path(preset_or_config_path).resolve()
    args = _override_args(overrides)
    max_concurrent = check_int("max_concurrent", max_concurrent)
    base = sanitize_name(name if name else config_path.stem)
    root = _resolve_root(runs_root)
    with _locked(root):
        active = _active_count(root)
        if active >= max_concurrent:
            raise RunLimitError(
                f"{active} run(s) are already queued or running (limit {max_concurrent}): "
                "wait for one to finish or cancel one, then start again"
            )
        run_dir = _unique_run_dir(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{base}")
        now = time.time()
        rundir.update_status(
            run_dir,
            state="queued",
            name=run_dir.name,
            config_path=str(config_path),
            overrides=args,
            created_at=now,
            pid=None,
        )
        command = [sys.executable, "-m", TRAIN_MODULE, "--config", str(config_path), "--run-dir", str(run_dir)]
        for arg in args:
            command += ["--set", arg]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            with open(run_dir / OUTPUT_LOG, "ab") as out:
                proc = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                    close_fds=True,
                )
        except OSError as exc:
            rundir.update_status(run_dir, state="failed", error=f"could not start the trainer: {exc}")
            raise
        _CHILDREN[proc.pid] = proc
        rundir.atomic_write_json(
            run_dir / PROCESS_FILE, {"pid": proc.pid, "command": command, "started_at": now}
        )
    return run_dir


def _progress(status: Mapping[str, Any]) -> float:
    if status.get("state") == "done":
        return 1.0
    for num, den in (("step", "total_steps"), ("epoch", "epochs")):
        n, d = status.get(num), status.get(den)
        if isinstance(n, (int, float)) and isinstance(d, (int, float)) and d > 0:
            return float(min(1.0, max(0.0, n / d)))
    return 0.0


def _accuracy(status: Mapping[str, Any], records: list[dict]) -> float | None:
    for key in ("eval_accuracy", "val_accuracy", "best_accuracy", "accuracy"):
        value = status.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    for record in reversed(records):
        if record.get("kind", "epoch") != "epoch":
            continue
        for key in ("eval_accuracy", "val_accuracy", "accuracy", "train_accuracy"):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def run_info(run_dir: str | Path) -> dict | None:
    """One row of :func:`list_runs` for ``run_dir`` (None when it has no readable status)."""
    run_dir = Path(run_dir)
    status = _read_json_safe(run_dir, rundir.STATUS_FILE)
    if status is None:
        return None
    metrics_path = _safe_file(run_dir, rundir.METRICS_FILE)
    records = rundir.read_metrics(run_dir) if metrics_path is not None else []
    state = status.get("state", "queued")
    pid = run_pid(run_dir)
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "state": state,
        "progress": _progress(status),
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs"),
        "accuracy": _accuracy(status, records),
        "eta_seconds": status.get("eta_seconds"),
        "updated": status.get("updated_at"),
        "created": status.get("created_at") or status.get("started_at"),
        "error": status.get("error"),
        "config_path": status.get("config_path"),
        "overrides": list(status.get("overrides") or []),
        "pid": pid,
        "alive": bool(state in ACTIVE_STATES and is_alive(pid, run_dir)),
    }


def list_runs(runs_root: str | Path = "checkpoints") -> list[dict]:
    """Every run in ``runs_root``, newest first.

    Each row: ``name``, ``path``, ``state``, ``progress`` (0..1), ``epoch``, ``epochs``,
    ``accuracy`` (latest validation accuracy or None), ``eta_seconds``, ``updated`` (epoch
    seconds), ``created``, ``error``, ``config_path``, ``overrides`` (the ``--set`` list),
    ``pid``, ``alive``. Directories without a ``status.json``
    (e.g. ``uploads/``) and symlinks are skipped.
    """
    _reap_children()
    root = Path(runs_root)
    if not root.is_dir():
        return []
    rows = []
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        info = run_info(child)
        if info is not None:
            rows.append(info)
    rows.sort(key=lambda r: (r["created"] or 0, r["name"]), reverse=True)
    return rows


def _finish_if_active(run_dir: Path, **fields: Any) -> dict:
    status = _read_json_safe(run_dir, rundir.STATUS_FILE) or {}
    if status.get("state") in rundir.TERMINAL_STATES:
        return status
    return rundir.update_status(run_dir, **fields)


def cancel_run(run_dir: str | Path, grace: float = 10.0, runs_root: str | Path | None = None) -> dict:
    """Stop a run: SIGTERM to its process group, SIGKILL after ``grace`` seconds.

    The run always ends in a terminal state: when the trainer wrote none before dying, the run
    is marked ``cancelled``. A run that already finished is left as it is.

    Args:
        run_dir: the run directory.
        grace: seconds between SIGTERM and SIGKILL.
        runs_root: when given, ``run_dir`` must be a direct child of it.

    Returns:
        The final status.
    """
    grace = check_float("grace", grace, minimum=0.0)
    path = _checked_run_dir(run_dir, runs_root)
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
    return _finish_if_active(path, state="cancelled", eta_seconds=None)


def reconcile_runs(runs_root: str | Path = "checkpoints", queued_timeout: float = 120.0) -> list[str]:
    """Mark runs whose process is gone as ``failed`` (with the log tail as the error).

    A run in state ``running`` or ``queued`` whose pid is dead (or a ``queued`` run with no pid for
    longer than ``queued_timeout`` seconds) cannot make progress any more: typically the machine
    or the app restarted mid-run. Returns the names of the runs changed.
    """
    root = _resolve_root(runs_root)
    if not root.is_dir():
        return []
    changed = []
    with _locked(root):
        for child in sorted(root.iterdir()):
            if child.is_symlink() or not child.is_dir():
                continue
            status = _read_json_safe(child, rundir.STATUS_FILE)
            if not status or status.get("state") not in ACTIVE_STATES:
                continue
            pid = run_pid(child)
            if pid is None:
                created = status.get("created_at") or status.get("updated_at") or 0
                if time.time() - float(created) < queued_timeout:
                    continue
                reason = "the run never started (no process id recorded)"
            elif is_alive(pid, child):
                continue
            else:
                reason = f"the training process (pid {pid}) ended without recording a final state"
            # Re-read now that the process is known dead: it may have written its final state
            # between the first read and the liveness check (a normal finish, not a failure).
            latest = _read_json_safe(child, rundir.STATUS_FILE) or {}
            if latest.get("state") not in ACTIVE_STATES:
                continue
            tail = log_tail(child, lines=15)
            error = reason + (f"; last log lines:\n{tail}" if tail else "")
            rundir.update_status(child, state="failed", error=error, eta_seconds=None)
            changed.append(child.name)
    return changed
