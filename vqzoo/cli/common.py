"""Helpers shared by the extra subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


def datamodule_from_yaml(path: str, **init_overrides: Any) -> L.LightningDataModule:
    """Build the DataModule of a YAML file with a ``data:`` section (class_path + init_args) or a bare one.

    ``init_overrides`` replace entries of its ``init_args``.
    """
    import yaml
    from jsonargparse import ArgumentParser

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data config not found: {file} (expected a YAML file with a `data:` section)")
    cfg = yaml.safe_load(file.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a YAML mapping with a `data:` section")
    cfg = dict(cfg.get("data", cfg))
    if init_overrides:
        cfg["init_args"] = {**dict(cfg.get("init_args") or {}), **init_overrides}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    parsed = parser.parse_object({"data": cfg})
    return parser.instantiate(parsed).data


def split_loader(dm: L.LightningDataModule, split: str) -> Any:
    """The DataModule's loader for ``split`` (train/val/test); the training loader without shuffling."""
    from torch.utils.data import DataLoader

    dm.prepare_data()
    dm.setup("fit" if split in ("train", "val") else "test")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    if split == "train":
        # Keep dataset order (token files line up with labels and captions).
        loader = DataLoader(
            loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
        )
    return loader
