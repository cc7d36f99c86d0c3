"""build_dataset: the right dataset, seeded disjoint splits, derived sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from relpos.data import build_dataset as _build_dataset
from relpos.data.build import resolve_data
from relpos.data.digits import DigitsDataset
from relpos.experiments.config import ConfigError, resolve_config


def build_dataset(cfg, split):
    """build_dataset takes a resolved config: resolve the partial ones these tests write."""
    return _build_dataset(resolve_config(cfg), split)


def test_relational_split_is_disjoint_and_seeded():
    cfg = {"seed": 4, "data": {"num_train": 20, "num_val": 10}}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 20 and len(val) == 10 and train.classes[0] == "east"
    assert list(train.indices) == list(range(20)) and list(val.indices) == list(range(20, 30))
    again = build_dataset(cfg, "train")
    assert torch.equal(train[3][0], again[3][0])
    other = build_dataset({**cfg, "seed": 5}, "train")
    assert not torch.equal(train[3][0], other[3][0])


def test_digits_split_by_seed_covers_without_overlap():
    cfg = {"data": {"dataset": "digits", "img_size": 8, "patch_size": 2}}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert isinstance(train, DigitsDataset) and len(train) + len(val) == 1797
    assert not set(train.indices) & set(val.indices)
    assert build_dataset({**cfg, "seed": 1}, "val").indices != val.indices


def test_synthetic_and_folder(tmp_path):
    syn = build_dataset({"data": {"dataset": "synthetic", "num_train": 4, "num_val": 2, "num_classes": 3}}, "val")
    assert len(syn) == 2 and syn[0][0].shape == (3, 16, 16) and 0 <= int(syn[0][1]) < 3
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (5, 5), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    cfg = {"data": {"dataset": "folder", "root": str(tmp_path), "img_size": 8, "patch_size": 4}}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (8, 2)
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    with pytest.raises(ValueError, match="split"):
        build_dataset(cfg, "test")
    with pytest.raises(ConfigError, match="data.root"):
        build_dataset({"data": {"dataset": "folder", "root": str(tmp_path / "nope")}}, "train")


def test_build_dataset_refuses_an_unresolved_config():
    with pytest.raises(ValueError, match=r"data.in_channels, data.num_classes, data.num_train, data.num_val"):
        _build_dataset({"seed": 0, "data": {"dataset": "relational", "img_size": 16, "patch_size": 4}}, "val")
    with pytest.raises(ValueError, match="resolved config"):
        _build_dataset({"data": {}}, "val")


def test_resolve_data_fills_the_dataset_defaults():
    base = resolve_config({})["data"]
    unresolved = {**base, "in_channels": None, "num_classes": None, "num_train": None, "num_val": None}
    out = resolve_data(unresolved)
    assert (out["in_channels"], out["num_classes"], out["num_train"], out["num_val"]) == (3, 4, 8192, 1024)
    assert unresolved["num_train"] is None  # not modified
    digits = resolve_data({**unresolved, "dataset": "digits", "img_size": 8, "patch_size": 2})
    assert (digits["in_channels"], digits["num_classes"], digits["num_train"], digits["num_val"]) == (1, 10, 1438, 359)
    with pytest.raises(ValueError, match="data.num_classes = 5 is not allowed: 4 or 8 for dataset relational"):
        resolve_data({**unresolved, "num_classes": 5})
    with pytest.raises(ValueError, match="data.in_channels = 3 is not allowed: 1 for dataset digits"):
        resolve_data({**unresolved, "dataset": "digits", "in_channels": 3})
