"""VQGAN decoder vs MoVQ decoder (M = 1) vs MoVQ with multichannel codes (M = 4), on CPU.

A reduced-scale reproduction of MoVQ's stage-1 claim ("spatially conditional
normalization ... and multichannel quantization ... greatly improve the
reconstructed image quality") on offline Fashion-MNIST (the IDX files of
``apt-get install dataset-fashion-mnist``), small enough for one CPU core.

What is held equal across the three models:

* the encoder: same architecture *and the same initial weights* (copied from
  one freshly built encoder), 32x32 one-channel images -> an 8x8 latent grid;
* the quantized map width (16 channels) and the codebook size K: VQGAN and
  MoVQ M=1 quantize one 16-dim code per position; MoVQ M=4 quantizes four
  4-dim codes per position from one codebook of the same K (the paper's
  "without increasing the cost of model and codebook": the codebook even
  shrinks, K x 4 instead of K x 16 numbers);
* the loss (``(x - x_rec)^2`` + VQ loss with β = 0.25, no LPIPS and no GAN,
  so the comparison isolates decoder and quantizer, and LPIPS weights are not
  needed offline), the optimizer (Adam, betas (0.5, 0.9)), the learning rate,
  the number of steps, the batch size and the order of the batches.

What differs: the decoder's norms (GroupNorm vs SpatialNorm on zq) and the
quantizer layout. Metrics on the first ``--eval-images`` Fashion-MNIST test
images: PSNR and SSIM (torchmetrics, images in [0, 1], per-image PSNR
averaged), codebook usage (share of the K codes used at least once, all
channels pooled), perplexity, and the number of distinct per-position code
tuples (what multichannel codes buy).

Usage::

    python benchmarks/movq_vs_vqgan.py                 # defaults: ~10 CPU-minutes
    python benchmarks/movq_vs_vqgan.py --steps 200     # quick look

Presets (``--preset``): ``cpu`` (the defaults above, what the committed results ran);
``gpu10`` (one 10-minute run on one 80 GB GPU: ch 64, batch 256, 4,000 steps, bf16
autocast, all 10,000 test images; an estimate, not run yet; the Fashion-MNIST IDX files
must travel with the working tree, ``--data-root``); ``paper`` (the paper's stage-1 scale,
ImageNet 256x256, cannot run in this script: it prints the ``vqzoo fit`` commands of
``configs/tokenizers/movq_imagenet256.yaml`` for MoVQ M=4, M=1 and the VQGAN decoder and exits).

Writes ``benchmarks/results/movq_vs_vqgan.json`` and ``.md``. Uses one thread
(``torch.set_num_threads(1)``); CPU time is measured with ``process_time`` so
the numbers do not depend on how busy a shared machine is.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vqzoo.data.sources import DEFAULT_FASHION_MNIST_ROOT, load_idx  # noqa: E402
from vqzoo.nn.convnet import Encoder  # noqa: E402
from vqzoo.optim import spec  # noqa: E402
from vqzoo.quantize import VectorQuantizer  # noqa: E402
from vqzoo.tokenizers.base import Tokenizer  # noqa: E402
from vqzoo.tokenizers.movq import MoVQ  # noqa: E402
from vqzoo.tokenizers.vqgan import VQGAN  # noqa: E402

WIDTH = 16  # channels of the quantized map, equal for all three models


def arch(args: argparse.Namespace) -> dict:
    return dict(in_channels=1, resolution=32, ch=args.ch, ch_mult=(1, 2, 2), num_res_blocks=1,
                attn_resolutions=(8,), reconstruction_loss="l2",
                optimizer=spec("torch.optim.Adam", lr=args.lr, betas=(0.5, 0.9)), check_inputs=False)


def build(name: str, args: argparse.Namespace, encoder_state: dict) -> Tokenizer:
    torch.manual_seed(args.seed)
    K = args.num_codes
    if name == "vqgan":
        model: Tokenizer = VQGAN(VectorQuantizer(K, WIDTH), z_channels=WIDTH, **arch(args))
    elif name == "movq_m1":
        model = MoVQ(VectorQuantizer(K, WIDTH, layout="spatial"), z_channels=WIDTH, **arch(args))
    elif name == "movq_m4":
        model = MoVQ(VectorQuantizer(K, WIDTH // 4, layout="multichannel", num_channels=4), z_channels=WIDTH,
                     **arch(args))
    else:
        raise ValueError(f"unknown model {name!r}")
    model.encoder.load_state_dict(encoder_state)
    return model


def to_images(raw: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 32, 32) in [-1, 1] (bilinear resize, as ImageDataModule crop='none')."""
    x = raw.float().div(127.5).sub(1.0).unsqueeze(1)
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def autocast(args: argparse.Namespace):  # noqa: ANN201
    """bf16 autocast on the run's device when ``--precision bf16``, else a no-op context."""
    device = torch.device(args.device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def train(model: Tokenizer, train_images: torch.Tensor, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
    model.train()
    t0, w0, losses = time.process_time(), time.time(), []
    for step in range(args.steps):
        idx = order[(step * args.batch_size + torch.arange(args.batch_size)) % len(order)]
        x = to_images(train_images[idx].to(device))
        with autocast(args):
            x_rec, q = model(x)
            pixel = F.mse_loss(x_rec.float(), x)
            loss = pixel + model.codebook_weight * q.loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.quantizer.after_backward()
        opt.step()
        model.quantizer.after_step()
        losses.append(float(pixel.detach()))
        if args.verbose and (step + 1) % 100 == 0:
            print(f"  step {step + 1:5d}  mse {sum(losses[-100:]) / 100:.4f}", flush=True)
    return {"train_cpu_s": time.process_time() - t0, "train_wall_s": time.time() - w0, "final_train_mse": sum(losses[-50:]) / min(50, len(losses))}


@torch.no_grad()
def evaluate(model: Tokenizer, test_images: torch.Tensor, args: argparse.Namespace) -> dict:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    model.eval()
    K = model.quantizer.num_codes
    counts = torch.zeros(K, dtype=torch.long)
    psnr, ssim, n = 0.0, 0.0, 0
    tuples = set()
    device = torch.device(args.device)
    for start in range(0, len(test_images), 100):
        x = to_images(test_images[start:start + 100].to(device))
        with autocast(args):
            x_rec, q = model(x)
        a, b = ((x_rec.float().cpu() + 1) / 2).clamp(0, 1), (x.cpu() + 1) / 2
        indices = q.indices.cpu()
        psnr += float(peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3), reduction="sum"))
        ssim += float(structural_similarity_index_measure(a, b, data_range=1.0, reduction="sum"))
        n += x.shape[0]
        counts += torch.bincount(indices.reshape(-1), minlength=K)
        per_position = indices.reshape(-1, indices.shape[-1]) if indices.dim() == 4 else indices.reshape(-1, 1)
        tuples.update(map(tuple, per_position.tolist()))
    p = counts.double() / counts.sum()
    perplexity = math.exp(float(-(p[p > 0] * p[p > 0].log()).sum()))
    return {"psnr": psnr / n, "ssim": ssim / n, "codebook_usage": float((counts > 0).float().mean()),
            "codes_used": int((counts > 0).sum()), "perplexity": perplexity,
            "distinct_position_codes": len(tuples)}


def setting(cfg: dict) -> str:
    """The shared part of both tables' protocol line."""
    return (f"32x32 images -> 8x8 grid, K = {cfg['num_codes']} codes, quantized width {WIDTH}, "
            f"{cfg['steps']} steps x batch {cfg['batch_size']}, Adam lr {cfg['lr']}, loss MSE + VQ (β 0.25), "
            f"encoder ch {cfg['ch']} with identical initial weights")


def machine_line(result: dict) -> str:
    cfg = result["config"]
    return (f"Machine: {result['machine']}{'; GPU ' + result['gpu'] if result.get('gpu') else ''}; "
            f"torch {result['torch']}; {cfg.get('threads', 1)} thread(s), precision {cfg.get('precision', 'fp32')}. "
            f"Total CPU time {result['total_cpu_s']:.0f} s, wall {result['total_wall_s']:.0f} s.")


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# MoVQ vs VQGAN decoder on Fashion-MNIST (CPU, reduced scale)",
        "",
        f"{setting(cfg)}; eval on the first {cfg['eval_images']} test images.",
        "",
        "| model | decoder norms | codes/position | PSNR (dB) | SSIM | codebook usage | perplexity "
        "| distinct position codes | params | train CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        label, norms, codes = LABELS[name]
        lines.append(
            f"| {label} | {norms} | {codes} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['codebook_usage']:.3f} "
            f"({r['codes_used']}) | {r['perplexity']:.1f} | {r['distinct_position_codes']} | {r['params']:,} "
            f"| {r['train_cpu_s']:.0f} |"
        )
    lines += ["", machine_line(result), ""]
    return "\n".join(lines)


PRESETS: dict[str, dict] = {
    "cpu": dict(steps=1000, batch_size=16, lr=4e-4, ch=16, num_codes=256, eval_images=1000, device="cpu",
                precision="fp32", threads=1),
    "gpu10": dict(steps=4000, batch_size=256, lr=4e-4, ch=64, num_codes=256, eval_images=10000, device="cuda",
                  precision="bf16", threads=4),
}

#: The paper's scale: ImageNet 256x256 stage 1 through the configs (this script's data is Fashion-MNIST).
#: M = 1 and the VQGAN decoder keep M = 4's codebook (16384 x 4), the paper's "without increasing the
#: cost of model and codebook"; the CPU preset instead keeps the quantized map width equal.
PAPER_COMMANDS = [
    "vqzoo fit --config configs/tokenizers/movq_imagenet256.yaml  # MoVQ, M = 4",
    "vqzoo fit --config configs/tokenizers/movq_imagenet256.yaml "
    "--model.init_args.quantizer.init_args.layout spatial "
    "--model.init_args.quantizer.init_args.num_channels 1 "
    "--model.init_args.quantizer.init_args.dim 4  # MoVQ, M = 1",
    "vqzoo fit --config configs/tokenizers/movq_imagenet256.yaml "
    "--model.class_path vqzoo.tokenizers.vqgan.VQGAN "
    "--model.init_args.quantizer.init_args.layout spatial "
    "--model.init_args.quantizer.init_args.num_channels 1 "
    "--model.init_args.quantizer.init_args.dim 4  # VQGAN decoder (GroupNorm), same encoder and codebook",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=["cpu", "gpu10", "paper"], default="cpu")
    preset = pre.parse_known_args(argv)[0].preset
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[pre])
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ch", type=int)
    p.add_argument("--num-codes", type=int)
    p.add_argument("--eval-images", type=int)
    p.add_argument("--device", help="torch device (cpu, cuda)")
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="several seeds (encoder init, codebooks, batch order): every model is trained once per "
                   "seed, exported, and measured by `vqzoo evaluate`; the tables give mean ± std over seeds")
    p.add_argument("--feature-extractor", default="none",
                   help="with --seeds: vqzoo evaluate's --feature-extractor (default none: PSNR/SSIM/usage; "
                   "'classifier:DIR' adds a cFID)")
    p.add_argument("--export-dir", default=None,
                   help="with --seeds: where the trained models are exported (default: a temporary directory)")
    p.add_argument("--data-root", default=DEFAULT_FASHION_MNIST_ROOT)
    p.add_argument("--models", nargs="+", default=["vqgan", "movq_m1", "movq_m4"],
                   choices=["vqgan", "movq_m1", "movq_m4"])
    p.add_argument("--out", default=None, help="results path without suffix "
                   "(default benchmarks/results/movq_vs_vqgan[_PRESET])")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(**PRESETS.get(preset, PRESETS["cpu"]))
    args = p.parse_args(argv)
    if args.out is None:
        suffix = "" if preset == "cpu" else f"_{preset}"
        args.out = str(ROOT / "benchmarks" / "results" / f"movq_vs_vqgan{suffix}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.preset == "paper":
        print("The paper's scale (ImageNet 256x256) runs through the configs, not this script:")
        print("\n".join(PAPER_COMMANDS))
        return {"preset": "paper", "commands": PAPER_COMMANDS}
    torch.set_num_threads(args.threads)
    if args.seeds:
        return main_seeds(args)

    train_images = torch.from_numpy(load_idx(args.data_root, "train")[0].copy())
    test_images = torch.from_numpy(load_idx(args.data_root, "t10k")[0][: args.eval_images].copy())
    torch.manual_seed(args.seed)
    encoder_state = Encoder(in_channels=1, ch=args.ch, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                            resolution=32, z_channels=WIDTH).state_dict()

    cpu0, wall0 = time.process_time(), time.time()
    models = {}
    for name in args.models:
        print(f"training {name} for {args.steps} steps", flush=True)
        model = build(name, args, encoder_state)
        r = train(model, train_images, args)
        r.update(evaluate(model, test_images, args))
        r["params"] = sum(t.numel() for t in model.parameters())
        r["codebook_numbers"] = model.quantizer.codebook.weight.numel()
        models[name] = r
        print(f"  {name}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  usage {r['codebook_usage']:.3f}  "
              f"({r['train_cpu_s']:.0f} CPU s)", flush=True)
    result = {
        "benchmark": "movq_vs_vqgan",
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "verbose")},
        "gpu": torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else None,
        "models": models,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "total_cpu_s": time.process_time() - cpu0,
        "total_wall_s": time.time() - wall0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


LABELS = {"vqgan": ("VQGAN", "GroupNorm", "1 x 16-d"), "movq_m1": ("MoVQ M=1", "SpatialNorm(zq)", "1 x 16-d"),
          "movq_m4": ("MoVQ M=4", "SpatialNorm(zq)", "4 x 4-d")}
#: metrics of a `vqzoo evaluate` tokenizer report carried into the seed table
EVAL_KEYS = ("psnr", "ssim", "codebook_usage", "perplexity")


def data_yaml(args: argparse.Namespace, path: Path) -> Path:
    """The evaluation data for `vqzoo evaluate`: the Fashion-MNIST test split as this script's to_images makes it."""
    import yaml

    cfg = {"data": {"class_path": "vqzoo.data.images.ImageDataModule", "init_args": {
        "source": "fashion_mnist_idx", "root": args.data_root, "resolution": 32, "channels": 1, "crop": "none",
        "batch_size": 100, "num_workers": 0}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def evaluate_export(model: Tokenizer, name: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    """Export the model and measure it with `vqzoo evaluate` (PSNR, SSIM, codebook statistics, optional cFID)."""
    from vqzoo.checkpoint import export_model
    from vqzoo.cli.evaluate import _parser, run

    export = export_model(model.cpu(), workdir / f"{name}_seed{seed}")
    report = run(_parser().parse_args([
        "--model", str(export), "--data", str(data_yaml(args, workdir / "data.yaml")),
        "--num-images", str(args.eval_images), "--feature-extractor", args.feature_extractor, "--lpips", "off",
        "--out", str(workdir / f"{name}_seed{seed}_report.json"),
    ]))
    return report


def _metric(report: dict, key: str) -> float | None:
    for section in ("metrics", "reconstruction", "codebook"):
        block = report.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), (int, float)):
            return float(block[key])
    value = report.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def main_seeds(args: argparse.Namespace) -> dict:
    import statistics
    import tempfile

    train_images = torch.from_numpy(load_idx(args.data_root, "train")[0].copy())
    test_images = torch.from_numpy(load_idx(args.data_root, "t10k")[0][: args.eval_images].copy())
    workdir = Path(args.export_dir or tempfile.mkdtemp(prefix="movq_vs_vqgan_"))
    workdir.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.time()
    runs: dict[str, dict[int, dict]] = {name: {} for name in args.models}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        args.seed = seed
        torch.manual_seed(seed)
        encoder_state = Encoder(in_channels=1, ch=args.ch, ch_mult=(1, 2, 2), num_res_blocks=1,
                                attn_resolutions=(8,), resolution=32, z_channels=WIDTH).state_dict()
        for name in args.models:
            print(f"seed {seed}: training {name} for {args.steps} steps", flush=True)
            model = build(name, args, encoder_state)
            r = train(model, train_images, args)
            r.update({f"script_{k}": v for k, v in evaluate(model, test_images, args).items()})
            report = evaluate_export(model, name, seed, args, workdir)
            r["evaluate"] = {k: _metric(report, k) for k in EVAL_KEYS}
            r["evaluate_report"] = report
            r["params"] = sum(t.numel() for t in model.parameters())
            runs[name][seed] = r
            print(f"  {name} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in r["evaluate"].items() if v is not None),
                  flush=True)
            result = seeds_result(args, runs, cpu0, wall0)
            out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
            out.with_suffix(".md").write_text(seeds_markdown(result))
    print(seeds_markdown(result))
    return result


def seeds_result(args: argparse.Namespace, runs: dict, cpu0: float, wall0: float) -> dict:
    import statistics

    summary = {}
    for name, by_seed in runs.items():
        summary[name] = {}
        for key in EVAL_KEYS + ("distinct_position_codes",):
            values = [r["evaluate"].get(key) if key in EVAL_KEYS else r[f"script_{key}"] for r in by_seed.values()]
            values = [v for v in values if v is not None]
            if values:
                summary[name][key] = {"mean": statistics.fmean(values),
                                      "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                      "values": values}
    return {
        "benchmark": "movq_vs_vqgan (seeds, vqzoo evaluate)",
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "verbose", "seed")},
        "seeds_done": {name: sorted(by_seed) for name, by_seed in runs.items()},
        "summary": summary,
        "runs": {name: {str(s): r for s, r in by_seed.items()} for name, by_seed in runs.items()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "gpu": torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else None,
        "torch": torch.__version__,
        "total_cpu_s": time.process_time() - cpu0,
        "total_wall_s": time.time() - wall0,
    }


def seeds_markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# MoVQ vs VQGAN decoder on Fashion-MNIST, several seeds, measured by `vqzoo evaluate`",
        "",
        f"{setting(cfg)} within a seed; seeds {cfg['seeds']} (encoder and "
        f"codebook init, batch order). Each trained model is exported and measured by `vqzoo evaluate` on the "
        f"first {cfg['eval_images']} Fashion-MNIST test images (feature extractor: {cfg['feature_extractor']}). "
        "Mean ± sample std over the seeds done.",
        "",
        "| model | decoder norms | codes/position | seeds | PSNR (dB) | SSIM | codebook usage | perplexity "
        "| distinct position codes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(stats: dict | None, fmt: str) -> str:
        return "n/a" if not stats else f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"

    for name, summary in result["summary"].items():
        label, norms, codes = LABELS[name]
        lines.append(
            f"| {label} | {norms} | {codes} | {len(result['seeds_done'][name])} | {cell(summary.get('psnr'), '.2f')} "
            f"| {cell(summary.get('ssim'), '.4f')} | {cell(summary.get('codebook_usage'), '.3f')} "
            f"| {cell(summary.get('perplexity'), '.1f')} | {cell(summary.get('distinct_position_codes'), '.0f')} |"
        )
    lines += ["", "Per seed (PSNR dB):", ""]
    for name, by_seed in result["runs"].items():
        lines.append(f"- {LABELS[name][0]}: " + ", ".join(
            f"seed {s}: {r['evaluate']['psnr']:.2f}" for s, r in by_seed.items() if r["evaluate"].get("psnr") is not None))
    lines += ["", machine_line(result), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
