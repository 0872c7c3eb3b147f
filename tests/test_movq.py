"""Tests for vqzoo.tokenizers.movq.MoVQ (SpatialNorm decoder + multichannel quantization)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.losses.adversarial import AdversarialLoss, NLayerDiscriminator
from vqzoo.nn.spatial_norm import SpatialNorm
from vqzoo.optim import spec
from vqzoo.quantize import VectorQuantizer
from vqzoo.tokenizers.movq import MoVQ

ROOT = Path(__file__).resolve().parents[1]


def tiny_movq(num_channels: int = 2, dim: int = 3, num_codes: int = 16, layout: str | None = None,
              seed: int = 0, **kwargs) -> MoVQ:
    """16x16 one-channel images -> 8x8 grid with M codes per position (f = 2)."""
    torch.manual_seed(seed)
    layout = layout or ("multichannel" if num_channels > 1 else "spatial")
    q = VectorQuantizer(num_codes, dim, layout=layout, num_channels=num_channels)
    return MoVQ(q, in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), **kwargs)


def images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    """Smooth structured images in [-1, 1]: random mixtures of low-frequency sinusoids."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        a, b, c, d = (torch.rand(4, generator=g) * 2 * math.pi).tolist()
        fx, fy = (1 + torch.randint(0, 3, (2,), generator=g)).tolist()
        out[i, 0] = 0.6 * torch.sin(fx * 2 * math.pi * xx + a) * torch.cos(fy * 2 * math.pi * yy + b) \
            + 0.3 * torch.sin(c + d * xx * yy)
    return out.clamp(-1, 1)


# --------------------------------------------------------------------------- construction


def test_rejects_per_token_quantizer_with_clear_message():
    q = VectorQuantizer(16, 4, layout="per_token")
    with pytest.raises(ValueError, match="multichannel.*spatial.*per_token"):
        MoVQ(q, in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=())


def test_shapes_vocab_and_decode_input_check():
    m = tiny_movq(num_channels=4, dim=2, num_codes=32)
    assert m.token_shape == (8, 8, 4) and m.vocab_size == 32 and m.num_channels == 4
    assert m.quant_conv.out_channels == 8 and m.decoder.zq_channels == 8
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\)"):
        m.decode(torch.zeros(1, 2, 8, 8))


# --------------------------------------------------------------------------- SpatialNorm conditioning


def test_every_decoder_norm_is_a_spatialnorm_fed_zq_before_post_quant_conv():
    """Gradient check through the full MoVQ decode: each SpatialNorm's own copy of zq gets a gradient."""
    m = tiny_movq(num_channels=2, dim=3).double().eval()
    norms = [mod for mod in m.decoder.modules() if isinstance(mod, SpatialNorm)]
    plain = [mod for mod in m.decoder.modules() if isinstance(mod, nn.GroupNorm)
             and not any(mod is s.norm_layer for s in norms)]
    # mid (2 ResnetBlocks x 2 norms + 1 attn) + 2 levels x 2 blocks x (2 norms + 1 attn at 8x8 only) + norm_out
    assert len(norms) == 5 + (2 * 2 + 2) + (2 * 2) + 1 and not plain

    zq = torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    seen, leaves = [], []

    def substitute(module, args):
        f, cond = args
        seen.append(cond)
        leaf = cond.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return f, leaf

    captured_h = []
    handles = [n.register_forward_pre_hook(substitute) for n in norms]
    handles.append(m.decoder.conv_in.register_forward_pre_hook(lambda mod, a: captured_h.append(a[0])))
    out = m.decode(zq)
    for h in handles:
        h.remove()
    assert len(leaves) == len(norms)
    # The condition is zq itself (not post_quant_conv(zq)); the decoder input is post_quant_conv(zq).
    assert all(torch.equal(s, zq) for s in seen)
    assert torch.allclose(captured_h[0], m.post_quant_conv(zq))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    for i, leaf in enumerate(leaves):
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, f"SpatialNorm #{i} ignores zq"


def test_output_depends_on_zq_through_modulation_alone():
    """With post_quant_conv zeroed the decoder input is constant: any change must come through the norms."""
    m = tiny_movq(num_channels=2, dim=3).eval()
    with torch.no_grad():
        m.post_quant_conv.weight.zero_()
        m.post_quant_conv.bias.zero_()
    zq = torch.randn(1, 6, 8, 8)
    zq2 = zq.clone()
    zq2[:, :, 3, 4] += 1.0
    a, b = m.decode(zq), m.decode(zq2)
    assert (a - b).abs().max() > 1e-4
    # A plain decoder with the same zeroed input would give identical outputs.
    assert torch.equal(m.post_quant_conv(zq), m.post_quant_conv(zq2))


# --------------------------------------------------------------------------- multichannel quantization


def test_m1_multichannel_equals_spatial_layout_with_shared_weights():
    spatial = tiny_movq(num_channels=1, dim=4, layout="spatial", seed=3).eval()
    multi = tiny_movq(num_channels=1, dim=4, layout="multichannel", seed=4).eval()
    multi.load_state_dict(spatial.state_dict())
    # Spread the codes so indices are not all the same.
    with torch.no_grad():
        w = torch.randn_like(spatial.quantizer.codebook.weight)
        spatial.quantizer.codebook.weight.copy_(w)
        multi.quantizer.codebook.weight.copy_(w)
    x = images(3)
    i_s, i_m = spatial.tokenize(x), multi.tokenize(x)
    assert i_s.shape == (3, 8, 8) and i_m.shape == (3, 8, 8, 1)
    assert torch.equal(i_s, i_m[..., 0]) and i_s.unique().numel() > 1
    with torch.no_grad():
        r_s, _ = spatial(x)
        r_m, _ = multi(x)
    assert torch.equal(r_s, r_m)


def test_multichannel_indices_come_from_one_codebook_and_lookup_reassembles_exactly():
    M, D, K = 3, 2, 16
    m = tiny_movq(num_channels=M, dim=D, num_codes=K).eval()
    with torch.no_grad():
        m.quantizer.codebook.weight.copy_(torch.randn(1, K, D))
    codes = m.quantizer.codebook.weight[0].detach().double()
    x = images(2)
    with torch.no_grad():
        z = m.encode(x)
        q = m.quantizer(z)
    assert q.indices.shape == (2, 8, 8, M) and q.indices.dtype == torch.int64
    # Independent float64 nearest-code search, channel by channel, against the ONE codebook.
    zd = z.double()
    for c in range(M):
        chunk = zd[:, c * D:(c + 1) * D].permute(0, 2, 3, 1)  # (B, h, w, D)
        dist = ((chunk.unsqueeze(-2) - codes) ** 2).sum(-1)  # (B, h, w, K)
        assert torch.equal(dist.argmin(-1), q.indices[..., c])
    assert q.indices.max() < K and q.indices.min() >= 0
    # lookup reassembles the quantized feature exactly, chunk m = codes[index m].
    looked = m.quantizer.lookup(q.indices)
    assert torch.equal(looked, q.quantized)
    for c in range(M):
        assert torch.equal(looked[:, c * D:(c + 1) * D].permute(0, 2, 3, 1), codes.float()[q.indices[..., c]])


def test_same_code_in_different_channels_gets_same_index():
    """Hand-made features: channel c at every position is code perm[c] (+ tiny noise)."""
    M, D, K = 4, 3, 8
    torch.manual_seed(0)
    q = VectorQuantizer(K, D, layout="multichannel", num_channels=M)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.eye(K, D).unsqueeze(0) * 3 + torch.arange(K).view(1, K, 1) * 0.1)
    q.eval()
    perm = [5, 2, 5, 0]
    z = torch.cat([q.codebook.weight[0, p].view(1, D, 1, 1).expand(2, D, 2, 3) for p in perm], 1)
    z = z + 1e-3 * torch.randn_like(z)
    out = q(z)
    assert out.indices.shape == (2, 2, 3, M)
    assert torch.equal(out.indices, torch.tensor(perm).expand(2, 2, 3, M))


# --------------------------------------------------------------------------- tokenize / detokenize


@pytest.mark.parametrize("num_channels", [1, 3])
def test_tokenize_detokenize_round_trip_equals_forward_in_eval(num_channels):
    m = tiny_movq(num_channels=num_channels, dim=2, num_codes=16).eval()
    with torch.no_grad():
        m.quantizer.codebook.weight.copy_(torch.randn_like(m.quantizer.codebook.weight))
    x = images(2)
    with torch.no_grad():
        rec, _ = m(x)
        idx = m.tokenize(x)
        back = m.detokenize(idx)
    assert back.shape == x.shape
    assert torch.allclose(back, rec, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- training


def test_tiny_movq_trains_through_lightning_on_cpu():
    import lightning as L
    from torch.utils.data import DataLoader

    from vqzoo.data.batch import TensorBatchDataset

    torch.manual_seed(0)
    disc = NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1, norm="group")
    adv = AdversarialLoss(disc, disc_start=0, disc_weight=0.1, adaptive=False)
    m = tiny_movq(num_channels=2, dim=4, num_codes=32, reconstruction_loss="l2", adversarial=adv,
                  optimizer=spec("torch.optim.Adam", lr=2e-3, betas=(0.5, 0.9)), check_inputs=True)
    x = images(8)
    disc_before = [p.detach().clone() for p in disc.parameters()]
    m.eval()
    with torch.no_grad():
        before = F.mse_loss(m(x)[0], x).item()
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/reconstruction"]))

    # One batch per epoch and max_epochs (not max_steps: Lightning's global_step counts the
    # discriminator's optimizer steps too, docs/pitfalls.md #12).
    trainer = L.Trainer(max_epochs=30, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Record()])
    trainer.fit(m, DataLoader(TensorBatchDataset(images=x), batch_size=8))
    assert m.generator_step == 30 and len(losses) == 30
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    m.eval()
    with torch.no_grad():
        after = F.mse_loss(m(x)[0], x).item()
    assert after < 0.7 * before
    # The discriminator's own optimizer stepped (GAN active from step 0, reference recipe);
    # the generator optimizer never holds discriminator parameters.
    assert any(not torch.equal(a, b.detach()) for a, b in zip(disc_before, disc.parameters()))


# --------------------------------------------------------------------------- configs


def build_from_config(path: Path, tmp_path: Path, *extra: str):
    from vqzoo.cli import VQZooCLI

    return VQZooCLI(args=["--config", str(path), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                          *extra], run=False)


def test_cpu_config_builds_through_the_cli(tmp_path):
    cli = build_from_config(ROOT / "configs/tokenizers/movq_fashion_mnist_cpu.yaml", tmp_path)
    m = cli.model
    assert isinstance(m, MoVQ) and m.quantizer.layout == "multichannel" and m.num_channels == 4
    assert m.token_shape == (8, 8, 4) and m.vocab_size == 256 and m.in_channels == 1
    assert m.adversarial is not None and not m.adversarial.adaptive and m.adversarial.disc_weight == 0.1
    assert cli.datamodule.source == "fashion_mnist_idx" and cli.datamodule.resolution == 32


def test_tiny_maskgit_config_matches_the_cpu_movq(tmp_path):
    movq = build_from_config(ROOT / "configs/tokenizers/movq_fashion_mnist_cpu.yaml", tmp_path).model
    cli = build_from_config(ROOT / "configs/priors/maskgit_movq_tiny.yaml", tmp_path)
    prior = cli.model
    assert prior.vocab_size == movq.vocab_size and tuple(prior.token_shape) == movq.token_shape
    assert prior.num_channels == movq.num_channels == 4
    prior.set_tokenizer(movq)  # the same check the prior runs at start-up on the checkpoint
    assert prior.tokenizer_path == "runs/movq_fashion_mnist_cpu/checkpoints/last.ckpt"


@pytest.mark.parametrize("name", ["movq_ffhq256.yaml", "movq_imagenet256.yaml"])
def test_paper_configs_build_with_the_reference_settings(name, tmp_path):
    from vqzoo.nn.convnet import Decoder

    cli = build_from_config(ROOT / "configs/tokenizers" / name, tmp_path)
    m, data = cli.model, cli.datamodule
    assert isinstance(m, MoVQ) and isinstance(m.decoder, Decoder) and m.decoder.conditional
    q = m.quantizer
    assert (q.num_codes, q.dim, q.layout, q.num_channels, q.beta) == (16384, 4, "multichannel", 4, 0.25)
    assert m.token_shape == (32, 32, 4) and m.downsample_factor == 8
    assert len(m.encoder.down) == 4 and m.encoder.down[3].block[0].out_channels == 512
    assert len(m.encoder.down[0].block) == 2 and len(m.encoder.down[2].attn) == 0
    assert len(m.encoder.down[3].attn) == 2  # attention at 32x32, the last level
    opt = m.configure_optimizers()[0][0]
    assert (type(opt), opt.defaults["lr"], opt.defaults["betas"]) == (torch.optim.Adam, 1e-4, (0.5, 0.9))
    assert (m.reconstruction_loss, m.perceptual_weight, m.codebook_weight) == ("l2", 0.1, 1.0)
    adv = m.adversarial
    assert (adv.adaptive, adv.disc_weight, adv.disc_start, adv.loss) == (False, 0.1, 0, "hinge")
    assert adv.discriminator.n_layers == 2
    assert data.source == "folder" and data.batch_size == 20 and data.resolution == 256


# --------------------------------------------------------------------------- MoVQ + MaskGIT


def test_tiny_movq_and_tiny_maskgit_end_to_end():
    """MaskGIT trains on MoVQ's (B, h, w, M) tokens through a frozen MoVQ, samples, and MoVQ decodes them."""
    import lightning as L
    from torch.utils.data import DataLoader

    from vqzoo.data.batch import TensorBatchDataset

    from vqzoo.priors.maskgit import MaskGIT

    tok = tiny_movq(num_channels=2, dim=3, num_codes=16).eval()
    with torch.no_grad():
        tok.quantizer.codebook.weight.copy_(torch.randn_like(tok.quantizer.codebook.weight))
    x = images(8)
    tokens = tok.tokenize(x)
    assert tokens.shape == (8, 8, 8, 2) and tokens.unique().numel() > 2
    torch.manual_seed(0)
    prior = MaskGIT(vocab_size=tok.vocab_size, token_shape=list(tok.token_shape), n_layer=1, n_head=2, n_embd=32,
                    embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0,
                    optimizer=spec("torch.optim.AdamW", lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0))
    prior.set_tokenizer(tok)

    def masked_ce() -> float:
        from vqzoo.priors.base import PriorBatch

        torch.manual_seed(123)  # the same random masks before and after training
        prior.eval()
        with torch.no_grad():
            return float(prior.compute_loss(PriorBatch(tokens=tokens))[1]["masked_ce"])

    before = masked_ce()
    trainer = L.Trainer(max_epochs=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(prior, DataLoader(TensorBatchDataset(images=x), batch_size=8))  # image batches, tokenized on the fly
    after = masked_ce()
    assert math.isfinite(after) and after < before

    samples = prior.generate(3, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 8, 8, 2) and samples.dtype == torch.int64
    assert int(samples.min()) >= 0 and int(samples.max()) < tok.vocab_size
    decoded = tok.detokenize(samples)
    assert decoded.shape == (3, 1, 16, 16) and torch.isfinite(decoded).all()
    imgs = prior.sample_images(2, num_steps=4)
    assert imgs.shape == (2, 1, 16, 16) and torch.isfinite(imgs).all()
