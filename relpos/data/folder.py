"""The user's own images: a folder with one sub-folder per class.

::

    root/
        cat/  a.jpg  b.png ...
        dog/  c.jpg ...

Classes are the sub-folder names in sorted order (label = position in that order). Images are
read with Pillow, converted to RGB (3 channels) or greyscale (1 channel), resized to
``img_size x img_size`` (bilinear) and scaled to ``[-1, 1]``.

The folder is untrusted input: ``root`` must be an existing directory; hidden entries are skipped;
a sub-folder or file whose real path (after following links) leaves ``root`` is skipped, so a
symlink can never make the dataset read outside its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from relpos._fileio import is_inside
from relpos._validation import check_int
from relpos.data.dataset import _check_index

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "scan_image_folder"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """List ``(classes, [(image path, label), ...])`` of an image folder (see the module docstring).

    Raises:
        TypeError: ``root`` is not a str or path.
        ValueError: ``root`` is not an existing directory, or holds no class sub-folder with images.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or Path, got {type(root).__name__}")
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"root must be an existing directory, got {os.fspath(root)!r}")
    real_root = root_path.resolve(strict=True)
    class_dirs = sorted(
        p for p in real_root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_inside(p, real_root, strict=True)
    )
    classes: list[str] = []
    samples: list[tuple[Path, int]] = []
    for class_dir in class_dirs:
        files = sorted(
            f
            for f in class_dir.iterdir()
            if not f.name.startswith(".")
            and f.suffix.lower() in IMAGE_EXTENSIONS
            and f.is_file()
            and is_inside(f, real_root, strict=True)
        )
        if not files:
            continue
        label = len(classes)
        classes.append(class_dir.name)
        samples.extend((f, label) for f in files)
    if not classes:
        raise ValueError(
            f"root {os.fspath(root)!r} holds no class sub-folder with images "
            f"(expected root/<class>/<image> with one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes, samples


class ImageFolderDataset(Dataset):
    """Images from ``root/<class>/<file>``, resized to ``img_size`` and scaled to ``[-1, 1]``.

    Args:
        root: the folder (must exist).
        img_size: output side.
        in_channels: 3 (RGB) or 1 (greyscale).
        indices: which of the scanned samples to keep, in order (``None`` = all).

    ``dataset[i]`` returns ``(image (C, H, W) float32, label int64 scalar)``; an unreadable image
    raises ``ValueError`` naming the file. Attributes: ``classes``, ``samples``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int = 32,
        in_channels: int = 3,
        indices: list[int] | None = None,
    ) -> None:
        self.img_size = check_int("img_size", img_size)
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3 for image folders, got {in_channels!r}")
        self.in_channels = in_channels
        self.root = Path(root)
        self.classes, all_samples = scan_image_folder(root)
        self.num_classes = len(self.classes)
        if indices is None:
            indices = list(range(len(all_samples)))
        for i in indices:
            if not 0 <= i < len(all_samples):
                raise ValueError(f"indices must lie in [0, {len(all_samples) - 1}], got {i}")
        self.samples: list[tuple[Path, int]] = [all_samples[i] for i in indices]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        idx = _check_index(idx, len(self.samples))
        path, label = self.samples[idx]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.in_channels == 3 else "L")
                img = img.resize((self.img_size, self.img_size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)  # (H, W, 3) or (H, W)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]  # (H, W, 1)
        image = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0  # (C, H, W) in [-1, 1]
        return image.contiguous(), torch.tensor(label, dtype=torch.int64)
