"""Straight-through vector quantization for spatial, multichannel and per-token layouts.

Layouts (the codebook always sees grouped vectors ``(G, N, D)``):

==============  =====================  ====================  =====================
layout          input ``z``            indices               groups
==============  =====================  ====================  =====================
spatial         (B, D, H, W)           (B, H, W)             G = 1
multichannel    (B, M·D, H, W)         (B, H, W, M)          G = 1, channel chunk
                                                             m = z[:, m·D:(m+1)·D]
per_token       (B, T, D)              (B, T)                G groups; token t uses
                                                             group t // (T / G)
==============  =====================  ====================  =====================

Loss (float32, autocast off)::

    loss = β · ‖z − sg(e)‖² + w_cb · ‖sg(z) − e‖² + Σ regularizers(e)

with β on the commitment term (never the legacy placement, docs/pitfalls.md #1) and
``w_cb = codebook_loss_weight`` (1 by default; the QG-VAE reference weights
commitment 1.0 and codebook 0.25, reached with ``beta=1.0,
codebook_loss_weight=0.25``). With EMA updates the codebook term is dropped:
the EMA moves the codes. Each ‖·‖² is a mean over elements. With cosine
distance, ``z`` and the codes are L2-normalised first and ``quantized`` holds
normalised codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.quantize.codebook import Codebook, Distance, Init, Update
from vqzoo.quantize.regularizers import OrthogonalRegularizer
from vqzoo.quantize.resets import CodebookReset
from vqzoo.config import Configurable

Layout = Literal["spatial", "multichannel", "per_token"]


class _VQLoss(torch.autograd.Function):
    """``(mean((x − e)²)`` as the commitment and codebook terms, computed once.

    Forward returns the shared value twice; backward sends
    ``g_commit · 2(x − e)/n`` to x only and ``g_codebook · 2(e − x)/n`` to e
    only, which is exactly the gradient of ``mse(x, sg(e))`` and
    ``mse(sg(x), e)`` without two passes over the features.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        diff = x - e
        value = diff.pow(2).mean()
        ctx.save_for_backward(diff)
        return value, value.clone()

    @staticmethod
    def backward(ctx, g_commit: torch.Tensor, g_codebook: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        (diff,) = ctx.saved_tensors
        scale = 2.0 / diff.numel()
        gx = diff * (g_commit * scale) if ctx.needs_input_grad[0] else None
        ge = diff * (-g_codebook * scale) if ctx.needs_input_grad[1] else None
        return gx, ge


class _StraightThrough(torch.autograd.Function):
    """Value of ``e``, identity gradient to ``x``, no gradient to ``e``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return e.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


@dataclass
class QuantizerOutput:
    """What :class:`VectorQuantizer` returns.

    ``quantized`` has the shape of the input with a straight-through gradient;
    ``loss`` is the scalar to add to the training objective; ``losses`` holds
    its named parts as they enter ``loss`` (so they sum to it).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class VectorQuantizer(Configurable, nn.Module):
    """The shared discrete bottleneck.

    Args:
        num_codes: K, codes per codebook (the vocabulary size).
        dim: D, dimension of one code.
        layout: ``"spatial"``, ``"multichannel"`` or ``"per_token"`` (see module doc).
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
        check_finite: reject NaN/Inf inputs with a ValueError (one host sync per call).
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
        check_finite: bool = True,
        max_chunk_bytes: int = 256 * 2**20,
    ) -> None:
        super().__init__()
        if layout not in ("spatial", "multichannel", "per_token"):
            raise ValueError(f"VectorQuantizer: layout must be spatial, multichannel or per_token, got {layout!r}")
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"VectorQuantizer: num_channels must be an integer >= 1, got {num_channels!r}")
        if layout != "multichannel" and num_channels != 1:
            raise ValueError(f"VectorQuantizer: num_channels={num_channels} needs layout='multichannel'")
        if layout != "per_token" and num_groups != 1:
            raise ValueError(f"VectorQuantizer: num_groups={num_groups} needs layout='per_token'")
        if beta < 0 or codebook_loss_weight < 0:
            raise ValueError("VectorQuantizer: beta and codebook_loss_weight must be >= 0")
        self.codebook = Codebook(
            num_codes, dim, num_groups=num_groups, distance=distance, update=update,
            decay=decay, eps=eps, init=init, max_chunk_bytes=max_chunk_bytes,
        )
        regularizers = list(regularizers or [])
        if regularizers and update == "ema":
            raise ValueError(
                "VectorQuantizer: codebook regularizers act through the codebook's gradient, "
                "but update='ema' codebooks have none; use update='gradient' or drop the regularizers"
            )
        self.regularizers = nn.ModuleList(regularizers)
        self.reset = reset
        if reset is not None:
            reset.attach(self.codebook)
        self.layout = layout
        self.num_channels = num_channels
        self.beta = beta
        self.codebook_loss_weight = codebook_loss_weight
        self.check_finite = check_finite

    # ------------------------------------------------------------------ properties
    @property
    def num_codes(self) -> int:
        return self.codebook.num_codes

    @property
    def vocab_size(self) -> int:
        return self.codebook.num_codes

    @property
    def dim(self) -> int:
        return self.codebook.dim

    @property
    def num_groups(self) -> int:
        return self.codebook.num_groups

    @property
    def feature_dim(self) -> int:
        """Channels (or token width) the quantizer expects in ``z``."""
        return self.dim * self.num_channels

    def extra_repr(self) -> str:
        return f"layout={self.layout}, num_channels={self.num_channels}, beta={self.beta}"

    # ------------------------------------------------------------------ layout plumbing
    def _check_input(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"VectorQuantizer expects a floating-point tensor, got {got}")
        if self.layout == "per_token":
            ok = z.dim() == 3 and z.shape[2] == self.dim and z.shape[1] % self.num_groups == 0
            expected = f"(B, T, {self.dim}) with T a multiple of num_groups={self.num_groups}"
        else:
            ok = z.dim() == 4 and z.shape[1] == self.feature_dim
            expected = f"(B, {self.feature_dim}, H, W)"
            if self.layout == "multichannel":
                expected += f" = {self.num_channels} channels x dim {self.dim}"
        if not ok:
            raise ValueError(
                f"VectorQuantizer ({self.layout}) expects z of shape {expected}, got {tuple(z.shape)}"
            )
        if z.numel() == 0:
            raise ValueError(f"VectorQuantizer received an empty tensor of shape {tuple(z.shape)}")
        # One pass: a float64 sum is finite iff every element is (no overflow from float32 inputs).
        if self.check_finite and not bool(torch.isfinite(z.detach().sum(dtype=torch.float64))):
            raise ValueError("VectorQuantizer received NaN or Inf values in z; expected finite features")

    def _group(self, z: torch.Tensor) -> torch.Tensor:
        """Layout tensor -> grouped vectors (G, N, D)."""
        D = self.dim
        if self.layout == "per_token":
            B, T, _ = z.shape
            G = self.num_groups
            return z.reshape(B, G, T // G, D).transpose(0, 1).reshape(G, -1, D)
        # (B, M·D, H, W) -> (B, H, W, M·D) -> (1, B·H·W·M, D); spatial is M = 1.
        return z.permute(0, 2, 3, 1).reshape(1, -1, D)

    def _ungroup(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Grouped vectors (G, N, D) -> the layout's tensor of ``shape``."""
        if self.layout == "per_token":
            B, T, D = shape
            G = self.num_groups
            return x.reshape(G, B, T // G, D).transpose(0, 1).reshape(B, T, D)
        B, C, H, W = shape
        # contiguous NCHW: a channels-last view would make every decoder conv after it
        # run channels-last, which is slower on CPU (convolution and GroupNorm backward)
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()

    def _index_shape(self, shape: torch.Size) -> tuple[int, ...]:
        if self.layout == "per_token":
            return (shape[0], shape[1])
        B, _, H, W = shape
        return (B, H, W, self.num_channels) if self.layout == "multichannel" else (B, H, W)

    def _group_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Layout indices -> grouped indices (G, N)."""
        if self.layout == "per_token":
            B, T = indices.shape
            G = self.num_groups
            return indices.reshape(B, G, T // G).transpose(0, 1).reshape(G, -1)
        return indices.reshape(1, -1)

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self._check_input(z)
        codebook = self.codebook
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = self._group(z.float())
            if self.training and not bool(codebook.initialized):
                codebook.init_from_data(x.detach())
            if codebook.distance == "cosine":
                x = F.normalize(x, dim=-1)
            codes = codebook.codes()
            idx = codebook.nearest(x.detach(), codes)
            e = codebook.embed(idx, codes)

            commitment, codebook_term = _VQLoss.apply(x, e)
            losses = {"commitment": self.beta * commitment}
            if codebook.update == "gradient":
                losses["codebook"] = self.codebook_loss_weight * codebook_term
            for reg in self.regularizers:
                losses[getattr(reg, "name", type(reg).__name__)] = reg(codebook.weight)
            loss = torch.stack(list(losses.values())).sum()

            if self.training:
                counts = codebook.histogram(idx)
                codebook.record_usage(counts)
                if self.reset is not None:
                    self.reset.observe(codebook, x.detach(), idx)
                if codebook.update == "ema":
                    codebook.ema_update(x.detach(), idx, counts)

            # Straight-through: the value is exactly e (so lookup(indices) reproduces it
            # bit for bit), the gradient is the identity to z, and no decoder gradient
            # reaches the codes (they learn from the codebook term or the EMA only).
            quantized = _StraightThrough.apply(x, e)
            quantized = self._ungroup(quantized, z.shape).to(z.dtype)
        indices = self._ungroup_indices(idx, z.shape)
        return QuantizerOutput(quantized=quantized, indices=indices, loss=loss, losses=losses)

    def _ungroup_indices(self, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.layout == "per_token":
            B, T = shape[0], shape[1]
            G = self.num_groups
            return idx.reshape(G, B, T // G).transpose(0, 1).reshape(B, T)
        return idx.reshape(self._index_shape(shape))

    # ------------------------------------------------------------------ decoding
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ``indices`` in the layout's feature shape (no gradient to z).

        spatial (B, H, W) -> (B, D, H, W); multichannel (B, H, W, M) -> (B, M·D, H, W);
        per_token (B, T) -> (B, T, D).
        """
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"VectorQuantizer.lookup expects integer indices, got {got}")
        expected_dims = {"spatial": 3, "multichannel": 4, "per_token": 2}[self.layout]
        if indices.dim() != expected_dims:
            raise ValueError(
                f"VectorQuantizer.lookup ({self.layout}) expects indices with {expected_dims} dims "
                f"{ {'spatial': '(B, H, W)', 'multichannel': '(B, H, W, M)', 'per_token': '(B, T)'}[self.layout]}, "
                f"got shape {tuple(indices.shape)}"
            )
        if self.layout == "multichannel" and indices.shape[-1] != self.num_channels:
            raise ValueError(
                f"VectorQuantizer.lookup expects M={self.num_channels} channel indices in the last "
                f"dimension, got shape {tuple(indices.shape)}"
            )
        if self.layout == "per_token" and indices.shape[1] % self.num_groups != 0:
            raise ValueError(
                f"VectorQuantizer.lookup expects T a multiple of num_groups={self.num_groups}, "
                f"got shape {tuple(indices.shape)}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(
                f"VectorQuantizer.lookup expects indices in [0, {self.num_codes}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        indices = indices.long()
        idx = self._group_indices(indices)
        e = self.codebook.embed(idx)
        if self.layout == "per_token":
            B, T = indices.shape
            return self._ungroup(e, torch.Size((B, T, self.dim)))
        B, H, W = indices.shape[:3]
        return self._ungroup(e, torch.Size((B, self.feature_dim, H, W)))

    # ------------------------------------------------------------------ training hooks
    def histogram(self, indices: torch.Tensor) -> torch.Tensor:
        """Counts (G, K) of layout indices, for codebook usage and perplexity metrics."""
        return self.codebook.histogram(self._group_indices(indices.long()))

    def after_backward(self) -> None:
        """Call after each backward pass that reaches the codebook (gradient resets read grads)."""
        if self.reset is not None:
            self.reset.after_backward(self.codebook)

    def after_step(self) -> int:
        """Call after each optimizer step; applies a due reset. Returns codes moved."""
        if self.reset is None:
            return 0
        return self.reset.after_step(self.codebook)
