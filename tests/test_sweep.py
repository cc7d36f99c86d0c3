"""Sweeps (relpos.experiments.sweep and sweep_results): specs, grids, summaries, re-runs, the CLI.

The fast tests use a fake trainer whose accuracy is a known function of the scheme and the seed, so
every number in runs.csv and summary.csv is checked against a hand computation. One slow test runs
configs/sweeps/tiny.yaml with the real trainer.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relpos.experiments import rundir, runproc, runqueue
from relpos.experiments import sweep as sw
from relpos.experiments.sweep_results import member_row, summary_rows
from relpos.families import FAMILIES, ROTARY_EMBEDDINGS

from support import install_fake_trainer, kill_runs, sweep_trainer_source

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAINER = sweep_trainer_source("fake_sweep_train")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_sweep_train")
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "2")
    root = tmp_path / "runs"
    yield root
    kill_runs(root)


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"base": "tiny", "grids": {}}, "unknown key"),
        ({"grid": {"model.scheme": ["2d"]}}, "base"),
        ({"base": "tiny", "grid": {"model.scheme": []}}, "grid.model.scheme"),
        ({"base": "tiny", "grid": {"model.scheme": "2d"}}, "grid.model.scheme"),
        ({"base": "tiny", "grid": ["model.scheme"]}, "grid must map"),
        ({"base": "tiny", "grid": {"seed": [1, 2]}}, "grid.seed"),
        ({"base": "tiny", "seeds": 0}, "seeds"),
        ({"base": "tiny", "seeds": 21}, "seeds"),
        ({"base": "tiny", "seeds": True}, "seeds"),
        ({"base": "tiny", "seeds": [1, 1]}, "seeds"),
        ({"base": "tiny", "seeds": [-1]}, "seeds"),
        ({"base": "tiny", "name": "a b"}, "name"),
        ({"base": "tiny", "grid": {"train.lr": [0.1]}, "set": {"train.lr": 0.2}}, "set and grid"),
        ({"base": "tiny", "set": 3}, "set must be"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_specs_name_the_key(spec, message):
    with pytest.raises(sw.SweepSpecError, match=message):
        sw.check_spec(spec)


def test_load_spec_resolves_the_base_and_applies_the_cli(tmp_path):
    path = write_spec(tmp_path, """
        base: tiny
        grid: {model.scheme: [none, 2d]}
        seeds: [3, 5]
        set: {train.epochs: 1}
    """)
    spec = sw.load_spec(path)
    assert spec["name"] == "spec" and spec["seeds"] == [3, 5] and spec["set"] == ["train.epochs=1"]
    assert spec["base_path"] == str((REPO / "configs" / "tiny.yaml").resolve())
    spec = sw.load_spec(path, seeds=2, overrides=["train.batch_size=8"])
    assert spec["seeds"] == [0, 1] and spec["set"] == ["train.epochs=1", "train.batch_size=8"]
    with pytest.raises(sw.SweepSpecError, match="model.scheme"):
        sw.load_spec(path, overrides=["model.scheme=t5"])  # varied by the grid
    with pytest.raises(sw.SweepSpecError, match="seeds"):
        sw.load_spec(path, seeds=50)
    local = write_spec(tmp_path, "name: local\n", name="local.yaml")
    spec = sw.load_spec(write_spec(tmp_path, "base: local.yaml\n", name="rel.yaml"))  # relative to the spec
    assert spec["base_path"] == str(local.resolve())
    with pytest.raises(sw.SweepSpecError, match="base = 'nope'"):
        sw.load_spec(write_spec(tmp_path, "base: nope\n", name="bad.yaml"))


def test_expand_is_the_grid_product_in_order_times_seeds():
    spec = sw.check_spec({"base": "tiny", "grid": {"model.scheme": ["none", "2d"], "model.depth": [1, 2]},
                          "seeds": 2, "set": {"train.epochs": 1}})
    members = sw.expand(spec)
    assert len(members) == 8
    assert [(m["cell"]["model.scheme"], m["cell"]["model.depth"], m["seed"]) for m in members[:4]] == [
        ("none", 1, 0), ("none", 1, 1), ("none", 2, 0), ("none", 2, 1)]
    assert members[0]["overrides"] == ["train.epochs=1", "model.scheme=none", "model.depth=1", "seed=0"]
    assert len({m["key"] for m in members}) == 8


def test_cell_set_adds_overrides_to_its_cells_only(tmp_path):
    spec = sw.check_spec({"base": "tiny", "grid": {"model.scheme": ["none", "t5"]},
                          "cell_set": {"model.scheme=t5": {"model.rpb.num_buckets": 16}}})
    none, t5 = sw.expand(spec)
    assert none["overrides"] == ["model.scheme=none", "seed=0"]
    assert t5["overrides"] == ["model.scheme=t5", "model.rpb.num_buckets=16", "seed=0"]
    assert t5["key"] == "model.scheme=t5 model.rpb.num_buckets=16 seed=0"  # other options: another member
    spec["base_path"] = str(REPO / "configs" / "tiny.yaml")
    sw.resolve_members(spec, [none, t5])  # the option reaches only the family that takes it
    for bad, message in (({"model.scheme=2d": {"train.lr": 0.1}}, "cell_set.model.scheme=2d"),
                         ({"model.scheme=t5": {"model.scheme": "2d"}}, "grid or the seeds"),
                         ({"model.scheme=t5": {}}, "non-empty"), (["x"], "cell_set must map")):
        with pytest.raises(sw.SweepSpecError, match=message):
            sw.check_spec({"base": "tiny", "grid": {"model.scheme": ["none", "t5"]}, "cell_set": bad})


@pytest.mark.parametrize("grid, message", [
    ({"model.scheme": ["2d", "rope"]}, "model.scheme = 'rope'"),
    ({"model.nonsense": [1]}, "model.nonsense"),
    ({"model.num_heads": [2, 3]}, "model.num_heads"),  # embed_dim 16 is not divisible by 3
])
def test_a_bad_cell_fails_the_sweep_before_anything_is_queued(tmp_path, grid, message):
    spec = sw.load_spec(write_spec(tmp_path, f"base: tiny\ngrid: {grid!r}\n"))
    root = tmp_path / "runs"
    with pytest.raises(sw.SweepSpecError, match=message):
        sw.run_sweep(spec, runs_root=root, wait=False)
    assert not root.exists() or runqueue.run_dirs(root) == []
    assert sw.main(["--spec", str(tmp_path / "spec.yaml"), "--runs-root", str(root)]) == 2


# ----------------------------------------------------------------------------- the numbers


def test_summary_math_against_hand_numbers(tmp_path):
    runs = []
    for k, (scheme, seed, st, best, steps) in enumerate([
        ("2d", 0, "done", 0.90, [(10, 0.5), (20, 0.90)]),
        ("2d", 1, "done", 0.92, [(10, 0.96), (20, 0.92)]),  # 95% first reached at step 10
        ("2d", 2, "done", 0.97, [(10, 0.6), (20, 0.97)]),
        ("none", 0, "failed", None, []),
        ("none", 1, "done", 0.40, [(10, 0.40)]),
    ]):
        run = tmp_path / f"run{k}"
        rundir.update_status(run, state=st, best_accuracy=best, started_at=100.0,
                             finished_at=100.0 + 2 * (k + 1), params=50,
                             error="boom\nmore" if st == "failed" else None)
        for step, acc in steps:
            rundir.append_metrics(run, {"kind": "epoch", "step": step, "eval_accuracy": acc})
        runs.append({"cell": {"model.scheme": scheme}, "seed": seed, "run": str(run)})
    runs.append({"cell": {"model.scheme": "none"}, "seed": 2, "run": str(tmp_path / "gone")})
    rows = [member_row(m, ["model.scheme"]) for m in runs]
    assert [r["state"] for r in rows] == ["done", "done", "done", "failed", "done", "missing"]
    assert [r["steps_to_95"] for r in rows] == [None, 10, 20, None, None, None]
    assert [r["wall_s"] for r in rows[:3]] == [2.0, 4.0, 6.0]
    assert rows[3]["error"] == "boom"
    two_d, none = summary_rows(rows, ["model.scheme"])
    assert (two_d["n"], two_d["n_failed"], none["n"], none["n_failed"]) == (3, 0, 1, 2)
    assert two_d["acc_mean"] == pytest.approx((0.90 + 0.92 + 0.97) / 3)
    mean = (0.90 + 0.92 + 0.97) / 3
    squares = (0.90 - mean) ** 2 + (0.92 - mean) ** 2 + (0.97 - mean) ** 2
    assert two_d["acc_std"] == pytest.approx(math.sqrt(squares / 2))  # n - 1 = 2
    assert two_d["acc_std"] == pytest.approx(0.036055513, abs=1e-8)
    assert (two_d["steps_to_95_mean"], two_d["n_reached_95"], two_d["wall_s_mean"]) == (15.0, 2, 4.0)
    assert none["acc_mean"] == pytest.approx(0.40) and none["acc_std"] is None  # one finished seed: no std


def test_sweep_end_to_end_with_a_fake_trainer_and_a_rerun(fake, tmp_path, monkeypatch, capsys):
    root = fake
    spec_path = write_spec(tmp_path, """
        name: fam
        base: tiny
        grid: {model.scheme: [none, 2d]}
        seeds: 3
    """)
    monkeypatch.setenv("FAKE_FAIL_SCHEME", "none")
    sweep_dir = tmp_path / "sweep"
    code = sw.main(["--spec", str(spec_path), "--runs-root", str(root), "--sweep-dir", str(sweep_dir)])
    assert code == 1  # the three "none" members failed; the others still finished
    assert "boom" in capsys.readouterr().out  # summary.md lists the failures
    runs = read_csv(sweep_dir / "runs.csv")
    assert list(runs[0]) == ["run", "state", "seed", "model.scheme", "best_val_acc", "steps_to_95", "wall_s",
                             "params", "error"]
    assert [(r["model.scheme"], r["seed"], r["state"]) for r in runs] == [
        ("none", "0", "failed"), ("none", "1", "failed"), ("none", "2", "failed"),
        ("2d", "0", "done"), ("2d", "1", "done"), ("2d", "2", "done")]
    assert [float(r["best_val_acc"]) for r in runs[3:]] == pytest.approx([0.95, 0.96, 0.97])
    assert {r["steps_to_95"] for r in runs[3:]} == {"20"} and {r["params"] for r in runs[3:]} == {"1234"}
    summary = {r["model.scheme"]: r for r in read_csv(sweep_dir / "summary.csv")}
    assert summary["2d"]["n"] == "3" and float(summary["2d"]["acc_mean"]) == pytest.approx(0.96)
    assert float(summary["2d"]["acc_std"]) == pytest.approx(0.01)
    assert float(summary["2d"]["wall_s_mean"]) == pytest.approx(2.5)
    assert (summary["none"]["n"], summary["none"]["n_failed"], summary["none"]["acc_mean"]) == ("0", "3", "")
    assert "| 2d | 3 | 96.00 ± 1.00 | 20 |" in (sweep_dir / "summary.md").read_text()
    for r in runs:  # members are ordinary runs that know their sweep
        tag = rundir.read_status(root / r["run"])["sweep"]
        assert tag["name"] == "fam" and tag["dir"] == str(sweep_dir.resolve())
        assert tag["cell"] == {"model.scheme": r["model.scheme"]} and tag["seed"] == int(r["seed"])
    assert [s["name"] for s in sw.list_sweeps(root / "sweeps")] == []  # --sweep-dir put it elsewhere
    assert [s["dir"] for s in sw.list_sweeps(tmp_path)] == [str(sweep_dir)]

    # Again into the same folder: the finished members are kept, the failed ones queued again.
    monkeypatch.delenv("FAKE_FAIL_SCHEME")
    before = {p.name for p in runqueue.run_dirs(root)}
    assert sw.main(["--spec", str(spec_path), "--runs-root", str(root), "--sweep-dir", str(sweep_dir)]) == 0
    again = read_csv(sweep_dir / "runs.csv")
    assert [r["run"] for r in again[3:]] == [r["run"] for r in runs[3:]]
    assert {r["run"] for r in again[:3]}.isdisjoint(before) and {r["state"] for r in again} == {"done"}
    assert len({p.name for p in runqueue.run_dirs(root)} - before) == 3
    loaded = sw.load_sweep(sweep_dir)
    assert [c["n"] for c in loaded["summary"]] == [3, 3]
    assert loaded["summary"][0]["acc_mean"] == pytest.approx(0.31)


def test_no_wait_returns_once_queued(fake, tmp_path, capsys):
    root = fake
    spec_path = write_spec(tmp_path, "name: quick\nbase: tiny\ngrid: {model.scheme: [2d, absolute]}\n")
    assert sw.main(["--spec", str(spec_path), "--runs-root", str(root), "--no-wait"]) == 0
    sweep_dir = Path(capsys.readouterr().out.splitlines()[0])
    assert sweep_dir.parent == root / "sweeps" and sweep_dir.name.startswith("quick-")
    assert [s["dir"] for s in sw.list_sweeps(root / "sweeps")] == [str(sweep_dir)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(r["state"] != "done" for r in sw.load_sweep(sweep_dir)["runs"]):
        time.sleep(0.1)  # the trainers move the queue on: nobody else advances here
    assert [r["state"] for r in sw.summarize(sweep_dir)["runs"]] == ["done", "done"]


# ----------------------------------------------------------------------------- the shipped specs


@pytest.mark.parametrize("name", ["families", "ablation", "tiny"])
def test_shipped_specs_resolve(name):
    spec = sw.load_spec(REPO / "configs" / "sweeps" / f"{name}.yaml")
    members = sw.expand(spec)
    sw.resolve_members(spec, members)
    if name == "families":
        schemes = ["none", "absolute", *FAMILIES, *ROTARY_EMBEDDINGS]  # the rotary ones alone, last
        assert spec["grid"]["model.scheme"] == schemes and spec["seeds"] == [0, 1, 2]
    if name == "ablation":
        assert spec["grid"]["model.scheme"] == ["none", "absolute", "2d", "absolute+2d"]


@pytest.mark.slow
def test_tiny_sweep_with_the_real_trainer(tmp_path):
    """The CI sweep: queue both members with a limit of 1 and never advance by hand, so the second
    starts only because the first trainer advanced the queue; then a re-run skips both."""
    root = tmp_path / "runs"
    env = {**os.environ, runqueue.MAX_RUNS_ENV: "1"}
    cmd = [sys.executable, "-m", "relpos.experiments.sweep", "--spec", str(REPO / "configs/sweeps/tiny.yaml"),
           "--runs-root", str(root), "--sweep-dir", str(tmp_path / "sweep")]
    try:
        out = subprocess.run([*cmd, "--no-wait"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        members = sw.load_sweep(tmp_path / "sweep")["members"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = [(rundir.read_status(m["run"]) or {}).get("state") for m in members]
            if all(s in rundir.TERMINAL_STATES for s in states):
                break
            time.sleep(0.5)
        assert states == ["done", "done"], [runproc.log_tail(m["run"]) for m in members]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows = read_csv(tmp_path / "sweep" / "runs.csv")
        assert [r["run"] for r in rows] == [Path(m["run"]).name for m in members]  # skipped, not re-run
        assert all(0.0 <= float(r["best_val_acc"]) <= 1.0 and int(r["params"]) > 0 for r in rows)
        status = [rundir.read_status(m["run"]) for m in members]
        assert status[0]["finished_at"] <= status[1]["started_at"]  # one at a time
    finally:
        kill_runs(root)
