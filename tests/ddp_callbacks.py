"""Callbacks used by tests that launch `vqzoo fit` under DDP in subprocesses."""

from __future__ import annotations

import os

import lightning as L
import torch


class DumpWeights(L.Callback):
    """Saves every rank's final state dict (and validation metrics) to $VQZOO_TEST_DUMP."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = os.environ["VQZOO_TEST_DUMP"]
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        metrics = {k: v.detach().cpu().clone() for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        torch.save({"state": state, "metrics": metrics, "world": trainer.world_size}, f"{out}/rank{trainer.global_rank}.pt")
