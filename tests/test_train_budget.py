"""The training-memory budget (relpos.experiments.budget): every part against explicit arithmetic or the
tensors it counts, refusals that name the key that drives them, and every way a run starts refusing
before anything exists (fit, the CLI, --queue, jobs.start_run, sweeps, the Train page)."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relpos import jobs
from relpos.attention import collect_attention_maps
from relpos.data.build import build_dataset
from relpos.experiments import sweep, train
from relpos.experiments.budget import ORDER_BYTES, SIZE_KEYS, training_memory
from relpos.experiments.config import (
    DEFAULT_CONFIG,
    ConfigError,
    apply_overrides,
    build_model,
    check_run_settings,
    check_training_memory,
    preset_config,
    resolve_config,
    resolve_training_config,
    train_overrides,
)
from relpos.experiments.config_utils import list_presets, load_config
from relpos.experiments.distributed import ResumableSampler, ShardSampler
from relpos.experiments.rundir import read_status, update_status
from relpos.families import BIAS_TYPES
from relpos.guards import BUDGET_ENV, MB, memory_budget, memory_budget_bytes

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
STEP = "attention logits and weights (L x B x H x N x N)"
#: Every dotted key a config has: a refusal must name one of them.
KEYS = tuple(f"{s}.{k}" if isinstance(v, dict) else s
             for s, v in DEFAULT_CONFIG.items() for k in (v if isinstance(v, dict) else [None]))


@pytest.fixture(autouse=True)
def default_budget(monkeypatch):
    """The documented default, 2048 MB, whatever the environment says."""
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    with memory_budget(None):
        yield


def cfg_of(*overrides: str, base: Path | dict = TINY) -> dict:
    cfg = load_config(base) if isinstance(base, Path) else base
    return resolve_config(apply_overrides(cfg, list(overrides)))


def named_key(message: str) -> str:
    """The key a memory refusal names first (``"<key> = <value> makes this too big: ..."``)."""
    match = re.match(r"([a-z_]+\.[a-z_.]+) = .* makes this too big", message)
    assert match, message
    return match.group(1)


# ----------------------------------------------------------------------------- the estimate


def test_every_part_matches_explicit_arithmetic():
    cfg = cfg_of("train.num_workers=2", "data.num_val=40")
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    b, c, side, n, heads, depth = 32, 3, 8, (8 // 2) ** 2, 2, 1
    emb, hidden = 16, 32
    parts = training_memory(cfg).breakdown
    assert (d["img_size"], d["patch_size"], m["embed_dim"], m["num_heads"], m["depth"], t["batch_size"]) == (
        side, 2, emb, heads, depth, b)
    assert parts["training order (data.num_train indices)"] == 64 * 128
    assert parts["input images"] == b * c * side * side * 4
    assert parts["loader prefetch (2 batches per worker)"] == 2 * 2 * b * c * side * side * 4
    assert parts["activations"] == depth * b * n * (10 * emb + 2 * hidden) * 4
    assert parts[STEP] == depth * 2 * b * heads * n * n * 4
    # the per-epoch diagnostics on min(64, num_val) = 40 images, beyond what a step frees
    images = 40
    maps = 2 * depth * images * heads * n * n * 4
    forward = (parts["activations"] + parts[STEP] + parts["input images"]) * images // b // depth
    biases = depth * (2 * heads * n * n + n * n) * 8
    freed = parts["activations"] + parts[STEP] + parts["input images"]
    assert parts["bias diagnostics (beyond a training step)"] == maps + forward + biases - freed
    assert training_memory(cfg).total == sum(parts.values())


def test_counted_attention_maps_are_the_ones_the_diagnostics_collect():
    cfg = cfg_of("data.num_val=12")
    model = build_model(cfg)
    images = torch.stack([build_dataset(cfg, "val")[i][0] for i in range(12)])
    maps = collect_attention_maps(model, images)
    real = 2 * sum(a.numel() * a.element_size() for a in maps)  # with and without the bias
    n, heads, depth = 16, 2, 1
    assert real == 2 * depth * 12 * heads * n * n * 4


def test_data_parts_are_what_build_dataset_keeps():
    cfg = cfg_of("data.dataset=digits", "data.img_size=24", "data.patch_size=4", "data.mark_size=2",
                 "data.num_classes=null", "data.num_train=null", "data.num_val=null")
    parts = training_memory(cfg).breakdown
    held = sum(build_dataset(cfg, s).images.nbytes for s in ("train", "val"))
    assert parts["digits images (n x 1 x H x W)"] == held == 1797 * 24 * 24 * 4
    # a procedural split is a range: building it costs nothing, whatever its size
    huge = {**cfg_of(), "data": {**cfg_of()["data"], "num_train": 2**31 - 1, "num_val": 2**31 - 1}}
    tracemalloc.start()
    train_ds, val_ds = build_dataset(huge, "train"), build_dataset(huge, "val")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(train_ds) == len(val_ds) == 2**31 - 1 and peak < 1 * MB
    assert train_ds[2**31 - 2][0].shape == (3, 8, 8) and isinstance(ShardSampler(2**31, 4, 1).indices, range)


def test_the_sampler_order_is_bounded_by_its_part():
    n = 200_000
    sampler = ResumableSampler(range(n), seed=3)
    tracemalloc.start()
    order = iter(sampler)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(list(order)) == n and peak <= ORDER_BYTES * n


# ----------------------------------------------------------------------------- refusals


def test_default_presets_train_and_vit_b16_is_for_inspection():
    for name in list_presets():
        cfg = preset_config(name)  # the model check: every preset can be inspected
        if name == "vit_b16":
            with pytest.raises(ConfigError) as err:
                check_training_memory(cfg)
            assert "over the limit of 2.0 GB" in str(err.value) and named_key(str(err.value)) in SIZE_KEYS
            with memory_budget(4096):  # it trains with a larger budget
                assert check_training_memory(cfg).total > 2048 * MB
        else:
            assert check_training_memory(cfg).total < 64 * MB, name


@pytest.mark.parametrize("overrides, key", [
    (("data.img_size=128", "model.num_heads=8", "model.depth=4"), "data.img_size"),  # the Train page's values
    (("model.mlp_ratio=1e6",), "model.mlp_ratio"),  # the model alone is too big
    (("model.mlp_ratio=3000",), "model.mlp_ratio"),  # the model fits, training does not
    (("model.mlp_ratio=1e300",), "model.mlp_ratio"),
    (("train.batch_size=100000",), "train.batch_size"),
    (("data.num_train=2147483647",), "data.num_train"),
    (("model.embed_dim=4096",), "model.embed_dim"),
    (("model.depth=1000",), "model.depth"),
    (("data.img_size=512", "data.patch_size=2", "model.embed_dim=16", "model.num_heads=16"), "data.img_size"),
    (("data.dataset=digits", "data.img_size=2048", "data.patch_size=64", "data.num_classes=null",
      "data.num_train=null", "data.num_val=null"), "data.img_size"),
    (("train.num_workers=256", "train.batch_size=2048", "data.img_size=64", "data.patch_size=64",
      "model.use_relative_position=false"), None),
])
def test_refusals_name_the_key_the_estimate_and_the_limit(overrides, key):
    base = load_config(ROOT / "configs" / "default.yaml")
    with pytest.raises(ConfigError) as err:
        resolve_training_config(apply_overrides(base, list(overrides)))
    msg = str(err.value)
    named = named_key(msg)
    assert named == key if key else named in ("train.num_workers", "train.batch_size"), msg
    assert "over the limit of 2.0 GB" in msg and BUDGET_ENV in msg and re.search(r"\d+\.\d (GB|TB|PB)", msg)
    assert len(msg) < 1500


def test_a_budget_below_the_defaults_says_to_raise_it():
    with memory_budget(0.5), pytest.raises(ConfigError, match=f"no size is above the default.*{BUDGET_ENV}"):
        check_training_memory(resolve_config({}))


_HOSTILE = st.sampled_from([None, -1, 0, 1.5, "x", True, [1], {"a": 1}, 2**70, float("nan"), float("inf")])


@st.composite
def _configs(draw) -> dict:
    """Sizes mostly consistent (a patch dividing the image, heads dividing the width), spanning tiny to
    absurd; sometimes one key hostile (a wrong type, out of range, NaN)."""
    def pick(small, big):  # one value in six from the absurd end
        return draw(big if draw(st.integers(0, 5)) == 0 else small)

    patch = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    heads = draw(st.sampled_from([1, 2, 4, 8, 16, 64]))
    values = {
        "data.dataset": draw(st.sampled_from(["relational", "synthetic", "digits"])),
        "data.patch_size": patch,
        "data.img_size": patch * (pick(st.integers(1, 32), st.integers(1, 4096 // patch))),
        "model.num_heads": heads,
        "model.embed_dim": heads * pick(st.integers(1, 64), st.integers(1, 65536 // heads)),
        "model.depth": pick(st.integers(1, 12), st.integers(1, 1000)),
        "model.mlp_ratio": pick(st.floats(0.25, 8.0), st.floats(min_value=1e-3, max_value=1e300)),
        "model.use_relative_position": draw(st.booleans()),
        "model.bias_type": draw(st.sampled_from(BIAS_TYPES)),
        "train.batch_size": pick(st.integers(1, 256), st.integers(1, 1_000_000)),
        "train.num_workers": pick(st.just(0), st.integers(0, 256)),
        "data.num_train": pick(st.integers(1, 10_000), st.integers(1, 2**31 - 1)),
        "data.num_val": pick(st.integers(1, 10_000), st.integers(1, 2**31 - 1)),
    }
    # mostly combinations the bias families allow (a class token only with 2d_cls), sometimes any
    consistent = draw(st.integers(0, 3)) > 0
    values["model.class_token"] = values["model.bias_type"] == "2d_cls" if consistent else draw(st.booleans())
    shareable = values["model.use_relative_position"] or not consistent
    values["model.share_bias"] = draw(st.booleans()) and shareable
    if values["data.dataset"] == "digits":  # its 1797 samples fix the split sizes
        values["data.num_train"] = values["data.num_val"] = None
        values["data.img_size"] = max(values["data.img_size"], 8 * patch)
    if draw(st.integers(0, 4)) == 0:
        values[draw(st.sampled_from(sorted(values)))] = draw(_HOSTILE)
    return values


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_any_config_is_accepted_under_the_budget_or_refused_naming_a_key(values):
    cfg = {"data": {"mark_size": 1}, "model": {}, "train": {}}
    for key, value in values.items():
        section, name = key.split(".")
        cfg[section][name] = value
    try:
        out = resolve_training_config(cfg)
    except ConfigError as exc:
        msg = str(exc)
        assert len(msg) < 3000
        if "makes this too big" in msg:
            event(f"refused for memory: {named_key(msg)}")
            assert named_key(msg) in SIZE_KEYS and "over the limit" in msg, msg
        else:
            event("refused: another rule")
            # a dotted key, or (the bias family's rules) "model: <model key>=..."
            assert any(k in msg for k in KEYS) or (msg.startswith("model: ") and any(
                f"{k.split('.')[1]}=" in msg for k in KEYS if k.startswith("model."))), msg
    else:
        event("accepted")
        assert training_memory(out).total <= memory_budget_bytes()


# ----------------------------------------------------------------------------- nothing starts


BIG = ["--set", "data.img_size=128", "--set", "data.patch_size=2"]


def test_fit_refuses_before_the_run_directory_exists(tmp_path):
    with pytest.raises(ConfigError, match="data.img_size = 128 makes this too big"):
        train.fit(apply_overrides(load_config(TINY), ["data.img_size=128"] + ["data.patch_size=2"]),
                  tmp_path / "run", log_to_stderr=False)
    assert not (tmp_path / "run").exists()


def test_the_cli_and_the_queue_refuse_with_exit_2(tmp_path, capsys):
    root = tmp_path / "runs"
    assert train.main(["--config", str(TINY), "--runs-root", str(root), *BIG]) == 2
    assert "data.img_size = 128 makes this too big" in capsys.readouterr().err
    assert train.main(["--config", str(TINY), "--runs-root", str(root), "--queue", *BIG]) == 2
    assert "over the limit of 2.0 GB" in capsys.readouterr().err
    assert not root.exists() or not [p for p in root.iterdir() if p.is_dir()]
    # a run queued before the budget shrank: its trainer refuses it and marks it failed
    queued = tmp_path / "queued"
    update_status(queued, state="queued", launched_at=1.0)
    assert train.main(["--config", str(TINY), "--run-dir", str(queued), *BIG]) == 2
    status = read_status(queued)
    assert status["state"] == "failed" and "data.img_size" in status["error"]
    assert not (queued / "last.pt").exists()


def test_start_run_and_sweeps_refuse_before_a_folder_exists(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(ConfigError, match="data.num_train = 2147483647 makes this too big"):
        jobs.start_run("tiny", {"data.num_train": 2**31 - 1}, runs_root=root)
    with pytest.raises(ConfigError, match="train.batch_size"):
        jobs.start_run("tiny", ["train.batch_size=1000000", "data.img_size=64"], runs_root=root)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("base: tiny\ngrid: {data.num_train: [64, 2147483647]}\n")
    with pytest.raises(sweep.SweepSpecError, match="data.num_train"):
        sweep.run_sweep(sweep.load_spec(spec_path), runs_root=root, wait=False)
    assert not root.exists() or not [p for p in root.iterdir() if p.is_dir()]


def test_the_train_page_settings_are_checked_for_training():
    cfg = preset_config("default")
    with pytest.raises(ConfigError) as err:
        check_run_settings(cfg, train_overrides(cfg, img_size=128, num_heads=8, depth=4), max_grid_side=32)
    assert named_key(str(err.value)) == "data.img_size"
    assert check_run_settings(cfg, train_overrides(cfg, img_size=32, num_heads=8, depth=4))  # 64 patches


def test_the_train_page_refuses_large_settings_with_the_key(runs_root):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/4_train.py").run()
    at.selectbox(key="tr_preset").set_value("default").run()
    for key, value in (("tr_img_default", 128), ("tr_heads_default", 8), ("tr_depth_default", 4)):
        at.number_input(key=key).set_value(value)
    at.form_submit_button[0].click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    wanted = ("cannot train", "data.img_size = 128 makes this too big", "over the limit of 2.0 GB")
    assert any(all(w in e for w in wanted) for e in errors), errors
    assert not [p for p in runs_root.iterdir() if p.is_dir()]
