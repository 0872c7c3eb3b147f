"""The quantizer family at equal bits on Fashion-MNIST (CPU): VQ, FSQ, LFQ and residual VQ, 3 seeds each.

Protocol (the issue asks for the comparison; the steps are this machine's budget):

* Models: ``configs/tokenizers/vqgan_fashion_cpu_{vq,fsq,lfq,rvq}.yaml`` — one
  small VQGAN, identical in everything but the quantizer, at about 10 bits per
  latent position (8x8 positions, 32x32 one-channel images).
* Training: each config as written except the length: ``--steps`` generator
  steps (default 400 batches of 16) — the configs' own 3,000 steps do not fit
  12 runs into one session on 2 shared CPU cores. The discriminator starts at
  generator step 2,000 in these configs, so at 400 steps every model trains as
  a VQ-VAE (pixel loss + quantizer loss).
* Seeds 0, 1, 2 (``--seed_everything``); one torch thread per run.
* Evaluation: ``vqzoo evaluate`` of each run's final checkpoint on the first
  2,000 images of the Fashion-MNIST test split (PSNR, SSIM, codebook usage,
  perplexity; FID needs Inception weights, which cannot be downloaded here).

Usage::

    python benchmarks/quantizer_family_quality.py --train      # 12 fits, ~5 min each (400 steps) on a busy 2-core machine
    python benchmarks/quantizer_family_quality.py --evaluate   # vqzoo evaluate + the table

Writes ``benchmarks/results/quantizer_family_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUANTIZERS = ("vq", "fsq", "lfq", "rvq")
SEEDS = (0, 1, 2)
RESULTS = ROOT / "benchmarks" / "results"


def run_dir(runs: Path, q: str, seed: int) -> Path:
    return runs / f"{q}_seed{seed}"


def train(runs: Path, steps: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for seed in SEEDS:
        for q in QUANTIZERS:
            out = run_dir(runs, q, seed)
            if (out / "last.ckpt").is_file():
                continue
            config = ROOT / "configs" / "tokenizers" / f"vqgan_fashion_cpu_{q}.yaml"
            t0 = time.time()
            subprocess.run(
                [sys.executable, "-m", "vqzoo.cli", "fit", "--config", str(config),
                 "--seed_everything", str(seed), "--trainer.max_epochs", str(-(-steps // 500)),
                 "--trainer.max_steps", str(-1), "--model.init_args.max_generator_steps", str(steps),
                 "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
                 "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
                 "--trainer.callbacks", json.dumps([{
                     "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                     "init_args": {"dirpath": str(out), "filename": "last", "save_top_k": 1},
                 }])],
                check=True, env=env, cwd=ROOT,
            )
            (out / "train_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--runs", default=str(ROOT / "runs" / "quantizer_family"))
    a = p.parse_args()
    runs = Path(a.runs)
    if a.train:
        train(runs, a.steps)
    if a.evaluate:
        evaluate(runs, a.steps)


def evaluate(runs: Path, steps: int) -> None:
    rows: dict[str, list[dict]] = {}
    for q in QUANTIZERS:
        for seed in SEEDS:
            out = run_dir(runs, q, seed)
            report = out / "evaluate.json"
            if not report.is_file():
                subprocess.run(
                    [sys.executable, "-m", "vqzoo.cli", "evaluate", "--model", str(out / "last.ckpt"),
                     "--data", str(ROOT / "configs" / "tokenizers" / f"vqgan_fashion_cpu_{q}.yaml"),
                     "--split", "test", "--num-images", "2000", "--feature-extractor", "none", "--out", str(report)],
                    check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
            rows.setdefault(q, []).append(json.loads(report.read_text()))
    write_table(rows, steps)


def _metric(report: dict, name: str) -> float:
    metrics = report.get("metrics", report)
    return float(metrics[name])


def write_table(rows: dict[str, list[dict]], steps: int) -> None:
    names = ("psnr", "ssim", "codebook_usage", "perplexity")
    summary = {}
    for q, reports in rows.items():
        summary[q] = {}
        for n in names:
            values = [_metric(r, n) for r in reports]
            summary[q][n] = {"mean": statistics.mean(values), "std": statistics.stdev(values), "values": values}
    RESULTS.mkdir(parents=True, exist_ok=True)
    protocol = {
        "configs": {q: f"configs/tokenizers/vqgan_fashion_cpu_{q}.yaml" for q in QUANTIZERS},
        "generator_steps": steps, "seeds": list(SEEDS), "threads": 1,
        "evaluation": "vqzoo evaluate, first 2,000 Fashion-MNIST test images (see each report's protocol)",
    }
    (RESULTS / "quantizer_family_quality.json").write_text(
        json.dumps({"protocol": protocol, "summary": summary, "reports": rows}, indent=2) + "\n"
    )
    lines = [
        "# The quantizer family at equal bits on Fashion-MNIST (CPU)",
        "",
        f"{steps} generator steps of batch 16 per run (no discriminator yet at that length), seeds "
        f"{', '.join(map(str, SEEDS))}, one CPU thread; `vqzoo evaluate` on the first 2,000 "
        "Fashion-MNIST test images. Mean ± std over the seeds. Protocol and per-run reports: "
        "quantizer_family_quality.json.",
        "",
        "Usage and perplexity are per codebook, averaged: VQ, FSQ and LFQ have one codebook of about "
        "2^10 codes; the residual VQ has two levels of 32 codes (2 x 5 bits), so its perplexity is out of 32.",
        "",
        "| quantizer | PSNR (dB) | SSIM | codebook usage | perplexity |",
        "|---|---|---|---|---|",
    ]
    for q, s in summary.items():
        cells = [f"{s[n]['mean']:.3f} ± {s[n]['std']:.3f}" if n != "psnr" else f"{s[n]['mean']:.2f} ± {s[n]['std']:.2f}"
                 for n in names]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    (RESULTS / "quantizer_family_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
