"""The Streamlit app, server side, with streamlit.testing.v1.AppTest.

The app runs in Streamlit's pages/ mode: app.py is the home page, pages/<n>_<name>.py the pages.
Every page file runs on its own and from app.py without an exception or an error message, at its
defaults and after changing each main widget (including the largest window the widgets allow);
the sidebar's choices (model, layer, head) survive every page switch; the charts carry the
library's numbers; Start creates a run that reaches ``done`` and Cancel ends one in ``cancelled``.
Runs go to a temporary runs root (``RELPOS_RUNS_ROOT``) and are always cancelled by a finalizer.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app_support.frame import NAV, W_HEAD, W_LAYER, W_SOURCE
from app_support.state import SEL_HEAD, SEL_LAYER, SEL_SOURCE
from relpos import explore, jobs
from relpos.diagnostics import DIAGNOSTIC_MEASURES, attention_maps
from relpos.experiments.config import fresh_model, preset_config
from relpos.geometry import relative_position_index
from relpos.presets import BIAS_PRESETS, bias_arrays, make_bias
from relpos.experiments import rundir, runproc
from relpos.families import FAMILIES
from support import wait_for

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = {
    "indices": "pages/1_position_indices.py",
    "bias": "pages/2_bias_explorer.py",
    "attention": "pages/3_attention_maps.py",
    "train": "pages/4_train.py",
    "checkpoints": "pages/5_checkpoints.py",
    "resize": "pages/6_resize_lab.py",
    "import": "pages/7_import_checkpoint.py",
    "experiments": "pages/8_experiments.py",
}
TIMEOUT = 120


def new_app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def assert_clean(at: AppTest, where: str = "") -> None:
    assert not at.exception, f"{where}: exception {[e.value for e in at.exception]}"
    errors = [e.value for e in at.error]
    assert not errors, f"{where}: st.error {errors}"


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page by key, as decoded figure JSON."""
    out = {}
    for el in at.get("plotly_chart"):
        out[el.key or el.proto.id] = json.loads(el.proto.spec)
    return out


def decode(value):
    """A Plotly array from figure JSON: plain list or binary {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            shape = [int(s) for s in str(shape).split(",")]
            arr = arr.reshape(shape)
        return arr
    return np.asarray(value, dtype=float)


def heatmap_z(fig: dict, k: int = 0) -> np.ndarray:
    """The ``k``-th heatmap trace's values of a figure JSON."""
    traces = [t for t in fig["data"] if t.get("type") == "heatmap"]
    return decode(traces[k]["z"])


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(PAGES[page]).run()
    assert_clean(at, page)
    return at


def test_home_renders(runs_root):
    at = new_app().run()
    assert_clean(at, "home")
    assert any("softmax" in el.value for el in at.latex)
    assert at.sidebar.selectbox(key=W_SOURCE).value.startswith("preset:")
    assert at.session_state[SEL_SOURCE] == at.sidebar.selectbox(key=W_SOURCE).value
    # The sidebar's navigation, then "Where to start": one link per page in the main area.
    nav = [el.proto for el in at.sidebar.get("page_link")]
    assert [(p.label, p.icon) for p in nav] == [(i.label, i.icon) for i in NAV]
    assert len(at.main.get("page_link")) == len(NAV) - 1


def page_frame_call(path: str) -> str:
    """The title a page passes to page_frame (its first statement after the imports)."""
    tree = ast.parse((ROOT / path).read_text())
    docstring, first, *_ = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    call = first.value  # `page_frame(...)` or `source, layer, head = page_frame(...)`
    assert isinstance(call, ast.Call) and getattr(call.func, "id", "") == "page_frame", f"{path}: frame first"
    return call.args[0].value


def test_pages_mode_layout():
    """pages/ holds exactly the pages of the navigation table; no st.navigation, no app_pages/."""
    assert not (ROOT / "app_pages").exists()
    files = sorted(p.name for p in (ROOT / "pages").iterdir() if p.suffix == ".py")
    assert ["pages/" + f for f in files] == [item.path for item in NAV[1:]], "every .py in pages/ is a page"
    assert not [p for p in (ROOT / "pages").iterdir() if p.suffix != ".py" and p.name != "__pycache__"]
    assert NAV[0].path == "app.py"
    for item in NAV:
        assert page_frame_call(item.path) == item.label, item.path
        assert re.fullmatch(r"\d+_[a-z_]+\.py", Path(item.path).name) or item.path == "app.py"
    for path in [ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "app_support").glob("*.py")]:
        text = path.read_text()
        assert "st.navigation" not in text and "_pending_source" not in text, path
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["showSidebarNavigation"] is False


@pytest.mark.parametrize("item", NAV, ids=[i.label for i in NAV])
def test_every_page_file_runs_on_its_own(runs_root, item):
    """Each page file is a script of its own (Streamlit runs it directly); its frame still draws the
    title and the model picker."""
    at = AppTest.from_file(str(ROOT / item.path), default_timeout=TIMEOUT).run()
    assert_clean(at, item.path)
    assert at.title[0].value == (item.label if item.path != "app.py" else "Relative position bias, seen and trained")
    assert at.sidebar.selectbox(key=W_SOURCE).value == at.session_state[SEL_SOURCE]


@pytest.mark.parametrize(
    "page, expected_charts",
    [
        ("indices", {"pi_matrix", "pi_query_map"}),
        ("bias", {"be_table", "be_bias", "be_query_bias", "be_attn_with", "be_attn_without"}),
        ("attention", {"am_query_with", "am_query_without", "am_heads"}),
        ("train", set()),
        ("checkpoints", set()),
        ("resize", set()),
        ("import", set()),
    ],
)
def test_every_page_renders_at_defaults(runs_root, page, expected_charts):
    at = open_page(new_app().run(), page)
    assert expected_charts <= set(charts(at)), set(charts(at))
    assert at.markdown, "every page opens with a few sentences"
    item = next(i for i in NAV if i.path == PAGES[page])
    assert at.title[0].value == item.label
    assert len(at.sidebar.get("page_link")) == len(NAV)  # the navigation, on every page
    assert at.sidebar.selectbox(key=W_SOURCE).value.startswith("preset:")


def test_position_indices_widgets_and_chart_data(runs_root):
    at = open_page(new_app().run(), "indices")
    at.number_input(key="pi_h").set_value(2)
    at.number_input(key="pi_w").set_value(2).run()
    assert_clean(at)
    z = heatmap_z(charts(at)["pi_matrix"])
    np.testing.assert_array_equal(z, [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    at.slider(key="pi_query").set_value(3)
    at.slider(key="pi_key").set_value(0).run()
    assert_clean(at)
    assert any("= 8" in el.value for el in at.latex)  # index[3, 0] = 8
    # 1D, then the largest window the widgets allow.
    at.radio(key="pi_kind").set_value("1d").run()
    assert_clean(at, "1d")
    at.number_input(key="pi_len").set_value(12).run()
    assert_clean(at, "1d len")
    z = heatmap_z(charts(at)["pi_matrix"])
    np.testing.assert_array_equal(z, relative_position_index(12).numpy())
    at.radio(key="pi_kind").set_value("2d").run()
    at.number_input(key="pi_h").set_value(explore.MAX_WINDOW_SIDE)
    at.number_input(key="pi_w").set_value(explore.MAX_WINDOW_SIDE).run()
    assert_clean(at, "largest window")
    at.slider(key="pi_query").set_value(explore.MAX_WINDOW_SIDE**2 - 1).run()
    assert_clean(at, "largest window, last query")


def test_bias_explorer_widgets_and_chart_data(runs_root):
    at = open_page(new_app().run(), "bias")
    for preset in BIAS_PRESETS:
        at.selectbox(key="be_preset").set_value(preset).run()
        assert_clean(at, preset)
    at.selectbox(key="be_preset").set_value("locality")
    at.number_input(key="be_h").set_value(3)
    at.number_input(key="be_w").set_value(4)
    at.number_input(key="be_heads").set_value(2)
    at.slider(key="be_alpha").set_value(2.0).run()
    assert_clean(at)
    rpb = make_bias("2d", (3, 4), 2, preset="locality", alpha=2.0)
    ref = bias_arrays(rpb)
    fig = charts(at)["be_bias"]
    z = heatmap_z(fig)
    np.testing.assert_allclose(z, ref["bias"][0], rtol=1e-6, atol=1e-6)
    # A locality bias pulls attention in: the metric says so.
    with_d, without_d = (float(m.value.split()[0]) for m in at.metric[:2])
    assert with_d < without_d
    for key, value in [("be_head", 1), ("be_query", 5), ("be_content", 0.0), ("be_seed", 3),
                       ("be_init_std", 0.1)]:
        widget = at.slider(key=key) if key in ("be_head", "be_query", "be_content") else at.number_input(key=key)
        widget.set_value(value).run()
        assert_clean(at, key)
    at.selectbox(key="be_kind").set_value("1d").run()
    assert_clean(at, "1d")
    # Largest settings: 32x32 window and 16 heads.
    at.selectbox(key="be_kind").set_value("2d").run()
    at.number_input(key="be_h").set_value(explore.MAX_WINDOW_SIDE)
    at.number_input(key="be_w").set_value(explore.MAX_WINDOW_SIDE)
    at.number_input(key="be_heads").set_value(explore.MAX_HEADS).run()
    assert_clean(at, "largest")


def test_attention_page_widgets(runs_root):
    at = open_page(new_app().run(), "attention")
    # The charts carry the library's numbers: every head of layer 0 for sample 0 of the preset.
    preset = at.session_state[SEL_SOURCE].split(":", 1)[1]
    cfg = preset_config(preset)
    image, _label, _classes = explore.sample_input(cfg, 0)
    ref = attention_maps(fresh_model(cfg), image)[0]  # (H, N, N)
    fig = charts(at)["am_heads"]
    for h in range(ref.shape[0]):
        np.testing.assert_allclose(heatmap_z(fig, h), ref[h], rtol=1e-4, atol=1e-6)
    at.slider(key="am_query").set_value(0).run()
    assert_clean(at, "query")
    at.number_input(key="am_sample").set_value(3).run()
    assert_clean(at, "sample")
    for table in ("locality", "zeros"):
        at.selectbox(key="am_table").set_value(table).run()
        assert_clean(at, table)
    at.selectbox(key="am_table").set_value("zeros").run()
    figs = charts(at)
    a = heatmap_z(figs["am_query_with"])
    b = heatmap_z(figs["am_query_without"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # a zero table is the same as no bias
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (0, 128, 255)).save(buf, format="PNG")
    at.radio(key="am_input").set_value("upload").run()
    at.file_uploader(key="am_upload").upload("pic.png", buf.getvalue(), "image/png").run()
    assert_clean(at, "upload")
    assert "am_query_with" in charts(at)


TWO_LAYER_PRESET = """
name: two
seed: 0
data: {dataset: relational, img_size: 8, patch_size: 2, mark_size: 1, num_train: 64, num_val: 32}
model: {embed_dim: 16, depth: 2, num_heads: 2, use_relative_position: true, bias_type: 2d}
train: {epochs: 1, batch_size: 32, device: cpu}
"""


def assert_sidebar_shows(at: AppTest, source: str, layer: int, head: int, where: str) -> None:
    """The shared choices are set, and the sidebar's pickers show them."""
    assert (at.session_state[SEL_SOURCE], at.session_state[SEL_LAYER], at.session_state[SEL_HEAD]) == (
        source, layer, head), where
    shown = [at.sidebar.selectbox(key=k).value for k in (W_SOURCE, W_LAYER, W_HEAD)]
    assert shown == [source, layer, head], where


def test_sidebar_choices_survive_page_switches(runs_root, tmp_path, monkeypatch):
    """A model, layer and head chosen in the sidebar of one page are still chosen on every other page
    (and back on the first), whichever page they were chosen on."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "default.yaml").write_text(TWO_LAYER_PRESET)
    (configs / "second.yaml").write_text(TWO_LAYER_PRESET.replace("name: two", "name: second"))
    monkeypatch.setenv(jobs.CONFIGS_DIR_ENV, str(configs))
    at = open_page(new_app().run(), "attention")
    assert len(at.sidebar.selectbox(key=W_LAYER).options) == 2 and len(at.sidebar.selectbox(key=W_HEAD).options) == 2
    at.sidebar.selectbox(key=W_SOURCE).set_value("preset:second").run()
    at.sidebar.selectbox(key=W_LAYER).set_value(1)
    at.sidebar.selectbox(key=W_HEAD).set_value(1).run()
    assert_clean(at, "chosen")
    assert any("layer 1 · head 1" in (c.value or "") for c in at.caption)
    for page in [*PAGES, "attention"]:
        open_page(at, page)
        assert_sidebar_shows(at, "preset:second", 1, 1, page)
    at.switch_page("app.py").run()
    assert_sidebar_shows(at, "preset:second", 1, 1, "home")
    # Changed again on another page: the new choice is the one every page sees.
    open_page(at, "train")
    at.sidebar.selectbox(key=W_HEAD).set_value(0).run()
    open_page(at, "checkpoints")
    assert_sidebar_shows(at, "preset:second", 1, 0, "after a second change")


def test_use_a_run_checkpoint_sets_the_model_everywhere(runs_root):
    """Train's "use this run's checkpoint" makes it the current model of every page (no pending hack)."""
    run = runs_root / "20260101-000000-done"
    rundir.update_status(run, state="done", epoch=1, epochs=1, created_at=time.time())
    ckpt = saved_checkpoint(run / "best.pt")
    at = open_page(new_app().run(), "train")
    at.button(key="tr_use").click().run()
    assert_clean(at, "use")
    assert_sidebar_shows(at, "ckpt:" + str(ckpt), 0, 0, "train")
    open_page(at, "attention")
    assert_sidebar_shows(at, "ckpt:" + str(ckpt), 0, 0, "attention")
    assert {"am_query_with", "am_heads"} <= set(charts(at))


def start_from_page(at: AppTest, preset: str, **settings) -> Path:
    at.selectbox(key="tr_preset").set_value(preset).run()
    assert_clean(at, "preset")
    for key, value in settings.items():
        at.number_input(key=f"tr_{key}_{preset}").set_value(value)
    at.form_submit_button[0].click().run()
    assert_clean(at, "start")
    root = Path(os.environ[jobs.RUNS_ROOT_ENV])
    dirs = wait_for(lambda: [d for d in root.iterdir() if (d / rundir.STATUS_FILE).is_file()], 30)
    return dirs[0]


@pytest.mark.slow
def test_start_run_reaches_done_and_shows_everywhere(runs_root):
    at = open_page(new_app().run(), "train")
    run_dir = start_from_page(at, "tiny")
    assert run_dir.parent == runs_root
    status = wait_for(lambda: (s := rundir.read_status(run_dir)) and s.get("state") in rundir.TERMINAL_STATES
                      and s, 240, 0.5)
    assert status["state"] == "done", jobs.log_tail(run_dir)
    at.run()
    assert_clean(at, "train after done")
    assert "tr_curves" in charts(at)
    assert at.selectbox(key="tr_run").value == run_dir.name
    # The checkpoint is now a source in the sidebar and on the checkpoints page.
    ckpt = next(p for p in (run_dir / "best.pt", run_dir / "last.pt") if p.is_file())
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(ckpt)).run()
    assert_clean(at, "ckpt source")
    open_page(at, "attention")
    assert {"am_query_with", "am_query_without", "am_heads"} <= set(charts(at))
    open_page(at, "checkpoints")
    assert "ck_learned" in charts(at) or any("no relative position bias" in i.value for i in at.info)


@pytest.mark.slow
def test_cancel_ends_cancelled(runs_root):
    at = open_page(new_app().run(), "train")
    run_dir = start_from_page(at, "tiny", epochs=200)
    wait_for(lambda: (rundir.read_status(run_dir) or {}).get("state") == "running", 120, 0.2)
    at.run()
    at.button(key="tr_cancel").click().run()
    assert_clean(at, "cancel")
    assert rundir.read_status(run_dir)["state"] == "cancelled"
    assert not jobs.is_alive(jobs.run_pid(run_dir), run_dir)


def test_start_beyond_the_limit_queues(runs_root, monkeypatch):
    # One run that looks alive: a sleeper whose command line names the trainer and the run folder.
    monkeypatch.setenv("RELPOS_MAX_CONCURRENT_RUNS", "1")
    busy = runs_root / "busy"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", runproc.TRAIN_MODULE,
                                busy.name])
    try:
        rundir.update_status(busy, state="running", created_at=time.time(), pid=sleeper.pid)
        at = open_page(new_app().run(), "train")
        at.form_submit_button[0].click().run()
        assert not at.exception
        (new,) = [p for p in runs_root.iterdir() if p.is_dir() and p != busy]  # queued, not refused
        assert rundir.read_status(new)["state"] == "queued" and jobs.run_pid(new) is None
        assert jobs.run_info(new)["queue_position"] == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_broken_checkpoint_shows_a_readable_error(runs_root):
    run = runs_root / "20260101-000000-broken"
    rundir.update_status(run, state="done", created_at=time.time())
    (run / "best.pt").write_bytes(b"this is not a checkpoint")
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(run / "best.pt")).run()
    assert not at.exception
    assert any("What to do" in e.value for e in at.sidebar.error)
    for page in ("attention", "checkpoints"):
        at.switch_page(PAGES[page]).run()
        assert not at.exception, page
        assert any("What to do" in e.value for e in at.error), page


def test_upload_refuses_a_non_checkpoint(runs_root):
    at = open_page(new_app().run(), "checkpoints")
    at.file_uploader(key="ck_upload").upload("../../evil.pt", b"not a checkpoint").run()
    assert not at.exception
    assert any("Upload refused" in e.value for e in at.error)
    assert not (runs_root / "uploads").exists() or not list((runs_root / "uploads").iterdir())


def saved_checkpoint(path: Path, **model) -> Path:
    """A relpos checkpoint of a fresh small model (no training needed)."""
    from relpos.experiments.checkpoint import save_checkpoint
    from relpos.experiments.config import resolve_config

    cfg = resolve_config({"data": {"img_size": 8, "patch_size": 2, "mark_size": 1, "num_train": 64, "num_val": 32},
                          "model": {"embed_dim": 16, "depth": 1, "num_heads": 2, **model}})
    save_checkpoint(fresh_model(cfg), None, 0, {}, path, config=cfg)
    return path


def test_upload_a_checkpoint_then_use_it_everywhere(runs_root, tmp_path):
    data = saved_checkpoint(tmp_path / "mine.pt").read_bytes()
    at = open_page(new_app().run(), "checkpoints")
    at.file_uploader(key="ck_upload").upload("my model (v1).pt", data).run()
    assert_clean(at, "upload")
    stored = runs_root / jobs.UPLOADS_DIR / "my-model-v1.pt"
    assert stored.read_bytes() == data
    assert any("Saved as" in s.value for s in at.success)
    at.run()  # rerun: the same upload is not stored twice
    assert len(list((runs_root / jobs.UPLOADS_DIR).iterdir())) == 1
    assert {"ck_learned", "ck_change"} <= set(charts(at))
    # A fresh checkpoint's learned table equals its initial one: the change map is all zeros.
    assert not np.any(heatmap_z(charts(at)["ck_change"]))
    assert [d.key for d in at.get("download_button")] == ["ck_dl_ckpt", "ck_dl_cfg", "ck_dl_fig"]
    source = "ckpt:" + str(stored)
    assert "uploads/my-model-v1.pt" in at.sidebar.selectbox(key=W_SOURCE).options  # shown labels
    at.sidebar.selectbox(key=W_SOURCE).set_value(source).run()
    open_page(at, "attention")
    assert {"am_query_with", "am_query_without", "am_heads", "am_diff"} <= set(charts(at))


def test_model_without_bias_is_explained(runs_root, tmp_path):
    (runs_root / jobs.UPLOADS_DIR).mkdir()
    path = saved_checkpoint(runs_root / jobs.UPLOADS_DIR / "nobias.pt", use_relative_position=False)
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(path)).run()
    open_page(at, "attention")
    assert at.selectbox(key="am_part").options == ["absolute embedding"]  # the ablation that applies to it
    at.selectbox(key="am_table").set_value("locality").run()
    assert_clean(at, "preset on a model without bias")
    assert any("no relative position bias" in w.value for w in at.warning)
    open_page(at, "checkpoints")
    assert any("no relative position bias" in i.value for i in at.info)


def test_app_start_marks_runs_of_dead_processes_failed(runs_root):
    run = runs_root / "20260101-000000-orphan"
    rundir.update_status(run, state="running", epoch=1, epochs=5, created_at=time.time())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that ended (one beyond 2**22 would be no pid at all: a broken run folder)
    rundir.atomic_write_json(run / jobs.PROCESS_FILE, {"pid": dead.pid})
    (run / jobs.OUTPUT_LOG).write_text("epoch 1 ...\nKilled\n")
    at = new_app().run()
    assert rundir.read_status(run)["state"] == "failed"
    at.switch_page(PAGES["train"]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("This run failed" in e and "Killed" in e for e in errors), errors


def test_train_page_widgets_and_refused_settings(runs_root):
    at = open_page(new_app().run(), "train")
    presets = at.selectbox(key="tr_preset").options
    assert presets[0] == "default"
    for preset in presets:
        at.selectbox(key="tr_preset").set_value(preset).run()
        assert_clean(at, preset)
    at.selectbox(key="tr_preset").set_value("tiny").run()
    at.selectbox(key="tr_dataset_tiny").set_value("digits")
    at.number_input(key="tr_img_tiny").set_value(16)
    at.number_input(key="tr_patch_tiny").set_value(3)  # 16 is not divisible by 3
    at.number_input(key="tr_depth_tiny").set_value(2)
    at.number_input(key="tr_heads_tiny").set_value(4)
    at.selectbox(key="tr_tiny_bias").set_value("none")  # Position information: no relative bias
    at.number_input(key="tr_epochs_tiny").set_value(3)
    at.number_input(key="tr_lr_tiny").set_value(0.01)
    at.form_submit_button[0].click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("cannot train" in e and "patch_size" in e for e in errors), errors
    assert not [p for p in runs_root.iterdir() if p.is_dir()]  # nothing started


@pytest.mark.slow
def test_largest_preset_model_on_the_attention_page(runs_root):
    """vit_b16 (12 layers x 12 heads, a 14x14 grid, 86M parameters): the largest model a preset offers."""
    if "vit_b16" not in jobs.list_presets():
        pytest.skip("no vit_b16 preset")
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("preset:vit_b16").run()
    assert_clean(at, "sidebar")
    at.sidebar.selectbox(key=W_LAYER).set_value(11)
    at.sidebar.selectbox(key=W_HEAD).set_value(11).run()
    open_page(at, "attention")
    figs = charts(at)
    assert {"am_query_with", "am_query_without", "am_heads", "am_diff"} <= set(figs)
    assert len([t for t in figs["am_heads"]["data"] if t.get("type") == "heatmap"]) == 12


def test_server_config_is_safe_by_default():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["address"] == "localhost"  # not reachable from the network unless asked
    assert server["enableXsrfProtection"] is True
    assert server["maxUploadSize"] * 2**20 <= jobs.MAX_UPLOAD_BYTES
    assert cfg["client"]["showErrorDetails"] in ("none", "type")  # no tracebacks in the browser


def scatter_xy(fig: dict, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    traces = [t for t in fig["data"] if t.get("type") == "scatter"]
    return decode(traces[k]["x"]), decode(traces[k]["y"])


def test_bias_explorer_draws_every_family_with_the_library_numbers(runs_root):
    """Each family at the page's defaults (7x7 window or L = 16, 4 heads, seed 0, locality α = 2 for
    learned tables): the table chart and the full-bias chart carry effective_table() and rpb()."""
    at = open_page(new_app().run(), "bias")
    # Every family, in order, labelled from the families table.
    shown = list(at.selectbox(key="be_kind").options)
    assert shown == [f"{k} · {FAMILIES[k].label}" for k in explore.EXPLORE_BIAS_TYPES]
    for kind in explore.EXPLORE_BIAS_TYPES:
        at.selectbox(key="be_kind").set_value(kind).run()
        assert_clean(at, kind)
        learned = FAMILIES[kind].learned
        if learned:
            assert not at.selectbox(key="be_preset").disabled
        else:  # alibi, cpb: no table to edit, said so instead of a preset
            assert at.selectbox(key="be_preset_none").disabled
        size = 16 if kind in ("1d", "t5") else (7, 7)
        opts = {"t5": {"num_buckets": 32, "max_distance": 128}, "alibi": {"alibi_distance": "euclidean"},
                "cpb": {"cpb_hidden_dim": 512}}.get(kind, {})
        rpb = make_bias(kind, size, 4, preset="locality" if learned else "init", alpha=2.0, **opts)
        table, bias = rpb.effective_table().numpy(), rpb().numpy()
        figs = charts(at)
        if kind in ("1d", "t5"):
            for h in range(4):
                x, y = scatter_xy(figs["be_table"], h)
                np.testing.assert_allclose(y, table[:, h], rtol=1e-6)
                np.testing.assert_array_equal(x, np.arange(32) if kind == "t5" else np.arange(-15, 16))
        else:
            grid_rows = table[:-3] if kind == "2d_cls" else table  # 2d_cls: cls rows are not on the grid
            for h in range(4):
                np.testing.assert_allclose(heatmap_z(figs["be_table"], h), grid_rows[:, h].reshape(13, 13),
                                           rtol=1e-6)
        if kind == "2d_cls":
            cls = at.dataframe[0].value
            np.testing.assert_allclose(cls.to_numpy(), table[-3:].T, rtol=1e-6)
        if kind == "t5":
            assert "be_t5_map" in figs
        np.testing.assert_allclose(heatmap_z(figs["be_bias"]), bias[0], rtol=1e-6, atol=1e-6)
        # The chosen query's row: over the patch grid (2D), as bars over the key (1D).
        qfig = figs["be_query_bias"]
        query_bias = decode(qfig["data"][0]["y"]) if kind in ("1d", "t5") else heatmap_z(qfig)
        patch = bias[0, 1:, 1:] if kind == "2d_cls" else bias[0]
        q = at.slider(key="be_query").value
        np.testing.assert_allclose(query_bias.reshape(-1), patch[q], rtol=1e-6, atol=1e-6)
    at.selectbox(key="be_kind").set_value("t5").run()
    at.number_input(key="be_num_buckets").set_value(8)
    at.number_input(key="be_max_distance").set_value(6).run()
    assert_clean(at, "t5 options")
    x, _ = scatter_xy(charts(at)["be_table"])
    np.testing.assert_array_equal(x, np.arange(8))


def test_checkpoint_diagnostics_table_equals_bias_diagnostics(runs_root):
    from relpos.diagnostics import bias_diagnostics

    (runs_root / jobs.UPLOADS_DIR).mkdir()
    path = saved_checkpoint(runs_root / jobs.UPLOADS_DIR / "t5.pt", bias_type="t5")
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(path)).run()
    at = open_page(at, "checkpoints")
    assert {"ck_learned", "ck_change"} <= set(charts(at))
    x, _ = scatter_xy(charts(at)["ck_learned"])
    np.testing.assert_array_equal(x, np.arange(32))  # t5: a curve over its 32 buckets
    shown = at.dataframe[1].value  # after the checkpoint list: one row per measure, one column per head
    model, ckpt = explore.load_checkpoint_model(path)
    image, _, _ = explore.sample_input(ckpt["config"], 0)
    diag = bias_diagnostics(model, image[None])
    assert list(shown.index) == list(DIAGNOSTIC_MEASURES)
    assert list(shown.columns) == ["head 0", "head 1", "what it measures"]
    heads = ["head 0", "head 1"]
    for measure in ("locality", "symmetry", "bias_entropy"):
        np.testing.assert_allclose(shown.loc[measure, heads].to_numpy(float), diag["biases"][0][measure], rtol=1e-9)
    for measure in ("kl", "entropy"):
        np.testing.assert_allclose(shown.loc[measure, heads].to_numpy(float), diag["attention"][0][measure],
                                   rtol=1e-9)
    assert shown.loc["kl", "what it measures"] == DIAGNOSTIC_MEASURES["kl"]


def test_bias_explorer_keeps_the_window_across_a_family_switch(runs_root):
    at = open_page(new_app().run(), "bias")
    at.number_input(key="be_h").set_value(5).run()
    at.selectbox(key="be_kind").set_value("t5").run()
    at.selectbox(key="be_kind").set_value("cpb").run()
    assert_clean(at, "switch back")
    assert at.number_input(key="be_h").value == 5
    assert heatmap_z(charts(at)["be_table"]).shape == (9, 13)  # (2*5-1, 2*7-1)


def test_attention_page_diagnostics_for_a_class_token_model(runs_root):
    from relpos.diagnostics import bias_diagnostics

    (runs_root / jobs.UPLOADS_DIR).mkdir()
    path = saved_checkpoint(runs_root / jobs.UPLOADS_DIR / "cls.pt", bias_type="2d_cls", class_token=True)
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(path)).run()
    at = open_page(at, "attention")
    assert {"am_query_with", "am_query_without", "am_heads"} <= set(charts(at))
    grid_side = 4  # img 8 / patch 2: the maps cover the 16 patches, not the class token
    assert heatmap_z(charts(at)["am_query_with"]).shape == (grid_side, grid_side)
    shown = at.dataframe[-1].value  # the diagnostics: one row per measure, one column per head
    model, ckpt = explore.load_checkpoint_model(path)
    image, _, _ = explore.sample_input(ckpt["config"], 0)
    diag = bias_diagnostics(model, image[None])
    np.testing.assert_allclose(shown.loc["kl", ["head 0", "head 1"]].to_numpy(float), diag["attention"][0]["kl"],
                               rtol=1e-9)
    np.testing.assert_allclose(shown.loc["symmetry", ["head 0", "head 1"]].to_numpy(float),
                               diag["biases"][0]["symmetry"], rtol=1e-9)


def test_checkpoint_table_heads_are_clickable_and_follow_the_sidebar_head(runs_root):
    """A's learned table and what training changed, as small multiples (one panel per head): the click
    layer is on and the sidebar's head is the outlined panel."""
    (runs_root / jobs.UPLOADS_DIR).mkdir()
    path = saved_checkpoint(runs_root / jobs.UPLOADS_DIR / "four.pt", num_heads=4)
    at = new_app().run()
    at.sidebar.selectbox(key=W_SOURCE).set_value("ckpt:" + str(path)).run()
    at.sidebar.selectbox(key=W_HEAD).set_value(2).run()
    at = open_page(at, "checkpoints")
    assert_clean(at, "checkpoints, 4 heads")
    fig = charts(at)["ck_learned"]
    heatmaps = [t for t in fig["data"] if t.get("type") == "heatmap"]
    assert len(heatmaps) == 4
    assert any(t.get("type") == "scatter" for t in fig["data"])  # the click layer
    frames = [s for s in fig["layout"].get("shapes", []) if s.get("type") == "rect"]
    assert len(frames) == 1 and frames[0]["xref"] == f"{heatmaps[2].get('xaxis', 'x')} domain"
    chart = next(el for el in at.get("plotly_chart") if el.key == "ck_learned")
    assert chart.proto.selection_mode  # on_select is wired: a click reruns with the clicked head
    change = charts(at)["ck_change"]  # what training changed, per head: the same selection
    assert any(t.get("type") == "scatter" for t in change["data"])
    assert len([s for s in change["layout"].get("shapes", []) if s.get("type") == "rect"]) == 1
