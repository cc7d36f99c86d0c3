"""Position shift: does a model solve the task where it never saw a mark?

A relative scheme sees only offsets, so a model trained with its marks in columns 0-9 should solve
the relational task in columns 6-15 as well; an absolute embedding has never trained the positions
there. The preset ``configs/shift.yaml`` trains in one placement region (``data.train_region``) and
names the unseen one (``data.val_region``); :func:`evaluate_shift` measures a checkpoint in both,
on fresh validation samples, and :func:`shift_example` gives the picture of *why*: one image of the
unseen region with the model's prediction and attention maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from relpos._validation import check_int
from relpos.attention import collect_attention_maps
from relpos.experiments.transfer import accuracy_on, evaluation_split, load_lab_model

__all__ = ["default_regions", "evaluate_shift", "region_eval_name", "shift_example"]


def region_eval_name(name: str) -> str:
    """``"region=unseen"``: the ``eval`` column of a shift row."""
    return f"region={name}"


def default_regions(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{"seen": data.train_region, "unseen": data.val_region}`` of a resolved relational config.

    Raises:
        ValueError: the config is not of the relational dataset, or it names no region for either
            split (then seen and unseen would be the same images).
    """
    d = cfg["data"]
    if d["dataset"] != "relational":
        raise ValueError(f"data.dataset = {d['dataset']!r}: the position-shift lab needs the relational "
                         "dataset (placement regions)")
    seen, unseen = d.get("train_region"), d.get("val_region")
    if seen == unseen:
        raise ValueError(f"data.train_region ({seen!r}) and data.val_region ({unseen!r}) are the same: "
                         "train in one region and name another, e.g. configs/shift.yaml")
    return {"seen": seen, "unseen": unseen}


def evaluate_shift(
    checkpoint_path: str,
    regions: Mapping[str, Any] | None = None,
    num_samples: int = 512,
) -> list[dict]:
    """Accuracy of a checkpoint with the marks in each placement region.

    Args:
        checkpoint_path: a relpos checkpoint of the relational task.
        regions: name -> region (``None`` = anywhere, ``[x0, x1]`` columns, or ``{"cols", "rows"}``;
            :func:`relpos.data.relational.check_region`); default :func:`default_regions` (the
            training region as "seen", the validation region as "unseen").
        num_samples: validation images per region.

    Returns:
        One row per region: ``{"scheme", "eval": "region=<name>", "accuracy", "n", "region"}``
        (``region`` normalized). The images are the validation split drawn inside each region, so
        even the "seen" region is measured on images the model never trained on.

    Raises:
        ConfigError: a region the dataset refuses (the message names ``data.val_region``).
    """
    num_samples = check_int("num_samples", num_samples)
    model, cfg = load_lab_model(checkpoint_path)
    regions = dict(default_regions(cfg) if regions is None else regions)
    if not regions:
        raise ValueError("regions must name at least one region, e.g. {'seen': [0, 10], 'unseen': [6, 16]}")
    rows = []
    for name, region in regions.items():
        val, new_cfg = evaluation_split(cfg, "val", val_region=region)
        acc, n = accuracy_on(model, val, num_samples)
        rows.append({"scheme": cfg["model"]["scheme"], "eval": region_eval_name(str(name)), "accuracy": acc,
                     "n": n, "region": new_cfg["data"]["val_region"]})
    return rows


def shift_example(checkpoint_path: str, region: Any = None, index: int = 0) -> dict:
    """One validation image drawn in ``region`` (default: the unseen one), the model's answer and maps.

    Returns:
        ``{"image": (C, H, W) tensor, "label": int, "prediction": int, "classes": names,
        "marks": (y_A, x_A, y_B, x_B), "grid": (gh, gw), "scheme": str,
        "attention": [(B=1, H, N, N) per layer]}``.
    """
    model, cfg = load_lab_model(checkpoint_path)
    if region is None:
        region = default_regions(cfg)["unseen"]
    val, _ = evaluation_split(cfg, "val", val_region=region)
    index = check_int("index", index, minimum=0, maximum=len(val) - 1)
    image, label = val[index]
    parent, i = val.dataset, val.indices[index]  # SplitSubset of the RelationalDataset
    with torch.no_grad():
        maps = collect_attention_maps(model, image[None])
        prediction = int(model(image[None]).argmax(dim=-1))
    return {
        "image": image, "label": int(label), "prediction": prediction, "classes": tuple(val.classes),
        "marks": parent.positions(i), "grid": tuple(model.grid_size), "scheme": cfg["model"]["scheme"],
        "attention": maps,
    }
