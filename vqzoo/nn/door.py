"""When a model reads its inputs' values back to check them: the schedule both model bases share.

Shapes and dtypes are checked on every call (no device work). Values (finite
pixels in [-1, 1], token and label ids in range) need a read-back that stalls
the GPU, so in training they are checked on the first batch of each process
and then only every ``check_values_every`` batches (None: never again);
outside training, always. Pure Python: mixed into an ``nn.Module``.
"""

from __future__ import annotations

__all__ = ["ValueCheckSchedule"]


class ValueCheckSchedule:
    """Mixin: call :meth:`init_value_checks` in ``__init__``, :meth:`values_check_due` at the door,
    and :meth:`value_check_batch_done` once per training batch."""

    training: bool

    def init_value_checks(self, check_values_every: int | None) -> None:
        if check_values_every is not None and (isinstance(check_values_every, bool) or check_values_every < 1):
            raise ValueError(f"check_values_every must be an integer >= 1 or None, got {check_values_every!r}")
        self.check_values_every = check_values_every
        self._training_batches_checked = 0  # training batches seen by this process

    def values_check_due(self) -> bool:
        """Whether input values are checked now (see the module docstring)."""
        if not self.training or self._training_batches_checked == 0:
            return True
        every = self.check_values_every
        return every is not None and self._training_batches_checked % every == 0

    def value_check_batch_done(self) -> None:
        if self.training:
            self._training_batches_checked += 1
