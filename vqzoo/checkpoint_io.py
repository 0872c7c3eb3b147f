"""How Lightning writes and reads vqzoo checkpoints: atomically, in the target's own directory.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` writes a
checkpoint to a temporary file in ``$TMPDIR`` and moves it over the target.
When ``$TMPDIR`` is on another filesystem (a node-local ``/tmp`` and a run on
NFS or Lustre) the move is a copy that first empties the target, so a kill or
a full disk during the copy leaves a truncated ``last.ckpt``.

:class:`AtomicCheckpointIO` writes through :func:`vqzoo.io.atomic_write`
instead: a temporary beside the target, flushed, fsynced and renamed over it.
On disk there is always the old complete file or the new complete file. A
failed write (disk full, quota) raises :class:`CheckpointWriteError` naming
the path and the reason; the previous file is untouched. ``VQZooCLI``
installs it by default (``trainer.plugins``).

Reading maps a truncated or corrupt file to a
:class:`~vqzoo.checkpoint.CheckpointError` that says so (not a bare
``EOFError``), and refuses weights that are not finite, naming the tensor.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous file is unchanged."""


def _os_error_in(err: BaseException | None) -> OSError | None:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that writes atomically beside the target (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or _is_remote(path):
            # Object stores have their own atomic put; keep Lightning's behaviour there.
            return super().save_checkpoint(checkpoint, path, storage_options)
        from vqzoo.io import atomic_write

        try:
            with atomic_write(path, "wb") as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as failure:
            # torch's zip writer reports a failed write as a RuntimeError whose context is the OSError
            err = _os_error_in(failure)
            if err is None:
                raise
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise CheckpointWriteError(
                err.errno or 0,
                f"could not write the checkpoint {path}: {reason}; the previous {os.path.basename(str(path))} "
                "(if any) is unchanged",
            ) from err

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from vqzoo.checkpoint import CheckpointError, check_weights

        try:
            ckpt = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated): {err}") from err
        if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
            check_weights(ckpt["state_dict"], str(path))
        return ckpt
