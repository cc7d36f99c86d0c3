"""Checkpoints: one format, written atomically, read safely, able to rebuild their own model.

Format (a dict of tensors and primitives only, so ``torch.load(path, weights_only=True)`` reads it)::

    {"format": "relpos", "format_version": 1,
     "model": state_dict, "optimizer": state_dict | None, "scheduler": state_dict | None,
     "epoch": int (epochs completed), "step": int (optimizer steps done),
     "metrics": dict, "config": resolved config dict | None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor...], "python": [...], "numpy": [...]},
     "extra": dict}

Writes go to a temporary file in the same folder and then ``os.replace`` (through
:func:`relpos._fileio.atomic_write_bytes`): a crash mid-write leaves the previous file.
Reads use ``weights_only=True`` and map to the CPU; ``module.`` (DDP) and ``_orig_mod.``
(``torch.compile``) prefixes are stripped by :func:`strip_key_prefixes`, the one place that does it
(:func:`strip_prefixes` applies it to a state dict; ``relpos.checkpoint_import`` uses it too).
Every failure raises :class:`CheckpointError` naming the file.

Test hook: with ``RELPOS_TEST_KILL_BETWEEN_WRITE_AND_RENAME=k`` in the environment, the process
kills itself (SIGKILL) during its ``k``-th checkpoint write, after the temporary file is written and
before ``os.replace``. :data:`BEFORE_REPLACE_HOOK` does the same for in-process tests.
"""

from __future__ import annotations

import io
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relpos._file_limits import check_loaded_tensors, check_torch_archive
from relpos._fileio import atomic_write_bytes
from relpos._limits import check_object_size, short_repr
from relpos.experiments.config import build_model
from relpos.experiments.config_utils import ConfigError, to_plain

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_state_dict_checked",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "strip_key_prefixes",
    "strip_prefixes",
    "unwrap_model",
]

FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")
KILL_ENV = "RELPOS_TEST_KILL_BETWEEN_WRITE_AND_RENAME"

#: Tests only: called with the temporary file's path between the write and ``os.replace``.
BEFORE_REPLACE_HOOK: Callable[[Path], None] | None = None
_writes = 0


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, foreign, or does not fit the model (names the file)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_key_prefixes(key: str) -> str:
    """``key`` without its leading ``module.`` (DDP) / ``_orig_mod.`` (``torch.compile``) prefixes."""
    while key.startswith(_PREFIXES):
        key = key[len("module.") :] if key.startswith("module.") else key[len("_orig_mod.") :]
    return key


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``state_dict`` with :func:`strip_key_prefixes` applied to every key."""
    return {strip_key_prefixes(key): value for key, value in state_dict.items()}


def capture_rng_state() -> dict:
    """Every RNG state training touches, as tensors and primitives."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *map(to_plain, np_state[2:])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured (missing parts are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _before_replace(tmp: Path) -> None:
    global _writes
    _writes += 1
    if BEFORE_REPLACE_HOOK is not None:
        BEFORE_REPLACE_HOOK(tmp)
    kill_at = os.environ.get(KILL_ENV)
    if kill_at and kill_at.strip().isdigit() and _writes == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)


def _cpu_state(state: dict) -> dict:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    metrics: dict,
    save_path: str | Path,
    *,
    config: dict | None = None,
    scheduler: Any = None,
    step: int | None = None,
    extra: dict | None = None,
    rng: bool = True,
) -> None:
    """Write a checkpoint atomically (parent folders created).

    Args:
        model: the model (DDP / compiled wrappers are unwrapped; keys carry no prefix).
        optimizer: its optimizer, or None.
        epoch: epochs completed.
        metrics: a dict of numbers/strings (stored as plain Python values).
        save_path: destination file.
        config: the resolved config, so the checkpoint can rebuild its model.
        scheduler: an LR scheduler whose ``state_dict`` is stored, or None.
        step: optimizer steps done (default: unknown, stored as None).
        extra: more primitives to keep (e.g. partial-epoch totals).
        rng: store the RNG states (for bit-exact resume).
    """
    if not isinstance(save_path, (str, os.PathLike)):
        raise TypeError(f"save_path must be a str or Path, got {type(save_path).__name__}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    payload = {
        "format": "relpos",
        "format_version": FORMAT_VERSION,
        "model": _cpu_state(strip_prefixes(unwrap_model(model).state_dict())),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": None if step is None else int(step),
        "metrics": to_plain(metrics),
        "config": to_plain(config) if config is not None else None,
        "rng": capture_rng_state() if rng else None,
        "extra": to_plain(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(save_path, buffer.getvalue(), before_replace=_before_replace)


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``, mapped to the CPU).

    Also accepts the seed's layout (``model_state_dict`` / ``optimizer_state_dict``) and returns it
    in the current one. Raises :class:`CheckpointError` naming the file when it is missing,
    truncated or corrupt, not a relpos checkpoint, or from a newer format, and when it is bigger
    than it looks (:mod:`relpos._file_limits`, :mod:`relpos._limits`): a zip directory declaring
    more than the memory budget or inflating like a zip bomb (checked before ``torch.load``), the
    legacy non-zip format (whose sizes cannot be checked first), a tensor declaring more than it
    stores, or values that expand past 100 000 nodes through shared references (a "billion laughs"
    config).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        check_torch_archive(path)  # declared sizes against the budget before torch inflates anything
    except ValueError as exc:
        raise CheckpointError(f"cannot read checkpoint: {exc}") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files (RuntimeError, EOFError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated, corrupt or holds objects that "
            f"weights_only=True refuses ({type(exc).__name__}: {first[:300]})"
        ) from None
    try:  # shared references (a pickle memo) can make a small file a huge value; tensors may be views
        check_object_size(ckpt, f"checkpoint {path}")
        check_loaded_tensors(ckpt, str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if isinstance(ckpt, dict) and "model" not in ckpt and "model_state_dict" in ckpt:
        ckpt = dict(ckpt)
        ckpt["model"] = ckpt.pop("model_state_dict")
        ckpt["optimizer"] = ckpt.pop("optimizer_state_dict", None)
        ckpt.setdefault("format_version", 0)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "format_version" not in ckpt:
        keys = sorted(map(str, ckpt))[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a relpos checkpoint (expected a dict with 'format_version' and 'model', got {keys})"
        )
    if not isinstance(ckpt["format_version"], int) or ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {short_repr(ckpt['format_version'])}; this relpos reads up to "
            f"{FORMAT_VERSION}"
        )
    for key, default in (("optimizer", None), ("scheduler", None), ("epoch", 0), ("step", None),
                         ("metrics", {}), ("config", None), ("rng", None), ("extra", {})):
        ckpt.setdefault(key, default)
    ckpt["model"] = strip_prefixes(ckpt["model"])
    return ckpt


def _short(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def load_state_dict_checked(model: nn.Module, state_dict: dict, path: str | Path = "<state_dict>") -> None:
    """Load ``state_dict`` into ``model`` (unwrapped) or raise a CheckpointError listing the bad keys."""
    target = unwrap_model(model)
    state_dict = strip_prefixes(state_dict)
    own = target.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(state_dict))
        if isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_short(mismatched)}")
        raise CheckpointError(f"{path} does not fit the model ({type(target).__name__}): " + "; ".join(parts))
    target.load_state_dict(state_dict)


def load_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    checkpoint_path: str | Path,
    *,
    scheduler: Any = None,
    restore_rng: bool = False,
) -> tuple[int, dict]:
    """Load a checkpoint into ``model`` (and ``optimizer`` / ``scheduler`` when given).

    Args:
        model: the model to fill (shapes and keys must match; DDP wrappers are fine).
        optimizer: filled from the checkpoint when both exist; None skips it.
        checkpoint_path: the file.
        scheduler: an LR scheduler to restore, or None.
        restore_rng: also restore the RNG states (for exact resume).

    Returns:
        ``(epoch, metrics)`` as saved.
    """
    ckpt = read_checkpoint(checkpoint_path)
    load_state_dict_checked(model, ckpt["model"], checkpoint_path)
    try:
        if optimizer is not None and ckpt["optimizer"] is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{checkpoint_path}: the optimizer/scheduler state does not fit: {exc}") from None
    if restore_rng and ckpt["rng"]:
        restore_rng_state(ckpt["rng"])
    epoch, metrics = ckpt["epoch"], ckpt["metrics"]  # foreign metadata is ignored, never fatal
    return (epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0,
            dict(metrics) if isinstance(metrics, dict) else {})


def load_model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes (from its stored config), load it, eval mode.

    Returns:
        ``(model, checkpoint)``; the checkpoint dict is :func:`read_checkpoint`'s.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} stores no config, so it cannot rebuild its model")
    try:
        model = build_model(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path} stores a config this relpos cannot use: {exc}") from None
    load_state_dict_checked(model, ckpt["model"], path)
    model.eval()
    return model, ckpt
