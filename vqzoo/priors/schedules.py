"""MaskGIT mask schedules: the fraction of tokens still masked at ratio ``r``.

Formulas follow google-research/maskgit ``libml/mask_schedule.py`` (see
docs/reference-implementations.md "MaskGIT"), with ``r`` in [0, 1] the progress through
decoding (or, in training, a uniform draw) and ``N`` the number of tokens that
were unknown at the start:

==========  ==============================  ============================
name        reference name                  mask ratio
==========  ==============================  ============================
cosine      ``cosine``                      ``cos(pi/2 * r)``
linear      ``uniform``                     ``1 - r``
square      ``pow2``                        ``1 - r**2``
cubic       ``pow3``                        ``1 - r**3``
log         ``log``                         ``-log2(r) / log2(N)``
exp         ``exp``                         ``1 - 2**(-log2(N) * (1 - r))``
==========  ==============================  ============================

Every result is clipped to ``[1e-6, 1]`` as in the reference, so the ratio is
never exactly zero (the log schedule's ``r = 0`` gives ``+inf`` and clips to 1).

Inputs may be Python floats (returns a float, computed in float64) or tensors
(computed in the tensor's floating dtype, so float64 tensors give float64
results).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor

__all__ = ["MASK_SCHEDULES", "MaskSchedule", "mask_ratio"]

MaskSchedule = Literal["cosine", "linear", "square", "cubic", "log", "exp"]

#: Accepted schedule names (reference aliases ``uniform``, ``pow2``, ``pow3`` too).
MASK_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "square", "cubic", "log", "exp")
_ALIASES = {"uniform": "linear", "pow2": "square", "pow3": "cubic"}

_MIN_RATIO = 1e-6


@overload
def mask_ratio(r: float, method: str = "cosine", num_tokens: int | None = None) -> float: ...


@overload
def mask_ratio(r: Tensor, method: str = "cosine", num_tokens: int | None = None) -> Tensor: ...


def mask_ratio(
    r: float | Tensor, method: str = "cosine", num_tokens: int | Tensor | None = None
):
    """Masked fraction at progress ``r`` for schedule ``method``.

    Args:
        r: progress in [0, 1], a float or a tensor of any shape.
        method: one of :data:`MASK_SCHEDULES` (or a reference alias).
        num_tokens: ``N``, the number of initially unknown tokens; required by
            the ``log`` and ``exp`` schedules, ignored otherwise. A tensor
            gives one ``N`` per element of ``r`` (broadcast).
    """
    method = _ALIASES.get(method, method)
    if method not in MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {method!r}; expected one of {MASK_SCHEDULES}")
    log2n: float | Tensor = 0.0
    if method in ("log", "exp"):
        if num_tokens is None:
            raise ValueError(f"the {method!r} schedule needs num_tokens (N)")
        if isinstance(num_tokens, Tensor):
            if bool((num_tokens < 2).any()):
                raise ValueError(
                    f"the {method!r} schedule needs num_tokens >= 2 (log2(N) must be positive), "
                    f"got a minimum of {int(num_tokens.min())}"
                )
            log2n = torch.log2(num_tokens.to(torch.float64))
        else:
            if num_tokens < 2:
                raise ValueError(
                    f"the {method!r} schedule needs num_tokens >= 2 (log2(N) must be positive), "
                    f"got {num_tokens}"
                )
            log2n = math.log2(num_tokens)
    is_float = not isinstance(r, Tensor)
    t = torch.as_tensor(r, dtype=torch.float64) if is_float else r
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if isinstance(log2n, Tensor):
        log2n = log2n.to(device=t.device, dtype=t.dtype)
    if method == "cosine":
        out = torch.cos(t * (math.pi / 2))
    elif method == "linear":
        out = 1.0 - t
    elif method == "square":
        out = 1.0 - t**2
    elif method == "cubic":
        out = 1.0 - t**3
    elif method == "log":
        out = -torch.log2(t) / log2n
    else:  # exp
        out = 1.0 - torch.exp2(-log2n * (1.0 - t))
    out = out.clamp(_MIN_RATIO, 1.0)
    return float(out) if is_float else out
