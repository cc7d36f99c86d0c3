"""scikit-learn's bundled handwritten digits: a real dataset with no download.

1,797 grey images of 8x8 pixels (values 0..16), ten classes (the digits 0-9), shipped inside
scikit-learn (``sklearn.datasets.load_digits``). Pixels are scaled to ``[-1, 1]``
(``x / 8 - 1``) and, optionally, upsampled to ``img_size`` (bilinear or nearest) so that patches of
more than one pixel make sense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from relpos._validation import check_choice, check_int
from relpos.data.dataset import _check_index

__all__ = ["DIGITS_NATIVE_SIZE", "DIGITS_NUM_SAMPLES", "DigitsDataset", "UPSAMPLE_MODES"]

DIGITS_NATIVE_SIZE = 8
DIGITS_NUM_SAMPLES = 1797
UPSAMPLE_MODES: tuple[str, ...] = ("bilinear", "nearest")


def _load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (1797,)
    return images, labels


class DigitsDataset(Dataset):
    """The 1,797 bundled digits as ``(1, img_size, img_size)`` images in ``[-1, 1]``.

    Args:
        img_size: output side (>= 8; 8 keeps the native resolution).
        upsample: ``"bilinear"`` or ``"nearest"`` (used when ``img_size > 8``).
        indices: which of the 1,797 samples to keep, in order (``None`` = all of them).

    ``dataset[i]`` returns ``(image (1, H, W) float32, label int64 scalar)``.
    Attributes: ``classes`` (``"0"`` .. ``"9"``), ``indices``.
    """

    in_channels = 1
    num_classes = 10

    def __init__(
        self, img_size: int = 8, upsample: str = "bilinear", indices: list[int] | None = None
    ) -> None:
        self.img_size = check_int("img_size", img_size, minimum=DIGITS_NATIVE_SIZE)
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES)
        images, labels = _load_digits_tensors()
        if indices is None:
            indices = list(range(len(labels)))
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(labels)):
            raise ValueError(f"indices must lie in [0, {len(labels) - 1}]")
        self.indices = idx.tolist()
        x = images[idx].unsqueeze(1) / 8.0 - 1.0  # (n, 1, 8, 8) in [-1, 1]
        if self.img_size != DIGITS_NATIVE_SIZE:
            kwargs = {"align_corners": False} if self.upsample == "bilinear" else {}
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode=self.upsample, **kwargs)
        self.images = x.contiguous()  # (n, 1, H, W)
        self.labels = labels[idx]  # (n,)
        self.classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = _check_index(idx, len(self.labels))
        return self.images[idx], self.labels[idx]
