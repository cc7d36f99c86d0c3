"""The relational task: labels checked against the definition, determinism, shapes, colours, regions."""

from __future__ import annotations

import math

import pytest
import torch

from relpos.data.build import build_dataset
from relpos.data.relational import DIRECTION_NAMES, RelationalDataset, check_region, direction_label
from relpos.experiments.config import ConfigError, resolve_config


def _reference_label(dy: int, dx: int, k: int) -> int:
    # Independent restatement: nearest of k compass directions, counter-clockwise from east.
    angle = math.atan2(dy, dx)
    centres = [2 * math.pi * c / k for c in range(k)]
    return min(range(k), key=lambda c: abs(math.remainder(angle - centres[c], 2 * math.pi)))


@pytest.mark.parametrize(
    ("dy", "dx", "k", "expected"),
    [(0, 5, 4, 0), (5, 0, 4, 1), (0, -5, 4, 2), (-5, 0, 4, 3), (3, 3, 8, 1), (-3, 3, 8, 7), (3, -3, 8, 3)],
)
def test_direction_label_known_values(dy, dx, k, expected):
    assert direction_label(dy, dx, k) == expected
    assert DIRECTION_NAMES[k][expected]  # a name exists for every label


def test_direction_label_matches_reference_on_a_grid():
    for k in (4, 8):
        for dy in range(-7, 8):
            for dx in range(-7, 8):
                if (dy, dx) == (0, 0):
                    continue
                # exact sector boundaries are excluded by the dataset's margin; skip them here too
                rel = (math.degrees(math.atan2(dy, dx)) + 180 / k) % (360 / k)
                if min(rel, 360 / k - rel) < 1e-9:
                    continue
                assert direction_label(dy, dx, k) == _reference_label(dy, dx, k), (dy, dx, k)


@pytest.mark.parametrize(("channels", "k"), [(3, 4), (1, 8)])
def test_samples_follow_the_definition(channels, k):
    ds = RelationalDataset(64, img_size=16, num_classes=k, in_channels=channels, mark_size=2, margin_deg=5, seed=3)
    counts = torch.zeros(k)
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (channels, 16, 16) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.dim() == 0
        ya, xa, yb, xb = ds.positions(i)
        # the marks are where positions() says, with the documented colours
        if channels == 1:
            assert torch.all(image[0, ya : ya + 2, xa : xa + 2] == 1) and torch.all(image[0, yb : yb + 2, xb : xb + 2] == -1)
            assert int((image != 0).sum()) == 8
        else:
            assert torch.all(image[0, ya : ya + 2, xa : xa + 2] == 1) and torch.all(image[2, yb : yb + 2, xb : xb + 2] == 1)
            assert int((image != 0).sum()) == 8 and float(image[1].abs().sum()) == 0
        dy, dx = ya - yb, xb - xa
        assert max(abs(dy), abs(dx)) > 2  # no overlap or contact
        assert int(label) == _reference_label(dy, dx, k)
        counts[int(label)] += 1
    assert (counts > 0).sum() >= k - 1  # labels are spread over the classes


def test_deterministic_per_seed_and_index():
    a = RelationalDataset(8, seed=1)
    b = RelationalDataset(8, seed=1)
    c = RelationalDataset(8, seed=2)
    assert torch.equal(a[5][0], b[5][0]) and torch.equal(a[5][0], a[5][0])
    assert not all(torch.equal(a[i][0], c[i][0]) for i in range(8))


def test_noise_and_bad_arguments():
    noisy = RelationalDataset(2, img_size=8, mark_size=1, noise_std=0.5, seed=0)
    assert float(noisy[0][0].std()) > 0.1
    with pytest.raises(ValueError, match="num_classes"):
        RelationalDataset(4, num_classes=5)
    with pytest.raises(ValueError, match="mark_size"):
        RelationalDataset(4, img_size=6, mark_size=3)
    with pytest.raises(IndexError):
        RelationalDataset(4)[4]


# ----------------------------------------------------------------------------- placement regions (labs)


def _mark_columns_rows(image: torch.Tensor) -> tuple[set[int], set[int]]:
    lit = image.abs().sum(dim=0).nonzero()  # (k, 2) as (y, x) of every lit pixel
    return {int(x) for x in lit[:, 1]}, {int(y) for y in lit[:, 0]}


def test_a_region_places_every_mark_pixel_inside_it():
    ds = RelationalDataset(200, img_size=16, mark_size=2, seed=4, region={"cols": [6, 16], "rows": [2, 11]})
    assert ds.region == {"cols": [6, 16], "rows": [2, 11]}
    cols, rows = set(), set()
    for i in range(len(ds)):
        image, label = ds[i]
        c, r = _mark_columns_rows(image)
        assert len(c) >= 2 and min(c) >= 6 and max(c) <= 15 and min(r) >= 2 and max(r) <= 10, i
        ya, xa, yb, xb = ds.positions(i)
        assert int(label) == direction_label(ya - yb, xb - xa, 4)
        cols |= c
        rows |= r
    assert cols == set(range(6, 16)) and rows == set(range(2, 11))  # the whole region is used
    assert {int(ds[i][1]) for i in range(len(ds))} == {0, 1, 2, 3}  # every direction still occurs


def test_columns_only_region_and_no_region_keep_the_old_samples():
    left = RelationalDataset(50, img_size=16, seed=0, region=[0, 10])
    assert left.region == {"cols": [0, 10], "rows": [0, 16]}
    assert all(max(_mark_columns_rows(left[i][0])[0]) <= 9 for i in range(50))
    plain, whole = RelationalDataset(50, img_size=16, seed=0), RelationalDataset(50, img_size=16, seed=0, region=[0, 16])
    assert plain.region is None and all(plain.positions(i) == whole.positions(i) for i in range(50))


@pytest.mark.parametrize(
    ("region", "match"),
    [([0, 4], r"at least 2 \* mark_size \+ 1 = 5"), ([3, 17], "stop <= 16"), ([5, 5], "start < stop"),
     ([0.5, 9], "two ints"), ({"cols": [0, 9], "x": [0, 2]}, "cols: "), ("left", "null"),
     ({"rows": [0, 3]}, "rows .0, 3. is 3 pixels")],
)
def test_bad_regions_are_refused_naming_the_key(region, match):
    with pytest.raises(ValueError, match=r"^region = .*" + match):
        RelationalDataset(4, img_size=16, mark_size=2, region=region)
    assert check_region("data.val_region", None, 16, 2) is None


def test_regions_in_the_config_and_the_splits():
    cfg = resolve_config({"data": {"num_train": 64, "num_val": 32, "train_region": [0, 10],
                                   "val_region": {"cols": [6, 16]}}})
    assert cfg["data"]["val_region"] == {"cols": [6, 16], "rows": [0, 16]} and resolve_config(cfg) == cfg
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert all(max(_mark_columns_rows(train[i][0])[0]) <= 9 for i in range(len(train)))
    assert all(min(_mark_columns_rows(val[i][0])[0]) >= 6 for i in range(len(val)))
    with pytest.raises(ConfigError, match=r"data\.train_region = \[0, 4\] is not allowed: cols"):
        resolve_config({"data": {"train_region": [0, 4]}})
    with pytest.raises(ConfigError, match=r"data\.val_region = .* null unless data\.dataset is relational"):
        resolve_config({"data": {"dataset": "digits", "val_region": [0, 8]}})
    with pytest.raises(ConfigError, match=r"data\.train_region"):  # checked against the image it must fit
        resolve_config({"data": {"img_size": 8, "patch_size": 2, "train_region": [0, 10]}})
