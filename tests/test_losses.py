"""Tests for vqzoo.losses: adaptive weight, GAN losses, PatchGAN, AdversarialLoss, LPIPS."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vqzoo.losses.perceptual as perceptual
from vqzoo.losses import (
    LPIPS,
    AdversarialLoss,
    NLayerDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
    lecam_regularizer,
    normalize_features,
    vanilla_d_loss,
)

# --------------------------------------------------------------------------- adaptive weight


def test_adaptive_weight_matches_hand_computation_float64():
    # nll = ||W x - t||^2, g = -v . (W x): grads are outer products, whose
    # Frobenius norms factor as ||a|| * ||x||.
    W = nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]], dtype=torch.float64))
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    v = torch.tensor([0.3, -0.4], dtype=torch.float64)
    out = W @ x
    nll = ((out - t) ** 2).sum()
    g = -(v * out).sum()
    w = adaptive_weight(nll, g, W)

    r = [0.5 * 1 - 1.0 * 2 + 2.0 * -1 - 0.0, 1.5 * 1 + 0.25 * 2 - 0.5 * -1 - 1.0]  # W x - t = [-3.5, 1.5]
    norm_x = math.sqrt(1 + 4 + 1)
    expected = (2 * math.hypot(*r) * norm_x) / (math.hypot(0.3, 0.4) * norm_x + 1e-4)
    assert w.dtype == torch.float64
    assert not w.requires_grad
    assert w.item() == pytest.approx(expected, rel=1e-12)
    # retain_graph: the real backward still works and no .grad was written before it.
    assert W.grad is None
    (nll + w * g).backward()
    assert W.grad is not None


def test_adaptive_weight_clamped_to_max_weight():
    W = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    out = W.sum()
    w = adaptive_weight(100.0 * out, 1e-9 * out, W, max_weight=50.0)
    assert w.item() == 50.0


def test_adaptive_weight_rejects_unrelated_layer():
    W = nn.Parameter(torch.ones(2))
    other = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="last_layer"):
        adaptive_weight(W.sum(), W.sum() * 2, other)


# --------------------------------------------------------------------------- GAN losses


def test_hinge_vanilla_generator_losses_hand_worked():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2] (mean 5/6), relu(1 + fake) = [0, 1, 2.5] (mean 7/6)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3), abs=1e-7)
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0, abs=1e-7)

    def softplus(a: float) -> float:
        return math.log1p(math.exp(a))

    expected = 0.5 * (
        sum(softplus(-r) for r in [2.0, 0.5, -1.0]) / 3 + sum(softplus(f) for f in [-2.0, 0.0, 1.5]) / 3
    )
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, abs=1e-6)
    assert generator_loss(fake).item() == pytest.approx(0.5 / 3, abs=1e-7)


def test_lecam_regularizer_hand_worked():
    real = torch.tensor([1.0, -1.0])
    fake = torch.tensor([0.0, 2.0])
    # relu(real - 0.5)^2 = [0.25, 0] ; relu(0.2 - fake)^2 = [0.04, 0]
    value = lecam_regularizer(real, fake, ema_real=torch.tensor(0.2), ema_fake=torch.tensor(0.5))
    assert value.item() == pytest.approx(0.125 + 0.02, abs=1e-7)


# --------------------------------------------------------------------------- discriminator


def test_patchgan_output_shape_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator(in_channels=3, ndf=64, n_layers=3)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert len(bns) == 3
    big = convs[3].weight  # 512*256*16 values: the sample std is tight
    assert big.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.cat([b.weight for b in bns]).mean().item() == pytest.approx(1.0, abs=0.01)
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2


@pytest.mark.parametrize("norm", ["group", "none", "spectral"])
def test_patchgan_norm_variants(norm):
    d = NLayerDiscriminator(in_channels=1, ndf=8, n_layers=2, norm=norm)
    assert d(torch.randn(2, 1, 32, 32)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        d(torch.randn(2, 3, 32, 32))


# --------------------------------------------------------------------------- AdversarialLoss


class _CountingDisc(NLayerDiscriminator):
    def __init__(self) -> None:
        super().__init__(in_channels=3, ndf=8, n_layers=2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def _tiny_generator():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    z = torch.randn(2, 3, 16, 16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x_rec = conv(z)
    nll = (x - x_rec).abs().mean()
    return conv, x, x_rec, nll


def test_adversarial_loss_inactive_before_start_then_active():
    disc = _CountingDisc()
    adv = AdversarialLoss(disc, disc_start=5, disc_weight=0.8)
    conv, x, x_rec, nll = _tiny_generator()

    term, logs = adv.generator_term(x_rec, nll, conv.weight, gen_step=4)
    d_term, d_logs = adv.discriminator_term(x, x_rec.detach(), gen_step=4)
    assert term.item() == 0.0 and d_term.item() == 0.0
    assert logs["g_loss"].item() == 0.0 and logs["d_weight"].item() == 0.0 and d_logs["d_loss"].item() == 0.0
    assert disc.calls == 0
    d_term.backward()  # a blind backward is a harmless no-op
    assert all(p.grad is None for p in disc.parameters())
    assert not adv.is_active(4) and adv.is_active(5)

    term, logs = adv.generator_term(x_rec, nll, conv.weight, gen_step=5)
    assert disc.calls == 1
    assert term.item() != 0.0
    g = logs["g_loss"]
    # the weight is 0.8 x the adaptive weight computed on its own
    expected_w = 0.8 * adaptive_weight(nll, generator_loss(disc(x_rec)), conv.weight)
    assert logs["d_weight"].item() == pytest.approx(expected_w.item(), rel=1e-5)
    assert term.item() == pytest.approx((expected_w * g).item(), rel=1e-5)

    d_term, d_logs = adv.discriminator_term(x, x_rec.detach(), gen_step=5)
    assert d_term.item() > 0 and d_term.requires_grad
    for key in ("d_loss", "logits_real", "logits_fake"):
        assert key in d_logs
    d_term.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert conv.weight.grad is None  # the discriminator loss never reaches the generator


def test_adversarial_loss_fixed_weight_movq_recipe():
    disc = _CountingDisc()
    adv = AdversarialLoss(disc, disc_start=0, disc_weight=0.1, adaptive=False)
    conv, x, x_rec, nll = _tiny_generator()
    term, logs = adv.generator_term(x_rec, nll, None, gen_step=0)
    assert logs["d_weight"].item() == pytest.approx(0.1)
    assert term.item() == pytest.approx(0.1 * logs["g_loss"].item(), rel=1e-6)


def test_adversarial_loss_validation_without_grad():
    adv = AdversarialLoss(_CountingDisc(), disc_start=0)
    conv, x, _, _ = _tiny_generator()
    with torch.no_grad():
        x_rec = conv(x)
        term, logs = adv.generator_term(x_rec, (x - x_rec).abs().mean(), conv.weight, gen_step=10)
    assert term.item() == 0.0 and logs["d_weight"].item() == 0.0 and logs["g_loss"].item() != 0.0


def test_adversarial_loss_lecam_updates_ema_buffers():
    adv = AdversarialLoss(_CountingDisc(), disc_start=0, loss="vanilla", lecam_weight=0.1, lecam_decay=0.5)
    _, x, x_rec, _ = _tiny_generator()
    loss, logs = adv.discriminator_term(x, x_rec.detach(), gen_step=0)
    assert "lecam" in logs
    assert adv.lecam_ema_real.item() == pytest.approx(0.5 * logs["logits_real"].item(), rel=1e-6)
    assert adv.lecam_ema_fake.item() == pytest.approx(0.5 * logs["logits_fake"].item(), rel=1e-6)
    assert "lecam_ema_real" in adv.state_dict()


# --------------------------------------------------------------------------- LPIPS


def test_normalize_features_finite_gradient_at_zero_where_lpips_gives_nan():
    import lpips

    h = torch.zeros(1, 4, 2, 2, requires_grad=True)
    normalize_features(h).pow(2).sum().backward()
    assert torch.isfinite(h.grad).all()
    h2 = torch.zeros(1, 4, 2, 2, requires_grad=True)
    lpips.normalize_tensor(h2).pow(2).sum().backward()
    assert torch.isnan(h2.grad).any()  # docs/pitfalls.md #14, the pitfall this guards against
    v = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    expected = v / v.pow(2).sum(1, keepdim=True).sqrt()
    torch.testing.assert_close(normalize_features(v), expected, rtol=1e-8, atol=1e-12)


def _lpips_with_zero_first_tap() -> LPIPS:
    # relu1_2 replaced by identity after a zeroed conv: the first tap's features
    # are exactly zero and no ReLU masks their gradient.
    torch.manual_seed(0)
    m = LPIPS(pretrained=False)
    with torch.no_grad():
        m.features[2].weight.zero_()
        m.features[2].bias.zero_()
    m.features[3] = nn.Identity()
    return m


def test_lpips_identical_inputs_zero_distance_finite_zero_gradient(monkeypatch):
    m = _lpips_with_zero_first_tap()
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    d = m(x, x)
    assert d.shape == (2,)
    assert torch.equal(d, torch.zeros(2))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max().item() < 1e-6

    # The same check with lpips' own normalisation yields NaN: the test is sensitive.
    import lpips

    monkeypatch.setattr(perceptual, "normalize_features", lambda h, eps: lpips.normalize_tensor(h))
    x2 = x.detach().clone().requires_grad_(True)
    m(x2, x2).sum().backward()
    assert torch.isnan(x2.grad).any()


def test_lpips_positive_for_different_inputs_and_frozen():
    torch.manual_seed(0)
    m = LPIPS(pretrained=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = x + 0.3 * torch.randn_like(x)
    d = m(x, y)
    assert (d > 0).all()
    assert torch.equal(m(x[:1].expand(2, -1, -1, -1), x[:1].expand(2, -1, -1, -1)), torch.zeros(2))
    grey = x[:, :1]
    torch.testing.assert_close(m(grey, y[:, :1]), m(grey.expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)))
    m.train()
    assert not m.training and not any(mod.training for mod in m.modules())
    assert not any(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="same shape"):
        m(x, y[:, :, :16])


def test_lpips_missing_vgg_weights_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("VQZOO_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        LPIPS()
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_pretrained_loads_cache_file_and_matches_lpips_package(tmp_path, monkeypatch):
    """Our LPIPS with a (random) VGG16 file in the cache equals lpips.LPIPS with the same trunk."""
    import lpips

    torch.manual_seed(0)
    ref = lpips.LPIPS(pretrained=True, net="vgg", pnet_rand=True, verbose=False)
    trunk = {}
    for key, value in ref.net.state_dict().items():  # "slice2.5.weight" -> "features.5.weight"
        _, index, kind = key.split(".")
        trunk[f"features.{index}.{kind}"] = value
    ckpt = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(trunk, ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    ours = LPIPS(pretrained=True)
    bundled = torch.load(
        perceptual.Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu", weights_only=True
    )
    torch.testing.assert_close(ours.lins[4].model[-1].weight, bundled["lin4.model.1.weight"])
    torch.testing.assert_close(ours.features[28].weight, trunk["features.28.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = ref(x, y).flatten()
        got = ours(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
