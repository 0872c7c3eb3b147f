"""PSNR when a QG-VAE decodes from its first k tokens (k = 1..C), for one or more checkpoints.

The paper's claim (section 3.4): with ordered dropout the first tokens carry the coarse
content. Compare a checkpoint trained with ``ordered_dropout: per_sample`` (or
``every_third_batch``) against one trained without it, same config otherwise::

    PYTHONPATH=. python benchmarks/qgvae_ordered_latents.py \
        --model ordered=runs/qg_ordered/last.ckpt --model plain=runs/qg_plain/last.ckpt \
        --source fashion_mnist_idx --resolution 32 --channels 1

Writes ``<out>.json`` (protocol + curves), ``<out>.md`` (table) and ``<out>.png`` (plot). The
curve is computed by :func:`vqzoo.metrics.ordered_latents.prefix_psnr` on the first
``--eval-images`` images of the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=CKPT",
                        help="a label and a checkpoint or export directory (repeatable)")
    parser.add_argument("--source", default="fashion_mnist_idx", help="ImageDataModule source of the test images")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qgvae_ordered_latents.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vqzoo.checkpoint import load
    from vqzoo.data.images import ImageDataModule
    from vqzoo.metrics.ordered_latents import prefix_psnr
    from vqzoo.tokenizers.qgvae import QGVAE

    dm = ImageDataModule(source=args.source, resolution=args.resolution, channels=args.channels,
                         batch_size=args.batch_size)
    dm.setup("test")
    curves = {}
    for spec_ in args.model:
        label, sep, path = spec_.partition("=")
        if not sep:
            parser.error(f"--model takes LABEL=CKPT, got {spec_!r}")
        model = load(path, expected=QGVAE)
        curves[label] = {"checkpoint": path, "ordered_dropout": model.ordered_dropout,
                         "psnr": prefix_psnr(model, dm.test_dataloader(), max_images=args.eval_images)}
    result = {
        "benchmark": "qgvae_ordered_latents",
        "protocol": {"data": f"{args.source} test split, first {args.eval_images} images, {args.resolution}px, "
                             f"{args.channels} channel(s)",
                     "metric": "PSNR per image on [0, 1] (clamped), averaged; tokens k.. zeroed as in ordered dropout",
                     "hardware": f"CPU ({platform.machine()}), torch {torch.__version__}"},
        "curves": curves,
    }
    write(result, args.out)
    return result


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    labels = list(result["curves"])
    ks = sorted({int(k) for c in result["curves"].values() for k in c["psnr"]})
    rows = ["# QG-VAE: PSNR when decoding from the first k tokens", "", result["protocol"]["data"] + ".", "",
            "| k | " + " | ".join(f"{n} ({result['curves'][n]['ordered_dropout']})" for n in labels) + " |",
            "|---" * (len(labels) + 1) + "|"]
    for k in ks:
        rows.append(f"| {k} | " + " | ".join(f"{result['curves'][n]['psnr'].get(k, float('nan')):.2f}"
                                              for n in labels) + " |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in labels:
        ps = result["curves"][n]["psnr"]
        ax.plot([int(k) for k in ps], list(ps.values()), marker="o", ms=2, label=n)
    ax.set_xlabel("tokens kept (k)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
