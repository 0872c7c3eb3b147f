"""``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from vqzoo.checkpoint import export_model, load

    p = argparse.ArgumentParser(prog="vqzoo export", description="Export a checkpoint as safetensors + config.json")
    p.add_argument("--ckpt", required=True, help="a .ckpt written by `vqzoo fit`")
    p.add_argument("--out", required=True, help="output directory")
    a = p.parse_args(argv)
    model = load(a.ckpt)
    out = export_model(model, a.out)
    print(f"exported {type(model).__name__} to {out}")
    return 0
