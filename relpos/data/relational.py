"""A teaching task that only relative position can solve: which way is the second mark?

Each image is blank (optionally with Gaussian noise) except for two square marks of side
``mark_size`` placed anywhere: mark **A** and mark **B**. The label is the compass direction from A
to B, with "up" meaning towards row 0::

    dx = x_B - x_A            (columns, right is positive)
    dy = y_A - y_B            (rows flipped, so up is positive)
    angle = atan2(dy, dx) in degrees, in [0, 360)
    label = round(angle / (360 / K)) mod K       K = num_classes (4 or 8)

So with ``K = 4``: 0 east (right), 1 north (up), 2 west (left), 3 south (down); with ``K = 8`` the
diagonals sit in between (0 east, 1 north-east, 2 north, ...). ``(y, x)`` is a mark's top-left pixel.

Placement, per sample ``i``, from a generator seeded by ``(seed, i)`` (so ``dataset[i]`` is the same
on every read, in every process): draw ``(y_A, x_A, y_B, x_B)`` uniformly in
``[0, img_size - mark_size]``; redraw while the marks overlap or touch
(``max(|dx|, |dy|) <= mark_size``) or the angle lies within ``margin_deg`` degrees of a sector
boundary (so no label is a coin toss). Position and colour of one mark alone say nothing about the
label; only the offset between the two does. A model without position information sees a bag of
patches and stays near chance (except when both marks share a patch); a relative position bias
expresses "attend to what lies to my right" directly.

Colours: with 3 channels A is red ``(1, 0, 0)`` and B blue ``(0, 0, 1)``; with 1 channel A is
``+1`` and B ``-1``; with ``C`` channels A lights channel 0 and B channel ``C - 1``.

Placement regions (the position-shift lab): ``region`` confines both marks, every pixel of them, to
columns ``[x0, x1)`` and rows ``[y0, y1)``; written ``[x0, x1]`` (columns only) or ``{"cols": [x0,
x1], "rows": [y0, y1]}`` (either key optional), normalized by :func:`check_region` to the dict with
both. Each side must hold two marks with a gap (``x1 - x0 >= 2 * mark_size + 1``), so every
direction can still occur. Training in columns 0-9 and testing in 6-15 asks whether a model solves
the task where it never saw a mark. Without a region (``None``) the draws are exactly as above.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from relpos._limits import short_repr
from relpos._validation import check_float, check_int
from relpos.data.dataset import _check_index, sample_generator

__all__ = ["DIRECTION_NAMES", "RelationalDataset", "check_region", "direction_label"]

#: Class names by number of classes, in label order (counter-clockwise from east).
DIRECTION_NAMES: dict[int, tuple[str, ...]] = {
    4: ("east", "north", "west", "south"),
    8: ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east"),
}

# Bound on redraws per sample; with the allowed settings a valid draw takes a few tries at most.
_MAX_DRAWS = 10_000


def _angle_deg(dy: int, dx: int) -> float:
    return math.degrees(math.atan2(dy, dx)) % 360.0


def direction_label(dy: int, dx: int, num_classes: int) -> int:
    """Label of the offset ``(dy, dx)`` (``dy`` positive = up) among ``num_classes`` directions.

    ``round(angle / (360 / num_classes)) mod num_classes``, angle counter-clockwise from east.
    """
    sector = 360.0 / num_classes
    return int(math.floor(_angle_deg(dy, dx) / sector + 0.5)) % num_classes


def _check_range(key: str, axis: str, value: object, img_size: int, mark_size: int) -> list[int]:
    """``[a, b]`` of one axis of a region, checked: ints, ``0 <= a < b <= img_size``, room for two marks."""
    need = 2 * mark_size + 1
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        example = min(img_size, max(need, img_size // 2))
        raise ValueError(f"{key} = {short_repr(value)} is not allowed: {axis} must be [start, stop], "
                         f"two ints (pixels [start, stop), e.g. [0, {example}])")
    a, b = int(value[0]), int(value[1])
    if not 0 <= a < b <= img_size:
        raise ValueError(f"{key} = {short_repr(value)} is not allowed: {axis} [start, stop) must satisfy "
                         f"0 <= start < stop <= {img_size} (the image side)")
    if b - a < need:
        raise ValueError(f"{key} = {short_repr(value)} is not allowed: {axis} [{a}, {b}) is {b - a} pixels; "
                         f"both marks must fit with a gap, so at least 2 * mark_size + 1 = {need}")
    return [a, b]


def check_region(key: str, region: object, img_size: int, mark_size: int) -> dict | None:
    """Check and normalize a placement region (see the module docstring).

    Args:
        key: the name to report in errors, e.g. ``"data.train_region"``.
        region: ``None`` (the whole image), ``[x0, x1]`` (columns; all rows), or a mapping with
            ``"cols"`` and/or ``"rows"`` ranges ``[start, stop)`` in pixels.
        img_size: the image side.
        mark_size: the side of one mark.

    Returns:
        ``None``, or ``{"cols": [x0, x1], "rows": [y0, y1]}`` (a missing axis spans the image).

    Raises:
        ValueError: a malformed region, a range outside the image, or one too narrow for two marks
            with a gap; the message names ``key``, the value and what is allowed.
    """
    if region is None:
        return None
    if isinstance(region, (list, tuple)):
        region = {"cols": region}
    if not isinstance(region, dict) or not region or not set(region) <= {"cols", "rows"}:
        raise ValueError(f"{key} = {short_repr(region)} is not allowed: null (anywhere), [x0, x1] "
                         "(columns) or {cols: [x0, x1], rows: [y0, y1]} (pixel ranges [start, stop))")
    return {
        axis: _check_range(key, axis, region.get(axis, [0, img_size]), img_size, mark_size)
        for axis in ("cols", "rows")
    }


def _boundary_distance_deg(dy: int, dx: int, num_classes: int) -> float:
    """Angular distance (degrees) from the offset's direction to the nearest sector boundary."""
    sector = 360.0 / num_classes
    # Boundaries sit at sector * (k + 1/2); shift by half a sector so they fall on multiples.
    rel = (_angle_deg(dy, dx) + sector / 2) % sector
    return min(rel, sector - rel)


class RelationalDataset(Dataset):
    """Two marks; the label is the direction from mark A to mark B (see the module docstring).

    Args:
        num_samples: number of samples.
        img_size: side of the square images.
        num_classes: 4 (east, north, west, south) or 8 (with the diagonals).
        in_channels: image channels (1 or more; see the module docstring for the colours).
        mark_size: side of each square mark, in pixels.
        noise_std: standard deviation of Gaussian background noise (0 = clean).
        margin_deg: keep offsets at least this many degrees away from a sector boundary.
        seed: dataset seed; sample ``i`` depends only on ``(seed, i)``.
        region: where both marks lie (see :func:`check_region`); ``None``: anywhere.

    ``dataset[i]`` returns ``(image (C, H, W) float32, label int64 scalar)``.
    Attributes: ``classes`` (direction names), ``region`` (normalized, or ``None``), :meth:`positions`
    (the marks of a sample).
    """

    def __init__(
        self,
        num_samples: int,
        img_size: int = 32,
        num_classes: int = 4,
        in_channels: int = 3,
        mark_size: int = 2,
        noise_std: float = 0.0,
        margin_deg: float = 5.0,
        seed: int = 0,
        region: object = None,
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples)
        self.img_size = check_int("img_size", img_size)
        if num_classes not in DIRECTION_NAMES:
            raise ValueError(f"num_classes must be one of {sorted(DIRECTION_NAMES)}, got {num_classes!r}")
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        self.mark_size = check_int("mark_size", mark_size)
        # Two marks must fit with a gap between them: the free range per axis must exceed mark_size.
        if img_size - mark_size < mark_size + 1:
            raise ValueError(
                f"mark_size ({mark_size}) is too large for img_size ({img_size}): "
                f"need img_size >= 2 * mark_size + 1"
            )
        self.noise_std = check_float("noise_std", noise_std, minimum=0.0)
        max_margin = 360.0 / num_classes / 2
        self.margin_deg = check_float(
            "margin_deg", margin_deg, minimum=0.0, maximum=max_margin * 0.8
        )
        self.seed = check_int("seed", seed, minimum=0)
        self.region = check_region("region", region, img_size, mark_size)
        self.classes: tuple[str, ...] = DIRECTION_NAMES[num_classes]

    def __len__(self) -> int:
        return self.num_samples

    def _draw(self, g: torch.Generator) -> tuple[int, int, int, int]:
        s, m = self.img_size, self.mark_size
        (x0, x1), (y0, y1) = (self.region["cols"], self.region["rows"]) if self.region else ((0, s), (0, s))
        hy, hx = y1 - y0 - m + 1, x1 - x0 - m + 1  # top-left choices per axis
        for _ in range(_MAX_DRAWS):
            if hy == hx:  # one draw of four, as without a region (so no region = the old samples)
                offset = torch.tensor([y0, x0, y0, x0])
                ya, xa, yb, xb = (torch.randint(hy, (4,), generator=g) + offset).tolist()
            else:
                ya, yb = (torch.randint(hy, (2,), generator=g) + y0).tolist()
                xa, xb = (torch.randint(hx, (2,), generator=g) + x0).tolist()
            dx, dy = xb - xa, ya - yb
            if max(abs(dx), abs(dy)) <= self.mark_size:
                continue
            if self.margin_deg > 0 and _boundary_distance_deg(dy, dx, self.num_classes) < self.margin_deg:
                continue
            return ya, xa, yb, xb
        raise RuntimeError("could not place the marks; lower margin_deg or mark_size")  # pragma: no cover

    def positions(self, idx: int) -> tuple[int, int, int, int]:
        """``(y_A, x_A, y_B, x_B)``: top-left pixels of the two marks of sample ``idx``."""
        idx = _check_index(idx, self.num_samples)
        return self._draw(sample_generator(self.seed, idx))

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = _check_index(idx, self.num_samples)
        g = sample_generator(self.seed, idx)
        ya, xa, yb, xb = self._draw(g)
        c, s, m = self.in_channels, self.img_size, self.mark_size
        if self.noise_std > 0:
            image = torch.randn(c, s, s, generator=g) * self.noise_std  # (C, H, W)
        else:
            image = torch.zeros(c, s, s)  # (C, H, W)
        if c == 1:
            image[0, ya : ya + m, xa : xa + m] = 1.0
            image[0, yb : yb + m, xb : xb + m] = -1.0
        else:
            image[0, ya : ya + m, xa : xa + m] = 1.0
            image[c - 1, yb : yb + m, xb : xb + m] = 1.0
        label = torch.tensor(direction_label(ya - yb, xb - xa, self.num_classes), dtype=torch.int64)
        return image, label
