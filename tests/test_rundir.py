"""The run-directory helpers: atomic status, append-only metrics that survive torn lines."""

from __future__ import annotations

import json

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
