"""``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from vqzoo.checkpoint import export_model, load

    p = argparse.ArgumentParser(prog="vqzoo export", description="Export a checkpoint as safetensors + config.json")
    p.add_argument("--ckpt", required=True, help="a .ckpt written by `vqzoo fit`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="for a model trained with ema_decay: export the EMA weights (default) or the raw ones")
    a = p.parse_args(argv)
    model = load(a.ckpt)
    out = export_model(model, a.out, use_ema=a.weights == "ema")
    print(f"exported {type(model).__name__} to {out}")
    return 0
