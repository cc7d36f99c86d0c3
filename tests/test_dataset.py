"""SyntheticImageDataset is reproducible per index; PatchEmbedding is a row-major patchify."""

from __future__ import annotations

import pytest
import torch

from relpos import PatchEmbedding, SyntheticImageDataset


def test_samples_are_stable_and_shaped() -> None:
    ds = SyntheticImageDataset(num_samples=20, img_size=8, patch_size=4)
    assert len(ds) == 20
    img, label = ds[3]
    assert img.shape == (3, 8, 8) and img.dtype == torch.float32
    assert label.shape == () and label.dtype == torch.long and 0 <= int(label) < 10
    img2, label2 = ds[3]
    assert torch.equal(img, img2) and torch.equal(label, label2)
    assert not torch.equal(ds[4][0], img)
    assert torch.equal(ds[-1][0], ds[19][0])
    # Another seed, other samples; same seed in a new object, same samples.
    assert not torch.equal(SyntheticImageDataset(20, 8, 4, seed=1)[3][0], img)
    assert torch.equal(SyntheticImageDataset(20, 8, 4)[3][0], img)


def test_labels_cover_the_classes() -> None:
    ds = SyntheticImageDataset(num_samples=200, img_size=4, patch_size=2, in_channels=1, num_classes=4)
    labels = {int(ds[i][1]) for i in range(len(ds))}
    assert labels == {0, 1, 2, 3}
    assert ds[0][0].shape == (1, 4, 4)


def test_index_errors() -> None:
    ds = SyntheticImageDataset(num_samples=5, img_size=4, patch_size=2)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(TypeError, match="idx"):
        ds[1.5]


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(num_samples=0, img_size=8, patch_size=4), ValueError, "num_samples"),
        (dict(num_samples=4, img_size=10, patch_size=4), ValueError, "divisible"),
        (dict(num_samples=4, img_size=8, patch_size=4, num_classes=0), ValueError, "num_classes"),
        (dict(num_samples=4, img_size="8", patch_size=4), TypeError, "img_size"),
    ],
)
def test_dataset_bad_arguments(kwargs, exc, words) -> None:
    with pytest.raises(exc, match=words):
        SyntheticImageDataset(**kwargs)


def test_patch_embedding_is_row_major_patchify() -> None:
    pe = PatchEmbedding(img_size=8, patch_size=4, in_channels=2, embed_dim=5)
    assert pe.grid_size == (2, 2) and pe.num_patches == 4
    x = torch.randn(3, 2, 8, 8)
    out = pe(x)
    assert out.shape == (3, 4, 5)
    # Patch t = (y, x) = (t // 2, t % 2) is a linear map of that image block.
    w, b = pe.proj.weight.view(5, -1), pe.proj.bias
    for t in range(4):
        y, xx = divmod(t, 2)
        block = x[:, :, 4 * y: 4 * y + 4, 4 * xx: 4 * xx + 4].reshape(3, -1)
        torch.testing.assert_close(out[:, t], block @ w.T + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 2, 8, 8\)"):
        pe(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbedding(10, 4, 3, 8)
