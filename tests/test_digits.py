"""The bundled scikit-learn digits: values, upsampling, subsets."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from relpos.data.digits import DigitsDataset


def test_native_matches_sklearn():
    ref = load_digits()
    ds = DigitsDataset(img_size=8, indices=[0, 10, 1796])
    assert len(ds) == 3 and ds.classes[3] == "3"
    image, label = ds[1]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == int(ref.target[10])
    expected = torch.as_tensor(ref.images[10], dtype=torch.float32) / 8.0 - 1.0
    assert torch.allclose(image[0], expected)


def test_upsampling_nearest_repeats_pixels():
    native = DigitsDataset(img_size=8, indices=[5])[0][0]
    big = DigitsDataset(img_size=16, upsample="nearest", indices=[5])[0][0]
    assert big.shape == (1, 16, 16)
    assert torch.equal(big, native.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    bilinear = DigitsDataset(img_size=16, upsample="bilinear", indices=[5])[0][0]
    assert bilinear.min() >= -1 - 1e-6 and bilinear.max() <= 1 + 1e-6
    assert not torch.equal(bilinear, big)


def test_bad_arguments():
    with pytest.raises(ValueError, match="img_size"):
        DigitsDataset(img_size=4)
    with pytest.raises(ValueError, match="upsample"):
        DigitsDataset(upsample="cubic")
    with pytest.raises(ValueError, match="indices"):
        DigitsDataset(indices=[1797])
