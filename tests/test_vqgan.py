"""VQGAN / TE-VQGAN / VQ-VAE on the shared tokenizer base: tiny models on CPU."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vqzoo.data.batch import TensorBatchDataset

from vqzoo import VQGAN, OrthogonalRegularizer, VectorQuantizer
from vqzoo.losses import AdversarialLoss, NLayerDiscriminator
from vqzoo.optim import spec


def tiny(adversarial: AdversarialLoss | None = None, ortho: bool = False, **kw) -> VQGAN:  # noqa: ANN003
    torch.manual_seed(0)
    q = VectorQuantizer(16, 8, regularizers=[OrthogonalRegularizer(10.0)] if ortho else None)
    args = dict(in_channels=1, resolution=16, ch=8, ch_mult=(1, 2, 2), attn_resolutions=(4,), z_channels=8,
                optimizer=spec("torch.optim.Adam", lr=3e-3, betas=(0.5, 0.9)), adversarial=adversarial)
    args.update(kw)
    return VQGAN(q, **args)


def fixed_batch(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 16, 16)
    for i in range(n):  # simple shapes: a bright square at a per-sample position
        r, c = divmod(i, 4)
        x[i, 0, 2 + 3 * r : 8 + 3 * r, 2 + 2 * c : 8 + 2 * c] = 1.0
    return (x * 2 - 1 + 0.02 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.disc: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))
        if pl_module.adversarial is not None:
            w = torch.cat([p.detach().flatten() for p in pl_module.adversarial.parameters()])
            self.disc.append(w.clone())


def fit(model: VQGAN, steps: int, recorder: Recorder | None = None) -> L.Trainer:
    x = fixed_batch()
    loader = DataLoader(TensorBatchDataset(images=x, labels=torch.zeros(len(x), dtype=torch.long)), batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[recorder] if recorder else None,
    )
    trainer.fit(model, loader)
    return trainer


@pytest.mark.parametrize(
    "downsample, latent", [("strided_conv", 4), ("conv_blurpool", 4), ("maxpool", 4), ("max_blurpool", 4)]
)
def test_each_downsampling_variant_gives_documented_token_grid(downsample: str, latent: int) -> None:
    m = tiny(downsample=downsample)
    assert m.downsample_factor == 4 and m.token_shape == (latent, latent)
    idx = m.tokenize(fixed_batch(2))
    assert idx.shape == (2, latent, latent)
    assert m.detokenize(idx).shape == (2, 1, 16, 16)


def test_loss_falls_on_a_fixed_batch() -> None:
    rec = Recorder()
    fit(tiny(ortho=True), steps=40, recorder=rec)
    first, last = sum(rec.losses[:3]) / 3, sum(rec.losses[-3:]) / 3
    assert last < 0.6 * first, (first, last)


def test_discriminator_frozen_before_start_and_trained_after() -> None:
    rec = Recorder()
    adv = AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1), disc_start=3)
    model = tiny(adversarial=adv)
    trainer = fit(model, steps=6, recorder=rec)
    # disc weights after batches 1..3 (generator steps 0, 1, 2) equal the initial ones
    assert torch.equal(rec.disc[0], rec.disc[1]) and torch.equal(rec.disc[1], rec.disc[2])
    assert not torch.equal(rec.disc[2], rec.disc[3])  # step 3 trains the discriminator
    assert not torch.equal(rec.disc[3], rec.disc[4])
    # our generator-step counter counts batches; Lightning's global_step counts both optimizers
    assert model.generator_step == 6
    assert trainer.global_step == 6 + 3


def test_gradients_reach_encoder_decoder_and_codebook() -> None:
    model = tiny(ortho=True)
    x = fixed_batch(4)
    x_rec, q = model(x)
    loss, _ = model.reconstruction_terms(x, x_rec)
    (loss + q.loss).backward()
    for name, p in [
        ("encoder.conv_in", model.encoder.conv_in.weight),
        ("quant_conv", model.quant_conv.weight),
        ("codebook", model.quantizer.codebook.weight),
        ("post_quant_conv", model.post_quant_conv.weight),
        ("decoder.conv_out", model.decoder.conv_out.weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_orthogonal_term_only_when_configured() -> None:
    x = fixed_batch(2)
    assert "orthogonal" not in tiny(ortho=False)(x)[1].losses
    assert "orthogonal" in tiny(ortho=True)(x)[1].losses


def test_vq_vae_recipe_never_builds_lpips(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = tiny(perceptual_weight=0.0)
    fit(model, steps=1)
    assert model._perceptual is None


def test_missing_lpips_weights_stop_fit_at_start_up(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("VQZOO_ALLOW_DOWNLOAD", raising=False)
    model = tiny(perceptual_weight=1.0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth") as err:
        fit(model, steps=1)
    assert str(tmp_path) in str(err.value)
    assert model.generator_step == 0  # nothing trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(2, 3, 16, 16), r"\(B, 1, H, W\).*\(2, 3, 16, 16\)"),
        (torch.zeros(2, 1, 18, 18), r"divisible by 4.*\(2, 1, 18, 18\)"),
        (torch.zeros(2, 1, 16), r"\(2, 1, 16\)"),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "float images"),
        (torch.full((2, 1, 16, 16), float("nan")), "NaN or Inf"),
        (torch.zeros(0, 1, 16, 16), "empty batch"),
        (torch.full((2, 1, 16, 16), 255.0), r"\[-1, 1\]"),
    ],
)
def test_bad_images_raise_clear_errors(x: torch.Tensor, match: str) -> None:
    model = tiny()
    with pytest.raises(ValueError, match=match):
        model(x)
    with pytest.raises(ValueError, match=match):
        model.tokenize(x)


def test_per_token_quantizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="per_token"):
        VQGAN(VectorQuantizer(8, 4, layout="per_token"), in_channels=1, resolution=16, ch=8, ch_mult=(1, 2),
              attn_resolutions=(), z_channels=8)


def test_multichannel_vqgan_token_shape() -> None:
    torch.manual_seed(0)
    m = VQGAN(VectorQuantizer(8, 4, layout="multichannel", num_channels=2), in_channels=1, resolution=16, ch=8,
              ch_mult=(1, 2), attn_resolutions=(), z_channels=8)
    assert m.token_shape == (8, 8, 2)
    assert m.tokenize(fixed_batch(2)).shape == (2, 8, 8, 2)


def test_nonfinite_loss_skips_step_then_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqzoo.tokenizers.base import NonFiniteLossError

    model = tiny(max_nonfinite_steps=3)
    before = copy.deepcopy(model.encoder.state_dict())
    monkeypatch.setattr(model, "reconstruction_terms", lambda x, r: (r.sum() * float("nan"), {}))
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        fit(model, steps=5)
    # generator_step counts attempted steps (a host counter, vqzoo/nn/nonfinite.py); the weights did not move
    assert int(model._nonfinite_total) == 3 and model.generator_step == 3
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


def test_max_generator_steps_counts_generator_steps_only() -> None:
    adv = AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1), disc_start=0)
    model = tiny(adversarial=adv, max_generator_steps=3)
    trainer = fit(model, steps=10)
    assert model.generator_step == 3 and trainer.global_step == 6


def test_gradient_clipping_by_value_bounds_every_element(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(gradient_clip_norm=1e-4, gradient_clip_algorithm="value")
    seen: list[float] = []
    original = model._clip

    def spy(opt):  # noqa: ANN001, ANN202
        original(opt)
        seen.append(max(float(p.grad.abs().max()) for g in opt.param_groups for p in g["params"] if p.grad is not None))

    monkeypatch.setattr(model, "_clip", spy)
    fit(model, steps=2)
    assert seen and max(seen) <= 1e-4 + 1e-12
