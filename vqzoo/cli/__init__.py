"""The ``vqzoo`` command line.

``vqzoo fit|validate|test|predict --config X.yaml`` is LightningCLI in
subclass mode (``model: {class_path: ..., init_args: ...}``). Extra commands:

* ``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json.
* ``vqzoo encode --tokenizer CKPT_OR_DIR --data DATA.yaml --out DIR``: a token dataset.
* ``vqzoo sample --prior CKPT_OR_DIR --n 64 --out DIR``: tokens and an image grid.
* ``vqzoo convert taming|diffusers ... --out DIR``: a pretrained peer tokenizer as an
  export directory (:mod:`vqzoo.cli.convert`).
* ``vqzoo evaluate --model CKPT_OR_DIR --data DATA.yaml --out report.json``: PSNR/SSIM/LPIPS/FID/IS and
  codebook usage (tokenizers) or FID/IS and speed (priors), with the protocol written into the report.

Defaults a user of the field expects: a rich progress bar, TensorBoard and
CSV logs under ``runs/``, a ``last.ckpt`` checkpoint, and the config saved
with each run (overwriting a previous one, docs/pitfalls.md #16).

Reliability defaults: checkpoints are written atomically beside their target
(:class:`vqzoo.checkpoint_io.AtomicCheckpointIO`); SIGTERM/SIGINT during
``fit`` save ``last.ckpt`` and exit 143/130 (:mod:`vqzoo.cli.signals`);
``--ckpt_path last`` and overrides on resume follow :mod:`vqzoo.cli.resume`.
Every error is one line, ``vqzoo CMD: error: Class: message`` (``--debug``
prints the traceback as well).
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class _Parser(LightningArgumentParser):
    """Names the replacement when a config uses the optimizer keys that injected optimizers replaced."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> Any:
        from vqzoo.optim import legacy_hint

        hint = legacy_hint(message)
        return super().error(f"{message}\n{hint}" if hint else message, *args, **kwargs)


class VQZooCLI(LightningCLI):
    """LightningCLI with vqzoo's defaults."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

        from vqzoo.cli.resume import ApplyResumeOverrides
        from vqzoo.cli.signals import SaveOnSignal

        trainer_defaults: dict[str, Any] = {
            "default_root_dir": "runs",
            "callbacks": [
                RichProgressBar(leave=True),
                ModelCheckpoint(save_last=True, filename="{epoch}-{step}"),
                LearningRateMonitor(logging_interval="step"),
                SaveOnSignal(),
                ApplyResumeOverrides(),
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
            parser_class=_Parser,
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
        if config.get("logger") is False:  # LearningRateMonitor refuses a trainer without loggers
            from lightning.pytorch.callbacks import LearningRateMonitor

            keep = [cb for cb in keep if not isinstance(cb, LearningRateMonitor)]
        # Checkpoints are written atomically beside their target unless the config brings its own CheckpointIO.
        from lightning.pytorch.plugins.io import CheckpointIO

        from vqzoo.checkpoint_io import AtomicCheckpointIO

        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would rebuild the model from the checkpoint's hyperparameters, silently
        # dropping the command line's. When the config names a model, it wins; the differences
        # are listed, applied where safe and refused where not (before_<subcommand>).
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        if model is not None and model.get("class_path"):
            return
        super()._parse_ckpt_path()

    def _resolve_ckpt_path(self) -> None:
        """``--ckpt_path last`` -> the newest last.ckpt under the root; refuse another class or architecture."""
        from vqzoo.cli.resume import check_resume, find_last_checkpoint

        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt == "last":
            root = self.trainer.default_root_dir
            found = find_last_checkpoint(root)
            if found is None:
                print(f"vqzoo {self.subcommand}: no last.ckpt under {root}; starting from scratch", file=sys.stderr)
                config["ckpt_path"] = None
                return
            print(f"vqzoo {self.subcommand}: resuming from {found}", file=sys.stderr)
            config["ckpt_path"] = ckpt = str(found)
        if ckpt and ckpt not in ("best", "hpc", "registry"):
            from pathlib import Path

            from vqzoo.io import clean_stale_temps_in

            clean_stale_temps_in(Path(ckpt).parent)  # temporaries of a writer killed in that run
            check_resume(ckpt, self.model, self.subcommand)

    def before_fit(self) -> None:
        self._resolve_ckpt_path()

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()

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
    from vqzoo.cli import convert, encode, evaluate, export, sample

    return {"export": export.main, "encode": encode.main, "sample": sample.main, "convert": convert.main,
            "evaluate": evaluate.main}


EXTRA_COMMANDS = ("export", "encode", "sample", "convert", "evaluate")


#: errors that mean "bad input" (exit status 2, as argparse's); anything else exits 1.
_INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one ``vqzoo`` command; returns the exit status.

    Every error is printed as one line, ``vqzoo CMD: error: Class: message``
    (``--debug`` anywhere on the line also prints the traceback). A fit stopped
    by SIGTERM/SIGINT returns 143/130 after saving ``last.ckpt``.
    """
    import traceback

    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv and not argv[0].startswith("-") else "vqzoo"
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return _extra_commands()[argv[0]](argv[1:])
        if from_command_line:
            # From the shell LightningCLI reads sys.argv itself; passing it again as args warns.
            sys.argv = [sys.argv[0], *argv]
        VQZooCLI(args=None if from_command_line else argv)
        return 0
    except BaseException as err:  # noqa: BLE001 - the one place errors become an exit status
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from vqzoo.cli import signals

        if isinstance(err, SystemExit) and not isinstance(err, SIGTERMException):
            raise  # argparse/jsonargparse usage errors and --help: already reported

        if debug:
            traceback.print_exc()
        if isinstance(err, signals.TrainingInterrupted):
            resume = f" (resume with --ckpt_path {err.checkpoint})" if err.checkpoint else ""
            print(f"vqzoo {command}: {err}{resume}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, KeyboardInterrupt):
            print(f"vqzoo {command}: interrupted (KeyboardInterrupt)", file=sys.stderr)
            return 130
        if isinstance(err, SIGTERMException):
            saved = signals.LAST_SAVED[-1] if signals.LAST_SAVED else None
            print(f"vqzoo {command}: stopped by SIGTERM; " + (f"saved {saved}" if saved else "no checkpoint saved"),
                  file=sys.stderr)
            return 143
        print(f"vqzoo {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, _INPUT_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
