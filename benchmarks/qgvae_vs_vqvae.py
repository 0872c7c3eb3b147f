"""QG-VAE (64 global tokens) against VQ-VAE (8x8 = 64 local tokens) on Fashion-MNIST, on CPU.

The paper's table 1 compares QG-VAE with 64 tokens against a VQ-VAE with an
8x8 token grid; this is the same comparison scaled down to run offline on a
CPU in well under 30 minutes:

* Data: Fashion-MNIST IDX files (``/usr/share/datasets/fashion-mnist``),
  28x28 resized to 32x32, one channel, [-1, 1]; training on the train split
  minus the 10% validation hold-out of :class:`vqzoo.data.images.ImageDataModule`,
  evaluation on the first ``--eval-images`` images of the official test split.
* QG-VAE: exactly ``configs/tokenizers/qgvae_fashion_mnist_cpu.yaml``'s model
  (64 tokens of dim 32, K = 128 codes per token, reference loss weights,
  gradient-magnitude reset every 100 steps).
* VQ-VAE: :class:`vqzoo.tokenizers.vqgan.VQGAN` without perceptual and
  adversarial losses: taming encoder/decoder with ``ch_mult (1, 2, 2)`` (f = 4,
  so 8x8 = 64 tokens), no attention, one shared codebook of K = 128 codes of
  dim 32 (same bits per image as the QG-VAE: 64 x 7 bits), the classic VQ-VAE
  recipe (MSE, beta 0.25 on the commitment term, no reset). Its width ``ch``
  is chosen so that its network parameters (codebooks excluded) are as close
  as possible to the QG-VAE's.
* Both: the same optimizer (AdamW, ``--lr``, weight decay 0.01), batch size,
  number of steps, seed and data order, trained by the Lightning loop of
  :class:`vqzoo.tokenizers.base.Tokenizer`.
* Metrics: PSNR (per image, averaged) and SSIM (torchmetrics, data range 1 on
  [0, 1] images), codebook usage (fraction of the codes of all codebooks used
  at least once on the evaluation images) and perplexity (exp entropy per
  codebook, averaged over codebooks).

Usage::

    PYTHONPATH=. python benchmarks/qgvae_vs_vqvae.py --steps 800 --threads 2

Writes ``benchmarks/results/qgvae_vs_vqvae.json`` (protocol + results) and
``benchmarks/results/qgvae_vs_vqvae.md`` (a table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QG_CONFIG = ROOT / "configs" / "tokenizers" / "qgvae_fashion_mnist_cpu.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def build_qgvae(overrides: dict[str, Any]) -> torch.nn.Module:
    """The model of the CPU config, built through the same typed parser the CLI uses."""
    import yaml
    from jsonargparse import ArgumentParser

    from vqzoo.tokenizers.base import Tokenizer

    cfg = yaml.safe_load(QG_CONFIG.read_text())
    cfg["model"]["init_args"].update(overrides)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Tokenizer, "model")
    return parser.instantiate(parser.parse_object({"model": cfg["model"]})).model


def build_vqvae(ch: int, common: dict[str, Any]) -> torch.nn.Module:
    try:
        from vqzoo.tokenizers.vqgan import VQGAN
    except ImportError as err:  # the benchmark needs the lead's VQGAN
        raise SystemExit(f"vqzoo.tokenizers.vqgan.VQGAN is needed for the VQ-VAE baseline: {err}") from err
    from vqzoo.quantize import VectorQuantizer

    quantizer = VectorQuantizer(128, 32, beta=0.25, codebook_loss_weight=1.0, init="uniform_inv_k")
    return VQGAN(
        quantizer, in_channels=1, resolution=32, ch=ch, ch_mult=[1, 2, 2], num_res_blocks=1,
        attn_resolutions=[], z_channels=32, reconstruction_loss="l2", reconstruction_weight=1.0,
        perceptual_weight=0.0, adversarial=None, **common,
    )


def network_parameters(model: torch.nn.Module) -> int:
    codebook = {id(p) for p in model.quantizer.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in codebook)


def train(model: torch.nn.Module, datamodule: Any, steps: int, seed: int) -> float:
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tempfile.mkdtemp(prefix="qgvae_vs_vqvae_"),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, max_images: int) -> dict[str, float]:
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    from vqzoo.quantize import Codebook

    model.eval()
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
    counts = None
    psnr_values = []
    seen = 0
    for batch in loader:
        x = model.images_of(batch)[: max_images - seen]
        x_rec, q = model(x)
        x01, r01 = (x + 1) / 2, ((x_rec + 1) / 2).clamp(0, 1)
        psnr_values.append(psnr(r01, x01))
        ssim.update(r01, x01)
        h = model.quantizer.histogram(q.indices)
        counts = h if counts is None else counts + h
        seen += x.shape[0]
        if seen >= max_images:
            break
    return {
        "psnr": float(torch.cat(psnr_values).mean()),
        "ssim": float(ssim.compute()),
        "codebook_usage": float((counts > 0).float().mean()),
        "codes_used": int((counts > 0).sum()),
        "codes_total": int(counts.numel()),
        "perplexity": float(Codebook.perplexity(counts)),
        "eval_images": seen,
    }


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    rows = [
        "# QG-VAE vs VQ-VAE on Fashion-MNIST 32x32 (CPU)",
        "",
        f"{p['steps']} steps of batch {p['batch_size']}, AdamW lr {p['learning_rate']}, seed {p['seed']}, "
        f"{p['threads']} CPU thread(s); evaluation on the first {p['eval_images']} Fashion-MNIST test images. "
        "Both models use 64 tokens of 7 bits (K = 128). Full protocol in qgvae_vs_vqvae.json.",
        "",
        "| model | tokens | network params | codebook params | PSNR (dB) | SSIM | codebook usage | perplexity | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        rows.append(
            f"| {name} | {r['tokens']} | {r['network_parameters']:,} | {r['codebook_parameters']:,} | "
            f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['codebook_usage']:.3f} ({r['codes_used']}/{r['codes_total']}) | "
            f"{r['perplexity']:.1f} | {r['train_seconds']:.0f} |"
        )
    rows += [
        "",
        f"PSNR difference QG-VAE minus VQ-VAE: {result['psnr_difference_db']:+.2f} dB.",
        "",
        "Codebook usage is over all codebooks: the QG-VAE has one codebook of K codes per token "
        "(64 x 128 pairs), the VQ-VAE one shared codebook (128 codes). Both models are far from "
        "convergence at a CPU budget: the paper trains 100 epochs (about 170k steps of batch 32) and "
        "notes that per-token codebooks converge more slowly (section 3.3).",
        "",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate of both models")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "qgvae_vs_vqvae.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from vqzoo.data.images import ImageDataModule

    datamodule = ImageDataModule(
        source="fashion_mnist_idx", resolution=32, channels=1, batch_size=args.batch_size, seed=args.seed
    )
    datamodule.setup("fit")
    from vqzoo.optim import spec

    common = dict(optimizer=spec("torch.optim.AdamW", lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01))

    torch.manual_seed(args.seed)
    qg = build_qgvae(common)
    target = network_parameters(qg)
    best_ch = min(range(8, 49, 2), key=lambda c: abs(network_parameters(build_vqvae(c, common)) - target))
    torch.manual_seed(args.seed)
    vq = build_vqvae(best_ch, common)

    results: dict[str, Any] = {}
    for name, model in (("QG-VAE", qg), ("VQ-VAE", vq)):
        seconds = train(model, datamodule, args.steps, args.seed)
        metrics = evaluate(model, datamodule.test_dataloader(), args.eval_images)
        total = sum(p.numel() for p in model.parameters())
        results[name] = {
            "tokens": int(math.prod(model.token_shape)),
            "token_shape": list(model.token_shape),
            "network_parameters": network_parameters(model),
            "codebook_parameters": total - network_parameters(model),
            "train_seconds": seconds,
            "seconds_per_step": seconds / args.steps,
            **metrics,
        }
        print(name, json.dumps(results[name]), flush=True)

    protocol = {
        "data": "Fashion-MNIST IDX (/usr/share/datasets/fashion-mnist), 28x28 resized to 32x32 "
        "(bilinear, antialiased), 1 channel, [-1, 1]; train split minus a seeded 10% validation hold-out; "
        "evaluation on the first eval_images images of the t10k test split",
        "qgvae": f"model of {QG_CONFIG.relative_to(ROOT)} (64 tokens, D 32, K 128 per token, f 1, 8 heads, "
        "U-Nets capped at 32 channels; MSE x 0.25, beta 1.0 commitment, 0.25 codebook; "
        "GradientMagnitudeReset every 100 steps; no ordered dropout)",
        "vqvae": f"vqzoo VQGAN with perceptual_weight 0 and no adversarial loss: ch {best_ch}, ch_mult [1, 2, 2], "
        "1 res block, no attention, z_channels 32, one codebook K 128 x D 32 (init U(-1/K, 1/K)); MSE, "
        "beta 0.25 commitment, 1.0 codebook; no reset. ch picked so network parameters (codebooks "
        "excluded) match the QG-VAE's as closely as possible",
        "optimizer": f"AdamW lr {args.lr}, betas (0.9, 0.999), weight decay 0.01, no schedule, both models",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "eval_images": args.eval_images,
        "metrics": "PSNR per image on [0, 1] (reconstruction clamped), averaged; SSIM torchmetrics "
        "(gaussian 11x11, sigma 1.5, data_range 1); codebook usage = used (codebook, code) pairs / all "
        "pairs on the evaluation images; perplexity = exp(entropy) per codebook, averaged",
        "hardware": f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}",
    }
    result = {
        "benchmark": "qgvae_vs_vqvae",
        "protocol": protocol,
        "results": results,
        "psnr_difference_db": results["QG-VAE"]["psnr"] - results["VQ-VAE"]["psnr"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
