"""The non-finite loss guard every vqzoo training loop shares (tokenizers and priors), decided without a host sync.

A step whose loss is NaN or Inf (on any rank) changes nothing that matters:
the weights, the optimizer's state and the floating-point buffers it touched
(codebook EMA statistics, batch-norm running statistics, LeCam EMAs, reset
accumulators) come back to their values before the step. Such steps are
counted on the device and logged as ``train/nonfinite_steps``; once
``max_nonfinite_steps`` of them came in a row, training stops with
:class:`NonFiniteLossError`, naming the last checkpoint written (whose
weights are good: a skipped step never keeps an update).

How it avoids a host sync per step (docs/DESIGN.md, "The hot path makes no
host syncs"). Skipping with ``if not finite: return`` needs the flag on the
host every step, which stalls a GPU until its queue drains. Zeroing the
gradients instead is no skip for Adam: its moments still decay and its step
count advances, so the next updates differ. So the step runs unconditionally
and is then undone when the flag says so:

1. :meth:`NonFiniteGuard.nonfinite_begin`, before the forward: copy each
   optimizer's parameters, their optimizer state tensors (those on the
   parameter's device) and the given floating buffers into storage allocated
   once (one extra copy of weights + optimizer state in memory; two copies'
   worth of memory traffic per step, small beside the convolutions).
2. :meth:`NonFiniteGuard.nonfinite_flag`: ``isfinite(loss)`` as a device
   tensor, summed across ranks under DDP (a collective, not a host sync), so
   every rank keeps or undoes the same step.
3. The step runs: backward, clipping, optimizer and scheduler steps, resets.
4. :meth:`NonFiniteGuard.nonfinite_end`: ``torch.where(ok, now, saved)`` for
   every saved tensor, counters updated on the device. Every
   ``max_nonfinite_steps`` steps (and never more often) one host sync reads
   the longest run of bad steps since the last check and raises when it
   reached the limit: a run of N bad steps is caught at most N - 1 steps late,
   and those steps changed nothing either.

What a skipped step still advances (all counters, none of them weights): the
learning-rate schedule, the generator-step and reset step counters (they
count attempted steps), integer buffers (codebook usage counts), and
optimizer state kept on the host: Adam's ``step`` lives on the CPU unless the
optimizer is ``capturable`` or ``fused``, so on a GPU a skipped step counts
for its bias correction (a transient difference of a fraction of one step's
size). On CPU, or with ``fused=True``/``capturable=True``, the step count is
restored too. Optimizer state created by a skipped first step is zeroed
(Adam's initial state).

Pure torch (no Lightning): the module it is mixed into is asked duck-typed for
its trainer (``_trainer``: ``world_size``, ``strategy.reduce``,
``checkpoint_callback``) and its ``log``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteGuard", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training steps produced a non-finite loss."""


class _Saved:
    """Live tensors and their saved copies for one optimizer (parameters, state) and its buffers."""

    def __init__(self) -> None:
        self.live: list[Tensor] = []
        self.detached: list[Tensor] = []
        self.saved: list[Tensor] = []
        self.fresh: list[tuple[Tensor, Any]] = []  # (param, optimizer) whose state did not exist yet


def _same(a: tuple, b: tuple) -> bool:
    objs_a, states_a, sizes_a, bufs_a = a
    objs_b, states_b, sizes_b, bufs_b = b
    return (
        len(objs_a) == len(objs_b) and all(x is y for x, y in zip(objs_a, objs_b))
        and len(states_a) == len(states_b) and all(x is y for x, y in zip(states_a, states_b))
        and sizes_a == sizes_b
        and len(bufs_a) == len(bufs_b) and all(x is y for x, y in zip(bufs_a, bufs_b))
    )


class NonFiniteGuard:
    """Mixin for a training module (an ``nn.Module``): call :meth:`init_nonfinite_guard` in ``__init__``,
    then per training step :meth:`nonfinite_begin`, :meth:`nonfinite_flag` and :meth:`nonfinite_end`."""

    max_nonfinite_steps: int

    def init_nonfinite_guard(self, max_nonfinite_steps: int, persistent: bool = True) -> None:
        """Set the limit and register the counters (``persistent``: in the state dict and checkpoints)."""
        if isinstance(max_nonfinite_steps, bool) or not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be an integer >= 1, got {max_nonfinite_steps!r}")
        self.max_nonfinite_steps = max_nonfinite_steps
        register = self.register_buffer  # type: ignore[attr-defined]
        register("_nonfinite_in_a_row", torch.zeros((), dtype=torch.long), persistent=persistent)
        register("_nonfinite_total", torch.zeros((), dtype=torch.long), persistent=persistent)
        register("_nonfinite_worst", torch.zeros((), dtype=torch.long), persistent=False)
        self._nonfinite_groups: list[_Saved] = []
        self._nonfinite_storage: list[list[Tensor]] = []
        self._nonfinite_steps_seen = 0  # host-side: decides when to check, no sync

    def _last_checkpoint(self) -> str | None:
        trainer = getattr(self, "_trainer", None)
        cb = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        if cb is None:
            return None
        return getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or None

    # ------------------------------------------------------------------ the three calls of a step
    @torch.no_grad()
    def nonfinite_begin(self, optimizers: Sequence[Any], buffers: Sequence[Sequence[Tensor]] = ()) -> None:
        """Save what this step may change: group ``i`` is ``optimizers[i]``'s parameters and state
        plus ``buffers[i]`` (floating-point buffers); it is restored by ``oks[i]`` in :meth:`nonfinite_end`."""
        opts = [getattr(opt, "optimizer", opt) for opt in optimizers]  # a LightningOptimizer wraps the torch one
        # The tensors to save are the same objects step after step (in-place updates): rebuild the lists
        # only when an optimizer gained state or the buffer lists changed.
        # The key holds the objects themselves (compared by identity, so no id is reused): the optimizers,
        # their state dicts (load_state_dict replaces them), the state sizes, the buffer lists.
        key = (list(opts), [o.state for o in opts], [len(o.state) for o in opts], list(buffers))
        cached = getattr(self, "_nonfinite_cache", None)
        if cached is not None and _same(cached[0], key):
            groups = cached[1]
            for g, store in zip(groups, self._nonfinite_storage):
                if g.live:
                    torch._foreach_copy_(store, g.detached)
            self._nonfinite_groups = groups
            return
        groups: list[_Saved] = []
        for i, opt in enumerate(optimizers):
            g = _Saved()
            opt = getattr(opt, "optimizer", opt)  # a LightningOptimizer wraps the torch one
            for group in opt.param_groups:
                for p in group["params"]:
                    g.live.append(p)
                    state = opt.state.get(p)
                    if not state:
                        g.fresh.append((p, opt))
                        continue
                    for key in sorted(state):
                        t = state[key]
                        if isinstance(t, Tensor) and t.device == p.device:
                            g.live.append(t)
            if i < len(buffers):
                g.live.extend(b for b in buffers[i] if b.is_floating_point())
            groups.append(g)
        while len(self._nonfinite_storage) < len(groups):
            self._nonfinite_storage.append([])
        for g, store in zip(groups, self._nonfinite_storage):
            if len(store) != len(g.live) or any(
                s.shape != t.shape or s.dtype != t.dtype or s.device != t.device for s, t in zip(store, g.live)
            ):
                store[:] = [torch.empty_like(t, memory_format=torch.preserve_format) for t in g.live]
            g.detached = [t.detach() for t in g.live]
            if g.live:
                torch._foreach_copy_(store, g.detached)
            g.saved = store
        self._nonfinite_groups = groups
        self._nonfinite_cache = (key, groups) if all(not g.fresh for g in groups) else None

    def nonfinite_flag(self, loss: Tensor) -> Tensor:
        """A 0-dim bool tensor on the loss's device: True when ``loss`` is finite on every rank (no host sync)."""
        bad = (~torch.isfinite(loss.detach())).any().float().reshape(1)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        return (bad == 0).reshape(())

    @torch.no_grad()
    def nonfinite_end(self, oks: Sequence[Tensor], where: str = "") -> None:
        """Undo group ``i`` where ``oks[i]`` is False; count the step (bad when any flag is False).

        Every ``max_nonfinite_steps`` calls, one host sync reads the longest
        run of bad steps and raises :class:`NonFiniteLossError` when it
        reached the limit. ``where`` (e.g. "at generator step 12") goes into the message.
        """
        for g, ok in zip(self._nonfinite_groups, oks):
            for live, saved in zip(g.live, g.saved):
                torch.where(ok, live, saved, out=live)
            for p, opt in g.fresh:  # state born in this step: zeroed if the step is undone
                for t in opt.state.get(p, {}).values():
                    if isinstance(t, Tensor) and t.device == p.device:
                        torch.where(ok, t, torch.zeros((), dtype=t.dtype, device=t.device), out=t)
        self._nonfinite_groups = []
        all_ok = oks[0]
        for ok in oks[1:]:
            all_ok = all_ok & ok
        bad = (~all_ok).long()
        self._nonfinite_total += bad  # type: ignore[attr-defined]
        in_a_row = (self._nonfinite_in_a_row + 1) * bad  # type: ignore[attr-defined]
        self._nonfinite_in_a_row.copy_(in_a_row)  # type: ignore[attr-defined]
        torch.maximum(self._nonfinite_worst, in_a_row, out=self._nonfinite_worst)  # type: ignore[attr-defined]
        self._nonfinite_steps_seen += 1
        if self._nonfinite_steps_seen % self.max_nonfinite_steps == 0:
            log: Any = getattr(self, "log", None)
            if getattr(self, "_trainer", None) is not None and callable(log):  # logged at each check
                log("train/nonfinite_steps", self._nonfinite_total.float(), batch_size=1)  # type: ignore[attr-defined]
            self.check_nonfinite(where)

    def check_nonfinite(self, where: str = "") -> None:
        """The one host sync of the guard: raise if a run of ``max_nonfinite_steps`` bad steps was seen."""
        worst = int(self._nonfinite_worst)  # type: ignore[attr-defined]
        self._nonfinite_worst.copy_(self._nonfinite_in_a_row)  # type: ignore[attr-defined]
        if worst >= self.max_nonfinite_steps:
            ckpt = self._last_checkpoint()
            raise NonFiniteLossError(
                f"{worst} consecutive training steps had a non-finite loss{' (up to ' + where + ')' if where else ''}; "
                f"stopping. Last good checkpoint: {ckpt or 'none written yet'}. Lower the learning rate or "
                "enable gradient clipping."
            )
