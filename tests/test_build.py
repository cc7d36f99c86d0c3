"""build_dataset: the right dataset, seeded disjoint splits, derived sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from relpos.data import build_dataset
from relpos.data.digits import DigitsDataset
from relpos.experiments.config import ConfigError


def test_relational_split_is_disjoint_and_seeded():
    cfg = {"seed": 4, "data": {"num_train": 20, "num_val": 10}}
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 20 and len(val) == 10 and train.classes[0] == "east"
    assert train.indices == list(range(20)) and val.indices == list(range(20, 30))
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
