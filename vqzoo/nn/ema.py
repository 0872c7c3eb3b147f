"""Weight EMA: an exponential moving average of a model's parameters, kept as buffers.

One implementation shared by the tokenizers and the priors (their bases own a
:class:`WeightEMA` when ``ema_decay`` is set and use :class:`EMAWeightsMixin`
for the hooks). Pure torch: it imports nothing from Lightning; the mixin only
defines methods that Lightning happens to call.

Decisions (docs/DESIGN.md is silent on them):

* The shadow weights are **buffers** of a child module (``weight_ema``), so
  they are in ``state_dict`` and therefore in every checkpoint, and an exact
  resume restores them (with the update counter). They are float32 copies of
  the tracked parameters, named after them (``.`` -> ``__``).
* Update after every optimizer step, with no host sync (one fused
  ``_foreach_lerp_`` on device, the decay computed on device)::

      d_n    = min(decay, (1 + n) / (10 + n))      # n = updates so far
      shadow = d_n · shadow + (1 − d_n) · param

  The warm-up term lets short runs profit: with a fixed 0.999 the average of
  a 600-step run would still be 55% the random initialisation. ``warmup=False``
  uses ``decay`` from the first step.
* Under DDP every rank holds identical parameters after each optimizer step,
  so identical local updates keep the shadows identical without a collective.
  The shadows are therefore listed in ``_ddp_params_and_buffers_to_ignore``:
  DDP would otherwise broadcast them from rank 0 at every forward, a
  model-sized transfer per step for nothing. A fresh run re-copies them from
  the parameters at ``on_fit_start``, after DDP has broadcast rank 0's
  parameters (a resumed run keeps the restored shadows).
* Evaluation swaps the shadows into the parameters and back (:meth:`swap`;
  exchanging values, so nothing holding a parameter notices). A checkpoint
  written while swapped (Lightning's ModelCheckpoint saves in its
  ``on_validation_end``, before the module's own hook swaps back) is corrected by :meth:`fix_state_dict`, so
  a checkpoint's parameters are always the raw weights and its shadows always
  the averages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMAWeightsMixin", "WeightEMA"]


def _key(name: str) -> str:
    return "shadow__" + name.replace(".", "__")


class WeightEMA(nn.Module):
    """Shadow copies of named parameters, updated as an exponential moving average.

    Args:
        decay: the EMA decay in (0, 1) (0.999 typical; smaller for short runs).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (see module doc).
    """

    def __init__(self, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema_decay must be a number in (0, 1) (0.999 typical) or None, got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.names: list[str] = []
        self.swapped = False

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}, tracked={len(self.names)}"

    def attach(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Start tracking parameters not tracked yet (their current values become the shadow)."""
        for name, p in named_parameters:
            key = _key(name)
            if key in self._buffers:
                continue
            self.register_buffer(key, p.detach().clone().float())
            self.names.append(name)

    def shadow(self, name: str) -> Tensor:
        return self._buffers[_key(name)]

    def _pairs(self, params: Mapping[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"WeightEMA tracks parameters the model no longer has: {missing[:5]}")
        return [self.shadow(n) for n in self.names], [params[n].detach() for n in self.names]

    def current_decay(self) -> Tensor:
        """The decay the next update uses, as a 0-d tensor on the buffers' device (no host sync)."""
        n = self.num_updates.to(torch.float32)
        d = torch.full_like(n, self.decay)
        return torch.minimum(d, (1.0 + n) / (10.0 + n)) if self.warmup else d

    @torch.no_grad()
    def update(self, params: Mapping[str, Tensor]) -> None:
        """One EMA step towards ``params`` (name -> tensor; call after the optimizer step)."""
        if self.swapped:
            raise RuntimeError("WeightEMA.update called while the EMA weights are swapped into the model")
        if not self.names:
            return
        shadows, values = self._pairs(params)
        weight = 1.0 - self.current_decay()
        if any(v.dtype != torch.float32 for v in values):
            values = [v.float() for v in values]
        torch._foreach_lerp_(shadows, values, weight)
        self.num_updates += 1

    @torch.no_grad()
    def reset_to(self, params: Mapping[str, Tensor]) -> None:
        """Make every shadow equal to its parameter (the start of a run)."""
        shadows, values = self._pairs(params)
        for s, p in zip(shadows, values):
            s.copy_(p)

    @torch.no_grad()
    def swap(self, params: Mapping[str, Tensor]) -> None:
        """Exchange the values of the parameters and their shadows (call again to undo)."""
        shadows, values = self._pairs(params)
        for s, p in zip(shadows, values):
            tmp = p.clone()
            p.copy_(s)
            s.copy_(tmp)
        self.swapped = not self.swapped

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, Tensor]) -> None:
        """Overwrite the parameters with the averages (inference: the raw weights are dropped)."""
        if self.swapped:
            self.swap(params)
        shadows, values = self._pairs(params)
        for s, p in zip(shadows, values):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped_in(self, params: Mapping[str, Tensor]) -> Iterator[None]:
        """Run a block with the EMA weights in the parameters; restore the raw weights after."""
        if self.swapped:
            yield
            return
        self.swap(params)
        try:
            yield
        finally:
            self.swap(params)

    def fix_state_dict(self, state: dict[str, Any], prefix: str = "weight_ema.") -> None:
        """If ``state`` was taken while swapped, put raw weights back under the parameter names."""
        if not self.swapped:
            return
        for name in self.names:
            skey = prefix + _key(name)
            if name in state and skey in state:
                state[name], state[skey] = state[skey].clone(), state[name].clone()

    def export_state(self, state: dict[str, Tensor], prefix: str = "weight_ema.") -> dict[str, Tensor]:
        """A state dict whose parameters are the averages, without the EMA's own buffers."""
        out = {k: v for k, v in state.items() if not k.startswith(prefix)}
        raw_in_shadow = self.swapped  # while swapped the shadows hold the raw weights
        for name in self.names:
            src = state[name] if raw_in_shadow else state[prefix + _key(name)]
            out[name] = src.detach().to(state[name].dtype).clone()
        return out


def _attach_hook(module: Any, *args: Any, **kwargs: Any) -> None:
    module._attach_weight_ema()


class EMAWeightsMixin:
    """The hooks a LightningModule base needs for weight EMA (tokenizers and priors share it).

    The host calls :meth:`_init_weight_ema` in ``__init__``; parameters are
    attached lazily (subclasses build their layers after the base's
    ``__init__``): before ``state_dict``/``load_state_dict`` and at ``setup``.
    The host calls :meth:`_update_weight_ema` after each optimizer step.
    Validation, test and predict run on the EMA weights unless
    ``ema_eval=False``; ``use_ema_weights()`` makes them the model's weights
    for inference (``vqzoo evaluate``, notebooks).
    """

    #: parameter-name prefixes never averaged (e.g. a GAN's discriminator).
    ema_exclude: tuple[str, ...] = ()
    weight_ema: WeightEMA | None

    def _init_weight_ema(self, decay: float | None, ema_eval: bool = True) -> None:
        self.ema_eval = bool(ema_eval)
        if decay is None:
            self.weight_ema = None
            return
        self.weight_ema = WeightEMA(decay)
        # module-level functions, not lambdas: the model must stay picklable (ddp_spawn, torch.save)
        self.register_state_dict_pre_hook(_attach_hook)
        self.register_load_state_dict_pre_hook(_attach_hook)

    def ema_parameters(self) -> dict[str, Tensor]:
        """The parameters the EMA tracks, by name (everything but ``ema_exclude``)."""
        return {
            n: p for n, p in self.named_parameters()
            if not n.startswith("weight_ema.") and not any(n.startswith(e) for e in self.ema_exclude)
        }

    def _attach_weight_ema(self) -> None:
        if self.weight_ema is not None and not self.weight_ema.names:
            self.weight_ema.attach(self.ema_parameters().items())
            # every rank updates its shadows identically: DDP need not broadcast them (module doc)
            ignore = [f"weight_ema.{k}" for k in self.weight_ema._buffers]
            self._ddp_params_and_buffers_to_ignore = [*getattr(self, "_ddp_params_and_buffers_to_ignore", []), *ignore]

    def _update_weight_ema(self) -> None:
        if self.weight_ema is not None:
            self._attach_weight_ema()
            self.weight_ema.update(self.ema_parameters())

    def _swap_ema(self, on: bool) -> None:
        ema = self.weight_ema
        if ema is None or not self.ema_eval:
            return
        self._attach_weight_ema()
        if ema.swapped != on:
            ema.swap(self.ema_parameters())

    def use_ema_weights(self) -> bool:
        """Make the averaged weights the model's weights (for inference); False if there is no EMA."""
        if self.weight_ema is None:
            return False
        self._attach_weight_ema()
        self.weight_ema.copy_to(self.ema_parameters())
        return True

    def ema_checkpoint_fix(self, checkpoint: dict[str, Any]) -> None:
        if self.weight_ema is not None and "state_dict" in checkpoint:
            self.weight_ema.fix_state_dict(checkpoint["state_dict"])

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        # After DDP broadcast rank 0's parameters; a resumed run (updates > 0) keeps its shadows.
        ema = self.weight_ema
        if ema is not None and not ema.swapped and int(ema.num_updates) == 0:
            self._attach_weight_ema()
            ema.reset_to(self.ema_parameters())

    # Lightning hooks (plain methods here; the host's MRO puts them before LightningModule's).
    # Swap in after Lightning puts the model in eval mode; swap back in ``on_*_end``
    # (overriding ``on_*_model_train`` would replace Lightning's per-module mode restore).
    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()  # type: ignore[misc]
        self._swap_ema(True)

    def on_validation_end(self) -> None:
        self._swap_ema(False)
        super().on_validation_end()  # type: ignore[misc]

    def on_test_model_eval(self) -> None:
        super().on_test_model_eval()  # type: ignore[misc]
        self._swap_ema(True)

    def on_test_end(self) -> None:
        self._swap_ema(False)
        super().on_test_end()  # type: ignore[misc]

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()  # type: ignore[misc]
        self._swap_ema(True)

    def on_predict_end(self) -> None:
        self._swap_ema(False)
        super().on_predict_end()  # type: ignore[misc]
