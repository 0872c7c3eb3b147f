"""Safe loading and export of vqzoo models.

* Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint
  holding a pickled object that would run code is refused before anything
  runs, with an error that says so.
* The model class named in a checkpoint must live in a trusted module
  (``vqzoo.*`` plus any prefixes listed, comma-separated, in
  ``$VQZOO_TRUSTED_MODULES``), so a checkpoint cannot make us import
  arbitrary code either.
* An export directory holds ``model.safetensors`` (weights only) and
  ``config.json`` (class path and constructor config); it loads without
  pickle at all.
* Mismatched classes and shapes are reported by name.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be used, with the reason."""


def checkpoint_meta(model: torch.nn.Module) -> dict[str, Any]:
    """What vqzoo adds to every Lightning checkpoint: the model class and the RNG states.

    The RNG states make a resumed run draw the same random numbers (dead-code
    reset candidates, MaskGIT masks, dropout) as an uninterrupted one.
    """
    cls = type(model)
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "rng": rng}


def restore_rng(checkpoint: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`checkpoint_meta`, if any."""
    rng = (checkpoint.get("vqzoo") or {}).get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


class CheckpointHooks:
    """Lightning checkpoint hooks every vqzoo model shares (mixed into the tokenizer and prior bases).

    Saving adds :func:`checkpoint_meta` (the class path, the RNG states) and
    lets a weight EMA keep the raw weights as the checkpoint's parameters;
    loading restores the RNG only when a trainer resumes the run, so loading a
    checkpoint for inference leaves the caller's RNG alone.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqzoo"] = checkpoint_meta(self)  # type: ignore[arg-type]
        fix = getattr(self, "ema_checkpoint_fix", None)
        if fix is not None:
            fix(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "_trainer", None) is not None:
            restore_rng(checkpoint)


def _trusted_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get("VQZOO_TRUSTED_MODULES", "").split(",") if p.strip()]
    return ("vqzoo.", *extra)


def resolve_class(class_path: str) -> type:
    """Import ``module.Class`` if its module is trusted."""
    if not isinstance(class_path, str) or "." not in class_path:
        raise CheckpointError(f"expected a class path like 'vqzoo.VQGAN', got {class_path!r}")
    if not class_path.startswith(_trusted_prefixes()):
        raise CheckpointError(
            f"refusing to import {class_path!r}: only classes from {', '.join(_trusted_prefixes())} are "
            "loaded from checkpoints; add the module prefix to $VQZOO_TRUSTED_MODULES if you trust it"
        )
    module_name, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"cannot import the model class {class_path!r}: {err}") from err
    return obj


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file written by `vqzoo fit`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "GLOBAL" in msg:  # an object whose unpickling would import and call code
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects that could run code when "
                f"loaded (torch.load(weights_only=True) rejected: {_global_name(msg)}). Nothing was "
                "executed. Re-export the model with `vqzoo export` from a trusted environment."
            ) from err
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated): {msg}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated): {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint: no 'state_dict' entry")
    return ckpt


def _global_name(msg: str) -> str:
    for line in msg.splitlines():
        if "GLOBAL" in line:
            return line.strip()
    return msg.splitlines()[0] if msg else "unsafe content"


def checkpoint_class_path(ckpt: dict[str, Any]) -> str:
    meta = ckpt.get("vqzoo") or {}
    hp = ckpt.get("hyper_parameters") or {}
    path = meta.get("class_path") or hp.get("_class_path")
    if not path:
        raise CheckpointError("the checkpoint does not name its model class (no 'vqzoo.class_path' entry)")
    return path


def _instantiate(cls: type, config: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Build ``cls`` from plain config (nested ``class_path``/``init_args`` dicts) plus overrides."""
    from jsonargparse import ArgumentParser

    from vqzoo.optim import upgrade_legacy_config

    config = {k: v for k, v in config.items() if k not in ("_instantiator", "_class_path")}
    takes_optimizer = any("optimizer" in inspect.signature(k.__init__).parameters for k in cls.__mro__ if "__init__" in vars(k))
    if takes_optimizer:
        # checkpoints and exports from before injected optimizers still load
        config = upgrade_legacy_config(config)
    config = {k: v for k, v in config.items() if k not in overrides}
    # Optimizer and scheduler specs stay plain dicts (the models build them with vqzoo.optim),
    # so a reloaded model keeps them in its hyperparameters and exports them again.
    from vqzoo.optim import OPTIMIZER_ARGS

    overrides = {**{k: config.pop(k) for k in OPTIMIZER_ARGS if isinstance(config.get(k), dict)}, **overrides}
    parser = ArgumentParser(exit_on_error=False)
    # instantiate=False: nested parts are built here, the model itself below with the overrides
    parser.add_class_arguments(cls, "model", fail_untyped=False, skip=set(overrides), instantiate=False)
    try:
        # jsonargparse turns nested dicts into Namespaces in place: give it a copy
        parsed = parser.parse_object({"model": copy.deepcopy(config)})
        init = parser.instantiate(parsed).model
    except Exception as err:  # jsonargparse reports bad or missing arguments in several classes
        raise TypeError(str(err).strip().splitlines()[0]) from err
    init = init.as_dict() if hasattr(init, "as_dict") else dict(init)
    return cls(**{**init, **overrides})


def check_weights(
    state: dict[str, Any], source: str, own: dict[str, torch.Tensor] | None = None
) -> None:
    """Refuse weights that are not finite, or not floating where the model's tensor is.

    Integer buffers (step counters, usage counts) are fine where the model's
    tensor is an integer too. ``own`` is the model's state dict (``None``:
    check finiteness only). Raises :class:`CheckpointError` naming ``source``
    and the tensor.
    """
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        mine = own.get(key) if own is not None else None
        if mine is not None and mine.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"{source}: tensor {key!r} is {value.dtype} but the model's is {mine.dtype}; "
                "refusing integer or bool weights (a corrupt or hand-edited file)"
            )
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: tensor {key!r} has {bad} non-finite values (NaN or Inf) of {value.numel()}; "
                "the run that wrote it diverged"
            )


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and isinstance(own[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:8]))
        if missing:
            parts.append(f"missing in {source}: " + ", ".join(missing[:8]))
        if unexpected:
            parts.append(f"not in the model: " + ", ".join(unexpected[:8]))
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + " | ".join(parts))
    check_weights(state, source, own)
    model.load_state_dict(state, strict=True)


def load(path: str | os.PathLike, expected: type | None = None, **overrides: Any) -> L.LightningModule:
    """Load any vqzoo model (tokenizer, prior, classifier) from a ``.ckpt`` file or an export directory.

    Always the safe path: ``weights_only`` checkpoints, classes from trusted
    modules only, a strict state-dict check that names what does not fit. The
    model comes back in eval mode on the CPU; the caller's RNG is untouched.

    Args:
        path: a ``.ckpt`` written by ``vqzoo fit``, a directory written by ``vqzoo export``
            or ``vqzoo convert``, or a Hugging Face Hub id (``user/repo[@revision]``) of a
            pushed export directory: downloaded (cache first, see :mod:`vqzoo.hub`);
            offline it fails at once with a :class:`~vqzoo.hub.HubError` that says so.
        expected: a class; a checkpoint of another model class is an error that names both.
        overrides: replace constructor arguments (e.g. ``tokenizer="other.ckpt"`` for a prior).
    """
    from vqzoo import hub

    if hub.is_hub_id(path):
        path = hub.download(os.fspath(path), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "*.md"])
    path = Path(path)
    if path.is_dir():
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"export directory {path} lacks {f.name} (expected one written by `vqzoo export`)")
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{cfg_file} is not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise CheckpointError(f"{cfg_file} must hold a JSON object with 'class_path' and 'config'")
        class_path, config = meta.get("class_path"), meta.get("config") or {}
        extra_state = meta.get("extra_state") or {}
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from err
        state = {**state, **extra_state}
    elif path.is_file():
        ckpt = read_checkpoint(path)
        class_path, config, state = checkpoint_class_path(ckpt), ckpt.get("hyper_parameters") or {}, ckpt["state_dict"]
    else:
        raise FileNotFoundError(
            f"no model at {path}: expected a .ckpt file written by `vqzoo fit` or a directory written by `vqzoo export`"
        )
    # name the file that holds the tensors (an export's model.safetensors, or the .ckpt)
    source = str(weights) if path.is_dir() else str(path)
    cls = resolve_class(class_path)
    if expected is not None and not (isinstance(cls, type) and issubclass(cls, expected)):
        raise CheckpointError(f"{source} holds a {class_path}, expected a {expected.__module__}.{expected.__qualname__}")
    try:
        model = _instantiate(cls, dict(config), overrides)
    except TypeError as err:
        raise CheckpointError(f"cannot rebuild {class_path} from {source}: {err}") from err
    _load_state(model, state, source)
    return model.eval()


def build_model(class_path: str, config: dict[str, Any]) -> L.LightningModule:
    """A fresh model of a trusted ``class_path`` from plain config (as in ``config.json``)."""
    cls = resolve_class(class_path)
    try:
        return _instantiate(cls, dict(config), {})
    except TypeError as err:
        raise CheckpointError(f"cannot build {class_path} from its config: {err}") from err


class LoadWeights(L.Callback):
    """Start ``fit`` from the weights of an export directory, a ``.ckpt`` or a Hub id.

    Fine-tuning a converted or exported model: the model section of the fit
    config must describe the same model (``vqzoo convert`` writes such a config
    as ``finetune.yaml`` beside the export). The weights are loaded in
    ``setup("fit")`` with every key and shape checked; optimizers start fresh.
    Resuming with ``--ckpt_path`` still wins: Lightning restores that
    checkpoint after ``setup``.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        source = load(self.path)
        state = source.state_dict()
        _load_state(pl_module, state, str(self.path))


def model_config(model: L.LightningModule) -> dict[str, Any]:
    """The constructor config of a model, as plain data (class paths + init args)."""
    from vqzoo.config import to_config

    hp = {k: v for k, v in model.hparams.items() if k not in ("_instantiator", "_class_path")}
    try:
        return to_config(hp)
    except TypeError as err:
        raise CheckpointError(f"cannot export {type(model).__name__}: {err}") from err


def export_model(
    model: L.LightningModule, out_dir: str | os.PathLike, overwrite: bool = True, use_ema: bool = True
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir``, atomically (all or nothing).

    A model with a weight EMA (``ema_decay``) is exported with the averaged
    weights as its weights (``use_ema=False``: the raw ones) and
    ``ema_decay: null``; ``config.json`` says which under ``"weights"``.
    """
    from safetensors.torch import save_file

    from vqzoo.io import atomic_dir

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    meta = {"class_path": f"{type(model).__module__}.{type(model).__qualname__}", "config": model_config(model)}
    state = model.state_dict()
    # Modules' extra state (e.g. a residual quantizer's dropout step) is plain data: config.json keeps it.
    extra = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    if extra:
        try:
            meta["extra_state"] = json.loads(json.dumps(extra))
        except TypeError as err:
            raise CheckpointError(f"cannot export {type(model).__name__}: its extra state is not plain data: {err}") from err
    state = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    ema = getattr(model, "weight_ema", None)
    if ema is not None:
        n = int(ema.num_updates)
        if use_ema:
            state = ema.export_state(state)
        else:
            state = {k: v for k, v in state.items() if not k.startswith("weight_ema.")}
            if ema.swapped:
                state.update({name: ema.shadow(name).detach().cpu().contiguous() for name in ema.names})
        meta["config"] = {**meta["config"], "ema_decay": None}
        meta["weights"] = (
            f"EMA of the training weights (decay {ema.decay}, {n} updates)" if use_ema
            else f"raw training weights (the EMA, decay {ema.decay}, was not exported)"
        )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out
