"""Model FLOPs utilisation of a prior's training step: a 12-layer, width-768 MiniGPT (GPT-2 small's trunk).

One step = forward (teacher-forced, class-conditional), cross-entropy, backward,
AdamW (fused on CUDA) -- the work of ``Prior.training_step`` with its
non-finite guard, without Lightning's loop. FLOPs are counted by torch's
``FlopCounterMode`` on one step (matmuls and attention, forward and backward);
MFU = FLOPs per step / median step time / the device's dense peak at
``--dtype`` (H100/H200 bf16: 989 TFLOP/s; ``--peak-tflops`` overrides). The
goal on one H100/H200 at bf16 is MFU >= 35%.

Sequence: 256 image tokens (16x16) + the class token, vocabulary 1024,
batch 32 (``--batch``). ``--compile`` compiles the trunk (the priors' ``compile``
option). Writes ``--out`` (JSON) and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--side", type=int, default=16, help="token grid side (side² image tokens)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a fast CPU smoke run)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="2 layers, width 64, batch 4: a smoke run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prior_mfu.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n_layer, args.n_embd, args.n_head, args.side, args.batch = 2, 64, 2, 8, 4
        args.warmup, args.repeats, args.vocab = 1, 3, 256
    from train_step import peak_flops
    from vqzoo.priors import MiniGPT
    from vqzoo.priors.base import PriorBatch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MiniGPT(vocab_size=args.vocab, token_shape=[args.side, args.side], condition="class", num_classes=1000,
                    n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, embd_pdrop=0.0, resid_pdrop=0.0,
                    attn_pdrop=0.0).to(device).train()
    if args.compile:  # what the compile option does in configure_model, with the chosen backend
        model.trunk.compile(backend=args.backend)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameter_groups(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if cuda else {}))
    tokens = torch.randint(0, args.vocab, (args.batch, args.side, args.side), device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    model._value_checks_done = True  # steady state: ids were checked on the first batch

    def step() -> None:
        model.nonfinite_begin([opt])
        with autocast:
            loss, _ = model.compute_loss(PriorBatch(tokens=tokens, labels=labels))
        ok = model.nonfinite_flag(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.nonfinite_end([ok])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    from torch.utils.flop_counter import FlopCounterMode

    flops = None
    if not args.compile:  # FlopCounterMode does not see inside compiled graphs; count an eager twin instead
        with FlopCounterMode(display=False) as fc:
            step()
        flops = int(fc.get_total_flops())
    else:
        eager = MiniGPT(vocab_size=args.vocab, token_shape=[args.side, args.side], condition="class", num_classes=1000,
                        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd).to(device).train()
        with FlopCounterMode(display=False) as fc, autocast:
            loss, _ = eager.compute_loss(PriorBatch(tokens=tokens, labels=labels))
            loss.backward()
        flops = int(fc.get_total_flops())
        del eager
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = peak_flops(device, args.dtype, args.peak_tflops)
    result = {
        "benchmark": "prior training-step MFU (MiniGPT)",
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": args.dtype, "compile": args.compile and args.backend,
        "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head, "sequence": args.side**2 + 1,
        "batch": args.batch, "parameters": params,
        "median_s": med, "min_s": min(times), "max_s": max(times),
        "spread_pct": 100 * (max(times) - min(times)) / med,
        "tokens_per_s": args.batch * (args.side**2 + 1) / med,
        "flops_per_step": flops, "achieved_tflops": flops / med / 1e12 if flops else None,
        "peak_flops": peak, "mfu": (flops / med / peak) if (flops and peak) else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no known peak for this device)"
    md = [f"# {result['benchmark']}", "",
          f"{result['device_name']}, {args.dtype}, compile {args.compile}: {args.n_layer} layers x {args.n_embd}, "
          f"{params / 1e6:.1f}M parameters, sequence {result['sequence']}, batch {args.batch}.", "",
          f"Step {med * 1e3:.1f} ms median ({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}), "
          f"{result['tokens_per_s']:.0f} tokens/s, {flops / 1e9:.1f} GFLOP/step, "
          f"{result['achieved_tflops']:.2f} TFLOP/s, MFU {mfu}."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
