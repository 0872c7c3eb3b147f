"""Quantizer forward + backward: vqzoo vs vector-quantize-pytorch, side by side on CPU.

Both quantizers see the same (1, N, D) float32 input with ``requires_grad``,
and the timed step is forward + backward of ``loss`` and of ``quantized`` with
a fixed random upstream gradient (what a decoder would send back; computing
it is the decoder's work, not the quantizer's). Feature sets:

* ``ema_dead_code``: EMA codebook updates + dead-code replacement checked every
  step (vqzoo ``DeadCodeReset(every=1)``, peer ``threshold_ema_dead_code=1``).
* ``grad_ortho``: gradient-updated codebook + orthogonal regularizer weight 10
  (peer ``learnable_codebook=True, ema_update=False, orthogonal_reg_weight=10``).

The floor is one distance matrix product of the same size (``addmm`` of
(N, D) × (D, K)). Medians over ``--repeats`` runs after warm-up; the three
are timed in rotation within each repeat, so load drift on a shared machine
affects them alike.

Run: ``python benchmarks/quantizer_speed.py`` (needs ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vqzoo.quantize import DeadCodeReset, OrthogonalRegularizer, VectorQuantizer

SIZES = [(4096, 256, 1024), (16384, 64, 8192)]


def interleaved(fns: dict, repeats: int, warmup: int = 2, device: torch.device | None = None) -> dict[str, float]:  # noqa: ANN001
    """Median seconds of each function, timed in rotation so load drift hits all alike."""

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    interleaved.last_times = times  # type: ignore[attr-defined]
    interleaved.last_cpu = cpu  # type: ignore[attr-defined]
    return {k: statistics.median(v) for k, v in times.items()}


def ours(feature: str, K: int, D: int) -> VectorQuantizer:
    if feature == "ema_dead_code":
        return VectorQuantizer(K, D, layout="per_token", update="ema", decay=0.99, reset=DeadCodeReset(every=1))
    return VectorQuantizer(K, D, layout="per_token", regularizers=[OrthogonalRegularizer(10.0)])


def peer(feature: str, K: int, D: int):  # noqa: ANN201
    from vector_quantize_pytorch import VectorQuantize

    if feature == "ema_dead_code":
        return VectorQuantize(dim=D, codebook_size=K, decay=0.99, commitment_weight=0.25, threshold_ema_dead_code=1)
    return VectorQuantize(
        dim=D, codebook_size=K, commitment_weight=0.25, learnable_codebook=True, ema_update=False,
        orthogonal_reg_weight=10.0,
    )


def step_ours(vq: VectorQuantizer, z: torch.Tensor, upstream: torch.Tensor) -> None:
    out = vq(z)
    torch.autograd.backward([out.loss, out.quantized], [None, upstream])
    vq.after_backward()
    vq.after_step()


def step_peer(vq, z: torch.Tensor, upstream: torch.Tensor) -> None:  # noqa: ANN001
    quantized, _, loss = vq(z)
    torch.autograd.backward([loss.sum(), quantized], [None, upstream])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="bf16 = the input in bfloat16 under autocast (vqzoo quantizes in float32 regardless)")
    ap.add_argument("--quick", action="store_true", help="small shapes, 2 repeats: a smoke run")
    ap.add_argument("--shape", action="append", default=None, metavar="N,D,K",
                    help="time only this shape (repeatable; default: the benchmark's shapes)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantizer_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [(512, 32, 128), (1024, 16, 512)] if args.quick else SIZES
    if args.shape:
        sizes = [tuple(int(v) for v in shape.split(",")) for shape in args.shape]
    if args.quick:
        args.repeats = 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    try:
        import vector_quantize_pytorch

        peer_version = vector_quantize_pytorch.__version__ if hasattr(vector_quantize_pytorch, "__version__") else "?"
        have_peer = True
    except ImportError:
        print("vector-quantize-pytorch is not installed (pip install -e .[bench]); timing vqzoo alone")
        have_peer, peer_version = False, None
    if have_peer:
        from importlib.metadata import version

        peer_version = version("vector-quantize-pytorch")

    rows = []
    for N, D, K in sizes:
        torch.manual_seed(0)
        x = torch.randn(N, D, device=device)
        c = torch.randn(K, D, device=device)
        sq = c.pow(2).sum(-1)

        def floor_fn() -> torch.Tensor:  # float32: vqzoo's distances are float32 under any autocast (pitfall #7)
            return torch.addmm(sq, x, c.t(), beta=1.0, alpha=-2.0)

        for feature in ("ema_dead_code", "grad_ortho"):
            z = torch.randn(1, N, D, device=device, dtype=dtype, requires_grad=True)
            upstream = torch.randn(1, N, D, device=device, dtype=dtype) / (N * D)
            torch.manual_seed(0)
            vq = ours(feature, K, D).to(device).train()
            fns = {"floor": floor_fn, "vqzoo": lambda: step_ours(vq, z, upstream)}
            if have_peer:
                torch.manual_seed(0)
                pv = peer(feature, K, D).to(device).train()
                fns["peer"] = lambda: step_peer(pv, z, upstream)
            with autocast:
                t = interleaved(fns, args.repeats, device=device)
            raw = interleaved.last_times  # type: ignore[attr-defined]
            over_floor = [a / b for a, b in zip(raw["vqzoo"], raw["floor"])]
            cpu = interleaved.last_cpu  # type: ignore[attr-defined]
            cpu_over_floor = [a / b for a, b in zip(cpu["vqzoo"], cpu["floor"])]
            row = {
                "N": N, "D": D, "K": K, "feature": feature, "vqzoo_ms": 1e3 * t["vqzoo"],
                "floor_ms": 1e3 * t["floor"], "vqzoo_over_floor": t["vqzoo"] / t["floor"],
                "vqzoo_over_floor_per_round": [min(over_floor), max(over_floor)],
                "cpu_time_vqzoo_over_floor": statistics.median(cpu["vqzoo"]) / statistics.median(cpu["floor"]),
                "cpu_time_vqzoo_over_floor_per_round": [min(cpu_over_floor), max(cpu_over_floor)],
            }
            if have_peer:
                vs_peer = [a / b for a, b in zip(raw["peer"], raw["vqzoo"])]
                row["speedup_vs_peer_per_round"] = [min(vs_peer), max(vs_peer)]
            if have_peer:
                row.update({"peer_ms": 1e3 * t["peer"], "speedup_vs_peer": t["peer"] / t["vqzoo"],
                            "cpu_time_speedup_vs_peer": statistics.median(cpu["peer"]) / statistics.median(cpu["vqzoo"])})
            rows.append(row)
            print(
                f"N={N:6d} D={D:4d} K={K:5d} {feature:14s} vqzoo {row['vqzoo_ms']:8.1f} ms  "
                + (f"peer {row['peer_ms']:8.1f} ms  speedup {row['speedup_vs_peer']:5.2f}x  " if have_peer else "")
                + f"floor {row['floor_ms']:7.1f} ms  vqzoo/floor {row['vqzoo_over_floor']:4.2f} "
                f"(CPU time {row['cpu_time_vqzoo_over_floor']:4.2f}, rounds {min(cpu_over_floor):.2f}-{max(cpu_over_floor):.2f})"
            )
    result = {
        "benchmark": "quantizer forward+backward",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "peer": f"vector-quantize-pytorch {peer_version}" if have_peer else None,
        "repeats": args.repeats,
        "statistic": "median seconds per step, reported in ms (wall); cpu_time_* = the same from process CPU time, "
        "which one thread makes nearly immune to other processes on a shared machine",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(result: dict) -> str:
    """One table: vqzoo over the floor (wall and CPU time) and the speed-up over the peer, with per-round ranges."""
    lines = [
        "# VQ quantizer forward + backward: vqzoo vs its distance-matmul floor and vector-quantize-pytorch",
        "",
        f"{result['device']} ({result['device_name'] or result['machine']}), {result['dtype']}, {result['threads']} thread(s), torch "
        f"{result['torch']}, peer {result['peer']}; {result['repeats']} rounds, the three contenders timed in rotation "
        "within each round; medians, and the range of the per-round ratio in brackets. The floor is one "
        "(N, D) x (D, K) distance `addmm`; the step is forward + backward with a fixed upstream gradient "
        "(`benchmarks/quantizer_speed.py`).",
        "",
        "| N | D | K | features | vqzoo ms | floor ms | vqzoo / floor (wall) | vqzoo / floor (CPU time) | speed-up vs peer (wall) | speed-up vs peer (CPU time) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["vqzoo_over_floor_per_round"]
        clo, chi = r["cpu_time_vqzoo_over_floor_per_round"]
        peer = (f"{r['speedup_vs_peer']:.2f}x ({r['speedup_vs_peer_per_round'][0]:.2f}-"
                f"{r['speedup_vs_peer_per_round'][1]:.2f}) | {r['cpu_time_speedup_vs_peer']:.2f}x"
                if "peer_ms" in r else "n/a | n/a")
        lines.append(
            f"| {r['N']} | {r['D']} | {r['K']} | {r['feature']} | {r['vqzoo_ms']:.1f} | {r['floor_ms']:.1f} "
            f"| {r['vqzoo_over_floor']:.2f} ({lo:.2f}-{hi:.2f}) | {r['cpu_time_vqzoo_over_floor']:.2f} ({clo:.2f}-{chi:.2f}) "
            f"| {peer} |"
        )
    lines += ["", "Features: `ema_dead_code` = EMA codebook + dead-code reset checked every step; `grad_ortho` = "
              "gradient-trained codebook + orthogonal regularizer (weight 10).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
