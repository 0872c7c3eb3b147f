"""FSQ, LFQ and residual VQ forward + backward: vqzoo vs vector-quantize-pytorch on the CPU.

Both libraries see the same ``(1, N, D)`` float32 features with
``requires_grad`` (vqzoo in its per-token layout, the peer channel-last) and
the timed step is forward + backward of ``loss + mean(quantized²)`` (the
second term stands in for a decoder's gradient). Features are matched:

* ``fsq``: levels [8, 5, 5, 5] on D = 4 (no projection), and D = 64 with
  learned in/out projections (both libraries: linear maps with bias).
* ``lfq``: 10 and 16 bits, no projection, entropy weight 0.1, γ = 1,
  τ = 0.01 (the peer's ``inv_temperature`` 100), commitment weight 0.25, the
  codebook entropy over the whole batch (the peer's ``frac_per_sample_entropy=1``).
* ``rvq``: 4 levels of 1024 codes of dim 64, EMA updates (decay 0.99),
  commitment weight 0.25, separate codebooks, no dropout.

One thread (``torch.set_num_threads(1)``). Each round times every entry once,
ours and the peer's back to back, so load drift on a shared machine hits both
alike; the ratio peer/ours is taken per round, and we report its median and
its spread (min, quartiles, max) over rounds, with the medians of the times.

Run: ``python benchmarks/quantizer_family_speed.py`` (needs ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch

from vqzoo.quantize import FiniteScalarQuantizer, LookupFreeQuantizer, ResidualQuantizer, VectorQuantizer

# name, N vectors, D features, description
CASES = [
    ("fsq_d4", 16384, 4, "FSQ levels [8,5,5,5], D=4"),
    ("fsq_d64_proj", 16384, 64, "FSQ levels [8,5,5,5], D=64 with projections"),
    ("lfq_10bit", 4096, 10, "LFQ 10 bits (1024 codes), entropy + commitment"),
    ("lfq_16bit", 1024, 16, "LFQ 16 bits (65536 codes), entropy + commitment"),
    ("rvq_4x1024", 4096, 64, "RVQ 4 levels x 1024 codes, D=64, EMA"),
]


def ours(name: str, D: int) -> torch.nn.Module:
    if name.startswith("fsq"):
        return FiniteScalarQuantizer([8, 5, 5, 5], dim=D, layout="per_token", check_inputs=False)
    if name.startswith("lfq"):
        return LookupFreeQuantizer(
            D, layout="per_token", entropy_weight=0.1, diversity_weight=1.0, commitment_weight=0.25,
            temperature=0.01, check_inputs=False,
        )
    inner = VectorQuantizer(1024, D, layout="per_token", update="ema", decay=0.99, beta=0.25)
    return ResidualQuantizer(inner, depth=4, check_inputs=False)


def peer(name: str, D: int) -> torch.nn.Module:
    from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ

    if name.startswith("fsq"):
        return FSQ(levels=[8, 5, 5, 5], dim=D)
    if name.startswith("lfq"):
        return LFQ(
            dim=D, codebook_size=2**D, entropy_loss_weight=0.1, diversity_gamma=1.0, commitment_loss_weight=0.25,
            frac_per_sample_entropy=1.0,
        )
    return ResidualVQ(dim=D, num_quantizers=4, codebook_size=1024, decay=0.99, commitment_weight=0.25)


def step_ours(q: torch.nn.Module, z: torch.Tensor) -> None:
    out = q(z)
    (out.loss + out.quantized.square().mean()).backward()
    q.after_backward()
    q.after_step()


def step_peer(name: str, q: torch.nn.Module, z: torch.Tensor) -> None:
    res = q(z)
    if name.startswith("fsq"):
        quantized, loss = res[0], 0.0
    elif name.startswith("lfq"):
        quantized, loss = res[0], res[2]
    else:
        quantized, loss = res[0], res[2].sum()
    (loss + quantized.square().mean()).backward()


def rounds(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return times


def quartiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"min": min(values), "q1": q[0], "median": statistics.median(values), "q3": q[2], "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cases", nargs="*", default=[c[0] for c in CASES])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantizer_family_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import vector_quantize_pytorch  # noqa: F401

        peer_version = version("vector-quantize-pytorch")
    except ImportError:
        print("vector-quantize-pytorch is not installed (pip install -e .[bench]); timing vqzoo alone")
        peer_version = None

    rows = []
    for name, N, D, what in CASES:
        if name not in args.cases:
            continue
        torch.manual_seed(0)
        z = torch.randn(1, N, D, requires_grad=True)
        torch.manual_seed(0)
        q = ours(name, D).train()
        fns = {"vqzoo": lambda: step_ours(q, z)}
        if peer_version:
            torch.manual_seed(0)
            p = peer(name, D).train()
            fns["peer"] = lambda: step_peer(name, p, z)
        t = rounds(fns, args.repeats)
        row = {"case": name, "what": what, "N": N, "D": D, "vqzoo_ms": 1e3 * statistics.median(t["vqzoo"])}
        if peer_version:
            ratios = [a / b for a, b in zip(t["peer"], t["vqzoo"])]
            row.update({
                "peer_ms": 1e3 * statistics.median(t["peer"]),
                "speedup_vs_peer": quartiles(ratios),
            })
        rows.append(row)
        line = f"{name:14s} N={N:6d} D={D:3d}  vqzoo {row['vqzoo_ms']:8.2f} ms"
        if peer_version:
            s = row["speedup_vs_peer"]
            line += (f"  peer {row['peer_ms']:8.2f} ms  speedup {s['median']:6.2f}x "
                     f"(q1 {s['q1']:.2f}, q3 {s['q3']:.2f}, min {s['min']:.2f}, max {s['max']:.2f})")
        print(line, flush=True)
    result = {
        "benchmark": "quantizer family forward+backward (FSQ, LFQ, RVQ)",
        "device": "cpu",
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "peer": f"vector-quantize-pytorch {peer_version}" if peer_version else None,
        "repeats": args.repeats,
        "statistic": "median ms per step; speedup = peer/vqzoo per round, median and spread over rounds",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
