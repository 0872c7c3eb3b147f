"""prefix_psnr: PSNR from the first k QG-VAE tokens, masked like the ordered dropout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vqzoo.metrics.ordered_latents import prefix_psnr
from vqzoo.quantize import VectorQuantizer
from vqzoo.tokenizers.qgvae import QGVAE

C = 8


def tiny() -> QGVAE:
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, layout="per_token", num_groups=C, beta=1.0, codebook_loss_weight=0.25,
                        init="uniform_half")
    return QGVAE(q, num_tokens=C, token_dim=4, downscale_power=1, num_heads=2, num_res_blocks=1, max_channels=16,
                 encoder_start_channels=8, decoder_start_channels=16, num_frequencies=2, resolution=16,
                 in_channels=1, ordered_dropout="per_sample")


def test_prefix_psnr_matches_a_direct_computation() -> None:
    model = tiny()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    curve = prefix_psnr(model, [x[:4], {"images": x[4:]}])
    assert list(curve) == list(range(1, C + 1))
    with torch.no_grad():
        idx = model.tokenize(x)
        for k in (1, 3, C):
            rec = ((model.detokenize(idx, keep=k) + 1) / 2).clamp(0, 1)
            mse = (rec - (x + 1) / 2).square().flatten(1).mean(1)
            assert curve[k] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
        # k = C is the full reconstruction
        full = ((model(x)[0] + 1) / 2).clamp(0, 1)
        mse = (full - (x + 1) / 2).square().flatten(1).mean(1)
        assert curve[C] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)
    assert model.training  # mode restored


def test_prefix_psnr_options() -> None:
    model = tiny().eval()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    assert list(prefix_psnr(model, [x], ks=[0, 2], max_images=3)) == [0, 2]
    with pytest.raises(ValueError, match=r"in \[0, 8\]"):
        prefix_psnr(model, [x], ks=[9])
    with pytest.raises(ValueError, match="no images"):
        prefix_psnr(model, [])


def test_ordered_latents_script_writes_table_and_plot(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import qgvae_ordered_latents as script

    result = {"protocol": {"data": "toy"}, "curves": {"a": {"ordered_dropout": "per_sample", "psnr": {1: 10.0, 2: 12.0}},
                                                     "b": {"ordered_dropout": "none", "psnr": {1: 8.0, 2: 13.0}}}}
    script.write(result, tmp_path / "o.json")
    assert "| 2 | 12.00 | 13.00 |" in (tmp_path / "o.md").read_text()
    assert (tmp_path / "o.png").stat().st_size > 0
