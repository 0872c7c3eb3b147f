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
import errno
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

__all__ = ["atomic_dir", "atomic_write", "clean_stale_temps", "clean_stale_temps_in", "make_grid", "save_png",
           "write_json"]


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: errors of the storage itself (full disk, quota, file too large, I/O, read-only), reported as such
_WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)


def _temp_prefix(name: str) -> str:
    # The writer's pid is in the name, so a later start can tell a leftover of a
    # killed process (pid gone) from the temporary of a writer still at work.
    return f".{name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps_in(directory: str | os.PathLike) -> list[Path]:
    """:func:`clean_stale_temps` for every ``.NAME.tmp-PID-*`` in ``directory`` (e.g. a run's checkpoints on resume)."""
    removed: list[Path] = []
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(".*.tmp-*"):
            name = leftover.name[1:].split(".tmp-", 1)[0]
            removed += clean_stale_temps(directory / name)
    return removed


def clean_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` (and ``.NAME.old-*``) siblings of ``target`` left by a killed writer.

    A temporary whose writer (the pid in its name) is still running on this
    host is kept. Returns what was removed. Called before every atomic write,
    so the next start of a killed run cleans up after it.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    # An .old- copy is the previous version mid-swap: only garbage once the target exists again.
    patterns = [f".{target.name}.tmp-*"] + ([f".{target.name}.old-*"] if target.exists() else [])
    for pattern in patterns:
        for leftover in target.parent.glob(pattern):
            rest = leftover.name[len(f".{target.name}.tmp-"):]
            pid = rest.split("-", 1)[0]
            if ".tmp-" in leftover.name and pid.isdigit() and _pid_alive(int(pid)):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            removed.append(leftover)
    return removed


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
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=path.parent)
    try:
        # mkstemp creates 0600; the file gets what open() would have given it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _WRITE_FAILURES:
            # A full disk or a quota: name the file and the reason; the old file is untouched.
            raise OSError(
                err.errno, f"could not write {path}: {os.strerror(err.errno)} (the previous {path.name}, "
                "if any, is unchanged)"
            ) from err
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
    clean_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name), dir=out.parent))
    try:
        # mkdtemp creates 0700; the directory gets what mkdir() would have given it.
        os.chmod(tmp, 0o777 & ~_umask())
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


def sha256_file(path: str | os.PathLike, digest: Any = None) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (``digest``: a running ``hashlib`` object to feed instead)."""
    import hashlib

    h = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
