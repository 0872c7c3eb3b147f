"""Shared machinery of the token priors: optimizer, logging, frozen tokenizer, sampling helpers.

A prior is a :class:`lightning.LightningModule` that models the distribution of
a tokenizer's indices. It trains either on token tensors written by
``vqzoo encode`` (:func:`vqzoo.tokenizers.encode.encode_tokens`; fast: the tokenizer runs once), or on
images through a *frozen tokenizer* given by path (``tokenizer=...``), which
tokenizes each batch on the fly under ``no_grad`` in eval mode.

Decisions recorded here (the spec is silent on them):

* The frozen tokenizer is **not** a registered submodule: its weights do not
  enter the prior's ``state_dict`` or checkpoint (the checkpoint stores only
  the path in its hyperparameters), it is not wrapped by DDP, and
  ``prior.train()`` never flips it out of eval mode. It is moved to the
  batch's device when used.
* Batches are :class:`vqzoo.data.batch.Batch` dicts: ``tokens`` (or
  ``images`` with a frozen tokenizer), optional ``labels`` and ``text``; a
  bare tensor is the tokens (or the images).
* Optimizer: injected (``optimizer``, LightningCLI's ``OptimizerCallable``;
  default AdamW as minGPT: lr 3e-4, betas (0.9, 0.95), weight decay 0.1). It
  receives two param groups: ``nn.Linear`` weights, which take the optimizer's
  own ``weight_decay``, and everything else (biases, LayerNorm, embeddings,
  positional tables) with ``weight_decay`` 0. vqzoo's schedule is linear
  warmup over ``warmup_steps`` followed by either a constant rate or a cosine
  decay to ``min_lr_ratio`` times the rate at ``total_steps`` (default: the
  trainer's ``estimated_stepping_batches``); it multiplies an injected
  ``lr_scheduler`` if one is given (:mod:`vqzoo.optim`). Both are stepped once
  per optimizer step.
* Checkpoints carry the prior's class path under ``checkpoint["vqzoo"]
  ["class_path"]`` (the convention of :mod:`vqzoo.checkpoint`), so
  :func:`vqzoo.load` can rebuild the right class from a path alone.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from vqzoo.checkpoint import CheckpointHooks
from vqzoo.data.batch import as_batch
from vqzoo.nn.nonfinite import NonFiniteGuard
from vqzoo.nn.door import ValueCheckSchedule
from vqzoo.nn.ema import EMAWeightsMixin
from vqzoo.nn.transformer import Transformer, resolve_transformer_size
from vqzoo.optim import OPTIMIZER_ARGS, as_callable, build_schedule, scale_learning_rates, spec

__all__ = [
    "Prior",
    "PriorBatch",
    "filter_logits",
    "sample_logits",
]


@dataclass
class PriorBatch:
    """A batch normalised for a prior: image tokens plus optional conditions."""

    tokens: Tensor
    labels: Tensor | None = None
    text: Tensor | None = None


# ---------------------------------------------------------------------------
# sampling helpers shared by the priors
# ---------------------------------------------------------------------------


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k and/or the nucleus (top-p) to ``-inf``.

    top-k keeps every logit >= the k-th largest (ties at the boundary are kept).
    top-p keeps the smallest set of most likely tokens whose probability mass
    reaches ``top_p``: a token is dropped when the mass of the strictly more
    likely tokens before it (in sorted order) already reaches ``top_p``. The
    most likely token is always kept. top-k is applied first.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``probs`` (``(R, V)``, rows need not be normalised) -> ``(R,)``.

    Inverse-CDF sampling: one uniform number per row and a binary search in the
    row's cumulative sum. ``torch.multinomial`` draws an exponential variate for
    every one of the V entries instead, which made it 15% of MaskGIT decoding on
    CPU at V = 1024. Entries of probability zero are never drawn.
    """
    cdf = probs.float().cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    # (1 - 2^-24) keeps u·total strictly below the last cumulative value in float32
    idx = torch.searchsorted(cdf, u * total * (1.0 - 2.0**-24), right=True)
    return idx.clamp_max(probs.shape[-1] - 1).squeeze(-1)


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of ``logits`` (``(..., V)`` -> ``(...)``).

    ``temperature == 0`` means greedy (argmax, no random draw). Otherwise one
    :func:`draw_categorical` call draws all rows from ``generator``, so two code
    paths that produce the same logits in the same order consume the same
    random numbers.
    """
    _check_sampling_args(temperature, top_k, top_p)
    if temperature == 0.0:
        return filter_logits(logits, top_k, top_p).argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return draw_categorical(flat, generator).view(probs.shape[:-1])


def classifier_free_guidance(logits: Tensor, n: int, scale: float | None) -> Tensor:
    """Combine a doubled batch ``[cond; uncond]`` as ``u + scale * (c - u)``.

    With ``scale=None`` the logits are returned unchanged (no doubled batch).
    """
    if scale is None:
        return logits
    cond, uncond = logits[:n].float(), logits[n:].float()
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------
# the base LightningModule
# ---------------------------------------------------------------------------


class Prior(CheckpointHooks, NonFiniteGuard, EMAWeightsMixin, ValueCheckSchedule, L.LightningModule, metaclass=abc.ABCMeta):
    """Base class of the token priors.

    Args:
        optimizer: a callable ``param_groups -> Optimizer`` (in YAML
            ``{class_path: torch.optim.AdamW, init_args: {lr: ..., betas: ...,
            weight_decay: ...}}``; a dict of that form is accepted in Python
            too). Its ``weight_decay`` applies to ``nn.Linear`` weights only.
            Default: AdamW, lr 3e-4, betas (0.9, 0.95), weight decay 0.1 (minGPT).
        lr_scheduler: a callable ``Optimizer -> LRScheduler``, stepped once per
            optimizer step and multiplied by vqzoo's warmup/``lr_schedule``
            (None = vqzoo's schedule alone).
        warmup_steps: linear warmup length in optimizer steps (0 = none).
        lr_schedule: ``"constant"`` after warmup, or ``"cosine"`` decay to
            ``min_lr_ratio`` times the peak rate at ``total_steps``.
        min_lr_ratio: floor of the cosine schedule as a fraction of the peak rate.
        total_steps: length of the cosine schedule; ``None`` uses the
            trainer's ``estimated_stepping_batches``.
        tokenizer: path to a tokenizer checkpoint (``.ckpt``) or export
            directory. When set, batches hold *images*, tokenized on the fly by
            the frozen tokenizer, and :meth:`sample_images` can decode samples.
        scale_lr: ``"linear"`` multiplies ``lr`` by the number of processes at
            fit time (the config's batch size is per process), as the
            tokenizers' ``scale_lr`` does; ``"none"`` uses it as given.
        preset: ``"gpt-mini"``/``"gpt-micro"``/``"gpt-nano"``, or give
            ``n_layer``, ``n_head`` and ``n_embd`` (neither: gpt-mini; see
            :func:`~vqzoo.nn.transformer.resolve_transformer_size`).
        n_layer, n_head, n_embd: transformer depth, heads and width.
        embd_pdrop, resid_pdrop, attn_pdrop: dropouts (minGPT and the MaskGIT
            reference: 0.1 each).
        check_values_every: also check token and label ids on every N-th
            training batch (1 = every batch, one host sync each; None = the first only).
        compile: ``torch.compile`` the transformer trunk in place when
            Lightning configures the model (``configure_model``); state-dict
            keys are unchanged. Meant for training: sampling calls the same
            compiled trunk, which recompiles as the KV-cache length changes.
        max_nonfinite_steps: a non-finite loss skips the step (no update: the
            step is undone on the device, no host sync); this many in a row
            stop training, naming the last good checkpoint
            (:mod:`vqzoo.nn.nonfinite`, shared with the tokenizers).
        ema_decay: keep an EMA of the weights (``vqzoo.nn.ema``; 0.999 typical,
            None = off), updated after each optimizer step; validation, test,
            predict, export and ``vqzoo evaluate`` use it.
        ema_eval: evaluate with the EMA weights (False: the raw weights).

    Subclasses set ``self.vocab_size``, ``self.token_shape`` and (class-conditional
    ones) ``self.num_classes``, and implement
    :meth:`compute_loss` and :meth:`generate`.
    """

    vocab_size: int
    token_shape: tuple[int, ...]
    num_classes: int

    def __init__(
        self,
        optimizer: OptimizerCallable = spec(  # noqa: B008
            "torch.optim.AdamW", lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1
        ),
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
        tokenizer: str | None = None,
        scale_lr: Literal["none", "linear"] = "none",
        preset: Literal["gpt-mini", "gpt-micro", "gpt-nano"] | None = None,
        n_layer: int | None = None,
        n_head: int | None = None,
        n_embd: int | None = None,
        embd_pdrop: float = 0.1,
        resid_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        max_nonfinite_steps: int = 10,
        ema_decay: float | None = None,
        ema_eval: bool = True,
        compile: bool = False,
        check_values_every: int | None = None,
    ) -> None:
        super().__init__()
        self._init_weight_ema(ema_decay, ema_eval)
        self.init_value_checks(check_values_every)
        self.compile_modules = bool(compile)
        self.n_layer, self.n_head, self.n_embd = resolve_transformer_size(preset, n_layer, n_head, n_embd)
        for name, p in (("embd_pdrop", embd_pdrop), ("resid_pdrop", resid_pdrop), ("attn_pdrop", attn_pdrop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self._dropouts = (float(embd_pdrop), float(resid_pdrop), float(attn_pdrop))
        if scale_lr not in ("none", "linear"):
            raise ValueError(f"scale_lr must be 'none' or 'linear', got {scale_lr!r}")
        self.scale_lr = scale_lr
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, got {total_steps}")
        self.optimizer_factory = as_callable(optimizer, "optimizer")
        self.lr_scheduler_factory = as_callable(lr_scheduler, "lr_scheduler")
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps
        self.tokenizer_path = tokenizer
        # Not persistent: exports and checkpoints of priors written before the guard keep loading.
        self.init_nonfinite_guard(max_nonfinite_steps, persistent=False)
        self._nonfinite_oks: list[Tensor] = []
        # Bypass nn.Module registration on purpose (see the module docstring).
        object.__setattr__(self, "_frozen_tokenizer", None)

    def build_trunk(self, max_len: int, causal: bool) -> Transformer:
        """The transformer trunk of the configured size and dropouts."""
        embd, resid, attn = self._dropouts
        return Transformer(
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            max_len=max_len,
            causal=causal,
            embd_pdrop=embd,
            resid_pdrop=resid,
            attn_pdrop=attn,
        )

    def check_class_labels(self, labels: Any, n: int, broadcast: bool) -> Tensor:
        """Class ids as a long ``(n,)`` tensor in ``[0, self.num_classes)``, or a ValueError naming what was expected.

        ``broadcast``: a plain ``int`` stands for ``n`` copies of itself (sampling).
        """
        name, num_classes = type(self).__name__, self.num_classes
        if labels is None:
            raise ValueError(f"{name}(condition='class') needs class labels, got None")
        if isinstance(labels, (bool, float, str)):
            raise ValueError(f"class labels must be integers, got {labels!r}")
        if isinstance(labels, int) and broadcast:
            labels = torch.full((n,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels, device=self.device)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"class labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != n:
            hint = "; a 2-D tensor looks like text, but this model has condition='class'" if labels.dim() == 2 else ""
            raise ValueError(
                f"class labels must have shape ({n},) (one class id per sample), got {tuple(labels.shape)}{hint}"
            )
        if labels.numel() and self.values_check_due() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"class labels must be in [0, {num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return labels.long()

    # -- abstract interface ---------------------------------------------------

    @abc.abstractmethod
    def compute_loss(self, batch: PriorBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the training loss and a dict of named scalars to log."""
        ...

    @abc.abstractmethod
    def generate(self, n: int, condition: Any = None, **kwargs: Any) -> Tensor:
        """Sample ``n`` token arrays of shape ``(n, *token_shape)``."""
        ...

    # -- frozen tokenizer -------------------------------------------------------

    @property
    def frozen_tokenizer(self) -> nn.Module | None:
        """The frozen tokenizer, loaded from ``tokenizer`` on first use (or ``None``)."""
        tok = self.__dict__["_frozen_tokenizer"]
        if tok is None and self.tokenizer_path is not None:
            from vqzoo.checkpoint import load
            from vqzoo.tokenizers.base import Tokenizer

            path = Path(self.tokenizer_path)
            if not path.exists():
                raise FileNotFoundError(
                    f"tokenizer checkpoint or export directory not found: {path} "
                    "(set the prior's `tokenizer` argument to a trained tokenizer)"
                )
            tok = self.set_tokenizer(load(path, expected=Tokenizer))
        return tok

    def set_tokenizer(self, tokenizer: nn.Module) -> nn.Module:
        """Attach an already-built tokenizer (frozen, eval mode) after checking it fits.

        The tokenizer must expose ``tokenize``, ``detokenize``, ``vocab_size``
        and ``token_shape``; its vocabulary size and token shape must match
        this prior's configuration.
        """
        for attr in ("tokenize", "detokenize", "vocab_size", "token_shape"):
            if not hasattr(tokenizer, attr):
                raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {attr!r} attribute")
        self.check_token_spec(int(tokenizer.vocab_size), tuple(tokenizer.token_shape), "tokenizer")
        tokenizer.eval()
        for p in tokenizer.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_frozen_tokenizer", tokenizer)
        return tokenizer

    def token_shape_matches(self, shape: tuple[int, ...]) -> bool:
        """Whether token arrays of ``shape`` (without batch) fit this prior."""
        return tuple(shape) == tuple(self.token_shape)

    def check_token_spec(self, vocab_size: int, token_shape: tuple[int, ...], source: str) -> None:
        """Raise ``ValueError`` unless ``source``'s vocabulary and token shape match this prior."""
        if vocab_size != self.vocab_size:
            raise ValueError(
                f"{source} has vocab_size={vocab_size} but {type(self).__name__} was configured "
                f"with vocab_size={self.vocab_size}"
            )
        if not self.token_shape_matches(tuple(token_shape)):
            raise ValueError(
                f"{source} has token_shape={tuple(token_shape)} but {type(self).__name__} was "
                f"configured with token_shape={tuple(self.token_shape)}"
            )

    def _tokenizer_on(self, device: torch.device) -> nn.Module:
        tok = self.frozen_tokenizer
        if tok is None:
            raise ValueError(
                f"{type(self).__name__} has no tokenizer; pass `tokenizer=<path>` or call "
                "set_tokenizer(...) to train on images or decode samples"
            )
        param = next(iter(tok.parameters()), None)
        if param is not None and param.device != device:
            tok.to(device)
        tok.eval()
        return tok

    @torch.no_grad()
    def tokenize_images(self, images: Tensor) -> Tensor:
        """Indices of ``images`` under the frozen tokenizer, shaped ``(B, *token_shape)``."""
        if not images.is_floating_point() or images.dim() != 4:
            raise ValueError(
                "with a frozen tokenizer the prior expects float image batches (B, C, H, W), got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        tok = self._tokenizer_on(images.device)
        return tok.tokenize(images).long()

    @torch.no_grad()
    def sample_images(self, n: int, condition: Any = None, **generate_kwargs: Any) -> Tensor:
        """Sample ``n`` token arrays and decode them with the frozen tokenizer."""
        tokens = self.generate(n, condition, **generate_kwargs)
        tok = self._tokenizer_on(tokens.device)
        return tok.detokenize(tokens.reshape(n, *tuple(tok.token_shape)))

    # -- Lightning hooks ---------------------------------------------------------

    def setup(self, stage: str) -> None:
        self._attach_weight_ema()
        # Fail before the first step if the tokenizer or token data do not fit.
        if self.tokenizer_path is not None:
            _ = self.frozen_tokenizer
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        meta = getattr(datamodule, "meta", None)
        if isinstance(meta, dict) and "vocab_size" in meta and "token_shape" in meta:
            if self.tokenizer_path is not None:
                raise ValueError(
                    "the prior has a frozen tokenizer (expects image batches) but the datamodule "
                    "provides pre-encoded tokens; drop `tokenizer` or use an image datamodule"
                )
            self.check_token_spec(int(meta["vocab_size"]), tuple(meta["token_shape"]), "token data")

    def configure_model(self) -> None:
        if self.compile_modules:
            self.trunk.compile()  # in place: parameter names and checkpoints unchanged

    def prepare_batch(self, batch: Any) -> PriorBatch:
        """Normalise a dataloader batch into a :class:`PriorBatch` (tokenizing images if needed)."""
        images_in = self.tokenizer_path is not None or self.__dict__["_frozen_tokenizer"] is not None
        batch = as_batch(batch, main="images" if images_in else "tokens")
        if images_in:
            if "images" not in batch:
                raise ValueError("this prior has a frozen tokenizer and trains on images; the batch has no 'images'")
            tokens = self.tokenize_images(batch["images"])
        else:
            if "tokens" not in batch:
                raise ValueError(
                    "this prior trains on tokens (a `vqzoo encode` directory); the batch has images: "
                    "set the prior's `tokenizer` to train on images"
                )
            tokens = batch["tokens"]
        return PriorBatch(tokens=tokens, labels=batch.get("labels"), text=batch.get("text"))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        # The non-finite guard without a host sync (vqzoo/nn/nonfinite.py): save before the
        # forward, flag on the device, undo in optimizer_step after the update.
        guarded = self._trainer is not None
        if guarded and not self._nonfinite_oks:
            optimizers = self.optimizers()
            self.nonfinite_begin(optimizers if isinstance(optimizers, list) else [optimizers])
        pb = self.prepare_batch(batch)
        loss, logs = self.compute_loss(pb)
        if guarded:
            self._nonfinite_oks.append(self.nonfinite_flag(loss))
        self.value_check_batch_done()
        bs = pb.tokens.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._nonfinite_oks:  # every batch accumulated into this update must be finite
            ok = self._nonfinite_oks[0]
            for other in self._nonfinite_oks[1:]:
                ok = ok & other
            self._nonfinite_oks = []
            self.nonfinite_end([ok], f"step {self.global_step}")
        # The weight EMA follows every real optimizer step (not every batch under accumulation),
        # after the guard has undone a non-finite one.
        self._update_weight_ema()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pb = self.prepare_batch(batch)
        loss, logs = self.compute_loss(pb)
        bs = pb.tokens.shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in logs.items():
            self.log(f"val/{k}", v, batch_size=bs, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        pb = self.prepare_batch(batch)
        loss, logs = self.compute_loss(pb)
        bs = pb.tokens.shape[0]
        self.log("test/loss", loss, batch_size=bs, sync_dist=True)
        for k, v in logs.items():
            self.log(f"test/{k}", v, batch_size=bs, sync_dist=True)

    # -- optimizer ---------------------------------------------------------------

    def drop_callable_hparams(self) -> None:
        """Keep optimizer callables given in Python out of the hyperparameters.

        They cannot be saved without pickle; a reloaded model gets the default
        optimizer. ``{class_path, init_args}`` dicts (the CLI's) stay. Subclasses
        call this right after ``save_hyperparameters``.
        """
        self.remove_ignored_hparams([k for k in OPTIMIZER_ARGS if callable(self.hparams.get(k))])

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Two groups: ``nn.Linear`` weights (the optimizer's weight decay) and the rest (none)."""
        decay: dict[str, nn.Parameter] = {}
        for mname, module in self.named_modules():
            if isinstance(module, nn.Linear):
                full = f"{mname}.weight" if mname else "weight"
                decay[full] = module.weight
        no_decay = [p for n, p in self.named_parameters() if n not in decay and p.requires_grad]
        decay_params = [p for p in decay.values() if p.requires_grad]
        return [
            {"params": decay_params},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def lr_lambda(self, step: int, total_steps: int) -> float:
        """Multiplier of the optimizer's learning rate at optimizer step ``step`` (0-based)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(1, total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self) -> Any:
        # Same rule as the tokenizers: "linear" multiplies lr by the number of processes
        # (the batch size in the config is per process).
        world = self.trainer.world_size if self._trainer is not None else 1
        optimizer = self.optimizer_factory(self.parameter_groups())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must build a torch.optim.Optimizer, got {type(optimizer).__name__}")
        scale_learning_rates(optimizer, world if self.scale_lr == "linear" else 1)
        if self.warmup_steps == 0 and self.lr_schedule == "constant" and self.lr_scheduler_factory is None:
            return optimizer
        total = self.total_steps
        if total is None:
            if self.lr_schedule == "cosine":
                est = self.trainer.estimated_stepping_batches
                if not math.isfinite(est):
                    raise ValueError(
                        "lr_schedule='cosine' needs total_steps, or a trainer with max_steps or "
                        "max_epochs so the number of steps can be estimated"
                    )
                total = int(est)
            else:
                total = self.warmup_steps + 1
        scheduler = build_schedule(optimizer, lambda step: self.lr_lambda(step, total), self.lr_scheduler_factory)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # -- helpers for subclasses ---------------------------------------------------

    @contextlib.contextmanager
    def sampling_mode(self) -> Iterator[None]:
        """Eval mode (no dropout) and no autograd for sampling; restores the previous mode."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def check_image_tokens(self, tokens: Tensor, allow_extra: Sequence[int] = ()) -> Tensor:
        """Validate ``(B, *token_shape)`` integer tokens in ``[0, vocab_size)``.

        ``allow_extra`` lists additional ids accepted (e.g. MaskGIT's mask id).
        Returns the tokens as int64.
        """
        if not isinstance(tokens, Tensor):
            raise ValueError(f"expected image tokens as a torch.Tensor, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"image tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.dim() < 2 or not self.token_shape_matches(tuple(tokens.shape[1:])):
            raise ValueError(
                f"expected image tokens of shape (B, {', '.join(map(str, self.token_shape))}), "
                f"got {tuple(tokens.shape)}"
            )
        tokens = tokens.long()
        if tokens.numel() and self.values_check_due():
            bad = (tokens < 0) | (tokens >= self.vocab_size)
            for extra in allow_extra:
                bad &= tokens != extra
            if bool(bad.any()):
                lo, hi = int(tokens.min()), int(tokens.max())
                raise ValueError(
                    f"image token ids must be in [0, {self.vocab_size}) (vocab_size={self.vocab_size}), "
                    f"got values in [{lo}, {hi}]"
                )
        return tokens
