"""The resize lab (app page 6): move a trained checkpoint to another image size and measure it.

The single-checkpoint view of the size-transfer lab: each method that applies
(:func:`relpos.experiments.transfer.methods_for`) moves a copy of the model with the one transfer
function, :func:`relpos.experiments.transfer.transfer_model`; the lab reports the accuracy on the
validation split rendered at the new size, the first bias table before and after, and the bias at a
few offsets (:func:`bias_at_offsets`). The table math itself is :mod:`relpos.resize`; this module is an
experiment (it loads checkpoints and datasets), so it sits above the models and the data.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from relpos._validation import check_choice, check_int
from relpos.attention import relative_position_bias_disabled
from relpos.data.build import build_dataset
from relpos.experiments.transfer import (
    TRANSFER_METHODS,
    accuracy_on,
    evaluation_split,
    load_lab_model,
    methods_for,
    not_applicable_reason,
    transfer_model,
)
from relpos.relative_position import RelativePositionBias

__all__ = ["LAB_OFFSETS", "bias_at_offsets", "resize_lab"]

#: Offsets the lab reports: ``(dy, dx)`` along each axis (1D biases use ``dx`` only).
LAB_OFFSETS: tuple[tuple[int, int], ...] = ((0, -2), (0, -1), (0, 1), (0, 2), (-2, 0), (-1, 0), (1, 0), (2, 0))


def bias_at_offsets(
    rpb: RelativePositionBias, offsets: tuple[tuple[int, int], ...] = LAB_OFFSETS
) -> dict[tuple[int, int], list[float]]:
    """Per-head bias ``b(Δ)`` of a :class:`~relpos.relative_position.RelativePositionBias` at offsets ``Δ``.

    Read from the ``(H, N, N)`` bias itself (any family): ``Δ = pos(query) - pos(key)``, with
    ``(dy, dx)`` in 2D and ``dx`` (``dy`` must be 0) in 1D. Offsets outside the window are left out.
    A class token (``rpb.has_class_token``) is skipped.
    """
    with torch.no_grad():
        bias = rpb().detach().float().cpu()  # (H, N, N)
    if rpb.has_class_token:
        bias = bias[:, 1:, 1:]  # (H, hw, hw)
    out: dict[tuple[int, int], list[float]] = {}
    for dy, dx in offsets:
        if rpb.window_size is not None:
            h, w = rpb.window_size
            if abs(dy) >= h or abs(dx) >= w:
                continue
            yq, xq = max(dy, 0), max(dx, 0)
            i, j = yq * w + xq, (yq - dy) * w + (xq - dx)
        else:
            if dy != 0 or abs(dx) >= rpb.seq_len:
                continue
            i, j = max(dx, 0), max(dx, 0) - dx
        out[(dy, dx)] = bias[:, i, j].tolist()
    return out


def _first_table(model: nn.Module):
    """``(T, H)`` numpy copy of the model's first bias table."""
    return model.relative_position_biases()[0][1].effective_table().detach().float().cpu().numpy().copy()


def _offset_rows(label: str, rpb: RelativePositionBias) -> list[dict]:
    return [
        {"model": label, "offset": str(k), "head": h, "bias": v}
        for k, vals in bias_at_offsets(rpb).items() for h, v in enumerate(vals)
    ]


def resize_lab(
    checkpoint_path: str,
    new_img_size: int,
    methods: tuple[str, ...] | None = None,
    max_samples: int = 512,
) -> dict:
    """Move a trained relpos checkpoint to another image size by each transfer method, and measure it.

    The single-checkpoint view of the size-transfer lab: each method is
    :func:`relpos.experiments.transfer.transfer_model` on a copy of the model (so a table is resized,
    a cpb MLP re-queried with its training window held, an absolute embedding resampled, a model
    without position evaluated as it is), evaluated on the validation split of its own dataset
    rendered at ``new_img_size`` (at most ``max_samples`` images). For reference, the original model at
    its own size, and (with a bias) the first moved model with its bias switched off, are evaluated too.

    Args:
        methods: transfer methods (:data:`~relpos.experiments.transfer.TRANSFER_METHODS`); ``None``:
            every method that applies (:func:`~relpos.experiments.transfer.methods_for`). A method
            that does not apply gets a "not applicable" note and no row.

    Returns:
        ``{"old_grid", "new_grid", "scheme", "methods" (those that apply), "accuracy": [{"model",
        "img_size", "accuracy", "n" (images evaluated)}...], "tables": {"original" | method: (T, H)
        numpy of the first bias} (empty without a bias), "window": {...: (h, w) | None}, "offsets": [{"model", "offset",
        "head", "bias"}...], "notes": {method: [str]}, "bias_type" (None without a bias)}``.
    """
    new_img_size = check_int("new_img_size", new_img_size)
    max_samples = check_int("max_samples", max_samples)
    for m in methods or ():
        check_choice("method", m, TRANSFER_METHODS)
    model, cfg = load_lab_model(checkpoint_path)
    patch = model.patch_embed.patch_size
    if new_img_size % patch:
        raise ValueError(f"new_img_size ({new_img_size}) must be a multiple of the patch size ({patch})")
    new_grid = (new_img_size // patch, new_img_size // patch)
    old_img = cfg["data"]["img_size"]
    rpbs = model.relative_position_biases()
    applicable = methods_for(model)
    wanted = list(applicable) if methods is None else list(methods)

    val_old = build_dataset(cfg, "val")
    val_new, _ = evaluation_split(cfg, "val", img_size=new_img_size)

    acc, n = accuracy_on(model, val_old, max_samples)
    accuracy = [{"model": "original", "img_size": old_img, "accuracy": acc, "n": n}]
    tables = {"original": _first_table(model)} if rpbs else {}
    window = {"original": rpbs[0][1].window_size} if rpbs else {}
    offsets = _offset_rows("original", rpbs[0][1]) if rpbs else []
    notes: dict[str, list[str]] = {}
    for method in wanted:
        reason = not_applicable_reason(model, method)
        if reason is not None:
            notes[method] = [reason]
            continue
        moved = copy.deepcopy(model)
        notes[method] = transfer_model(moved, new_grid, method)
        acc, n = accuracy_on(moved, val_new, max_samples)
        accuracy.append({"model": method, "img_size": new_img_size, "accuracy": acc, "n": n})
        if not rpbs:
            continue
        if len(accuracy) == 2:  # the first moved model, once more without its bias
            with relative_position_bias_disabled(moved):
                acc_off, n = accuracy_on(moved, val_new, max_samples)
            accuracy.append({"model": f"{method}, bias off", "img_size": new_img_size, "accuracy": acc_off, "n": n})
        first = moved.relative_position_biases()[0][1]
        tables[method] = _first_table(moved)
        window[method] = first.window_size
        offsets += _offset_rows(method, first)
    return {
        "old_grid": tuple(model.grid_size), "new_grid": new_grid, "scheme": cfg["model"]["scheme"],
        "methods": applicable, "bias_type": rpbs[0][1].bias_type if rpbs else None,
        "accuracy": accuracy, "tables": tables, "window": window, "offsets": offsets, "notes": notes,
    }
