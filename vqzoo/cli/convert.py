"""``vqzoo convert taming|diffusers``: pretrained tokenizers from other projects -> a vqzoo export directory.

The export loads with ``vqzoo.load(DIR)`` and works with
``vqzoo encode --tokenizer DIR``, as a prior's ``tokenizer: DIR`` and, through
the ``finetune.yaml`` written beside it, as the starting point of ``vqzoo fit``.
"""

from __future__ import annotations

import argparse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqzoo convert", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="format", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="export directory to write (refused if it exists)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    common.add_argument(
        "--quantizer-loss", choices=["vqzoo", "taming"], default="vqzoo",
        help="fine-tuning weights of the VQ loss: 'vqzoo' puts beta=0.25 on the commitment term (default); "
        "'taming' keeps the peer's legacy placement (beta on the codebook term)",
    )
    t = sub.add_parser("taming", parents=[common], help="taming-transformers / latent-diffusion VQModel .ckpt + YAML")
    t.add_argument("--ckpt", required=True, help="the Lightning .ckpt (state_dict with encoder.*, decoder.*, ...)")
    t.add_argument("--config", required=True, help="its YAML (model: {target: taming.models.vqgan.VQModel, ...})")
    t.add_argument("--ema", action="store_true", help="use latent-diffusion's EMA weights (model_ema.*)")
    d = sub.add_parser("diffusers", parents=[common], help="diffusers VQModel (save_pretrained dir or Hub id)")
    d.add_argument("--model", required=True, help="local directory or Hub id, e.g. kandinsky-community/kandinsky-2-2-decoder")
    d.add_argument("--subfolder", default=None, help="model subfolder (e.g. movq); movq/ and vqvae/ are found by themselves")
    d.add_argument("--resolution", type=int, default=None, help="nominal image size recorded in the export")
    return p


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if a.format == "taming":
        from vqzoo.convert.taming import convert_taming

        out = convert_taming(a.ckpt, a.config, a.out, overwrite=a.overwrite, quantizer_loss=a.quantizer_loss,
                             use_ema_weights=a.ema)
    else:
        from vqzoo.convert.diffusers import convert_diffusers

        out = convert_diffusers(a.model, a.out, subfolder=a.subfolder, resolution=a.resolution,
                                overwrite=a.overwrite, quantizer_loss=a.quantizer_loss)
    print(f"converted {a.format} model to {out} (load with vqzoo.load; "
          f"fine-tune with {out}/finetune.yaml)")
    return 0
