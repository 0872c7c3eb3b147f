"""MoVQ decoder forward speed: vqzoo vs diffusers' ``VQModel(norm_type="spatial")``.

Both sides run the same work, from the quantized map ``zq`` to the image:
``post_quant_conv(zq)`` and the SpatialNorm decoder conditioned on ``zq``
(vqzoo: ``MoVQ.decode(zq)``; diffusers: ``decoder(post_quant_conv(zq), zq)``,
what ``VQModel.decode`` runs after its quantizer). The configuration is the
MoVQ/Kandinsky one (docs/reference-implementations.md §C; diffusers'
``MOVQ_CONFIG``): channels (128, 256, 256, 512), 2 layers per block (3 in
the decoder), 4 latent channels, 4-dim codes, 16384 codes, attention at the
lowest level (diffusers ``AttnUpDecoderBlock2D`` first; vqzoo
``attn_resolutions = [resolution / 8]``) and in the middle block, single-head
attention. vqzoo is also timed with M = 4 codes per position (a 16-channel
``zq``; diffusers has no multichannel layout).

diffusers is in the ``bench`` extra (``pip install -e .[bench]``). Without it
the script says so and still times vqzoo, so the peer numbers can be added
later on the same machine.

Reported: median (and min/max) seconds per forward over ``--repeats`` timed
runs after ``--warmup`` runs, the contestants timed in turn (round-robin, so
load changes on a shared machine hit all of them alike), under
``torch.inference_mode``, with
``torch.cuda.synchronize`` around each CUDA run; the ratio is vqzoo / diffusers
(below 1 means vqzoo is faster). Parameter counts of both decoders are
recorded as a check that the configurations match.

Usage::

    python benchmarks/movq_decoder_speed.py                       # 256x256, batch 1, CPU, 1 thread
    python benchmarks/movq_decoder_speed.py --device cuda --batch-size 8
    python benchmarks/movq_decoder_speed.py --resolution 128      # quicker on a busy CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vqzoo.quantize import VectorQuantizer  # noqa: E402
from vqzoo.tokenizers.movq import MoVQ  # noqa: E402

CHANNELS = (128, 256, 256, 512)
CH_MULT = (1, 2, 2, 4)
LAYERS = 2
EMBED_DIM = 4
NUM_CODES = 16384


def build_vqzoo(resolution: int, num_channels: int) -> MoVQ:
    layout = "multichannel" if num_channels > 1 else "spatial"
    q = VectorQuantizer(NUM_CODES, EMBED_DIM, layout=layout, num_channels=num_channels)
    return MoVQ(q, in_channels=3, resolution=resolution, ch=CHANNELS[0], ch_mult=CH_MULT, num_res_blocks=LAYERS,
                attn_resolutions=(resolution // 8,), z_channels=EMBED_DIM * num_channels, check_inputs=False)


def build_diffusers(resolution: int):  # noqa: ANN201 (diffusers is optional)
    from diffusers import VQModel

    return VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        block_out_channels=CHANNELS, layers_per_block=LAYERS, act_fn="silu", latent_channels=EMBED_DIM,
        sample_size=resolution, num_vq_embeddings=NUM_CODES, norm_num_groups=32, vq_embed_dim=EMBED_DIM,
        norm_type="spatial",
    )


def time_interleaved(fns: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, dict]:
    """Seconds per call of each function, the functions timed in turn (round-robin).

    Interleaving spreads any change in machine load (a shared CPU, GPU clocks)
    over all contestants instead of penalising whichever runs last.
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n]()
        sync()
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                sync()
                t0 = time.perf_counter()
                fns[n]()
                sync()
                times[n].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs": repeats}
            for n, t in times.items()}


def count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... ")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = both decoders under autocast")
    p.add_argument("--quick", action="store_true", help="64x64, 2 repeats: a smoke run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "movq_decoder_speed.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.resolution, args.repeats, args.warmup = 64, 2, 1
    if args.resolution % 8:
        raise ValueError(f"--resolution must be divisible by 8 (f = 8), got {args.resolution}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    side = args.resolution // 8
    result: dict = {
        "benchmark": "movq_decoder_speed",
        "config": vars(args) | {"latent": [side, side], "block_out_channels": CHANNELS, "embed_dim": EMBED_DIM},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }

    g = torch.Generator().manual_seed(args.seed)
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    params: dict[str, int] = {}
    shape = (args.batch_size, 3, args.resolution, args.resolution)
    for M in (1, 4):
        torch.manual_seed(args.seed)
        ours = build_vqzoo(args.resolution, M).to(device).eval()
        zq = torch.randn(args.batch_size, EMBED_DIM * M, side, side, generator=g).to(device)
        with torch.inference_mode():
            assert ours.decode(zq).shape == shape
        fns[f"vqzoo_m{M}"] = lambda m=ours, z=zq: m.decode(z)
        params[f"vqzoo_m{M}"] = count(ours.decoder, ours.post_quant_conv)

    try:
        import diffusers
    except ImportError:
        msg = ("diffusers is not installed (it is in the `bench` extra: pip install -e .[bench]); "
               "timing vqzoo only. Re-run with diffusers installed for the peer comparison.")
        print(msg, flush=True)
        result["peer"] = {"available": False, "message": msg}
    else:
        torch.manual_seed(args.seed)
        peer = build_diffusers(args.resolution).to(device).eval()
        zq1 = torch.randn(args.batch_size, EMBED_DIM, side, side, generator=g).to(device)
        fns["diffusers"] = lambda: peer.decoder(peer.post_quant_conv(zq1), zq1)
        with torch.inference_mode():
            assert fns["diffusers"]().shape == shape
        params["diffusers"] = count(peer.decoder, peer.post_quant_conv)
        result["peer"] = {"available": True, "diffusers_version": diffusers.__version__}

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with autocast:
        runs = time_interleaved(fns, device, args.warmup, args.repeats)
    for name, r in runs.items():
        r["decoder_params"] = params[name]
        print(f"{name:10s} median {r['median_s'] * 1e3:9.1f} ms  (min {r['min_s'] * 1e3:.1f}, "
              f"max {r['max_s'] * 1e3:.1f}; decoder params {r['decoder_params']:,})", flush=True)
    if "diffusers" in runs:
        result["ratio_vqzoo_over_diffusers"] = runs["vqzoo_m1"]["median_s"] / runs["diffusers"]["median_s"]
        print(f"ratio vqzoo (M=1) / diffusers = {result['ratio_vqzoo_over_diffusers']:.3f}", flush=True)
    result["runs"] = runs
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
