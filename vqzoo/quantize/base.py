"""The quantizer contract and the layout plumbing every quantizer shares.

Every quantizer of :mod:`vqzoo.quantize` works on *grouped vectors*
``(G, N, D)`` and leaves the layouts to this module. One ``einops`` pattern
per layout says how the feature map becomes vectors and how indices come back:

==============  ===============  =======================  ====================
layout          ``z``            indices (R levels)       grouped vectors
==============  ===============  =======================  ====================
spatial         ``b d h w``      ``b h w`` (``b h w r``)  ``1 (b h w) d``
multichannel    ``b (m d) h w``  ``b h w m``              ``1 (b h w m) d``
                                 (``b h w (m r)``)
per_token       ``b (g t) d``    ``b (g t)``              ``g (b t) d``
                                 (``b (g t) r``)
==============  ===============  =======================  ====================

So a multichannel position holds ``M`` consecutive chunks of ``D`` channels,
and in the per-token layout token ``t`` belongs to group ``t // (T / G)``.
Quantizers with several index levels (residual quantization, ``R`` levels)
add the level as the last index axis; in the multichannel layout the levels of
one chunk are consecutive (``(m r)``), so indices keep one trailing channel
axis as the priors expect.

Input checks happen "at the door": :class:`Quantizer` validates ``z`` (shape,
dtype, finiteness: one host sync) only while ``check_inputs`` is true; a
tokenizer that validates images at its own door switches it off, and then the
forward pass makes no host sync at all.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from vqzoo.config import Configurable

Layout = Literal["spatial", "multichannel", "per_token"]

#: layout -> (features, indices, indices with a level axis, grouped side without the trailing axis)
_PATTERNS: dict[str, tuple[str, str, str, str]] = {
    "spatial": ("b d h w", "b h w", "b h w r", "1 (b h w)"),
    "multichannel": ("b (m d) h w", "b h w m", "b h w (m r)", "1 (b h w m)"),
    "per_token": ("b (g t) d", "b (g t)", "b (g t) r", "g (b t)"),
}
_INDEX_SHAPES = {"spatial": "(B, H, W)", "multichannel": "(B, H, W, M)", "per_token": "(B, T)"}

#: the largest code count whose indices fit an int64 with room to spare (sums of offsets, bincount)
MAX_CODES = 2**62


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    ``quantized`` has the shape of the input (gradient by the quantizer's
    estimator, straight-through unless said otherwise); ``indices`` are int64
    in the layout's index shape; ``loss`` is the scalar to add to the training
    objective; ``losses`` holds its named parts as they enter ``loss`` (so they
    sum to it).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class _StraightThrough(torch.autograd.Function):
    """Value of ``e`` bit for bit, identity gradient to ``x``, no gradient to ``e``.

    ``x + (e - x).detach()`` is off by an ulp now and then; returning ``e``
    itself makes ``lookup(indices)`` reproduce the forward output exactly.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return e.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the identity to ``x`` in the backward pass."""
    return _StraightThrough.apply(x, value)


def grouped_histogram(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Counts ``(C, K)`` int64 of codes ``(C, N)`` in ``[0, K)``, one row per codebook."""
    C = codes.shape[0]
    offsets = torch.arange(C, device=codes.device).unsqueeze(1) * num_codes
    return torch.bincount((codes + offsets).reshape(-1), minlength=C * num_codes).view(C, num_codes)


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


class Quantizer(Configurable, nn.Module, abc.ABC):
    """Base of every quantizer: the layouts, the input check and the training hooks.

    A subclass implements :meth:`quantize_vectors` (grouped vectors ``(G, N,
    D)`` -> a :class:`QuantizerOutput` over vectors, indices ``(G, N)`` or
    ``(G, N, R)``), :meth:`lookup_vectors` (its inverse on indices) and
    :attr:`num_codes`. Everything in float32 with autocast off: the base casts
    before calling them.

    Args:
        dim: D, the width of one quantized vector as it arrives in ``z``.
        layout: ``"spatial"``, ``"multichannel"`` or ``"per_token"`` (module doc).
        num_channels: M, chunks per position in the multichannel layout.
        num_groups: G, token groups (independent codebooks) in the per-token layout.
        check_inputs: validate ``z`` in :meth:`forward` (one host sync for finiteness).
    """

    #: the finiteness part of the input check (a subclass may expose it as an argument)
    check_finite: bool = True

    def __init__(
        self,
        dim: int,
        layout: Layout = "spatial",
        num_channels: int = 1,
        num_groups: int = 1,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if layout not in _PATTERNS:
            raise ValueError(f"{owner}: layout must be spatial, multichannel or per_token, got {layout!r}")
        check_int(owner, "dim", dim)
        check_int(owner, "num_channels", num_channels)
        check_int(owner, "num_groups", num_groups)
        if layout != "multichannel" and num_channels != 1:
            raise ValueError(f"{owner}: num_channels={num_channels} needs layout='multichannel'")
        if layout != "per_token" and num_groups != 1:
            raise ValueError(f"{owner}: num_groups={num_groups} needs layout='per_token'")
        self.layout = layout
        self.num_channels = num_channels
        self.num_groups = num_groups
        self._dim = dim
        self.check_inputs = check_inputs

    # ------------------------------------------------------------------ the contract
    @property
    @abc.abstractmethod
    def num_codes(self) -> int:
        """K, codes per codebook: the vocabulary of one index."""

    @abc.abstractmethod
    def quantize_vectors(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize float32 grouped vectors ``(G, N, D)``; indices ``(G, N)`` (or ``(G, N, R)``)."""

    @abc.abstractmethod
    def lookup_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Float32 vectors ``(G, N, D)`` for grouped indices ``(G, N)`` (or ``(G, N, R)``)."""

    @property
    def num_levels(self) -> int:
        """R, indices per vector (1; residual quantizers have one per level)."""
        return 1

    @property
    def num_codebooks(self) -> int:
        """Rows of :meth:`histogram`: independent codebooks whose usage is counted apart."""
        return self.num_groups

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def vocab_size(self) -> int:
        return self.num_codes

    @property
    def feature_dim(self) -> int:
        """Channels (or token width) the quantizer expects in ``z``."""
        return self.dim * self.num_channels

    def index_shape(self, positions: tuple[int, ...]) -> tuple[int, ...]:
        """Index shape of one sample with ``positions`` = ``(H, W)`` or ``(T,)``.

        A trailing channel axis holds ``M`` (multichannel) times ``R`` (levels)
        indices per position, and is absent when that product is 1 outside the
        multichannel layout.
        """
        channels = self.num_channels * self.num_levels
        if self.layout == "multichannel" or channels > 1:
            return (*positions, channels)
        return tuple(positions)

    def extra_repr(self) -> str:
        return f"layout={self.layout}, num_channels={self.num_channels}, num_groups={self.num_groups}"

    # ------------------------------------------------------------------ layout plumbing
    def _sizes(self, shape: tuple[int, ...]) -> dict[str, int]:
        """einops axis sizes of a feature tensor of ``shape``."""
        if self.layout == "per_token":
            return {"b": shape[0], "g": self.num_groups}
        sizes = {"b": shape[0], "h": shape[2], "w": shape[3]}
        if self.layout == "multichannel":
            sizes["m"] = self.num_channels
        return sizes

    def to_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """Layout tensor -> grouped vectors ``(G, N, D)``."""
        features, _, _, grouped = _PATTERNS[self.layout]
        return rearrange(z, f"{features} -> {grouped} d", **self._sizes(tuple(z.shape)))

    def from_vectors(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Grouped vectors ``(G, N, D)`` -> the layout's tensor of ``shape``."""
        features, _, _, grouped = _PATTERNS[self.layout]
        # contiguous NCHW: a channels-last view would make every decoder conv after it
        # run channels-last, which is slower on CPU (convolution and GroupNorm backward)
        return rearrange(x, f"{grouped} d -> {features}", **self._sizes(shape)).contiguous()

    def _index_patterns(self) -> tuple[str, str]:
        _, indices, level_indices, grouped = _PATTERNS[self.layout]
        if self.num_levels == 1:
            return indices, grouped
        return level_indices, f"{grouped} r"

    def indices_from_codes(self, codes: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Grouped indices ``(G, N[, R])`` -> layout indices for features of ``shape``."""
        layout_side, grouped = self._index_patterns()
        return rearrange(codes, f"{grouped} -> {layout_side}", **self._sizes(shape))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Layout indices -> grouped indices ``(G, N[, R])``."""
        layout_side, grouped = self._index_patterns()
        sizes = {"per_token": {"g": self.num_groups}, "multichannel": {"m": self.num_channels}}.get(self.layout, {})
        if self.num_levels > 1:
            sizes["r"] = self.num_levels
        return rearrange(indices, f"{layout_side} -> {grouped}", **sizes)

    def _feature_shape(self, indices: torch.Tensor) -> tuple[int, ...]:
        if self.layout == "per_token":
            return (indices.shape[0], indices.shape[1], self.dim)
        return (indices.shape[0], self.feature_dim, indices.shape[1], indices.shape[2])

    # ------------------------------------------------------------------ input checks
    def describe_dim(self) -> str:
        """What one vector's width is, for error messages (subclasses add their reason)."""
        return f"dim {self.dim}"

    def check_input(self, z: torch.Tensor) -> None:
        """Reject anything but finite float features in the layout's shape (one host sync)."""
        name = type(self).__name__
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} expects a floating-point tensor, got {got}")
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
                f"{name} ({self.layout}) expects z of shape {expected} ({self.describe_dim()}), got {tuple(z.shape)}"
            )
        if z.numel() == 0:
            raise ValueError(f"{name} received an empty tensor of shape {tuple(z.shape)}")
        # One pass: a float64 sum is finite iff every element is (no overflow from float32 inputs).
        if self.check_finite and not bool(torch.isfinite(z.detach().sum(dtype=torch.float64))):
            raise ValueError(f"{name} received NaN or Inf values in z; expected finite features")

    def check_indices(self, indices: torch.Tensor) -> None:
        """Reject indices that are not integers of the layout's shape in ``[0, num_codes)``.

        Always on: lookups run at detokenize time, where a clear message beats
        an index error deep inside (or a device assert on a GPU).
        """
        name = f"{type(self).__name__}.lookup"
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"{name} expects integer indices, got {got}")
        extra = 1 if self.num_levels > 1 and self.layout != "multichannel" else 0
        expected_dims = {"spatial": 3, "multichannel": 4, "per_token": 2}[self.layout] + extra
        shape_text = _INDEX_SHAPES[self.layout]
        if extra:
            shape_text = shape_text[:-1] + ", R)"
        if indices.dim() != expected_dims:
            raise ValueError(
                f"{name} ({self.layout}) expects indices with {expected_dims} dims {shape_text}, "
                f"got shape {tuple(indices.shape)}"
            )
        if self.layout == "multichannel" and indices.shape[-1] != self.num_channels * self.num_levels:
            what = f"M={self.num_channels}" if self.num_levels == 1 else f"M*R={self.num_channels}*{self.num_levels}"
            raise ValueError(
                f"{name} expects {what} channel indices in the last dimension, got shape {tuple(indices.shape)}"
            )
        if extra and indices.shape[-1] != self.num_levels:
            raise ValueError(f"{name} expects R={self.num_levels} levels in the last dimension, got {tuple(indices.shape)}")
        if self.layout == "per_token" and indices.shape[1] % self.num_groups != 0:
            raise ValueError(
                f"{name} expects T a multiple of num_groups={self.num_groups}, got shape {tuple(indices.shape)}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(
                f"{name} expects indices in [0, {self.num_codes}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )

    # ------------------------------------------------------------------ forward and lookup
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.check_inputs:
            self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            out = self.quantize_vectors(self.to_vectors(z.float()))
            quantized = self.from_vectors(out.quantized, tuple(z.shape)).to(z.dtype)
        indices = self.indices_from_codes(out.indices, tuple(z.shape))
        return QuantizerOutput(quantized=quantized, indices=indices, loss=out.loss, losses=out.losses)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized features for ``indices`` in the layout's feature shape (no gradient to z).

        spatial (B, H, W) -> (B, D, H, W); multichannel (B, H, W, M) -> (B, M·D, H, W);
        per_token (B, T) -> (B, T, D); with R levels the index shapes gain a trailing R.
        """
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            vectors = self.lookup_vectors(self.codes_from_indices(indices.long()))
            return self.from_vectors(vectors, self._feature_shape(indices))

    # ------------------------------------------------------------------ training hooks
    def histogram(self, indices: torch.Tensor) -> torch.Tensor:
        """Counts ``(num_codebooks, K)`` of layout indices, for codebook usage and perplexity."""
        codes = self.codes_from_indices(indices.long())
        return grouped_histogram(codes.reshape(codes.shape[0], -1), self.num_codes)

    def reset_parameters(self) -> None:
        """Draw fresh parameters (codes, projections) by each part's init rule."""
        def reset(module: nn.Module) -> None:
            for child in module.children():
                if hasattr(child, "reset_parameters"):
                    child.reset_parameters()
                else:
                    reset(child)

        reset(self)

    def after_backward(self) -> None:
        """Call after each backward pass that reaches the quantizer (gradient resets read grads)."""

    def after_step(self) -> int:
        """Call after each optimizer step; applies a due codebook reset. Returns codes moved."""
        return 0


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """A float32 scalar 0 on ``x``'s device, for quantizers without an auxiliary loss."""
    return x.new_zeros((), dtype=torch.float32)


def check_num_codes(owner: str, num_codes: int, what: str) -> None:
    if num_codes > MAX_CODES:
        raise ValueError(
            f"{owner}: {what} gives {num_codes} codes (about 2^{math.log2(num_codes):.1f}), more than an "
            f"int64 index can hold safely (2^62); use fewer levels or bits"
        )


class GroupedLinear(nn.Module):
    """``x W_g + b_g`` on grouped vectors ``(G, N, in)`` with one map per group.

    FSQ and LFQ quantize a small fixed grid; when the features are wider (or
    narrower) than that grid these maps project in and out. One map per group
    keeps per-token codebooks independent, as a learned codebook per group would.
    Initialised like ``nn.Linear``: U(−1/√in, 1/√in) for weight and bias.
    """

    def __init__(self, num_groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_groups, 1, out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        self.weight.uniform_(-bound, bound)
        self.bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        G, i, o = self.weight.shape
        return f"num_groups={G}, in_features={i}, out_features={o}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:
            # one group: a 2-D addmm, whose backward is about twice as fast as bmm's on the CPU
            return torch.addmm(self.bias[0].float(), x[0], self.weight[0].float()).unsqueeze(0)
        return torch.baddbmm(self.bias.float(), x, self.weight.float())
