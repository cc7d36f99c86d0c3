"""relpos.data: datasets and ``build_dataset``.

* :class:`RelationalDataset`: two marks, label = direction between them (only relative position
  solves it; the teaching task).
* :class:`DigitsDataset`: scikit-learn's bundled 8x8 digits (no download), optionally upsampled.
* :class:`ImageFolderDataset`: the user's images, one sub-folder per class.
* :class:`SyntheticImageDataset`: random images and labels (plumbing and speed).
"""

from relpos.data.build import DATASETS, SplitSubset, build_dataset, split_indices
from relpos.data.dataset import PatchEmbedding, SyntheticImageDataset
from relpos.data.digits import DigitsDataset
from relpos.data.folder import ImageFolderDataset, scan_image_folder
from relpos.data.relational import DIRECTION_NAMES, RelationalDataset, direction_label

__all__ = [
    "DATASETS",
    "DIRECTION_NAMES",
    "DigitsDataset",
    "ImageFolderDataset",
    "PatchEmbedding",
    "RelationalDataset",
    "SplitSubset",
    "SyntheticImageDataset",
    "build_dataset",
    "direction_label",
    "scan_image_folder",
    "split_indices",
]
