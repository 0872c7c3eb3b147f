"""The training loop every tokenizer shares (VQGAN, QG-VAE, MoVQ).

A subclass supplies ``encode`` (images -> features in the quantizer's layout),
``decode`` (quantized features -> images) and ``last_layer``; the base does
the rest: input checks, quantization, the losses, GAN training with manual
optimization, codebook reset hooks, validation metrics, image grids,
tokenize/detokenize and export.

Training-loop decisions (see docs/DESIGN.md):

* Lightning manual optimization with a generator optimizer and, when an
  adversarial loss is configured, a discriminator optimizer, both injected
  (``optimizer``/``disc_optimizer``, LightningCLI's ``OptimizerCallable``; see
  :mod:`vqzoo.optim`). ``warmup_steps`` multiplies any injected
  ``lr_scheduler``; both are stepped once per step of their optimizer. Gradients are
  clipped through ``self.clip_gradients`` and schedulers stepped explicitly
  (``gradient_clip_val`` and ``accumulate_grad_batches`` do not apply to
  manual optimization, docs/pitfalls.md #13).
* ``generator_step`` is our own counter (a buffer, so it is in checkpoints):
  Lightning's ``global_step`` counts both optimizers (docs/pitfalls.md #12), so the
  discriminator start, the schedule and logging all use generator steps.
* Each step: the generator loss is ``reconstruction + codebook_weight · vq +
  adversarial``; backward; ``quantizer.after_backward()`` (gradient-magnitude
  resets read the codebook's gradient here); clip; step; scheduler;
  ``quantizer.after_step()`` (resets run after the optimizer and EMA updates,
  so nothing overwrites them). Then the discriminator step on the detached
  reconstruction, skipped entirely before ``disc_start``.
* A non-finite generator loss skips the step on every rank, is counted and
  logged; after ``max_nonfinite_steps`` in a row training stops with a message
  naming the last checkpoint written (:mod:`vqzoo.nn.nonfinite`, shared with
  the priors). The skip is decided on the device: the step runs and is undone
  with ``torch.where`` (weights, optimizer state, floating buffers), so a
  steady-state step makes no host sync; ``generator_step`` counts attempted
  steps, skipped ones included (it is a host-side counter mirrored in a buffer).
* The perceptual network is built when fitting starts (``setup("fit")``) and
  is not a submodule: its frozen weights never enter checkpoints, and loading
  a tokenizer for inference never needs them. Missing LPIPS weights stop
  ``fit`` at start-up with a message naming the file.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from vqzoo.config import to_config
from vqzoo.checkpoint import CheckpointHooks
from vqzoo.data.batch import as_batch
from vqzoo.io import make_grid, save_png
from vqzoo.losses.adversarial import AdversarialLoss
from vqzoo.metrics.codebook import CodebookUsage
from vqzoo.nn.door import ValueCheckSchedule
from vqzoo.nn.ema import EMAWeightsMixin
from vqzoo.nn.nonfinite import NonFiniteGuard, NonFiniteLossError  # noqa: F401 - NonFiniteLossError re-exported
from vqzoo.optim import OPTIMIZER_ARGS, as_callable, build_schedule, scale_learning_rates, spec
from vqzoo.quantize import Quantizer, QuantizerOutput


class Tokenizer(CheckpointHooks, NonFiniteGuard, EMAWeightsMixin, ValueCheckSchedule, L.LightningModule, abc.ABC):
    """Shared base of every image tokenizer.

    Args:
        quantizer: any :class:`~vqzoo.quantize.Quantizer` (VQ, FSQ, LFQ, residual).
            Its own input check is switched off: the tokenizer checks at its door.
        in_channels: image channels accepted.
        resolution: image size the model is built for.
        reconstruction_loss: ``"l1"`` (taming, TE-VQGAN) or ``"l2"`` (MoVQ).
        reconstruction_weight: weight of that pixel loss.
        perceptual_weight: weight of LPIPS (0 = VQ-VAE-style training; LPIPS
            weights are then never needed).
        codebook_weight: weight of the quantizer's loss (taming's codebook_weight).
        adversarial: a :class:`~vqzoo.losses.adversarial.AdversarialLoss` or None.
        optimizer: the generator's optimizer, a callable ``params -> Optimizer``
            (in YAML ``{class_path: torch.optim.Adam, init_args: {lr: ...}}``;
            a dict of that form is accepted in Python too). Default: Adam,
            lr 1e-4, betas (0.5, 0.9) as in taming/TE-VQGAN. Its learning rate
            is absolute (see ``scale_lr``).
        disc_optimizer: the discriminator's optimizer (None = the same as
            ``optimizer``, a separate instance).
        lr_scheduler: a callable ``Optimizer -> LRScheduler`` for the generator,
            stepped once per generator step (None = constant).
        disc_lr_scheduler: the discriminator's (None = the same as
            ``lr_scheduler``), stepped once per discriminator step.
        scale_lr: ``"linear"`` multiplies both optimizers' learning rates by the
            number of processes (``world_size``) at fit time, the rule of the TE
            code (base_lr × ngpu × batch); ``"none"`` uses them as given.
        warmup_steps: linear warm-up of the learning rates over this many steps
            of each optimizer, multiplied onto any ``lr_scheduler``.
        gradient_clip_norm: clipping threshold for both optimizers (None = off).
        gradient_clip_algorithm: ``"norm"`` (total norm) or ``"value"`` (each
            element, as the MoVQ reference's ``gradient_clip_val``).
        max_generator_steps: stop training after this many generator steps
            (Lightning's ``max_steps`` counts discriminator steps too).
        max_nonfinite_steps: consecutive non-finite losses tolerated before stopping.
        check_inputs: validate inputs at the door: shape and dtype on every
            call; values (finite, in [-1, 1]) on the first training batch of
            each process and on every call outside training. Values are not
            re-checked on later training steps because reading them would
            stall the GPU each step; a non-finite loss is caught by the guard.
        check_values_every: also check values on every N-th training batch
            (1 = every batch, at one host sync each; None = the first only).
        num_val_images: images shown in the validation grid.
        ema_decay: keep an EMA of the generator's weights (``vqzoo.nn.ema``; 0.999
            typical, None = off); validation, test, predict, export and
            ``vqzoo evaluate`` then use the averaged weights.
        ema_eval: evaluate with the EMA weights (False: the raw weights).
        fid_every_n_epochs: also compute a Fréchet distance of reconstructions
            in validation every this many epochs (None = never); needs
            ``fid_feature_extractor``.
        fid_feature_extractor: the feature extractor spec of
            :func:`vqzoo.metrics.generation.build_feature_extractor`
            (``"inception"`` or ``"classifier:PATH"``).
        compile: ``torch.compile`` the encoder and decoder in place when
            Lightning configures the model (``configure_model``): same
            state-dict keys, same losses within float tolerance. The quantizer
            and losses stay eager (float32, autocast off).
    """

    #: spatial reduction from image to token grid; subclasses set it.
    downsample_factor: int = 1
    #: True when the model only accepts exactly ``resolution`` (global-token models).
    fixed_resolution: bool = False

    def __init__(
        self,
        quantizer: Quantizer,
        in_channels: int = 3,
        resolution: int = 64,
        reconstruction_loss: Literal["l1", "l2"] = "l1",
        reconstruction_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        codebook_weight: float = 1.0,
        adversarial: AdversarialLoss | None = None,
        optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=1e-4, betas=(0.5, 0.9)),  # noqa: B006
        disc_optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        disc_lr_scheduler: LRSchedulerCallable | None = None,
        scale_lr: Literal["none", "linear"] = "none",
        warmup_steps: int = 0,
        gradient_clip_norm: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        max_generator_steps: int | None = None,
        max_nonfinite_steps: int = 10,
        check_inputs: bool = True,
        num_val_images: int = 8,
        ema_decay: float | None = None,
        ema_eval: bool = True,
        fid_every_n_epochs: int | None = None,
        fid_feature_extractor: str | None = None,
        compile: bool = False,
        check_values_every: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(quantizer, Quantizer):
            raise ValueError(f"quantizer must be a vqzoo Quantizer, got {type(quantizer).__name__}")
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
        if in_channels < 1 or resolution < 1:
            raise ValueError(f"in_channels and resolution must be >= 1, got {in_channels}, {resolution}")
        for name, w in (("reconstruction_weight", reconstruction_weight), ("perceptual_weight", perceptual_weight),
                        ("codebook_weight", codebook_weight)):
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w}")
        if scale_lr not in ("none", "linear"):
            raise ValueError(f"scale_lr must be 'none' or 'linear', got {scale_lr!r}")
        # Nested parts are saved as the config they were built with (vqzoo.config), so a
        # model built in Python or by LightningCLI reloads and exports the same way.
        self.save_hyperparameters(ignore=["quantizer", "adversarial"])
        self.hparams.update(quantizer=to_config(quantizer), adversarial=to_config(adversarial))
        # A callable given in Python cannot be saved without pickle: keep it out of the
        # hyperparameters (a reloaded model gets the default); dict specs and the CLI's stay.
        self.remove_ignored_hparams([k for k in OPTIMIZER_ARGS if callable(self.hparams.get(k))])
        self.automatic_optimization = False
        self.quantizer = quantizer
        quantizer.check_inputs = False  # images are checked at the tokenizer's door; no second sync
        self.adversarial = adversarial
        self.in_channels = in_channels
        self.resolution = resolution
        self.reconstruction_loss = reconstruction_loss
        self.reconstruction_weight = reconstruction_weight
        self.perceptual_weight = perceptual_weight
        self.codebook_weight = codebook_weight
        self.optimizer_factory = as_callable(optimizer, "optimizer")
        self.disc_optimizer_factory = as_callable(disc_optimizer, "disc_optimizer") or self.optimizer_factory
        self.lr_scheduler_factory = as_callable(lr_scheduler, "lr_scheduler")
        self.disc_lr_scheduler_factory = as_callable(disc_lr_scheduler, "disc_lr_scheduler") or self.lr_scheduler_factory
        self.scale_lr = scale_lr
        self.warmup_steps = warmup_steps
        self.gradient_clip_norm = gradient_clip_norm
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        self.gradient_clip_algorithm = gradient_clip_algorithm
        if max_generator_steps is not None and max_generator_steps < 1:
            raise ValueError(f"max_generator_steps must be >= 1 or None, got {max_generator_steps}")
        self.max_generator_steps = max_generator_steps
        self.check_inputs = check_inputs
        self.init_value_checks(check_values_every)
        self.num_val_images = num_val_images
        self.compile_modules = bool(compile)
        # The buffer carries the count in checkpoints; the host-side mirror is what the loop
        # reads, so deciding the discriminator start or a QG-VAE dropout costs no sync.
        self.register_buffer("_generator_step", torch.zeros((), dtype=torch.long))
        self._generator_step_host: int | None = 0
        self.register_load_state_dict_post_hook(_forget_host_step)
        self.init_nonfinite_guard(max_nonfinite_steps)
        self._perceptual: Any = None
        self.val_codebook = CodebookUsage(quantizer.num_codes, quantizer.num_codebooks)
        self._init_weight_ema(ema_decay, ema_eval)
        self._init_eval_metrics(fid_every_n_epochs, fid_feature_extractor)

    # ------------------------------------------------------------------ subclass interface
    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Images -> pre-quantization features in the quantizer's layout."""

    @abc.abstractmethod
    def decode(self, quantized: Tensor) -> Tensor:
        """Quantized features (quantizer layout) -> images."""

    @property
    @abc.abstractmethod
    def last_layer(self) -> Tensor:
        """The decoder's last weight, for the adaptive GAN weight."""

    def _init_eval_metrics(self, fid_every_n_epochs: int | None, fid_feature_extractor: str | None) -> None:
        if fid_every_n_epochs is not None and fid_every_n_epochs < 1:
            raise ValueError(f"fid_every_n_epochs must be >= 1 or None, got {fid_every_n_epochs}")
        if fid_every_n_epochs is not None and not fid_feature_extractor:
            raise ValueError(
                "fid_every_n_epochs needs fid_feature_extractor ('inception' or 'classifier:PATH'): "
                "name the network whose features the Fréchet distance compares"
            )
        self.fid_every_n_epochs = fid_every_n_epochs
        self.fid_feature_extractor = fid_feature_extractor
        # Built at setup (fail at start-up when weights are missing); not a submodule, so the
        # feature network never enters checkpoints (see vqzoo.metrics.generation).
        object.__setattr__(self, "_fid_metrics", None)

    def _build_fid_metrics(self) -> None:
        if self.fid_feature_extractor and self._fid_metrics is None:
            from vqzoo.metrics.generation import GenerativeMetrics, build_feature_extractor

            extractor = build_feature_extractor(self.fid_feature_extractor)  # missing weights: stops here
            object.__setattr__(self, "_fid_metrics", GenerativeMetrics(extractor))

    def _fid_active(self, stage: str) -> bool:
        if self._fid_metrics is None or self._trainer is None or self.trainer.sanity_checking:
            return False
        if stage == "test":
            return True
        n = self.fid_every_n_epochs
        return n is not None and (self.current_epoch + 1) % n == 0

    def latent_transform(self, quantized: Tensor) -> Tensor:
        """Applied between quantizer and decoder in training only (identity by default)."""
        return quantized

    # ------------------------------------------------------------------ public API
    @property
    def generator_step(self) -> int:
        """Generator steps taken (attempted, skipped non-finite ones included); read without a sync."""
        if self._generator_step_host is None:  # after a load: read the buffer once
            self._generator_step_host = int(self._generator_step)
        return self._generator_step_host

    @generator_step.setter
    def generator_step(self, value: int) -> None:
        self._generator_step.fill_(int(value))
        self._generator_step_host = int(value)

    @property
    def vocab_size(self) -> int:
        return self.quantizer.num_codes

    @property
    def token_shape(self) -> tuple[int, ...]:
        side = self.resolution // self.downsample_factor
        return self.quantizer.index_shape((side, side))

    def check_images(self, x: Tensor, values: bool = True) -> None:
        """Reject anything but float images (B, in_channels, H, W) of an accepted size (and, with ``values``, finite in [-1, 1])."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{type(self).__name__} expects images as a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects float images in [-1, 1], got dtype {x.dtype} "
                "(convert integer images with x.float() / 127.5 - 1)"
            )
        f = self.downsample_factor
        expected = (
            f"(B, {self.in_channels}, {self.resolution}, {self.resolution})"
            if self.fixed_resolution
            else f"(B, {self.in_channels}, H, W) with H and W divisible by {f}"
        )
        ok = x.dim() == 4 and x.shape[1] == self.in_channels
        if ok and self.fixed_resolution:
            ok = x.shape[2] == x.shape[3] == self.resolution
        elif ok:
            ok = x.shape[2] % f == 0 and x.shape[3] % f == 0 and x.shape[2] > 0 and x.shape[3] > 0
        if not ok:
            raise ValueError(f"{type(self).__name__} expects images of shape {expected}, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} received an empty batch of shape {tuple(x.shape)}")
        if not values:
            return
        lo, hi = torch.aminmax(x.detach())
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise ValueError(f"{type(self).__name__} received NaN or Inf pixels; expected finite images in [-1, 1]")
        if lo < -1.1 or hi > 1.1:
            raise ValueError(
                f"{type(self).__name__} expects images in [-1, 1], got values in [{float(lo):.3g}, {float(hi):.3g}]"
            )

    def _check_door(self, x: Tensor) -> None:
        if not self.check_inputs:
            return
        self.check_images(x, values=self.values_check_due())
        self.value_check_batch_done()

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Reconstruct ``x``: encode, quantize, (training: latent_transform), decode."""
        self._check_door(x)
        q = self.quantizer(self.encode(x))
        quantized = self.latent_transform(q.quantized) if self.training else q.quantized
        return self.decode(quantized), q

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> Tensor:
        """Images -> token indices (int64) in the quantizer's index layout."""
        self._check_door(x)
        return self.quantizer(self.encode(x)).indices

    def detokenize(self, indices: Tensor) -> Tensor:
        """Token indices -> images."""
        return self.decode(self.quantizer.lookup(indices))

    # ------------------------------------------------------------------ losses
    def perceptual(self, x: Tensor, x_rec: Tensor) -> Tensor:
        if self._perceptual is None:
            self._perceptual = _build_lpips()
        if next(self._perceptual.parameters()).device != x.device:
            self._perceptual.to(x.device)
        return self._perceptual(x_rec, x).mean()

    def reconstruction_terms(self, x: Tensor, x_rec: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel loss (+ LPIPS); the ``nll`` the adaptive GAN weight balances."""
        pixel = F.l1_loss(x_rec, x) if self.reconstruction_loss == "l1" else F.mse_loss(x_rec, x)
        logs = {"reconstruction": pixel.detach()}
        total = self.reconstruction_weight * pixel
        if self.perceptual_weight > 0:
            p = self.perceptual(x, x_rec)
            logs["perceptual"] = p.detach()
            total = total + self.perceptual_weight * p
        return total, logs

    # ------------------------------------------------------------------ Lightning hooks
    #: the discriminator is trained against the generator, never averaged.
    ema_exclude = ("adversarial.",)

    def setup(self, stage: str) -> None:
        self._attach_weight_ema()
        if stage in ("fit", "validate", "test"):
            self._build_fid_metrics()
        if stage == "fit" and self.perceptual_weight > 0 and self._perceptual is None:
            # Fail at start-up, never silently train without the loss asked for.
            self._perceptual = _build_lpips()

    def configure_model(self) -> None:
        if self.compile_modules:
            for module in (self.encoder, self.decoder):
                module.compile()  # in place: parameter names and checkpoints unchanged

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _generator_parameters(self) -> list[torch.nn.Parameter]:
        disc = set(id(p) for p in self.adversarial.parameters()) if self.adversarial is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in disc]

    def _make_optimizer(self, factory: Any, params: list, scale: int, name: str) -> torch.optim.Optimizer:
        optimizer = factory(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"{name} must build a torch.optim.Optimizer, got {type(optimizer).__name__}")
        scale_learning_rates(optimizer, scale)
        return optimizer

    def configure_optimizers(self) -> Any:
        scale = self._world_size() if self.scale_lr == "linear" else 1
        warmup = max(self.warmup_steps, 0)

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

        opt_g = self._make_optimizer(self.optimizer_factory, self._generator_parameters(), scale, "optimizer")
        optimizers = [opt_g]
        schedulers = [build_schedule(opt_g, factor, self.lr_scheduler_factory)]
        if self.adversarial is not None:
            params = list(self.adversarial.parameters())
            opt_d = self._make_optimizer(self.disc_optimizer_factory, params, scale, "disc_optimizer")
            optimizers.append(opt_d)
            schedulers.append(build_schedule(opt_d, factor, self.disc_lr_scheduler_factory))
        return optimizers, schedulers

    @staticmethod
    def images_of(batch: Any) -> Tensor:
        """The ``images`` of a :class:`~vqzoo.data.batch.Batch` (or a bare image tensor)."""
        images = as_batch(batch).get("images")
        if images is None:
            raise ValueError("a tokenizer trains on image batches; this batch has 'tokens' but no 'images'")
        return images

    def _as_list(self, x: Any) -> list:
        return list(x) if isinstance(x, (list, tuple)) else [x]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.images_of(batch)
        optimizers = self._as_list(self.optimizers())
        schedulers = self._as_list(self.lr_schedulers())
        opt_g = optimizers[0]
        step = self.generator_step

        gan = len(optimizers) > 1
        if gan:
            # Freeze the discriminator for the generator's forward and backward: its weight
            # gradients from the generator loss would be computed and thrown away.
            self.toggle_optimizer(opt_g)
        disc_active = self.adversarial is not None and self.adversarial.is_active(step)
        self.nonfinite_begin(optimizers[:2] if disc_active else optimizers[:1], self._guarded_buffers(disc_active))
        x_rec, q = self(x)
        nll, logs = self.reconstruction_terms(x, x_rec)
        loss = nll + self.codebook_weight * q.loss
        if self.adversarial is not None:
            g_term, g_logs = self.adversarial.generator_term(x_rec, nll, self.last_layer, step)
            loss = loss + g_term
            logs.update({f"{k}": v for k, v in g_logs.items()})
        logs["vq"] = q.loss.detach()
        logs.update({f"vq_{k}": v.detach() for k, v in q.losses.items()})
        ok = self.nonfinite_flag(loss)  # a device flag: the step runs and is undone if False

        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if gan:
            self.untoggle_optimizer(opt_g)
        self.quantizer.after_backward()
        self._clip(opt_g)
        opt_g.step()
        schedulers[0].step()
        moved = self.quantizer.after_step()
        self._update_weight_ema()  # after resets, so a moved code enters the average as it is
        self._generator_step += 1
        self._generator_step_host = step + 1
        oks = [ok]

        if disc_active:
            opt_d = optimizers[1]
            d_loss, d_logs = self.adversarial.discriminator_term(x, x_rec.detach(), step)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            schedulers[1].step()
            logs.update(d_logs)
            oks.append(ok & self.nonfinite_flag(d_loss))
        self.nonfinite_end(oks, f"generator step {step}")

        if self.max_generator_steps is not None and self.generator_step >= self.max_generator_steps:
            self.trainer.should_stop = True
        logs["loss"] = loss.detach()
        logs["codes_moved"] = float(moved)  # host numbers: logging them reads nothing back
        logs["lr"] = float(opt_g.param_groups[0]["lr"])
        logs["generator_step"] = float(step + 1)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=x.shape[0])
        self.log("train/loss_pbar", loss.detach(), prog_bar=True, logger=False, batch_size=x.shape[0])
        return loss.detach()

    def _guarded_buffers(self, disc_active: bool) -> list[list[Tensor]]:
        """Floating buffers a step changes, split as the optimizers are: generator side, discriminator side.

        Frozen parameters count as buffers here: an EMA codebook is a parameter without gradient.
        Cached (the same tensors every step); moving the module clears the cache (``_apply``).
        """
        cache = self.__dict__.setdefault("_guarded_buffers_cache", {})
        if disc_active not in cache:
            gen = [b for n, b in self.named_buffers() if not n.startswith(("adversarial.", "_nonfinite"))]
            gen += [p for n, p in self.named_parameters() if not p.requires_grad and not n.startswith("adversarial.")]
            cache[disc_active] = [gen] if not disc_active else [gen, list(self.adversarial.buffers())]
        return cache[disc_active]

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_guarded_buffers_cache"] = {}  # .to()/.half() replace buffer tensors
        return super()._apply(fn, *args, **kwargs)

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_clip_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_norm, gradient_clip_algorithm=self.gradient_clip_algorithm
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def _evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        x = self.images_of(batch)
        x_rec, q = self(x)
        nll, logs = self.reconstruction_terms(x, x_rec)
        logs["vq"] = q.loss
        x01, r01 = (x + 1) / 2, ((x_rec + 1) / 2).clamp(0, 1)
        mse = F.mse_loss(r01, x01, reduction="none").flatten(1).mean(1)
        logs["psnr"] = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
        logs["ssim"] = _ssim(r01, x01)
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, sync_dist=True, batch_size=x.shape[0])
        self.val_codebook.update(self.quantizer.histogram(q.indices))
        if self._fid_active(stage):
            fid = self._fid_metrics.to(x.device)
            fid.update_real(x)
            fid.update_fake(x_rec.detach().clamp(-1, 1))
        if batch_idx == 0:
            self._save_grid(x, x_rec, stage)

    def _evaluation_epoch_end(self, stage: str) -> None:
        res = self.val_codebook.compute()  # summed across ranks by torchmetrics
        self.log(f"{stage}/codebook_usage", res["usage"], sync_dist=False)
        self.log(f"{stage}/codes_used", res["codes_used"].float(), sync_dist=False)
        self.log(f"{stage}/perplexity", res["perplexity"], sync_dist=False)
        self.log(f"{stage}/codebook_entropy", res["entropy"], sync_dist=False)
        self.val_codebook.reset()
        if self._fid_active(stage) and int(self._fid_metrics.fid.fake_features_num_samples) > 1:
            # gathered across ranks by torchmetrics; "rfid" only on Inception features, else "cfid"/"fd"
            out = self._fid_metrics.compute()
            ext = self._fid_metrics.extractor
            name = "rfid" if ext.fid_name == "FID" else ("cfid" if ext.fid_name.startswith("cFID") else "fd")
            self.log(f"{stage}/{name}", torch.tensor(out["fd"]), sync_dist=False)
            if "is_mean" in out:
                self.log(f"{stage}/is", torch.tensor(out["is_mean"]), sync_dist=False)
            self._fid_metrics.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.tokenize(self.images_of(batch))

    # ------------------------------------------------------------------ images
    def _save_grid(self, x: Tensor, x_rec: Tensor, stage: str = "val") -> None:
        if self._trainer is None or self.trainer.sanity_checking:
            return
        # trainer.log_dir broadcasts under DDP: every rank must ask for it, rank 0 writes.
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if not self.trainer.is_global_zero:
            return
        n = min(self.num_val_images, x.shape[0])
        grid = make_grid(torch.cat([x[:n], x_rec[:n]]), nrow=n)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"{stage}/reconstructions", grid, self.generator_step)
        # PNGs go into the run's log directory; a run without loggers writes none.
        if log_dir:
            name = f"step_{self.generator_step:07d}.png" if stage == "val" else f"{stage}_step_{self.generator_step:07d}.png"
            save_png(grid, Path(log_dir) / "reconstructions" / name)


# ---------------------------------------------------------------------- helpers
def _forget_host_step(module: Tokenizer, incompatible_keys: Any) -> None:
    module._generator_step_host = None  # the loaded buffer is the truth; read it on next use


def _build_lpips() -> Any:
    from vqzoo.losses.perceptual import LPIPS

    return LPIPS(pretrained=True)


def _ssim(a: Tensor, b: Tensor) -> Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a.float(), b.float(), data_range=1.0)
