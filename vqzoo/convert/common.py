"""What every converter shares: reading peer files safely, matching keys, writing the export.

A converter is three pure steps: read the peer's config and state dict,
translate the config into a vqzoo constructor config and build the model,
then move every peer tensor to its vqzoo name through a *key table*. The
table is derived from the vqzoo model (each vqzoo key names its one peer key),
so the checks are exact in both directions:

* a peer key the table does not know (and the converter does not drop on
  purpose) is *unexpected*;
* a table entry the checkpoint lacks is *missing*;
* a tensor whose shape differs from the one the config implies is a *shape
  mismatch*.

All three are reported together, the first few of each by name with shapes,
in a :class:`ConversionError`. Keys that exist only in vqzoo (codebook usage
counters, the generator-step counter, LeCam EMAs, ...) keep the fresh model's
values.

Reading old checkpoints safely. Lightning checkpoints of the taming /
latent-diffusion era pickle more than tensors (callback classes as dict keys,
OmegaConf hyperparameters, numpy scalars), which ``torch.load(weights_only=True)``
refuses. We first try exactly that; if it refuses, we unpickle again with an
unpickler that resolves only tensor-rebuild functions and plain containers
and turns *every other* global into an inert placeholder that records its
name and runs nothing. Nothing from the file is imported or called, so this
is as safe as ``weights_only`` while still reaching ``state_dict``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqzoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, build_model, load
from vqzoo.io import atomic_dir, sha256_file

__all__ = [
    "ConversionError",
    "KeyTable",
    "UnsupportedError",
    "map_state",
    "read_torch_checkpoint",
    "write_export",
]


class ConversionError(CheckpointError):
    """A peer checkpoint or config that does not convert, with the reason."""


class UnsupportedError(ConversionError):
    """A peer feature vqzoo cannot represent (refused rather than approximated)."""


# ---------------------------------------------------------------------- safe reading
class _Opaque:
    """Placeholder for a pickled global outside the allowlist: keeps its name and arguments, runs nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<unloaded {self.qualname}>"

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        # A placeholder for a function's result may itself be called (e.g. getattr(obj, "m")());
        # that too only makes a placeholder.
        return type(self)(*args)

    # Placeholders may be dict keys (old Lightning keyed callback states by class).
    def __hash__(self) -> int:
        return id(self)


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Opaque,), {"qualname": f"{module}.{name}"})


def _restricted_pickle_module() -> types.ModuleType:
    module = types.ModuleType("vqzoo_restricted_pickle")
    module.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    module.loads = lambda b, **kw: _RestrictedUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
    return module


def read_torch_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Load a peer ``.ckpt`` / ``.bin`` without running code from it; returns the top-level dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    errors = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, AttributeError, KeyError,
              IndexError, TypeError)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
        except errors as err:
            raise ConversionError(f"{path} is not a readable {what} (corrupt or truncated?): {err}") from err
    except errors as err:
        raise ConversionError(f"{path} is not a readable {what} (corrupt or truncated?): {err}") from err
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a dict at the top of the {what}, got {type(obj).__name__}")
    return obj


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConversionError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err


# ---------------------------------------------------------------------- key tables
@dataclass
class KeyTable:
    """Peer key -> (vqzoo key, shape the peer tensor must have, function peer tensor -> vqzoo tensor)."""

    entries: dict[str, tuple[str, tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]]] = field(default_factory=dict)

    def add(self, peer_key: str, vq_key: str, peer_shape: Iterable[int],
            to_vqzoo: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        if peer_key in self.entries:
            raise RuntimeError(f"two vqzoo keys map to the peer key {peer_key}")  # a converter bug
        self.entries[peer_key] = (vq_key, tuple(peer_shape), to_vqzoo)


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else ()


def map_state(
    table: KeyTable,
    peer_state: dict[str, Any],
    model: torch.nn.Module,
    source: str,
    dropped: Callable[[str], bool] = lambda k: False,
) -> dict[str, torch.Tensor]:
    """The model's full state dict with every table entry filled from ``peer_state``.

    Raises :class:`ConversionError` naming the first missing, unexpected and
    mismatched keys (with shapes) when the checkpoint does not fit the config.
    """
    missing = [k for k in table.entries if k not in peer_state]
    unexpected = [k for k in peer_state if k not in table.entries and not dropped(k)]
    wrong = [
        f"{k}: checkpoint {_shape(peer_state[k])} vs config {shape}"
        for k, (_, shape, _) in table.entries.items()
        if k in peer_state and _shape(peer_state[k]) != shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), first: " + "; ".join(wrong[:5]))
        if missing:
            parts.append(
                f"{len(missing)} key(s) missing from the checkpoint, first: "
                + ", ".join(f"{k} {table.entries[k][1]}" for k in missing[:5])
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected key(s), first: "
                + ", ".join(f"{k} {_shape(peer_state[k])}" for k in unexpected[:5])
            )
        raise ConversionError(
            f"{source} does not fit its config (is the config the one this checkpoint was trained with?): "
            + " | ".join(parts)
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for peer_key, (vq_key, _, convert) in table.entries.items():
        value = convert(peer_state[peer_key].detach()).to(state[vq_key].dtype)
        if value.shape != state[vq_key].shape:  # a converter bug, not a user error
            raise RuntimeError(f"{peer_key} -> {vq_key}: {tuple(value.shape)} vs {tuple(state[vq_key].shape)}")
        state[vq_key] = value.contiguous()
    return state


# ---------------------------------------------------------------------- output
def check_request(out: str | os.PathLike, overwrite: bool, quantizer_loss: str) -> Path:
    """The checks every converter makes before reading anything: the loss convention and the output path."""
    if quantizer_loss not in ("vqzoo", "taming"):
        raise ValueError(f"quantizer_loss must be 'vqzoo' or 'taming', got {quantizer_loss!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    return out


def write_export(
    out: str | os.PathLike,
    class_path: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    converted_from: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a vqzoo export directory atomically and check that it loads back exactly.

    Besides ``model.safetensors`` and ``config.json`` (with a ``converted_from``
    entry beside ``class_path`` and ``config``), the directory gets
    ``finetune.yaml``: the model section of a ``vqzoo fit`` config plus the
    :class:`~vqzoo.checkpoint.LoadWeights` callback that starts from these
    weights. Nothing is left at ``out`` when any step fails.
    """
    import yaml
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        meta = {"class_path": class_path, "config": config, "converted_from": converted_from}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        finetune = {
            "model": {"class_path": class_path, "init_args": config},
            "trainer": {"callbacks": [{"class_path": "vqzoo.checkpoint.LoadWeights",
                                       "init_args": {"path": str(out.resolve())}}]},
        }
        header = (
            f"# Fine-tune the model converted from {converted_from.get('format', 'a peer checkpoint')}.\n"
            "# Add a data section and trainer options, e.g.\n"
            f"#   vqzoo fit --config {out / 'finetune.yaml'} --config data.yaml\n"
            "# Differences from the peer's own training are listed under converted_from in config.json.\n"
        )
        (tmp / "finetune.yaml").write_text(header + yaml.safe_dump(finetune, sort_keys=False))
        reloaded = load(tmp)
        for k, v in reloaded.state_dict().items():
            if not torch.equal(v, state[k]):
                raise ConversionError(f"the written export does not reload {k} exactly")  # should never happen
    return out


def build(class_path: str, config: dict[str, Any]) -> torch.nn.Module:
    """The vqzoo model a converted config describes (random weights)."""
    return build_model(class_path, config)
