"""The non-finite loss guard every vqzoo training loop shares (tokenizers and priors).

A step whose loss is NaN or Inf is skipped on every rank (no backward, no
optimizer or scheduler step, no weight update), counted, and logged as
``train/nonfinite_steps``; after ``max_nonfinite_steps`` such steps in a row
training stops with :class:`NonFiniteLossError`, naming the last checkpoint
written (whose weights are good: skipped steps never touch the weights).

Costs one host sync per step, the one the training-loop rules allow: deciding
the skip (summed across ranks under DDP, so no rank steps alone). The counters
are buffers, so a checkpoint carries them.

Pure torch (no Lightning): the module it is mixed into is asked duck-typed for
its trainer (``_trainer``: ``world_size``, ``strategy.reduce``,
``checkpoint_callback``) and its ``log``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteGuard", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training steps produced a non-finite loss."""


class NonFiniteGuard:
    """Mixin for a training module (an ``nn.Module``): call :meth:`init_nonfinite_guard` in ``__init__``
    and :meth:`skip_nonfinite` on each training loss."""

    max_nonfinite_steps: int

    def init_nonfinite_guard(self, max_nonfinite_steps: int, persistent: bool = True) -> None:
        """Set the limit and register the counters (``persistent``: in the state dict and checkpoints)."""
        if isinstance(max_nonfinite_steps, bool) or not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be an integer >= 1, got {max_nonfinite_steps!r}")
        self.max_nonfinite_steps = max_nonfinite_steps
        register = self.register_buffer  # type: ignore[attr-defined]
        register("_nonfinite_in_a_row", torch.zeros((), dtype=torch.long), persistent=persistent)
        register("_nonfinite_total", torch.zeros((), dtype=torch.long), persistent=persistent)

    def _last_checkpoint(self) -> str | None:
        trainer = getattr(self, "_trainer", None)
        cb = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        if cb is None:
            return None
        return getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or None

    def skip_nonfinite(self, loss: Tensor, where: str = "") -> bool:
        """True when ``loss`` is not finite on any rank: the caller must skip this step.

        Counts the step and raises :class:`NonFiniteLossError` once
        ``max_nonfinite_steps`` in a row were skipped; a finite step resets the
        run of bad ones. ``where`` (e.g. "at generator step 12") goes into the message.
        """
        bad = (~torch.isfinite(loss.detach())).any().float().reshape(1)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if float(bad) == 0.0:  # the one sync: deciding the skip
            self._nonfinite_in_a_row.zero_()  # type: ignore[attr-defined]
            return False
        self._nonfinite_in_a_row += 1  # type: ignore[attr-defined]
        self._nonfinite_total += 1  # type: ignore[attr-defined]
        log: Any = getattr(self, "log", None)
        if trainer is not None and callable(log):
            log("train/nonfinite_steps", self._nonfinite_total.float(), batch_size=1)  # type: ignore[attr-defined]
        in_a_row = int(self._nonfinite_in_a_row)  # type: ignore[attr-defined]
        if in_a_row >= self.max_nonfinite_steps:
            ckpt = self._last_checkpoint()
            raise NonFiniteLossError(
                f"{in_a_row} consecutive training steps had a non-finite loss{' (' + where + ')' if where else ''}; "
                f"stopping. Last good checkpoint: {ckpt or 'none written yet'}. Lower the learning rate or "
                "enable gradient clipping."
            )
        return True
