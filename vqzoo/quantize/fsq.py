"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the ``d = len(levels)`` dimensions is bounded and rounded to one of
``L_i`` values; the implicit codebook is the grid of all ``Π L_i`` points, so
nothing can collapse and there is no auxiliary loss. With ``h_i = (L_i − 1)(1
− ε)/2``, ``o_i = 0.5`` for even ``L_i`` (else 0) and ``s_i = atanh(o_i / h_i)``::

    bound(z)_i = tanh(z_i + s_i) · h_i − o_i          ∈ (−h_i − o_i, h_i − o_i)
    ẑ_i        = round(bound(z)_i) / ⌊L_i / 2⌋       ∈ [−1, 1]

``round`` has a straight-through gradient, so ``∂ẑ/∂z`` is the tanh's. The
shift ``s_i`` makes ``bound(0) = 0``; the paper's listing writes ``tan`` where
``atanh`` is meant (the two differ by < 1e-3 at ``L = 4``, ``ε = 1e-3``).
Even levels then round to ``{−L/2, …, L/2 − 1}``, odd ones to
``{−(L−1)/2, …, (L−1)/2}``: exactly ``L_i`` values each. For ``L_i = 2``,
``o_i > h_i`` and no shift reaches ``bound(0) = 0``; the ratio is clamped to
``1 − ε`` (``bound(0)`` then sits just below the upper of the two values).

The index of a position is the mixed-radix number of its digits ``k_i =
round(bound(z)_i) + ⌊L_i/2⌋ ∈ [0, L_i)``: ``index = Σ_i k_i · Π_{j<i} L_j``,
a bijection between ``[0, Π L_i)`` and the grid that :meth:`lookup` inverts.

Everything runs in float32 with autocast off: under bf16 the tanh and the
rounding would merge neighbouring levels (vector-quantize-pytorch issue 114
reports about half the codes unused at bf16).
"""

from __future__ import annotations

import math

import torch

from vqzoo.quantize.base import (
    GroupedLinear,
    Layout,
    Quantizer,
    QuantizerOutput,
    check_num_codes,
    zero_loss,
)


class _BoundRound(torch.autograd.Function):
    """``(round(bound(h)) / ⌊L/2⌋, round(bound(h)))`` with the straight-through gradient, fused.

    One tanh, one multiply-add and one rounding forward; three multiplies
    backward (``g · c · (1 − t²)`` with ``c = h_L / ⌊L/2⌋``). The per-level
    constants come expanded to the shape of ``h``: broadcasting a 4-wide last
    axis is about 3x slower on the CPU than a same-shape operation.
    """

    @staticmethod
    def forward(ctx, h, shift, half_l, neg_offset, inv_half_width, grad_scale):  # noqa: ANN001, ANN205
        t = torch.tanh(h + shift)
        rounded = torch.addcmul(neg_offset, t, half_l).round_()
        ctx.save_for_backward(t, grad_scale)
        ctx.mark_non_differentiable(rounded)
        return rounded * inv_half_width, rounded

    @staticmethod
    def backward(ctx, g, _):  # noqa: ANN001, ANN205
        t, c = ctx.saved_tensors
        gc = g * c
        return torch.addcmul(gc, gc, t * t, value=-1.0), None, None, None, None, None


class FiniteScalarQuantizer(Quantizer):
    """FSQ over every layout; one index per position from a vocabulary of ``Π levels``.

    Args:
        levels: ``L_i >= 2`` values per quantized dimension, e.g. ``[8, 5, 5, 5]``
            (about 2^10 codes, the paper's choice for that size).
        dim: width of one vector in ``z``. ``None`` means ``len(levels)``.
            Any other width gets learned per-group linear maps in (dim -> d) and
            out (d -> dim) around the grid; ``quantized`` and :meth:`lookup`
            then return the out-projection of the grid point.
        layout, num_channels, num_groups, check_inputs: see :class:`~vqzoo.quantize.Quantizer`.
            With ``num_groups > 1`` (per-token layout) the groups share the grid;
            each has its own projections (when there are any) and its own usage row.
        eps: the ``ε`` that keeps ``bound`` strictly inside the outer levels.
    """

    def __init__(
        self,
        levels: list[int],
        dim: int | None = None,
        layout: Layout = "spatial",
        num_channels: int = 1,
        num_groups: int = 1,
        check_inputs: bool = True,
        eps: float = 1e-3,
    ) -> None:
        name = type(self).__name__
        levels = list(levels)
        if not levels or any(not isinstance(L, int) or isinstance(L, bool) or L < 2 for L in levels):
            raise ValueError(f"{name}: levels must be a non-empty list of integers >= 2, got {levels!r}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"{name}: eps must lie in (0, 1), got {eps}")
        num_codes = math.prod(levels)
        check_num_codes(name, num_codes, f"levels={levels}")
        super().__init__(
            len(levels) if dim is None else dim, layout=layout, num_channels=num_channels, num_groups=num_groups,
            check_inputs=check_inputs,
        )
        self.levels = levels
        self.eps = eps
        self._num_codes = num_codes
        d = len(levels)
        L = torch.tensor(levels, dtype=torch.float32)
        half_l = (L - 1) * (1 - eps) / 2
        offset = torch.where(torch.tensor(levels) % 2 == 0, 0.5, 0.0)
        # persistent=False: derived from ``levels``, so they need not (and should not) enter checkpoints
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        # L = 2 has o > h (0.5 > 0.4995): no shift gives bound(0) = 0, so clamp (module doc)
        self.register_buffer("_shift", torch.atanh((offset / half_l).clamp(max=1 - eps)), persistent=False)
        self.register_buffer("_half_width", torch.tensor([L // 2 for L in levels], dtype=torch.float32), persistent=False)
        basis = [math.prod(levels[:i]) for i in range(d)]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        # mixed-radix index as one matrix product of the rounded values (exact while K < 2^53)
        self._index_dtype = torch.float32 if num_codes < 2**24 else torch.float64
        self.register_buffer("_basis_float", torch.tensor(basis, dtype=torch.float64), persistent=False)
        self._index_offset = float(sum((L // 2) * b for L, b in zip(levels, basis)))  # Σ ⌊L_i/2⌋ · basis_i
        self._expanded: dict[tuple, tuple[torch.Tensor, ...]] = {}
        if self.dim != d:
            self.project_in: GroupedLinear | None = GroupedLinear(num_groups, self.dim, d)
            self.project_out: GroupedLinear | None = GroupedLinear(num_groups, d, self.dim)
        else:
            self.project_in = self.project_out = None

    @property
    def num_codes(self) -> int:
        return self._num_codes

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, {super().extra_repr()}"

    def describe_dim(self) -> str:
        if self.project_in is None:
            return f"one channel per level: levels={self.levels}"
        return f"dim {self.dim}, projected to levels={self.levels}"

    # ------------------------------------------------------------------ the grid
    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """``tanh(h + s) · h_L − o``: each dimension inside its level range (module doc)."""
        return torch.tanh(h + self._shift) * self._half_l - self._offset

    def digits_to_grid(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits ``k_i ∈ [0, L_i)`` -> grid values in [−1, 1]."""
        return (digits.float() - self._half_width) / self._half_width

    def indices_to_digits(self, indices: torch.Tensor) -> torch.Tensor:
        """Mixed-radix indices (...) -> digits (..., d)."""
        return torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels

    def digits_to_indices(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits * self._basis).sum(-1)

    # ------------------------------------------------------------------ quantization
    def _constants(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-level constants expanded to ``h``'s shape, cached per shape (see :class:`_BoundRound`)."""
        key = (tuple(h.shape), h.device)
        cached = self._expanded.get(key)
        if cached is None or cached[0].device != h.device:
            base = (self._shift, self._half_l, -self._offset, 1.0 / self._half_width, self._half_l / self._half_width)
            cached = tuple(c.expand(h.shape).contiguous() for c in base)
            if len(self._expanded) > 8:  # a few shapes (train, val, last batch) in practice
                self._expanded.clear()
            self._expanded[key] = cached
        return cached

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        self._expanded.clear()  # cached constants follow the buffers to a new device or dtype
        return super()._apply(fn, recurse)

    def quantize_vectors(self, x: torch.Tensor) -> QuantizerOutput:
        h = self.project_in(x) if self.project_in is not None else x
        # The value is the rounded grid point exactly (so lookup reproduces it); the
        # gradient of round is the identity, so dẑ/dz is the tanh's.
        grid, rounded = _BoundRound.apply(h, *self._constants(h))
        if self.num_codes < 2**53:
            basis = self._basis_float.to(self._index_dtype)
            indices = (rounded.to(self._index_dtype) @ basis + self._index_offset).long()
        else:
            indices = self.digits_to_indices((rounded + self._half_width).long())
        quantized = self.project_out(grid) if self.project_out is not None else grid
        return QuantizerOutput(quantized=quantized, indices=indices, loss=zero_loss(x), losses={})

    def lookup_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        grid = self.digits_to_grid(self.indices_to_digits(codes))
        return self.project_out(grid) if self.project_out is not None else grid
