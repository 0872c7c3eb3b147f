"""Resume semantics a user can predict (``--ckpt_path`` with ``fit``, ``validate``, ``test``, ``predict``).

* ``--ckpt_path last`` finds the newest ``last.ckpt`` anywhere under the run's
  root (``trainer.default_root_dir``): every run gets a new version folder, so
  Lightning's own "last" (the *new* run's folder) would retrain from scratch.
  None found: the run starts from scratch and says so.
* A checkpoint of another model class is refused, naming both classes.
* The model's constructor arguments are compared with the checkpoint's
  hyperparameters and every difference is printed. Differences in what only
  steers training (learning rates, loss weights, the schedule, dropout,
  clipping, step limits) are applied: the model is built from the command
  line, and :class:`ApplyResumeOverrides` rewrites the learning rates and
  optimizer settings that Lightning restores from the checkpoint's optimizer
  state. Any other difference (architecture, codebook, data layout) is refused
  with the list, since the checkpoint's tensors would not mean the same thing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

__all__ = ["ApplyResumeOverrides", "check_resume", "find_last_checkpoint", "hparam_differences", "is_safe_override"]

#: constructor arguments that only steer training; changing them on resume is safe.
SAFE_NAMES = frozenset({
    "lr", "weight_decay", "betas", "momentum", "eps", "warmup_steps", "lr_schedule",
    "min_lr_ratio", "total_steps", "scale_lr", "gradient_clip_norm", "gradient_clip_algorithm",
    "max_generator_steps", "max_nonfinite_steps", "check_inputs", "num_val_images", "embd_pdrop",
    "resid_pdrop", "attn_pdrop", "disc_start", "disc_factor", "max_weight", "beta", "weight", "lecam_decay",
    "ema_decay", "compile", "check_values_every",
})


def is_safe_override(key: str) -> bool:
    """Whether a dotted hyperparameter key (``adversarial.init_args.disc_weight``) is safe to change on resume."""
    leaf = key.rsplit(".", 1)[-1]
    # An optimizer's settings may change (its class may not: the saved state would not fit).
    in_optimizer = key.split(".", 1)[0] in ("optimizer", "disc_optimizer") and ".init_args." in key
    return in_optimizer or leaf in SAFE_NAMES or leaf.endswith("_weight") or leaf.endswith("_lr")


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The most recently written ``last.ckpt`` under ``root`` (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob("last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            if str(k).startswith("_"):
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def hparam_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint value, current value)`` for every leaf that differs (nested parts dotted)."""
    a, b = _flatten(_plain(saved), "", {}), _flatten(_plain(current), "", {})
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def check_resume(ckpt_path: str | Path, model: Any, subcommand: str) -> bool:
    """Refuse another class or an unsafe difference; print the differences. True if any safe one is to be applied."""
    from vqzoo.checkpoint import CheckpointError, checkpoint_class_path, model_config, read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    saved_class = checkpoint_class_path(ckpt)
    mine = f"{type(model).__module__}.{type(model).__qualname__}"
    if saved_class != mine:
        raise CheckpointError(f"{ckpt_path} holds a {saved_class} but the config builds a {mine}; "
                              "pass a checkpoint of the same model class")
    try:
        current = model_config(model)
    except CheckpointError:
        return False  # a model whose config cannot be written as data: nothing to compare
    diffs = hparam_differences(ckpt.get("hyper_parameters") or {}, current)
    if not diffs:
        return False

    def show(v: Any) -> str:
        return "(absent)" if not isinstance(v, (str, int, float, bool, list, dict, type(None))) else json.dumps(v)

    unsafe = [d for d in diffs if not is_safe_override(d[0])]
    lines = [f"  {k}: {show(old)} -> {show(new)} ({'refused' if (k, old, new) in unsafe else 'applied'})"
             for k, old, new in diffs]
    print(f"vqzoo {subcommand}: the config differs from {ckpt_path}:\n" + "\n".join(lines), file=sys.stderr)
    if unsafe:
        keys = ", ".join(k for k, _, _ in unsafe)
        raise ValueError(
            f"cannot resume {ckpt_path} with a different architecture ({keys}); only learning rates, loss weights "
            "and the schedule may change on resume. Start a new run without --ckpt_path to train another model"
        )
    return True


def _optimizers_of(result: Any) -> list[Any]:
    """The optimizers in whatever ``configure_optimizers`` returned."""
    import torch

    if isinstance(result, torch.optim.Optimizer):
        return [result]
    if isinstance(result, dict):
        return [result["optimizer"]]
    if isinstance(result, (list, tuple)):
        if len(result) == 2 and isinstance(result[0], (list, tuple)):
            return _optimizers_of(list(result[0]))
        out: list[Any] = []
        for item in result:
            out.extend(_optimizers_of(item))
        return out
    return []


class ApplyResumeOverrides(Callback):
    """After Lightning restored the optimizer state, apply the command line's learning rates and optimizer settings.

    Restored learning rates are rescaled by new/old initial rate (exact for
    multiplicative schedules such as LambdaLR, the ones vqzoo uses), and the
    schedulers' ``base_lrs`` follow; a changed schedule shape (warm-up, cosine)
    takes effect because vqzoo's schedules read the model's attributes.
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(trainer, "ckpt_path", None):
            return
        fresh = _optimizers_of(pl_module.configure_optimizers())
        for restored, new in zip(trainer.optimizers, fresh):
            for group, new_group in zip(restored.param_groups, new.param_groups):
                old_base = group.get("initial_lr", group["lr"])
                new_base = new_group.get("initial_lr", new_group["lr"])
                for key, value in new_group.items():
                    if key not in ("params", "lr", "initial_lr"):
                        group[key] = value
                if new_base != old_base:
                    group["lr"] = group["lr"] * (new_base / old_base) if old_base else new_base
                    if "initial_lr" in group:
                        group["initial_lr"] = new_base
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if hasattr(sched, "base_lrs"):
                sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in sched.optimizer.param_groups]
