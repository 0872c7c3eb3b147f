"""DataModules and datasets.

Only the image sources are imported here; the other modules of this package
(the batch type, token datasets) are imported by their own path. Datasets of
one paper's experiment live with it (e.g. :mod:`vqzoo.experiments.te.quadrants`).
"""

from vqzoo.data.images import ImageDataModule, ImageTransform, IndexedDataset
from vqzoo.data.sources import (
    IDXDataset,
    ImageFolderDataset,
    MNIST5k,
    load_idx,
    load_mnist5k,
    mnist5k_split,
    seeded_split,
)

__all__ = [
    "IDXDataset",
    "ImageDataModule",
    "ImageFolderDataset",
    "ImageTransform",
    "IndexedDataset",
    "MNIST5k",
    "load_idx",
    "load_mnist5k",
    "mnist5k_split",
    "seeded_split",
]
