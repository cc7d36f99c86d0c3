"""The Labs page (pages/9_labs.py) and the Resize lab (pages/6_resize_lab.py) under AppTest.

Lab sweeps are fabricated the way relpos.experiments.sweep and labs write them (tests/lab_support.py):
the numbers the page shows are checked against the results.csv written here (mean and sample std
computed with the statistics module, not with relpos), the paper's columns against the papers'
numbers, and the conclusion against relpos.experiments.lab_report.conclusion. Queuing goes through
the sweep library with a fake trainer; evaluating runs the lab on untrained tiny checkpoints.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app_support.frame import NAV
from lab_support import TINY_REGIONS, fabricate_lab_sweep, long_rows, tiny_cfg, transfer_rows
from relpos.experiments import lab_views, rundir, runproc, runqueue
from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import build_model
from relpos.experiments.config_utils import load_config
from relpos.experiments.lab_report import conclusion
from relpos.experiments.labs import read_results, summarize_results
from relpos.experiments.shift import shift_example
from relpos.experiments.sweep import load_spec
from support import install_fake_trainer, kill_runs

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "9_labs.py")
TIMEOUT = 120
SEEDS = (0, 1, 2)
TRANSFER = {"2d/bicubic": {6: [0.99, 0.98, 0.97], 8: [0.938, 0.9, 0.8], 12: [0.805, 0.564, 0.471]},
            "2d/geometric": {6: [0.99, 0.98, 0.975], 8: [0.947, 0.9, 0.81], 12: [0.758, 0.5, 0.45]},
            "cpb/log": {6: [1.0, 1.0, 0.998], 8: [0.99, 0.98, 0.99], 12: [0.99, 0.982, 0.988]},
            "absolute": {6: [0.986, 0.98, 0.97], 8: [0.971, 0.96, 0.95], 12: [0.953, 0.9, 0.93]}}
SHIFT = {"2d": {"region=seen": [0.986, 0.886, 0.986], "region=unseen": [0.822, 0.741, 0.921]},
         "cpb": {"region=seen": [0.996, 1.0, 0.994], "region=unseen": [0.986, 0.925, 0.974]},
         "absolute": {"region=seen": [0.994, 0.998, 0.99], "region=unseen": [0.525, 0.531, 0.555]},
         "none": {"region=seen": [0.444, 0.415, 0.406], "region=unseen": [0.42, 0.428, 0.421]}}
ABLATION = {"2d": {"val/relational": [1.0, 1.0, 0.996]}, "absolute": {"val/relational": [0.995, 0.99, 0.998]},
            "none": {"val/relational": [0.364, 0.35, 0.37]}, "absolute+2d": {"val/relational": [1.0, 0.998, 1.0]}}
DIGITS = {"2d": {"val/digits": [0.942, 0.93]}, "absolute": {"val/digits": [0.9, 0.91]},
          "none": {"val/digits": [0.7, 0.72]}, "absolute+2d": {"val/digits": [0.94, 0.95]}}


def assert_clean(at: AppTest, where: str = "") -> None:
    assert not at.exception, f"{where}: exception {[e.value for e in at.exception]}"
    assert not [e.value for e in at.error], f"{where}: st.error {[e.value for e in at.error]}"


def open_lab(kind: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert_clean(at, "labs")
    if at.radio(key="lb_kind").value != kind:
        at.radio(key="lb_kind").set_value(kind).run()
    assert_clean(at, kind)
    return at


def csv_cells(sweep_dir: Path) -> dict[tuple[str, str], str]:
    """``{(scheme, eval): "mean ± std"}`` straight from results.csv (statistics module, sample std)."""
    groups: dict[tuple[str, str], list[float]] = {}
    with (sweep_dir / "results.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            groups.setdefault((r["scheme"], r["eval"]), []).append(float(r["accuracy"]))
    return {k: f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for k, v in groups.items()}


def frame(at: AppTest, *columns: str, without: str = ""):
    """The first dataframe on the page with all of ``columns`` (and not column ``without``)
    (AppTest does not expose a dataframe's key)."""
    found = [df.value for df in at.dataframe if set(columns) <= set(df.value.columns) and without not in df.value.columns]
    assert found, f"no dataframe with columns {columns}: {[list(df.value.columns) for df in at.dataframe]}"
    return found[0]


def charts(at: AppTest) -> dict[str, dict]:
    return {el.key: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def decode(value) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        import base64

        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return arr.reshape([int(s) for s in str(value["shape"]).split(",")]) if value.get("shape") else arr
    return np.asarray(value, dtype=float)


def conclusion_text(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Conclusion**"))


# ----------------------------------------------------------------------------- the page


def test_labs_is_in_the_navigation():
    assert ("pages/9_labs.py", "Labs") in [(i.path, i.label) for i in NAV]


@pytest.mark.parametrize("kind", list(lab_views.LAB_TITLES))
def test_each_lab_without_a_sweep_offers_its_shipped_spec(runs_root, kind):
    at = open_lab(kind)
    assert any("No " in i.value and "sweep yet" in i.value for i in at.info)
    assert at.button(key=f"lb_queue_{kind}").label.startswith("Queue ")
    assert any("python -m relpos.experiments.sweep --spec configs/sweeps/" in c.value for c in at.caption)


def test_transfer_lab_shows_the_csv_numbers_the_paper_and_the_words(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "transfer", {"kind": "transfer", "grids": [6, 8, 12]},
                                    ["2d", "cpb", "absolute"], SEEDS, transfer_rows(TRANSFER))
    at = open_lab("transfer")
    ours = frame(at, "grid")
    want = csv_cells(sweep_dir)
    assert list(ours.columns) == ["grid", "2d/bicubic", "2d/geometric", "cpb/log", "absolute"]
    assert list(ours["grid"]) == ["6x6 (1.5×)", "8x8 (2×)", "12x12 (3×)"]
    for row, g in zip(ours.to_dict("records"), (6, 8, 12)):
        for scheme in TRANSFER:
            assert row[scheme] == want[(scheme, f"grid={g}x{g}")], (scheme, g)
    assert any("over 3 seeds, on 64 images per evaluation" in c.value for c in at.caption)
    paper = frame(at, "window", "ratio")
    assert paper.set_index("window").loc["24", "2d/bicubic"] == "68.7 / 83.2"
    assert paper.set_index("window").loc["24", "cpb/log"] == "79.1 / 84.2"
    assert any("Liu et al., Swin Transformer V2, CVPR 2022, Table 1" in c.value for c in at.caption)
    summary = summarize_results(read_results(sweep_dir))
    assert conclusion_text(at) == f"**Conclusion** (derived from the numbers): {conclusion('transfer', summary)}"
    # Each rule once: a method that does not apply is n/a (with its reason), never a second number.
    methods = frame(at, "scheme", "native").set_index("scheme")
    assert methods.loc["2d"].tolist() == ["2d/bicubic", "2d/geometric", "n/a"]
    assert methods.loc["cpb"].tolist() == ["n/a", "n/a", "cpb/log"]
    assert methods.loc["absolute"].tolist() == ["n/a", "n/a", "absolute"]
    reasons = next(m.value for m in at.markdown if m.value.startswith("- **"))
    assert "- **bicubic and geometric**: n/a for cpb: the model has no learned table to resize (bias cpb)" in reasons
    assert "- **bicubic and geometric**: n/a for absolute: the model has no learned table to resize (no " in reasons
    assert "- **native**: n/a for 2d: the learned table (2d) must be resized" in reasons
    # The figure: one line per scheme at the csv's means; the band spans the lowest to the highest seed.
    fig = charts(at)["lb_tr_ours"]
    lines = {t["name"]: t for t in fig["data"] if t.get("mode") == "lines+markers"}
    assert set(lines) == set(TRANSFER)
    np.testing.assert_allclose(decode(lines["cpb/log"]["y"]), [statistics.mean(TRANSFER["cpb/log"][g])
                                                               for g in (6, 8, 12)])
    np.testing.assert_allclose(decode(lines["cpb/log"]["x"]), [1.5, 2.0, 3.0])
    band = next(t for t in fig["data"] if t["name"] == "2d/bicubic band")
    np.testing.assert_allclose(decode(band["y"]), [0.99, 0.938, 0.805, 0.471, 0.8, 0.97])
    paper_fig = charts(at)["lb_tr_paper"]
    bicubic = next(t for t in paper_fig["data"] if t["name"] == "2d/bicubic")
    np.testing.assert_allclose(decode(bicubic["y"]), [81.7, 79.4, 77.2, 73.2, 68.7])
    colors = {t["name"]: t["line"]["color"] for t in fig["data"] + paper_fig["data"] if t["name"] == "cpb/log"}
    assert len(set(colors.values())) == 1  # one colour per scheme in both figures


def test_shift_lab_bars_table_and_the_picture_of_why(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "shift", {"kind": "shift", "num_samples": 64},
                                    ["2d", "cpb", "absolute", "none"], SEEDS, long_rows(SHIFT),
                                    overrides=TINY_REGIONS, checkpoints=True)
    at = open_lab("shift")
    table = frame(at, "scheme", "region=seen").set_index("scheme")
    want = csv_cells(sweep_dir)
    assert list(table.index) == ["2d", "cpb", "absolute", "none"]
    for scheme in SHIFT:
        for ev in ("region=seen", "region=unseen"):
            assert table.loc[scheme, ev] == want[(scheme, ev)]
    summary = summarize_results(read_results(sweep_dir))
    assert conclusion_text(at) == f"**Conclusion** (derived from the numbers): {conclusion('shift', summary)}"
    assert "As expected" in conclusion_text(at)
    bars = [t for t in charts(at)["lb_sh_bars"]["data"] if t["type"] == "bar"]
    unseen = next(t for t in bars if t["offsetgroup"] == "region=unseen")
    np.testing.assert_allclose(decode(unseen["y"]), [statistics.mean(SHIFT[s]["region=unseen"]) for s in SHIFT])
    np.testing.assert_allclose(decode(unseen["error_y"]["array"]),
                               [statistics.stdev(SHIFT[s]["region=unseen"]) for s in SHIFT])
    # The picture of why: the absolute and the relative model of one seed, one image, one colour scale.
    at.selectbox(key="lb_sh_seed").set_value(1)
    at.number_input(key="lb_sh_index").set_value(3)
    at.radio(key="lb_sh_query").set_value("B").run()
    assert_clean(at, "why")
    fig = charts(at)["lb_sh_why"]
    heat = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heat) == 2 and {t["coloraxis"] for t in heat} == {"coloraxis"}  # one shared scale
    axis = fig["layout"]["coloraxis"]
    maps = [decode(t["z"]) for t in heat]
    assert axis["cmin"] == 0 and axis["cmax"] == pytest.approx(max(m.max() for m in maps))
    for scheme, got in zip(("absolute", "2d"), maps):
        ex = shift_example(str(runs_root / f"shift-{scheme}-s1" / "last.pt"), index=3)
        q = lab_views.mark_token(ex["marks"], "B", 2, (4, 4))
        want_map = ex["attention"][-1][0, :, q, :].mean(dim=0).reshape(4, 4)  # last layer, mean of heads
        np.testing.assert_allclose(got, want_map.numpy(), rtol=1e-5, atol=1e-7)
    assert any(t["type"] == "image" for t in fig["data"])  # the input image is drawn
    assert sum(s.get("line", {}).get("color") == "#ff4b4b" for s in fig["layout"]["shapes"]) == 3  # mark A, 3 panels


def test_ablation_pools_both_datasets_beside_swin_table_4(runs_root):
    default = fabricate_lab_sweep(runs_root, "ablation", {"kind": "ablation"}, ["none", "absolute", "2d", "absolute+2d"],
                                  SEEDS, long_rows(ABLATION))
    digits = fabricate_lab_sweep(runs_root, "ablation_digits", {"kind": "ablation"},
                                 ["none", "absolute", "2d", "absolute+2d"], (0, 1), long_rows(DIGITS))
    at = open_lab("ablation")
    assert set(at.multiselect(key="lb_sweep_ablation").value) == {str(default), str(digits)}
    table = frame(at, "scheme", without="paper's row").set_index("scheme")
    want = {**csv_cells(default), **csv_cells(digits)}
    assert list(table.index) == ["2d", "absolute+2d", "absolute", "none"]  # the paper's order
    for (scheme, ev), cell in want.items():
        suffix = "" if ev == "val/relational" else " (2 seeds)"  # the usual count is 3 seeds
        assert table.loc[scheme, ev] == cell + suffix
    paper = frame(at, "paper's row").set_index("scheme")
    assert paper.loc["2d", "ImageNet-1K top-1"] == 81.3 and paper.loc["none", "ImageNet-1K top-1"] == 80.1
    rows = read_results(default) + read_results(digits)  # pooled: the relational task first
    text = conclusion_text(at)
    assert text == f"**Conclusion** (derived from the numbers): {conclusion('ablation', summarize_results(rows))}"
    assert "Relative best and no position worst, as in the paper" in text and "val/digits (2 seeds)" in text
    bars = [t for t in charts(at)["lb_ab_bars"]["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == ["relational task (default preset)", "digits"]
    # One sweep alone shows only its own dataset.
    at.multiselect(key="lb_sweep_ablation").set_value([str(digits)]).run()
    assert_clean(at, "digits only")
    assert list(frame(at, "scheme", without="paper's row").columns) == ["scheme", "val/digits"]


FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, os, time
    from pathlib import Path
    from relpos.experiments import rundir, runqueue

    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--run-dir")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    run = Path(a.run_dir)
    t0 = time.time()
    rundir.update_status(run, state="running", pid=os.getpid(), started_at=t0)
    rundir.update_status(run, state="done", best_accuracy=0.5, started_at=t0, finished_at=t0 + 1)
    runqueue.advance_after_run(run, None)
    """
)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch, runs_root):
    install_fake_trainer(tmp_path, monkeypatch, FAKE_TRAINER, "fake_lab_train")
    monkeypatch.setenv(runqueue.MAX_RUNS_ENV, "8")  # every member at once: the fake trainer only writes its status
    yield runs_root
    kill_runs(runs_root)


@pytest.mark.slow
def test_queue_button_queues_the_shipped_spec(fake_trainer):
    root = fake_trainer
    at = open_lab("shift")
    at.slider(key="lb_seeds_shift_shift.yaml").set_value(1).run()
    schemes = load_spec(ROOT / "configs" / "sweeps" / "shift.yaml")["grid"]["model.scheme"]
    button = at.button(key="lb_queue_shift")
    assert button.label == f"Queue {len(schemes)} runs"
    button.click().run()
    assert_clean(at, "queued")
    (sweep_dir,) = (root / "sweeps").iterdir()
    sweep = load_config(sweep_dir / "sweep.yaml")
    assert sweep["name"] == "shift" and sweep["evaluate"]["kind"] == "shift" and sweep["seeds"] == [0]
    assert [m["cell"]["model.scheme"] for m in sweep["members"]] == schemes
    assert at.selectbox(key="lb_sweep_shift").value == str(sweep_dir)  # the page shows the new sweep
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and lab_views.lab_progress(sweep_dir)["done"] < len(schemes):
        runqueue.reconcile(root)
        time.sleep(0.2)
    assert lab_views.lab_progress(sweep_dir)["done"] == len(schemes)
    at.run()
    assert_clean(at, "done")
    assert at.button(key=f"lb_evaluate_{sweep_dir.name}").label == f"Evaluate {len(schemes)} finished member(s)"


def test_evaluate_button_writes_results(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "transfer", {"kind": "transfer", "grids": [6], "num_samples": 8},
                                    ["2d", "absolute"], (0,), checkpoints=True)
    at = open_lab("transfer")
    assert any("No results yet" in i.value for i in at.info)
    at.button(key=f"lb_evaluate_{sweep_dir.name}").click().run()
    assert_clean(at, "evaluated")
    rows = read_results(sweep_dir)
    assert sorted((r["scheme"], r["eval"], r["n"]) for r in rows) == [
        ("2d/bicubic", "grid=6x6", 8), ("2d/geometric", "grid=6x6", 8), ("absolute", "grid=6x6", 8)]
    assert (sweep_dir / "results.md").is_file()
    ours = frame(at, "grid")
    assert ours.loc[0, "absolute"] == f"{next(r['accuracy'] for r in rows if r['scheme'] == 'absolute'):.3f}"
    assert not any(b.key == f"lb_evaluate_{sweep_dir.name}" for b in at.button)


def test_a_sweep_still_training_polls_and_says_so(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "shift", {"kind": "shift"}, ["2d", "absolute"], (0,),
                                    overrides=TINY_REGIONS, state="running")
    # Members that look alive: sleepers whose command lines name the trainer and the run folder.
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", runproc.TRAIN_MODULE, run.name])
                for run in runs_root.glob("shift-*-s0")]
    try:
        for proc, run in zip(sleepers, runs_root.glob("shift-*-s0")):
            rundir.update_status(run, pid=proc.pid)
        at = open_lab("shift")
        assert any("0 of 2 members done · 2 queued or training" in c.value for c in at.caption)
        assert at.session_state["lb_polling"] is True
        assert any("No results yet" in i.value for i in at.info)
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- the resize lab


def save_tiny(runs_root: Path, name: str, *overrides: str) -> Path:
    cfg = tiny_cfg(*overrides)
    path = runs_root / name / "best.pt"
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg), None, 1, {}, path, config=cfg)
    rundir.update_status(path.parent, state="done", created_at=time.time())
    return path


@pytest.mark.parametrize("scheme, applied", [("absolute", ["native"]), ("none", ["native"]),
                                             ("rope_axial", ["native", "rescale"]), ("cpb", ["native"])])
def test_resize_lab_moves_every_scheme_and_says_what_does_not_apply(runs_root, scheme, applied):
    save_tiny(runs_root, f"run-{scheme}", f"model.scheme={scheme}")
    at = AppTest.from_file(str(ROOT / "pages" / "6_resize_lab.py"), default_timeout=TIMEOUT).run()
    assert_clean(at, scheme)
    acc = at.dataframe[0].value
    assert list(acc["model"])[: 1 + len(applied)] == ["original", *applied]
    assert all(str(a).endswith(" on 64 images") for a in acc["accuracy"])  # tiny: 64 validation images
    na = frame(at, "method", "n/a: why").set_index("method")
    assert set(na.index) == {"bicubic", "geometric", "native", "rescale"} - set(applied)
    assert all(reason for reason in na["n/a: why"])
    assert any("no number appears under their name" in c.value for c in at.caption)
