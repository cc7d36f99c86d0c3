"""Size transfer: move a trained model to another patch grid by each scheme's own rule, and measure it.

Swin V2 (Liu et al., CVPR 2022, Table 1) trained Swin-T at window 8 and tested it at windows 12-24
without fine-tuning: the bicubic-resized table fell from 81.7 to 68.7 % top-1 at window 24, the
log-spaced continuous bias only to 79.1 and the linear-spaced one to 77.6. :func:`evaluate_transfer`
asks the same of a relpos checkpoint (trained at a 4x4 grid, tested at 6x6, 8x8, 12x12: the same
ratios 1.5, 2 and 3).

The rules, all in :func:`transfer_model` (one code path for the lab sweep and the resize lab page):

==========================  ==================================================================
what the model holds        how it moves to the new grid
==========================  ==================================================================
a learned table             resized: ``"bicubic"`` (timm, Swin) or ``"geometric"`` (BEiT)
("1d", "2d", "2d_cls")      (:func:`relpos.resize.resize_relative_position_bias_table`)
"cpb" (Swin V2 MLP)         re-queried at the new offsets with the training window held for the
                            coordinate normalization (``pretrained_window_size``, as Swin V2 and
                            timm do); log or linear coordinates as trained (``cpb_coords``)
"t5", "alibi"               recomputed (buckets of the new offsets; distances times the slopes)
absolute embedding          resampled bicubically (timm's ``resample_abs_pos_embed``)
no position                 nothing to move: evaluated as it is
rotary (``set_grid_size``)  recomputed at integer coordinates; ``"rescale"``: EVA's coordinates
                            rescaled to the training grid
==========================  ==================================================================

Methods (:data:`TRANSFER_METHODS`): ``"bicubic"`` and ``"geometric"`` apply to a model with a
learned table and are its only choices; ``"native"`` is the one rule of every other model;
``"rescale"`` applies to a model with a rotary embedding (a learned table is then resized
bicubically). :func:`methods_for` says which apply, so a lab never prints one number under two names.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from relpos._validation import check_choice, check_int, check_window_size
from relpos.data.build import build_dataset
from relpos.experiments.checkpoint import load_model_from_checkpoint
from relpos.experiments.config import resolve_config
from relpos.experiments.engine import build_optimizer, evaluate, train_epoch
from relpos.resize import RESIZE_METHODS

__all__ = [
    "TRANSFER_METHODS",
    "accuracy_on",
    "evaluate_transfer",
    "evaluation_split",
    "grid_eval_name",
    "load_lab_model",
    "methods_for",
    "not_applicable_reason",
    "scheme_label",
    "transfer_model",
]

#: Every transfer method (see the module docstring); :func:`methods_for` says which apply to a model.
TRANSFER_METHODS: tuple[str, ...] = ("bicubic", "geometric", "native", "rescale")


def _rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that move to a new grid with ``set_grid_size(new, rescale)`` (rotary embeddings)."""
    return [(n, m) for n, m in model.named_modules() if callable(getattr(m, "set_grid_size", None))]


def _biases(model: nn.Module) -> list:
    """``(name, RelativePositionBias)`` of every relative position bias of ``model`` (none: ``[]``)."""
    get = getattr(model, "relative_position_biases", None)
    return list(get()) if callable(get) else []


def methods_for(model: nn.Module) -> tuple[str, ...]:
    """The transfer methods that apply to ``model`` and give it distinct results, in order.

    ``("bicubic", "geometric")`` for a model with a learned table (it must be resized, and the two
    differ), else ``("native",)``; plus ``"rescale"`` for a model with a rotary embedding.
    """
    resizable = any(m.family.resizable for _, m in _biases(model))
    out = ["bicubic", "geometric"] if resizable else ["native"]
    if _rotary_modules(model):
        out.append("rescale")
    return tuple(out)


def not_applicable_reason(model: nn.Module, method: str) -> str | None:
    """Why ``method`` does not apply to ``model`` (plain words), or ``None`` when it does."""
    check_choice("method", method, TRANSFER_METHODS)
    applicable = methods_for(model)
    if method in applicable:
        return None
    families = sorted({m.bias_type for _, m in _biases(model)})
    if method in RESIZE_METHODS:
        what = f"bias {', '.join(families)}" if families else "no relative position bias"
        return (f"not applicable: the model has no learned table to resize ({what}); "
                f"it moves by its own rule, method {applicable[0]!r}")
    if method == "native":
        return (f"not applicable: the learned table ({', '.join(families)}) must be resized: "
                "'bicubic' or 'geometric'")
    return "not applicable: the model has no rotary embedding to rescale"


def transfer_model(model: nn.Module, new_grid: tuple[int, int] | int, method: str = "native") -> list[str]:
    """Move ``model`` (in place) to the patch grid ``new_grid`` by each scheme's own rule.

    Args:
        model: a :class:`~relpos.models.transformer.VisionTransformer` (anything with its
            ``set_window_size`` and ``relative_position_biases``); copy it first to keep the original.
        new_grid: ``(gh, gw)`` patches (an int means square); ``img_size`` becomes ``grid * patch``.
        method: one of :func:`methods_for` ``(model)``.

    Returns:
        One human-readable line per change (empty when the grid is unchanged).

    Raises:
        ValueError: ``method`` does not apply to ``model`` (the message says why and what does).
    """
    reason = not_applicable_reason(model, method)
    if reason is not None:
        raise ValueError(f"method {method!r} {reason.removeprefix('not applicable: ')}")
    new = check_window_size("new_grid", new_grid)
    old = tuple(model.grid_size)
    notes: list[str] = []
    for name, m in _biases(model):
        # A family with a pretraining window (Swin V2's cpb) is re-queried with it held.
        if "pretrained_window_size" in m.family.options and m.pretrained_window_size is None:
            # Swin V2 / timm: normalize the new offsets by the window the MLP was trained at.
            m.pretrained_window_size = m.window_size
            notes.append(f"{name}: cpb re-queried with the training window {m.window_size} held "
                         f"({m.cpb_coords} coordinates)")
    table_method = method if method in RESIZE_METHODS else "bicubic"
    rescale = method == "rescale"
    held = {id(m) for _, m in model.rotary_modules()} if hasattr(model, "rotary_modules") else set()
    if hasattr(model, "rotary_modules"):  # the ViT moves its own rotary embeddings
        notes += model.set_window_size(new, method=table_method, rope_rescale=rescale)
    else:
        notes += model.set_window_size(new, method=table_method)
    for name, m in _rotary_modules(model):  # any other module that moves with set_grid_size
        if id(m) in held:
            continue
        size = new if isinstance(m.grid_size, tuple) else new[0] * new[1]
        m.set_grid_size(size, rescale=rescale)
        notes.append(f"{name}: rotary recomputed at {size}" + (" (rescaled to the training grid, EVA)"
                                                               if rescale else ""))
    if not _biases(model) and getattr(model, "pos_embed", None) is None and not _rotary_modules(model):
        notes.append("no position information: nothing to move")
    return notes if new != old else []


def scheme_label(model: nn.Module, scheme: str, method: str) -> str:
    """The name of ``scheme`` moved by ``method`` in results: ``"2d/bicubic"``, ``"cpb/log"``, ``"absolute"``.

    A cpb bias adds its coordinates (``/log``, ``/linear``); the method is added only when the
    model has more than one (:func:`methods_for`), so a scheme with one rule keeps its plain name.
    """
    label = scheme
    coords = sorted({m.cpb_coords for _, m in _biases(model) if "cpb_coords" in m.family.options})
    if coords:
        label += "/" + "+".join(coords)
    if len(methods_for(model)) > 1:
        label += f"/{method}"
    return label


def grid_eval_name(grid: tuple[int, int], finetuned: bool = False) -> str:
    """``"grid=8x8"`` (or ``"grid=8x8/finetuned"``): the ``eval`` column of a transfer row."""
    return f"grid={grid[0]}x{grid[1]}" + ("/finetuned" if finetuned else "")


# ----------------------------------------------------------------------------- shared lab helpers


def load_lab_model(checkpoint_path: str) -> tuple[nn.Module, dict]:
    """``(model in eval mode, resolved config)`` of a relpos checkpoint."""
    model, ckpt = load_model_from_checkpoint(checkpoint_path)
    return model, resolve_config(ckpt["config"])


def evaluation_split(cfg: dict, split: str = "val", **data: Any) -> tuple[Dataset, dict]:
    """The ``split`` of the dataset ``cfg`` describes, with ``data`` keys changed (e.g. ``img_size``).

    Returns:
        ``(dataset, resolved config with the changes)``; a change the dataset refuses is a ConfigError.
    """
    new = copy.deepcopy(cfg)
    new["data"].update(data)
    new = resolve_config(new)
    return build_dataset(new, split), new


def accuracy_on(
    model: nn.Module, dataset: Dataset, num_samples: int, batch_size: int = 256
) -> tuple[float, int]:
    """``(accuracy, n)`` of ``model`` on the first ``n = min(num_samples, len(dataset))`` items."""
    n = min(check_int("num_samples", num_samples), len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size)
    return float(evaluate(model, loader, nn.CrossEntropyLoss(), "cpu")["accuracy"]), n


def _finetune(model: nn.Module, cfg: dict, train: Dataset, steps: int, seed: int) -> None:
    """``steps`` optimizer steps on ``train`` with the run's recipe (AdamW, its lr, weight decay,
    grad clip, batch size, label smoothing; cosine from ``lr`` to ``min_lr`` without warm-up)."""
    t = cfg["train"]
    bs = t["batch_size"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        want = steps * bs
        rounds = math.ceil(want / len(train))
        order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(rounds)])  # (>= want,)
        loader = DataLoader(Subset(train, order[:want].tolist()), batch_size=bs)  # exactly `steps` batches
        device = torch.device("cpu")
        optimizer, scheduler = build_optimizer(model, t, total_steps=steps, warmup_steps=0, device=device)
        criterion = nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
        train_epoch(model, loader, criterion, optimizer, device, 0, scheduler=scheduler,
                    grad_clip=t["grad_clip"])
    model.eval()


def _grids(grids: Iterable[Any]) -> list[tuple[int, int]]:
    out = [check_window_size("grids", g) for g in grids]
    if not out:
        raise ValueError("grids must name at least one grid, e.g. [6, 8, 12]")
    for g in out:
        if g[0] != g[1]:
            raise ValueError(f"grids: {g} is not square; the datasets render square images")
    return out


def evaluate_transfer(
    checkpoint_path: str,
    grids: Sequence[int | tuple[int, int]],
    methods: Sequence[str] | None = None,
    num_samples: int = 512,
    finetune_steps: int = 0,
    seed: int = 0,
) -> list[dict]:
    """Move a checkpoint to each grid by each method and measure it, without and after fine-tuning.

    Each (grid, method) starts from the trained weights: a copy is moved with
    :func:`transfer_model` and evaluated on the first ``num_samples`` validation images of its own
    dataset rendered at ``grid * patch_size`` pixels; with ``finetune_steps`` the copy is then
    trained that many steps on the training split at that size (the run's optimizer settings, see
    :func:`_finetune`) and evaluated again.

    Args:
        checkpoint_path: a relpos checkpoint (it rebuilds its model from its config).
        grids: patch grids, each an int (square) or ``(gh, gw)``.
        methods: transfer methods to try (:data:`TRANSFER_METHODS`); ``None``: every method that
            applies (:func:`methods_for`).
        num_samples: validation images per evaluation.
        finetune_steps: optimizer steps of the optional fine-tune (0: none).
        seed: seed of the fine-tune (its data order and dropout).

    Returns:
        One row per (method, grid[, finetuned]): ``{"scheme", "method", "eval", "accuracy", "n",
        "note"}`` with ``scheme`` from :func:`scheme_label`, ``eval`` from :func:`grid_eval_name`
        and ``n`` the images evaluated. A requested method that does not apply gives one row per
        grid with ``accuracy`` None, ``n`` 0 and the reason in ``note``.
    """
    grid_list = _grids(grids)
    num_samples = check_int("num_samples", num_samples)
    finetune_steps = check_int("finetune_steps", finetune_steps, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    model, cfg = load_lab_model(checkpoint_path)
    for m in methods or ():
        check_choice("method", m, TRANSFER_METHODS)
    wanted = list(methods) if methods is not None else list(methods_for(model))
    patch = model.patch_embed.patch_size
    scheme = cfg["model"]["scheme"]
    rows: list[dict] = []
    for grid in grid_list:
        size = grid[0] * patch
        val, new_cfg = evaluation_split(cfg, "val", img_size=size)
        train = evaluation_split(cfg, "train", img_size=size)[0] if finetune_steps else None
        for method in wanted:
            reason = not_applicable_reason(model, method)
            if reason is not None:
                rows.append({"scheme": scheme, "method": method, "eval": grid_eval_name(grid),
                             "accuracy": None, "n": 0, "note": reason})
                continue
            moved = copy.deepcopy(model)
            notes = transfer_model(moved, grid, method)
            label = scheme_label(model, scheme, method)
            acc, n = accuracy_on(moved, val, num_samples)
            rows.append({"scheme": label, "method": method, "eval": grid_eval_name(grid), "accuracy": acc,
                         "n": n, "note": "; ".join(notes)})
            if finetune_steps:
                _finetune(moved, new_cfg, train, finetune_steps, seed)
                acc, n = accuracy_on(moved, val, num_samples)
                rows.append({"scheme": label, "method": method, "eval": grid_eval_name(grid, finetuned=True),
                             "accuracy": acc, "n": n, "note": f"{finetune_steps} fine-tune steps"})
    return rows
