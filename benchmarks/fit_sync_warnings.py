"""A timed TE-VQGAN fit with CUDA's sync debug mode on: how many host syncs does steady-state training make?

The model is the TE-VQGAN of the paper's stage 1 (docs/reference-implementations.md §A:
replication padding, orthogonal regularizer weight 10, PatchGAN active from
step 0 so the GAN path is in the count) at 64x64 RGB, batch 64, trained by a
Lightning ``Trainer`` (``bf16-mixed`` with ``--dtype bf16``) on synthetic
images in [-1, 1] for ``--seconds`` (the data is not the point: the hot path
is). ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronizing CUDA
call emit a warning; each one is recorded with the first frame outside torch
that caused it (vqzoo, Lightning, ...), per step, after ``--warmup`` steps.

On CPU there is no CUDA sync to warn about: the script counts the Python-level
sync points instead (benchmarks/count_syncs.py's ``SyncCounter``), which is
what ``--device cpu --quick`` smoke-tests.

Writes ``--out`` (JSON) and the same name with ``.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep


def _origin() -> str:
    for fs in reversed(traceback.extract_stack()[:-2]):
        if not fs.filename.startswith(TORCH_DIR) and "warnings" not in fs.filename and fs.filename != __file__:
            rel = os.path.relpath(fs.filename, ROOT)
            return f"{rel if not rel.startswith('..') else fs.filename.split('site-packages/')[-1]}:{fs.lineno}"
    return "?"


def build(args: argparse.Namespace) -> Any:
    from vqzoo.losses import AdversarialLoss, NLayerDiscriminator
    from vqzoo.quantize import OrthogonalRegularizer, VectorQuantizer
    from vqzoo.tokenizers import VQGAN

    return VQGAN(
        VectorQuantizer(args.codes, 256 if not args.quick else 32, regularizers=[OrthogonalRegularizer(weight=10.0)]),
        in_channels=3, resolution=args.resolution, ch=args.ch, ch_mult=[1, 2, 2] if args.quick else [1, 1, 2, 2, 4],
        num_res_blocks=1 if args.quick else 2, attn_resolutions=[] if args.quick else [args.resolution // 16],
        z_channels=256 if not args.quick else 32, replicate_padding=True,
        adversarial=AdversarialLoss(NLayerDiscriminator(3, ndf=64 if not args.quick else 8, n_layers=3 if not args.quick else 1),
                                    disc_start=0, disc_weight=0.8),
        optimizer={"class_path": "torch.optim.Adam",
                   "init_args": {"lr": 4.5e-6 * args.batch, "betas": (0.5, 0.9), **({"fused": True} if args.device.startswith("cuda") else {})}},
        compile=args.compile,
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--ch", type=int, default=128)
    ap.add_argument("--codes", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=20, help="steps not counted (allocator and cudnn warm-up)")
    ap.add_argument("--compile", action="store_true", help="the model's compile option (encoder and decoder)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 32x32, batch 4, 15 s: a smoke run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fit_sync_warnings.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.resolution, args.ch, args.codes, args.seconds, args.warmup = 4, 32, 32, 64, 15.0, 2
    import lightning as L
    from torch.utils.data import DataLoader

    from count_syncs import SyncCounter
    from vqzoo.data.batch import TensorBatchDataset

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(1)
    cuda = args.device.startswith("cuda")
    model = build(args)
    images = torch.rand(args.batch * 8, 3, args.resolution, args.resolution) * 2 - 1
    loader = DataLoader(TensorBatchDataset(images=images), batch_size=args.batch, shuffle=True, drop_last=True,
                        pin_memory=cuda)
    per_step: list[int] = []
    where: collections.Counter = collections.Counter()
    step_times: list[float] = []
    counter = SyncCounter()

    class Count(L.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            if not cuda:  # count steady-state steps only, as the CUDA path does
                counter.enabled = module.generator_step >= args.warmup
            self.n0 = sum(where.values()) if cuda else counter.counts["vqzoo"] + counter.counts["other"]
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
            n = sum(where.values()) if cuda else counter.counts["vqzoo"] + counter.counts["other"]
            if module.generator_step > args.warmup:
                per_step.append(n - self.n0)
                step_times.append(time.perf_counter() - self.t0)
            elif cuda:
                where.clear()

    original_show = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchronizing" in str(message):
            where[_origin()] += 1
        else:
            original_show(message, category, filename, lineno, file, line)

    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if args.dtype == "bf16" else "32-true",
        max_time={"seconds": args.seconds}, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=50,
        callbacks=[Count()],
    )
    t0 = time.perf_counter()
    if cuda:
        warnings.showwarning = show
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.fit(model, loader)
            finally:
                torch.cuda.set_sync_debug_mode(0)
                warnings.showwarning = original_show
    else:
        with counter:
            trainer.fit(model, loader)
        where.update({f"{k} [python-level]": v for k, v in counter.where["vqzoo"].items()})
        where.update({f"{k} [python-level]": v for k, v in counter.where["other"].items()})
    elapsed = time.perf_counter() - t0
    steps = model.generator_step
    counted = len(per_step)
    vqzoo_total = sum(v for k, v in where.items() if k.startswith("vqzoo/"))
    result = {
        "benchmark": "TE-VQGAN fit with torch.cuda.set_sync_debug_mode('warn')" if cuda else
        "TE-VQGAN fit, Python-level sync points counted (CPU smoke run)",
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": args.dtype, "batch": args.batch, "resolution": args.resolution, "ch": args.ch,
        "compile": args.compile, "seconds": elapsed, "generator_steps": steps,
        "generator_steps_per_s": (sum(1 for _ in step_times) / sum(step_times)) if step_times else None,
        "images_per_s": (args.batch * len(step_times) / sum(step_times)) if step_times else None,
        "counted_steps": counted,
        "syncs_per_counted_step": (sum(per_step) / counted) if counted else None,
        "syncs_max_in_a_step": max(per_step) if per_step else None,
        "vqzoo_syncs_per_counted_step": (vqzoo_total / counted) if counted else None,
        "where": dict(where.most_common()),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {result['benchmark']}", "",
             f"{result['device_name']}, {args.dtype}, batch {args.batch}, {args.resolution}x{args.resolution}, "
             f"ch {args.ch}, compile {args.compile}: {steps} generator steps in {elapsed:.0f} s "
             f"({result['images_per_s'] or 0:.1f} img/s in steady state).", "",
             f"Syncs per steady-state step: {result['syncs_per_counted_step']} (vqzoo's own: "
             f"{result['vqzoo_syncs_per_counted_step']}), max in one step {result['syncs_max_in_a_step']}, "
             f"over {counted} steps.", "", "| where | count |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in where.most_common(30)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
