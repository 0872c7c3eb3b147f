"""QG-VAE / QGGAN: global tokens, per-token codebooks, ordered latents, resets, configs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vqzoo.data.batch import TensorBatchDataset
from vqzoo.losses.adversarial import AdversarialLoss, NLayerDiscriminator
from vqzoo.nn.unet import QGDiscriminator, QGUNet, grid_positional_encoding
from vqzoo.optim import spec
from vqzoo.quantize import GradientMagnitudeReset, VectorQuantizer
from vqzoo.tokenizers.qgvae import QGVAE, HeadwiseLinear

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tokenizers"
C, D, K, R = 8, 4, 16, 16  # tokens, token dim, codes per codebook, resolution


def tiny(tokens_per_codebook: int = 1, reset: GradientMagnitudeReset | None = None, seed: int = 0, **kw) -> QGVAE:
    torch.manual_seed(seed)
    q = VectorQuantizer(
        K, D, layout="per_token", num_groups=C // tokens_per_codebook, beta=1.0,
        codebook_loss_weight=0.25, init="uniform_half", reset=reset,
    )
    args = dict(
        num_tokens=C, token_dim=D, downscale_power=1, num_heads=2, tokens_per_codebook=tokens_per_codebook,
        num_res_blocks=1, max_channels=16, encoder_start_channels=8, decoder_start_channels=16,
        num_frequencies=2, resolution=R, in_channels=3,
    )
    args.update(kw)
    return QGVAE(q, **args)


def images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, R, R, generator=g) * 2 - 1


# ---------------------------------------------------------------------- building blocks
def test_grid_positional_encoding_matches_formula() -> None:
    enc = grid_positional_encoding(4, 8, num_frequencies=3, dtype=torch.float64)
    assert enc.shape == (12, 4, 8)
    y, x = 3, 5  # row 3, column 5; both divided by the width 8
    for i in range(3):
        s = 2.0**i
        expected = [math.sin(s * x / 8), math.cos(s * x / 8), math.sin(s * y / 8), math.cos(s * y / 8)]
        assert torch.allclose(enc[4 * i : 4 * i + 4, y, x], torch.tensor(expected, dtype=torch.float64))


def test_headwise_linear_is_one_kernel1_conv1d_per_head() -> None:
    torch.manual_seed(0)
    heads, tokens, n_in, n_out = 3, 6, 5, 4
    lin = HeadwiseLinear(heads, tokens, n_in, n_out)
    x = torch.randn(2, tokens, n_in)
    per = tokens // heads
    outs = []
    for h in range(heads):
        conv = nn.Conv1d(n_in, n_out, kernel_size=1)
        conv.weight.data.copy_(lin.weight[h].unsqueeze(-1))
        conv.bias.data.copy_(lin.bias[h])
        # reference layout: features on the channel axis, this head's tokens on the length axis
        outs.append(conv(x[:, h * per : (h + 1) * per].transpose(1, 2)).transpose(1, 2))
    assert torch.allclose(lin(x), torch.cat(outs, dim=1), atol=1e-6)


def test_unet_shapes_and_discriminator() -> None:
    torch.manual_seed(0)
    enc = QGUNet(3, 8, 32, 8, start_channels=4, max_channels=16, num_frequencies=1)
    assert enc.down_resolutions == [32, 16, 8] and enc.up_resolutions == [8]
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 8, 8, 8)
    dec = QGUNet(8, 3, 8, 32, start_channels=16, max_channels=16, num_frequencies=1)
    assert dec.down_resolutions == [8] and dec.up_resolutions == [8, 16, 32]
    assert dec(torch.randn(1, 8, 8, 8)).shape == (1, 3, 32, 32)
    disc = QGDiscriminator(3, 16, channels=4, max_channels=8, num_frequencies=1)
    assert disc(torch.randn(2, 3, 16, 16)).shape == (2, 1, 16, 16)


# ---------------------------------------------------------------------- global tokens
def _patch_gradients(grad: torch.Tensor, patch: int) -> torch.Tensor:
    """Sum of |grad| over each patch x patch region -> (H/patch, W/patch)."""
    return F.avg_pool2d(grad.abs().sum(1, keepdim=True), patch)[0, 0] * patch * patch


def test_every_token_depends_on_every_image_region() -> None:
    model = tiny().eval()
    x = images(1).requires_grad_(True)
    z = model.encode(x)  # (1, C, D) pre-quantisation
    assert z.shape == (1, C, D)
    g = torch.Generator().manual_seed(2)
    for t in range(C):
        (grad,) = torch.autograd.grad((z[0, t] * torch.randn(D, generator=g)).sum(), x, retain_graph=True)
        assert (_patch_gradients(grad, 4) > 0).all(), f"token {t} ignores some 4x4 region"

    # A VQ-VAE-style conv encoder: its spatial token (0, 0) only sees the top-left corner.
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, D, 4, 2, 1))
    x2 = images(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(conv(x2)[0, :, 0, 0].sum(), x2)
    regions = _patch_gradients(grad, 4)
    assert regions[0, 0] > 0 and regions[-1, -1] == 0 and (regions == 0).sum() >= 8


# ---------------------------------------------------------------------- per-token codebooks
@pytest.mark.parametrize("tokens_per_codebook", [1, 2])
def test_token_t_uses_only_its_groups_codebook(tokens_per_codebook: int) -> None:
    model = tiny(tokens_per_codebook).eval()
    z = model.encode(images(4))
    out = model.quantizer(z)
    weight = model.quantizer.codebook.weight.detach().double()  # (G, K, D)
    assert weight.shape == (C // tokens_per_codebook, K, D)
    zd = z.detach().double()
    for t in range(C):
        g = t // tokens_per_codebook
        dist = ((zd[:, t, None, :] - weight[g][None]) ** 2).sum(-1)  # (B, K), float64 reference
        assert torch.equal(out.indices[:, t], dist.argmin(-1))
        assert torch.allclose(out.quantized[:, t].double(), weight[g, out.indices[:, t]], atol=1e-6)
    # the lookup used for detokenize goes through the same group's codebook
    assert torch.equal(model.quantizer.lookup(out.indices), out.quantized.detach())
    # and a different group's codebook would have given different vectors
    other = weight[(torch.arange(C) // tokens_per_codebook + 1) % weight.shape[0]]  # (C, K, D)
    wrong = other[torch.arange(C), out.indices[0]]
    assert not torch.allclose(wrong, out.quantized[0].double())


def test_constructor_validates_quantizer() -> None:
    base = dict(num_tokens=C, token_dim=D, downscale_power=1, num_heads=2, max_channels=8,
                encoder_start_channels=4, num_frequencies=1, resolution=R)
    with pytest.raises(ValueError, match="num_groups must be num_tokens / tokens_per_codebook"):
        QGVAE(VectorQuantizer(K, D, layout="per_token", num_groups=C // 2), **base)
    with pytest.raises(ValueError, match="quantizer.dim must equal token_dim"):
        QGVAE(VectorQuantizer(K, D + 1, layout="per_token", num_groups=C), **base)
    with pytest.raises(ValueError, match="layout='per_token'"):
        QGVAE(VectorQuantizer(K, D), **base)
    with pytest.raises(ValueError, match="num_heads=3 must be >= 1 and divide"):
        QGVAE(VectorQuantizer(K, D, layout="per_token", num_groups=C), **{**base, "num_heads": 3})


# ---------------------------------------------------------------------- ordered latents
def test_detokenize_keep_ignores_later_tokens() -> None:
    model = tiny().eval()
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, K, (2, C), generator=g)
    k = 3
    other = idx.clone()
    other[:, k:] = (idx[:, k:] + 1 + torch.randint(0, K - 1, (2, C - k), generator=g)) % K
    assert (other[:, k:] != idx[:, k:]).all()
    with torch.no_grad():
        a = model.detokenize(idx, keep=k)
        assert torch.equal(a, model.detokenize(other, keep=k))
        changed_kept = idx.clone()
        changed_kept[:, k - 1] = (idx[:, k - 1] + 1) % K
        assert not torch.allclose(a, model.detokenize(changed_kept, keep=k))
        # keep=0 decodes "no information": the same image for any indices
        assert torch.equal(model.detokenize(idx, keep=0), model.detokenize(other, keep=0))
        assert torch.allclose(model.detokenize(idx, keep=C), model.detokenize(idx), atol=1e-5)
    with pytest.raises(ValueError, match=r"keep must be an integer in \[0, 8\]"):
        model.detokenize(idx, keep=C + 1)


def test_ordered_dropout_per_sample_zeroes_decoder_input_suffix() -> None:
    model = tiny(ordered_dropout="per_sample").train()
    torch.manual_seed(4)
    n = 3000
    q = torch.randn(n, C, D)
    dec_in = model.latent_transform(q) + model.post_quant_offset.t()  # what the decoder's heads see
    zero = (dec_in == 0).all(-1)  # (n, C)
    dropped = zero.any(1)
    assert abs(dropped.float().mean().item() - 1 / 3) < 0.04
    keep = torch.where(dropped, zero.float().argmax(1), torch.full((n,), C))
    positions = torch.arange(C).unsqueeze(0)
    assert torch.equal(zero, positions >= keep.unsqueeze(1))  # a suffix is zeroed, nothing else
    assert set(keep[dropped].tolist()) == set(range(1, C))  # t ~ U{1..C-1}
    kept = ~zero
    expected = q + model.post_quant_offset.t()
    assert torch.allclose(dec_in[kept], expected.detach()[kept], atol=1e-6)
    # evaluation never drops tokens: forward in eval mode is deterministic
    model.eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])


def test_ordered_dropout_every_third_batch() -> None:
    model = tiny(ordered_dropout="every_third_batch").train()
    offset = model.post_quant_offset.t().detach()
    torch.manual_seed(5)
    q = torch.randn(6, C, D)
    for step in (1, 2, 4, 5):
        model.generator_step = step
        assert torch.equal(model.latent_transform(q), q)
    model.generator_step = 3
    seen = set()
    for _ in range(200):
        zero = ((model.latent_transform(q).detach() + offset) == 0).all(-1)
        ks = (~zero).sum(1)
        assert (ks == ks[0]).all(), "one k for the whole batch"
        assert torch.equal(zero, (torch.arange(C) >= ks[0]).expand_as(zero))
        seen.add(int(ks[0]))
    assert seen == set(range(0, C + 1))


# ---------------------------------------------------------------------- codebook reset in training
def test_gradient_magnitude_reset_in_lightning_loop(tmp_path: Path) -> None:
    reset = GradientMagnitudeReset(every=2)
    model = tiny(reset=reset, optimizer=spec("torch.optim.AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01))
    calls = []
    original = reset.apply

    def spy(codebook):  # noqa: ANN001, ANN202
        before = codebook.weight.detach().clone()
        mag = reset.magnitude.clone()
        moved = original(codebook)
        calls.append((int(reset.step), mag, before, codebook.weight.detach().clone(), moved))
        return moved

    reset.apply = spy
    data = torch.utils.data.DataLoader(TensorBatchDataset(images=images(10)), batch_size=2)
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    assert model.generator_step == 5
    assert [c[0] for c in calls] == [2, 4]  # the configured period, in optimizer steps
    for _, mag, before, after, moved in calls:
        changed = (after != before).any(-1)  # (G, K)
        assert moved == int(changed.sum()) > 0
        assert (mag[changed] == 0).all(), "only codes with zero accumulated gradient move"
        assert int(changed.sum()) <= int((mag > 1e-6).sum())
        for g, k in changed.nonzero().tolist():
            donors = before[g][mag[g] > 1e-6]
            assert ((after[g, k] - donors).abs().amax(-1) <= 1e-4 + 1e-7).any(), "moved onto a busy code"
    assert (reset.magnitude >= 0).all()


# ---------------------------------------------------------------------- bad input
def test_rejects_wrong_image_size_and_token_shape() -> None:
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model.tokenize(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"indices of shape \(B, 8\)"):
        model.detokenize(torch.zeros(1, 4, dtype=torch.long))
    assert model.token_shape == (C,) and model.vocab_size == K


# ---------------------------------------------------------------------- QGGAN
def test_qggan_switches_from_mse_to_l1_after_warmup() -> None:
    adv = AdversarialLoss(NLayerDiscriminator(3, ndf=4, n_layers=1, norm="group"), disc_start=3, disc_weight=0.75)
    model = tiny(adversarial=adv, mse_warmup_steps=3, mse_warmup_weight=0.25,
                 reconstruction_loss="l1", reconstruction_weight=0.5)
    x, y = images(2, seed=6), images(2, seed=7)
    xd, yd = x.double(), y.double()
    model.generator_step = 2
    total, logs = model.reconstruction_terms(x, y)
    assert math.isclose(total.item(), 0.25 * ((xd - yd) ** 2).mean().item(), rel_tol=1e-5)
    model.generator_step = 3
    total, _ = model.reconstruction_terms(x, y)
    assert math.isclose(total.item(), 0.5 * (xd - yd).abs().mean().item(), rel_tol=1e-5)
    assert not adv.is_active(2) and adv.is_active(3)


# ---------------------------------------------------------------------- configs
def _config_paths() -> list[Path]:
    return sorted([*CONFIGS.glob("qgvae_*.yaml"), *CONFIGS.glob("qggan_*.yaml")])


def test_configs_exist_and_build() -> None:
    from jsonargparse import ArgumentParser

    from vqzoo.data.images import ImageDataModule
    from vqzoo.tokenizers.base import Tokenizer

    paths = _config_paths()
    names = {p.name for p in paths}
    for expected in ("qgvae_mnist.yaml", "qgvae_cifar10.yaml", "qgvae_svhn.yaml", "qgvae_celeba64.yaml",
                     "qgvae_imagenet64_256.yaml", "qgvae_imagenet64_1024.yaml", "qgvae_imagenet128.yaml",
                     "qggan_imagenet128.yaml", "qgvae_fashion_mnist_cpu.yaml"):
        assert expected in names
    for path in paths:
        text = path.read_text()
        assert text.startswith("#") and "Expected" in text, f"{path.name} lacks its header"
        cfg = yaml.safe_load(text)
        assert cfg["model"]["class_path"] == "vqzoo.tokenizers.qgvae.QGVAE"
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(Tokenizer, "model")
        parser.add_class_arguments(ImageDataModule, "data")
        parsed = parser.parse_object({"model": cfg["model"], "data": cfg["data"]["init_args"]})
        with torch.device("meta"):  # type-check and build without spending time on weights
            built = parser.instantiate(parsed)
        model, data = built.model, built.data
        assert isinstance(model, QGVAE)
        assert (data.resolution, data.channels) == (model.resolution, model.in_channels), path.name
        assert isinstance(model.quantizer.reset, GradientMagnitudeReset)
        assert (path.name.startswith("qggan")) == (model.adversarial is not None)
