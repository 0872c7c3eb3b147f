"""SIGTERM and SIGINT during ``vqzoo fit``: save a complete checkpoint, then exit 143 / 130.

A scheduler's SIGTERM (pre-emption, ``scancel``, a time limit) or a Ctrl-C
must not lose the run, and must not look like success. :class:`SaveOnSignal`
(installed by ``VQZooCLI``) replaces the handlers of both signals while
training runs: the handler only records the signal, the current batch
finishes, and at the batch's end the callback writes ``last.ckpt`` (in the
checkpoint callback's directory, atomically through the checkpoint IO) and
raises :class:`TrainingInterrupted`. ``vqzoo.cli.main`` turns that into one
line naming the checkpoint and the exit status 128 + signal (143 for SIGTERM,
130 for SIGINT). A checkpoint written at a batch's end resumes exactly
(the data position and the RNG are in it).

* A second SIGINT stops at once (KeyboardInterrupt), for a user who insists.
* Lightning's own SIGTERM handler still runs (it records the signal and, under
  DDP, tells the other processes); if Lightning stops first on its own
  SIGTERMException, the checkpoint is written from ``on_exception``.
* SIGUSR1 is left to Lightning: under SLURM with auto-requeue it saves an
  ``hpc_ckpt_*.ckpt`` and requeues the job.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

__all__ = ["SaveOnSignal", "TrainingInterrupted"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: checkpoints written on a signal in this process (the CLI names the last one)
LAST_SAVED: list[str] = []


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving ``checkpoint``."""

    def __init__(self, signum: int, checkpoint: str | None, step: int) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.step = step
        name = signal.Signals(self.signum).name
        saved = f"saved {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {name} at global step {step}; {saved}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SaveOnSignal(Callback):
    """Record SIGTERM/SIGINT during training; at the batch's end save ``last.ckpt`` and stop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved: str | None = None
        self._previous: dict[int, Any] = {}

    # -- handlers -----------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
        previous = self._previous.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)  # Lightning's notifier: records it, tells DDP peers

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # -- saving -------------------------------------------------------------------
    @staticmethod
    def checkpoint_path(trainer: Any) -> Path:
        cb = trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "last.ckpt"

    def _save(self, trainer: Any) -> str:
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(str(path))
        cb = trainer.checkpoint_callback
        if cb is not None and hasattr(cb, "last_model_path"):
            cb.last_model_path = str(path)
        self.saved = str(path)
        LAST_SAVED.append(self.saved)
        return self.saved

    def _pending(self, trainer: Any) -> int | None:
        if self.received is not None:
            return self.received
        return signal.SIGTERM if getattr(trainer, "received_sigterm", False) else None

    # -- hooks --------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._install()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        signum = self._pending(trainer)
        if signum is None:
            return
        path = self._save(trainer)
        raise TrainingInterrupted(signum, path, trainer.global_step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and self.saved is None:
            self.received = self.received or signal.SIGTERM
            try:
                self._save(trainer)
            except Exception:  # noqa: BLE001 - report the signal, not a second failure
                pass
        self._restore()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._restore()
