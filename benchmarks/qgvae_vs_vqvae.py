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
* Both: the same optimizer (AdamW, ``--lr``, default the paper's 2e-4, weight decay 0.01),
  batch size, number of steps, seed and data order, trained by the Lightning loop of
  :class:`vqzoo.tokenizers.base.Tokenizer`. The two models train in lockstep (``--eval-every``
  steps each, in turn, one at a time), so a run stopped early (``--stop-at``) still has both
  curves up to the same step.
* Learning curves: every ``--eval-every`` steps both models are evaluated on the first
  ``--eval-images`` test images and the JSON, the markdown table and the PNG plot are
  rewritten, so partial curves survive an interrupted run.
* Metrics: PSNR (per image, averaged) and SSIM (torchmetrics, data range 1 on
  [0, 1] images), codebook usage (fraction of the codes of all codebooks used
  at least once on the evaluation images) and perplexity (exp entropy per
  codebook, averaged over codebooks).
* Presets (:data:`PRESETS`): ``cpu`` (default; the committed curves), ``gpu10`` (one
  10-minute run on an 80 GB GPU, the paper's MNIST-row model, bf16) and ``paper``
  (table 3's MNIST row at 100 epochs). A different QG-VAE config: ``--qg-config`` (e.g.
  configs/tokenizers/qgvae_fashion_mnist_cpu_ref.yaml, the reference U-Net layout).

Usage::

    PYTHONPATH=. python benchmarks/qgvae_vs_vqvae.py --stop-at 2026-11-30T12:58+00:00
    PYTHONPATH=. python benchmarks/qgvae_vs_vqvae.py --preset gpu10 --data-root <fashion-mnist IDX dir>

Writes ``benchmarks/results/qgvae_vs_vqvae[_PRESET].json`` (protocol + curves), ``.md`` (a
table per evaluation step) and ``.png`` (PSNR, SSIM and usage against steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QG_CONFIG = ROOT / "configs" / "tokenizers" / "qgvae_fashion_mnist_cpu.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def build_qgvae(overrides: dict[str, Any], config: Path | None = None) -> torch.nn.Module:
    """The model of a QG-VAE config (default: the CPU config), built through the typed parser the CLI uses."""
    import yaml
    from jsonargparse import ArgumentParser

    from vqzoo.tokenizers.base import Tokenizer

    cfg = yaml.safe_load(Path(config or QG_CONFIG).read_text())
    cfg["model"]["init_args"].update(overrides)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Tokenizer, "model")
    return parser.instantiate(parser.parse_object({"model": cfg["model"]})).model


def build_vqvae(ch: int, common: dict[str, Any], num_codes: int = 128, dim: int = 32) -> torch.nn.Module:
    try:
        from vqzoo.tokenizers.vqgan import VQGAN
    except ImportError as err:  # the benchmark needs the lead's VQGAN
        raise SystemExit(f"vqzoo.tokenizers.vqgan.VQGAN is needed for the VQ-VAE baseline: {err}") from err
    from vqzoo.quantize import VectorQuantizer

    quantizer = VectorQuantizer(num_codes, dim, beta=0.25, codebook_loss_weight=1.0, init="uniform_inv_k")
    return VQGAN(
        quantizer, in_channels=1, resolution=32, ch=ch, ch_mult=[1, 2, 2], num_res_blocks=1,
        attn_resolutions=[], z_channels=dim, reconstruction_loss="l2", reconstruction_weight=1.0,
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
        x = model.images_of(batch)[: max_images - seen].to(model.device)
        x_rec, q = model(x)
        x01, r01 = (x + 1) / 2, ((x_rec + 1) / 2).clamp(0, 1)
        psnr_values.append(psnr(r01.float().cpu(), x01.float().cpu()))
        ssim.update(r01.float().cpu(), x01.float().cpu())
        h = model.quantizer.histogram(q.indices).cpu()
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


EVAL_NAMES = ("QG-VAE", "VQ-VAE")


class Lockstep:
    """Round-robin baton: the models train in turn, ``eval_every`` steps each, so that at any
    moment they have trained the same number of steps (up to one chunk) and only one of them
    computes at a time (one long training process, one thread of compute)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = list(names)
        self.turn = self.names[0]
        self.done: set[str] = set()
        self.stop = False
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(name)
            live = [n for n in self.names if n not in self.done]
            if live:
                i = self.names.index(name)
                order = self.names[i + 1:] + self.names[: i + 1]
                self.turn = next(n for n in order if n not in self.done)
            else:
                self.turn = ""
            self.cond.notify_all()


class CurveCallback:
    """Evaluates every ``every`` training steps, writes all outputs, then hands the baton on."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # built lazily so importing needs no lightning
        import lightning as L

        class _Curve(L.Callback):
            def __init__(self, name: str, run: "CurveRun", every: int) -> None:
                self.name, self.run, self.every, self.steps = name, run, every, 0

            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                self.run.record(self.name, 0, pl_module)

            def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
                self.steps += 1
                if self.steps % self.every == 0 or self.steps >= self.run.steps:
                    self.run.record(self.name, self.steps, pl_module)
                    if self.steps < self.run.steps:
                        self.run.lockstep.pass_on(self.name)
                        self.run.lockstep.wait(self.name)
                        if self.run.lockstep.stop:
                            trainer.should_stop = True

        return _Curve(*args, **kwargs)


class CurveRun:
    def __init__(self, args: argparse.Namespace, protocol: dict[str, Any], eval_batches: list, static: dict) -> None:
        self.args, self.steps, self.protocol, self.eval_batches = args, args.steps, protocol, eval_batches
        self.static = static  # per model: tokens, parameters
        self.curves: dict[str, list[dict[str, Any]]] = {n: [] for n in static}
        self.lockstep = Lockstep(tuple(static))
        self.start = time.perf_counter()
        self.train_seconds = {n: 0.0 for n in static}
        self._mark = {n: time.perf_counter() for n in static}
        self.deadline = args.stop_at

    def record(self, name: str, step: int, model: torch.nn.Module) -> None:
        self.train_seconds[name] += time.perf_counter() - self._mark[name]
        was_training = model.training
        t0 = time.perf_counter()
        metrics = evaluate(model, self.eval_batches, self.args.eval_images)
        model.train(was_training)
        row = {"step": step, "train_seconds": self.train_seconds[name], "eval_seconds": time.perf_counter() - t0,
               **metrics}
        self.curves[name].append(row)
        print(name, json.dumps(row), flush=True)
        last = name == list(self.static)[-1]
        if last and self.deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= self.deadline:
            self.lockstep.stop = True
            print(f"stop-at {self.deadline.isoformat()} passed: stopping after step {step}", flush=True)
        self.write()
        self._mark[name] = time.perf_counter()

    def write(self) -> None:
        reached = {n: (c[-1]["step"] if c else 0) for n, c in self.curves.items()}
        result = {
            "benchmark": "qgvae_vs_vqvae",
            "protocol": {**self.protocol, "steps_reached": reached,
                         "wall_seconds": time.perf_counter() - self.start,
                         "finished": all(r >= self.steps for r in reached.values())},
            "models": self.static,
            "curves": self.curves,
        }
        out = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
        out.with_suffix(".md").write_text(markdown(result))
        plot(result, out.with_suffix(".png"))


DATASET_NAMES = {"fashion_mnist_idx": "Fashion-MNIST", "fashion_mnist": "Fashion-MNIST", "mnist5k": "MNIST (the 5,000 offline digits)",
                 "mnist": "MNIST"}


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    names = list(result["curves"])
    reached = p["steps_reached"]
    status = ("finished" if p["finished"] else
              "NOT finished: stopped at " + ", ".join(f"{n} step {s}" for n, s in reached.items())
              + f" of {p['steps']}; no claim is made beyond the steps reached")
    rows = [
        f"# QG-VAE vs VQ-VAE on {DATASET_NAMES.get(p.get('source'), p.get('source') or 'Fashion-MNIST')} 32x32 "
        f"({'GPU' if p['hardware'].startswith('GPU') else 'CPU'}): learning curves",
        "",
        f"Run status: {status}.",
        "",
        f"Protocol: {p['steps']} steps planned per model, batch {p['batch_size']}, {p['optimizer']}; seed {p['seed']}; "
        f"{p['threads']} CPU thread(s), precision {p.get('precision', '32-true')}, {p['hardware']}; data: {p['data']}. Evaluation every {p['eval_every']} steps "
        f"on the first {p['eval_images']} test images. The models train in lockstep ({p['eval_every']} steps each in "
        f"turn), one at a time. Wall time so far {p['wall_seconds']:.0f} s. Full protocol in {Path(p['json']).name}; "
        f"plot in {Path(p['json']).with_suffix('.png').name}.",
        "",
        "| model | tokens | network params | codebook params |",
        "|---|---|---|---|",
    ]
    for n, s in result["models"].items():
        rows.append(f"| {n} | {s['tokens']} | {s['network_parameters']:,} | {s['codebook_parameters']:,} |")
    pair = len(names) == 2
    rows += ["", "| step | " + " | ".join(f"{n} PSNR | {n} SSIM | {n} usage" for n in names)
             + (" | PSNR QG - VQ |" if pair else " |"), "|---" * (1 + 3 * len(names) + pair) + "|"]
    by_step: dict[int, dict[str, dict]] = {}
    for n in names:
        for r in result["curves"][n]:
            by_step.setdefault(r["step"], {})[n] = r
    for step in sorted(by_step):
        cells = []
        for n in names:
            r = by_step[step].get(n)
            cells.append(f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['codebook_usage']:.3f} ({r['codes_used']}/{r['codes_total']})"
                         if r else " | | ")
        if pair:
            both = all(n in by_step[step] for n in names)
            diff = f"{by_step[step][names[0]]['psnr'] - by_step[step][names[1]]['psnr']:+.2f}" if both else ""
            rows.append(f"| {step} | " + " | ".join(cells) + f" | {diff} |")
        else:
            rows.append(f"| {step} | " + " | ".join(cells) + " |")
    if pair:
        over = overtaking_step(result)
        rows += ["", ("QG-VAE's PSNR is above the VQ-VAE's from step "
                      f"{over} on (at every later evaluation)." if over is not None else
                      "QG-VAE's PSNR does not overtake the VQ-VAE's at any evaluated step."), ""]
    if p.get("qg_overrides"):
        rows += ["", f"QG-VAE overrides of the config: {json.dumps(p['qg_overrides'])}.", ""]
    if result.get("notes"):
        rows += ["## Reading", "", *result["notes"], ""]
    rows += [
        "Codebook usage is over all codebooks: the QG-VAE has one codebook of K codes per token "
        "(64 x 128 pairs), the VQ-VAE one shared codebook (128 codes). Both models are far from "
        "convergence at a CPU budget: the paper trains 100 epochs (about 170k steps of batch 32).",
        "",
    ]
    return "\n".join(rows)


def overtaking_step(result: dict[str, Any]) -> int | None:
    """First evaluated step from which QG-VAE's PSNR stays above the VQ-VAE's."""
    qg = {r["step"]: r["psnr"] for r in result["curves"].get("QG-VAE", [])}
    vq = {r["step"]: r["psnr"] for r in result["curves"].get("VQ-VAE", [])}
    common = sorted(s for s in set(qg) & set(vq) if s > 0)  # step 0 (initialisation) says nothing
    first = None
    for s in common:
        if qg[s] > vq[s]:
            first = s if first is None else first
        else:
            first = None
    return first


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """PSNR, SSIM and codebook usage against training steps, one line per curve (also used by qgvae_ablations.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, curve in curves.items():
        steps = [r["step"] for r in curve]
        for ax, key in zip(axes, ("psnr", "ssim", "codebook_usage")):
            ax.plot(steps, [r[key] for r in curve], marker="o", ms=3, label=name)
    for ax, name in zip(axes, ("PSNR (dB)", "SSIM", "codebook usage (fraction of all codes)")):
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(result: dict[str, Any], path: Path) -> None:
    p = result["protocol"]
    plot_curves(result["curves"], path,
                f"{DATASET_NAMES.get(p.get('source'), p.get('source') or 'Fashion-MNIST')} 32x32, 64 tokens x 7 bits, "
                f"batch {p['batch_size']}, seed {p['seed']}"
                + ("" if p["finished"] else f" (stopped at {p['steps_reached']})"))


#: Presets: ``cpu`` is what the committed curves ran; ``gpu10`` and ``paper`` are for a GPU and
#: have not been run yet (their sizes are estimates, see the README of benchmarks/results).
PRESETS: dict[str, dict[str, Any]] = {
    # The CPU curve: the CPU config (64 tokens x 7 bits, U-Nets capped at 32 channels), the paper's
    # optimiser and batch, Fashion-MNIST from the offline IDX files, one thread.
    "cpu": dict(qg_config=str(QG_CONFIG.relative_to(ROOT)), source="fashion_mnist_idx", steps=3000, batch_size=32,
                eval_every=250, eval_images=1000, accelerator="cpu", precision="32-true", threads=1, num_workers=0),
    # One 10-minute run on one 80 GB GPU: the paper's MNIST-row model (table 3: 64 tokens, K 512,
    # D 64, f 0, 8 heads, 2 blocks, 256 channels, reset every 100) with the reference U-Net layout,
    # on Fashion-MNIST (IDX files carried to the machine; --data-root), bf16 autocast, batch 128
    # (4x the paper's; lr kept at the paper's 2e-4), 3,000 steps per model. The machine has no
    # network: the data must travel with the working tree.
    "gpu10": dict(qg_config="configs/tokenizers/qgvae_mnist.yaml", source="fashion_mnist_idx", steps=3000,
                  batch_size=128, eval_every=250, eval_images=2000, accelerator="gpu", precision="bf16-mixed",
                  threads=4, num_workers=8),
    # The paper's scale (table 1, MNIST row): the same model, MNIST, batch 32, 100 epochs of the
    # 54k training images left after the 10% hold-out = 168,750 steps, fp32.
    "paper": dict(qg_config="configs/tokenizers/qgvae_mnist.yaml", source="mnist", steps=168_750, batch_size=32,
                  eval_every=5000, eval_images=10_000, accelerator="gpu", precision="32-true", threads=4,
                  num_workers=8),
}


def render(json_path: Path) -> None:
    """Rewrite the markdown and the plot of an existing results JSON (e.g. after adding ``notes``)."""
    result = json.loads(Path(json_path).read_text())
    Path(json_path).with_suffix(".md").write_text(markdown(result))
    plot(result, Path(json_path).with_suffix(".png"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    preset = pre.parse_known_args(argv)[0].preset
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[pre])
    parser.add_argument("--qg-config", help="QG-VAE config whose model is trained (its data/trainer are ignored)")
    parser.add_argument("--source", help="ImageDataModule source (fashion_mnist_idx, mnist5k, mnist, ...)")
    parser.add_argument("--data-root", default=None, help="root of the data source (default: the source's)")
    parser.add_argument("--steps", type=int, help="training steps per model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate of both models (paper: 2e-4)")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-images", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--accelerator", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--precision", help="Lightning precision, e.g. 32-true or bf16-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=EVAL_NAMES, default=None,
                        help="train one of the two models (ablations of the QG-VAE)")
    parser.add_argument("--set", dest="qg_set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one QG-VAE model argument (YAML value), e.g. --set max_channels=64")
    parser.add_argument("--stop-at", type=lambda s: datetime.datetime.fromisoformat(s).astimezone(datetime.timezone.utc),
                        default=None, help="UTC time (ISO 8601, e.g. 2026-11-30T13:00+00:00): after the round of "
                        "evaluations that ends past it, stop and keep the partial curves")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default benchmarks/results/qgvae_vs_vqvae[_PRESET].json)")
    parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / ("qgvae_vs_vqvae.json" if preset == "cpu" else f"qgvae_vs_vqvae_{preset}.json")
    args.qg_config = Path(args.qg_config) if Path(args.qg_config).is_absolute() else ROOT / args.qg_config
    import yaml

    args.qg_overrides = {}
    for item in args.qg_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        args.qg_overrides[key] = yaml.safe_load(value)
    return args


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """QG-VAE from ``args.qg_config`` and a VQ-VAE with the same tokens and bits, parameters matched."""
    from vqzoo.optim import spec

    common = dict(optimizer=spec("torch.optim.AdamW", lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01))
    torch.manual_seed(args.seed)
    qg = build_qgvae({**common, **getattr(args, "qg_overrides", {})}, args.qg_config)
    K, D = qg.quantizer.num_codes, qg.quantizer.dim
    target = network_parameters(qg)
    # network parameters grow monotonically with ch: bisect on even widths
    lo, hi = 4, 256
    while hi - lo > 2:
        mid = (lo + hi) // 4 * 2
        if network_parameters(build_vqvae(mid, common, K, D)) < target:
            lo = mid
        else:
            hi = mid
    best_ch = min((lo, hi), key=lambda c: abs(network_parameters(build_vqvae(c, common, K, D)) - target))
    torch.manual_seed(args.seed)
    vq = build_vqvae(best_ch, common, K, D)
    vq.benchmark_ch = best_ch  # type: ignore[attr-defined]
    models = {"QG-VAE": qg, "VQ-VAE": vq}
    only = getattr(args, "only", None)
    return {only: models[only]} if only else models


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--render":
        render(Path(sys.argv[2]))
        return
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from vqzoo.data.images import ImageDataModule

    def datamodule() -> Any:
        dm = ImageDataModule(source=args.source, root=args.data_root, resolution=32, channels=1,
                             batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers)
        dm.setup("fit")
        return dm

    pair = build_models(argparse.Namespace(**{**vars(args), "only": None}))
    models = {args.only: pair[args.only]} if args.only else pair
    qg, vq = pair["QG-VAE"], pair["VQ-VAE"]
    best_ch = vq.benchmark_ch
    K, D = qg.quantizer.num_codes, qg.quantizer.dim

    eval_dm = datamodule()
    eval_batches, seen = [], 0
    for batch in eval_dm.test_dataloader():
        eval_batches.append(batch)
        seen += Tokenizer_images(batch).shape[0]
        if seen >= args.eval_images:
            break

    static = {}
    for name, model in models.items():
        total = sum(p.numel() for p in model.parameters())
        static[name] = {"tokens": int(math.prod(model.token_shape)), "token_shape": list(model.token_shape),
                        "network_parameters": network_parameters(model),
                        "codebook_parameters": total - network_parameters(model)}
    gpu = torch.cuda.get_device_name(0) if args.accelerator != "cpu" and torch.cuda.is_available() else None
    protocol = {
        "preset": args.preset,
        "source": args.source,
        "data": f"ImageDataModule source {args.source!r}"
        + (f" (root {args.data_root})" if args.data_root else "")
        + ", resized to 32x32 (bilinear, antialiased), 1 channel, [-1, 1]; train split minus a seeded 10% "
        "validation hold-out; evaluation on the first eval_images images of the test split",
        "qgvae": f"model of {args.qg_config.relative_to(ROOT) if args.qg_config.is_relative_to(ROOT) else args.qg_config} "
        f"({int(math.prod(qg.token_shape))} tokens, D {D}, K {K} per token; see that file; no ordered dropout "
        "unless it sets one)",
        "vqvae": f"vqzoo VQGAN with perceptual_weight 0 and no adversarial loss: ch {best_ch}, ch_mult [1, 2, 2], "
        f"1 res block, no attention, z_channels {D}, one codebook K {K} x D {D} (init U(-1/K, 1/K)); MSE, "
        "beta 0.25 commitment, 1.0 codebook; no reset. ch picked so network parameters (codebooks "
        "excluded) match the QG-VAE's as closely as possible; same tokens and bits per image as the QG-VAE",
        "optimizer": f"AdamW lr {args.lr}, betas (0.9, 0.999), weight decay 0.01, no schedule, both models "
        "(the paper's / reference's optimiser, docs/reference-implementations.md section B)",
        "steps": args.steps,
        "eval_every": args.eval_every,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "seeds": [args.seed],
        "threads": args.threads,
        "precision": args.precision,
        "eval_images": args.eval_images,
        "stop_at": args.stop_at.isoformat() if args.stop_at else None,
        "only": args.only,
        "qg_overrides": args.qg_overrides,
        "json": str(args.out),
        "metrics": "PSNR per image on [0, 1] (reconstruction clamped), averaged; SSIM torchmetrics "
        "(gaussian 11x11, sigma 1.5, data_range 1); codebook usage = used (codebook, code) pairs / all "
        "pairs on the evaluation images; perplexity = exp(entropy) per codebook, averaged",
        "hardware": (f"GPU {gpu}, " if gpu else "")
        + f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        + (" shared with other jobs" if gpu is None else "") + f"), torch {torch.__version__}",
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    run = CurveRun(args, protocol, eval_batches, static)

    def worker(name: str) -> None:
        import lightning as L

        run.lockstep.wait(name)
        try:
            L.seed_everything(args.seed, workers=True, verbose=False)
            trainer = L.Trainer(
                max_steps=args.steps, accelerator=args.accelerator, devices=1, precision=args.precision,
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, default_root_dir=tempfile.mkdtemp(prefix="qgvae_vs_vqvae_"),
                callbacks=[CurveCallback(name, run, args.eval_every)],
            )
            run._mark[name] = time.perf_counter()
            trainer.fit(models[name], datamodule=datamodule())
        finally:
            run.lockstep.pass_on(name, finished=True)

    threads = [threading.Thread(target=worker, args=(n,), name=n) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.write()
    print(args.out.with_suffix(".md").read_text())


def Tokenizer_images(batch: Any) -> torch.Tensor:
    from vqzoo.tokenizers.base import Tokenizer

    return Tokenizer.images_of(batch)


if __name__ == "__main__":
    main()
