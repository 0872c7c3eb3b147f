"""The ``vqzoo`` command line.

``vqzoo fit|validate|test|predict --config X.yaml`` is LightningCLI in
subclass mode (``model: {class_path: ..., init_args: ...}``). Extra commands:

* ``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json.
* ``vqzoo encode --tokenizer CKPT_OR_DIR --data DATA.yaml --out DIR``: a token dataset.
* ``vqzoo sample --prior CKPT_OR_DIR --n 64 --out DIR``: tokens and an image grid.
* ``vqzoo evaluate --model CKPT_OR_DIR --data DATA.yaml --out report.json``: PSNR/SSIM/LPIPS/FID/IS and
  codebook usage (tokenizers) or FID/IS and speed (priors), with the protocol written into the report.

Defaults a user of the field expects: a rich progress bar, TensorBoard and
CSV logs under ``runs/``, a ``last.ckpt`` checkpoint, and the config saved
with each run (overwriting a previous one, pitfall 16).
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI


class VQZooCLI(LightningCLI):
    """LightningCLI with vqzoo's defaults."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

        trainer_defaults: dict[str, Any] = {
            "default_root_dir": "runs",
            "callbacks": [
                RichProgressBar(leave=True),
                ModelCheckpoint(save_last=True, filename="{epoch}-{step}"),
                LearningRateMonitor(logging_interval="step"),
            ],
        }
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        # A config's own checkpoint callback or progress bar replaces our default one
        # (Lightning refuses two ModelCheckpoint callbacks without distinct monitors).
        from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        given = given + list(callbacks)
        defaults = self.trainer_defaults.get("callbacks", [])
        keep = [
            cb for cb in defaults
            if not any(isinstance(g, kind) for kind in (ModelCheckpoint, ProgressBar) if isinstance(cb, kind) for g in given)
        ]
        if config.get("enable_progress_bar") is False:
            keep = [cb for cb in keep if not isinstance(cb, ProgressBar)]
        saved = self.trainer_defaults.get("callbacks")
        self.trainer_defaults["callbacks"] = keep
        try:
            return super()._instantiate_trainer(config, callbacks)
        finally:
            self.trainer_defaults["callbacks"] = saved

    @staticmethod
    def _ddp_for_gans(cfg: Any, trainer: Any) -> None:
        # A GAN tokenizer's generator step never touches the discriminator and vice
        # versa (manual optimization), so DDP must tolerate unused parameters.
        model = cfg.get("model")
        init = model.get("init_args") if model is not None and hasattr(model, "get") else None
        if trainer.get("strategy") == "ddp" and init is not None and init.get("adversarial") is not None:
            trainer["strategy"] = "ddp_find_unused_parameters_true"
            print("vqzoo: GAN training under DDP: using strategy 'ddp_find_unused_parameters_true'", file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        # Default loggers (TensorBoard + CSV) live under the run's default_root_dir,
        # unless the config chose loggers itself (or `logger: false`).
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = cfg.get("trainer")
        if trainer is None:
            return
        self._ddp_for_gans(cfg, trainer)
        if trainer.get("logger") not in (None, True):
            return
        root = trainer.get("default_root_dir") or "runs"
        trainer["logger"] = [
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
             "init_args": {"save_dir": root, "name": "tensorboard", "default_hp_metric": False}},
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": "csv"}},
        ]


def _extra_commands() -> dict[str, Any]:
    from vqzoo.cli import encode, evaluate, export, sample

    return {"export": export.main, "encode": encode.main, "sample": sample.main, "evaluate": evaluate.main}


EXTRA_COMMANDS = ("export", "encode", "sample", "evaluate")


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        try:
            return _extra_commands()[argv[0]](argv[1:])
        except (ValueError, FileNotFoundError) as err:
            print(f"vqzoo {argv[0]}: error: {err}", file=sys.stderr)
            return 2
    # From the shell LightningCLI reads sys.argv itself; passing it again as args warns.
    VQZooCLI(args=None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
