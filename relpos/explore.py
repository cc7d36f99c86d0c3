"""The app's own policy, without streamlit: its limits, its inputs and how it formats things.

What the pages compute lives with its owner: positions and indices in :mod:`relpos.geometry`, bias
presets in :mod:`relpos.presets`, model probes and diagnostics in :mod:`relpos.diagnostics`, run
settings in :mod:`relpos.experiments.config`, checkpoint files and uploads in :mod:`relpos.jobs`,
figures in :mod:`relpos.experiments.visualize`. What stays here is what only the app decides: how
large a window it offers, which families each page offers, how an uploaded picture becomes a model
input, how a model is loaded for showing (frozen, in eval mode), and how numbers and file names are
written for people. Nothing here imports streamlit.

Shape legend: ``C`` image channels, ``H``/``W`` pixels, ``T`` table rows, ``H`` heads (tables).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relpos._file_limits import MAX_IMAGE_PIXELS, open_image
from relpos._validation import check_int, check_window_size
from relpos.data import build_dataset
from relpos.experiments.checkpoint import load_model_from_checkpoint
from relpos.families import BIAS_TYPES, FAMILIES

__all__ = [
    "EXPLORE_BIAS_TYPES",
    "INDEX_BIAS_TYPES",
    "MAX_HEADS",
    "MAX_IMAGE_UPLOAD_BYTES",
    "MAX_SEQ_LEN",
    "MAX_WINDOW_SIDE",
    "check_app_size",
    "dataset_classes",
    "display_image",
    "format_eta",
    "image_from_upload",
    "index_formula_latex",
    "load_checkpoint_model",
    "safe_download_name",
    "sample_input",
    "table_difference",
    "upscale_nearest",
]

#: Largest window side (2D) and sequence length (1D) the app offers: 32 x 32 = 1024 tokens keeps
#: every page responsive (index and bias matrices of 1024 x 1024, block-averaged when drawn).
MAX_WINDOW_SIDE = 32
MAX_SEQ_LEN = 1024
MAX_HEADS = 16
#: Upload limit for pictures (checkpoints: :data:`relpos.jobs.MAX_UPLOAD_BYTES`).
MAX_IMAGE_UPLOAD_BYTES = 10 * 1024 * 1024
#: The bias families the bias explorer draws: every family of the library.
EXPLORE_BIAS_TYPES: tuple[str, ...] = BIAS_TYPES
#: The index page's kinds: the plain learned table of a 2D window and of a 1D sequence (no class
#: token, no buckets), 2D first.
INDEX_BIAS_TYPES: tuple[str, ...] = tuple(
    sorted(
        (n for n, f in FAMILIES.items() if f.learned and f.resizable and not f.extra_rows),
        key=lambda n: not FAMILIES[n].is_2d(),
    )
)


def check_app_size(size: Any) -> tuple[int, int] | int:
    """A window ``(h, w)`` with sides up to :data:`MAX_WINDOW_SIDE`, or a sequence length (an int) up
    to :data:`MAX_SEQ_LEN`: the sizes the app's pages accept.

    Raises:
        TypeError: neither a pair nor an int.
        ValueError: a side or the length out of range (the message names ``window_size`` or ``seq_len``).
    """
    if isinstance(size, (tuple, list)):
        return check_window_size("window_size", size, maximum=MAX_WINDOW_SIDE)
    return check_int("seq_len", size, maximum=MAX_SEQ_LEN)


def index_formula_latex(cell: dict) -> str:
    """The index formula of a :func:`relpos.geometry.decode_cell` cell with its numbers filled in (LaTeX)."""
    if "window" in cell:
        h, w = cell["window"]
        dy, dx = cell["offset"]
        return (
            rf"\text{{index}}[{cell['i']}, {cell['j']}] = (\Delta y + h - 1)(2w - 1) + (\Delta x + w - 1)"
            rf" = ({dy} + {h - 1}) \cdot {2 * w - 1} + ({dx} + {w - 1}) = {cell['index']}"
        )
    length = cell["seq_len"]
    return (
        rf"\text{{index}}[{cell['i']}, {cell['j']}] = i - j + L - 1"
        rf" = {cell['i']} - {cell['j']} + {length - 1} = {cell['index']}"
    )


# --------------------------------------------------------------------------- models and inputs


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict]:
    """``(model, checkpoint dict)`` from a checkpoint file (``weights_only=True``), in eval mode and
    frozen: the app shows models, it never trains the ones it shows."""
    model, ckpt = load_model_from_checkpoint(path)
    return model.eval().requires_grad_(False), ckpt


def sample_input(cfg: dict, index: int = 0, split: str = "val") -> tuple[torch.Tensor, int, tuple[str, ...]]:
    """Sample ``index`` of the config's dataset: ``(image (C, H, W), label, class names)``."""
    dataset = build_dataset(cfg, split)
    index = check_int("index", index, minimum=0, maximum=len(dataset) - 1)
    image, label = dataset[index]
    return image, int(label), tuple(getattr(dataset, "classes", ()))


def dataset_classes(cfg: dict) -> tuple[str, ...]:
    """Class names of the config's dataset, or ``()`` when the dataset cannot be built here."""
    try:
        return tuple(getattr(build_dataset(cfg, "val"), "classes", ()))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def image_from_upload(data: bytes, img_size: int, in_channels: int) -> torch.Tensor:
    """An uploaded picture as a model input ``(C, img_size, img_size)`` in ``[0, 1]``.

    Raises:
        ValueError: too large (over 10 MB, or over 40 megapixels by its header: checked before
            decoding, a decompression bomb included; the message gives the size), or not an image
            Pillow can read.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) > MAX_IMAGE_UPLOAD_BYTES:
        raise ValueError(f"image is {len(data)} bytes; the limit is {MAX_IMAGE_UPLOAD_BYTES} bytes")
    img_size = check_int("img_size", img_size, maximum=1024)
    in_channels = check_int("in_channels", in_channels, maximum=4)
    with open_image(data, "image", MAX_IMAGE_PIXELS) as im:  # width x height checked before decoding
        try:
            im = im.convert("L" if in_channels == 1 else "RGB").resize((img_size, img_size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - a header whose data is missing or hostile
            why = f"{type(exc).__name__}: {exc}"
            raise ValueError(f"not an image Pillow can read (PNG, JPEG, ...): {why}") from None
    if arr.ndim == 2:
        arr = arr[None]  # (1, H, W)
    else:
        arr = arr.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if arr.shape[0] != in_channels:
        arr = np.resize(arr, (in_channels, img_size, img_size)) if in_channels > 3 else arr[:in_channels]
    return torch.from_numpy(np.ascontiguousarray(arr))


def display_image(image: torch.Tensor) -> np.ndarray:
    """A model input ``(C, H, W)`` as an ``(H, W, 3)`` uint8 picture (min-max scaled)."""
    x = image.detach().float()
    if x.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(x.shape)}")
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])  # (3, H, W)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)


def upscale_nearest(picture: np.ndarray, min_side: int = 160) -> np.ndarray:
    """Blow a small ``(H, W, 3)`` picture up by an integer factor (nearest neighbour, crisp pixels)."""
    k = max(1, -(-int(min_side) // max(1, min(picture.shape[:2]))))
    return np.repeat(np.repeat(picture, k, axis=0), k, axis=1)  # (k*H, k*W, 3)


# --------------------------------------------------------------------------- formatting for people


def table_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` of two ``(T, H)`` tables, with a clear error when their shapes differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"the two tables have different shapes {a.shape} and {b.shape}: compare runs with the "
            "same window and number of heads"
        )
    return a - b


def format_eta(seconds: float | None) -> str:
    """``"1 min 05 s"`` / ``"12 s"`` / ``"–"``."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def safe_download_name(name: str) -> str:
    """A file name for a download button (no path, no odd characters; the suffix is kept)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(name)) or "download"
