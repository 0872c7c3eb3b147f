"""Collectives used by the codebook, resolved at call time.

Lightning builds modules before the process group exists, so nothing here is
decided at construction (docs/pitfalls.md #4): every helper asks ``torch.distributed``
when it is called. Every collective is meant to be called on every rank with
the same shape (docs/pitfalls.md #3); callers guarantee that by calling these helpers
unconditionally from code paths that all ranks execute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is active right now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; a no-op in a single process."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor
