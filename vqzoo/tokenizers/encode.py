"""``encode_tokens``: a dataset through a frozen tokenizer into a token directory (``vqzoo encode``).

The directory format is :mod:`vqzoo.data.tokens`'s. Writing is atomic
(:func:`vqzoo.io.atomic_dir`): a crashed or interrupted run never leaves a
partial token set that a later training would read. Tokens are streamed to a
raw temporary file while encoding (memory stays flat) and converted to
``.npy`` at the end. An existing ``out_dir`` is an error unless ``overwrite``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqzoo.data.batch import as_batch
from vqzoo.data.tokens import FORMAT_VERSION
from vqzoo.io import atomic_dir, write_json

__all__ = ["encode_tokens"]


@torch.no_grad()
def encode_tokens(
    tokenizer: Any,
    dataloader: Iterable[Any],
    out_dir: str | Path,
    *,
    tokenizer_path: str | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    max_batches: int | None = None,
) -> Path:
    """Tokenize every image of ``dataloader`` with a frozen tokenizer and write a token directory.

    Args:
        tokenizer: a tokenizer module (``tokenize``, ``vocab_size``,
            ``token_shape``) or a path to a tokenizer checkpoint / export
            directory (loaded with :func:`vqzoo.load`).
        dataloader: yields :class:`~vqzoo.data.batch.Batch` dicts (or image
            tensors); ``labels``, ``text`` and ``captions`` are stored with the
            tokens when present. Use a non-shuffling loader to keep dataset order.
        out_dir: destination directory (see the module docstring for its layout).
        tokenizer_path: recorded in ``meta.json`` when ``tokenizer`` is a module.
        device: where to run the tokenizer (default: where its parameters are).
        overwrite: replace an existing ``out_dir``.
        max_batches: stop after this many batches (for quick subsets).

    Returns the path of the written directory.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if isinstance(tokenizer, (str, Path)):
        from vqzoo.checkpoint import load
        from vqzoo.tokenizers.base import Tokenizer

        tok, tok_name = load(tokenizer, expected=Tokenizer), str(tokenizer)
    else:
        tok, tok_name = tokenizer, type(tokenizer).__name__
    if tokenizer_path is not None:
        tok_name = tokenizer_path
    vocab_size = int(tok.vocab_size)
    token_shape = tuple(int(s) for s in tok.token_shape)
    dtype = np.int16 if vocab_size <= 2**15 else np.int32
    if isinstance(tok, torch.nn.Module):
        tok.eval()
        if device is not None:
            tok.to(device)
        param = next(iter(tok.parameters()), None)
        run_device = param.device if param is not None else torch.device(device or "cpu")
    else:
        run_device = torch.device(device or "cpu")

    with atomic_dir(out, overwrite) as tmp:
        raw_path = tmp / "tokens.raw"
        labels: list[np.ndarray] = []
        texts: list[np.ndarray] = []
        captions: list[str] = []
        count = 0
        with open(raw_path, "wb") as raw:
            for b, batch in enumerate(dataloader):
                if max_batches is not None and b >= max_batches:
                    break
                batch = as_batch(batch)
                images, lab, text = batch.get("images"), batch.get("labels"), batch.get("text")
                if images is None:
                    raise ValueError(f"batch {b} has no 'images' entry; encode_tokens tokenizes image batches")
                idx = tok.tokenize(images.to(run_device))
                if tuple(idx.shape[1:]) != token_shape:
                    raise ValueError(
                        f"tokenizer returned tokens of shape {tuple(idx.shape)}, expected "
                        f"(B, {', '.join(map(str, token_shape))}) from its token_shape"
                    )
                raw.write(idx.to("cpu", torch.int64).numpy().astype(dtype).tobytes())
                n = idx.shape[0]
                for store, value, what in ((labels, lab, "labels"), (texts, text, "text ids")):
                    if value is not None:
                        store.append(value.cpu().numpy())
                    elif store:
                        raise ValueError(f"batch {b} has no {what} but earlier batches had them")
                captions.extend(batch.get("captions") or [])
                count += n
        if count == 0:
            raise ValueError("the dataloader yielded no batches; nothing to encode")
        raw_tokens = np.memmap(raw_path, dtype=dtype, mode="r", shape=(count, *token_shape))
        final = np.lib.format.open_memmap(
            tmp / "tokens.npy", mode="w+", dtype=dtype, shape=(count, *token_shape)
        )
        step = max(1, 65536 // max(1, math.prod(token_shape)))
        for s in range(0, count, step):
            final[s : s + step] = raw_tokens[s : s + step]
        final.flush()
        del final, raw_tokens
        raw_path.unlink()
        has_labels = bool(labels)
        has_text = bool(texts)
        if has_labels:
            lab_arr = np.concatenate(labels).astype(np.int64)
            if lab_arr.shape[0] != count:
                raise ValueError(f"got {lab_arr.shape[0]} labels for {count} images")
            np.save(tmp / "labels.npy", lab_arr)
        if has_text:
            txt_arr = np.concatenate(texts).astype(np.int32)
            if txt_arr.shape[0] != count:
                raise ValueError(f"got {txt_arr.shape[0]} text rows for {count} images")
            np.save(tmp / "text.npy", txt_arr)
        has_captions = len(captions) == count
        if has_captions:
            write_json(tmp / "captions.json", captions)
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "vocab_size": vocab_size,
                "token_shape": list(token_shape),
                "num_samples": count,
                "dtype": np.dtype(dtype).name,
                "tokenizer": tok_name,
                "has_labels": has_labels,
                "has_text": has_text,
                "has_captions": has_captions,
            },
        )
    return out


