"""Every tokenizer takes every quantizer; the equal-bits configs build and train; priors model the indices."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vqzoo.data.batch import TensorBatchDataset
from vqzoo.priors import MaskGIT, MiniGPT, PriorBatch
from vqzoo.quantize import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    ResidualQuantizer,
    VectorQuantizer,
)
from vqzoo.tokenizers import QGVAE, VQGAN, MoVQ

ROOT = Path(__file__).resolve().parents[1]
FAMILY = sorted((ROOT / "configs" / "tokenizers").glob("vqgan_fashion_cpu_*.yaml"))
EXPECTED = {
    "vq": (VectorQuantizer, 1024, (8, 8)),
    "fsq": (FiniteScalarQuantizer, 1000, (8, 8)),
    "lfq": (LookupFreeQuantizer, 1024, (8, 8)),
    "rvq": (ResidualQuantizer, 32, (8, 8, 2)),
    "simvq": (VectorQuantizer, 1024, (8, 8)),
    "rotation": (VectorQuantizer, 1024, (8, 8)),
}


def build(path: Path, tmp_path: Path):  # noqa: ANN201
    from vqzoo.cli import VQZooCLI

    return VQZooCLI(args=["--config", str(path), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"],
                    run=False)


def one_step(model: L.LightningModule, images: torch.Tensor) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(TensorBatchDataset(images=images), batch_size=len(images)))


def test_one_config_per_quantizer() -> None:
    assert {p.stem.rsplit("_", 1)[-1] for p in FAMILY} == set(EXPECTED)


@pytest.mark.parametrize("path", FAMILY, ids=lambda p: p.stem)
def test_equal_bits_config_builds_and_trains_one_step(path: Path, tmp_path: Path) -> None:
    cli = build(path, tmp_path)
    m, key = cli.model, path.stem.rsplit("_", 1)[-1]
    cls, vocab, token_shape = EXPECTED[key]
    assert isinstance(m, VQGAN) and isinstance(m.quantizer, cls) and not m.quantizer.check_inputs
    assert m.vocab_size == vocab and m.token_shape == token_shape
    bits = math.log2(m.vocab_size) * (token_shape[2] if len(token_shape) == 3 else 1)
    assert abs(bits - 10) < 0.05  # equal bits per position
    assert cli.datamodule.source == "fashion_mnist_idx" and cli.datamodule.resolution == 32
    if key == "simvq":
        assert m.quantizer.codebook.parameterization == "simvq"
    if key == "rotation":
        assert m.quantizer.gradient == "rotation"
    torch.manual_seed(0)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    before = [p.detach().clone() for p in m.quantizer.parameters() if p.requires_grad]
    one_step(m, images)
    assert m.generator_step == 1
    after = [p.detach() for p in m.quantizer.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))  # the quantizer's parameters learn
    idx = m.tokenize(images)
    assert idx.shape == (4, *token_shape) and idx.dtype == torch.int64
    assert m.detokenize(idx).shape == images.shape
    counts = m.quantizer.histogram(idx)
    assert counts.shape == (m.quantizer.num_codebooks, vocab) and int(counts.sum()) == idx.numel()


def _quantizers_for(layout: str, dim: int, **kw) -> list[Quantizer]:  # noqa: ANN003
    return [
        FiniteScalarQuantizer([5, 4, 3], dim=dim, layout=layout, **kw),
        LookupFreeQuantizer(6, dim=dim, layout=layout, **kw),
        ResidualQuantizer(VectorQuantizer(16, dim, layout=layout, **kw), depth=2),
        VectorQuantizer(16, dim, layout=layout, init="normal", parameterization="simvq", **kw),
    ]


@pytest.mark.parametrize("which", range(4), ids=["fsq", "lfq", "rvq", "simvq"])
def test_movq_and_qgvae_take_any_quantizer(which: int) -> None:
    torch.manual_seed(1)
    q = _quantizers_for("multichannel", 4, num_channels=2)[which]
    movq = MoVQ(quantizer=q, in_channels=1, resolution=16, ch=8, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[], num_val_images=2)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    idx = movq.tokenize(x)
    assert idx.shape == (2, *movq.token_shape) and movq.detokenize(idx).shape == x.shape
    q = _quantizers_for("per_token", 8, num_groups=4)[which]
    qg = QGVAE(quantizer=q, num_tokens=8, token_dim=8, num_heads=2, tokens_per_codebook=2, in_channels=1,
               resolution=16, max_channels=16, encoder_start_channels=8, bottom_resolution=8, num_frequencies=2)
    idx = qg.tokenize(x)
    assert idx.shape == (2, *qg.token_shape) and qg.detokenize(idx).shape == x.shape
    rec, out = qg(x)
    assert torch.isfinite(out.loss) and rec.shape == x.shape


def test_maskgit_trains_a_step_on_rvq_tokens_and_minigpt_flattens_them() -> None:
    torch.manual_seed(2)
    rvq = ResidualQuantizer(VectorQuantizer(16, 4), depth=3)
    tok = VQGAN(quantizer=rvq, in_channels=1, resolution=16, ch=8, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[], z_channels=8)
    tokens = tok.tokenize(torch.rand(6, 1, 16, 16) * 2 - 1)
    assert tokens.shape == (6, 8, 8, 3) and tok.token_shape == (8, 8, 3)
    tiny = dict(n_layer=1, n_head=2, n_embd=16)
    mg = MaskGIT(vocab_size=tok.vocab_size, token_shape=list(tok.token_shape), **tiny)
    assert mg.num_channels == 3  # the levels are the channels of one position
    opt = mg.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    before = [p.detach().clone() for p in mg.parameters()]
    loss, _ = mg.compute_loss(PriorBatch(tokens))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, mg.parameters()))
    sample = mg.generate(2, num_steps=2)
    assert sample.shape == (2, 8, 8, 3) and tok.detokenize(sample).shape == (2, 1, 16, 16)
    # MiniGPT flattens (H, W, R) row-major: the R codes of a position follow each other
    gpt = MiniGPT(vocab_size=tok.vocab_size, token_shape=list(tok.token_shape), **tiny)
    loss, _ = gpt.compute_loss(PriorBatch(tokens))
    assert torch.isfinite(loss) and gpt.num_image_tokens == 8 * 8 * 3


def test_residual_tokenizer_with_extra_state_exports_and_reloads(tmp_path: Path) -> None:
    """A residual quantizer keeps its dropout step as extra state: a .ckpt and an export both carry it."""
    from vqzoo.checkpoint import export_model, load

    rvq = ResidualQuantizer(VectorQuantizer(16, 4), depth=2, quantizer_dropout=0.5)
    m = VQGAN(quantizer=rvq, in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(), z_channels=4)
    m.quantizer._dropout_step = 7
    again = load(export_model(m, tmp_path / "export"))
    assert again.quantizer._dropout_step == 7
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(again.eval().tokenize(x), m.eval().tokenize(x))
