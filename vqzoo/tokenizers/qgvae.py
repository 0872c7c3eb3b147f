"""QG-VAE and QGGAN: the Quantised Global Autoencoder (Elsner et al.).

Instead of one token per image patch, QG-VAE produces C *global* tokens:

1. A U-Net encoder turns the image into C feature maps at ``W / 2**f`` (plus
   a 1x1-conv residual of the image, average-pooled to that size).
2. *Local to global*: each feature map is flattened, so the tensor becomes
   ``(B, C, hw)`` (channels now index tokens, the flattened map is each token's
   feature vector), and an affine map K (kernel-1 Conv1d ``hw -> D``) turns
   every map into one D-dimensional token. K is split into ``num_heads``
   *heads*: contiguous groups of tokens, each group with its own affine map.
3. Each token is quantised with its own codebook (section 3.3), or, with
   ``tokens_per_codebook > 1``, contiguous groups of tokens share one codebook
   (appendix B). This is the shared :class:`~vqzoo.quantize.VectorQuantizer`
   in its ``per_token`` layout with ``num_groups = C / tokens_per_codebook``.
   A learned offset (init U(-0.5, 0.5)) is added after quantisation.
4. The inverse map K' (per head, kernel-1 Conv1d ``D -> hw``) turns each token
   back into a feature map.
5. A U-Net decoder turns the C maps into the image, plus a 1x1 conv ``C -> 3``
   of the maps, bilinearly upsampled (a global residual).

Every token sees the whole image, which is why ``token_shape`` is ``(C,)``,
``downsample_factor`` is 1 and only images of exactly ``resolution`` are
accepted.

Ordered latents (section 3.4)
-----------------------------
A dropout-like regulariser zeroes tokens ``k, k+1, ..., C-1`` of the decoder's
input during training, so the first k tokens learn to carry the most content
(``ordered_dropout``):

* ``"per_sample"`` (the authors' code): each sample independently, with
  probability ``ordered_dropout_probability`` (1/3), keeps only its first
  ``k ~ U{1, ..., C-1}`` tokens (at least one kept, at least one dropped).
* ``"every_third_batch"`` (the paper's text): on every third training batch
  (generator steps 0, 3, 6, ...) the whole batch keeps only its first
  ``k ~ U{0, ..., C}`` tokens, one k for the batch, as in eq. 9 with
  ``k = 0`` decoding from no information and ``k = C`` keeping everything.
* ``"none"``: off (the paper's default for its benchmarks).

"Zeroing" follows the reference: the *decoder's input*, i.e. the quantised
token plus its learned offset, becomes exactly zero. The base class applies
:meth:`QGVAE.latent_transform` before :meth:`QGVAE.decode` adds the offset, so
the transform returns ``(q + offset) * m - offset``; after ``decode`` adds the
offset back, dropped tokens are exactly 0 and gradients match the reference.
:meth:`QGVAE.detokenize` with ``keep=k`` applies the same masking, so decoding
from the first k tokens is what training prepared the decoder for.

Losses and how they differ from the reference
---------------------------------------------
* Images are in [-1, 1] (vqzoo's contract); the reference feeds [0, 1]. An MSE
  on [-1, 1] is 4x the MSE on [0, 1] and an L1 2x, so the configs use
  ``reconstruction_weight: 0.25`` (MSE) / ``0.5`` (L1) to keep the
  reference's balance against the VQ loss (whose scale does not depend on the
  image range). LPIPS is computed on [-1, 1], its intended range; the
  reference called it on [0, 1].
* VQ loss: paper eq. 6 and the code weight the commitment term 1.0 and the
  codebook term 0.25, the reverse of the usual β placement. vqzoo's quantizer
  puts β on the commitment term and has a separate ``codebook_loss_weight``:
  the reference is ``beta: 1.0, codebook_loss_weight: 0.25`` (what the configs
  use); ``beta: 0.25, codebook_loss_weight: 1.0`` is the VQ-VAE convention.
* Codebook reset (section 3.3) is the shared
  :class:`~vqzoo.quantize.GradientMagnitudeReset` on the quantizer, with the
  period from table 3 (100 or 1000 batches). Nothing in this model is
  reset-specific: the base training loop calls ``after_backward`` /
  ``after_step``.
* QGGAN (section 4.2): the shared
  :class:`~vqzoo.losses.adversarial.AdversarialLoss` (hinge, adaptive weight)
  plus, through :meth:`QGVAE.reconstruction_terms`, the reference's switch
  from plain MSE to L1 + LPIPS after ``mse_warmup_steps`` generator steps
  (reference: 5000, the same as the GAN warm-up). Differences: the reference's
  adaptive weight is ``0.75 * ||grad LPIPS|| / ||grad L_G + 1e-6||`` without
  a clamp; ours balances the whole reconstruction term (L1 + LPIPS) with
  taming's ``eps = 1e-4`` and clamp 1e4. The reference alternates batches
  (odd: discriminator only, even: generator only); our base loop takes one
  generator and one discriminator step per batch, the discriminator from
  ``disc_start`` on. The reference discriminator (a residual block, a U-Net, a
  residual block) is available as :class:`vqzoo.nn.unet.QGDiscriminator`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.unet import QGUNet
from vqzoo.quantize import Quantizer
from vqzoo.tokenizers.base import Tokenizer

__all__ = ["HeadwiseLinear", "QGEncoder", "QGDecoder", "QGVAE", "OrderedDropout"]

OrderedDropout = Literal["none", "per_sample", "every_third_batch"]


class HeadwiseLinear(nn.Module):
    """Per-head affine maps over tokens: ``(B, T, in) -> (B, T, out)``.

    Tokens are split into ``num_heads`` contiguous groups of ``T / num_heads``;
    group h is mapped by its own ``W_h x + b_h``. This is exactly one kernel-1
    ``nn.Conv1d(in, out)`` per head applied to that head's tokens (the
    reference's formulation, with tokens on the length axis), computed for all
    heads in one batched matmul. Initialised like ``nn.Conv1d``:
    ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and bias.
    """

    def __init__(self, num_heads: int, num_tokens: int, in_features: int, out_features: int) -> None:
        super().__init__()
        if num_heads < 1 or num_tokens % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide num_tokens={num_tokens}")
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_heads, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_heads, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, tokens={self.num_tokens}, {self.in_features} -> {self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        B, T, N = x.shape
        if T != self.num_tokens or N != self.in_features:
            raise ValueError(
                f"HeadwiseLinear expects (B, {self.num_tokens}, {self.in_features}), got {tuple(x.shape)}"
            )
        H = self.num_heads
        x = x.reshape(B, H, T // H, N)
        y = torch.einsum("bhtn,hdn->bhtd", x, self.weight) + self.bias.unsqueeze(1)
        return y.reshape(B, T, self.out_features)


class QGEncoder(nn.Module):
    """Image -> C global token vectors ``(B, C, D)`` before quantisation.

    ``feature_map`` gives the ``(B, C, r, r)`` maps of step 1 (Fig. 9 of the
    paper shows them); ``forward`` flattens them and applies the heads.
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        num_tokens: int,
        token_dim: int,
        downscale_power: int,
        num_heads: int,
        num_res_blocks: int,
        max_channels: int,
        start_channels: int,
        num_frequencies: int,
        bottom_resolution: int,
        unet_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.latent_resolution = resolution >> downscale_power
        self.unet = QGUNet(
            in_channels, num_tokens, resolution, self.latent_resolution,
            start_channels=start_channels, max_channels=max_channels, num_res_blocks=num_res_blocks,
            num_frequencies=num_frequencies, bottom_resolution=bottom_resolution, **(unet_options or {}),
        )
        self.residual = nn.Conv2d(in_channels, num_tokens, 1)
        self.heads = HeadwiseLinear(num_heads, num_tokens, self.latent_resolution**2, token_dim)

    def feature_map(self, x: Tensor) -> Tensor:
        res = F.adaptive_avg_pool2d(self.residual(x), self.latent_resolution)
        return self.unet(x) + res

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, r, r) -> (B, C, r*r): channel c's whole map becomes token c's features.
        return self.heads(self.feature_map(x).flatten(2))


class QGDecoder(nn.Module):
    """C decoder-input token vectors ``(B, C, D)`` -> image ``(B, in_channels, W, W)``."""

    def __init__(
        self,
        out_channels: int,
        resolution: int,
        num_tokens: int,
        token_dim: int,
        downscale_power: int,
        num_heads: int,
        num_res_blocks: int,
        max_channels: int,
        start_channels: int,
        num_frequencies: int,
        bottom_resolution: int,
        unet_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.latent_resolution = resolution >> downscale_power
        self.num_tokens = num_tokens
        self.heads = HeadwiseLinear(num_heads, num_tokens, token_dim, self.latent_resolution**2)
        self.unet = QGUNet(
            num_tokens, out_channels, self.latent_resolution, resolution,
            start_channels=start_channels, max_channels=max_channels, num_res_blocks=num_res_blocks,
            num_frequencies=num_frequencies, bottom_resolution=bottom_resolution, **(unet_options or {}),
        )
        self.residual = nn.Conv2d(num_tokens, out_channels, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        r = self.latent_resolution
        fmap = self.heads(tokens).reshape(tokens.shape[0], self.num_tokens, r, r)
        res = self.residual(fmap)
        if r != self.resolution:
            res = F.interpolate(res, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.unet(fmap) + res


class QGVAE(Tokenizer):
    """Quantised Global Autoencoder; QGGAN when an ``adversarial`` loss is configured.

    Args:
        quantizer: a ``VectorQuantizer(layout="per_token", dim=token_dim,
            num_groups=num_tokens // tokens_per_codebook)``; the reference uses
            K = 512, ``init="uniform_half"``, ``beta=1.0,
            codebook_loss_weight=0.25`` and ``GradientMagnitudeReset(every=100 | 1000)``.
        num_tokens: C, tokens per image (table 3's "Codewords").
        token_dim: D, dimension of a token (64 in the paper).
        downscale_power: f; the encoder's feature maps are ``resolution / 2**f``.
        num_heads: contiguous token groups with their own affine map K (and K').
        tokens_per_codebook: 1 = one codebook per token (the paper); n > 1 =
            each n contiguous tokens share a codebook (appendix B).
        num_res_blocks: residual blocks per U-Net level (table 3's "Blocks").
        max_channels: U-Net width cap (table 3's "Channels").
        encoder_start_channels: encoder stem width (16 in the reference).
        decoder_start_channels: decoder stem width; None = ``max_channels``
            (the reference).
        num_frequencies: frequencies of the grid positional encoding (16).
        bottom_resolution: the U-Nets recurse down to this width (8).
        ordered_dropout: ``"none"``, ``"per_sample"`` (reference code) or
            ``"every_third_batch"`` (paper text); see the module docstring.
        ordered_dropout_probability: per-sample probability for ``"per_sample"``.
        mse_warmup_steps: for this many generator steps the reconstruction
            term is ``mse_warmup_weight * MSE`` only; afterwards it is the
            base's ``reconstruction_loss`` (+ LPIPS). 0 = off. QGGAN: 5000.
        mse_warmup_weight: weight of that MSE (0.25 on [-1, 1] = the
            reference's MSE on [0, 1]).
        unet_level_convs, unet_last_stage, unet_global_residual, unet_skip_from:
            the layout options of both U-Nets (:class:`~vqzoo.nn.unet.QGUNet`'s
            ``level_convs``, ``last_stage``, ``global_residual``,
            ``skip_from``). The defaults are vqzoo's original layout, so older
            configs and checkpoints rebuild unchanged; the reference's values
            are ``True``, ``"out_channels"``, ``"before_projection"``,
            ``"input"`` (:data:`vqzoo.nn.unet.REFERENCE_LAYOUT`).
        **kwargs: training options of :class:`~vqzoo.tokenizers.base.Tokenizer`
            (``in_channels``, ``resolution``, loss weights, ``adversarial``, optimizer).
    """

    downsample_factor = 1
    fixed_resolution = True

    def __init__(
        self,
        quantizer: Quantizer,
        num_tokens: int = 64,
        token_dim: int = 64,
        downscale_power: int = 0,
        num_heads: int = 8,
        tokens_per_codebook: int = 1,
        num_res_blocks: int = 1,
        max_channels: int = 128,
        encoder_start_channels: int = 16,
        decoder_start_channels: int | None = None,
        num_frequencies: int = 16,
        bottom_resolution: int = 8,
        ordered_dropout: OrderedDropout = "none",
        ordered_dropout_probability: float = 1.0 / 3.0,
        mse_warmup_steps: int = 0,
        mse_warmup_weight: float = 0.25,
        unet_level_convs: bool = False,
        unet_last_stage: Literal["capped", "out_channels"] = "capped",
        unet_global_residual: Literal["after_projection", "before_projection"] = "after_projection",
        unet_skip_from: Literal["conditioned", "input"] = "conditioned",
        **kwargs: Any,
    ) -> None:
        super().__init__(quantizer=quantizer, **kwargs)
        resolution, in_channels = self.resolution, self.in_channels
        if quantizer.layout != "per_token":
            raise ValueError(f"QGVAE needs a quantizer with layout='per_token', got layout={quantizer.layout!r}")
        if num_tokens < 1 or token_dim < 1:
            raise ValueError(f"num_tokens and token_dim must be >= 1, got {num_tokens}, {token_dim}")
        if quantizer.dim != token_dim:
            raise ValueError(f"quantizer.dim must equal token_dim={token_dim}, got quantizer.dim={quantizer.dim}")
        if tokens_per_codebook < 1 or num_tokens % tokens_per_codebook != 0:
            raise ValueError(
                f"tokens_per_codebook={tokens_per_codebook} must be >= 1 and divide num_tokens={num_tokens}"
            )
        if quantizer.num_groups != num_tokens // tokens_per_codebook:
            raise ValueError(
                f"quantizer.num_groups must be num_tokens / tokens_per_codebook = {num_tokens} / "
                f"{tokens_per_codebook} = {num_tokens // tokens_per_codebook} (one codebook per token group), "
                f"got num_groups={quantizer.num_groups}"
            )
        if num_heads < 1 or num_tokens % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide num_tokens={num_tokens}")
        if resolution & (resolution - 1):
            raise ValueError(f"QGVAE needs a power-of-two resolution, got {resolution}")
        if downscale_power < 0 or (resolution >> downscale_power) < 1:
            raise ValueError(
                f"downscale_power must be in [0, log2(resolution)={int(math.log2(resolution))}], got {downscale_power}"
            )
        if ordered_dropout not in ("none", "per_sample", "every_third_batch"):
            raise ValueError(
                f"ordered_dropout must be 'none', 'per_sample' or 'every_third_batch', got {ordered_dropout!r}"
            )
        if not 0.0 <= ordered_dropout_probability <= 1.0:
            raise ValueError(f"ordered_dropout_probability must be in [0, 1], got {ordered_dropout_probability}")
        if mse_warmup_steps < 0 or mse_warmup_weight < 0:
            raise ValueError(
                f"mse_warmup_steps and mse_warmup_weight must be >= 0, got {mse_warmup_steps}, {mse_warmup_weight}"
            )
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.downscale_power = downscale_power
        self.tokens_per_codebook = tokens_per_codebook
        self.ordered_dropout = ordered_dropout
        self.ordered_dropout_probability = ordered_dropout_probability
        self.mse_warmup_steps = mse_warmup_steps
        self.mse_warmup_weight = mse_warmup_weight
        shared = dict(
            resolution=resolution, num_tokens=num_tokens, token_dim=token_dim, downscale_power=downscale_power,
            num_heads=num_heads, num_res_blocks=num_res_blocks, max_channels=max_channels,
            num_frequencies=num_frequencies, bottom_resolution=bottom_resolution,
            unet_options=dict(
                level_convs=unet_level_convs, last_stage=unet_last_stage,
                global_residual=unet_global_residual, skip_from=unet_skip_from,
            ),
        )
        self.encoder = QGEncoder(in_channels=in_channels, start_channels=encoder_start_channels, **shared)
        self.decoder = QGDecoder(
            out_channels=in_channels,
            start_channels=max_channels if decoder_start_channels is None else decoder_start_channels,
            **shared,
        )
        # Stored (D, C) as in the reference; added to the (B, C, D) tokens transposed.
        self.post_quant_offset = nn.Parameter(torch.empty(token_dim, num_tokens).uniform_(-0.5, 0.5))

    # ------------------------------------------------------------------ tokenizer interface
    @property
    def token_shape(self) -> tuple[int, ...]:
        return self.quantizer.index_shape((self.num_tokens,))

    @property
    def latent_resolution(self) -> int:
        return self.encoder.latent_resolution

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, in_channels, R, R)`` -> pre-quantisation tokens ``(B, C, D)``."""
        return self.encoder(x)

    def decode(self, quantized: Tensor) -> Tensor:
        """Quantised tokens ``(B, C, D)`` -> images; adds the learned offset first."""
        expected = (self.num_tokens, self.token_dim)
        if quantized.dim() != 3 or tuple(quantized.shape[1:]) != expected:
            raise ValueError(f"QGVAE.decode expects (B, {expected[0]}, {expected[1]}), got {tuple(quantized.shape)}")
        return self.decoder(quantized + self.post_quant_offset.t())

    @property
    def last_layer(self) -> Tensor:
        return self.decoder.unet.out_projection.weight

    def detokenize(self, indices: Tensor, keep: int | None = None) -> Tensor:
        """Token indices ``(B, C)`` -> images, optionally from the first ``keep`` tokens only.

        With ``keep=k`` tokens ``k, ..., C-1`` are zeroed exactly as the ordered
        dropout zeroes them in training, so the output does not depend on them.
        """
        if not isinstance(indices, Tensor) or tuple(indices.shape[1:]) != self.token_shape:
            got = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
            expected = ", ".join(map(str, self.token_shape))
            raise ValueError(f"QGVAE.detokenize expects indices of shape (B, {expected}), got {got}")
        quantized = self.quantizer.lookup(indices)
        if keep is not None:
            if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= self.num_tokens:
                raise ValueError(f"keep must be an integer in [0, {self.num_tokens}], got {keep!r}")
            quantized = self.keep_first(quantized, torch.full((indices.shape[0],), keep, device=indices.device))
        return self.decode(quantized)

    # ------------------------------------------------------------------ ordered latents
    def keep_first(self, quantized: Tensor, keep: Tensor) -> Tensor:
        """Zero the decoder input of tokens ``keep[b], ...`` of each sample ``b``.

        Returns ``(q + offset) * m - offset`` so that :meth:`decode`, which adds
        the offset, sees exactly ``(q + offset) * m`` (module docstring).
        """
        B, C, _ = quantized.shape
        mask = torch.arange(C, device=quantized.device).unsqueeze(0) < keep.to(quantized.device).unsqueeze(1)
        mask = mask.unsqueeze(-1).to(quantized.dtype)
        offset = self.post_quant_offset.t()
        return (quantized + offset) * mask - offset

    def sample_keep(self, batch_size: int, device: torch.device | None = None) -> Tensor | None:
        """Tokens kept per sample for this training step, or None when nothing is dropped."""
        C = self.num_tokens
        if self.ordered_dropout == "per_sample":
            if C < 2:
                return None
            drop = torch.rand(batch_size, device=device) < self.ordered_dropout_probability
            k = torch.randint(1, C, (batch_size,), device=device)
            return torch.where(drop, k, torch.full_like(k, C))
        if self.ordered_dropout == "every_third_batch":
            if self.generator_step % 3 != 0:
                return None
            k = int(torch.randint(0, C + 1, ()))
            return torch.full((batch_size,), k, device=device, dtype=torch.long)
        return None

    def latent_transform(self, quantized: Tensor) -> Tensor:
        """Ordered dropout between quantiser and decoder (training only; called by the base)."""
        keep = self.sample_keep(quantized.shape[0], quantized.device)
        return quantized if keep is None else self.keep_first(quantized, keep)

    # ------------------------------------------------------------------ losses
    def reconstruction_terms(self, x: Tensor, x_rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Plain MSE during the first ``mse_warmup_steps`` generator steps, then the base's terms."""
        if self.generator_step < self.mse_warmup_steps:
            mse = F.mse_loss(x_rec, x)
            return self.mse_warmup_weight * mse, {"reconstruction": mse.detach()}
        return super().reconstruction_terms(x, x_rec)
