"""``vqzoo sample --prior CKPT_OR_DIR --n 64 --out DIR``: tokens and an image grid."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vqzoo sample", description="Sample tokens (and images) from a trained prior")
    p.add_argument("--prior", required=True, help="prior .ckpt or export directory")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--condition", default=None, help="class label (int) or caption text, for conditional priors")
    p.add_argument("--out", default="samples")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="MaskGIT decoding steps")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with, if the prior holds none")
    p.add_argument(
        "--text-encoder", default=None,
        help="class path of the caption vocabulary that turns --condition text into ids "
        "(default: the one the prior was trained with, else the TE experiment's)",
    )
    a = p.parse_args(argv)
    from vqzoo.priors.sample import sample_prior

    out = sample_prior(
        a.prior, n=a.n, condition=a.condition, out_dir=a.out, seed=a.seed, temperature=a.temperature,
        top_k=a.top_k, top_p=a.top_p, cfg_scale=a.cfg_scale, steps=a.steps, tokenizer=a.tokenizer,
        overwrite=a.overwrite, text_encoder=a.text_encoder,
    )
    print(f"wrote samples to {out}")
    return 0
