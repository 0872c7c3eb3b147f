"""QG-VAE ablations side by side: curves of several ``qgvae_vs_vqvae.py`` result files in one table and plot.

Each variant is one run of ``benchmarks/qgvae_vs_vqvae.py`` (usually ``--only QG-VAE`` with
``--qg-config`` or ``--set``); this script only reads their JSON files, so a variant can be
added later without rerunning the others. The first variant is the baseline the PSNR
differences are taken against.

Usage::

    PYTHONPATH=. python benchmarks/qgvae_ablations.py --out benchmarks/results/qgvae_ablations \\
        "vqzoo layout (baseline)=benchmarks/results/qgvae_vs_vqvae.json" \\
        "reference U-Net layout=benchmarks/results/qgvae_ablation_ref_layout.json"

Writes ``OUT.md`` (PSNR / usage per step and variant, the protocol of each) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared plot of qgvae_vs_vqvae.py


def load(spec: str) -> tuple[str, dict[str, Any]]:
    label, sep, path = spec.partition("=")
    if not sep:
        raise SystemExit(f"expected LABEL=PATH, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"{label}: results file {file} does not exist (run benchmarks/qgvae_vs_vqvae.py first)")
    return label, json.loads(file.read_text())


def curve(result: dict[str, Any]) -> list[dict[str, Any]]:
    if "QG-VAE" not in result["curves"]:
        raise SystemExit(f"{result['protocol'].get('json')}: has no QG-VAE curve")
    return result["curves"]["QG-VAE"]


def markdown(variants: list[tuple[str, dict[str, Any]]], title: str) -> str:
    base_label, base = variants[0]
    base_psnr = {r["step"]: r["psnr"] for r in curve(base)}
    rows = [f"# {title}", "", "Each variant is one run of `benchmarks/qgvae_vs_vqvae.py`; differences are "
            f"PSNR minus the baseline's ({base_label}) at the same step.", "", "## Variants", ""]
    for label, res in variants:
        p = res["protocol"]
        reached = p["steps_reached"].get("QG-VAE", 0)
        rows.append(
            f"- **{label}**: `{Path(p['json']).name}`; {p['qgvae'].split(' (')[0]}"
            + (f", overrides {json.dumps(p['qg_overrides'])}" if p.get("qg_overrides") else "")
            + f"; {res['models']['QG-VAE']['network_parameters']:,} network parameters; AdamW lr {p['learning_rate']}, "
            f"batch {p['batch_size']}, seed {p['seed']}; {reached} of {p['steps']} steps reached; "
            f"{res['curves']['QG-VAE'][-1]['train_seconds']:.0f} s of training ({p['threads']} thread(s), {p['hardware']})."
        )
    steps = sorted({r["step"] for _, res in variants for r in curve(res)})
    rows += ["", "## PSNR (dB) on the evaluation images; in brackets: minus the baseline", "",
             "| step | " + " | ".join(label for label, _ in variants) + " |",
             "|---" * (1 + len(variants)) + "|"]
    for s in steps:
        cells = []
        for i, (_, res) in enumerate(variants):
            r = next((r for r in curve(res) if r["step"] == s), None)
            if r is None:
                cells.append("")
            elif i and s in base_psnr:
                cells.append(f"{r['psnr']:.2f} ({r['psnr'] - base_psnr[s]:+.2f})")
            else:
                cells.append(f"{r['psnr']:.2f}")
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    rows += ["", "## Codebook usage (used (token, code) pairs / all) and SSIM", "",
             "| step | " + " | ".join(f"{label} usage | SSIM" for label, _ in variants) + " |",
             "|---" * (1 + 2 * len(variants)) + "|"]
    for s in steps:
        cells = []
        for _, res in variants:
            r = next((r for r in curve(res) if r["step"] == s), None)
            cells.append(f"{r['codebook_usage']:.3f} | {r['ssim']:.4f}" if r else " | ")
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot(variants: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    from qgvae_vs_vqvae import plot_curves

    plot_curves({label: curve(res) for label, res in variants}, path, title)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", metavar="LABEL=PATH", help="results JSON of each variant; first = baseline")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    ap.add_argument("--notes", type=Path, default=None, help="a markdown file appended as the reading of the results")
    ap.add_argument("--title", default="QG-VAE ablations at the CPU scale (Fashion-MNIST 32x32, 64 tokens x 7 bits)")
    args = ap.parse_args(argv)
    variants = [load(v) for v in args.variants]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(variants, args.title)
    if args.notes is not None:
        text += "\n## Reading\n\n" + args.notes.read_text()
    args.out.with_suffix(".md").write_text(text)
    plot(variants, args.out.with_suffix(".png"), args.title)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
