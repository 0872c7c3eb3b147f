"""Pre-encoded token datasets, and the encode / sample helpers behind ``vqzoo encode`` / ``vqzoo sample``.

Directory format written by :func:`encode_tokens` (format version 1)::

    out_dir/
      meta.json      {"format_version": 1, "vocab_size", "token_shape", "num_samples",
                      "dtype", "tokenizer", "has_labels", "has_text", "has_captions"}
      tokens.npy     (num_samples, *token_shape), int16 when vocab_size <= 32768 else int32
      labels.npy     (num_samples,) int64 class labels            [if the batches had labels]
      text.npy       (num_samples, text_length) int32 text ids     [if the batches had text ids]
      captions.json  list of caption strings                       [if the batches had strings]

Decisions:

* ``.npy`` rather than ``.pt``: it can be memory-mapped (``mmap_mode="r"``), so
  a token set larger than RAM (ImageNet at 32x32 tokens is ~2.6 GB in int16)
  loads instantly and is shared between dataloader workers.
* Writing is atomic: everything goes into a hidden temporary directory next to
  ``out_dir`` that is renamed into place only after the last file is complete;
  on any error the temporary directory is removed, so a crashed or interrupted
  run never leaves a partial token set that a later training would read.
  Tokens are streamed to a raw temporary file while encoding (memory stays
  flat) and converted to ``.npy`` at the end.
* An existing ``out_dir`` is an error unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

__all__ = [
    "TokenDataModule",
    "TokenDataset",
    "encode_tokens",
    "read_token_meta",
    "sample_prior",
    "sample_to_grid",
    "split_batch",
]

FORMAT_VERSION = 1
_MAIN_KEYS = ("tokens", "indices", "image", "images", "x")
_LABEL_KEYS = ("label", "labels", "class", "y")
_TEXT_KEYS = ("text", "text_ids", "caption_ids")
_CAPTION_KEYS = ("caption", "captions")


# ---------------------------------------------------------------------------
# batch parsing shared with the priors
# ---------------------------------------------------------------------------


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Split a dataloader batch into ``(main, labels, text_ids)``.

    ``main`` is the image tensor or the token tensor. Accepted forms:

    * a tensor: ``main`` only;
    * a dict: ``main`` from the first of ``tokens``/``indices``/``image``/
      ``images``/``x``; labels from ``label``/``labels``/``class``/``y``;
      text ids from ``text``/``text_ids``/``caption_ids`` (a tensor);
    * a tuple/list ``(main, extra, ...)``: each further tensor is a label if
      it is 1-D and integer, text ids if it is 2-D and integer; other entries
      (strings, metadata) are ignored.
    """
    labels = text = None
    if isinstance(batch, Tensor):
        return batch, None, None
    if isinstance(batch, dict):
        main = next((batch[k] for k in _MAIN_KEYS if k in batch), None)
        if main is None:
            raise ValueError(
                f"batch dict has none of the keys {_MAIN_KEYS}; got keys {sorted(batch)}"
            )
        labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        text = next((batch[k] for k in _TEXT_KEYS if k in batch and isinstance(batch[k], Tensor)), None)
        return main, labels, text
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        for extra in batch[1:]:
            if not isinstance(extra, Tensor) or extra.is_floating_point():
                continue
            if extra.dim() == 1 and labels is None:
                labels = extra
            elif extra.dim() == 2 and text is None:
                text = extra
        return batch[0], labels, text
    raise ValueError(
        "expected a batch as a tensor, a dict or a (tensor, ...) tuple, got "
        f"{type(batch).__name__}"
    )


def _captions_of(batch: Any) -> list[str] | None:
    if isinstance(batch, dict):
        for k in _CAPTION_KEYS:
            v = batch.get(k)
            if isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v):
                return list(v)
    elif isinstance(batch, (tuple, list)):
        for v in batch[1:]:
            if isinstance(v, (list, tuple)) and v and all(isinstance(s, str) for s in v):
                return list(v)
    return None


# ---------------------------------------------------------------------------
# atomic writing helpers
# ---------------------------------------------------------------------------


def _atomic_dir_commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` directory to ``out`` (replacing it if allowed)."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _new_tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------


def _as_tokenizer(tokenizer: Any) -> tuple[Any, str]:
    if isinstance(tokenizer, (str, Path)):
        from vqzoo.tokenizers.base import load_tokenizer

        path = Path(tokenizer)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer checkpoint or export directory not found: {path}")
        return load_tokenizer(str(path)), str(path)
    return tokenizer, type(tokenizer).__name__


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
            directory (loaded with ``vqzoo.tokenizers.base.load_tokenizer``).
        dataloader: yields image batches in any form :func:`split_batch`
            accepts; labels, text ids and caption strings are stored with the
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
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    tok, tok_name = _as_tokenizer(tokenizer)
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

    tmp = _new_tmp_dir(out)
    try:
        raw_path = tmp / "tokens.raw"
        labels: list[np.ndarray] = []
        texts: list[np.ndarray] = []
        captions: list[str] = []
        count = 0
        with open(raw_path, "wb") as raw:
            for b, batch in enumerate(dataloader):
                if max_batches is not None and b >= max_batches:
                    break
                images, lab, text = split_batch(batch)
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
                caps = _captions_of(batch)
                if caps is not None:
                    captions.extend(caps)
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
            _write_json(tmp / "captions.json", captions)
        _write_json(
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
        _atomic_dir_commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_token_meta(root: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a token directory."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no token directory at {root} (missing {meta_path}); create one with encode_tokens "
            "or `vqzoo encode`"
        )
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    for key in ("vocab_size", "token_shape", "num_samples"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks the required key {key!r}")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta['format_version']}, newer than this vqzoo "
            f"reads ({FORMAT_VERSION})"
        )
    meta["token_shape"] = [int(s) for s in meta["token_shape"]]
    return meta


class TokenDataset(Dataset):
    """Items of a token directory: ``{"tokens": int64 (*token_shape), "label"?: int64, "text"?: int64 (L,)}``.

    Tokens are memory-mapped, so opening is instant and dataloader workers
    share the pages.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.meta = read_token_meta(self.root)
        tokens_path = self.root / "tokens.npy"
        if not tokens_path.is_file():
            raise FileNotFoundError(f"missing {tokens_path}")
        self.tokens = np.load(tokens_path, mmap_mode="r")
        expected = (self.meta["num_samples"], *self.meta["token_shape"])
        if tuple(self.tokens.shape) != expected:
            raise ValueError(
                f"{tokens_path} has shape {tuple(self.tokens.shape)} but meta.json says {expected}"
            )
        self.labels = np.load(self.root / "labels.npy") if self.meta.get("has_labels") else None
        self.text = np.load(self.root / "text.npy", mmap_mode="r") if self.meta.get("has_text") else None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def token_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["token_shape"])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"tokens": torch.from_numpy(np.asarray(self.tokens[i], dtype=np.int64))}
        if self.labels is not None:
            item["label"] = torch.tensor(int(self.labels[i]), dtype=torch.int64)
        if self.text is not None:
            item["text"] = torch.from_numpy(np.asarray(self.text[i], dtype=np.int64))
        return item


class TokenDataModule(L.LightningDataModule):
    """Lightning DataModule over token directories written by :func:`encode_tokens`.

    Args:
        root: training token directory.
        val_root: validation token directory (e.g. the encoded test split).
        val_fraction: if no ``val_root``, hold out this fraction of ``root``
            (a seeded random split) for validation; 0 disables validation.
        batch_size: per-device batch size.
        num_workers: dataloader workers.
        seed: seed of the train/val split.
        drop_last: drop the last incomplete training batch (keeps DDP ranks and
            step counts uniform).
        pin_memory: pin host memory for faster GPU transfer.

    ``meta`` (vocab_size, token_shape, ...) is read from ``root`` so the prior
    can check at setup that it was configured for these tokens.
    """

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = root
        self.val_root = val_root
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self._meta: dict[str, Any] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = read_token_meta(self.root)
        return self._meta

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = TokenDataset(self.root)
        self._meta = full.meta
        if self.val_root is not None:
            self.train_set = full
            val = TokenDataset(self.val_root)
            if val.vocab_size != full.vocab_size or val.token_shape != full.token_shape:
                raise ValueError(
                    f"val_root tokens (vocab {val.vocab_size}, shape {val.token_shape}) differ from "
                    f"root tokens (vocab {full.vocab_size}, shape {full.token_shape})"
                )
            self.val_set = val
        elif self.val_fraction > 0:
            n_val = max(1, int(round(len(full) * self.val_fraction)))
            if n_val >= len(full):
                raise ValueError(f"val_fraction={self.val_fraction} leaves no training samples")
            g = torch.Generator().manual_seed(self.seed)
            train, val = random_split(full, [len(full) - n_val, n_val], generator=g)
            self.train_set, self.val_set = train, val
        else:
            self.train_set = full

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and self.drop_last and len(ds) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return [] if self.val_set is None else self._loader(self.val_set, train=False)


# ---------------------------------------------------------------------------
# sampling to images
# ---------------------------------------------------------------------------


def sample_to_grid(
    images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> Tensor:
    """Tile images in ``[-1, 1]`` (B, C, H, W) into one ``uint8`` grid ``(C, H', W')``.

    ``nrow`` images per row (default ``ceil(sqrt(B))``); ``padding`` pixels of
    ``pad_value`` (in [0, 1] display units, white by default) between them.
    Values are clamped to [-1, 1] and mapped to [0, 255] with rounding.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected float images of shape (B, C, H, W) in [-1, 1], got {shape}")
    if bool(torch.isnan(images).any()):
        raise ValueError("images contain NaN")
    B, C, H, W = images.shape
    if B == 0:
        raise ValueError("cannot make a grid of zero images")
    nrow = int(math.ceil(math.sqrt(B))) if nrow is None else nrow
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(nrow, B)
    rows = int(math.ceil(B / nrow))
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    grid = torch.full(
        (C, rows * (H + padding) + padding, ncol * (W + padding) + padding), float(pad_value)
    )
    for i in range(B):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top : top + H, left : left + W] = x[i]
    return (grid * 255).round().to(torch.uint8)


def _save_png(img_chw: Tensor, path: Path) -> None:
    from PIL import Image

    arr = img_chw.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    Image.fromarray(arr).save(path, format="PNG")


def _condition_batches(condition: Any, kind: str, n: int, batch_size: int) -> list[Any]:
    """Split a condition into per-call chunks for a prior whose condition kind is ``kind``.

    Class conditions: an int is repeated; a sequence of ``n`` ids is split.
    Text conditions: ``(text_length,)`` ids are repeated; ``(n, text_length)`` split.
    """
    starts = range(0, n, batch_size)
    if condition is None or isinstance(condition, int):
        return [condition for _ in starts]
    cond = torch.as_tensor(condition)
    per_sample = (kind == "class" and cond.dim() == 1) or (kind == "text" and cond.dim() == 2)
    if per_sample:
        if cond.shape[0] != n:
            raise ValueError(f"got {cond.shape[0]} per-sample conditions for n={n} samples")
        return [cond[s : s + batch_size] for s in starts]
    return [cond for _ in starts]


def _resolve_condition(prior: Any, condition: Any) -> Any:
    """Turn CLI-style conditions into what ``prior.generate`` takes.

    A string of digits is a class id; any other string, for a text-conditioned
    prior, is a caption encoded with vqzoo's caption vocabulary
    (:class:`vqzoo.experiments.te.captions.CaptionVocabulary`) at the prior's text length.
    """
    kind = getattr(prior, "condition", "none")
    if isinstance(condition, str):
        text = condition.strip()
        if kind == "class":
            if not text.lstrip("-").isdigit():
                raise ValueError(f"this prior is class-conditional; expected a class id, got {condition!r}")
            return int(text)
        if kind == "text":
            from vqzoo.experiments.te.captions import CaptionVocabulary

            vocab = CaptionVocabulary(max_length=prior.text_length)
            if vocab.size != prior.text_vocab_size:
                raise ValueError(
                    f"the prior's text vocabulary has {prior.text_vocab_size} ids but vqzoo's caption "
                    f"vocabulary has {vocab.size}; pass caption token ids instead of text"
                )
            return vocab.encode(text)
        raise ValueError(f"this prior is unconditional; got the condition {condition!r}")
    return condition


def _generate_kwargs(prior: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Keep the sampling options that were set and that this prior's ``generate`` takes."""
    import inspect

    accepted = set(inspect.signature(prior.generate).parameters)
    kwargs = {}
    for name, value in options.items():
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(
                f"{type(prior).__name__}.generate has no option {name!r} (accepted: "
                f"{sorted(accepted - {'n', 'condition', 'generator'})})"
            )
        kwargs[name] = value
    return kwargs


def sample_prior(
    prior_ckpt: str | Path,
    n: int,
    condition: int | str | Sequence[int] | Tensor | None,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    tokenizer: str | None = None,
    save_images: bool | None = None,
    nrow: int | None = None,
    overwrite: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float | None = None,
    num_steps: int | None = None,
    choice_temperature: float | None = None,
    steps: int | None = None,
) -> Path:
    """Sample ``n`` token arrays from a trained prior and (if a tokenizer is known) decode them to PNGs.

    Args:
        prior_ckpt: checkpoint or export directory of a MiniGPT/MaskGIT
            (see :func:`vqzoo.priors.base.load_prior`).
        n: number of samples.
        condition: ``None`` (unconditional); a class id (int or digit string)
            or ``n`` class ids; for text priors caption token ids
            ``(text_length,)`` / ``(n, text_length)`` or a caption string
            (encoded with vqzoo's caption vocabulary).
        out_dir: written atomically; holds ``tokens.pt`` (``{"tokens",
            "condition", "seed", "generate_kwargs"}``) and, with a tokenizer,
            ``images/000000.png ...`` and ``grid.png``.
        batch_size: samples generated per call.
        seed: seeds a ``torch.Generator`` on ``device``; identical arguments
            give identical samples.
        device: where to run the prior and the tokenizer.
        tokenizer: overrides the tokenizer path stored in the checkpoint.
        save_images: decode and write PNGs; default: whenever a tokenizer is
            known. ``True`` without a tokenizer is an error.
        nrow: images per row in ``grid.png``.
        overwrite: replace an existing ``out_dir``.
        temperature, top_k, top_p, cfg_scale: sampling options (``None`` =
            the prior's default); MiniGPT takes all four, MaskGIT
            ``temperature`` and ``cfg_scale``.
        num_steps, choice_temperature: MaskGIT decoding options.
        steps: alias of ``num_steps`` (the ``vqzoo sample --steps`` flag).
    """
    from vqzoo.priors.base import load_prior

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if steps is not None and num_steps is not None and steps != num_steps:
        raise ValueError(f"steps={steps} and num_steps={num_steps} disagree")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    overrides = {} if tokenizer is None else {"tokenizer": tokenizer}
    prior = load_prior(prior_ckpt, map_location=device, **overrides)
    prior.eval()
    if save_images is None:
        save_images = prior.tokenizer_path is not None
    if save_images and prior.frozen_tokenizer is None:
        raise ValueError(
            "save_images=True needs a tokenizer: the checkpoint has none; pass tokenizer=<path>"
        )
    generate_kwargs = _generate_kwargs(
        prior,
        {
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "cfg_scale": cfg_scale,
            "num_steps": num_steps if num_steps is not None else steps,
            "choice_temperature": choice_temperature,
        },
    )
    condition = _resolve_condition(prior, condition)
    gen = torch.Generator(device=device).manual_seed(seed)
    chunks = _condition_batches(condition, getattr(prior, "condition", "none"), n, batch_size)
    all_tokens: list[Tensor] = []
    all_images: list[Tensor] = []
    for i, cond in enumerate(chunks):
        m = min(batch_size, n - i * batch_size)
        tokens = prior.generate(m, cond, generator=gen, **generate_kwargs)
        all_tokens.append(tokens.cpu())
        if save_images:
            tok = prior._tokenizer_on(tokens.device)
            with torch.no_grad():
                imgs = tok.detokenize(tokens.reshape(m, *tuple(tok.token_shape)))
            all_images.append(imgs.float().cpu())
    tmp = _new_tmp_dir(out)
    try:
        cond_saved = condition if not isinstance(condition, Tensor) else condition.cpu()
        torch.save(
            {
                "tokens": torch.cat(all_tokens),
                "condition": cond_saved,
                "seed": seed,
                "generate_kwargs": generate_kwargs,
            },
            tmp / "tokens.pt",
        )
        if save_images:
            images = torch.cat(all_images)
            (tmp / "images").mkdir()
            for j in range(images.shape[0]):
                single = sample_to_grid(images[j : j + 1], nrow=1, padding=0)
                _save_png(single, tmp / "images" / f"{j:06d}.png")
            _save_png(sample_to_grid(images, nrow=nrow), tmp / "grid.png")
        _atomic_dir_commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

