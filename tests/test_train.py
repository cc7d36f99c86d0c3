"""fit (files, status, exact resume), the CLI, SIGTERM; the epoch engine is in test_engine.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relpos.data import build_dataset
from relpos.diagnostics import bias_diagnostics
from relpos.experiments.checkpoint import load_model_from_checkpoint, read_checkpoint
from relpos.experiments.config import apply_overrides
from relpos.experiments.config_utils import load_config
from relpos.experiments.rundir import read_metrics, read_status, update_status
from relpos.experiments.train import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*overrides):
    return apply_overrides(load_config(TINY), list(overrides))


def test_fit_writes_the_run_directory_and_keeps_queued_fields(tmp_path):
    run = tmp_path / "run"
    update_status(run, state="queued", name="from-app", submitted_by="app")
    result = fit(_cfg(), run, log_to_stderr=False)
    assert result["state"] == "done"
    for f in ("config.yaml", "status.json", "metrics.jsonl", "train.log", "last.pt", "best.pt"):
        assert (run / f).is_file(), f
    status = read_status(run)
    assert status["state"] == "done" and status["submitted_by"] == "app" and status["name"] == "from-app"
    assert status["step"] == status["total_steps"] == 8 and status["epoch"] == 2 and status["pid"] == os.getpid()
    records = read_metrics(run)
    kinds = [r["kind"] for r in records]
    assert kinds.count("epoch") == 2 and kinds.count("step") == 4  # log_every 2, 4 steps per epoch
    epoch_rec = [r for r in records if r["kind"] == "epoch"][-1]
    for key in ("step", "epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr", "seconds",
                "images_per_second"):
        assert key in epoch_rec, key
    model, ck = load_model_from_checkpoint(run / "last.pt")
    assert ck["epoch"] == 2 and ck["step"] == 8 and ck["config"]["name"] == "tiny"
    # Bias diagnostics are tracked over training: equal to bias_diagnostics on the same 64 images.
    val = build_dataset(ck["config"], "val")
    images = torch.stack([val[i][0] for i in range(min(64, len(val)))])
    expected = bias_diagnostics(model, images)["summary"]
    assert expected and set(expected) <= set(epoch_rec)
    for key, value in expected.items():
        assert epoch_rec[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert "epoch 2/2" in (run / "train.log").read_text()


def test_resume_is_bit_exact(tmp_path):
    cfg = _cfg("model.dropout=0.1", "train.epochs=3")  # dropout: the RNG state must be restored too
    fit(cfg, tmp_path / "a", log_to_stderr=False)
    calls = {"n": 0}

    def stop_mid_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] == 6  # after step 5 (one check per step plus one per epoch end)

    first = fit(cfg, tmp_path / "b", should_stop=stop_mid_epoch, log_to_stderr=False)
    assert first["state"] == "cancelled" and first["step"] == 5
    partial = read_checkpoint(tmp_path / "b" / "last.pt")
    assert partial["step"] == 5 and partial["epoch"] == 1
    second = fit(cfg, tmp_path / "b", resume=True, log_to_stderr=False)
    assert second["state"] == "done" and second["step"] == 12
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["metrics"]["train_loss"] == b["metrics"]["train_loss"]
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])


def test_errors_mark_the_run_failed(tmp_path, monkeypatch):
    import relpos.experiments.train as train_mod

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_mod, "evaluate", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        fit(_cfg(), tmp_path / "r", log_to_stderr=False)
    status = read_status(tmp_path / "r")
    assert status["state"] == "failed" and "disk on fire" in status["error"]
    assert "Traceback" in (tmp_path / "r" / "train.log").read_text()


def _run_cli(args, cwd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "relpos.experiments.train", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs,
    )


def _finish(proc, timeout=180):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out, err


@pytest.mark.slow
def test_cli_end_to_end_and_config_errors(tmp_path):
    proc = _run_cli(["--config", str(TINY), "--set", "train.epochs=1", "--runs-root", "runs"], tmp_path)
    out, err = _finish(proc)
    assert proc.returncode == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-")
    assert read_status(run)["state"] == "done" and (run / "best.pt").is_file()
    # invalid config: exit code 2, the key named, nothing trained; a queued run is marked failed
    queued = tmp_path / "queued"
    update_status(queued, state="queued")
    bad = _run_cli(["--config", str(TINY), "--run-dir", str(queued), "--set", "model.num_heads=3"], tmp_path)
    _, err = _finish(bad)
    assert bad.returncode == 2 and "model.num_heads" in err
    assert read_status(queued)["state"] == "failed" and not (queued / "last.pt").exists()


@pytest.mark.slow
def test_sigterm_saves_and_cancels(tmp_path):
    run = tmp_path / "run"
    # long enough to still be training when the signal arrives; a DataLoader worker, because the app
    # signals the whole process group and a worker killed by it must not fail the run
    proc = _run_cli(["--config", str(TINY), "--run-dir", str(run), "--set", "train.epochs=500",
                     "--set", "data.num_train=512", "--set", "train.log_every=1",
                     "--set", "train.num_workers=1"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = read_status(run) or {}
            if status.get("state") == "running" and (status.get("step") or 0) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"training never got going: {read_status(run)}")
        os.killpg(proc.pid, signal.SIGTERM)
        _finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    status = read_status(run)
    assert status["state"] == "cancelled" and status["stop_reason"] == "SIGTERM"
    ck = read_checkpoint(run / "last.pt")
    assert ck["step"] == status["step"] > 0
    # and it resumes from there
    resumed = fit(_cfg("train.epochs=500", "data.num_train=512"), run, resume=True,
                  should_stop=lambda: True, log_to_stderr=False)
    # one more step, unless the signal landed in the epoch's evaluation: then resuming finishes that
    # evaluation first, and the stop request ends the run before the next step
    pending = (ck.get("extra") or {}).get("eval_pending") is True
    assert resumed["step"] == ck["step"] + (0 if pending else 1)
