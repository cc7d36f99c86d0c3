"""``build_dataset(cfg, split)``: the dataset a config names, split into train and validation.

Splits are fixed by the config's ``seed``:

* ``relational`` and ``synthetic`` are procedural: one dataset of ``num_train + num_val`` samples
  seeded by ``seed``; train is samples ``[0, num_train)``, validation ``[num_train, num_train + num_val)``.
* ``digits`` and ``folder`` are finite: a permutation of all samples drawn from ``seed``; validation
  is its first ``num_val`` entries, train the next ``num_train``. The two never overlap.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from relpos._validation import check_choice
from relpos.data.dataset import SyntheticImageDataset
from relpos.data.digits import DIGITS_NUM_SAMPLES, DigitsDataset
from relpos.data.folder import ImageFolderDataset, scan_image_folder
from relpos.data.relational import RelationalDataset

__all__ = ["DATASETS", "SPLITS", "SplitSubset", "build_dataset", "split_indices"]

DATASETS: tuple[str, ...] = ("relational", "digits", "synthetic", "folder")
SPLITS: tuple[str, ...] = ("train", "val")


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
        cfg: a config (it is resolved first, so partial configs get the defaults).
        split: ``"train"`` or ``"val"``.

    Returns:
        A dataset whose items are ``(image (C, H, W) float32, label int64 scalar)`` and which has a
        ``classes`` attribute.
    """
    from relpos.experiments.config import resolve_config  # the config module imports this one

    check_choice("split", split, SPLITS)
    cfg = resolve_config(cfg)
    d, seed = cfg["data"], cfg["seed"]
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
        rng = range(n_train) if split == "train" else range(n_train, n_train + n_val)
        return SplitSubset(full, list(rng))
    if name == "digits":
        idx = split_indices(DIGITS_NUM_SAMPLES, n_train, n_val, seed, split)
        return DigitsDataset(img_size=d["img_size"], upsample=d["upsample"], indices=idx)
    _, samples = scan_image_folder(d["root"])
    idx = split_indices(len(samples), n_train, n_val, seed, split)
    return ImageFolderDataset(d["root"], img_size=d["img_size"], in_channels=d["in_channels"], indices=idx)
