"""The run-directory helpers: atomic status, append-only metrics that survive torn lines."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from relpos.experiments import rundir


def test_status_merges_and_is_atomic(tmp_path) -> None:
    rundir.update_status(tmp_path, state="queued", name="r")
    st = rundir.update_status(tmp_path, state="running", epoch=1)
    assert st["name"] == "r" and st["state"] == "running" and st["epoch"] == 1
    assert rundir.read_status(tmp_path)["state"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
    with pytest.raises(ValueError, match="state"):
        rundir.update_status(tmp_path, state="exploded")


def test_metrics_skip_a_torn_line_and_nan_becomes_null(tmp_path) -> None:
    rundir.append_metrics(tmp_path, {"kind": "step", "step": 1, "train_loss": 1.5})
    rundir.append_metrics(tmp_path, {"kind": "epoch", "epoch": 0, "eval_loss": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')  # a writer killed mid-line
    recs = rundir.read_metrics(tmp_path)
    assert [r["kind"] for r in recs] == ["step", "epoch"]
    assert recs[1]["eval_loss"] is None
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])


def test_unreadable_status_is_none(tmp_path) -> None:
    assert rundir.read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{not json")
    assert rundir.read_status(tmp_path) is None


def test_new_run_dir_names_runs_name_first_and_never_shares(tmp_path, monkeypatch) -> None:
    first = rundir.new_run_dir(tmp_path / "runs", "tiny")
    assert first.is_dir() and re.fullmatch(r"tiny-\d{8}-\d{6}", first.name), first.name
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260102-030405")
    made = [rundir.new_run_dir(tmp_path / "runs", "same") for _ in range(3)]
    assert [p.name for p in made] == ["same-20260102-030405", "same-20260102-030405-2", "same-20260102-030405-3"]
    assert all(p.is_dir() for p in made)


def test_run_logger_step_lines_are_window_means(tmp_path) -> None:
    sums = []

    def reduce(values):  # stands in for the all-reduce over ranks: records what it was given
        sums.append(list(values))
        return values

    log = rundir.RunLogger(tmp_path, step=0, total_steps=6, log_every=2, reduce=reduce)
    assert log.eta() is None
    batches = [(1.0, 0.5, 4), (3.0, 1.0, 4), (2.0, 0.0, 2), (0.5, 0.5, 2), (9.0, 0.0, 1)]
    for loss, acc, n in batches:
        log.on_step({"loss": loss, "accuracy": acc, "samples": n, "lr": 0.1}, epoch=1)
    steps = [r for r in rundir.read_metrics(tmp_path) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [2, 4] and log.step == 5
    assert steps[0]["train_loss"] == pytest.approx((1.0 * 4 + 3.0 * 4) / 8)
    assert steps[0]["train_accuracy"] == pytest.approx((2 + 4) / 8)
    assert steps[1]["train_loss"] == pytest.approx((2.0 * 2 + 0.5 * 2) / 4)
    assert steps[1]["train_accuracy"] == pytest.approx(1 / 4)
    assert sums == [[16.0, 6, 8], [5.0, 1, 4]]
    status = rundir.read_status(tmp_path)
    assert status["step"] == 4 and status["total_steps"] == 6 and status["epoch"] == 1
    assert log.eta() is not None and log.eta() >= 0
    log.on_epoch({"kind": "epoch", "epoch": 1, "step": 5})
    assert rundir.read_metrics(tmp_path)[-1] == {"kind": "epoch", "epoch": 1, "step": 5}
    assert log.status(state="done")["state"] == "done"


def test_run_logger_on_other_ranks_writes_nothing(tmp_path) -> None:
    log = rundir.RunLogger(tmp_path / "r", step=3, total_steps=10, log_every=1, write=False)
    log.on_step({"loss": 1.0, "accuracy": 1.0, "samples": 2, "lr": 0.1}, epoch=1)
    log.on_epoch({"kind": "epoch", "epoch": 1})
    assert log.status(state="done") == {} and log.step == 4
    assert not (tmp_path / "r").exists()


def test_run_log_goes_to_train_log_and_detaches(tmp_path) -> None:
    logger = logging.getLogger("relpos.test_rundir")
    handlers = rundir.attach_run_log(logger, tmp_path)
    logger.info("hello %d", 7)
    rundir.detach_run_log(logger, handlers)
    logger.info("not written")
    text = (tmp_path / rundir.LOG_FILE).read_text()
    assert "INFO hello 7" in text and "not written" not in text and not logger.handlers
