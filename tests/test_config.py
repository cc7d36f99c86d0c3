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
