"""The app says what is true (issue 14, points 1, 6 and 8): sentences derived from numbers
(relpos.captions), the ablation that applies to a model (relpos.attention's context-local switches,
relpos.diagnostics.position_disabled), one accuracy format, and help on every input of every page.

The library parts are checked against explicit references (a copy of the model with the part
removed by hand); the app parts with streamlit.testing.v1.AppTest.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from pathlib import Path

import pytest
import torch

from relpos import captions, jobs
from relpos.attention import absolute_position_disabled, relative_position_bias_disabled, rotary_position_disabled
from relpos.diagnostics import model_summary, position_disabled, position_parts_of
from relpos.experiments import rundir
from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import fresh_model, resolve_config
from relpos.experiments.config_utils import save_config
from relpos.models.transformer import VisionTransformer

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest
element_tree = pytest.importorskip("streamlit.testing.v1.element_tree")

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


# ----------------------------------------------------------------------------- numbers in one format


def test_accuracy_always_with_its_sample_size_and_a_dash_when_missing():
    assert captions.format_accuracy(0.992, 1024) == "99.2 % on 1024 images"
    assert captions.format_accuracy(0.5, 1) == "50.0 % on 1 image"
    assert captions.format_accuracy(1.0) == "100.0 %"
    assert captions.format_accuracy(0.36842, 256, digits=2) == "36.84 % on 256 images"
    for missing in (None, math.nan, "0.5", True):
        assert captions.format_accuracy(missing, 1024) == captions.DASH == "–"
    assert captions.format_number(None) == "–" and captions.format_number(2.345, ".1f", "patches") == "2.3 patches"


def test_reach_has_one_name_and_one_unit():
    assert (captions.REACH_NAME, captions.REACH_UNIT) == ("Reach", "patches")
    said = captions.reach_sentence(0.81, 1.23, "relative")
    assert said == "Reach: 0.81 patches with the relative bias, 1.23 without it (0.42 patches shorter with it)."
    assert "longer" in captions.reach_sentence(2.0, 1.5, "absolute")
    assert "about the same" in captions.reach_sentence(1.0, 1.001, "rotary")
    assert captions.reach_sentence(None, 1.0, "relative") == ""


# ----------------------------------------------------------------------------- names after what they do


def test_position_labels_name_what_each_part_does():
    assert captions.position_label("2d") == "relative bias (2D table (Swin))"
    assert captions.position_label("none") == "none"
    assert captions.position_label("absolute") == "absolute embedding"
    assert captions.position_label("rope_axial") == "rotary (axial)"
    assert captions.position_label("rope_mixed+absolute+t5") == "relative bias (T5 buckets) + rotary (mixed) + absolute embedding"
    assert captions.position_label(relative=None, rotary="mixed", absolute=False) == "rotary (mixed)"
    assert captions.scheme_parts("absolute+2d") == {"relative": "2d", "rotary": None, "absolute": True}
    with pytest.raises(ValueError, match="scheme"):
        captions.position_label("bias")


def test_ablation_labels():
    assert captions.ablation_labels("relative") == ("with the relative bias", "relative bias zeroed")
    assert captions.ablation_labels("absolute") == ("with the absolute embedding", "absolute embedding zeroed")
    assert captions.ablation_labels("rotary") == ("with the rotary embedding", "rotation off")
    assert captions.ablation_labels(None) == ("as computed", "")
    with pytest.raises(ValueError, match="part"):
        captions.ablation_labels("bias")


# ----------------------------------------------------------------------------- captions from diagnostics


def test_bias_character_from_fabricated_diagnostics():
    n = 16
    assert captions.bias_character({"locality_ratio": 0.6, "symmetry": 0.95, "bias_entropy": 2.0}, n) == "local"
    assert captions.bias_character({"locality_ratio": 0.6, "symmetry": -0.9, "bias_entropy": 2.0}, n) == "direction"
    assert captions.bias_character({"locality_ratio": 1.4, "symmetry": 0.9, "bias_entropy": 2.0}, n) == "far"
    assert captions.bias_character({"locality_ratio": 1.0, "symmetry": 0.9, "bias_entropy": 2.0}, n) == "neutral"
    flat = {"locality_ratio": 0.6, "symmetry": -0.9, "bias_entropy": 0.99 * math.log(n)}
    assert captions.bias_character(flat, n) == "flat"  # nearly uniform softmax: shape does not matter
    assert captions.bias_character(flat) == "direction"  # without N the flatness cannot be told
    assert captions.bias_character({}) == "neutral"


def test_antisymmetric_tables_are_never_said_to_pull_towards_nearby_patches():
    """The issue's case: a model whose own diagnostics say direction, not locality."""
    rows = [{"head": h, "locality_ratio": 0.7, "symmetry": -0.8, "bias_entropy": 1.0} for h in range(4)]
    said = captions.bias_effect_sentence(rows, num_tokens=16)
    assert said == ("The bias favours one direction (an antisymmetric table: direction, not nearness) "
                    "in every head.")
    assert "nearby" not in said


def test_mixed_heads_are_grouped_by_what_they_do():
    rows = [{"head": 0, "locality_ratio": 0.5, "symmetry": 0.9}, {"head": 1, "locality_ratio": 0.9, "symmetry": -0.7},
            {"head": 2, "locality_ratio": 0.4, "symmetry": 0.8}, {"head": 3, "locality_ratio": 1.0, "symmetry": -0.5}]
    assert captions.bias_effect_sentence(rows, subject="In layer 0 the bias") == (
        "In layer 0 the bias pulls attention towards nearby patches in heads 0 and 2, and favours one direction "
        "(an antisymmetric table: direction, not nearness) in heads 1 and 3.")
    assert captions.bias_effect_sentence([{"head": 2, "locality_ratio": 1.5}]) == (
        "The bias pushes attention towards distant patches in head 2.")
    assert captions.bias_effect_sentence([]) == ""


def test_comparison_rows_show_what_two_runs_share():
    rows = captions.comparison_rows({
        "A": {"scheme": "2d", "accuracy": 1.0, "n": 1024, "epoch": 6, "metrics": {"diag/symmetry": 0.25}},
        "B": {"scheme": "t5", "accuracy": None, "n": 1024, "epoch": None, "metrics": {}},
    })
    assert rows[0] == {"": "position information", "A": "relative bias (2D table (Swin))", "B": "relative bias (T5 buckets)"}
    assert rows[1] == {"": "validation accuracy", "A": "100.0 % on 1024 images", "B": "–"}
    assert rows[2] == {"": "epoch", "A": "6", "B": "–"}
    assert rows[3] == {"": "diag/symmetry (last epoch)", "A": "0.250", "B": "–"}


# ----------------------------------------------------------------------------- the ablation that applies


def _vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=2, in_channels=3, num_classes=4, embed_dim=16, depth=2,
                              num_heads=2, **kwargs).eval()
    if model.pos_embed is not None:
        with torch.no_grad():
            model.pos_embed.normal_(0, 1.0)  # large enough that switching it off shows
    return model


def test_absolute_position_disabled_equals_a_zeroed_embedding():
    model = _vit(use_relative_position=False, position_embedding="absolute")
    x = torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.pos_embed.zero_()
        expected, whole = reference(x), model(x)
        with absolute_position_disabled(model):
            got = model(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(whole, got)
    torch.testing.assert_close(model(x), whole)  # back on after the block


def test_rotary_position_disabled_equals_a_model_without_rotation():
    model = _vit(use_relative_position=False, position_embedding="rope_axial")
    x = torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        block.attn.rope = None
    with torch.no_grad():
        expected, whole = reference(x), model(x)
        with rotary_position_disabled(model):
            got = model(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(whole, got)


def test_the_switches_are_context_local():
    model = _vit(use_relative_position=False, position_embedding="absolute")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        whole = model(x)
    inside, other = threading.Event(), {}

    def elsewhere():
        inside.wait(5)
        with torch.no_grad():
            other["out"] = model(x)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with absolute_position_disabled(model):
        inside.set()
        thread.join(10)
    torch.testing.assert_close(other["out"], whole)  # the other thread saw the model whole


def test_position_parts_of_each_scheme():
    assert position_parts_of(_vit(use_relative_position=True)) == ("relative",)
    assert position_parts_of(_vit(use_relative_position=False, position_embedding="absolute")) == ("absolute",)
    assert position_parts_of(_vit(use_relative_position=False, position_embedding="none")) == ()
    both = _vit(use_relative_position=True, position_embedding="rope_mixed+absolute")
    assert position_parts_of(both) == ("relative", "rotary", "absolute")
    summary = model_summary(both)
    assert (summary["rotary"], summary["absolute"], summary["position"]) == ("mixed", True, ("relative", "rotary", "absolute"))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), position_disabled(both, None):
        torch.testing.assert_close(both(x), both(x))
    with torch.no_grad():
        with position_disabled(both, "relative"):
            off = both(x)
        with relative_position_bias_disabled(both):
            torch.testing.assert_close(both(x), off)
    with pytest.raises(ValueError, match="part"):
        position_disabled(both, "bias")


# ----------------------------------------------------------------------------- the app


def _checkpoint(path: Path, accuracy: float = 0.75, epoch: int = 1, **model) -> Path:
    """A relpos checkpoint of a fresh small model recording ``accuracy`` at ``epoch`` (no training)."""
    cfg = resolve_config({"data": {"img_size": 8, "patch_size": 2, "mark_size": 1, "num_train": 64, "num_val": 32},
                          "model": {"embed_dim": 16, "depth": 1, "num_heads": 2, **model}})
    path.parent.mkdir(parents=True, exist_ok=True)
    m = fresh_model(cfg)
    if getattr(m, "pos_embed", None) is not None:
        with torch.no_grad():
            m.pos_embed.normal_(0, 1.0)  # large enough that zeroing it changes the maps
    save_checkpoint(m, None, epoch, {"eval_accuracy": accuracy}, path, config=cfg)
    save_config(cfg, path.parent / rundir.CONFIG_FILE)
    return path


def _texts(at) -> str:
    parts = [el.value for kind in ("markdown", "caption", "info", "warning", "subheader") for el in at.get(kind)]
    parts += [str(m.label) + " " + str(m.value) + " " + str(m.proto.delta) for m in at.metric]
    return "\n".join(str(p) for p in parts)


def _open(path: Path, page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.sidebar.selectbox(key="frame_source").set_value("ckpt:" + str(path)).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_an_absolute_model_is_ablated_by_its_embedding_not_a_bias(runs_root):
    path = _checkpoint(runs_root / jobs.UPLOADS_DIR / "abs.pt", use_relative_position=False,
                       position_embedding="absolute")
    at = _open(path, "pages/3_attention_maps.py")
    text = _texts(at)
    assert "bias zeroed" not in text and "with bias" not in text
    assert "absolute embedding zeroed" in text
    assert at.selectbox(key="am_part").options == ["absolute embedding"]
    figs = {el.key: el for el in at.get("plotly_chart")}
    assert {"am_query_with", "am_query_without", "am_diff"} <= set(figs)
    assert "position information: absolute embedding" in "\n".join(c.value for c in at.sidebar.caption)


def test_a_model_without_position_says_there_is_nothing_to_switch_off(runs_root):
    path = _checkpoint(runs_root / jobs.UPLOADS_DIR / "nopos.pt", use_relative_position=False,
                       position_embedding="none")
    at = _open(path, "pages/3_attention_maps.py")
    text = _texts(at)
    assert "nothing to switch off" in text and "bias zeroed" not in text
    keys = {el.key for el in at.get("plotly_chart")}
    assert "am_query_with" in keys and "am_query_without" not in keys and "am_diff" not in keys


def test_the_checkpoints_table_shows_each_files_own_accuracy(runs_root):
    run = runs_root / "20260101-000000-demo"
    _checkpoint(run / "best.pt", accuracy=0.75, epoch=1)  # the best epoch
    _checkpoint(run / "last.pt", accuracy=0.5, epoch=2)  # the last epoch, worse
    rundir.update_status(run, state="done", epoch=2, epochs=2, best_accuracy=0.75, eval_accuracy=0.5,
                         created_at=time.time())
    at = _open(run / "best.pt", "pages/5_checkpoints.py")
    table = at.dataframe[0].value  # the checkpoint list comes first
    own = {str(label).rsplit("/", 1)[-1]: (acc, epoch) for label, acc, epoch in
           zip(table["checkpoint"], table["val accuracy (its own)"], table["epoch"])}
    assert own == {"best.pt": ("75.0 % on 32 images", "1"), "last.pt": ("50.0 % on 32 images", "2")}


# ----------------------------------------------------------------------------- help on every input


def _widgets(node) -> list:
    """Every input widget under a node of the AppTest element tree (buttons are actions, not inputs)."""
    out = []
    for child in getattr(node, "children", {}).values():
        if isinstance(child, element_tree.Widget) and not isinstance(
                child, (element_tree.Button, element_tree.DownloadButton)):
            out.append(child)
        out.extend(_widgets(child))
    return out


def _missing_help(at: AppTest) -> list[str]:
    return [f"{type(w).__name__} {getattr(w, 'label', '')!r} (key {w.key})" for w in _widgets(at._tree)
            if not str(getattr(w, "help", None) or getattr(w.proto, "help", "") or "").strip()]


def _demo_run(root: Path) -> Path:
    run = root / "20260101-000000-demo"
    _checkpoint(run / "best.pt", bias_type="2d")
    for epoch in (1, 2):
        rundir.append_metrics(run, {"kind": "epoch", "step": 10 * epoch, "epoch": epoch, "train_loss": 1.0 / epoch,
                                    "eval_accuracy": 0.5 + 0.1 * epoch, "diag/locality_ratio": 1.0 - 0.1 * epoch})
    rundir.update_status(run, state="done", epoch=2, epochs=2, best_accuracy=0.7, created_at=time.time())
    return run / "best.pt"


def test_every_input_of_every_page_has_help(runs_root):
    from app_support.frame import NAV

    ckpt = _demo_run(runs_root)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.sidebar.selectbox(key="frame_source").set_value("ckpt:" + str(ckpt)).run()
    missing: dict[str, list[str]] = {}
    for item in NAV:
        at.switch_page(item.path).run()
        assert not at.exception, (item.path, [e.value for e in at.exception])
        missing[item.path] = _missing_help(at)
        if item.path.endswith("3_attention_maps.py"):
            at.radio(key="am_input").set_value("upload").run()
            missing[item.path] += _missing_help(at)
            at.radio(key="am_input").set_value("sample").run()
        if item.path.endswith("8_experiments.py"):
            at.radio(key="ex_mode").set_value("build one here").run()
            missing[item.path] += _missing_help(at)
        if item.path.endswith("7_import_checkpoint.py"):
            buf = __import__("io").BytesIO()
            torch.save({"layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(49, 3)}, buf)
            at.file_uploader(key="ic_upload").upload("swin.pth", buf.getvalue()).run()
            missing[item.path] += _missing_help(at)
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}


def test_a_pages_head_control_is_the_sidebars_head(runs_root):
    """One source of truth: the Bias explorer's Head slider shows the sidebar's head and writes it back."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page("pages/2_bias_explorer.py").run()
    assert at.session_state["sel_heads"] == 4  # the default preset's model: 4 heads
    at.sidebar.selectbox(key="frame_head").set_value(2).run()
    assert at.slider(key="be_head").value == 2
    at.slider(key="be_head").set_value(1).run()
    assert at.session_state["sel_head"] == 1 and at.sidebar.selectbox(key="frame_head").value == 1
    at.number_input(key="be_heads").set_value(8).run()
    at.slider(key="be_head").set_value(6).run()  # beyond the model's heads: the page's own, said so
    assert at.session_state["sel_head"] == 1 and at.slider(key="be_head").value == 6
    assert any("beyond the sidebar model's heads" in c.value for c in at.caption)
    assert not at.exception and not at.error
