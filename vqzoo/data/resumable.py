"""A training DataLoader whose position is in the checkpoint, so a run resumes exactly mid-epoch.

Lightning 2.x saves ``state_dict()`` of a training dataloader that has one
(``state_dict``/``load_state_dict``) into the checkpoint's loop state and
gives it back through ``load_state_dict`` before the first batch of a resumed
run. :class:`ResumableDataLoader` records the epoch and the number of batches
it has handed out in that epoch; on resume its :class:`ResumableSampler`
starts the same epoch's order after those batches (no sample is read twice or
skipped, and none is loaded just to be thrown away).

Decisions:

* The order is a seeded permutation of ``(seed, epoch)``, independent of the
  global RNG: the global RNG belongs to the model (dropout, masks, resets) and
  is restored separately, and a loader that drew from it would shift it by one
  draw on resume. Lightning calls ``set_epoch`` every epoch.
* The sampler is a :class:`~torch.utils.data.DistributedSampler` subclass, so
  Lightning does not wrap it under DDP; it shards by rank itself (rank and
  world size read when iterating, after the process group exists).
* The count is of batches handed to the training loop. Lightning does not
  prefetch from a loader with a length, so at a checkpoint (saved at a batch's
  end) that is exactly the number of batches trained on in this epoch.
* Worker processes get seeds from the loader's own generator, re-seeded from
  ``(seed, epoch)`` for each epoch, so they too repeat on resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableDataLoader", "ResumableSampler"]


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """Seeded (optionally shuffled) order per epoch, sharded by rank, that can start part-way.

    Args:
        dataset: anything with ``len``.
        shuffle: a fresh permutation of ``(seed, epoch)`` each epoch; else dataset order.
        seed: seed of the permutations.
        drop_last: drop the tail that does not divide evenly across ranks
            (else pad by repeating the start, as DistributedSampler does).
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        # DistributedSampler.__init__ insists on a process group; set its fields ourselves.
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # samples of this rank's order to skip (resume), once

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return _dist()[0]

    @num_replicas.setter
    def num_replicas(self, value: int) -> None:
        pass  # always the live process group's

    @property
    def rank(self) -> int:  # type: ignore[override]
        return _dist()[1]

    @rank.setter
    def rank(self, value: int) -> None:
        pass

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        n, world = len(self.dataset), self.num_replicas  # type: ignore[arg-type]
        return n // world if self.drop_last else math.ceil(n / world)

    @num_samples.setter
    def num_samples(self, value: int) -> None:
        pass

    @property
    def total_size(self) -> int:  # type: ignore[override]
        return self.num_samples * self.num_replicas

    @total_size.setter
    def total_size(self, value: int) -> None:
        pass

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        total = self.total_size
        if total > len(indices):
            indices += (indices * math.ceil(total / max(len(indices), 1)))[: total - len(indices)]
        indices = indices[:total]
        return indices[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order(self.epoch)[start:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A :class:`DataLoader` over a :class:`ResumableSampler` that Lightning checkpoints (see module docstring).

    Takes the DataLoader's arguments; ``shuffle`` and ``seed`` configure the
    sampler (a ``sampler``/``batch_sampler`` of your own is refused: its
    position could not be restored).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, sampler: Any = None, **kwargs: Any) -> None:
        if kwargs.get("batch_sampler") is not None:
            raise ValueError("ResumableDataLoader makes its own sampler; batch_sampler cannot be given")
        if sampler is None:
            sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed)
        generator = kwargs.pop("generator", None) or torch.Generator()
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                         generator=generator, **kwargs)
        self.seed = int(seed)
        self._epoch_batches = 0
        self._resume: dict[str, int] | None = None

    @property
    def _resumable(self) -> ResumableSampler | None:
        return self.sampler if isinstance(self.sampler, ResumableSampler) else None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._resumable
        skip = 0
        if sampler is not None and self._resume is not None:
            sampler.set_epoch(self._resume["epoch"])
            skip = min(self._resume["batches"], len(self))
            sampler.start = skip * int(self.batch_size or 1)
        self._resume = None
        if sampler is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + sampler.epoch)
        self._epoch_batches = skip
        for batch in super().__iter__():
            self._epoch_batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self._resumable
        return {"epoch": sampler.epoch if sampler is not None else 0, "batches": self._epoch_batches,
                "batch_size": int(self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("batch_size", self.batch_size or 1)) != int(self.batch_size or 1):
            raise ValueError(
                f"the checkpoint's data position is in batches of {state['batch_size']}, but the batch size is now "
                f"{self.batch_size}; resume with the same batch size"
            )
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
