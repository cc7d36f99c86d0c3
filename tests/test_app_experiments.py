"""The Experiments page and the Train page's schemes, queue and runs table, with AppTest.

Runs go to a temporary runs root (``RELPOS_RUNS_ROOT``); the ones that should train use a fake trainer
(``support.install_fake_trainer``) whose best accuracy is a known function of the scheme and the
seed, so the leaderboard's numbers are checked against hand computations. Runs that should stay
queued wait behind a sleeper that looks like a running trainer, with a limit of one run at once.
Sweeps and presets come from a temporary configs folder (``RELPOS_CONFIGS_DIR``).
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from app_support import runs_ui
from app_support.state import SEL_SOURCE
from relpos import explore, jobs
from relpos.experiments import leaderboard, rundir, run_table, runqueue
from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import fresh_model, resolve_config
from relpos.experiments.config_utils import CONFIGS_DIR_ENV, configs_dir, load_config, save_config
from relpos.families import SCHEMES

from support import install_fake_trainer, slot_taken, sweep_trainer_source, wait_for

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 120

FAKE_TRAINER = sweep_trainer_source("fake_app_train")


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """A configs folder with the tiny and default presets and the tiny and lesson sweeps."""
    folder = tmp_path / "configs"
    (folder / "sweeps").mkdir(parents=True)
    for name in ("tiny", "default"):
        shutil.copy(REPO / "configs" / f"{name}.yaml", folder / f"{name}.yaml")
    for name in ("tiny", "lesson"):
        shutil.copy(REPO / "configs" / "sweeps" / f"{name}.yaml", folder / "sweeps" / f"{name}.yaml")
    monkeypatch.setenv(CONFIGS_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch, runs_root):
    install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_app_train")
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "2")
    return runs_root


@pytest.fixture
def busy(runs_root, monkeypatch):
    """One slot, taken by a sleeper that looks like a running trainer: every new run stays queued."""
    with slot_taken(runs_root, monkeypatch) as run:
        yield run


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(page).run()
    assert_clean(at, page)
    return at


def assert_clean(at: AppTest, where: str = "") -> None:
    assert not at.exception, f"{where}: exception {[e.value for e in at.exception]}"
    assert not [e.value for e in at.error], f"{where}: st.error {[e.value for e in at.error]}"


def charts(at: AppTest) -> dict[str, dict]:
    return {el.key or el.proto.id: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def decode(value) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def table(at: AppTest, column: str):
    """The first table on the page with this column (a read-only st.dataframe carries no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def done_run(root: Path, name: str, *, scheme: str, seed: int, acc: float, wall: float = 10.0,
             preset: str = "tiny", sweep: dict | None = None, config_path: bool = True, **model) -> Path:
    """A finished run folder as the trainer leaves it (status, metrics, resolved config.yaml)."""
    run = root / name
    preset_file = configs_dir() / f"{preset}.yaml"  # the temporary configs folder when a test uses one
    cfg = resolve_config({**load_config(preset_file), "seed": seed})
    cfg["model"].update(scheme=scheme, **model)
    for key in ("use_relative_position", "position_embedding", "bias_type", "class_token"):
        cfg["model"].pop(key)
    cfg = resolve_config(cfg)
    fields = {"config_path": str(preset_file)} if config_path else {}
    rundir.update_status(run, state="done", best_accuracy=acc, created_at=time.time(), started_at=100.0,
                         finished_at=100.0 + wall, epoch=cfg["train"]["epochs"], epochs=cfg["train"]["epochs"],
                         sweep=sweep, **fields)
    for step, value in ((10, acc / 2), (20, acc)):
        rundir.append_metrics(run, {"kind": "epoch", "step": step, "epoch": step // 10, "eval_accuracy": value,
                                    "train_loss": 1.0 / step})
    save_config(cfg, run / rundir.CONFIG_FILE)
    return run


def fabricated_sweep(root: Path, cells: dict[str, list[float]], name: str = "fab") -> Path:
    """A finished sweep folder over ``model.scheme`` (seed k of a cell reached ``cells[scheme][k]``)."""
    folder = root / "sweeps" / f"{name}-20260101-000000"
    folder.mkdir(parents=True)
    members = []
    for scheme, accs in cells.items():
        for seed, acc in enumerate(accs):
            tag = {"name": name, "dir": str(folder), "cell": {"model.scheme": scheme}, "seed": seed}
            run = done_run(root, f"{name}-{scheme}-s{seed}", scheme=scheme, seed=seed, acc=acc, sweep=tag)
            members.append({"cell": {"model.scheme": scheme}, "seed": seed, "run": str(run),
                            "key": f"model.scheme={scheme} seed={seed}",
                            "overrides": [f"model.scheme={scheme}", f"seed={seed}"]})
    save_config({"name": name, "description": "", "base": "tiny", "grid": {"model.scheme": list(cells)},
                 "seeds": [0, 1, 2], "set": [], "cell_set": {}, "members": members, "created": time.time()},
                folder / "sweep.yaml")
    return folder


# ----------------------------------------------------------------------------- the Experiments page


def test_experiments_page_counts_and_estimates_a_sweep_file(runs_root, configs):
    at = open_page("pages/8_experiments.py")
    assert at.selectbox(key="ex_file").options == ["configs/sweeps/lesson.yaml", "configs/sweeps/tiny.yaml"]
    at.selectbox(key="ex_file").set_value(configs / "sweeps" / "lesson.yaml").run()
    assert_clean(at, "lesson")
    schemes = len(load_config(configs / "sweeps" / "lesson.yaml")["grid"]["model.scheme"])  # x 1 seed
    assert metric(at, "Runs") == str(schemes)
    assert any("header" in c.value for c in at.caption)  # no finished run yet: the preset's own figure
    at.slider(key="ex_file_seeds_lesson.yaml").set_value(3).run()
    assert metric(at, "Runs") == str(3 * schemes)
    # Finished runs of the same preset and length: the estimate is measured (median 10 s per run).
    for k, wall in enumerate((8.0, 10.0, 30.0)):
        done_run(runs_root, f"d{k}", scheme="2d", seed=k, acc=0.9, wall=wall, preset="default")
    at.run()
    assert_clean(at, "measured")
    assert any("measured: median wall time of 3 finished 'default' run(s)" in c.value for c in at.caption)
    assert metric(at, "Estimated time") == explore.format_eta(math.ceil(3 * schemes / 2) * 10.0)  # 2 at once


def test_sweep_builder_counts_cells_with_options_and_varied_keys(runs_root, configs):
    at = open_page("pages/8_experiments.py")
    at.radio(key="ex_mode").set_value("build one here").run()
    assert_clean(at, "builder")
    assert metric(at, "Runs") == "9"  # none, absolute, 2d x 3 seeds
    at.checkbox(key="ex_scheme_t5").check().run()
    at.number_input(key="ex_opt_t5_num_buckets").set_value(16).run()
    at.slider(key="ex_seeds").set_value(2).run()
    at.multiselect(key="ex_vary").select("train.lr").run()
    at.text_input(key="ex_vary_train.lr").input("0.001, 0.003").run()
    assert_clean(at, "built")
    assert metric(at, "Runs") == "16"  # 4 schemes x 2 learning rates x 2 seeds
    spec = leaderboard.build_spec("compare", "default", ["none", "absolute", "2d", "t5"],
                                  options={"t5": {"num_buckets": 16, "max_distance": 128}},
                                  vary={"train.lr": [0.001, 0.003]}, seeds=2)
    assert spec["cell_set"] == {"model.scheme=t5": {"model.rpb.num_buckets": 16}}


def test_queue_a_tiny_sweep_and_see_its_leaderboard(fake, configs):
    root = fake
    at = open_page("pages/8_experiments.py")
    at.selectbox(key="ex_file").set_value(configs / "sweeps" / "tiny.yaml").run()
    at.button(key="ex_queue").click().run()
    assert_clean(at, "queued")
    (folder,) = leaderboard.sweeps_root(root).iterdir()
    assert at.selectbox(key="ex_sweep").value == str(folder)  # the new sweep is the one shown
    sweep = load_config(folder / "sweep.yaml")
    runs = [Path(m["run"]) for m in sweep["members"]]
    assert len(runs) == 2 and all(r.parent == root for r in runs)
    wait_for(lambda: all((rundir.read_status(r) or {}).get("state") == "done" for r in runs), 120)
    at.run()
    assert_clean(at, "done")
    board = table(at, "accuracy (%) mean ± std")
    assert list(board["cell"]) == ["2d", "none"]  # best first: 0.95 against 0.30
    assert list(board["accuracy (%) mean ± std"]) == ["95.0", "30.0"]  # one seed: no std
    assert {"ex_bars", "ex_curves"} <= set(charts(at))
    assert (folder / "summary.md").is_file() and "| 2d | 1 | 95.00 |" in (folder / "summary.md").read_text()


def test_leaderboard_of_a_finished_sweep_matches_hand_numbers(runs_root, configs):
    folder = fabricated_sweep(runs_root, {"none": [0.30, 0.34], "2d": [0.95, 0.97, 0.99]})
    at = open_page("pages/8_experiments.py")
    assert at.selectbox(key="ex_sweep").value == str(folder)
    board = table(at, "accuracy (%) mean ± std")
    assert list(board["cell"]) == ["2d", "none"]
    assert list(board["n"]) == [3, 2] and list(board["val images"]) == [64, 64]
    # 2d: mean 97, sample std 2 (n - 1); none: mean 32, std sqrt(2 * 0.02**2 / 1) = 2.83
    assert list(board["accuracy (%) mean ± std"]) == ["97.0 ± 2.0", "32.0 ± 2.8"]
    bars = charts(at)["ex_bars"]["data"]
    assert decode(bars[0]["y"]) == pytest.approx([97.0, 32.0])
    assert decode(bars[0]["error_y"]["array"]) == pytest.approx([2.0, 100 * math.sqrt(2 * 0.02**2)])
    assert sorted(decode(bars[1]["y"])) == pytest.approx([30.0, 34.0, 95.0, 97.0, 99.0])  # a dot per seed
    curves = charts(at)["ex_curves"]["data"]
    means = {t["name"]: decode(t["y"]) for t in curves if t.get("mode") == "lines+markers"}
    assert means["2d (n=3)"] == pytest.approx([48.5, 97.0]) and means["none (n=2)"] == pytest.approx([16.0, 32.0])
    band = next(t for t in curves if t["name"] == "2d band")
    assert decode(band["y"]) == pytest.approx([49.5, 99.0, 95.0, 47.5])  # max forward, min backward
    # A member whose trainer failed: the others still show, the failure is listed.
    rundir.update_status(runs_root / "fab-none-s1", state="failed", error="RuntimeError: boom")
    at.run()
    assert any("boom" in w.value for w in at.warning)
    assert list(table(at, "accuracy (%) mean ± std")["failed"]) == [0, 1]


def test_open_a_member_in_another_page(runs_root, configs):
    fabricated_sweep(runs_root, {"2d": [0.9]})
    run = runs_root / "fab-2d-s0"
    cfg = load_config(run / rundir.CONFIG_FILE)
    save_checkpoint(fresh_model(cfg), None, 1, {}, run / "best.pt", config=cfg)
    at = open_page("pages/8_experiments.py")
    at.button(key="ex_open_pages/3_attention_maps.py").click().run()
    assert_clean(at, "attention maps")
    assert at.session_state[SEL_SOURCE] == "ckpt:" + str(run / "best.pt")
    assert at.title[0].value == "Attention maps"
    at.switch_page("pages/8_experiments.py").run()
    at.button(key="ex_open_train").click().run()
    assert at.title[0].value == "Train" and at.selectbox(key="tr_run").value == run.name


def test_prepare_a_lesson_queues_the_demo_set_once(busy, runs_root, configs):
    at = open_page("pages/8_experiments.py")
    at.button(key="ex_lesson").click().run()
    assert_clean(at, "lesson")
    folder = leaderboard.sweeps_root(runs_root) / leaderboard.LESSON_DIR
    members = load_config(folder / "sweep.yaml")["members"]
    lesson = load_config(configs / "sweeps" / "lesson.yaml")["grid"]["model.scheme"]
    assert lesson[:3] == ["2d", "absolute", "none"] and set(lesson) >= {"1d", "2d_cls", "t5", "alibi", "cpb"}
    assert [m["cell"]["model.scheme"] for m in members] == lesson  # one run of each
    assert {(rundir.read_status(m["run"]) or {}).get("state") for m in members} == {"queued"}
    assert any("Lesson:" in i.value and f"0 of {len(lesson)}" in i.value for i in at.info)
    before = {p.name for p in runqueue.run_dirs(runs_root)}
    at.button(key="ex_lesson").click().run()  # again: every member still waits, nothing new is queued
    assert {p.name for p in runqueue.run_dirs(runs_root)} == before
    at.switch_page("pages/4_train.py").run()
    assert any("Lesson:" in i.value for i in at.info)  # the Train page points to it too


# ----------------------------------------------------------------------------- the Train page


def test_train_page_offers_every_scheme_and_its_family_options(runs_root):
    at = open_page("pages/4_train.py")
    emb, bias = at.selectbox(key="tr_default_embedding"), at.selectbox(key="tr_default_bias")
    assert emb.options == [runs_ui.embedding_label(e) for e in run_table.EMBEDDING_CHOICES]
    assert bias.options == [runs_ui.bias_label(b) for b in run_table.BIAS_CHOICES]
    assert {run_table.compose_scheme(e, b) for e in run_table.EMBEDDING_CHOICES
            for b in run_table.BIAS_CHOICES} == set(SCHEMES)  # the two choices reach every scheme
    assert (emb.value, bias.value) == ("none", "2d")  # the default preset's scheme
    option_keys = {"t5": ["tr_default_opt_num_buckets", "tr_default_opt_max_distance"],
                   "alibi": ["tr_default_opt_alibi_distance"], "cpb": ["tr_default_opt_cpb_hidden_dim"],
                   "2d": [], "none": []}
    every = {k for keys in option_keys.values() for k in keys}
    for family, keys in option_keys.items():
        at.selectbox(key="tr_default_bias").set_value(family).run()
        assert_clean(at, family)
        shown = {w.key for w in [*at.number_input, *at.radio, *at.select_slider]} & every
        assert shown == set(keys), family
    at.selectbox(key="tr_default_embedding").set_value("rope_mixed").run()
    assert_clean(at, "rope + t5")
    assert any("rope_mixed" in c.value and "model.scheme" in c.value for c in at.caption)


def test_repeat_queues_n_runs_listed_with_their_position_and_cancel(busy, runs_root):
    at = open_page("pages/4_train.py")
    at.selectbox(key="tr_preset").set_value("tiny").run()
    at.selectbox(key="tr_tiny_bias").set_value("t5").run()
    at.number_input(key="tr_tiny_opt_num_buckets").set_value(16).run()
    at.number_input(key="tr_seed_tiny").set_value(4)
    at.number_input(key="tr_repeat_tiny").set_value(3)
    at.form_submit_button[0].click().run()
    assert_clean(at, "start x3")
    new = sorted((p for p in runqueue.run_dirs(runs_root) if p != busy), key=lambda p: jobs.run_info(p)["queue_position"])
    assert [jobs.run_info(p)["queue_position"] for p in new] == [1, 2, 3]
    cfgs = [run_table.read_run_config(p) for p in new]
    assert [c["seed"] for c in cfgs] == [4, 5, 6]
    assert {c["model"]["scheme"] for c in cfgs} == {"t5"} and all(c["model"]["rpb"] == {"num_buckets": 16} for c in cfgs)
    assert [p.name.split("-20")[0] for p in new] == ["tiny-t5-s4", "tiny-t5-s5", "tiny-t5-s6"]
    texts = [m.value for m in at.markdown]
    assert {"queued **#1**", "queued **#2**", "queued **#3**", "training"} <= set(texts)
    at.button(key=f"tr_queue_cancel_{new[0].name}").click().run()
    assert_clean(at, "cancel queued")
    assert rundir.read_status(new[0])["state"] == "cancelled" and jobs.run_pid(new[0]) is None
    assert [jobs.run_info(p)["queue_position"] for p in new] == [None, 1, 2]


def test_runs_table_config_columns_filter_groups_and_overlay(runs_root):
    for k, (scheme, seed, acc) in enumerate([("2d", 0, 0.90), ("2d", 1, 0.96), ("t5", 0, 0.60), ("t5", 1, 0.70)]):
        done_run(runs_root, f"r{k}", scheme=scheme, seed=seed, acc=acc)
    # A run started from the terminal: no config_path in its status, only its config.yaml.
    done_run(runs_root, "cli", scheme="none", seed=3, acc=0.3, config_path=False, preset="default")
    at = open_page("pages/4_train.py")
    runs = table(at, "changed").set_index("run")
    assert runs.loc["cli", ["preset", "scheme", "seed"]].tolist() == ["default", "none", 3]
    assert runs.loc["cli", "changed"] == "seed=3, model.scheme=none"
    assert runs.loc["r3", "changed"] == "seed=1, model.scheme=t5"
    at.text_input(key="tr_filter").input("t5").run()
    assert sorted(table(at, "changed")["run"]) == ["r2", "r3"]
    at.text_input(key="tr_filter").input("").run()
    at.selectbox(key="tr_group").set_value("scheme").run()
    groups = table(at, "accuracy (%)").set_index("scheme")
    assert groups.loc["2d", "accuracy (%)"] == f"93.0 ± {100 * math.sqrt(2 * 0.03**2):.1f}"
    assert groups.loc["t5", "n"] == 2 and groups.loc["none", "accuracy (%)"] == "30.0"
    at.multiselect(key="tr_overlay").select("r0").select("r2").select("cli").run()
    assert_clean(at, "overlay")
    names = {t.get("legendgroup") for t in charts(at)["tr_overlay_curves"]["data"]}
    assert names == {"r0", "r2", "cli"}
