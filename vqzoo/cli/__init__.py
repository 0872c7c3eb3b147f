"""The ``vqzoo`` command line.

``vqzoo fit|validate|test|predict --config X.yaml`` is LightningCLI in
subclass mode (``model: {class_path: ..., init_args: ...}``). Extra commands:

* ``vqzoo export --ckpt C --out DIR``: weights as safetensors plus config.json.
* ``vqzoo encode --tokenizer CKPT_OR_DIR --data DATA.yaml --out DIR``: a token dataset.
* ``vqzoo sample --prior CKPT_OR_DIR --n 64 --out DIR``: tokens and an image grid.
* ``vqzoo convert taming|diffusers ... --out DIR``: a pretrained peer tokenizer as an
  export directory (:mod:`vqzoo.cli.convert`).

Defaults a user of the field expects: a rich progress bar, TensorBoard and
CSV logs under ``runs/``, a ``last.ckpt`` checkpoint, and the config saved
with each run (overwriting a previous one, pitfall 16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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


# ---------------------------------------------------------------------- extra commands
def _export(argv: list[str]) -> int:
    from vqzoo.checkpoint import export_model, load_model

    p = argparse.ArgumentParser(prog="vqzoo export", description="Export a checkpoint as safetensors + config.json")
    p.add_argument("--ckpt", required=True, help="a .ckpt written by `vqzoo fit` (or, with --push-to-hub, an export dir)")
    p.add_argument("--out", default=None, help="output directory (required unless pushing an export directory)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the export to this Hub repo (user/name)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    a = p.parse_args(argv)
    from vqzoo import hub

    if Path(a.ckpt).is_dir() and a.out is None and a.push_to_hub:
        out = Path(a.ckpt)  # an export directory (e.g. from `vqzoo convert`): pushed as it is
        load_model(out)  # refuse to push something that does not load
    elif a.out is None:
        p.error("--out is required (only an export directory can be pushed without it)")
    else:
        model = load_model(a.ckpt)
        out = export_model(model, a.out)
        print(f"exported {type(model).__name__} to {out}")
    if a.push_to_hub:
        url = hub.push_to_hub(out, a.push_to_hub, private=a.private or None)
        print(f"pushed {out} to {url}")
    return 0


def _encode(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vqzoo encode", description="Tokenize a dataset with a trained tokenizer")
    p.add_argument("--tokenizer", required=True, help="tokenizer .ckpt or export directory")
    p.add_argument("--data", required=True, help="YAML with a `data:` section (class_path + init_args) or a bare one")
    p.add_argument("--out", required=True, help="output directory of the token dataset")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=None)
    a = p.parse_args(argv)
    from vqzoo.data.tokens import encode_tokens
    from vqzoo.tokenizers.base import load_tokenizer

    tokenizer = load_tokenizer(a.tokenizer)
    dm = _datamodule_from_yaml(a.data)
    if a.batch_size:
        dm.batch_size = a.batch_size
    dm.prepare_data()
    dm.setup("fit" if a.split in ("train", "val") else "test")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[a.split]()
    if a.split == "train":
        loader = _unshuffled(loader)
    out = encode_tokens(tokenizer, loader, a.out, tokenizer_path=str(a.tokenizer))
    print(f"wrote tokens to {out}")
    return 0


def _unshuffled(loader: Any) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers)


def _datamodule_from_yaml(path: str) -> L.LightningDataModule:
    import yaml
    from jsonargparse import ArgumentParser

    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a YAML mapping with a `data:` section")
    cfg = cfg.get("data", cfg)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    parsed = parser.parse_object({"data": cfg})
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return build(parsed).data


def _sample(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vqzoo sample", description="Sample tokens (and images) from a trained prior")
    p.add_argument("--prior", required=True, help="prior .ckpt or export directory")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--condition", default=None, help="class label (int) or caption text, for conditional priors")
    p.add_argument("--out", default="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="MaskGIT decoding steps")
    p.add_argument("--tokenizer", default=None, help="tokenizer to decode with, if the prior holds none")
    a = p.parse_args(argv)
    from vqzoo.data.tokens import sample_prior

    out = sample_prior(
        a.prior, n=a.n, condition=a.condition, out_dir=a.out, seed=a.seed, temperature=a.temperature,
        top_k=a.top_k, top_p=a.top_p, cfg_scale=a.cfg_scale, steps=a.steps, tokenizer=a.tokenizer,
    )
    print(f"wrote samples to {out}")
    return 0


def _convert(argv: list[str]) -> int:
    from vqzoo.cli.convert import main as convert_main

    return convert_main(argv)


EXTRA_COMMANDS = {"export": _export, "encode": _encode, "sample": _sample, "convert": _convert}


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        try:
            return EXTRA_COMMANDS[argv[0]](argv[1:])
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            print(f"vqzoo {argv[0]}: error: {err}", file=sys.stderr)
            return 2
    # From the shell LightningCLI reads sys.argv itself; passing it again as args warns.
    VQZooCLI(args=None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
