"""Background runs: start, list, cancel, reconcile (relpos.jobs).

Most tests swap the trainer for a small fake one (written to tmp_path) whose behaviour is set by an
environment variable, so each state transition is deterministic and fast. One slow test drives the
real trainer on configs/tiny.yaml. Every started process group is killed by a finalizer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from relpos import jobs
from relpos.experiments import rundir

from support import install_fake_trainer

FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, time
    from relpos.experiments import rundir

    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--run-dir"); p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    mode = os.environ.get("FAKE_MODE", "done")
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == "graceful":
        def stop(*_):
            rundir.update_status(a.run_dir, state="cancelled", note="trainer")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
    rundir.update_status(a.run_dir, state="running", epoch=0, epochs=3, pid=os.getpid(), sets=a.set)
    print("fake trainer started", a.set, flush=True)
    if mode == "crash":
        print("boom: something broke", flush=True)
        sys.exit(3)
    epochs = 3 if mode == "done" else 10_000
    for e in range(1, epochs + 1):
        time.sleep(0.05)
        rundir.append_metrics(a.run_dir, {"kind": "epoch", "epoch": e, "val_accuracy": e / 4})
        rundir.update_status(a.run_dir, epoch=e)
    rundir.update_status(a.run_dir, state="done")
    """
)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    return install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_train")


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    yield root
    # Finalizer: no process group started here survives the test.
    for child in root.glob("*"):
        pid = jobs.run_pid(child) if child.is_dir() else None
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            jobs.is_alive(pid)  # reap


def wait_state(run_dir, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rundir.read_status(run_dir) or {}
        if status.get("state") in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} did not reach {states}: {rundir.read_status(run_dir)}")


def test_override_args():
    assert jobs._override_args({"train.epochs": 2, "model.use_relative_position": False}) == [
        "train.epochs=2",
        "model.use_relative_position=false",
    ]
    assert jobs._override_args(["a.b=1"]) == ["a.b=1"]
    with pytest.raises(ValueError, match="dotted name"):
        jobs._override_args({"a;rm -rf": 1})
    with pytest.raises(ValueError, match="key.path=value"):
        jobs._override_args(["novalue"])
    with pytest.raises(TypeError, match="overrides"):
        jobs._override_args("a.b=1")


def test_preset_path(tmp_path):
    (tmp_path / "default.yaml").write_text("a: 1\n")
    (tmp_path / "tiny.yaml").write_text("a: 2\n")
    assert jobs.list_presets(tmp_path) == ["default", "tiny"]
    assert jobs.preset_path("tiny", tmp_path) == tmp_path / "tiny.yaml"
    assert jobs.preset_path(str(tmp_path / "tiny.yaml"), tmp_path) == tmp_path / "tiny.yaml"
    with pytest.raises(FileNotFoundError, match="default, tiny"):
        jobs.preset_path("nope", tmp_path)


def test_start_run_reaches_done(fake_trainer, runs_root):
    run_dir = jobs.start_run(fake_trainer, {"train.epochs": 3}, runs_root=runs_root, name="a b")
    assert run_dir.parent == runs_root.resolve()
    assert run_dir.name.startswith("a-b-")
    status = wait_state(run_dir, {"done"})
    assert status["sets"] == ["train.epochs=3"]
    rows = jobs.list_runs(runs_root)
    assert [r["name"] for r in rows] == [run_dir.name]
    assert rows[0]["state"] == "done" and rows[0]["progress"] == 1.0
    assert rows[0]["accuracy"] == pytest.approx(0.75)
    assert "fake trainer started" in jobs.log_tail(run_dir)
    # The finished child is reaped by the launcher (a waiter thread): no zombie left behind.
    pid = jobs.run_pid(run_dir)

    def zombie() -> bool:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        return False

    deadline = time.monotonic() + 10
    while zombie() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not zombie()


def test_concurrency_limit_queues_and_unique_dirs(fake_trainer, runs_root, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "forever")
    first = jobs.start_run(fake_trainer, runs_root=runs_root, name="same", max_concurrent=2)
    second = jobs.start_run(fake_trainer, runs_root=runs_root, name="same", max_concurrent=2)
    assert first != second
    third = jobs.start_run(fake_trainer, runs_root=runs_root, name="same", max_concurrent=2)  # not refused
    assert jobs.run_pid(third) is None and jobs.run_info(third)["queue_position"] == 1
    assert jobs.cancel_run(first, grace=5)["state"] == "cancelled"
    assert jobs.run_pid(third) is not None  # the freed slot went to the queued run
    for d in (second, third):
        assert jobs.cancel_run(d, grace=5)["state"] == "cancelled"


def test_concurrent_starts_never_share_a_dir(fake_trainer, runs_root, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "forever")
    results = []

    def start():
        results.append(jobs.start_run(fake_trainer, runs_root=runs_root, name="race", max_concurrent=2))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 4
    assert sorted(jobs.run_pid(d) is not None for d in results) == [False, False, True, True]
    for d in results:
        jobs.cancel_run(d, grace=5)


@pytest.mark.parametrize(
    "mode, expected_note",
    [("forever", None), ("graceful", "trainer"), ("ignore_term", None)],
)
def test_cancel_ends_cancelled(fake_trainer, runs_root, monkeypatch, mode, expected_note):
    monkeypatch.setenv("FAKE_MODE", mode)
    run_dir = jobs.start_run(fake_trainer, runs_root=runs_root)
    wait_state(run_dir, {"running"})
    pid = jobs.run_pid(run_dir)
    status = jobs.cancel_run(run_dir, grace=0.5, runs_root=runs_root)
    assert status["state"] == "cancelled"
    assert status.get("note") == expected_note
    assert not jobs.is_alive(pid)
    # Cancelling a finished run changes nothing.
    assert jobs.cancel_run(run_dir, grace=0.1)["state"] == "cancelled"


def test_cancel_rejects_dirs_outside_root(tmp_path, runs_root):
    runs_root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(ValueError, match="not a run directory inside"):
        jobs.cancel_run(outside, runs_root=runs_root)
    link = runs_root / "link"
    link.symlink_to(outside)
    with pytest.raises(ValueError, match="symlink"):
        jobs.cancel_run(link, runs_root=runs_root)


def test_reconcile_marks_dead_runs_failed(fake_trainer, runs_root, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    run_dir = jobs.start_run(fake_trainer, runs_root=runs_root)
    pid = jobs.run_pid(run_dir)
    deadline = time.monotonic() + 30
    while jobs.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (rundir.read_status(run_dir) or {})["state"] == "running"
    assert jobs.reconcile_runs(runs_root) == [run_dir.name]
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed"
    assert "boom: something broke" in status["error"]
    assert jobs.reconcile_runs(runs_root) == []  # idempotent


def _dead_pid() -> int:
    """The pid of a process that has ended (a pid beyond 2**22 is no pid at all: a broken run folder)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reconcile_dead_pid_and_old_queue(runs_root, monkeypatch):
    monkeypatch.setenv(jobs.runqueue.MAX_RUNS_ENV, "1")
    runs_root.mkdir()
    dead = runs_root / "dead"
    rundir.update_status(dead, state="running", created_at=time.time())
    rundir.atomic_write_json(dead / jobs.PROCESS_FILE, {"pid": _dead_pid()})
    launched = runs_root / "launched"  # handed to a trainer that died before writing anything
    rundir.update_status(launched, state="queued", created_at=time.time(), launched_at=time.time())
    rundir.atomic_write_json(launched / jobs.PROCESS_FILE, {"pid": _dead_pid()})
    fresh = runs_root / "fresh"
    rundir.update_status(fresh, state="queued", created_at=time.time())
    old = runs_root / "old"  # queued an hour ago: still waiting, not dead (its config is gone)
    rundir.update_status(old, state="queued", created_at=time.time() - 3600)
    done = runs_root / "finished"
    rundir.update_status(done, state="done", created_at=time.time())
    assert sorted(jobs.reconcile_runs(runs_root)) == ["dead", "launched"]
    # The freed slot went to the oldest queued run, which cannot start without a config.
    assert rundir.read_status(old)["state"] == "failed"
    assert "could not start the trainer" in rundir.read_status(old)["error"]
    assert rundir.read_status(fresh)["state"] == "failed"  # next in line, same fate
    assert rundir.read_status(done)["state"] == "done"
    assert "ended without" in rundir.read_status(dead)["error"]


def test_list_runs_skips_symlinks_and_foreign_dirs(tmp_path, runs_root):
    runs_root.mkdir()
    (runs_root / "uploads").mkdir()
    outside = tmp_path / "outside"
    rundir.update_status(outside, state="done")
    (runs_root / "escape").symlink_to(outside)
    sneaky = runs_root / "sneaky"
    sneaky.mkdir()
    (sneaky / rundir.STATUS_FILE).symlink_to(outside / rundir.STATUS_FILE)
    # The symlinked folder is skipped; the folder whose status.json is a symlink is one broken row
    # that says so, and nothing of the file it points to (state "done") is read.
    (row,) = jobs.list_runs(runs_root)
    assert row["name"] == "sneaky" and row["state"] == "broken" and row["broken"]
    assert "symlink" in row["error"] and row["epoch"] is None
    assert jobs.list_runs(tmp_path / "missing") == []


def test_is_alive():
    assert jobs.is_alive(os.getpid())
    assert not jobs.is_alive(None)
    assert not jobs.is_alive(-1)
    assert not jobs.is_alive(2**22 + 12345)
    # Our own pid is not a trainer of that run directory (pid reuse guard).
    assert not jobs.is_alive(os.getpid(), run_dir="/nonexistent/some-run")


@pytest.mark.slow
def test_real_trainer_tiny_reaches_done(runs_root):
    if not jobs.preset_path("tiny").is_file():
        pytest.skip("configs/tiny.yaml missing")
    run_dir = jobs.start_run("tiny", runs_root=runs_root, name="tiny")
    status = wait_state(run_dir, {"done", "failed", "cancelled"}, timeout=240)
    assert status["state"] == "done", jobs.log_tail(run_dir)
    rows = jobs.list_runs(runs_root)
    assert rows[0]["progress"] == 1.0
    assert (run_dir / rundir.METRICS_FILE).is_file()


def test_run_survives_the_death_of_the_app_that_started_it(fake_trainer, runs_root, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "done")
    launcher = (
        "import sys, time; from relpos import jobs; from relpos.experiments import runproc; "
        "runproc.TRAIN_MODULE = 'fake_train'; "
        f"d = jobs.start_run({str(fake_trainer)!r}, runs_root={str(runs_root)!r}); "
        "print(d, flush=True); time.sleep(60)"
    )
    import subprocess

    app = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, start_new_session=True,
                           env=dict(os.environ))
    try:
        run_dir = Path(app.stdout.readline().decode().strip())
        os.killpg(app.pid, signal.SIGKILL)  # the "app" dies at once, mid-run
        app.wait(timeout=10)
        status = wait_state(run_dir, {"done", "failed", "cancelled"})
        assert status["state"] == "done"
        assert jobs.reconcile_runs(runs_root) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, signal.SIGKILL)


# ---------------------------------------------------------------- checkpoints and uploads


def test_save_upload_rejects_bad_files(tmp_path):
    import io

    import torch

    with pytest.raises(ValueError, match="limit"):
        jobs.save_upload(b"x" * 11, "a.pt", tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match=".pt or .pth"):
        jobs.save_upload(b"x", "a.exe", tmp_path)
    with pytest.raises(ValueError, match="weights_only"):
        jobs.save_upload(b"garbage", "a.pt", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    with pytest.raises(ValueError, match="weights_only"):
        jobs.save_upload(buf.getvalue(), "../../evil.pt", tmp_path)
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    with pytest.raises(ValueError, match="not a relpos checkpoint"):
        jobs.save_upload(buf.getvalue(), "list.pt", tmp_path)
    assert not (tmp_path.parent / "evil.pt").exists()
    uploads = tmp_path / jobs.UPLOADS_DIR
    assert not uploads.exists() or list(uploads.iterdir()) == []  # nothing left behind


def test_save_upload_stores_a_checkpoint_under_a_safe_new_name(tmp_path):
    from relpos.experiments.checkpoint import save_checkpoint
    from relpos.experiments.config import fresh_model, preset_config

    cfg = preset_config("tiny")
    path = tmp_path / "src.pt"
    save_checkpoint(fresh_model(cfg), None, 0, {}, path, config=cfg)
    first = jobs.save_upload(path.read_bytes(), "../My Model.pth", tmp_path / "runs")
    second = jobs.save_upload(path.read_bytes(), "My Model.pt", tmp_path / "runs")
    assert first == tmp_path / "runs" / jobs.UPLOADS_DIR / "My-Model.pt"
    assert second.name == "My-Model-2.pt" and first.read_bytes() == path.read_bytes()
    assert sorted(r["label"] for r in jobs.list_checkpoints(tmp_path / "runs")) == ["uploads/My-Model-2.pt",
                                                                                   "uploads/My-Model.pt"]


def test_list_checkpoints(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "best.pt").write_bytes(b"a")
    (tmp_path / "run1" / "notes.txt").write_bytes(b"a")
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "mine.pt").write_bytes(b"b")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pt"
    outside.write_bytes(b"c")
    (tmp_path / "uploads" / "link.pt").symlink_to(outside)
    rows = jobs.list_checkpoints(tmp_path)
    assert sorted(r["label"] for r in rows) == ["run1/best.pt", "uploads/mine.pt"]
    assert {r["kind"] for r in rows} == {"run", "upload"}
    assert next(r for r in rows if r["kind"] == "run")["run"] == "run1"
    assert jobs.list_checkpoints(tmp_path / "missing") == []
