"""Constructor configs of nested parts, recorded at construction.

A model keeps its constructor arguments as hyperparameters so that a
checkpoint or an export can rebuild it. Its nested parts (quantizer,
regularizers, resets, discriminator) are objects, not plain data; a part that
subclasses :class:`Configurable` remembers the arguments it was built with, and
:func:`to_config` turns it back into the ``{"class_path", "init_args"}`` form
LightningCLI reads. So a model built in Python saves, exports and reloads
exactly like one built from a YAML file, without relying on how LightningCLI
happened to call the constructor.

This module imports nothing from vqzoo (it sits below every other room).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["Configurable", "to_config"]


class Configurable:
    """Mixin: instances remember their constructor arguments (``init_config``).

    Only the most derived class's arguments are kept: a subclass that calls
    ``super().__init__(...)`` does not overwrite what its caller passed.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            if "_init_config" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))  # self
                for name, p in signature.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        arguments.update(arguments.pop(name, {}))
                    elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                        arguments.pop(name, None)
                object.__setattr__(self, "_init_config", (type(self), arguments))
            init(self, *args, **kw)

        recording_init._records_config = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[method-assign]

    @property
    def init_config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` of this object, as plain data."""
        return to_config(self)


def to_config(value: Any) -> Any:
    """Plain data for ``value``: Configurable objects become ``{"class_path", "init_args"}``, recursively.

    Raises ``TypeError`` naming the value when something cannot be expressed
    as configuration (an arbitrary object or a function).
    """
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_config(v) for k, v in value.items()}
    recorded = getattr(value, "__dict__", {}).get("_init_config")
    if recorded is not None:
        cls, arguments = recorded
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {k: to_config(v) for k, v in arguments.items()},
        }
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        return to_config(value.as_dict())
    raise TypeError(
        f"{value!r} ({type(value).__name__}) cannot be saved as configuration: only plain values, lists, dicts "
        "and vqzoo parts (vqzoo.config.Configurable) can"
    )
