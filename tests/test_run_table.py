"""relpos.experiments.run_table: a run's config columns, filters and groups, the Train page's overrides."""

from __future__ import annotations

import math
import time

import pytest

from relpos.experiments import rundir, run_table
from relpos.experiments.config import preset_config, resolve_config
from relpos.experiments.config_utils import preset_path, save_config
from relpos.families import SCHEMES


def test_compose_and_split_reach_every_scheme_once():
    pairs = {(e, b): run_table.compose_scheme(e, b) for e in run_table.EMBEDDING_CHOICES
             for b in run_table.BIAS_CHOICES}
    assert sorted(pairs.values()) == sorted(SCHEMES)  # a bijection onto the schemes
    for pair, scheme in pairs.items():
        assert run_table.split_scheme(scheme) == pair
    assert run_table.compose_scheme("none", "2d") == "2d"
    assert run_table.compose_scheme("absolute", "none") == "absolute"
    assert run_table.compose_scheme("rope_mixed+absolute", "t5") == "rope_mixed+absolute+t5"
    with pytest.raises(ValueError, match="bias"):
        run_table.compose_scheme("none", "3d")
    with pytest.raises(ValueError, match="scheme"):
        run_table.split_scheme("2d+absolute")


def test_run_overrides_keep_only_what_changes():
    cfg = preset_config("default")  # scheme 2d, seed 0
    assert run_table.run_overrides(cfg, scheme="2d", seed=0, epochs=cfg["train"]["epochs"]) == {}
    assert run_table.run_overrides(cfg, scheme="t5", options={"num_buckets": 16, "max_distance": 128}, seed=2) == {
        "model.scheme": "t5", "model.rpb": {"num_buckets": 16}, "seed": 2}
    # Options of a scheme without a bias, and options at their defaults, add nothing.
    assert run_table.run_overrides(cfg, scheme="none", options={"num_buckets": 16}) == {"model.scheme": "none"}
    assert run_table.run_overrides(cfg, scheme="alibi", options={"alibi_distance": "euclidean"}) == {
        "model.scheme": "alibi"}
    with pytest.raises(ValueError, match="max_distance"):
        run_table.run_overrides(cfg, scheme="t5", options={"num_buckets": 64, "max_distance": 8})
    assert run_table.seeds_from(4, 3) == [4, 5, 6]


def test_changed_keys_against_hand_diffs():
    base = resolve_config({"model": {"scheme": "2d"}})
    new = resolve_config({"name": "other", "seed": 3, "model": {"scheme": "t5", "rpb": {"num_buckets": 16}},
                          "train": {"lr": 0.01}})
    assert run_table.changed_keys(new, base) == ["seed=3", "model.scheme=t5", "model.rpb.num_buckets=16",
                                                 "train.lr=0.01"]  # the name and the scheme's keys left out
    assert run_table.changed_keys(base, new) == ["seed=0", "model.scheme=2d", "train.lr=0.002",
                                                 "model.rpb.num_buckets=null"]
    assert run_table.changed_keys(base, base) == []


def test_run_columns_of_a_queued_a_finished_and_a_terminal_run(tmp_path):
    queued = tmp_path / "q"
    rundir.update_status(queued, state="queued", config_path=str(preset_path("tiny")),
                         overrides=["model.scheme=none", "seed=5"], created_at=time.time())
    cols = run_table.run_columns(queued)
    assert (cols["scheme"], cols["seed"], cols["preset"], cols["changed"]) == ("none", 5, "tiny",
                                                                                ["seed=5", "model.scheme=none"])
    assert cols["wall_s"] is None and cols["num_val"] == 64
    # From the terminal: no config_path, a config.yaml named after a preset.
    cli = tmp_path / "cli"
    cfg = resolve_config({**preset_config("default"), "train": {**preset_config("default")["train"], "epochs": 2}})
    save_config(cfg, cli / rundir.CONFIG_FILE)
    rundir.update_status(cli, state="done", started_at=10.0, finished_at=22.5)
    cols = run_table.run_columns(cli)
    assert (cols["preset"], cols["scheme"], cols["changed"], cols["wall_s"]) == ("default", "2d", ["train.epochs=2"],
                                                                                 12.5)
    unknown = tmp_path / "unknown"
    rundir.update_status(unknown, state="failed")
    assert run_table.run_columns(unknown)["preset"] == "?" and run_table.run_columns(unknown)["scheme"] is None


def test_filter_and_group_against_hand_numbers():
    rows = [{"name": "a", "state": "done", "scheme": "2d", "seed": 0, "preset": "default", "changed": [],
             "accuracy": 0.90},
            {"name": "b", "state": "done", "scheme": "2d", "seed": 1, "preset": "default", "changed": ["seed=1"],
             "accuracy": 0.96},
            {"name": "c", "state": "queued", "scheme": "t5", "seed": 0, "preset": "tiny", "changed": [],
             "accuracy": None}]
    assert [r["name"] for r in run_table.filter_runs(rows, "2D seed=1")] == ["b"]
    assert [r["name"] for r in run_table.filter_runs(rows, "")] == ["a", "b", "c"]
    assert [r["name"] for r in run_table.filter_runs(rows, "nothing")] == ["a", "c"]  # no changed keys
    two_d, t5 = run_table.group_runs(rows, "scheme")
    assert (two_d["scheme"], two_d["runs"], two_d["n"]) == ("2d", 2, 2)
    assert two_d["acc_mean"] == pytest.approx(0.93)
    assert two_d["acc_std"] == pytest.approx(math.sqrt(((0.90 - 0.93) ** 2 + (0.96 - 0.93) ** 2) / 1))
    assert (t5["n"], t5["acc_mean"], t5["acc_std"], t5["acc_best"]) == (0, None, None, None)
    with pytest.raises(ValueError, match="key"):
        run_table.group_runs(rows, "lr")
