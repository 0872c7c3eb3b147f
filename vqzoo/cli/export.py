"""``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from vqzoo.checkpoint import export_model, load

    p = argparse.ArgumentParser(prog="vqzoo export", description="Export a checkpoint as safetensors + config.json")
    p.add_argument("--ckpt", required=True, help="a .ckpt written by `vqzoo fit`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    from pathlib import Path

    if Path(a.out).exists() and not a.overwrite:
        raise FileExistsError(f"{a.out} already exists; pass --overwrite to replace it")
    model = load(a.ckpt)
    out = export_model(model, a.out, overwrite=a.overwrite)
    print(f"exported {type(model).__name__} to {out}")
    return 0
