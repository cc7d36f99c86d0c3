"""relpos.experiments.leaderboard: specs built from choices, counts and estimates, queuing, the leaderboard.

Estimates are checked against hand arithmetic; the leaderboard and curves against a sweep folder
written by hand (no training). Queuing uses a temporary runs root with a limit of one run and a
"busy" run that looks alive, so every member stays queued.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from relpos.experiments import leaderboard as lb
from relpos.experiments import rundir, runqueue
from relpos.experiments.config_utils import load_config, save_config
from relpos.experiments.sweep import SweepSpecError, load_spec

from support import slot_taken

REPO = Path(__file__).resolve().parents[1]


def test_build_spec_puts_family_options_in_cell_set():
    spec = lb.build_spec("my sweep", "tiny", ["none", "t5", "alibi"], seeds=2,
                         options={"t5": {"num_buckets": 16, "max_distance": 128}, "alibi": {"alibi_distance": "euclidean"},
                                  "none": {"num_buckets": 8}},
                         vary={"train.lr": [0.001, 0.003]})
    assert spec == {"name": "my-sweep", "description": "", "base": "tiny",
                    "grid": {"model.scheme": ["none", "t5", "alibi"], "train.lr": [0.001, 0.003]}, "seeds": 2,
                    "cell_set": {"model.scheme=t5": {"model.rpb.num_buckets": 16}}}  # defaults left out
    assert lb.count_runs(spec) == (6, 2, 12)
    for bad, message in ((dict(schemes=[]), "schemes"), (dict(schemes=["2d", "2d"]), "schemes"),
                         (dict(schemes=["2d"], seeds=6), "seeds")):
        with pytest.raises(SweepSpecError, match=message):
            lb.build_spec("x", "tiny", **{"seeds": 1, **bad})


def test_parse_values():
    assert lb.parse_values(" 0.001, 3 ,, true, adam ") == [0.001, 3, True, "adam"]
    with pytest.raises(ValueError, match="train.lr"):
        lb.parse_values("[1, 2]", "train.lr")


def test_header_seconds_of_the_shipped_presets():
    assert lb.header_seconds("default") == 68.0  # "68 s wall measured on 2 shared cores"
    assert lb.header_seconds("tiny") == 3.0  # "a run of a couple of seconds"
    assert lb.header_seconds("no-such-preset") is None


def test_estimate_against_hand_numbers():
    spec = load_spec(REPO / "configs" / "sweeps" / "families.yaml")  # every scheme x 3 seeds, default, 6 epochs
    cells = len(spec["grid"]["model.scheme"])
    est = lb.estimate(spec, [], limit=2)
    assert (est["cells"], est["seeds"], est["runs"]) == (cells, 3, 3 * cells)
    assert est["per_run_s"] == pytest.approx(68.0) and est["total_s"] == pytest.approx(math.ceil(3 * cells / 2) * 68.0)
    assert "header" in est["source"]
    runs = [{"state": "done", "preset": "default", "epochs": 6, "wall_s": w} for w in (8.0, 9.0, 40.0)]
    runs += [{"state": "failed", "preset": "default", "epochs": 6, "wall_s": 1.0},
             {"state": "done", "preset": "tiny", "epochs": 6, "wall_s": 1.0}]
    est = lb.estimate(spec, runs, limit=3)
    assert est["per_run_s"] == pytest.approx(9.0) and est["total_s"] == pytest.approx(cells * 9.0)  # median, 3 at once
    # Runs of another length are scaled per epoch: 3 epochs here, finished runs of 6 took 9 s.
    short = lb.build_spec("s", "default", ["2d"], vary={"train.epochs": [3]})
    assert lb.estimate(short, runs, limit=2)["per_run_s"] == pytest.approx(9.0 / 6 * 3)


def test_a_bad_member_queues_nothing_and_leaves_no_folder(tmp_path):
    spec = lb.build_spec("bad", "tiny", ["2d"], vary={"model.num_heads": [3]})  # 16 is not divisible by 3
    with pytest.raises(SweepSpecError, match="num_heads"):
        lb.queue_sweep(spec, tmp_path)
    assert not list(lb.sweeps_root(tmp_path).iterdir()) and not runqueue.run_dirs(tmp_path) == []  # only sweeps/


@pytest.fixture
def busy_root(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    with slot_taken(root, monkeypatch, seconds=60):
        yield root


def test_queue_a_built_sweep_and_prepare_the_lesson_twice(busy_root):
    spec = lb.build_spec("mine", "tiny", ["none", "t5"], options={"t5": {"num_buckets": 8, "max_distance": 16}})
    folder = lb.queue_sweep(spec, busy_root)
    assert folder.parent == lb.sweeps_root(busy_root) and folder.name.startswith("mine-")
    assert load_config(folder / lb.SPEC_FILE) == spec  # the folder says how to run it again
    members = load_config(folder / "sweep.yaml")["members"]
    t5 = rundir.read_status(members[1]["run"])
    assert t5["state"] == "queued" and "model.rpb.num_buckets=8" in t5["overrides"]
    assert "model.rpb.num_buckets=8" not in rundir.read_status(members[0]["run"])["overrides"]
    again = lb.queue_sweep(spec, busy_root)
    assert again != folder  # a second sweep, not a re-run of the first
    assert lb.lesson_state(busy_root) is None
    lesson = lb.prepare_lesson(busy_root)
    assert lesson == lb.sweeps_root(busy_root) / lb.LESSON_DIR
    state = lb.lesson_state(busy_root)
    n = len(load_config(REPO / "configs" / "sweeps" / "lesson.yaml")["grid"]["model.scheme"])
    assert (state["total"], state["done"], state["active"], state["failed"]) == (n, 0, n, 0)
    before = runqueue.run_dirs(busy_root)
    assert lb.prepare_lesson(busy_root) == lesson and runqueue.run_dirs(busy_root) == before  # nothing new


def finished_sweep(root: Path) -> dict:
    """A sweep dict as load_sweep returns it, over two cells, seeds with known accuracies and curves."""
    folder = root / "sweeps" / "fab"
    members, runs = [], []
    for scheme, accs in (("none", [0.30, 0.34]), ("t5", [0.95, 0.97, 0.99])):
        for seed, acc in enumerate(accs):
            run = root / f"{scheme}-{seed}"
            for step, value in ((10, acc / 2), (20, acc)):
                rundir.append_metrics(run, {"kind": "epoch", "step": step, "eval_accuracy": value})
            members.append({"cell": {"model.scheme": scheme}, "seed": seed, "run": str(run)})
            runs.append({"run": run.name, "seed": seed, "model.scheme": scheme, "state": "done", "best_val_acc": acc})
    save_config({"name": "fab"}, folder / "sweep.yaml")
    summary = [
        {"model.scheme": "none", "n": 2, "n_failed": 0, "n_pending": 0, "acc_mean": 0.32,
         "acc_std": math.sqrt(2 * 0.02**2)},
        {"model.scheme": "t5", "n": 3, "n_failed": 0, "n_pending": 0, "acc_mean": 0.97, "acc_std": 0.02},
    ]
    return {"grid": {"model.scheme": ["none", "t5"]}, "members": members, "runs": runs, "summary": summary,
            "cell_set": {"model.scheme=t5": ["model.rpb.num_buckets=16"]}, "dir": str(folder)}


def test_leaderboard_rows_and_curves(tmp_path):
    sweep = finished_sweep(tmp_path)
    rows = lb.leaderboard_rows(sweep)
    assert [(r["rank"], r["label"], r["n"]) for r in rows] == [(1, "t5 (num_buckets=16)", 3), (2, "none", 2)]
    assert rows[0]["accs"] == [0.95, 0.97, 0.99] and rows[1]["acc_mean"] == 0.32
    assert rows[0]["val_images"] is None  # the fabricated members have no config to read it from
    curves = lb.sweep_curves(sweep)
    assert list(curves) == ["none", "t5 (num_buckets=16)"]
    assert [m["seed"] for m in curves["t5 (num_buckets=16)"]] == [0, 1, 2]
    np.testing.assert_allclose(curves["none"][1]["x"], [10, 20])
    np.testing.assert_allclose(curves["none"][1]["y"], [0.17, 0.34])
    assert not lb.is_active(sweep)
    assert lb.cell_label({"model.scheme": "2d", "train.lr": 0.001}) == "2d · lr=0.001"


def test_sweep_signature_changes_when_a_member_writes(tmp_path):
    folder = tmp_path / "sweeps" / "s"
    run = tmp_path / "r"
    rundir.update_status(run, state="running")
    save_config({"name": "s", "members": [{"run": str(run), "seed": 0, "cell": {}}]}, folder / "sweep.yaml")
    before = lb.sweep_signature(folder)
    time.sleep(0.02)
    rundir.append_metrics(run, {"kind": "epoch", "step": 1, "eval_accuracy": 0.5})
    assert lb.sweep_signature(folder) != before
    assert lb.sweep_signature(tmp_path / "nothing") == (str(tmp_path / "nothing"), 0.0)
