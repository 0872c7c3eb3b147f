"""The one batch type every vqzoo DataModule yields.

A batch is a plain ``dict`` (so torch's default collate builds it from
per-item dicts with the same keys) typed as :class:`Batch`:

* ``images``: float32 ``(B, C, H, W)`` in [-1, 1] (image data);
* ``tokens``: int64 ``(B, *token_shape)`` (pre-encoded token data);
* ``labels``: int64 ``(B,)`` class ids (-1 where a dataset has none);
* ``text``: int64 ``(B, L)`` caption token ids;
* ``captions``: ``list[str]`` of length B.

Exactly one of ``images`` / ``tokens`` is present. A bare tensor is accepted
where a model is called by hand (a notebook): it is the images of a
tokenizer, the tokens (or images, with a frozen tokenizer) of a prior.
Anything else is refused with the list of keys expected, never guessed.
"""

from __future__ import annotations

from typing import Any, TypedDict

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["BATCH_KEYS", "Batch", "TensorBatchDataset", "as_batch"]


class Batch(TypedDict, total=False):
    images: Tensor
    tokens: Tensor
    labels: Tensor
    text: Tensor
    captions: list[str]


BATCH_KEYS = frozenset(Batch.__annotations__)


def as_batch(batch: Any, main: str = "images") -> Batch:
    """Check ``batch`` against the :class:`Batch` contract; a bare tensor becomes ``{main: tensor}``.

    Extra keys are allowed (a dataset may carry metadata such as layouts), but
    ``images`` or ``tokens`` must be there.
    """
    if isinstance(batch, Tensor):
        return {main: batch}  # type: ignore[misc]
    if not isinstance(batch, dict):
        raise ValueError(
            f"expected a batch dict with keys from {sorted(BATCH_KEYS)} (see vqzoo.data.batch.Batch) or a "
            f"tensor, got {type(batch).__name__}"
        )
    if "images" not in batch and "tokens" not in batch:
        raise ValueError(
            f"a batch needs an 'images' or a 'tokens' entry (see vqzoo.data.batch.Batch); got keys {sorted(batch)}"
        )
    return batch  # type: ignore[return-value]


class TensorBatchDataset(Dataset):
    """In-memory tensors as :class:`Batch` items, e.g. ``TensorBatchDataset(images=x, labels=y)``.

    The tensors share their first dimension; a DataLoader over it yields
    :class:`Batch` dicts with the same keys.
    """

    def __init__(self, **tensors: Tensor) -> None:
        unknown = set(tensors) - BATCH_KEYS
        if unknown:
            raise ValueError(f"unknown batch keys {sorted(unknown)}; expected keys from {sorted(BATCH_KEYS)}")
        if not tensors or ("images" in tensors) == ("tokens" in tensors):
            raise ValueError("give exactly one of images= or tokens= (plus optional labels=, text=)")
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the tensors must have the same length, got {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}
