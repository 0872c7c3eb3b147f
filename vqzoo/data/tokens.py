"""Pre-encoded token datasets: the token directory format and its Dataset / DataModule.

Directory format (format version 1), written by
:func:`vqzoo.tokenizers.encode.encode_tokens` (``vqzoo encode``)::

    out_dir/
      meta.json      {"format_version": 1, "vocab_size", "token_shape", "num_samples",
                      "dtype", "tokenizer", "has_labels", "has_text", "has_captions"}
      tokens.npy     (num_samples, *token_shape), int16 when vocab_size <= 32768 else int32
      labels.npy     (num_samples,) int64 class labels            [if the batches had labels]
      text.npy       (num_samples, text_length) int32 text ids     [if the batches had text ids]
      captions.json  list of caption strings                       [if the batches had strings]

``.npy`` rather than ``.pt``: it can be memory-mapped (``mmap_mode="r"``), so
a token set larger than RAM (ImageNet at 32x32 tokens is ~2.6 GB in int16)
loads instantly and is shared between dataloader workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from vqzoo.data.resumable import ResumableDataLoader

__all__ = ["FORMAT_VERSION", "TokenDataModule", "TokenDataset", "read_token_meta"]

FORMAT_VERSION = 1


def read_token_meta(root: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a token directory."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no token directory at {root} (missing {meta_path}); create one with `vqzoo encode` "
            "(vqzoo.tokenizers.encode.encode_tokens)"
        )
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    for key in ("vocab_size", "token_shape", "num_samples"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks the required key {key!r}")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta['format_version']}, newer than this vqzoo "
            f"reads ({FORMAT_VERSION})"
        )
    meta["token_shape"] = [int(s) for s in meta["token_shape"]]
    return meta


class TokenDataset(Dataset):
    """Items of a token directory in the :class:`~vqzoo.data.batch.Batch` keys: ``tokens`` int64
    ``(*token_shape)``, ``labels`` int64 (if stored), ``text`` int64 ``(L,)`` (if stored).

    Tokens are memory-mapped, so opening is instant and dataloader workers
    share the pages.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.meta = read_token_meta(self.root)
        tokens_path = self.root / "tokens.npy"
        if not tokens_path.is_file():
            raise FileNotFoundError(f"missing {tokens_path}")
        self.tokens = np.load(tokens_path, mmap_mode="r")
        if self.tokens.dtype.kind not in "iu":
            raise ValueError(
                f"{tokens_path} holds {self.tokens.dtype} values; token ids must be integers "
                "(write them with `vqzoo encode`, or cast with np.round(x).astype(np.int64) if they are ids)"
            )
        expected = (self.meta["num_samples"], *self.meta["token_shape"])
        if tuple(self.tokens.shape) != expected:
            raise ValueError(
                f"{tokens_path} has shape {tuple(self.tokens.shape)} but meta.json says {expected}"
            )
        self.labels = np.load(self.root / "labels.npy") if self.meta.get("has_labels") else None
        self.text = np.load(self.root / "text.npy", mmap_mode="r") if self.meta.get("has_text") else None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def token_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["token_shape"])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"tokens": torch.from_numpy(np.asarray(self.tokens[i], dtype=np.int64))}
        if self.labels is not None:
            item["labels"] = torch.tensor(int(self.labels[i]), dtype=torch.int64)
        if self.text is not None:
            item["text"] = torch.from_numpy(np.asarray(self.text[i], dtype=np.int64))
        return item


class TokenDataModule(L.LightningDataModule):
    """Lightning DataModule over token directories written by ``vqzoo encode``.

    Args:
        root: training token directory.
        val_root: validation token directory (e.g. the encoded test split).
        val_fraction: if no ``val_root``, hold out this fraction of ``root``
            (a seeded random split) for validation; 0 disables validation.
        batch_size: per-device batch size.
        num_workers: dataloader workers.
        seed: seed of the train/val split.
        drop_last: drop the last incomplete training batch (keeps DDP ranks and
            step counts uniform).
        pin_memory: pin host memory for faster GPU transfer.

    ``meta`` (vocab_size, token_shape, ...) is read from ``root`` so the prior
    can check at setup that it was configured for these tokens.
    """

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = root
        self.val_root = val_root
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self._meta: dict[str, Any] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = read_token_meta(self.root)
        return self._meta

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = TokenDataset(self.root)
        self._meta = full.meta
        if self.val_root is not None:
            self.train_set = full
            val = TokenDataset(self.val_root)
            if val.vocab_size != full.vocab_size or val.token_shape != full.token_shape:
                raise ValueError(
                    f"val_root tokens (vocab {val.vocab_size}, shape {val.token_shape}) differ from "
                    f"root tokens (vocab {full.vocab_size}, shape {full.token_shape})"
                )
            self.val_set = val
        elif self.val_fraction > 0:
            n_val = max(1, int(round(len(full) * self.val_fraction)))
            if n_val >= len(full):
                raise ValueError(f"val_fraction={self.val_fraction} leaves no training samples")
            g = torch.Generator().manual_seed(self.seed)
            train, val = random_split(full, [len(full) - n_val, n_val], generator=g)
            self.train_set, self.val_set = train, val
        else:
            self.train_set = full

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        if train:
            # Seeded order whose position is checkpointed: exact resume mid-epoch.
            return ResumableDataLoader(
                ds,
                batch_size=self.batch_size,
                shuffle=True,
                seed=self.seed,
                drop_last=self.drop_last and len(ds) >= self.batch_size,  # type: ignore[arg-type]
                num_workers=self.num_workers,
                pin_memory=self.pin_memory and torch.cuda.is_available(),
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            drop_last=train and self.drop_last and len(ds) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set, train=False)
