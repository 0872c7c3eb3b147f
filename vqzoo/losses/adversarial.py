"""PatchGAN discriminator, GAN losses and the VQGAN adaptive weight.

Facts from the reference code (docs/reference-implementations.md §A, §B, §C), written
anew:

* PatchGAN layout (taming's ``NLayerDiscriminator``, itself pix2pix's): a 4x4
  stride-2 conv with LeakyReLU(0.2) and no norm; ``n_layers - 1`` more 4x4
  stride-2 convs with norm + LeakyReLU, channel multiplier ``min(2**n, 8)``;
  one 4x4 stride-1 conv with norm + LeakyReLU; a 4x4 stride-1 conv to one
  logit per patch. All convs use padding 1. Conv weights ~ N(0, 0.02), norm
  weights ~ N(1, 0.02), biases 0.
* Hinge discriminator loss ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x̂)))``
  and generator loss ``-mean D(x̂)``.
* Adaptive weight ``||∇_L nll|| / (||∇_L g|| + 1e-4)`` clamped to [0, 1e4],
  detached, times ``disc_weight`` (0.8); L is the decoder's last conv weight.
* MoVQ's recipe (section C) uses a fixed weight 0.1 and no start delay:
  ``AdversarialLoss(adaptive=False, disc_weight=0.1, disc_start=0)``.

The discriminator start is counted in *generator* steps that the caller passes
in (docs/pitfalls.md #12: Lightning's ``global_step`` counts both optimizers). Before the
start nothing touches the discriminator: no forward pass, no gradient
(docs/pitfalls.md #11 mitigations: only the generator's adversarial term is gated, and
spectral norm / LeCam are available as options).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.config import Configurable
from vqzoo.quantize.distributed import all_reduce_mean_

__all__ = [
    "AdversarialLoss",
    "NLayerDiscriminator",
    "adaptive_weight",
    "generator_loss",
    "hinge_d_loss",
    "lecam_regularizer",
    "vanilla_d_loss",
]


def _group_count(channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``channels`` not above ``max_groups``."""
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


class NLayerDiscriminator(Configurable, nn.Module):
    """PatchGAN discriminator: one logit per overlapping patch, shape (B, 1, h, w).

    For 256x256 input and ``n_layers=3`` the map is 30x30 and each logit sees a
    70x70 receptive field; 64x64 input gives 6x6.

    Args:
        in_channels: image channels.
        ndf: channels of the first conv; later convs use ``ndf * min(2**n, 8)``.
        n_layers: number of stride-2 convs (MoVQ uses 2, VQGAN 3).
        norm: ``"batch"`` (taming's default), ``"group"`` (batch-size independent;
            groups = largest divisor of the width up to 32), ``"none"``, or
            ``"spectral"`` (spectral norm on every conv, no activation norm —
            a common cure for the collapse when the discriminator starts).
            Convs followed by batch or group norm carry no bias, as the norm's
            shift makes it redundant.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: Literal["batch", "group", "none", "spectral"] = "batch",
    ) -> None:
        super().__init__()
        if in_channels < 1 or ndf < 1 or n_layers < 1:
            raise ValueError(
                f"NLayerDiscriminator needs in_channels, ndf, n_layers >= 1, got "
                f"in_channels={in_channels}, ndf={ndf}, n_layers={n_layers}"
            )
        if norm not in ("batch", "group", "none", "spectral"):
            raise ValueError(f"norm must be 'batch', 'group', 'none' or 'spectral', got {norm!r}")
        self.in_channels = in_channels
        self.n_layers = n_layers
        self.norm = norm
        has_norm = norm in ("batch", "group")

        def norm_layer(c: int) -> nn.Module:
            if norm == "batch":
                return nn.BatchNorm2d(c)
            if norm == "group":
                return nn.GroupNorm(_group_count(c), c)
            return nn.Identity()

        def conv(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, kernel_size=4, stride=stride, padding=1, bias=bias)

        layers: list[nn.Module] = [conv(in_channels, ndf, 2, True), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [conv(width, out, stride, not has_norm), norm_layer(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(conv(width, 1, 1, True))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()
        if norm == "spectral":
            # After init: the parametrization keeps the N(0, 0.02) weight as its original.
            for m in self.main:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"NLayerDiscriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x̂)))`` (taming keeps the 0.5)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Logistic loss ``0.5 * (mean softplus(-D(x)) + mean softplus(D(x̂)))``.

    That is binary cross-entropy with real = 1 and fake = 0, written with
    softplus for stability. The matching non-saturating generator objective is
    :func:`generator_loss` (as in taming, the generator uses ``-mean D(x̂)``
    for both discriminator losses).
    """
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """``-mean D(x̂)``."""
    return -logits_fake.mean()


def lecam_regularizer(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor
) -> torch.Tensor:
    """LeCam regularizer (Tseng et al. 2021): ``mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x̂))^2``."""
    return F.relu(logits_real - ema_fake).pow(2).mean() + F.relu(ema_real - logits_fake).pow(2).mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN's balance between reconstruction and adversarial gradients.

    ``||∇_L nll|| / (||∇_L g|| + eps)`` clamped to ``[0, max_weight]`` and
    detached, where L is ``last_layer`` (the decoder's output conv weight).
    Both gradients come from ``torch.autograd.grad(..., retain_graph=True)``, so
    the graph survives for the real backward pass and no ``.grad`` is touched.
    Norms are taken in float32 (float64 if the gradients are), so mixed
    precision does not overflow them. Under DDP each rank uses its own local
    gradients, as taming does; the weight is a scale, not a parameter.
    """
    if not last_layer.requires_grad:
        raise ValueError("adaptive_weight: last_layer does not require grad; pass the decoder's output weight")
    try:
        (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
        (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    except RuntimeError as err:
        raise ValueError(
            "adaptive_weight: could not differentiate both losses with respect to last_layer "
            f"({err}). last_layer must be a parameter both the reconstruction loss and the "
            "generator loss depend on (the decoder's output conv weight), and grad mode must be on."
        ) from err
    dtype = torch.promote_types(nll_grad.dtype, torch.float32)
    weight = torch.linalg.vector_norm(nll_grad.to(dtype)) / (torch.linalg.vector_norm(g_grad.to(dtype)) + eps)
    return weight.clamp(0.0, max_weight).detach()


class AdversarialLoss(Configurable, nn.Module):
    """Holds the discriminator and computes both sides of the GAN objective.

    Usage in a manual-optimization training step (``gen_step`` is the caller's
    own generator-step counter)::

        g_term, g_logs = adv.generator_term(x_rec, nll, decoder.conv_out.weight, gen_step)
        loss = nll + g_term + vq_loss          # generator optimizer step
        d_term, d_logs = adv.discriminator_term(x, x_rec.detach(), gen_step)
        # discriminator optimizer step (zero its grads first: the generator
        # backward also reached the discriminator's parameters)

    Args:
        discriminator: the network; ``None`` builds ``NLayerDiscriminator()``
            (3 channels, ndf 64, 3 layers, batch norm).
        disc_start: generator step at which the adversarial terms switch on
            (active when ``gen_step >= disc_start``, as taming's
            ``global_step >= threshold``).
        disc_weight: multiplies the generator term; with ``adaptive`` it
            scales the adaptive weight (VQGAN: 0.8), otherwise it is the fixed
            weight (MoVQ: 0.1).
        loss: discriminator loss, ``"hinge"`` or ``"vanilla"`` (logistic).
        adaptive: use :func:`adaptive_weight`.
        disc_factor: extra factor on both terms once active (taming's
            ``disc_factor``, 1.0).
        max_weight, eps: clamp and epsilon of the adaptive weight.
        lecam_weight: weight of the LeCam regularizer on the discriminator
            (0 = off). Its EMAs of the mean real/fake logits are buffers, so
            checkpoints carry them, and are averaged across ranks under DDP.
        lecam_decay: EMA decay of those means.

    Before ``disc_start`` both methods return zero and never call the
    discriminator. The zero from :meth:`discriminator_term` requires grad, so a
    caller that backpropagates it anyway gets a no-op (parameters keep
    ``grad=None`` and optimizers skip them); :meth:`is_active` lets it skip the
    step instead. Outside grad mode (validation) the adaptive weight cannot be
    computed and is 0, as in taming: the logged ``g_loss`` stays informative.
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        disc_start: int = 0,
        disc_weight: float = 0.8,
        loss: Literal["hinge", "vanilla"] = "hinge",
        adaptive: bool = True,
        disc_factor: float = 1.0,
        max_weight: float = 1e4,
        eps: float = 1e-4,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if loss not in ("hinge", "vanilla"):
            raise ValueError(f"AdversarialLoss loss must be 'hinge' or 'vanilla', got {loss!r}")
        if disc_start < 0:
            raise ValueError(f"disc_start must be >= 0 generator steps, got {disc_start}")
        for name, value in (("disc_weight", disc_weight), ("disc_factor", disc_factor), ("lecam_weight", lecam_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= lecam_decay < 1.0:
            raise ValueError(f"lecam_decay must be in [0, 1), got {lecam_decay}")
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator()
        self.disc_start = int(disc_start)
        self.disc_weight = float(disc_weight)
        self.loss = loss
        self.adaptive = adaptive
        self.disc_factor = float(disc_factor)
        self.max_weight = float(max_weight)
        self.eps = float(eps)
        self.lecam_weight = float(lecam_weight)
        self.lecam_decay = float(lecam_decay)
        self.register_buffer("lecam_ema_real", torch.zeros(()))
        self.register_buffer("lecam_ema_fake", torch.zeros(()))

    def is_active(self, gen_step: int | torch.Tensor) -> bool:
        """Whether the adversarial terms are on at this generator step."""
        return int(gen_step) >= self.disc_start

    def _d_loss(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        fn = hinge_d_loss if self.loss == "hinge" else vanilla_d_loss
        return fn(logits_real, logits_fake)

    def generator_term(
        self,
        x_rec: torch.Tensor,
        nll: torch.Tensor,
        last_layer: torch.Tensor | None,
        gen_step: int | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted generator loss ``d_weight * disc_factor * (-mean D(x_rec))``.

        ``nll`` is the reconstruction (+ perceptual) loss the adaptive weight
        balances against; ``last_layer`` the decoder's output weight (may be
        ``None`` when ``adaptive=False``). Logs: ``g_loss``, ``d_weight`` (the
        full multiplier of ``g_loss``), ``logits_fake``.
        """
        zero = torch.zeros((), device=x_rec.device, dtype=torch.float32)
        if not self.is_active(gen_step):
            return zero, {"g_loss": zero, "d_weight": zero}
        logits_fake = self.discriminator(x_rec)
        g_loss = generator_loss(logits_fake)
        if not self.adaptive:
            d_weight = torch.tensor(self.disc_weight, device=x_rec.device, dtype=torch.float32)
        elif not torch.is_grad_enabled():
            d_weight = zero
        else:
            if last_layer is None:
                raise ValueError("AdversarialLoss(adaptive=True).generator_term needs last_layer, got None")
            d_weight = self.disc_weight * adaptive_weight(nll, g_loss, last_layer, self.max_weight, self.eps)
        term = d_weight * self.disc_factor * g_loss
        logs = {
            "g_loss": g_loss.detach(),
            "d_weight": (d_weight * self.disc_factor).detach(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return term, logs

    def discriminator_term(
        self, x_real: torch.Tensor, x_rec_detached: torch.Tensor, gen_step: int | torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss ``disc_factor * d_loss (+ lecam_weight * LeCam)``.

        ``x_rec_detached`` is detached here again, so a caller who forgets does
        not push discriminator gradients into the generator. Logs: ``d_loss``,
        ``logits_real``, ``logits_fake`` (batch means), and ``lecam`` when on.
        """
        if x_real.shape != x_rec_detached.shape:
            raise ValueError(
                f"discriminator_term: real and reconstructed batches differ in shape: "
                f"{tuple(x_real.shape)} vs {tuple(x_rec_detached.shape)}"
            )
        if not self.is_active(gen_step):
            zero = torch.zeros((), device=x_real.device, dtype=torch.float32)
            logs = {"d_loss": zero, "logits_real": zero, "logits_fake": zero}
            return torch.zeros((), device=x_real.device, dtype=torch.float32, requires_grad=True), logs
        logits_real = self.discriminator(x_real.detach())
        logits_fake = self.discriminator(x_rec_detached.detach())
        d_loss = self._d_loss(logits_real, logits_fake)
        loss = self.disc_factor * d_loss
        logs = {
            "d_loss": d_loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        if self.lecam_weight > 0:
            reg = lecam_regularizer(logits_real, logits_fake, self.lecam_ema_real, self.lecam_ema_fake)
            loss = loss + self.lecam_weight * reg
            logs["lecam"] = reg.detach()
            if self.training:
                self._update_lecam_ema(logs["logits_real"], logs["logits_fake"])
        return loss, logs

    @torch.no_grad()
    def _update_lecam_ema(self, mean_real: torch.Tensor, mean_fake: torch.Tensor) -> None:
        # Every rank calls this with the same shape, so the collective cannot hang.
        means = all_reduce_mean_(torch.stack([mean_real, mean_fake]).float())
        d = self.lecam_decay
        self.lecam_ema_real.mul_(d).add_((1 - d) * means[0])
        self.lecam_ema_fake.mul_(d).add_((1 - d) * means[1])
