"""The datasets a config can name: their defaults (:func:`resolve_data`) and ``build_dataset(cfg, split)``.

:func:`resolve_data` fills what the dataset fixes in a config's ``data`` section (``null`` = "let the
dataset decide": ``in_channels``, ``num_classes``, ``num_train``, ``num_val``) and refuses impossible
combinations; ``relpos.experiments.config.resolve_config`` calls it, and :func:`build_dataset` takes a
config it has resolved. This package never imports ``relpos.experiments``.

Splits are fixed by the config's ``seed``:

* ``relational`` and ``synthetic`` are procedural: one dataset of ``num_train + num_val`` samples
  seeded by ``seed``; train is samples ``[0, num_train)``, validation ``[num_train, num_train + num_val)``.
  A relational split with a placement region (``data.train_region`` / ``data.val_region``) draws its
  samples inside that region instead (same seed and indices; no region: the draws are unchanged).
* ``digits`` and ``folder`` are finite: a permutation of all samples drawn from ``seed``; validation
  is its first ``num_val`` entries, train the next ``num_train``. The two never overlap.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from relpos._limits import short_repr
from relpos._validation import check_choice
from relpos.data.dataset import SyntheticImageDataset
from relpos.data.digits import DIGITS_NATIVE_SIZE, DIGITS_NUM_SAMPLES, DigitsDataset
from relpos.data.folder import ImageFolderDataset, scan_image_folder
from relpos.data.relational import DIRECTION_NAMES, RelationalDataset, check_region

__all__ = [
    "DATASETS",
    "SPLITS",
    "SplitSubset",
    "build_dataset",
    "default_split_sizes",
    "estimate_data_memory",
    "resolve_data",
    "split_indices",
]

DATASETS: tuple[str, ...] = ("relational", "digits", "synthetic", "folder")
SPLITS: tuple[str, ...] = ("train", "val")

# What each dataset fixes when the config says null: channels, classes, (num_train, num_val).
_CHANNELS = {"relational": 3, "synthetic": 3, "folder": 3, "digits": 1}
_CLASSES = {"relational": 4, "synthetic": 10, "digits": 10}
_SIZE_DEFAULTS = {"relational": (8192, 1024), "synthetic": (1024, 256)}
_FIXED_CHANNELS = {"digits": 1}
_FOLDER_CHANNELS = (1, 3)  # greyscale or RGB
# Where the marks of each split lie (relational only; null = anywhere): relpos.data.relational.check_region.
_REGION_KEYS = ("train_region", "val_region")


def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{key} = {short_repr(value)} is not allowed: {allowed}")  # bounded: from files


def resolve_data(data: dict) -> dict:
    """Fill and check the dataset-derived values of a config's ``data`` section.

    Args:
        data: the ``data`` section with every key present and each value already type-checked
            (``relpos.experiments.config.resolve_config`` does both first).

    Returns:
        A new dict with ``in_channels``, ``num_classes``, ``num_train`` and ``num_val`` filled.

    Raises:
        ValueError: an impossible combination; the message names the dotted key (``data.<key>``),
            the value and what is allowed (the config turns it into a ``ConfigError``).
    """
    d = dict(data)
    name = d["dataset"]
    if d["in_channels"] is None:
        d["in_channels"] = _CHANNELS[name]
    elif name in _FIXED_CHANNELS and d["in_channels"] != _FIXED_CHANNELS[name]:
        raise _fail("data.in_channels", d["in_channels"], f"{_FIXED_CHANNELS[name]} for dataset {name} (or null)")
    elif name == "folder" and d["in_channels"] not in _FOLDER_CHANNELS:
        raise _fail("data.in_channels", d["in_channels"], "1 (greyscale) or 3 (RGB) for dataset folder")
    if d["img_size"] % d["patch_size"]:
        raise _fail("data.patch_size", d["patch_size"], f"a divisor of data.img_size ({d['img_size']})")
    if name != "folder" and d["root"] is not None:
        raise _fail("data.root", d["root"], "null unless data.dataset is folder")
    for key in _REGION_KEYS:
        if name != "relational" and d.get(key) is not None:
            raise _fail(f"data.{key}", d[key], "null unless data.dataset is relational")

    if name == "relational":
        if d["num_classes"] is None:
            d["num_classes"] = _CLASSES[name]
        if d["num_classes"] not in DIRECTION_NAMES:
            allowed = " or ".join(str(k) for k in sorted(DIRECTION_NAMES))
            raise _fail("data.num_classes", d["num_classes"], f"{allowed} for dataset relational (directions)")
        if d["img_size"] < 2 * d["mark_size"] + 1:
            raise _fail("data.mark_size", d["mark_size"], f"at most {(d['img_size'] - 1) // 2} for "
                        f"data.img_size {d['img_size']} (two marks with a gap must fit)")
        for key in _REGION_KEYS:  # placement regions per split (relational only), normalized
            d[key] = check_region(f"data.{key}", d.get(key), d["img_size"], d["mark_size"])
        max_margin = 0.8 * 180.0 / d["num_classes"]
        if d["margin_deg"] > max_margin:
            raise _fail("data.margin_deg", d["margin_deg"], f"a number in [0, {max_margin:g}] for "
                        f"{d['num_classes']} classes")
    elif name == "synthetic":
        if d["num_classes"] is None:
            d["num_classes"] = _CLASSES[name]
    elif name == "digits":
        if d["num_classes"] is not None and d["num_classes"] != _CLASSES[name]:
            raise _fail("data.num_classes", d["num_classes"], "10 for dataset digits (or null)")
        d["num_classes"] = _CLASSES[name]
        if d["img_size"] < DIGITS_NATIVE_SIZE:
            raise _fail("data.img_size", d["img_size"], "at least 8 for dataset digits (native 8x8)")

    if name in _SIZE_DEFAULTS:
        default_train, default_val = _SIZE_DEFAULTS[name]
        d["num_train"] = default_train if d["num_train"] is None else d["num_train"]
        d["num_val"] = default_val if d["num_val"] is None else d["num_val"]
        return d
    _fill_finite_sizes(d, name)
    return d


def _fill_finite_sizes(d: dict, name: str) -> None:
    """``num_train`` / ``num_val`` of a finite dataset (digits, folder): 20 % validation by default."""
    if name == "digits":
        total = DIGITS_NUM_SAMPLES
    else:
        if d["root"] is None:
            raise _fail("data.root", None, "the path of an existing folder with one sub-folder per class "
                        "(required for dataset folder)")
        try:
            classes, samples = scan_image_folder(d["root"])
        except ValueError as exc:
            raise ValueError(f"data.root = {short_repr(d['root'])} is not allowed: {exc}") from None
        if d["num_classes"] is not None and d["num_classes"] != len(classes):
            raise _fail("data.num_classes", d["num_classes"], f"{len(classes)} (the number of class "
                        f"sub-folders in {d['root']}) or null")
        d["num_classes"] = len(classes)
        total = len(samples)
        if total < 2:
            raise _fail("data.root", d["root"], "a folder with at least 2 images")
    if d["num_val"] is None:
        d["num_val"] = max(1, round(0.2 * total)) if d["num_train"] is None else max(0, min(total - d["num_train"], max(1, round(0.2 * total))))
        if d["num_val"] < 1:
            raise _fail("data.num_train", d["num_train"], f"at most {total - 1} (dataset {name} has {total} samples)")
    if d["num_train"] is None:
        d["num_train"] = total - d["num_val"]
        if d["num_train"] < 1:
            raise _fail("data.num_val", d["num_val"], f"at most {total - 1} (dataset {name} has {total} samples)")
    if d["num_train"] + d["num_val"] > total:
        raise _fail("data.num_train", d["num_train"], f"data.num_train + data.num_val ({d['num_val']}) at most "
                    f"{total} (dataset {name} has {total} samples)")


def default_split_sizes(dataset: str) -> tuple[int, int] | None:
    """``(num_train, num_val)`` a procedural dataset takes when the config says null; None for a
    finite one (digits, folder: their files bound the sizes)."""
    return _SIZE_DEFAULTS.get(check_choice("dataset", dataset, DATASETS))


#: Bytes per listed file of an image folder (a ``(Path, label)`` pair; the images load lazily).
_FOLDER_ENTRY_BYTES = 256


def estimate_data_memory(data: dict) -> dict[str, int]:
    """Bytes that :func:`build_dataset` keeps in memory for both splits of a resolved ``data`` section.

    Procedural datasets (relational, synthetic) draw each sample from its index and their splits
    are ``range`` objects: nothing grows with ``num_train``. ``digits`` holds its images, upsampled
    to ``img_size``: ``(num_train + num_val, 1, img_size, img_size)`` float32. ``folder`` keeps its
    file list (the images load one at a time).

    Returns:
        Bytes by part (empty when nothing grows with the config), e.g.
        ``{"digits images (n x 1 x H x W)": ...}``.
    """
    n = data["num_train"] + data["num_val"]
    if data["dataset"] == "digits":
        return {"digits images (n x 1 x H x W)": n * data["img_size"] ** 2 * 4}
    if data["dataset"] == "folder":
        return {"image folder file list": n * _FOLDER_ENTRY_BYTES}
    return {}


_NEEDED = ("dataset", "img_size", "patch_size", "in_channels", "num_classes", "num_train", "num_val")


def _resolved_data(cfg: Any) -> tuple[dict, int]:
    """``(data section, seed)`` of a resolved config, or a ValueError naming what is missing."""
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not isinstance(cfg.get("seed"), int):
        raise ValueError(
            "cfg must be a resolved config with 'seed' and a 'data' section "
            "(relpos.experiments.config.resolve_config makes one)"
        )
    missing = [f"data.{k}" for k in _NEEDED if data.get(k) is None]
    if missing:
        raise ValueError(
            f"cfg is not a resolved config: {', '.join(missing)} missing or null "
            "(relpos.experiments.config.resolve_config fills them)"
        )
    return data, cfg["seed"]


class SplitSubset(Subset):
    """A ``Subset`` that keeps the parent's ``classes`` (class names, in label order)."""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(getattr(self.dataset, "classes", ()))


def split_indices(total: int, num_train: int, num_val: int, seed: int, split: str) -> list[int]:
    """Indices of ``split`` in a seeded permutation of ``range(total)`` (validation first)."""
    check_choice("split", split, SPLITS)
    if num_train + num_val > total:
        raise ValueError(f"num_train + num_val ({num_train} + {num_val}) exceeds the {total} samples available")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return perm[:num_val] if split == "val" else perm[num_val : num_val + num_train]


def build_dataset(cfg: dict, split: str = "train") -> Dataset:
    """Build the ``split`` (``"train"`` or ``"val"``) of the dataset that ``cfg`` describes.

    Args:
        cfg: a *resolved* config (``relpos.experiments.config.resolve_config``; a checkpoint's
            ``config`` is one): its ``seed`` and ``data`` section are read.
        split: ``"train"`` or ``"val"``.

    Returns:
        A dataset whose items are ``(image (C, H, W) float32, label int64 scalar)`` and which has a
        ``classes`` attribute.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`, or ``cfg`` is not resolved (a missing or
            null value the dataset needs; the message names the key).
    """
    check_choice("split", split, SPLITS)
    d, seed = _resolved_data(cfg)
    name, n_train, n_val = d["dataset"], d["num_train"], d["num_val"]
    if name in ("relational", "synthetic"):
        if name == "relational":
            full: Dataset = RelationalDataset(
                n_train + n_val,
                img_size=d["img_size"],
                num_classes=d["num_classes"],
                in_channels=d["in_channels"],
                mark_size=d["mark_size"],
                noise_std=d["noise_std"],
                margin_deg=d["margin_deg"],
                seed=seed,
                region=d.get(f"{split}_region"),  # the split's placement region (None: anywhere)
            )
        else:
            full = SyntheticImageDataset(
                n_train + n_val,
                img_size=d["img_size"],
                patch_size=d["patch_size"],
                in_channels=d["in_channels"],
                num_classes=d["num_classes"],
                seed=seed,
            )
            full.classes = tuple(f"class {i}" for i in range(d["num_classes"]))
        # a range, not a list: O(1) memory whatever the split's size (data.num_train may be ~2**31)
        rng = range(n_train) if split == "train" else range(n_train, n_train + n_val)
        return SplitSubset(full, rng)
    if name == "digits":
        idx = split_indices(DIGITS_NUM_SAMPLES, n_train, n_val, seed, split)
        return DigitsDataset(img_size=d["img_size"], upsample=d["upsample"], indices=idx)
    _, samples = scan_image_folder(d["root"])
    idx = split_indices(len(samples), n_train, n_val, seed, split)
    return ImageFolderDataset(d["root"], img_size=d["img_size"], in_channels=d["in_channels"], indices=idx)
