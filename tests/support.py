"""Helpers shared by the tests that start training processes (imported as ``support``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from relpos import jobs
from relpos.experiments import rundir, runproc, runqueue


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


def sweep_trainer_source(module: str) -> str:
    """A fake trainer for sweeps (install with :func:`install_fake_trainer` as ``module``): best
    accuracy = 0.30 (none) / 0.80 (absolute) / 0.95 (2d) / 0.5 (any other scheme) + 0.01 * seed,
    epoch lines at steps 10 and 20; the scheme named by ``FAKE_FAIL_SCHEME`` fails instead."""
    return textwrap.dedent(
        f"""
        import argparse, os, time
        from pathlib import Path
        from relpos.experiments import rundir, runproc, runqueue

        runproc.TRAIN_MODULE = {module!r}
        BASE = {{"none": 0.30, "absolute": 0.80, "2d": 0.95}}
        p = argparse.ArgumentParser()
        p.add_argument("--config"); p.add_argument("--run-dir")
        p.add_argument("--set", action="append", default=[])
        a = p.parse_args()
        run = Path(a.run_dir)
        sets = dict(item.split("=", 1) for item in a.set)
        scheme, seed = sets.get("model.scheme", "2d"), int(sets.get("seed", 0))
        t0 = time.time()
        rundir.update_status(run, state="running", pid=os.getpid(), started_at=t0, sets=a.set)
        try:
            if scheme == os.environ.get("FAKE_FAIL_SCHEME"):
                rundir.update_status(run, state="failed", error="RuntimeError: boom\\ntraceback...")
            else:
                best = BASE.get(scheme, 0.5) + 0.01 * seed
                for step, acc in ((10, best / 2), (20, best)):
                    rundir.append_metrics(run, {{"kind": "epoch", "step": step, "eval_accuracy": acc}})
                rundir.update_status(run, state="done", best_accuracy=best, started_at=t0,
                                     finished_at=t0 + 2.5, params=1234)
        finally:
            runqueue.advance_after_run(run, None)
        """
    )


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` every ``every`` seconds until it returns something true (returned), or fail
    after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def slot_taken(root: Path, monkeypatch, seconds: int = 120):
    """One run slot (``MAX_RUNS_ENV = 1``), taken by a sleeper that looks like a running trainer in
    ``root / "busy"``: every new run stays queued. Yields that run folder; the sleeper is killed after."""
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "1")
    run = root / "busy"
    sleeper = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})", runproc.TRAIN_MODULE,
                                run.name])
    rundir.update_status(run, state="running", created_at=time.time() - 100, pid=sleeper.pid)
    try:
        yield run
    finally:
        sleeper.kill()
        sleeper.wait()
