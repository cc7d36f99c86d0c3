"""A run's trainer process, seen from its run directory: its command line, its pid, whether it lives.

A run is one ``python -m relpos.experiments.train --config ... --run-dir ...`` process in its own
session (so its process group can be stopped as a whole, DataLoader workers included). Files of a
run directory read here::

    status.json   the trainer's status (:mod:`relpos.experiments.rundir`); "pid" once it runs
    process.json  {"pid", "command", "started_at"} of the launched process (the launcher's)
    output.log    the process's stdout and stderr (tracebacks end up here)

Safety: no file is read through a symlink (:func:`relpos.experiments.rundir.read_run_file`), run
directories that are symlinks are skipped, and a pid is only believed in ``[1, PID_MAX]``.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relpos._validation import check_int
from relpos.experiments import rundir
from relpos.experiments.config import format_override

__all__ = [
    "OUTPUT_LOG",
    "PID_MAX",
    "PROCESS_FILE",
    "TRAIN_MODULE",
    "check_pid",
    "is_alive",
    "log_tail",
    "override_args",
    "read_json_safe",
    "run_dirs",
    "run_pid",
    "safe_file",
    "trainer_command",
]

OUTPUT_LOG = "output.log"
PROCESS_FILE = "process.json"
#: The largest pid on any Linux machine (the kernel's PID_MAX_LIMIT, 2**22); a larger "pid" in a run
#: folder is not one (``os.kill`` would raise OverflowError on 2**70).
PID_MAX = 2**22
#: The module a run's process executes (``python -m TRAIN_MODULE``); tests swap in a fake trainer.
TRAIN_MODULE = "relpos.experiments.train"
# Command lines of trainers that may not name their run directory (the CLI's default one).
_TRAINER_MARKS = ("relpos-train",)
# A trainer started this long after its run last wrote status.json is someone else (a reused pid).
_PID_START_SLACK_S = 2.0
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ----------------------------------------------------------------------------- the command line


def override_args(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"train.epochs": 2}`` or ``["train.epochs=2"]`` -> ``["train.epochs=2"]`` (checked).

    Values of a mapping are written by :func:`relpos.experiments.config.format_override`, so that
    the trainer's ``--set`` parser (YAML) reads them back.

    Raises:
        TypeError: ``overrides`` is not a mapping, a list of strings or None.
        ValueError: a key that is not a dotted name, an item without ``=``, a multi-line value.
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        pairs = [tuple(format_override(str(k), v).split("=", 1)) for k, v in overrides.items()]
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


def trainer_command(config_path: str | Path, run_dir: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """The command that trains ``run_dir``: ``python -m TRAIN_MODULE --config C --run-dir D --set ...``."""
    command = [sys.executable, "-m", TRAIN_MODULE, "--config", os.fspath(config_path),
               "--run-dir", os.fspath(run_dir)]
    for arg in override_args(list(overrides)):
        command += ["--set", arg]
    return command


# ----------------------------------------------------------------------------- reading a run directory


def safe_file(run_dir: Path, name: str) -> Path | None:
    """``run_dir / name`` if it is a regular file that is not a symlink, else None."""
    path = Path(run_dir) / name
    try:
        return path if stat.S_ISREG(path.lstat().st_mode) else None
    except OSError:
        return None


def read_json_safe(run_dir: Path, name: str) -> dict | None:
    """The JSON object in ``run_dir / name`` (never through a symlink, at most
    :data:`relpos.experiments.rundir.MAX_JSON_BYTES`), or None when missing or unreadable."""
    try:
        return rundir.read_json_object(Path(run_dir) / name)
    except rundir.RunFileError:
        return None


def run_dirs(root: str | Path) -> list[Path]:
    """The direct sub-folders of ``root`` that are not symlinks, sorted by name ([] if no root).

    Names may be any bytes (``os.fsencode(path.name)`` gives them back); sorted by those bytes.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        try:
            if stat.S_ISDIR(p.lstat().st_mode):
                found.append(p)
        except OSError:  # vanished meanwhile
            continue
    return sorted(found, key=lambda p: os.fsencode(p.name))


def check_pid(value: Any) -> int | None:
    """``value`` if it is a pid (an int, not a bool, in ``[1, PID_MAX]``), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= PID_MAX:
        return value
    return None


# ----------------------------------------------------------------------------- the process


def run_pid(run_dir: str | Path) -> int | None:
    """The pid of a run's process: from ``process.json`` (the launcher's), else ``status.json``."""
    run_dir = Path(run_dir)
    for name in (PROCESS_FILE, rundir.STATUS_FILE):
        pid = check_pid((read_json_safe(run_dir, name) or {}).get("pid"))
        if pid is not None:
            return pid
    return None


def _start_time(stat_fields: list[str]) -> float | None:
    """Epoch seconds at which a process started, from the fields of ``/proc/<pid>/stat`` after ")"."""
    try:
        ticks = int(stat_fields[19])  # field 22, starttime, in clock ticks since boot
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_matches(pid: int, run_dir: Path | None) -> bool:
    """True unless ``/proc`` shows that ``pid`` is exiting, a zombie, or not this run's trainer (pid reuse).

    A trainer whose command line names the run directory is the run's. One that does not (a CLI run
    in its default folder) is the run's if it started before the run last wrote ``status.json``: a
    process that took over a dead trainer's pid started after the trainer's last write.
    """
    proc = Path(f"/proc/{pid}")
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return not Path("/proc/self").is_dir()  # no /proc (not Linux): trust kill(0); else it just ended
    if fields[0] in ("Z", "X") or not cmdline:  # a zombie, or exiting (its memory, cmdline included, is gone)
        return False
    if run_dir is None:
        return True
    if TRAIN_MODULE not in cmdline and not any(mark in cmdline for mark in _TRAINER_MARKS):
        return False
    if run_dir.name in cmdline:
        return True
    started = _start_time(fields)
    last_write = (read_json_safe(run_dir, rundir.STATUS_FILE) or {}).get("updated_at")
    if started is None or isinstance(last_write, bool) or not isinstance(last_write, (int, float)):
        return True
    return started <= last_write + _PID_START_SLACK_S


def is_alive(pid: int | None, run_dir: str | Path | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie; when ``run_dir`` is given, that run's trainer)."""
    if check_pid(pid) is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return _pid_matches(pid, Path(run_dir) if run_dir is not None else None)


def log_tail(run_dir: str | Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of the run's ``output.log`` (else ``train.log``); ``""`` if none."""
    lines = check_int("lines", lines)
    run_dir = Path(run_dir)
    for name in (OUTPUT_LOG, rundir.LOG_FILE):
        try:
            got = rundir.read_run_file(run_dir / name, max_bytes, tail=True)
        except rundir.RunFileError:
            continue
        if got is None:
            continue
        text = got[0].decode("utf-8", errors="replace")
        tail = text.splitlines()[-lines:]
        if tail:
            return "\n".join(tail)
    return ""
