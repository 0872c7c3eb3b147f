"""``sample_prior``: tokens (and decoded images) from a trained prior, behind ``vqzoo sample``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqzoo.io import atomic_dir, make_grid, save_png

__all__ = ["sample_prior"]

#: ``tokens.pt`` (all tokens in one tensor, for convenience) is written up to this many samples.
TOKENS_PT_MAX = 100_000
#: ``grid.png`` shows at most this many samples (the first ones).
GRID_MAX = 64


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on stderr (tqdm; silent when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="sample", desc="sampling", file=sys.stderr, disable=None)
    try:
        yield bar
    finally:
        bar.close()

#: The caption vocabulary used for a text condition given as a string, unless told otherwise.
DEFAULT_TEXT_ENCODER = "vqzoo.experiments.te.captions.CaptionVocabulary"


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


def _resolve_condition(prior: Any, condition: Any, text_encoder: str | None) -> Any:
    """Turn CLI-style conditions into what ``prior.generate`` takes.

    A string of digits is a class id; any other string, for a text-conditioned
    prior, is a caption encoded by ``text_encoder`` (the class path of a
    vocabulary built as ``cls(max_length=prior.text_length)`` with an
    ``encode(str)`` method and a ``size``; default :data:`DEFAULT_TEXT_ENCODER`).
    It is imported by name from a trusted module, like a checkpoint's class,
    so the priors do not depend on any one experiment's vocabulary.
    """
    kind = getattr(prior, "condition", "none")
    if isinstance(condition, str):
        text = condition.strip()
        if kind == "class":
            if not text.lstrip("-").isdigit():
                raise ValueError(f"this prior is class-conditional; expected a class id, got {condition!r}")
            return int(text)
        if kind == "text":
            from vqzoo.checkpoint import resolve_class

            vocab = resolve_class(text_encoder or DEFAULT_TEXT_ENCODER)(max_length=prior.text_length)
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
    text_encoder: str | None = None,
) -> Path:
    """Sample ``n`` token arrays from a trained prior and (if a tokenizer is known) decode them to PNGs.

    Args:
        prior_ckpt: checkpoint or export directory of a MiniGPT/MaskGIT
            (read with :func:`vqzoo.load`).
        n: number of samples.
        condition: ``None`` (unconditional); a class id (int or digit string)
            or ``n`` class ids; for text priors caption token ids
            ``(text_length,)`` / ``(n, text_length)`` or a caption string
            (encoded with ``text_encoder``).
        out_dir: written atomically, chunk by chunk as samples come (memory
            stays flat for any ``n``; a progress bar on stderr); holds
            ``tokens.npy`` (int64 ``(n, *token_shape)``), ``meta.pt``
            (``{"condition", "seed", "generate_kwargs"}``), for ``n <=``
            :data:`TOKENS_PT_MAX` also ``tokens.pt`` (``{"tokens", **meta}``), and,
            with a tokenizer, ``images/000000.png ...`` and ``grid.png`` (the
            first :data:`GRID_MAX` samples).
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
        text_encoder: class path of the caption vocabulary for string
            conditions (see :func:`_resolve_condition`).
    """
    from vqzoo.checkpoint import load
    from vqzoo.priors.base import Prior

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if steps is not None and num_steps is not None and steps != num_steps:
        raise ValueError(f"steps={steps} and num_steps={num_steps} disagree")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    overrides = {} if tokenizer is None else {"tokenizer": tokenizer}
    prior = load(prior_ckpt, expected=Prior, **overrides).to(device)
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
    condition = _resolve_condition(prior, condition, text_encoder)
    gen = torch.Generator(device=device).manual_seed(seed)
    chunks = _condition_batches(condition, getattr(prior, "condition", "none"), n, batch_size)
    cond_saved = condition if not isinstance(condition, Tensor) else condition.cpu()
    meta = {"condition": cond_saved, "seed": seed, "generate_kwargs": generate_kwargs}
    with atomic_dir(out, overwrite) as tmp:
        # Chunks are written as they come (tokens into a memory-mapped .npy, images as PNGs),
        # so memory stays flat for any n; the directory appears only once complete.
        tokens_mm: Any = None
        grid_images: list[Tensor] = []
        if save_images:
            (tmp / "images").mkdir()
        with _progress(n) as bar:
            done = 0
            for cond in chunks:
                m = min(batch_size, n - done)
                tokens = prior.generate(m, cond, generator=gen, **generate_kwargs)
                if tokens_mm is None:
                    tokens_mm = np.lib.format.open_memmap(
                        tmp / "tokens.npy", mode="w+", dtype=np.int64, shape=(n, *tokens.shape[1:])
                    )
                tokens_mm[done : done + m] = tokens.cpu().numpy()
                if save_images:
                    tok = prior._tokenizer_on(tokens.device)
                    with torch.no_grad():
                        imgs = tok.detokenize(tokens.reshape(m, *tuple(tok.token_shape))).float().cpu()
                    for j in range(m):
                        save_png(make_grid(imgs[j : j + 1], nrow=1, padding=0), tmp / "images" / f"{done + j:06d}.png")
                    if len(grid_images) < GRID_MAX:
                        grid_images.append(imgs[: GRID_MAX - len(grid_images)])
                done += m
                bar.update(m)
        tokens_mm.flush()
        if n <= TOKENS_PT_MAX:
            all_tokens = torch.from_numpy(np.array(tokens_mm))
            torch.save({"tokens": all_tokens, **meta}, tmp / "tokens.pt")
        del tokens_mm
        torch.save(meta, tmp / "meta.pt")
        if save_images:
            save_png(make_grid(torch.cat(grid_images), nrow=nrow), tmp / "grid.png")
    return out
