"""Config validation: every error names the dotted key; defaults and derived values; overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from relpos.experiments.config import (
    DEFAULT_CONFIG,
    ConfigError,
    apply_overrides,
    build_model,
    resolve_config,
)
from relpos.experiments.config_utils import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"epochs": 3}, "epochs"),  # unknown top-level key
        ({"train": {"epoch": 3}}, "train.epoch"),  # unknown key in a section
        ({"train": {"epochs": "3"}}, "train.epochs"),  # wrong type
        ({"train": {"epochs": 0}}, "train.epochs"),  # out of range
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"train": {"amp": "yes"}}, "train.amp"),
        ({"train": {"warmup_epochs": 20, "epochs": 2}}, "train.warmup_epochs"),
        ({"model": {"num_heads": 5}}, "model.num_heads"),  # does not divide embed_dim
        ({"model": {"position_embedding": "rope"}}, "model.position_embedding"),
        ({"model": {"use_relative_position": 1}}, "model.use_relative_position"),
        ({"model": {"rpb": {"window_size": [3, 3]}}}, "model.rpb.window_size"),
        ({"model": {"rpb": {"nonsense": 1}}}, "model.rpb"),
        ({"data": {"patch_size": 5}}, "data.patch_size"),  # does not divide img_size
        ({"data": {"dataset": "imagenet"}}, "data.dataset"),
        ({"data": {"num_classes": 5}}, "data.num_classes"),  # relational: 4 or 8
        ({"data": {"dataset": "digits", "in_channels": 3}}, "data.in_channels"),
        ({"data": {"dataset": "digits", "num_train": 1700, "num_val": 200}}, "data.num_train"),
        ({"data": {"dataset": "folder"}}, "data.root"),
        ({"data": {"root": "/tmp"}}, "data.root"),  # root only for folder
        ({"name": "../escape"}, "name"),
        ({"seed": -1}, "seed"),
        ({"model": 3}, "model"),
    ],
)
def test_errors_name_the_key_and_value(cfg, key):
    with pytest.raises(ConfigError) as info:
        resolve_config(cfg)
    msg = str(info.value)
    assert msg.startswith(key) or f"{key} " in msg or f"{key}:" in msg, msg
    assert "allowed" in msg or "must" in msg or "one of" in msg, msg


def test_defaults_and_derived_values():
    cfg = resolve_config({})
    assert set(cfg) == set(DEFAULT_CONFIG)
    assert cfg["data"]["in_channels"] == 3 and cfg["data"]["num_classes"] == 4
    digits = resolve_config({"data": {"dataset": "digits"}})["data"]
    assert (digits["in_channels"], digits["num_classes"]) == (1, 10)
    assert digits["num_train"] + digits["num_val"] == 1797 and digits["num_val"] == 359
    assert resolve_config(cfg) == cfg  # idempotent
    assert resolve_config({"train": {"lr": "1e-3"}})["train"]["lr"] == 0.001  # YAML 1.1 gotcha


def test_every_preset_resolves_and_builds():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for required in ("default", "default_abs", "default_nopos", "digits", "synthetic", "vit_b16", "tiny"):
        assert required in names
    for name in names:
        cfg = resolve_config(load_config(CONFIGS / f"{name}.yaml"))
        assert cfg["name"] == name
    vit = resolve_config(load_config(CONFIGS / "vit_b16.yaml"))
    assert (vit["data"]["img_size"] // vit["data"]["patch_size"]) == 14
    assert (vit["model"]["embed_dim"], vit["model"]["depth"], vit["model"]["num_heads"]) == (768, 12, 12)


def test_build_model_follows_the_config():
    model = build_model(load_config(CONFIGS / "tiny.yaml"))
    assert model.grid_size == (4, 4) and len(model.blocks) == 1
    assert model.blocks[0].attn.relative_position_bias.window_size == (4, 4)
    nopos = build_model(load_config(CONFIGS / "default_nopos.yaml"))
    assert nopos.pos_embed is None and nopos.blocks[0].attn.relative_position_bias is None
    absolute = build_model(load_config(CONFIGS / "default_abs.yaml"))
    assert absolute.pos_embed is not None and absolute.pos_embed.shape == (1, 16, 64)


def test_overrides():
    cfg = apply_overrides({"train": {"epochs": 2}}, ["train.epochs=5", "model.rpb.num_buckets=8", "name=x"])
    assert cfg == {"train": {"epochs": 5}, "model": {"rpb": {"num_buckets": 8}}, "name": "x"}
    assert apply_overrides({}, ["train.amp=true"])["train"]["amp"] is True
    for bad, key in [("train.epoch=5", "train.epoch"), ("nope=1", "nope"), ("train=1", "train"),
                     ("train.epochs", "train.epochs")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            apply_overrides({}, [bad])


def test_a_model_too_big_for_memory_is_refused_before_it_is_built():
    # 512 / 2 -> 65536 tokens: the relative position index alone would be 32 GiB per block
    cfg = {"data": {"img_size": 512, "patch_size": 2, "mark_size": 1}, "model": {"embed_dim": 16, "num_heads": 16}}
    with pytest.raises(ConfigError, match=r"data\.patch_size 2.*memory"):
        resolve_config(cfg)


# ---------------------------------------------------------------- the app's run settings


def _small_cfg(**model):
    return resolve_config({"data": {"num_train": 32, "num_val": 16},
                           "model": {"embed_dim": 16, "depth": 2, "num_heads": 2, **model}})


def test_fresh_model_is_seeded_frozen_and_leaves_the_global_rng_alone():
    import torch

    from relpos.experiments.config import fresh_model

    cfg = _small_cfg()
    state = torch.random.get_rng_state()
    a, b = fresh_model(cfg), fresh_model(cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    other = fresh_model({**cfg, "seed": 1})
    assert not torch.equal(next(other.parameters()), next(a.parameters()))


def test_format_override_reads_back_through_apply_overrides():
    from relpos.experiments.config import format_override

    assert format_override("model.use_relative_position", False) == "model.use_relative_position=false"
    assert format_override("data.num_train", None) == "data.num_train=null"
    assert format_override("model.rpb.pretrained_window_size", [4, 4]) == "model.rpb.pretrained_window_size=[4, 4]"
    out = apply_overrides({}, [format_override("train.lr", 0.5), format_override("model.rpb.x", [1, 2])])
    assert out["train"]["lr"] == 0.5 and out["model"]["rpb"]["x"] == [1, 2]


def test_check_run_settings_and_changed_overrides():
    from relpos.experiments.config import changed_overrides, check_run_settings

    cfg = _small_cfg()
    assert changed_overrides(cfg, {"model.depth": 2, "train.epochs": 3}) == {"train.epochs": 3}
    assert changed_overrides(cfg, {"model.nothing": 1}) == {"model.nothing": 1}  # unknown: kept, then refused
    resolved = check_run_settings(cfg, {"model.depth": 1, "model.use_relative_position": False})
    assert resolved["model"]["depth"] == 1 and resolved["model"]["use_relative_position"] is False
    with pytest.raises(ValueError, match="patch_size|img_size"):
        check_run_settings(cfg, {"data.patch_size": 5})
    with pytest.raises(ValueError, match="num_heads|embed_dim"):
        check_run_settings(cfg, {"model.num_heads": 3})


def test_check_run_settings_limits_the_patch_grid_only_when_asked():
    from relpos.experiments.config import check_run_settings

    cfg = _small_cfg()
    small = {"train.batch_size": 8}  # batch 64 at 32x32 patches would be over the training memory budget
    check_run_settings(cfg, {"data.img_size": 64, "data.patch_size": 2, **small}, max_grid_side=32)  # 32x32: allowed
    with pytest.raises(ValueError, match="patch grid"):
        check_run_settings(cfg, {"data.img_size": 66, "data.patch_size": 2, **small}, max_grid_side=32)
    assert check_run_settings(cfg, {"data.img_size": 66, "data.patch_size": 2, **small})["data"]["img_size"] == 66


def test_train_overrides():
    from relpos.experiments.config import TRAIN_SETTINGS, check_run_settings, train_overrides

    cfg = _small_cfg()
    assert train_overrides(cfg, depth=2, epochs=cfg["train"]["epochs"] + 1) == {
        "train.epochs": cfg["train"]["epochs"] + 1
    }
    switched = train_overrides(cfg, dataset="digits", img_size=16)
    assert switched["data.dataset"] == "digits" and switched["data.in_channels"] is None
    resolved = check_run_settings(cfg, switched)
    assert resolved["data"]["in_channels"] == 1 and resolved["data"]["num_classes"] == 10
    with pytest.raises(ValueError, match="unknown settings"):
        train_overrides(cfg, colour="red")
    assert set(TRAIN_SETTINGS.values()) <= {f"{s}.{k}" for s in ("data", "model", "train") for k in DEFAULT_CONFIG[s]}


def test_preset_config_is_resolved():
    from relpos.experiments.config import preset_config

    cfg = preset_config("tiny")
    assert cfg == resolve_config(load_config(CONFIGS / "tiny.yaml"))
    assert cfg["data"]["in_channels"] is not None  # resolved: the dataset filled it
    assert preset_config(CONFIGS / "tiny.yaml") == cfg
    with pytest.raises(FileNotFoundError, match="no-such-preset"):
        preset_config("no-such-preset")


# ----------------------------------------------------------------------------- model.scheme


@pytest.mark.parametrize(
    ("scheme", "use_rp", "effective_pe", "bias_type", "class_token"),
    [
        ("none", False, "none", None, False),
        ("absolute", False, "absolute", None, False),
        ("1d", True, "none", "1d", False),
        ("2d", True, "none", "2d", False),
        ("2d_cls", True, "none", "2d_cls", True),
        ("t5", True, "none", "t5", False),
        ("alibi", True, "none", "alibi", False),
        ("cpb", True, "none", "cpb", False),
        ("absolute+2d", True, "absolute", "2d", False),
    ],
)
def test_scheme_expands_into_the_old_keys_over_a_preset(scheme, use_rp, effective_pe, bias_type, class_token):
    # default.yaml spells out use_relative_position and bias_type: a --set of the scheme wins over them.
    cfg = resolve_config(apply_overrides(load_config(CONFIGS / "default.yaml"), [f"model.scheme={scheme}"]))
    m = cfg["model"]
    assert m["scheme"] == scheme and m["use_relative_position"] is use_rp and m["class_token"] is class_token
    pe = m["position_embedding"]
    assert (pe if pe != "auto" else ("none" if use_rp else "absolute")) == effective_pe
    if bias_type is not None:
        assert m["bias_type"] == bias_type
    assert resolve_config(cfg) == cfg  # idempotent
    assert build_model(cfg).position_embedding == effective_pe


def test_every_resolved_config_names_its_scheme():
    assert resolve_config({})["model"]["scheme"] == "2d"
    names = {p: resolve_config(load_config(CONFIGS / f"{p}.yaml"))["model"]["scheme"]
             for p in ("default", "default_abs", "default_nopos")}
    assert names == {"default": "2d", "default_abs": "absolute", "default_nopos": "none"}
    both = {"model": {"use_relative_position": True, "position_embedding": "absolute", "bias_type": "t5"}}
    assert resolve_config(both)["model"]["scheme"] == "absolute+t5"


def test_scheme_and_a_contradicting_old_key_is_an_error():
    with pytest.raises(ConfigError, match=r"model.bias_type = 't5'.*model.scheme = '2d'"):
        resolve_config({"model": {"scheme": "2d", "bias_type": "t5"}})
    with pytest.raises(ConfigError, match="model.use_relative_position"):
        resolve_config({"model": {"scheme": "none", "use_relative_position": True}})
    with pytest.raises(ConfigError, match="model.scheme = 'rope'.*absolute\\+2d"):
        resolve_config({"model": {"scheme": "rope"}})
    # Agreeing keys are fine, "auto" included.
    ok = resolve_config({"model": {"scheme": "2d", "bias_type": "2d", "position_embedding": "auto"}})
    assert ok["model"]["scheme"] == "2d"
    # An old key set over a config that names a scheme spells the scheme out first.
    cfg = resolve_config(apply_overrides({"model": {"scheme": "absolute+2d"}}, ["model.bias_type=1d"]))
    assert cfg["model"]["scheme"] == "absolute+1d"
