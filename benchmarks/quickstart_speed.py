"""Generator steps per second of the quickstart (configs/quickstart.yaml), one or more source trees side by side.

Each round runs ``vqzoo fit --config configs/quickstart.yaml`` of every tree in
its own subprocess (``PYTHONPATH`` = the tree; the trees' order rotates each
round, so the load of a shared machine hits them alike), one torch thread, no
validation and no checkpoints, for ``--warmup + --steps`` generator steps; a
callback times the last ``--steps`` of them (wall clock, and process CPU time).
The quickstart's discriminator starts at generator step 300, so these are
generator-only steps, the first ~half of its 625. ``--disc`` sets
``disc_start`` 0 to time GAN steps instead.

Typical before/after run (the base tree exported with ``git archive``)::

    mkdir -p /tmp/base && git archive BASE | tar -x -C /tmp/base
    python benchmarks/quickstart_speed.py --tree before=/tmp/base --tree after=.

Writes ``benchmarks/results/quickstart_speed.json`` (``--out``).
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

CHILD = r"""
import json, sys, tempfile, time
import torch
torch.set_num_threads(1)
import lightning as L
from vqzoo.cli import VQZooCLI

warmup, steps, disc, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
times = []

class Clock(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, i):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
    def on_train_batch_end(self, trainer, module, out, batch, i):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))
        if i + 1 >= warmup + steps:
            trainer.should_stop = True

args = ["--config", "configs/quickstart.yaml", "--trainer.logger=false",
        "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--trainer.max_time=null",
        f"--trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
        f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='vqzoo_quickstart_speed_')}"]
if disc:
    args.append("--model.init_args.adversarial.init_args.disc_start=0")
cli = VQZooCLI(args=args, run=False)
cli.trainer.callbacks.append(Clock())
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
print("RESULT " + json.dumps(times))
"""


def run_child(tree: Path, warmup: int, steps: int, disc: bool, device: str) -> list[tuple[float, float]]:
    # cwd = the tree: `python -c` puts the working directory first on sys.path
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", CHILD, str(warmup), str(steps), "1" if disc else "0", device],
                         cwd=tree, env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return [tuple(t) for t in json.loads(line[7:])]
    raise RuntimeError(f"quickstart child in {tree} failed:\n{out.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=None, help="NAME=PATH of a source tree (repeatable); default: this one")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--disc", action="store_true", help="disc_start 0: time GAN steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32",), default="fp32", help="the quickstart's own precision")
    ap.add_argument("--quick", action="store_true", help="2 warm-up + 5 steps, 1 round")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quickstart_speed.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.rounds = 2, 5, 1
    trees = dict(t.split("=", 1) for t in (args.tree or [f"this={ROOT}"]))
    names = list(trees)
    per: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = run_child(Path(trees[n]).resolve(), args.warmup, args.steps, args.disc, args.device)
            per[n].extend(t)
            round_medians[n].append(statistics.median(w for w, _ in t))
            print(f"round {r + 1}/{args.rounds} {n:8s} {1 / round_medians[n][-1]:6.2f} steps/s (wall median)", flush=True)
    result: dict = {"benchmark": "quickstart generator steps per second", "config": "configs/quickstart.yaml",
                    "gan_steps": args.disc, "device": args.device, "threads": 1, "warmup": args.warmup,
                    "steps": args.steps, "rounds": args.rounds, "trees": trees,
                    "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": {}}
    for n in names:
        wall = [w for w, _ in per[n]]
        cpu = [c for _, c in per[n]]
        result["results"][n] = {
            "steps_per_s_wall": 1 / statistics.median(wall),
            "steps_per_s_cpu": 1 / statistics.median(cpu),
            "round_steps_per_s": [1 / m for m in round_medians[n]],
            "wall_s": wall, "cpu_s": cpu,
        }
        res = result["results"][n]
        print(f"{n:8s} {res['steps_per_s_wall']:.2f} steps/s wall, {res['steps_per_s_cpu']:.2f} steps/s by CPU time; "
              f"rounds {min(res['round_steps_per_s']):.2f}-{max(res['round_steps_per_s']):.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
