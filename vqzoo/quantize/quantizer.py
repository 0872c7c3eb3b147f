"""Vector quantization with a learned codebook, for every layout of :mod:`vqzoo.quantize.base`.

Loss (float32, autocast off)::

    loss = β · ‖z − sg(e)‖² + w_cb · ‖sg(z) − e‖² + Σ regularizers(e)

with β on the commitment term (never the legacy placement,
docs/pitfalls.md #1) and ``w_cb = codebook_loss_weight`` (1 by default; the QG-VAE
reference weights commitment 1.0 and codebook 0.25, reached with
``beta=1.0, codebook_loss_weight=0.25``). With EMA updates the codebook term
is dropped: the EMA moves the codes. Each ‖·‖² is a mean over elements. With
cosine distance, ``z`` and the codes are L2-normalised first and
``quantized`` holds normalised codes.

Gradient to ``z`` (``gradient``):

* ``"straight_through"``: the identity (VQ-VAE).
* ``"rotation"``: the rotation trick (Fifty et al. 2024, "Restructuring
  Vector Quantization with the Rotation Trick"). With ``ẑ = z/‖z‖``,
  ``ê = e/‖e‖``, ``r = (ẑ + ê)/‖ẑ + ê‖``, ``R = I − 2 r rᵀ + 2 ê ẑᵀ`` (the
  rotation taking ``ẑ`` to ``ê`` in their plane) and ``λ = ‖e‖/‖z‖``, the
  output is ``λ R z = e`` with ``λ`` and ``R`` treated as constants, so
  ``∂L/∂z = λ Rᵀ ∂L/∂e = λ (g − 2 r (rᵀg) + 2 ẑ (êᵀg))``. The forward value
  is ``e`` itself, bit for bit; no D × D matrix is formed.

Either way no decoder gradient reaches the codes: they learn from the codebook
term (or the EMA) only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.quantize.base import Layout, Quantizer, QuantizerOutput
from vqzoo.quantize.codebook import Codebook, Distance, Init, Parameterization, Update
from vqzoo.quantize.regularizers import OrthogonalRegularizer
from vqzoo.quantize.resets import CodebookReset

__all__ = ["Layout", "QuantizerOutput", "VectorQuantizer"]

Gradient = Literal["straight_through", "rotation"]


class _VQLoss(torch.autograd.Function):
    """``mean((x − e)²)`` as the commitment and codebook terms, computed once, and the
    straight-through output.

    Forward returns ``(quantized, commitment, codebook)``: ``quantized`` is ``e`` bit
    for bit (so ``lookup(indices)`` reproduces it exactly) and the two loss values are
    the shared mean square. Backward sends ``g_q + g_commit · 2(x − e)/n`` to x (the
    identity of the straight-through estimator plus the commitment gradient, in one
    pass) and ``g_codebook · 2(e − x)/n`` to e, exactly the gradients of
    ``mse(x, sg(e))``, ``mse(sg(x), e)`` and ``x + sg(e − x)``. With ``straight=False``
    (the rotation trick) ``quantized`` is not produced and gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, e: torch.Tensor, straight: bool) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        diff = x - e
        flat = diff.reshape(-1)
        value = torch.dot(flat, flat) / flat.numel()  # one pass, no (x − e)² temporary
        ctx.save_for_backward(diff)
        ctx.straight = straight
        quantized = e.detach().clone() if straight else e.new_empty(0)
        return quantized, value, value.clone()

    @staticmethod
    def backward(ctx, g_q: torch.Tensor, g_commit: torch.Tensor, g_codebook: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        (diff,) = ctx.saved_tensors
        scale = 2.0 / diff.numel()
        gx = ge = None
        if ctx.needs_input_grad[0]:
            if ctx.straight:  # autograd hands an unused output a zero gradient
                gx = torch.addcmul(g_q, diff, g_commit * scale)
            else:
                gx = diff * (g_commit * scale)
        if ctx.needs_input_grad[1]:
            ge = diff * (-g_codebook * scale)
        return gx, ge, None


class _RotationTrick(torch.autograd.Function):
    """Value of ``e``; gradient ``λ Rᵀ g`` to ``x`` (module doc), none to ``e``."""

    # ‖z‖ below this is treated as this, so a zero vector gets a finite (large) scale
    eps = 1e-6

    @staticmethod
    def forward(ctx, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, e)
        return e.detach().clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        x, e = ctx.saved_tensors
        x_norm = x.norm(dim=-1, keepdim=True).clamp_min(_RotationTrick.eps)
        e_norm = e.norm(dim=-1, keepdim=True)
        x_hat, e_hat = x / x_norm, e / e_norm.clamp_min(_RotationTrick.eps)
        r = F.normalize(x_hat + e_hat, dim=-1)
        rg = (r * g).sum(-1, keepdim=True)
        eg = (e_hat * g).sum(-1, keepdim=True)
        return (e_norm / x_norm) * (g - 2.0 * r * rg + 2.0 * x_hat * eg), None


class VectorQuantizer(Quantizer):
    """Nearest-code quantization against a learned :class:`Codebook`.

    Args:
        num_codes: K, codes per codebook (the vocabulary size).
        dim: D, dimension of one code.
        layout: ``"spatial"``, ``"multichannel"`` or ``"per_token"`` (see :mod:`vqzoo.quantize.base`).
        num_channels: M, quantized chunks per position in the multichannel layout.
        num_groups: G, independent codebooks in the per-token layout.
        beta: weight of the commitment term ‖z − sg(e)‖².
        codebook_loss_weight: weight of the codebook term ‖sg(z) − e‖² (gradient updates only).
        distance: ``"l2"`` or ``"cosine"``.
        update: ``"gradient"`` or ``"ema"``.
        decay: EMA decay.
        eps: EMA Laplace smoothing.
        init: codebook initialisation (see :class:`Codebook`).
        regularizers: codebook regularizers, e.g. ``[OrthogonalRegularizer(10)]``.
        reset: a :class:`DeadCodeReset` or :class:`GradientMagnitudeReset`.
        gradient: ``"straight_through"`` or ``"rotation"`` (module doc).
        parameterization: ``"direct"`` or ``"simvq"`` (a frozen random codebook
            times a learned linear map; see :class:`Codebook`).
        check_inputs: validate ``z`` in forward (shape, dtype and, with
            ``check_finite``, finiteness: one host sync). Tokenizers switch it off.
        check_finite: the finiteness part of that check.
        max_chunk_bytes: memory budget of the chunked nearest-code search.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        layout: Layout = "spatial",
        num_channels: int = 1,
        num_groups: int = 1,
        beta: float = 0.25,
        codebook_loss_weight: float = 1.0,
        distance: Distance = "l2",
        update: Update = "gradient",
        decay: float = 0.99,
        eps: float = 1e-5,
        init: Init = "uniform_inv_k",
        regularizers: list[OrthogonalRegularizer] | None = None,
        reset: CodebookReset | None = None,
        gradient: Gradient = "straight_through",
        parameterization: Parameterization = "direct",
        check_inputs: bool = True,
        check_finite: bool = True,
        max_chunk_bytes: int = 256 * 2**20,
    ) -> None:
        self_name = type(self).__name__
        super().__init__(dim, layout=layout, num_channels=num_channels, num_groups=num_groups, check_inputs=check_inputs)
        if beta < 0 or codebook_loss_weight < 0:
            raise ValueError(f"{self_name}: beta and codebook_loss_weight must be >= 0")
        if gradient not in ("straight_through", "rotation"):
            raise ValueError(f"{self_name}: gradient must be 'straight_through' or 'rotation', got {gradient!r}")
        self.codebook = Codebook(
            num_codes, dim, num_groups=num_groups, distance=distance, update=update,
            decay=decay, eps=eps, init=init, max_chunk_bytes=max_chunk_bytes, parameterization=parameterization,
        )
        regularizers = list(regularizers or [])
        if regularizers and update == "ema":
            raise ValueError(
                "VectorQuantizer: codebook regularizers act through the codebook's gradient, "
                "but update='ema' codebooks have none; use update='gradient' or drop the regularizers"
            )
        if reset is not None and parameterization == "simvq":
            raise ValueError(
                "VectorQuantizer: parameterization='simvq' keeps the stored codes frozen (every code moves "
                "through the learned map, so none is dead); drop the reset"
            )
        self.regularizers = nn.ModuleList(regularizers)
        self.reset = reset
        if reset is not None:
            reset.attach(self.codebook)
        self.beta = beta
        self.codebook_loss_weight = codebook_loss_weight
        self.gradient = gradient
        self.check_finite = check_finite

    # ------------------------------------------------------------------ properties
    @property
    def num_codes(self) -> int:
        return self.codebook.num_codes

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, gradient={self.gradient}"

    # ------------------------------------------------------------------ quantization
    def quantize_vectors(self, x: torch.Tensor) -> QuantizerOutput:
        codebook = self.codebook
        # Only data-initialised codebooks can be uninitialised: the others never read the
        # flag, so their training forward makes no host sync for it.
        if self.training and codebook.init == "data" and not bool(codebook.initialized):
            codebook.init_from_data(x.detach())
        if codebook.distance == "cosine":
            x = F.normalize(x, dim=-1)
        codes = codebook.codes()
        idx = codebook.nearest(x.detach(), codes)
        e = codebook.embed(idx, codes)

        straight = self.gradient != "rotation"
        quantized, commitment, codebook_term = _VQLoss.apply(x, e, straight)
        losses = {"commitment": self.beta * commitment}
        if codebook.update == "gradient":
            losses["codebook"] = self.codebook_loss_weight * codebook_term
        for reg in self.regularizers:
            losses[getattr(reg, "name", type(reg).__name__)] = reg(codebook.vectors())
        loss = torch.stack(list(losses.values())).sum()

        if self.training:
            counts = codebook.histogram(idx)
            codebook.record_usage(counts)
            if self.reset is not None:
                self.reset.observe(codebook, x.detach(), idx)
            if codebook.update == "ema":
                codebook.ema_update(x.detach(), idx, counts)

        # The value is exactly e (so lookup(indices) reproduces it bit for bit); the
        # gradient is the identity or the rotation trick's, and never reaches the codes.
        if not straight:
            quantized = _RotationTrick.apply(x, e)
        return QuantizerOutput(quantized=quantized, indices=idx, loss=loss, losses=losses)

    def lookup_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook.embed(codes)

    # ------------------------------------------------------------------ training hooks
    def after_backward(self) -> None:
        if self.reset is not None:
            self.reset.after_backward(self.codebook)

    def after_step(self) -> int:
        if self.reset is None:
            return 0
        return self.reset.after_step(self.codebook)
