"""DataModules and datasets.

Only the image sources are imported here; other modules of this package
(quadrant composites, token datasets, text vocabulary) are imported by their
own path.
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
