"""Run a worker on two CPU ranks (gloo) and collect what each rank saved: shared by the DDP tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def run_on_two_ranks(worker: Callable[[int, int, str, str], None]) -> tuple[Any, Any]:
    """``worker(rank, world, init_file, out_dir)`` must save ``out_dir/rank{rank}.pt``; returns both loads."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        return tuple(torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in (0, 1))  # type: ignore[return-value]
