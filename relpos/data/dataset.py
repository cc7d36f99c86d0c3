"""The seed's synthetic dataset and the patch embedding.

Shape legend: ``B`` batch, ``C`` channels, ``H, W`` image size, ``P`` patch size,
``(gh, gw) = (H // P, W // P)`` patch grid, ``N = gh * gw`` patches, ``E`` embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from relpos._validation import check_int, check_window_size

__all__ = ["PatchEmbedding", "SyntheticImageDataset", "sample_generator"]


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on ``(seed, index)``: the same sample every read."""
    # Mix the two with a large odd multiplier so neighbouring (seed, index) pairs do not collide.
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63 - 1))


def _check_index(idx, length: int) -> int:
    """Normalize a sample index (negative counts from the end); IndexError when out of range."""
    if isinstance(idx, torch.Tensor) and idx.dim() == 0 and not idx.is_floating_point():
        idx = int(idx)
    if isinstance(idx, bool) or not hasattr(idx, "__index__"):
        raise TypeError(f"idx must be an int, got {idx!r} ({type(idx).__name__})")
    idx = idx.__index__()
    if not -length <= idx < length:
        raise IndexError(f"idx {idx} is out of range for a dataset of {length} samples")
    return idx % length


class SyntheticImageDataset(Dataset):
    """Random images with random labels, reproducible per index (for plumbing and speed).

    Args:
        num_samples: number of samples.
        img_size: side of the square images.
        patch_size: patch size the images are meant for (``img_size`` must be divisible by it).
        in_channels: image channels (default 3).
        num_classes: number of labels (default 10).
        seed: dataset seed; sample ``i`` is drawn from a generator seeded by ``(seed, i)``.

    ``dataset[i]`` returns ``(image (C, H, W) float32, label int64 scalar)``.
    """

    def __init__(
        self,
        num_samples: int,
        img_size: int,
        patch_size: int,
        in_channels: int = 3,
        num_classes: int = 10,
        seed: int = 0,
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples)
        self.img_size = check_int("img_size", img_size)
        self.patch_size = check_int("patch_size", patch_size)
        if img_size % patch_size:
            raise ValueError(f"img_size ({img_size}) must be divisible by patch_size ({patch_size})")
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.seed = check_int("seed", seed, minimum=0)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = _check_index(idx, self.num_samples)
        g = sample_generator(self.seed, idx)
        image = torch.randn(self.in_channels, self.img_size, self.img_size, generator=g)
        label = torch.randint(self.num_classes, (), generator=g)
        return image, label


class PatchEmbedding(nn.Module):
    """Split an image into non-overlapping ``P x P`` patches and embed each (a strided conv).

    Args:
        img_size: image side (int) or ``(height, width)``.
        patch_size: patch side; must divide the image size.
        in_channels: image channels.
        embed_dim: embedding dim ``E``.

    Attributes: ``img_size``, ``patch_size``, ``grid_size`` (``(gh, gw)``), ``num_patches``,
    ``proj`` (the ``Conv2d``, named as in timm).

    ``forward``: ``(B, C, H, W) -> (B, N, E)``, patches in row-major order.
    """

    def __init__(self, img_size: int, patch_size: int, in_channels: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = check_window_size("img_size", img_size)
        self.patch_size = check_int("patch_size", patch_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(
                f"img_size {img_size} must be divisible by patch_size ({patch_size})"
            )
        self.in_channels = check_int("in_channels", in_channels)
        self.embed_dim = check_int("embed_dim", embed_dim)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, *self.img_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}), got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got dtype {x.dtype}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, E, gh, gw) -> (B, N, E)
