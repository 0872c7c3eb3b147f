"""``vqzoo encode --tokenizer CKPT_OR_DIR --data DATA.yaml --out DIR``: a token dataset."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vqzoo encode", description="Tokenize a dataset with a trained tokenizer")
    p.add_argument("--tokenizer", required=True, help="tokenizer .ckpt or export directory")
    p.add_argument("--data", required=True, help="YAML with a `data:` section (class_path + init_args) or a bare one")
    p.add_argument("--out", required=True, help="output directory of the token dataset")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    from vqzoo.checkpoint import load
    from vqzoo.cli.common import datamodule_from_yaml, split_loader
    from vqzoo.tokenizers.base import Tokenizer
    from vqzoo.tokenizers.encode import encode_tokens

    tokenizer = load(a.tokenizer, expected=Tokenizer)
    dm = datamodule_from_yaml(a.data)
    if a.batch_size:
        dm.batch_size = a.batch_size
    loader = split_loader(dm, a.split)
    out = encode_tokens(tokenizer, loader, a.out, tokenizer_path=str(a.tokenizer), overwrite=a.overwrite)
    print(f"wrote tokens to {out}")
    return 0
