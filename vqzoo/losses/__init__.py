"""Training losses: LPIPS perceptual distance and the PatchGAN adversarial objective."""

from vqzoo.losses.adversarial import (
    AdversarialLoss,
    NLayerDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
    lecam_regularizer,
    vanilla_d_loss,
)
from vqzoo.losses.perceptual import LPIPS, normalize_features, vgg16_checkpoint_path

__all__ = [
    "LPIPS",
    "AdversarialLoss",
    "NLayerDiscriminator",
    "adaptive_weight",
    "generator_loss",
    "hinge_d_loss",
    "lecam_regularizer",
    "normalize_features",
    "vanilla_d_loss",
    "vgg16_checkpoint_path",
]
