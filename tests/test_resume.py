"""Cancel and resume keep what was trained: a cancel during evaluation, ``--resume`` without ``last.pt``
(``best.pt`` is never replaced by a worse epoch), hostile ``config.yaml`` / checkpoints on resume, a
cancel that lands before the trainer's first write, and upload refusals that name the user's file."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relpos import jobs
from relpos.experiments import engine, runqueue, train
from relpos.experiments.checkpoint import read_checkpoint
from relpos.experiments.config import apply_overrides
from relpos.experiments.config_utils import load_config
from relpos.experiments.rundir import BEST_CKPT, LAST_CKPT, read_metrics, read_status, update_status
from relpos.experiments.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*overrides):
    return apply_overrides(load_config(TINY), list(overrides))


def _rewrite(path: Path, **changes) -> None:
    """Change top-level fields or ``extra`` entries (``extra__key``) of a checkpoint in place."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key.startswith("extra__"):
            ckpt["extra"][key[len("extra__"):]] = value
        else:
            ckpt[key] = value
    torch.save(ckpt, path)


def _weights(path: Path) -> dict:
    return read_checkpoint(path)["model"]


# ----------------------------------------------------------------------------- cancel during evaluation


def _sigterm_during_first_evaluation(monkeypatch) -> dict:
    """Make the first evaluation of a fit deliver SIGTERM to this process as it reads its second batch."""
    seen = {"evaluations": 0, "batches": 0}
    real = engine.evaluate

    def evaluate(model, loader, *args, **kwargs):
        seen["evaluations"] += 1
        if seen["evaluations"] > 1:
            return real(model, loader, *args, **kwargs)

        class Loader:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for k, batch in enumerate(loader):
                    if k == 1:
                        os.kill(os.getpid(), signal.SIGTERM)  # fit's handler only raises its flag
                    seen["batches"] += 1
                    yield batch

        return real(model, Loader(), *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate)
    return seen


def test_sigterm_during_evaluation_keeps_the_epoch_and_resume_is_exact(tmp_path, monkeypatch):
    cfg = _cfg("model.dropout=0.1", "train.epochs=3", "data.num_val=96")  # 3 evaluation batches
    fit(cfg, tmp_path / "a", log_to_stderr=False)
    seen = _sigterm_during_first_evaluation(monkeypatch)
    first = fit(cfg, tmp_path / "b", log_to_stderr=False)
    assert seen["batches"] == 2 and first["state"] == "cancelled" and first["stop_reason"] == "SIGTERM"
    last = read_checkpoint(tmp_path / "b" / LAST_CKPT)  # saved: the trained epoch is kept
    assert last["step"] == 4 and last["extra"]["eval_pending"] is True and last["extra"]["partial_epoch"]
    assert not (tmp_path / "b" / BEST_CKPT).exists()  # nothing evaluated yet
    assert not [r for r in read_metrics(tmp_path / "b") if r["kind"] == "epoch"]
    monkeypatch.undo()
    second = fit(cfg, tmp_path / "b", resume=True, log_to_stderr=False)
    assert second["state"] == "done" and second["step"] == 12
    a, b = _weights(tmp_path / "a" / LAST_CKPT), _weights(tmp_path / "b" / LAST_CKPT)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs_a = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "epoch"]
    epochs_b = [r for r in read_metrics(tmp_path / "b") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs_b] == [1, 2, 3]  # epoch 1 evaluated on resume, once
    for ra, rb in zip(epochs_a, epochs_b):
        for key in ("eval_accuracy", "eval_loss", "train_loss", "train_accuracy", "best_accuracy"):
            assert ra[key] == rb[key], (ra["epoch"], key)
    assert epochs_b[0]["images_per_second"] is None  # no step trained in that session's epoch 1
    assert _weights(tmp_path / "a" / BEST_CKPT).keys() == _weights(tmp_path / "b" / BEST_CKPT).keys()


SLOW_EVAL = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import relpos.experiments.train  # this name on the command line marks the process as a trainer
    from relpos.experiments import engine, train
    marker = Path(sys.argv[1])
    real = engine.evaluate

    def slow_evaluate(model, loader, *args, **kwargs):
        class Slow:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    with open(marker, "a") as f:
                        f.write("batch\\n")
                    time.sleep(0.5)
                    yield batch

        return real(model, Slow(), *args, **kwargs)

    train.evaluate = slow_evaluate
    sys.exit(train.main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_the_apps_cancel_during_a_long_evaluation_saves_last_pt(tmp_path):
    """A trainer process in a 40-batch (20 s) evaluation; jobs.cancel_run's SIGTERM ends it at the
    next batch: cancelled by the trainer itself (stop_reason SIGTERM) with last.pt, never SIGKILLed."""
    root, marker = tmp_path / "runs", tmp_path / "batches.txt"
    run = root / "slow-eval"
    root.mkdir()
    cmd = [sys.executable, "-c", SLOW_EVAL, str(marker), "--config", str(TINY), "--run-dir", str(run),
           "--set", "data.num_val=1280", "--set", "train.epochs=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[0].decode()[-2000:]
        status = jobs.cancel_run(run, grace=60.0, runs_root=root)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert status["state"] == "cancelled" and status["stop_reason"] == "SIGTERM"  # the trainer's own write
    assert len(marker.read_text().splitlines()) < 40  # the evaluation stopped early
    last = read_checkpoint(run / LAST_CKPT)
    assert last["extra"]["eval_pending"] is True and last["step"] == 4


# ----------------------------------------------------------------------------- resume without last.pt


@pytest.fixture
def trained(tmp_path):
    """A finished 2-epoch tiny run: its folder holds last.pt and best.pt."""
    run = tmp_path / "run"
    fit(_cfg(), run, log_to_stderr=False)
    return run


def test_resume_without_last_pt_continues_from_best_pt_and_keeps_it(trained):
    best = read_checkpoint(trained / BEST_CKPT)
    (trained / LAST_CKPT).unlink()
    _rewrite(trained / BEST_CKPT, extra__best_accuracy=1.0)  # as good as it gets: nothing may replace it
    before = (trained / BEST_CKPT).read_bytes()
    result = fit(_cfg("train.epochs=4"), trained, resume=True, log_to_stderr=False)
    assert result["state"] == "done" and result["best_accuracy"] == 1.0
    assert (trained / BEST_CKPT).read_bytes() == before  # never overwritten by a worse epoch
    last = read_checkpoint(trained / LAST_CKPT)
    assert last["epoch"] == 4 and last["step"] == 16  # continued from best.pt's epoch, not from scratch
    assert best["epoch"] >= 1 and "continuing from best.pt" in (trained / "train.log").read_text()


def test_a_fresh_run_in_a_folder_with_a_better_best_pt_keeps_it(trained):
    (trained / LAST_CKPT).unlink()
    _rewrite(trained / BEST_CKPT, extra__best_accuracy=1.0)
    before = (trained / BEST_CKPT).read_bytes()
    fit(_cfg(), trained, log_to_stderr=False)
    assert (trained / BEST_CKPT).read_bytes() == before


def test_a_worse_best_pt_is_replaced_by_a_better_epoch(trained):
    (trained / LAST_CKPT).unlink()
    _rewrite(trained / BEST_CKPT, extra__best_accuracy=0.0)
    fit(_cfg(), trained, log_to_stderr=False)
    assert read_checkpoint(trained / BEST_CKPT)["extra"]["best_accuracy"] > 0.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 1.5, "0.9", True, None, [0.5], {"a": 1}])
def test_a_best_pt_without_a_usable_record_stops_the_run_untouched(trained, value, capsys):
    (trained / LAST_CKPT).unlink()
    _rewrite(trained / BEST_CKPT, extra__best_accuracy=value)
    before = (trained / BEST_CKPT).read_bytes()
    assert train.main(["--resume", "--run-dir", str(trained)]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "Traceback" not in err
    assert (trained / BEST_CKPT).read_bytes() == before and not (trained / LAST_CKPT).exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04" + b"\0" * 64, b"\x80\x02}q\x00."])
def test_an_unreadable_best_pt_stops_the_run_untouched(trained, content, capsys):
    (trained / LAST_CKPT).unlink()
    (trained / BEST_CKPT).write_bytes(content)
    assert train.main(["--resume", "--run-dir", str(trained)]) == 2
    err = capsys.readouterr().err
    assert str(trained / BEST_CKPT) in err and "Traceback" not in err
    assert (trained / BEST_CKPT).read_bytes() == content


@pytest.mark.parametrize("changes, words", [
    ({"step": "7"}, "step"),
    ({"step": -3}, "step"),
    ({"step": True}, "step"),
    ({"extra__partial_epoch": {"loss_sum": float("nan"), "correct": 1, "samples": 2}}, "partial_epoch"),
    ({"extra__partial_epoch": [1, 2, 3]}, "partial_epoch"),
    ({"extra__partial_epoch": {"loss_sum": 1.0}}, "partial_epoch"),
])
def test_hostile_last_pt_fields_stop_the_resume_naming_the_file(trained, changes, words, capsys):
    _rewrite(trained / LAST_CKPT, **changes)
    assert train.main(["--resume", "--run-dir", str(trained)]) == 2
    err = capsys.readouterr().err
    assert str(trained / LAST_CKPT) in err and words in err and "Traceback" not in err


def test_foreign_extra_and_metrics_are_ignored_not_fatal(trained):
    _rewrite(trained / LAST_CKPT, extra="not a dict", metrics=[1, 2])
    result = fit(_cfg("train.epochs=3"), trained, resume=True, log_to_stderr=False)
    assert result["state"] == "done" and result["step"] == 12


# ----------------------------------------------------------------------------- config.yaml on --resume


BOMB = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n".encode()
    for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00n\x00a\x00m\x00e", "not UTF-8"),
    (b"name: tiny\ndescription: caf\xe9\n", "not UTF-8"),
    (b"name: [unclosed", "config.yaml"),
    (BOMB, "config.yaml"),
    (b"!!python/object/apply:os.system ['echo hi']\n", "config.yaml"),
    (b"- a\n- b\n", "config.yaml"),
    (b"x" * (2 * 1024 * 1024), "config.yaml"),
    (b"model: {embed_dim: 12, num_heads: 5}\n", "model.num_heads"),
    (b"data: {num_train: 2147483647}\n", "data.num_train"),
    (None, "config.yaml"),  # a directory where the file should be
])
def test_a_bad_config_yaml_on_resume_exits_2_naming_it(tmp_path, content, words, capsys):
    run = tmp_path / "run"
    run.mkdir()
    if content is None:
        (run / "config.yaml").mkdir()
    else:
        (run / "config.yaml").write_bytes(content)
    assert train.main(["--resume", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err) < 4000
    if words == "config.yaml" or words == "not UTF-8":
        assert str(run / "config.yaml") in err
    assert not (run / LAST_CKPT).exists()


# ----------------------------------------------------------------------------- cancel before the first write


def _lock_is_held(root: Path) -> bool:
    fd = os.open(root / runqueue.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_cancel_run_writes_its_state_under_the_queue_lock(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    run = root / "r"
    update_status(run, state="running", pid=None)
    (root / runqueue.LOCK_FILE).touch()
    held = []
    real = jobs.rundir.update_status

    def spy(run_dir, **fields):
        held.append(_lock_is_held(root))
        return real(run_dir, **fields)

    monkeypatch.setattr(jobs.rundir, "update_status", spy)
    status = jobs.cancel_run(run, grace=0.0, runs_root=root)
    assert status["state"] == "cancelled" and held == [True]


def test_a_cancel_before_the_trainers_first_write_stops_it(tmp_path):
    root = tmp_path / "runs"
    run = root / "r"
    update_status(run, state="queued", config_path=str(TINY), overrides=[], created_at=1.0, launched_at=2.0)
    (root / runqueue.LOCK_FILE).touch()
    update_status(run, state="cancelled", cancelled_at=3.0)  # cancel_run's write, before the trainer's
    result = fit(_cfg(), run, log_to_stderr=False)
    assert result["state"] == "cancelled"
    status = read_status(run)
    assert status["state"] == "cancelled" and "started_at" not in status and status.get("pid") is None
    assert not (run / LAST_CKPT).exists() and not (run / "metrics.jsonl").exists()
    # the CLI says so and exits 0; --resume trains it anyway (an explicit request)
    assert train.main(["--config", str(TINY), "--run-dir", str(run)]) == 0
    assert read_status(run)["state"] == "cancelled"
    assert fit(_cfg("train.epochs=1"), run, resume=True, log_to_stderr=False)["state"] == "done"


def test_begin_run_checks_and_writes_under_the_lock(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    run = root / "r"
    update_status(run, state="queued", launched_at=2.0)
    (root / runqueue.LOCK_FILE).touch()
    held = []
    real = runqueue.rundir.update_status
    monkeypatch.setattr(runqueue.rundir, "update_status",
                        lambda d, **f: (held.append(_lock_is_held(root)), real(d, **f))[1])
    assert runqueue.begin_run(run, state="running", pid=os.getpid(), started_at=5.0)["state"] == "running"
    assert held == [True]
    # a folder the queue does not manage gets no lock file
    lone = tmp_path / "lone"
    update_status(lone, state="queued")
    monkeypatch.undo()
    assert runqueue.begin_run(lone, state="running")["state"] == "running"
    assert not (tmp_path / runqueue.LOCK_FILE).exists()


def test_begin_run_and_cancel_never_lose_each_other(tmp_path):
    """Threads racing a trainer's first write against a cancel: whatever the order, a run that ends
    'cancelled' was never started, and a started run is never left 'cancelled' by a lost write."""
    root = tmp_path / "runs"
    (root).mkdir()
    (root / runqueue.LOCK_FILE).touch()
    for k in range(40):
        run = root / f"r{k}"
        update_status(run, state="queued", launched_at=1.0)
        began: list = []
        barrier = threading.Barrier(2)

        def trainer(run=run, began=began):
            barrier.wait()
            began.append(runqueue.begin_run(run, state="running", started_at=time.time()))

        def cancel(run=run):
            barrier.wait()
            with runqueue.locked(root):
                if (read_status(run) or {}).get("state") not in ("done", "failed", "cancelled"):
                    update_status(run, state="cancelled")

        threads = [threading.Thread(target=trainer), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        final = read_status(run)
        if began[0] is None:  # the cancel came first: the trainer did not start
            assert final["state"] == "cancelled" and "started_at" not in final
        else:  # the trainer came first: the cancel then stops a running trainer (state set after it)
            assert final["state"] == "cancelled" and final["started_at"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 2.5])
def test_cancel_right_after_start_always_ends_cancelled(runs_root, delay):
    run = jobs.start_run("tiny", {"train.epochs": 50}, runs_root=runs_root)
    time.sleep(delay)
    status = jobs.cancel_run(run, grace=30.0, runs_root=runs_root)
    assert status["state"] == "cancelled"
    pid = jobs.run_pid(run)
    deadline = time.monotonic() + 60
    while pid is not None and jobs.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_status(run)["state"] == "cancelled"  # no trainer wrote "running" or "done" over it


# ----------------------------------------------------------------------------- uploads name the user's file


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _check_refusal(data: bytes, runs_root: Path, name: str = "my model.pt") -> None:
    try:
        jobs.save_upload(data, name, runs_root)
    except ValueError as exc:
        msg = str(exc)
        assert "'my model.pt'" in msg, msg
        assert ".tmp" not in msg and "uploads/." not in msg and str(runs_root) not in msg, msg
    uploads = runs_root / jobs.UPLOADS_DIR
    assert not uploads.exists() or not [p for p in uploads.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("data", [
    b"garbage",
    b"",
    _zip_bytes({"a/data.pkl": b"\x80\x02}q\x00.", "a/version": b"3\n"}),
    _torch_bytes({"model": {}, "format_version": 1}),
    _torch_bytes({"model": {"w": torch.zeros(2)}, "format_version": 1, "config": {"model": {"depth": -1}}}),
    _torch_bytes({"model": {"w": torch.zeros(2)}, "format_version": 1, "config": {"data": {"img_size": 16}}}),
    _torch_bytes([1, 2, 3]),
    _torch_bytes({"format_version": 999, "model": {}}),
])
def test_upload_refusals_name_the_users_file(tmp_path, data):
    _check_refusal(data, tmp_path / "runs")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048), st.integers(0, 2048))
def test_upload_refusals_of_any_bytes_name_the_users_file(tmp_path, junk, cut):
    valid = _torch_bytes({"model": {"w": torch.zeros(3)}, "format_version": 1, "config": {}})
    _check_refusal(junk, tmp_path / "runs")
    _check_refusal(valid[:cut] + junk, tmp_path / "runs")  # truncated or corrupted archives
