"""Image folders: classes from sub-folders, resizing, and nothing read outside the root."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from relpos.data.folder import ImageFolderDataset, scan_image_folder


def _make(root, name, colour, size=(10, 6)):
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(root / name)


def test_classes_labels_and_pixels(tmp_path):
    _make(tmp_path / "b_red", "1.png", (255, 0, 0))
    _make(tmp_path / "b_red", "2.png", (255, 0, 0))
    _make(tmp_path / "a_blue", "x.jpg", (0, 0, 255))
    (tmp_path / "a_blue" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    _make(tmp_path / ".hidden", "h.png", (0, 255, 0))
    ds = ImageFolderDataset(tmp_path, img_size=8, in_channels=3)
    assert ds.classes == ["a_blue", "b_red"] and len(ds) == 3
    image, label = ds[2]  # sorted: a_blue/x.jpg, b_red/1.png, b_red/2.png
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and int(label) == 1
    assert torch.allclose(image[0], torch.ones(8, 8)) and torch.allclose(image[1:], -torch.ones(2, 8, 8))
    grey = ImageFolderDataset(tmp_path, img_size=4, in_channels=1)[1][0]
    assert grey.shape == (1, 4, 4)
    red_luma = round(0.299 * 255) / 127.5 - 1  # Pillow's L conversion of pure red
    assert np.allclose(grey.numpy(), red_luma, atol=0.01)


def test_links_outside_root_are_skipped(tmp_path):
    outside = tmp_path / "outside"
    _make(outside, "secret.png", (1, 2, 3))
    root = tmp_path / "root"
    _make(root / "cls", "ok.png", (0, 0, 0))
    os.symlink(outside / "secret.png", root / "cls" / "link.png")
    os.symlink(outside, root / "linked_class")
    classes, samples = scan_image_folder(root)
    assert classes == ["cls"]
    assert [p.name for p, _ in samples] == ["ok.png"]


def test_bad_roots_and_files(tmp_path):
    with pytest.raises(ValueError, match="existing directory"):
        scan_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folder"):
        scan_image_folder(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolderDataset(tmp_path, img_size=4)[0]
