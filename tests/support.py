"""Helpers shared by the tests that start training processes (imported as ``support``)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from relpos import jobs
from relpos.experiments import runproc


def _started_here(pid: int) -> bool:
    """Whether ``pid`` is a child of this process (a trainer a test started, alive or a zombie)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False


def kill_runs(root: Path) -> None:
    """Finalizer: SIGKILL the process group of every run under ``root`` that a test started, and reap it.

    A run folder is untrusted data: its pid may be anyone's (1, this process, another user's trainer).
    Only a process group led by a child of this process, or by the run's own live trainer
    (:func:`relpos.jobs.is_alive` with the run folder), is killed; never pid 1 or this process's group.
    """
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            pid = jobs.run_pid(child)
            if pid is None or pid <= 1 or pid in (os.getpid(), os.getpgrp()):
                continue
            if _started_here(pid) or jobs.is_alive(pid, child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                jobs.is_alive(pid)  # reap our own children


def install_fake_trainer(tmp_path: Path, monkeypatch, source: str, module: str) -> Path:
    """Make ``jobs.start_run`` (and every advance of the run queue in this process) spawn
    ``python -m <module>`` (written from ``source``) instead of the real trainer; return a config
    file to start it with."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{module}.py").write_text(source)
    monkeypatch.setattr(runproc, "TRAIN_MODULE", module)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: fake\n")
    return config
