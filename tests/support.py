"""Helpers shared by the tests that start training processes (imported as ``support``)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from relpos import jobs
from relpos.experiments import runproc


def kill_runs(root: Path) -> None:
    """Finalizer: SIGKILL the process group of every run under ``root`` and reap it."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            pid = jobs.run_pid(child)
            if pid is not None:
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
