"""The relational task: labels checked against the definition, determinism, shapes, colours."""

from __future__ import annotations

import math

import pytest
import torch

from relpos.data.relational import DIRECTION_NAMES, RelationalDataset, direction_label


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
