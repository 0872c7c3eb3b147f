"""File output shared by every room: atomic writes and image grids as PNG.

Everything vqzoo writes (exports, token directories, samples, grids, reports)
goes through here, so a crash or a full disk never leaves a half-written file
where a complete one was expected:

* a file is written to a temporary name in the target's own directory (a
  rename across filesystems would be a copy), flushed, fsynced and renamed
  over the target in one step;
* a directory is assembled in a hidden temporary sibling and renamed into
  place when complete; on any error the temporary is removed.

This module imports nothing from vqzoo (it sits below every other room).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = ["atomic_dir", "atomic_write", "make_grid", "save_png", "write_json"]


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out`` that becomes ``out`` when the block succeeds.

    An existing ``out`` is an error unless ``overwrite``; then it is replaced
    only once the new directory is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    import json

    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images in [-1, 1] ``(B, C, H, W)`` into one ``uint8`` grid ``(C, H', W')``.

    ``nrow`` images per row (default ``ceil(sqrt(B))``), ``padding`` pixels of
    ``pad_value`` (display units in [0, 1]; white by default) between them.
    Values are clamped to [-1, 1] and mapped to [0, 255] with rounding.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected float images of shape (B, C, H, W) in [-1, 1], got {shape}")
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("cannot make a grid of zero images")
    x = images.detach().float().cpu()
    if torch.isnan(x).any():
        raise ValueError("images contain NaN")
    nrow = int(math.ceil(math.sqrt(b))) if nrow is None else nrow
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol, rows = min(nrow, b), int(math.ceil(b / nrow))
    x = (x.clamp(-1, 1) + 1) / 2
    grid = torch.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return (grid * 255).round().to(torch.uint8)


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Write a ``uint8`` ``(C, H, W)`` image (C = 1 or 3, e.g. from :func:`make_grid`) as PNG, atomically."""
    from PIL import Image

    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 image (1 or 3, H, W), got {image.dtype} {tuple(image.shape)}")
    arr = image.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        picture.save(f, format="PNG")
    return path
