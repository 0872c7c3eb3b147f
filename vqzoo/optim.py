"""Optimizers and learning-rate schedules, injected the LightningCLI way.

Models take their optimizers as callables (Lightning's ``OptimizerCallable`` /
``LRSchedulerCallable``), so any torch optimizer or scheduler is one YAML change:
``optimizer: {class_path: torch.optim.AdamW, init_args: {lr: 4.5e-6, betas: [0.5, 0.9]}}``.

Defaults are written as the same ``{class_path, init_args}`` dict rather than a
lambda: jsonargparse prints and saves such a default as plain data (a lambda
becomes the string "Unable to serialize instance ..."), so ``--print_config``
shows it, one ``init_args`` key can be overridden from the command line, and a
checkpoint's hyperparameters stay plain data. :func:`as_callable` turns a dict
into the callable when a model is built in Python.

Decisions:

* vqzoo's own schedule (a tokenizer's linear ``warmup_steps``; a prior's warm-up
  and ``lr_schedule``) is a multiplier on top of an injected scheduler:
  ``lr(t) = injected(t) · factor(t)`` (:class:`MultipliedLR`). With no
  injected scheduler it is exactly the former ``LambdaLR``. A multiplier keeps
  the warm-up meaning "ramp from zero to whatever the schedule says", whatever
  that schedule is, and keeps the step units of both the same (optimizer steps).
* ``scale_lr: linear`` multiplies the learning rate of every param group of the
  built optimizer by the number of processes, before any scheduler is built, so
  schedulers take the scaled rate as their base.
* Schedulers are stepped once per optimizer step. ``ReduceLROnPlateau`` (which
  needs a metric) is refused with a message.
* Checkpoints and exports written before optimizers were injected carry
  ``optimizer: adam``, ``learning_rate``, ``betas``... (tokenizers) or ``lr``,
  ``betas``, ``weight_decay`` (priors); :func:`upgrade_legacy_config` rewrites
  them so they still load. A config file with those keys is an error that
  names the replacement (:func:`legacy_keys_message`).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

#: constructor arguments that hold optimizer or scheduler callables
OPTIMIZER_ARGS = ("optimizer", "disc_optimizer", "lr_scheduler", "disc_lr_scheduler")


def spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}``, the plain form of an injected callable."""
    return {"class_path": class_path, "init_args": init_args}


def as_callable(value: Any, name: str) -> Callable[..., Any] | None:
    """An optimizer/scheduler callable from a callable, a ``{class_path, init_args}`` dict or None."""
    if value is None or callable(value):
        return value
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
        module_name, _, cls_name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"{name}: cannot import {value['class_path']!r}: {err}") from err
        return functools.partial(cls, **dict(value.get("init_args") or {}))
    raise ValueError(
        f"{name} must be a callable (e.g. functools.partial(torch.optim.Adam, lr=1e-4)) or a "
        f"{{class_path, init_args}} dict, got {value!r}"
    )


def scale_learning_rates(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Multiply the learning rate of every param group (``scale_lr: linear``)."""
    if scale != 1:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * scale


class MultipliedLR(LambdaLR):
    """``lr(t) = inner(t) · factor(t)``: vqzoo's own schedule on top of an injected scheduler.

    ``inner`` is any step-wise torch scheduler built on the same optimizer
    (or None: then this is ``LambdaLR(optimizer, factor)``). Before the inner
    scheduler steps, the rate it last set is put back, so recursive schedulers
    (StepLR, CosineAnnealingLR, ...) and closed-form ones (LambdaLR, OneCycleLR)
    compose the same way.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float], inner: Any = None) -> None:
        if isinstance(inner, ReduceLROnPlateau):
            raise ValueError(
                "ReduceLROnPlateau needs a monitored metric and cannot be stepped per optimizer step; "
                "use a step-wise scheduler (e.g. torch.optim.lr_scheduler.CosineAnnealingLR)"
            )
        if inner is not None and getattr(inner, "optimizer", optimizer) is not optimizer:
            raise ValueError("the injected lr_scheduler must be built on the optimizer it is given")
        self.inner = inner
        self._inner_lrs: list[float] | None = None
        super().__init__(optimizer, factor)

    def step(self, epoch: int | None = None) -> None:  # noqa: ARG002 - the torch signature
        if self.inner is not None:
            if self._inner_lrs is not None:
                for group, lr in zip(self.optimizer.param_groups, self._inner_lrs):
                    group["lr"] = lr
                self.inner.step()
            self._inner_lrs = [group["lr"] for group in self.optimizer.param_groups]
        super().step()

    def get_lr(self) -> list[float]:
        bases = self._inner_lrs if self.inner is not None else self.base_lrs
        return [base * fn(self.last_epoch) for base, fn in zip(bases, self.lr_lambdas)]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("inner", None)
        state["inner_state"] = self.inner.state_dict() if self.inner is not None else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        inner_state = state.pop("inner_state", None)
        state.pop("inner", None)
        super().load_state_dict(state)
        if self.inner is not None and inner_state is not None:
            self.inner.load_state_dict(inner_state)


def build_schedule(
    optimizer: torch.optim.Optimizer, factor: Callable[[int], float], lr_scheduler: Callable[..., Any] | None
) -> MultipliedLR:
    """The injected scheduler (if any) on ``optimizer``, multiplied by vqzoo's ``factor``."""
    inner = lr_scheduler(optimizer) if lr_scheduler is not None else None
    return MultipliedLR(optimizer, factor, inner)


# ---------------------------------------------------------------------- the keys that went
_TOKENIZER_LEGACY = ("learning_rate", "disc_learning_rate", "betas", "weight_decay")
_PRIOR_LEGACY = ("lr", "betas", "weight_decay")
_LEGACY_CLASSES = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}


def legacy_keys(init_args: Mapping[str, Any]) -> list[str]:
    """The optimizer keys of ``init_args`` that injected optimizers replaced."""
    keys = [k for k in (*_TOKENIZER_LEGACY, "lr") if k in init_args]
    if isinstance(init_args.get("optimizer"), str):
        keys.insert(0, "optimizer")
    return keys


def legacy_keys_message(keys: list[str]) -> str:
    """What to write instead of the old optimizer keys."""
    parts = []
    for k in keys:
        if k == "optimizer":
            parts.append("`optimizer: adam|adamw` -> `optimizer: {class_path: torch.optim.Adam|torch.optim.AdamW, "
                         "init_args: {...}}`")
        elif k in ("learning_rate", "lr"):
            parts.append(f"`{k}` -> `optimizer.init_args.lr`")
        elif k == "disc_learning_rate":
            parts.append("`disc_learning_rate` -> `disc_optimizer: {class_path: ..., init_args: {lr: ...}}`")
        else:
            parts.append(f"`{k}` -> `optimizer.init_args.{k}`")
    return (
        "vqzoo: optimizers are injected now (LightningCLI's OptimizerCallable): "
        + "; ".join(parts)
        + ". All old keys: optimizer: adam|adamw -> optimizer.class_path torch.optim.Adam|torch.optim.AdamW; "
        "learning_rate (priors: lr), betas, weight_decay -> optimizer.init_args.lr|betas|weight_decay; "
        "disc_learning_rate -> disc_optimizer. Example: "
        "`optimizer: {class_path: torch.optim.Adam, init_args: {lr: 1.0e-4, betas: [0.5, 0.9]}}`."
    )


def upgrade_legacy_config(config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the old optimizer keys of a saved model config into injected-optimizer specs.

    Tokenizers: ``optimizer`` (``"adam"``/``"adamw"``), ``learning_rate``,
    ``disc_learning_rate``, ``betas``, ``weight_decay`` (used by ``adamw`` only,
    as before). Priors: AdamW with ``lr``, ``betas``, ``weight_decay``.
    The numbers stay what the old code used.
    """
    if not legacy_keys(config):
        return config
    config = dict(config)
    if "lr" in config or ("learning_rate" not in config and not isinstance(config.get("optimizer"), str)):
        init = {"lr": config.pop("lr", 3e-4), "betas": list(config.pop("betas", (0.9, 0.95))),
                "weight_decay": config.pop("weight_decay", 0.1)}
        config["optimizer"] = spec("torch.optim.AdamW", **init)
        return config
    name = config.pop("optimizer", "adam")
    lr = config.pop("learning_rate", 1e-4)
    disc_lr = config.pop("disc_learning_rate", None)
    init = {"lr": lr, "betas": list(config.pop("betas", (0.5, 0.9)))}
    weight_decay = config.pop("weight_decay", 0.0)
    if name == "adamw":
        init["weight_decay"] = weight_decay
    class_path = _LEGACY_CLASSES.get(name, "torch.optim.Adam")
    config["optimizer"] = spec(class_path, **init)
    if disc_lr is not None:
        config["disc_optimizer"] = spec(class_path, **{**init, "lr": disc_lr})
    return config


def legacy_hint(message: str) -> str | None:
    """For a config parser's error message: what replaced the old optimizer keys it rejects, if any."""
    keys = re.findall(r"Option '(learning_rate|disc_learning_rate|betas|weight_decay|lr)' is not accepted", message)
    keys += re.findall(r"\b(learning_rate|disc_learning_rate)\b", message)
    if re.search(r"'optimizer': '(adam|adamw)'|[Gg]ot value: '?(adam|adamw)\b|optimizer[\"']?: \"?(adam|adamw)\b"
                 r"|key='optimizer', val='(adam|adamw)'", message):
        keys.insert(0, "optimizer")
    return legacy_keys_message(list(dict.fromkeys(keys))) if keys else None
