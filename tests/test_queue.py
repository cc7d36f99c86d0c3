"""The run queue (relpos.experiments.runqueue, through relpos.jobs and the training CLI).

A small fake trainer (written to tmp_path) stands in for the real one: it records when it ran and
with which thread settings, and, like the real trainer, advances the queue as its last act. No test
here calls an advancer while waiting unless it says so, so a queue that moves proves the trainers
move it. Every started process group is killed by a finalizer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from relpos import jobs
from relpos.experiments import rundir, runproc, runqueue, train

from support import install_fake_trainer, kill_runs, wait_for

FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, os, time
    from pathlib import Path
    from relpos.experiments import rundir, runproc, runqueue

    runproc.TRAIN_MODULE = "fake_queue_train"  # the runs this one starts are fakes too
    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--run-dir")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    run = Path(a.run_dir)
    rundir.update_status(run, state="running", pid=os.getpid(), running_at=time.time(),
                         threads=os.environ.get("RELPOS_THREADS"), omp=os.environ.get("OMP_NUM_THREADS"))
    try:
        if os.environ.get("FAKE_MODE") == "forever":
            while True:
                time.sleep(0.05)
        time.sleep(float(os.environ.get("FAKE_SECONDS", "0.2")))
        rundir.update_status(run, state="done", done_at=time.time())
    finally:
        runqueue.advance_after_run(run, None)
    """
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(config, runs root) with the fake trainer installed and a limit of 1."""
    config = install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_queue_train")
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "1")
    root = tmp_path / "runs"
    yield config, root
    kill_runs(root)


def state(run: Path) -> str | None:
    return (rundir.read_status(run) or {}).get("state")


def queued_by_hand(root: Path, name: str, config: Path, created: float) -> Path:
    """A run waiting in the queue, as submit leaves it (no process)."""
    run = root / name
    rundir.update_status(run, state="queued", name=name, config_path=str(config), overrides=[],
                         created_at=created, pid=None)
    return run


# ----------------------------------------------------------------------------- settings


def test_limit_and_threads_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(runqueue.MAX_RUNS_ENV, raising=False)
    assert runqueue.max_concurrent_runs() == 2
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "3")
    assert runqueue.max_concurrent_runs() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(runqueue.MAX_RUNS_ENV, bad)
        with pytest.raises(ValueError, match=runqueue.MAX_RUNS_ENV):
            runqueue.max_concurrent_runs()
    monkeypatch.setattr(runqueue, "_cores", lambda: 2)
    assert [runqueue.threads_per_run(n) for n in (1, 2, 3)] == [2, 1, 1]
    monkeypatch.setenv(runqueue.THREADS_ENV, "3")
    assert runqueue.threads_from_env() == 3
    monkeypatch.setenv(runqueue.THREADS_ENV, "x")
    assert runqueue.threads_from_env() is None


def test_the_trainer_takes_its_threads_from_the_queue(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setenv(runqueue.THREADS_ENV, "1")
    try:
        assert train.main(["--config", "configs/tiny.yaml", "--print-config"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_app_server_takes_the_threads_the_active_runs_leave(tmp_path, monkeypatch):
    monkeypatch.setattr(runqueue, "_cores", lambda: 4)
    # this process stands in for a live trainer (whether a pid is a run's trainer is runproc's test)
    monkeypatch.setattr(runqueue, "is_alive", lambda pid, run_dir=None: pid == os.getpid())
    root = tmp_path / "runs"
    root.mkdir()
    assert runqueue.active_runs(root) == 0 and runqueue.server_threads(root) == 4
    # training, waiting in the queue, finished: one is active
    rundir.update_status(root / "a", state="running", pid=os.getpid())
    rundir.update_status(root / "b", state="queued", created_at=time.time())
    rundir.update_status(root / "c", state="done", pid=os.getpid())
    assert runqueue.active_runs(root) == 1 and runqueue.server_threads(root) == 2  # 4 // (1 + 1)
    rundir.update_status(root / "d", state="running", pid=os.getpid())
    assert runqueue.server_threads(root) == 1  # 4 // (2 + 1)
    rundir.update_status(root / "e", state="running", pid=os.getpid())
    assert runqueue.server_threads(root) == 1  # never below 1


# ----------------------------------------------------------------------------- order, limit, cancel


def test_fifo_under_the_limit_and_finishing_trainers_advance(fake):
    config, root = fake
    runs = [jobs.start_run(config, runs_root=root, name=f"r{k}") for k in range(3)]
    assert [jobs.run_info(r)["queue_position"] for r in runs] == [None, 1, 2]  # the first one started
    rows = sorted(jobs.list_runs(root), key=lambda r: r["name"])
    assert [row["queue_position"] for row in rows] == [None, 1, 2]
    # Nobody but the trainers advances from here on.
    wait_for(lambda: all(state(r) == "done" for r in runs), what="every run done")
    status = [rundir.read_status(r) for r in runs]
    assert [s["running_at"] for s in status] == sorted(s["running_at"] for s in status)  # first in, first out
    for earlier, later in zip(status, status[1:]):
        assert earlier["done_at"] <= later["running_at"]  # never two at once with a limit of 1
    assert {s["threads"] for s in status} == {str(runqueue.threads_per_run(1))}
    assert {s["omp"] for s in status} == {str(runqueue.threads_per_run(1))}


def test_a_limit_of_two_runs_two_and_a_cancel_frees_a_slot(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "2")
    monkeypatch.setenv("FAKE_MODE", "forever")
    runs = [jobs.start_run(config, runs_root=root) for _ in range(4)]
    assert [jobs.run_pid(r) is not None for r in runs] == [True, True, False, False]
    assert jobs.queue_positions(root) == {runs[2].name: 1, runs[3].name: 2}
    assert jobs.cancel_run(runs[0], grace=5)["state"] == "cancelled"
    assert jobs.run_pid(runs[2]) is not None and jobs.run_pid(runs[3]) is None
    assert jobs.queue_positions(root) == {runs[3].name: 1}


def test_cancel_while_queued_never_trains(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    first = jobs.start_run(config, runs_root=root)
    waiting = jobs.start_run(config, runs_root=root)
    status = jobs.cancel_run(waiting, runs_root=root)
    assert status["state"] == "cancelled" and status["stop_reason"] == "cancelled while queued"
    assert jobs.cancel_run(first, grace=5)["state"] == "cancelled"  # frees the slot: nothing waits
    assert jobs.advance_queue(root) == []
    assert state(waiting) == "cancelled"
    assert jobs.run_pid(waiting) is None and not (waiting / runproc.OUTPUT_LOG).exists()


def test_cancel_racing_the_start_is_one_or_the_other(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    root.mkdir()
    for k in range(5):
        run = queued_by_hand(root, f"q{k}", config, time.time() + k)
        barrier = threading.Barrier(2)
        results = {}

        def cancel(run=run, barrier=barrier, results=results):
            barrier.wait()
            results["cancel"] = runqueue.cancel_queued(run)

        def start(barrier=barrier, results=results):
            barrier.wait()
            results["start"] = runqueue.advance(root, limit=10)

        threads = [threading.Thread(target=cancel), threading.Thread(target=start)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        started = run in results["start"]
        assert started != (results["cancel"] is not None)  # exactly one of the two won
        assert state(run) == ("queued" if started else "cancelled")
        assert (jobs.run_pid(run) is not None) == started


# ----------------------------------------------------------------------------- two advancers, restarts


def test_two_advancers_never_start_one_run_twice(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    root.mkdir()
    runs = [queued_by_hand(root, f"q{k}", config, 1000.0 + k) for k in range(6)]
    barrier = threading.Barrier(6)
    started: list[Path] = []

    def advance():
        barrier.wait()
        started.extend(runqueue.advance(root, limit=3))

    threads = [threading.Thread(target=advance) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(started) == runs[:3]  # the three oldest, each started once
    pids = [jobs.run_pid(r) for r in runs]
    assert all(p is not None for p in pids[:3]) and len(set(pids[:3])) == 3
    assert pids[3:] == [None, None, None]


ADVANCER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from relpos.experiments import runproc, runqueue
    runproc.TRAIN_MODULE = "fake_queue_train"
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    print(" ".join(p.name for p in runqueue.advance(sys.argv[1], limit=2)), flush=True)
    """
)


def test_two_advancing_processes_never_start_one_run_twice(fake, monkeypatch, tmp_path):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    root.mkdir()
    runs = [queued_by_hand(root, f"q{k}", config, 1000.0 + k) for k in range(4)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", ADVANCER, str(root), str(go)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ)) for _ in range(3)]
    time.sleep(1.0)  # let every interpreter reach the spin loop
    go.touch()
    names = " ".join(p.communicate(timeout=120)[0] for p in procs).split()
    assert sorted(names) == ["q0", "q1"]
    assert [jobs.run_pid(r) is not None for r in runs] == [True, True, False, False]


def test_a_queued_run_survives_a_restart(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    blocker = jobs.start_run(config, runs_root=root)
    wait_for(lambda: state(blocker) == "running", what="the first run")
    old = queued_by_hand(root, "old", config, time.time() - 3600)  # queued an hour ago, no process
    assert jobs.reconcile_runs(root) == []  # the app restarts: waiting is not dead
    assert state(old) == "queued" and jobs.run_pid(old) is None
    jobs.cancel_run(blocker, grace=5)  # frees the slot: the old run starts
    wait_for(lambda: state(old) == "running", what="the queued run to start")


def test_reconcile_fails_a_dead_trainer_and_starts_the_next(fake, monkeypatch):
    config, root = fake
    monkeypatch.setenv("FAKE_MODE", "forever")
    dead = jobs.start_run(config, runs_root=root)
    waiting = jobs.start_run(config, runs_root=root)
    wait_for(lambda: state(dead) == "running", what="the first run")
    os.killpg(jobs.run_pid(dead), signal.SIGKILL)  # kill -9: no final state, no advance
    wait_for(lambda: not jobs.is_alive(jobs.run_pid(dead), dead), what="the kill")
    assert state(waiting) == "queued" and jobs.run_pid(waiting) is None
    assert jobs.reconcile_runs(root) == [dead.name]
    assert state(dead) == "failed" and jobs.run_pid(waiting) is not None


def test_advance_after_run_only_in_a_managed_root(tmp_path, monkeypatch):
    run = tmp_path / "plain" / "run"
    run.mkdir(parents=True)
    assert runqueue.advance_after_run(run, None) == []
    assert not (tmp_path / "plain" / runqueue.LOCK_FILE).exists()  # no lock file left in a plain folder
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "plain" / runqueue.LOCK_FILE).touch()
    assert runqueue.advance_after_run(run, None) == []  # only rank 0 advances


# ----------------------------------------------------------------------------- the CLI


def test_cli_queue_prints_the_run_and_refuses_bad_configs(fake, capsys):
    _, root = fake
    assert train.main(["--config", "configs/tiny.yaml", "--queue", "--runs-root", str(root),
                       "--set", "train.epochs=1"]) == 0
    run = Path(capsys.readouterr().out.strip())
    assert run.parent == root.resolve() and run.name.startswith("tiny-")
    status = rundir.read_status(run)
    assert status["overrides"] == ["train.epochs=1"]
    wait_for(lambda: state(run) == "done", what="the queued run")
    assert train.main(["--config", "configs/tiny.yaml", "--queue", "--runs-root", str(root),
                       "--set", "model.nonsense=1"]) == 2
    assert "model.nonsense" in capsys.readouterr().err
    assert train.main(["--config", "configs/tiny.yaml", "--queue", "--resume"]) == 2
    assert [p.name for p in runqueue.run_dirs(root)] == [run.name]  # nothing else was queued
