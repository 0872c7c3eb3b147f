"""`vqzoo fit` under DDP with two CPU processes (gloo): a GAN tokenizer with EMA and a reset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tokenizers" / "vqgan_tiny.yaml"


def _fit_ddp(tmp_path: Path, config: Path, *args: str) -> tuple[dict, dict]:
    """``vqzoo fit`` on 2 CPU processes (gloo); returns what each rank dumped at the end."""
    env = dict(os.environ, VQZOO_TEST_DUMP=str(tmp_path), PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
               OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "vqzoo.cli", "fit", "--config", str(config), *args,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=ddp_callbacks.DumpWeights",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    return r0, r1


def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path: Path) -> None:
    r0, r1 = _fit_ddp(tmp_path, CONFIG, "--model.init_args.quantizer.init_args.update", "ema",
                      "--model.init_args.quantizer.init_args.regularizers", "[]", "--model.init_args.ema_decay", "0.9")
    assert r0["world"] == 2
    assert int(r0["state"]["weight_ema.num_updates"]) >= 1  # the weight EMA's shadows are compared below too
    for key, value in r0["state"].items():
        # BatchNorm running statistics of the discriminator are per-rank by design (DDP
        # re-broadcasts buffers from rank 0 at each forward; they only matter in eval);
        # every parameter and every codebook buffer must be bit-identical.
        if ".discriminator." in key and ("running_" in key or "num_batches" in key):
            continue
        assert torch.equal(value, r1["state"][key]), key
    assert int(r0["state"]["quantizer.reset.num_resets"]) >= 1  # the reset ran under DDP
    # validation metrics are reduced across ranks: both ranks report the same numbers
    for key in ("val/psnr", "val/codebook_usage", "val/perplexity"):
        assert torch.allclose(r0["metrics"][key], r1["metrics"][key]), key
    ckpts = sorted(p.name for p in (tmp_path / "runs").rglob("*.ckpt"))
    configs = list((tmp_path / "runs").rglob("config.yaml"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2 and len(configs) == 1, (ckpts, configs)


def test_ddp_two_cpu_processes_prior(tmp_path: Path) -> None:
    import json

    import numpy as np

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    rng = np.random.default_rng(0)
    np.save(tokens / "tokens.npy", rng.integers(0, 16, size=(256, 4, 4)).astype(np.int16))
    np.save(tokens / "labels.npy", rng.integers(0, 10, size=256).astype(np.int64))
    (tokens / "meta.json").write_text(json.dumps({
        "format_version": 1, "vocab_size": 16, "token_shape": [4, 4], "num_samples": 256, "dtype": "int16",
        "tokenizer": None, "has_labels": True, "has_text": False, "has_captions": False,
    }))
    r0, r1 = _fit_ddp(tmp_path, ROOT / "configs" / "priors" / "minigpt_tiny.yaml", "--data.init_args.root",
                      str(tokens), "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1")
    assert r0["world"] == 2
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    assert len(list((tmp_path / "runs").rglob("last.ckpt"))) == 1
    assert len(list((tmp_path / "runs").rglob("config.yaml"))) == 1
