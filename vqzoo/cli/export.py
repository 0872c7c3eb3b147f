"""``vqzoo export --ckpt C --out DIR [--push-to-hub REPO]``: weights as safetensors plus config.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    from vqzoo import hub
    from vqzoo.checkpoint import export_model, load

    p = argparse.ArgumentParser(prog="vqzoo export", description="Export a checkpoint as safetensors + config.json")
    p.add_argument("--ckpt", required=True, help="a .ckpt written by `vqzoo fit` (or, with --push-to-hub, an export dir)")
    p.add_argument("--out", default=None, help="output directory (required unless pushing an export directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the export to this Hub repo (user/name)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="for a model trained with ema_decay: export the EMA weights (default) or the raw ones")
    a = p.parse_args(argv)
    if Path(a.ckpt).is_dir() and a.out is None and a.push_to_hub:
        out = Path(a.ckpt)  # an export directory (e.g. from `vqzoo convert`): pushed as it is
        load(out)  # refuse to push something that does not load
    elif a.out is None:
        p.error("--out is required (only an export directory can be pushed without it)")
    else:
        if Path(a.out).exists() and not a.overwrite:
            raise FileExistsError(f"{a.out} already exists; pass --overwrite to replace it")
        model = load(a.ckpt)
        out = export_model(model, a.out, overwrite=a.overwrite, use_ema=a.weights == "ema")
        print(f"exported {type(model).__name__} to {out}")
    if a.push_to_hub:
        url = hub.push_to_hub(out, a.push_to_hub, private=a.private or None)
        print(f"pushed {out} to {url}")
    return 0
