"""Reproduce tables 1-3 of the TE-VQGAN paper end to end: stage 1, stage 2, evaluation.

The library part of the reproduction; ``benchmarks/reproduce_te.py`` is its
command line. Configs and results are paths in the repository checkout
(:data:`ROOT`), so the runner is used from a source checkout.

Paper: W. Shin et al., "Exploration into Translation-Equivariant Image
Quantization", ICASSP 2023. Its claims:
an orthogonal codebook regularizer (TE-VQGAN) makes a VQGAN use far fewer
codes, maps a digit to the same indices wherever it sits (translation
equivariance in the quantized space), and a text<->image transformer trained
on those tokens generalises better to held-out (color, position) pairs.

What runs, per run r (seeds: stage 1 ``23 + r``, stage 2 ``42 + r``)::

    classifier   configs/experiments/quadrant_classifier.yaml (trained once, or --classifier CKPT)
    stage 1      one VQGAN per tokenizer: SC and Ours (TE-VQGAN); --all-baselines adds CB, MP, MB
    table 3      per tokenizer on the held-out test split: codes used, L1, LPIPS (when the VGG16
                 weights are present), translation-equivariance rate (vqzoo.experiments.te.equivariance)
    stage 2      the tokenizer encodes the captioned train and test splits (encode_tokens), then
                 ONE MiniGPT with order="both" learns text->image and image->text (the authors'
                 code also trains one transformer on both directions, alternating them)
    table 1      one generated image per test caption -> classifier digit/color accuracy per
                 Quad1..Quad4; one generated caption per test image -> parsed digit accuracy
    table 2      SC and Ours only: the same stage 2 on the first third of the train pairs
                 (the paper's 100K of 300K) with the same number of epochs; text->image Quad1

Scales:

* ``--scale small`` (default): 32x32 canvases of the 5,000 offline MNIST
  digits, small models (configs/experiments/te_small_*.yaml), budgeted for at
  most 60 minutes on 2 CPU cores. Measured with ``--threads 1`` while the other
  core was busy: 51 min in all (classifier 4, stage 1 SC + Ours 23, encoding 2,
  stage 2 with 2 main + 2 table-2 priors 20, evaluation 1). At that budget the
  priors are undertrained (near chance on seen pairs too); ``--reuse
  --stage2-scale 3 --no-table2`` retrains stage 2 on three times the pairs on
  the same tokenizers (about 55 more minutes).
  ``--budget-scale f`` multiplies every training length (train sizes, hence
  steps; the discriminator start and warm-up with them; classifier epochs, never
  above the config's); ``--stage2-scale g`` multiplies the stage-2 pairs only.
* ``--stage2-config configs/experiments/te_small_stage2_long.yaml --stage2-scale 2.5``:
  the small scale with a stage 2 that trains 15 times longer (9,372 optimizer steps,
  ``order="alternate"``); ``--probe-every N`` records each prior's seen-pair accuracy
  every N steps (:class:`SeenPairProbe`), so the report shows whether it learned before
  it is judged on held-out pairs. ``--shared-stage1 --runs 3`` keeps one tokenizer per
  method and repeats stage 2 with seeds 42, 43, 44; ``--tokenizers sc`` and ``--tokenizers
  ours`` in two processes sharing ``--work-dir`` use both cores, and ``--merge`` (in
  ``benchmarks/reproduce_te.py``) joins their results files.
* ``--scale paper``: the paper-scale configs (configs/tokenizers/te_vqgan_*.yaml,
  configs/experiments/te_stage2_*.yaml), meant for a GPU. Training runs in this
  process on ONE device: a config written for ``devices: 2`` has its per-device
  batch doubled (and, for stage 1 with ``scale_lr: linear``, its learning rate
  doubled) so the effective batch and rate are the paper's.

Decisions where the brief and the paper are silent:

* Test split: every test image holds only held-out (color, position) pairs
  (paper figure 2b); table 1 uses all of it, one sample per caption/image.
* Sampling: the reference's rule (docs/reference-implementations.md §A): top-k with
  ``filter_thres 0.9`` over the JOINT text + image logit vector, k = max(int((1 - 0.9)
  V_total), 1), V_total = text vocabulary + image codebook, in both directions. The other
  modality's logits are masked there, so this keeps the top min(k, V_generated) logits of
  the generated modality (:func:`top_k_for`), temperature 1, a torch.Generator seeded with
  the stage-2 seed.
* Table 3's code usage counts distinct indices over the whole test split
  (docs/pitfalls.md #10); L1 is mean |x - x_hat| on the [-1, 1] scale; the equivariance
  rate uses the first ``equivariance_objects`` test-source digits, drawn in
  colors white/red/green/blue in turn, in each of the four quadrants.
* An extra diagnostic, ``oracle``: the classifier's accuracy on the tokenizer's
  reconstructions of the real test images, an upper bound for text->image.
* Robustness: every unit (classifier, stage 1, report, stage 2, evaluation)
  runs in its own try/except; a failure is recorded with its traceback in
  ``errors``, units that depend on it are marked skipped, the others go on,
  and the results files are rewritten after every unit (so an interrupted run
  leaves what it finished). The exit status is 1 when anything failed.
* ``--reuse`` loads the checkpoints an earlier run left in the work directory
  when they were trained with the same config, overrides and seed (the
  ``signature.json`` beside each checkpoint), instead of retraining. Token
  directories and priors are reused only on top of a reused tokenizer, and
  tokens only when their count matches, so ``--reuse --stage2-scale 4``
  retrains stage 2 (four times the pairs) on the same tokenizers.

Usage::

    PYTHONPATH=. python benchmarks/reproduce_te.py --scale small --threads 1
    PYTHONPATH=. python benchmarks/reproduce_te.py --scale paper --all-baselines --runs 3

``--threads 1`` is the better choice on a busy machine: the small models gain
little from a second thread (0.77 s vs 0.67 s per stage-1 step when idle), and
with more runnable threads than cores the OpenMP threads spin against each
other (4.5 s per step with 2 threads against 1.9 s with one, measured on a
2-core machine under a load average of 7).

Writes ``benchmarks/results/te_reproduction_{scale}.md`` and ``.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from vqzoo.io import atomic_write

#: The repository checkout: vqzoo/experiments/te/runner.py is three levels below it.
ROOT = Path(__file__).resolve().parents[3]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# ---------------------------------------------------------------------- the paper's numbers
#: Display order of the tokenizers (the paper's table 1 order) and their labels.
TOKENIZER_ORDER = ("mb", "mp", "cb", "sc", "ours")
LABELS = {"mb": "MB", "mp": "MP", "cb": "CB", "sc": "SC (VQGAN)", "ours": "Ours (TE-VQGAN)"}
MAIN_KEYS = ("sc", "ours")
BASELINE_KEYS = ("cb", "mp", "mb")
QUADS = ("Quad1", "Quad2", "Quad3", "Quad4")

#: Table 1: digit accuracy, mean and std over the paper's 3 runs, Quad1..Quad4.
PAPER_TABLE1: dict[str, dict[str, list[tuple[float, float]]]] = {
    "t2i": {
        "mb": [(0.724, 0.033), (0.697, 0.066), (0.635, 0.067), (0.620, 0.077)],
        "mp": [(0.713, 0.007), (0.703, 0.015), (0.669, 0.017), (0.656, 0.028)],
        "cb": [(0.753, 0.037), (0.741, 0.034), (0.682, 0.043), (0.649, 0.055)],
        "sc": [(0.812, 0.032), (0.806, 0.030), (0.790, 0.038), (0.761, 0.051)],
        "ours": [(0.931, 0.033), (0.913, 0.032), (0.890, 0.048), (0.868, 0.059)],
    },
    "i2t": {
        "mb": [(0.587, 0.032), (0.507, 0.021), (0.433, 0.013), (0.378, 0.020)],
        "mp": [(0.561, 0.042), (0.500, 0.038), (0.412, 0.034), (0.360, 0.039)],
        "cb": [(0.563, 0.041), (0.455, 0.056), (0.362, 0.046), (0.309, 0.043)],
        "sc": [(0.786, 0.052), (0.692, 0.063), (0.595, 0.086), (0.542, 0.106)],
        "ours": [(0.825, 0.037), (0.713, 0.066), (0.621, 0.061), (0.554, 0.065)],
    },
}
#: Table 2: text->image digit accuracy in Quad1 with 300K and 100K train pairs.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "sc": {"full": (0.812, 0.032), "reduced": (0.739, 0.037)},
    "ours": {"full": (0.931, 0.033), "reduced": (0.919, 0.022)},
}
#: Table 3: codes used, reconstruction (L1) and perceptual loss.
PAPER_TABLE3: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {
        "sc": {"codes_used": 252, "l1": 0.0079, "perceptual": 0.0036},
        "ours": {"codes_used": 14, "l1": 0.0084, "perceptual": 0.0048},
    },
    "fashion": {
        "sc": {"codes_used": 250, "l1": 0.0150, "perceptual": 0.0108},
        "ours": {"codes_used": 18, "l1": 0.0187, "perceptual": 0.0198},
    },
}


# ---------------------------------------------------------------------- scales
@dataclass(frozen=True)
class ScaleSpec:
    """Which configs a scale uses and how it is evaluated (paths relative to the repository)."""

    name: str
    stage1: dict[str, str]
    stage2: dict[str, str]
    stage2_reduced: dict[str, str]
    stage2_data: str
    classifier_config: str = "configs/experiments/quadrant_classifier.yaml"
    classifier_overrides: tuple[str, ...] = ()
    #: Fraction of the train pairs for table 2 (the paper's 100K of 300K).
    reduced_fraction: float = 1.0 / 3.0
    #: Whether the table-2 prior shares the main config, so its warm-up is scaled by the fraction.
    reduced_shares_config: bool = False
    equivariance_objects: int = 250
    eval_batch: int = 500
    accelerator: str = "cpu"
    #: Stage-1 configs for the Fashion-MNIST rows of table 3 and the overrides they need.
    fashion_stage1: dict[str, str] = field(default_factory=dict)
    fashion_overrides: tuple[str, ...] = ()


def _stage1_paths(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}{k}.yaml" for k in (*MAIN_KEYS, *BASELINE_KEYS)}


SCALES: dict[str, ScaleSpec] = {
    "small": ScaleSpec(
        name="small",
        stage1=_stage1_paths("configs/experiments/te_small_vqgan_"),
        stage2={k: "configs/experiments/te_small_stage2.yaml" for k in (*MAIN_KEYS, *BASELINE_KEYS)},
        stage2_reduced={k: "configs/experiments/te_small_stage2.yaml" for k in MAIN_KEYS},
        stage2_data="configs/experiments/te_small_stage2_data.yaml",
        reduced_shares_config=True,
        equivariance_objects=250,
        eval_batch=400,
        accelerator="cpu",
        fashion_stage1={k: f"configs/experiments/te_small_vqgan_{k}.yaml" for k in MAIN_KEYS},
        fashion_overrides=("--data.init_args.source", "fashion_mnist"),
    ),
    "paper": ScaleSpec(
        name="paper",
        stage1=_stage1_paths("configs/tokenizers/te_vqgan_"),
        stage2={k: f"configs/experiments/te_stage2_{k}.yaml" for k in (*MAIN_KEYS, *BASELINE_KEYS)},
        stage2_reduced={k: f"configs/experiments/te_stage2_{k}_100k.yaml" for k in MAIN_KEYS},
        stage2_data="configs/experiments/te_stage2_data.yaml",
        classifier_overrides=(
            "--data.init_args.canvas_size", "64", "--data.init_args.source", "mnist",
            "--data.init_args.download", "true", "--model.init_args.crop_size", "32",
        ),
        reduced_shares_config=False,
        equivariance_objects=1000,
        eval_batch=500,
        accelerator="auto",
        fashion_stage1={k: f"configs/tokenizers/te_vqgan_{k}_fashion.yaml" for k in MAIN_KEYS},
    ),
}


# ---------------------------------------------------------------------- small helpers
def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std (ddof=1, None for one value) and lowest of the non-missing values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "min": None}
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "min": min(vals)}


def lowest_run(summary: dict[str, Any]) -> float:
    """The worst run of a summary, judged against the seen-pair bar per seed (tables stored before "min": the mean)."""
    return summary["mean"] if summary.get("min") is None else summary["min"]


def fmt(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.812`` or ``0.812 (0.032)``; ``n/a`` when missing."""
    if not summary or summary.get("mean") is None:
        return "n/a"
    text = f"{summary['mean']:.{digits}f}"
    if summary.get("std") is not None:
        text += f" ({summary['std']:.{digits}f})"
    return text


def fmt_paper(pair: tuple[float, float] | None) -> str:
    return "n/a" if pair is None else f"{pair[0]:.3f} ({pair[1]:.3f})"


FILTER_THRES = 0.9
#: Seen-pair text->image digit accuracy a prior must reach before its held-out table 1 counts.
SEEN_BAR = 0.8


def top_k_for(total_vocab: int, generated_vocab: int, filter_thres: float = FILTER_THRES) -> int:
    """The reference's top-k rule for one sampling step of the joint text/image prior.

    The reference computes ``k = max(int((1 - filter_thres) * V), 1)`` on the FULL logit
    vector (V = ``total_vocab`` = text + image vocabulary) after masking the logits of the
    modality that cannot come next to the most negative value, for both directions (k = 25
    of 256 in its setting). Masked logits never survive the softmax, so this keeps the top
    ``min(k, generated_vocab)`` logits of the generated modality, which is what is returned.
    It is not 10 % of the generated modality's vocabulary. The reference's text vocabulary also
    holds 50 per-position pad ids (docs/reference-implementations.md §A); vqzoo's has none, so
    here V = text vocabulary (53) + image codebook (128) and k = 18.
    """
    if total_vocab < 1 or not 1 <= generated_vocab <= total_vocab:
        raise ValueError(f"need 1 <= generated_vocab <= total_vocab, got {generated_vocab}, {total_vocab}")
    if not 0.0 <= filter_thres < 1.0:
        raise ValueError(f"filter_thres must be in [0, 1), got {filter_thres}")
    return min(max(int((1 - filter_thres) * total_vocab), 1), generated_vocab)


def scaled(value: int | float, factor: float, minimum: int = 1) -> int:
    """``round(value * factor)``, at least ``minimum``."""
    return max(int(round(float(value) * factor)), minimum)


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"config not found: {p}")
    cfg = yaml.safe_load(p.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a YAML mapping")
    return cfg


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_path(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else ROOT / p)


# ---------------------------------------------------------------------- building and training
def single_device_overrides(cfg: dict[str, Any], kind: str) -> tuple[list[str], list[str]]:
    """CLI overrides that keep a multi-device config's effective batch and rate on one device.

    Returns ``(args, notes)``. ``kind`` is ``"tokenizer"`` or ``"prior"``.
    """
    devices = _get(cfg, "trainer.devices", 1)
    nodes = _get(cfg, "trainer.num_nodes", 1) or 1
    if not isinstance(devices, int) or devices * nodes <= 1:
        return [], []
    world = devices * nodes
    args, notes = [], []
    batch = _get(cfg, "data.init_args.batch_size")
    if batch is not None:
        args += ["--data.init_args.batch_size", str(int(batch) * world)]
        notes.append(f"batch {batch} x {world} devices -> {int(batch) * world} on one device")
    if kind == "tokenizer" and _get(cfg, "model.init_args.scale_lr") == "linear":
        lr = float(_get(cfg, "model.init_args.optimizer.init_args.lr"))
        args += ["--model.init_args.optimizer.init_args.lr", repr(lr * world)]
        notes.append(f"scale_lr linear: optimizer lr {lr} x {world} -> {lr * world} on one device")
    return args, notes


def build_from_config(config: str, overrides: Sequence[str], seed: int | None, accelerator: str) -> Any:
    """Parse a config with :class:`vqzoo.cli.VQZooCLI` (``run=False``) and return the CLI object.

    The trainer the CLI builds is never used (its defaults carry a progress
    bar and loggers under ``runs/``); :func:`make_trainer` builds ours from
    the same ``trainer`` section.
    """
    from vqzoo.cli import VQZooCLI

    args = ["--config", config_path(config), "--trainer.accelerator", accelerator,
            "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto"]
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    # LightningCLI warns when the process has command-line arguments besides ``args``.
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        return VQZooCLI(run=False, args=[*args, *overrides])
    finally:
        sys.argv = saved


class ProgressPrinter(L.Callback):
    """Prints step, loss, elapsed time and an ETA every ``every`` training batches."""

    def __init__(self, label: str, every: int = 50) -> None:
        self.label, self.every = label, max(int(every), 1)
        self.start, self.total = time.time(), 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.time()
        self.total = int(trainer.num_training_batches * max(trainer.max_epochs or 1, 1))
        print(f"[{self.label}] training: {self.total} batches", flush=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = trainer.current_epoch * trainer.num_training_batches + batch_idx + 1
        if done % self.every and done != self.total:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = float(loss) if isinstance(loss, torch.Tensor) else float("nan")
        elapsed = time.time() - self.start
        eta = elapsed / done * max(self.total - done, 0)
        print(f"[{self.label}] {done}/{self.total} loss {value:.4f} elapsed {elapsed:.0f}s eta {eta:.0f}s",
              flush=True)


_TRAINER_KEYS = (
    "max_epochs", "max_steps", "min_epochs", "min_steps", "precision", "gradient_clip_val",
    "gradient_clip_algorithm", "check_val_every_n_epoch", "val_check_interval", "log_every_n_steps",
    "limit_train_batches", "limit_val_batches", "accumulate_grad_batches", "deterministic", "benchmark",
)


def make_trainer(trainer_cfg: dict[str, Any], out_dir: Path, label: str, accelerator: str,
                 callbacks: Sequence[Any] = ()) -> Any:
    """A one-device Trainer with the config's schedule, a CSV logger in ``out_dir`` and no checkpoints."""
    from lightning.pytorch.loggers import CSVLogger

    kwargs = {k: trainer_cfg[k] for k in _TRAINER_KEYS if trainer_cfg.get(k) is not None}
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=CSVLogger(str(out_dir), name="csv"),
        callbacks=[ProgressPrinter(label), *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
        **kwargs,
    )


def fit_config(
    config: str, overrides: Sequence[str], seed: int, out_dir: Path, label: str, accelerator: str,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Any, dict[str, Any]]:
    """Build model + datamodule from ``config`` and fit them; returns (model, datamodule, info)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cli = build_from_config(config, overrides, seed, accelerator)
    trainer_cfg = cli.config["trainer"].as_dict()
    trainer = make_trainer(trainer_cfg, out_dir, label, accelerator, callbacks)
    L.seed_everything(seed, workers=True)
    start = time.time()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    info = {
        "config": config,
        "overrides": list(overrides),
        "seed": seed,
        "train_seconds": time.time() - start,
        "batches": int(trainer.num_training_batches * max(trainer.max_epochs or 1, 1)),
        "logged": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    }
    ckpt = out_dir / "model.ckpt"
    trainer.save_checkpoint(str(ckpt))
    info["checkpoint"] = str(ckpt)
    cli.model.eval()
    return cli.model, cli.datamodule, info


def build_datamodule(config: str, **init_overrides: Any) -> Any:
    """The ``data:`` section of a YAML (class_path + init_args), instantiated with overrides."""
    from vqzoo.cli.common import datamodule_from_yaml

    path = Path(config)
    return datamodule_from_yaml(str(path if path.is_absolute() else ROOT / path), **init_overrides)


def resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator {accelerator!r} asks for a GPU but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def trainer_accelerator(accelerator: str) -> str:
    return "gpu" if resolve_device(accelerator).type == "cuda" else "cpu"


# ---------------------------------------------------------------------- evaluation pieces
def load_perceptual() -> tuple[Any, str | None]:
    """LPIPS (VGG16) when its weights are present, else ``(None, reason)``."""
    try:
        from vqzoo.losses.perceptual import LPIPS

        return LPIPS(pretrained=True).eval(), None
    except (FileNotFoundError, OSError, RuntimeError) as err:
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__


def equivariance_objects(datamodule: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test-source objects of a quadrant datamodule and their colors (0,1,2,3,0,...)."""
    from vqzoo.experiments.te.quadrants import load_source_splits

    hp = datamodule.hparams
    src = load_source_splits(hp.source, hp.root, hp.download, hp.source_split_seed)
    digits = np.asarray(src.test_images[:n])
    return digits, np.arange(len(digits)) % 4


@torch.no_grad()
def stage1_table3(
    tokenizer: Any, datamodule: Any, n_objects: int, perceptual: Any, device: torch.device
) -> dict[str, Any]:
    """Table 3 of one tokenizer on the test split of its (stage-1) datamodule."""
    from vqzoo.experiments.te.equivariance import stage1_report

    datamodule.setup("test")
    digits, colors = equivariance_objects(datamodule, n_objects)
    tokenizer.to(device).eval()
    if perceptual is not None:
        perceptual.to(device)
    report = stage1_report(
        tokenizer, datamodule.test_dataloader(), digits, colors, datamodule.hparams.canvas_size,
        perceptual=perceptual, device=device,
    )
    report["codebook_size"] = int(tokenizer.vocab_size)
    report["equivariance_objects"] = int(len(digits))
    return report


@torch.no_grad()
def collect_test_items(datamodule: Any, batch_size: int, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """Images, caption ids, caption strings and layouts of a captioned split (test: held-out pairs), in order.

    One :class:`vqzoo.data.batch.Batch` holding the whole split: ``images``,
    ``text``, ``captions`` and the quadrant metadata ``layout``.
    """
    from torch.utils.data import DataLoader, Subset

    datamodule.setup("test" if split == "test" else "fit")
    dataset = datamodule.datasets[split]
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    images, text, captions, layouts = [], [], [], []
    for batch in loader:
        images.append(batch["images"])
        text.append(batch["text"])
        captions.extend(batch["captions"])
        layouts.append(batch["layout"])
    return {"images": torch.cat(images), "text": torch.cat(text), "captions": captions, "layout": torch.cat(layouts)}


@torch.no_grad()
def evaluate_prior(
    prior: Any,
    tokenizer: Any,
    classifier: Any,
    items: dict[str, Any],
    seed: int,
    device: torch.device,
    batch_size: int,
    directions: Sequence[str] = ("t2i", "i2t"),
    image_dir: Path | None = None,
    t2i_temperature: float = 1.0,
) -> dict[str, Any]:
    """Table-1 metrics of one prior: text->image (classifier) and image->text (parser) accuracies.

    ``t2i_temperature`` 1 with the joint top-k is the reference's rule (table 1); lower values keep
    the top-k, 0 decodes greedily (diagnostics only, benchmarks/te_sampling_diagnostic.py).
    """
    from vqzoo.experiments.te.captions import VOCAB
    from vqzoo.experiments.te.semantic import image_to_text_accuracy, text_to_image_accuracy

    if "t2i" in directions and classifier is None:
        raise ValueError("text->image accuracy needs a classifier; pass directions=('i2t',) without one")
    prior.to(device).eval()
    tokenizer.to(device).eval()
    if classifier is not None:
        classifier.to(device).eval()
    n = items["images"].shape[0]
    out: dict[str, Any] = {"num_test": n}
    gen = torch.Generator(device=device.type).manual_seed(seed)
    if "t2i" in directions:
        images = []
        k = top_k_for(prior.vocab_size + prior.text_vocab_size, prior.vocab_size)
        for s in range(0, n, batch_size):
            text = items["text"][s : s + batch_size].to(device)
            tokens = prior.generate(text.shape[0], condition=text, temperature=t2i_temperature,
                                    top_k=k if t2i_temperature > 0 else None, generator=gen)
            images.append(tokenizer.detokenize(tokens).clamp(-1, 1).float().cpu())
        generated = torch.cat(images)
        out["t2i"] = text_to_image_accuracy(generated, items["captions"], classifier)
        out["t2i_top_k"] = k if t2i_temperature > 0 else None
        if image_dir is not None:
            save_grid(generated[:32], image_dir / "t2i_samples.png")
    if "i2t" in directions:
        ids = []
        k = top_k_for(prior.vocab_size + prior.text_vocab_size, prior.text_vocab_size)
        for s in range(0, n, batch_size):
            tokens = tokenizer.tokenize(items["images"][s : s + batch_size].to(device))
            ids.append(prior.generate_text(tokens, temperature=1.0, top_k=k, generator=gen).cpu())
        ids_t = torch.cat(ids)
        out["i2t"] = image_to_text_accuracy(ids_t, items["layout"])
        out["i2t_top_k"] = k
        out["i2t_examples"] = [
            {"truth": items["captions"][i], "generated": VOCAB.decode(ids_t[i])} for i in range(min(4, n))
        ]
    return out


class SeenPairProbe(L.Callback):
    """Judges the prior on seen (color, position) pairs every ``every`` optimizer steps while it trains.

    The learning curve that tells whether a stage-2 prior has learned the task before it is judged
    on held-out pairs. ``items`` are validation pairs (:func:`collect_test_items` with
    ``split="val"``); each probe samples with the same rule and seed as the final evaluation, then
    puts the prior back in training mode. ``curve`` holds one dict per probe.
    """

    def __init__(self, tokenizer: Any, classifier: Any, items: dict[str, Any], every: int, seed: int,
                 device: torch.device, batch_size: int, label: str = "probe") -> None:
        if every < 1:
            raise ValueError(f"probe every must be >= 1 step, got {every}")
        self.tokenizer, self.classifier, self.items = tokenizer, classifier, items
        self.every, self.seed, self.device, self.batch_size, self.label = every, seed, device, batch_size, label
        self.directions = ("t2i", "i2t") if classifier is not None else ("i2t",)
        self.curve: list[dict[str, Any]] = []
        self._start = time.time()

    def probe(self, pl_module: Any, step: int) -> None:
        was_training = pl_module.training
        res = evaluate_prior(pl_module, self.tokenizer, self.classifier, self.items, self.seed, self.device,
                             self.batch_size, self.directions)
        pl_module.train(was_training)
        point: dict[str, Any] = {"step": step, "seconds": round(time.time() - self._start, 1)}
        for d in self.directions:
            point[f"{d}/digit"] = res[d]["all/digit"]
            point[f"{d}/color"] = res[d]["all/color"]
        self.curve.append(point)
        print(f"[{self.label}] step {step}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in point.items() if "/" in k), flush=True)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step % self.every == 0 and (not self.curve or self.curve[-1]["step"] != step):
            self.probe(pl_module, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if not self.curve or self.curve[-1]["step"] != step:
            self.probe(pl_module, step)


@torch.no_grad()
def reconstruction_oracle(tokenizer: Any, classifier: Any, items: dict[str, Any], device: torch.device,
                          batch_size: int) -> dict[str, float]:
    """Classifier accuracy on the tokenizer's reconstructions of the real test images."""
    from vqzoo.experiments.te.semantic import text_to_image_accuracy

    tokenizer.to(device).eval()
    rec = []
    for s in range(0, items["images"].shape[0], batch_size):
        x = items["images"][s : s + batch_size].to(device)
        rec.append(tokenizer.detokenize(tokenizer.tokenize(x)).clamp(-1, 1).float().cpu())
    return text_to_image_accuracy(torch.cat(rec), items["captions"], classifier.to(device))


def save_grid(images: torch.Tensor, path: Path) -> None:
    from vqzoo.io import make_grid, save_png

    if images.numel():
        save_png(make_grid(images, nrow=8), path)


# ---------------------------------------------------------------------- the pipeline
@dataclass
class Options:
    scale: str = "small"
    all_baselines: bool = False
    runs: int = 1
    budget_scale: float = 1.0
    stage2_scale: float = 1.0
    table2: bool = True
    fashion: bool = False
    classifier: str | None = None
    accelerator: str | None = None
    work_dir: Path | None = None
    out: Path | None = None
    reuse: bool = False
    threads: int | None = None
    render: Path | None = None
    #: extra CLI overrides for every stage-1 / stage-2 fit (e.g. precision, batch size of a preset)
    stage1_overrides: tuple[str, ...] = ()
    stage2_overrides: tuple[str, ...] = ()
    #: the benchmarks/reproduce_te.py preset these options came from, if any
    preset: str | None = None
    #: every run r > 0 reuses run 0's stage-1 tokenizers and tokens; only the stage-2 seed varies
    shared_stage1: bool = False
    #: start at run ``first_run`` (seeds 23/42 + first_run; with ``shared_stage1`` stage 1 keeps seed 23):
    #: adds later seeds to an earlier results file (--merge) when its work dir is gone; runs before it stay empty
    first_run: int = 0
    #: judge each stage-2 prior on ``probe_items`` seen pairs every ``probe_every`` steps (0: never)
    probe_every: int = 0
    probe_items: int = 200
    #: one stage-2 config for every tokenizer (and table 2) instead of the scale's
    stage2_config: str | None = None
    #: the stage-2 data config (captions, pair counts) instead of the scale's; its text length must
    #: match the stage-2 config's text_length
    stage2_data: str | None = None
    #: only these tokenizers (keys of TOKENIZER_ORDER); default SC and Ours (+ baselines)
    tokenizers: tuple[str, ...] | None = None
    #: stage-1 configs (repository-relative) that replace the scale's for these tokenizer keys, e.g.
    #: {"ours": "configs/experiments/te_small_vqgan_ours_l2.yaml"}; the Fashion-MNIST rows keep the scale's
    stage1_configs: dict[str, str] | None = None


class Reproduction:
    """Runs the units of the reproduction and keeps the results (see the module docstring)."""

    def __init__(self, opts: Options, spec: ScaleSpec | None = None) -> None:
        if opts.scale not in SCALES and spec is None:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {opts.scale!r}")
        if not (opts.budget_scale > 0 and opts.stage2_scale > 0):
            raise ValueError(
                f"--budget-scale and --stage2-scale must be > 0, got {opts.budget_scale}, {opts.stage2_scale}"
            )
        if opts.runs < 1:
            raise ValueError(f"--runs must be >= 1, got {opts.runs}")
        if not 0 <= opts.first_run < opts.runs:
            raise ValueError(f"--first-run must be in [0, --runs), got {opts.first_run} with --runs {opts.runs}")
        if opts.probe_every < 0 or opts.probe_items < 1:
            raise ValueError(f"--probe-every must be >= 0 and --probe-items >= 1, got {opts.probe_every}, "
                             f"{opts.probe_items}")
        self.opts = opts
        self.spec = spec or SCALES[opts.scale]
        self.stage2_data = opts.stage2_data or self.spec.stage2_data
        self.accelerator = trainer_accelerator(opts.accelerator or self.spec.accelerator)
        self.device = resolve_device(self.accelerator)
        self.work = Path(opts.work_dir or ROOT / "runs" / f"te_reproduction_{self.spec.name}")
        self.out = Path(opts.out or RESULTS_DIR / f"te_reproduction_{self.spec.name}")
        if self.out.suffix in (".md", ".json"):
            self.out = self.out.with_suffix("")
        self.keys = list(MAIN_KEYS) + (list(BASELINE_KEYS) if opts.all_baselines else [])
        if opts.tokenizers:
            unknown = [k for k in opts.tokenizers if k not in TOKENIZER_ORDER]
            if unknown:
                raise ValueError(f"unknown tokenizer(s) {unknown}; choose from {list(TOKENIZER_ORDER)}")
            self.keys = [k for k in TOKENIZER_ORDER if k in opts.tokenizers]
        for key, path in (opts.stage1_configs or {}).items():
            if key not in TOKENIZER_ORDER:
                raise ValueError(f"stage-1 config for unknown tokenizer {key!r}; choose from {list(TOKENIZER_ORDER)}")
            if not Path(config_path(path)).is_file():
                raise FileNotFoundError(f"stage-1 config for {key!r} not found: {config_path(path)}")
        self.started = time.time()
        self.results: dict[str, Any] = {
            "paper": "Shin et al., Exploration into Translation-Equivariant Image Quantization, ICASSP 2023",
            "scale": self.spec.name,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "hardware": {
                "device": str(self.device),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if self.device.type == "cuda" else None,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "seeds": {"stage1": [23] if opts.shared_stage1 else [23 + r for r in range(opts.runs)],
                      "stage2": [42 + r for r in range(opts.runs)],
                      "classifier": None, "data": 0, "first_run": opts.first_run},
            "tokenizers": self.keys,
            "classifier": {},
            "runs": [{"stage1": {}, "table3": {}, "stage2": {}, "table2": {}, "fashion": {}} for _ in range(opts.runs)],
            "timings_s": {},
            "errors": [],
            "skipped": [],
            "notes": [],
            "paper_numbers": {"table1": PAPER_TABLE1, "table2": PAPER_TABLE2, "table3": PAPER_TABLE3},
        }
        data = build_datamodule(self.stage2_data)  # built, not set up: only its settings are read
        self.results["stage2_data"] = {"config": self.stage2_data, "caption_style": data.hparams.caption_style,
                                       "text_length": data.vocabulary.max_length}
        self.perceptual: Any = None
        self._perceptual_loaded = False
        self._perceptual_reason: str | None = None
        self._test_items: dict[str, Any] | None = None
        self._seen_items: dict[str, Any] | None = None

    # -------------------------------------------------------------- bookkeeping
    def unit(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one unit; record its time, or its error (and return None)."""
        print(f"=== {name} ===", flush=True)
        start = time.time()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            self.results["errors"].append(
                {"unit": name, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            )
            print(f"!!! {name} failed: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
            return None
        finally:
            self.results["timings_s"][name] = round(time.time() - start, 1)
            self.write()

    def skip(self, name: str, reason: str) -> None:
        self.results["skipped"].append({"unit": name, "reason": reason})
        print(f"--- skipped {name}: {reason}", flush=True)

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.started, 1)
        self.results["tables"] = build_tables(self.results)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.out.with_suffix(".json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(self.results, indent=2, default=_json_default) + "\n")
        with atomic_write(self.out.with_suffix(".md"), "w", encoding="utf-8") as f:
            f.write(render_markdown(self.results))

    # -------------------------------------------------------------- reuse
    def reusable(self, out_dir: Path, signature: dict[str, Any]) -> bool:
        """``--reuse`` and a checkpoint trained with exactly this config, overrides and seed."""
        sig = out_dir / "signature.json"
        if not (self.opts.reuse and (out_dir / "model.ckpt").is_file() and sig.is_file()):
            return False
        return json.loads(sig.read_text()) == json.loads(json.dumps(signature, default=_json_default))

    @staticmethod
    def sign(out_dir: Path, signature: dict[str, Any]) -> None:
        (out_dir / "signature.json").write_text(json.dumps(signature, indent=1, default=_json_default) + "\n")

    # -------------------------------------------------------------- units
    def perceptual_metric(self) -> Any:
        if not self._perceptual_loaded:
            self.perceptual, self._perceptual_reason = load_perceptual()
            self._perceptual_loaded = True
            if self.perceptual is None:
                self.results["notes"].append(f"perceptual (LPIPS) not measured: {self._perceptual_reason}")
        return self.perceptual

    def classifier_unit(self) -> Any:
        from vqzoo.checkpoint import load
        from vqzoo.experiments.te.semantic import QuadrantClassifier

        if self.opts.classifier:
            clf = load(self.opts.classifier, expected=QuadrantClassifier)
            self.results["classifier"] = {"checkpoint": self.opts.classifier, "trained_here": False}
            return clf
        out_dir = self.work / "classifier"
        cfg = read_yaml(self.spec.classifier_config)
        epochs = scaled(_get(cfg, "trainer.max_epochs", 30), min(self.opts.budget_scale, 1.0))
        seed = int(cfg.get("seed_everything") or 0)
        overrides = [*self.spec.classifier_overrides, "--trainer.max_epochs", str(epochs)]
        signature = {"config": self.spec.classifier_config, "overrides": overrides, "seed": seed}
        self.results["seeds"]["classifier"] = seed
        if self.reusable(out_dir, signature):
            clf = load(out_dir / "model.ckpt", expected=QuadrantClassifier)
            self.results["classifier"] = {**signature, "checkpoint": str(out_dir / "model.ckpt"), "reused": True}
        else:
            clf, dm, info = fit_config(self.spec.classifier_config, overrides, seed, out_dir, "classifier",
                                       self.accelerator)
            self.sign(out_dir, signature)
            self.results["classifier"] = {**info, "trained_here": True, "max_epochs": epochs}
        dm_eval = build_datamodule(self.spec.classifier_config, **_classifier_data_overrides(self.spec))
        trainer = L.Trainer(accelerator=self.accelerator, devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
        metrics = trainer.validate(clf, datamodule=dm_eval, verbose=False)[0]
        self.results["classifier"]["held_out"] = {k: float(v) for k, v in metrics.items()}
        clf.eval()
        return clf

    def stage1_unit(self, key: str, run: int, fashion: bool = False) -> tuple[Any, Any]:
        from vqzoo.checkpoint import load
        from vqzoo.tokenizers.base import Tokenizer

        if fashion:
            config = self.spec.fashion_stage1[key]
        else:
            config = (self.opts.stage1_configs or {}).get(key) or self.spec.stage1[key]
        cfg = read_yaml(config)
        # shared stage 1 is trained once, in the first run, always with seed 23 (the recorded stage-1 seed)
        seed = 23 if self.opts.shared_stage1 else 23 + run
        name = f"{key}_fashion" if fashion else key
        out_dir = self.work / f"run{run}" / "stage1" / name
        overrides, notes = single_device_overrides(cfg, "tokenizer")
        if fashion:
            overrides += list(self.spec.fashion_overrides)
        f = self.opts.budget_scale
        if f != 1.0:
            overrides += ["--data.init_args.train_size", str(scaled(_get(cfg, "data.init_args.train_size"), f))]
            disc_start = _get(cfg, "model.init_args.adversarial.init_args.disc_start")
            if disc_start is not None:
                overrides += ["--model.init_args.adversarial.init_args.disc_start", str(scaled(disc_start, f, 0))]
        overrides += list(self.opts.stage1_overrides)
        signature = {"config": config, "overrides": overrides, "seed": seed}
        if self.reusable(out_dir, signature):
            model = load(out_dir / "model.ckpt", expected=Tokenizer)
            dm = build_from_config(config, overrides, seed, self.accelerator).datamodule
            info = {**signature, "checkpoint": str(out_dir / "model.ckpt"), "reused": True}
        else:
            model, dm, info = fit_config(config, overrides, seed, out_dir, f"stage1 {name} run{run}", self.accelerator)
            self.sign(out_dir, signature)
        info["notes"] = notes
        self.results["runs"][run]["fashion" if fashion else "stage1"][key] = info
        return model, dm

    def table3_unit(self, key: str, run: int, tokenizer: Any, dm: Any, fashion: bool = False) -> None:
        report = stage1_table3(tokenizer, dm, self.spec.equivariance_objects, self.perceptual_metric(), self.device)
        if fashion:
            self.results["runs"][run]["fashion"][key]["table3"] = report
        else:
            self.results["runs"][run]["table3"][key] = report
        print(f"[table3 {key}{' fashion' if fashion else ''} run{run}] {report}", flush=True)

    def test_items(self) -> dict[str, Any]:
        if self._test_items is None:
            dm = build_datamodule(self.stage2_data)
            self._test_items = collect_test_items(dm, self.spec.eval_batch)
        return self._test_items

    def seen_items(self) -> dict[str, Any]:
        """Validation pairs (seen (color, position) pairs), as many as the test split has."""
        if self._seen_items is None:
            dm = build_datamodule(self.stage2_data)
            n = self.test_items()["images"].shape[0]
            self._seen_items = collect_test_items(dm, self.spec.eval_batch, split="val", limit=n)
        return self._seen_items

    def encode_unit(self, key: str, run: int, tokenizer: Any, reduced: bool) -> dict[str, Path]:
        """Token directories (train [reduced] and test) of one tokenizer."""
        from torch.utils.data import DataLoader, Subset

        from vqzoo.tokenizers.encode import encode_tokens

        cfg = read_yaml(self.stage2_data)
        train_size = scaled(_get(cfg, "data.init_args.train_size"), self.opts.budget_scale * self.opts.stage2_scale)
        dm = build_datamodule(self.stage2_data, train_size=train_size)
        dm.setup("fit")
        base = self.work / f"run{run}" / "tokens" / key
        dirs = {"train": base / "train", "test": base / "test"}
        n_reduced = scaled(train_size, self.spec.reduced_fraction)
        if reduced:
            dirs["reduced"] = base / f"train_{n_reduced}"
        batch = int(_get(cfg, "data.init_args.batch_size", 64))
        tokenizer.to(self.device).eval()
        sources = {
            "train": dm.datasets["train"],
            "test": dm.datasets["test"],
            "reduced": Subset(dm.datasets["train"], range(n_reduced)),
        }
        stage1 = self.results["runs"][run]["stage1"].get(key, {})
        # Tokens are reused only from the same tokenizer checkpoint, data config and size.
        data_sig = {"stage2_data": self.stage2_data}
        sig_file = base / "data.json"
        same_data = sig_file.is_file() and json.loads(sig_file.read_text()) == data_sig
        for split, path in dirs.items():
            meta = path / "meta.json"
            if (self.opts.reuse and stage1.get("reused") and same_data and meta.is_file()
                    and json.loads(meta.read_text()).get("num_samples") == len(sources[split])):
                continue
            loader = DataLoader(sources[split], batch_size=batch, shuffle=False)
            encode_tokens(tokenizer, loader, path, tokenizer_path=f"{key} run{run}", device=self.device,
                          overwrite=True)
        sig_file.write_text(json.dumps(data_sig) + "\n")
        self.results["runs"][run]["stage2"].setdefault(key, {})["train_pairs"] = train_size
        if reduced:
            self.results["runs"][run]["table2"].setdefault(key, {})["train_pairs"] = n_reduced
        return dirs

    def stage2_unit(self, key: str, run: int, dirs: dict[str, Path], reduced: bool,
                    tokenizer: Any = None, classifier: Any = None) -> Any:
        from vqzoo.checkpoint import load
        from vqzoo.priors.base import Prior

        config = self.opts.stage2_config or (self.spec.stage2_reduced if reduced else self.spec.stage2)[key]
        cfg = read_yaml(config)
        seed = 42 + run
        name = f"{key}_reduced" if reduced else key
        out_dir = self.work / f"run{run}" / "stage2" / name
        overrides, notes = single_device_overrides(cfg, "prior")
        overrides += ["--data.init_args.root", str(dirs["reduced" if reduced else "train"]),
                      "--data.init_args.val_root", str(dirs["test"])]
        warmup = _get(cfg, "model.init_args.warmup_steps", 0) or 0
        factor = self.opts.budget_scale * self.opts.stage2_scale
        if reduced and self.spec.reduced_shares_config:
            factor *= self.spec.reduced_fraction
        if warmup and factor != 1.0:
            overrides += ["--model.init_args.warmup_steps", str(scaled(warmup, factor, 0))]
        overrides += list(self.opts.stage2_overrides)
        pairs = self.results["runs"][run]["table2" if reduced else "stage2"].get(key, {}).get("train_pairs")
        stage1 = self.results["runs"][run]["stage1"].get(key, {})
        signature = {"config": config, "overrides": overrides, "seed": seed, "train_pairs": pairs}
        if stage1.get("reused") and self.reusable(out_dir, signature):
            prior = load(out_dir / "model.ckpt", expected=Prior)
            # What was recorded while it trained (time, learning curve) comes back with it.
            trained = out_dir / "training.json"
            info = json.loads(trained.read_text()) if trained.is_file() else {}
            info.update({**signature, "checkpoint": str(out_dir / "model.ckpt"), "reused": True})
        else:
            probes = []
            if self.opts.probe_every and tokenizer is not None and not reduced:
                items = self.seen_items()
                items = {k: v[: self.opts.probe_items] for k, v in items.items()}
                probes.append(SeenPairProbe(tokenizer, classifier, items, self.opts.probe_every, seed, self.device,
                                            self.spec.eval_batch, label=f"seen {name} run{run}"))
            prior, _, info = fit_config(config, overrides, seed, out_dir, f"stage2 {name} run{run}", self.accelerator,
                                        probes)
            if probes:
                info["seen_curve"] = probes[0].curve
                info["seen_curve_items"] = len(items["captions"])
            (out_dir / "training.json").write_text(json.dumps(info, indent=1, default=_json_default) + "\n")
            self.sign(out_dir, signature)
        info["notes"] = notes
        slot = self.results["runs"][run]["table2" if reduced else "stage2"].setdefault(key, {})
        slot["training"] = info
        return prior

    def eval_unit(self, key: str, run: int, prior: Any, tokenizer: Any, classifier: Any, reduced: bool) -> None:
        items = self.test_items()
        directions = ("t2i",) if reduced else ("t2i", "i2t")
        if classifier is None:
            directions = tuple(d for d in directions if d != "t2i")
            self.skip(f"t2i {key} run{run}", "no classifier (its unit failed)")
        name = f"{key}_reduced" if reduced else key
        res = evaluate_prior(prior, tokenizer, classifier, items, 42 + run, self.device, self.spec.eval_batch,
                             directions, image_dir=self.work / f"run{run}" / "stage2" / name)
        slot = self.results["runs"][run]["table2" if reduced else "stage2"].setdefault(key, {})
        slot["eval"] = res
        if not reduced and classifier is not None:
            slot["oracle"] = reconstruction_oracle(tokenizer, classifier, items, self.device, self.spec.eval_batch)
        if not reduced:
            # The same metrics on seen pairs: tells an undertrained prior from one that fails zero-shot.
            slot["eval_seen"] = evaluate_prior(prior, tokenizer, classifier, self.seen_items(), 42 + run, self.device,
                                               self.spec.eval_batch, directions)
            if classifier is not None:
                slot["oracle_seen"] = reconstruction_oracle(tokenizer, classifier, self.seen_items(), self.device,
                                                            self.spec.eval_batch)
                # Greedy decoding (not the reference's rule): what the prior has learned, without the noise
                # that sampling at temperature 1 adds (benchmarks/te_sampling_diagnostic.py).
                slot["eval_greedy"] = {
                    split: evaluate_prior(prior, tokenizer, classifier, its, 42 + run, self.device,
                                          self.spec.eval_batch, ("t2i",), t2i_temperature=0.0)["t2i"]
                    for split, its in (("held_out", items), ("seen", self.seen_items()))}
        brief = {d: {q: res[d].get(f"{q}/digit") for q in QUADS} for d in directions}
        print(f"[eval {name} run{run}] {brief}", flush=True)

    # -------------------------------------------------------------- driver
    def run(self) -> int:
        if self.opts.threads:
            torch.set_num_threads(self.opts.threads)
            self.results["hardware"]["torch_threads"] = torch.get_num_threads()
        self.work.mkdir(parents=True, exist_ok=True)
        classifier = self.unit("classifier", self.classifier_unit)
        tokenizers: dict[str, Any] = {}
        shared: dict[str, Any] = {}
        first = self.opts.first_run
        for run in range(first, self.opts.runs):
            reuse_run0 = bool(run > first and self.opts.shared_stage1)
            for key in self.keys:
                if reuse_run0:
                    got = tokenizers.get(key)
                    self.results["runs"][run]["stage1"][key] = {**self.results["runs"][first]["stage1"].get(key, {}),
                                                                "shared_from_run": first}
                else:
                    got = self.unit(f"stage1 {key} run{run}", lambda: self.stage1_unit(key, run))
                    tokenizers[key] = got
                if got is None:
                    for u in ("table3", "stage2", "eval"):
                        self.skip(f"{u} {key} run{run}", "stage 1 failed")
                    continue
                tokenizer, dm = got
                reduced = self.opts.table2 and key in self.spec.stage2_reduced
                if reuse_run0:
                    dirs = shared[key]
                    self.results["runs"][run]["stage2"].setdefault(key, {})["train_pairs"] = (
                        self.results["runs"][first]["stage2"].get(key, {}).get("train_pairs"))
                    if reduced:
                        self.results["runs"][run]["table2"].setdefault(key, {})["train_pairs"] = (
                            self.results["runs"][first]["table2"].get(key, {}).get("train_pairs"))
                else:
                    self.unit(f"table3 {key} run{run}", lambda: self.table3_unit(key, run, tokenizer, dm))
                    dirs = self.unit(f"encode {key} run{run}", lambda: self.encode_unit(key, run, tokenizer, reduced))
                    shared[key] = dirs
                if dirs is None:
                    self.skip(f"stage2 {key} run{run}", "encoding failed")
                    continue
                for red in (False, True) if reduced else (False,):
                    tag = f"{key}{'_reduced' if red else ''} run{run}"
                    prior = self.unit(f"stage2 {tag}",
                                      lambda: self.stage2_unit(key, run, dirs, red, tokenizer, classifier))
                    if prior is None:
                        self.skip(f"eval {tag}", "stage 2 failed")
                        continue
                    self.unit(f"eval {tag}", lambda: self.eval_unit(key, run, prior, tokenizer, classifier, red))
            if self.opts.fashion and not reuse_run0:
                for key in MAIN_KEYS:
                    got = self.unit(f"stage1 {key}_fashion run{run}", lambda: self.stage1_unit(key, run, True))
                    if got is None:
                        self.skip(f"table3 {key}_fashion run{run}", "stage 1 failed")
                        continue
                    self.unit(f"table3 {key}_fashion run{run}",
                              lambda: self.table3_unit(key, run, got[0], got[1], fashion=True))
        self.results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        self.write()
        print(f"wrote {self.out.with_suffix('.md')} and .json; {len(self.results['errors'])} failed unit(s)")
        return 1 if self.results["errors"] else 0


def _classifier_data_overrides(spec: ScaleSpec) -> dict[str, Any]:
    """The classifier datamodule's init-arg overrides from ``--data.init_args.X value`` pairs."""
    import yaml

    out: dict[str, Any] = {}
    args = list(spec.classifier_overrides)
    for flag, value in zip(args[::2], args[1::2]):
        if flag.startswith("--data.init_args."):
            out[flag.removeprefix("--data.init_args.")] = yaml.safe_load(value)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ---------------------------------------------------------------------- tables
def build_tables(results: dict[str, Any]) -> dict[str, Any]:
    """Aggregate the per-run numbers into tables 1-3 (mean/std over runs) beside the paper's."""
    runs = results.get("runs", [])
    keys = [k for k in TOKENIZER_ORDER if k in results.get("tokenizers", [])]

    def collect(path: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        vals = []
        for r in runs:
            try:
                vals.append(path(r))
            except (KeyError, TypeError):
                vals.append(None)
        return summarize(vals)

    t1: dict[str, Any] = {}
    for key in keys:
        row: dict[str, Any] = {}
        for d in ("t2i", "i2t"):
            for q in QUADS:
                row[f"{d}/{q}/digit"] = collect(lambda r, d=d, q=q: r["stage2"][key]["eval"][d][f"{q}/digit"])
                row[f"{d}/{q}/color"] = collect(lambda r, d=d, q=q: r["stage2"][key]["eval"][d][f"{q}/color"])
            row[f"{d}/all/digit"] = collect(lambda r, d=d: r["stage2"][key]["eval"][d]["all/digit"])
        for q in QUADS:
            row[f"oracle/{q}/digit"] = collect(lambda r, q=q: r["stage2"][key]["oracle"][f"{q}/digit"])
        for d in ("t2i", "i2t"):
            for m in ("digit", "color"):
                row[f"seen/{d}/all/{m}"] = collect(lambda r, d=d, m=m: r["stage2"][key]["eval_seen"][d][f"all/{m}"])
        row["seen/t2i/Quad1/digit"] = collect(lambda r: r["stage2"][key]["eval_seen"]["t2i"]["Quad1/digit"])
        row["seen/oracle/all/digit"] = collect(lambda r: r["stage2"][key]["oracle_seen"]["all/digit"])
        for split in ("held_out", "seen"):
            for q in (*QUADS, "all"):
                row[f"greedy/{split}/{q}/digit"] = collect(
                    lambda r, split=split, q=q: r["stage2"][key]["eval_greedy"][split][f"{q}/digit"])
        t1[key] = row
    t2: dict[str, Any] = {}
    for key in keys:
        if key not in PAPER_TABLE2:
            continue
        full = collect(lambda r: r["stage2"][key]["eval"]["t2i"]["Quad1/digit"])
        red = collect(lambda r: r["table2"][key]["eval"]["t2i"]["Quad1/digit"])
        diff = (
            {"mean": full["mean"] - red["mean"], "std": None, "n": min(full["n"], red["n"])}
            if full["mean"] is not None and red["mean"] is not None else summarize([])
        )
        pairs = {
            "full": next((r["stage2"].get(key, {}).get("train_pairs") for r in runs if r["stage2"].get(key)), None),
            "reduced": next((r["table2"].get(key, {}).get("train_pairs") for r in runs if r["table2"].get(key)), None),
        }
        t2[key] = {"full": full, "reduced": red, "diff": diff, "train_pairs": pairs}
    t3: dict[str, Any] = {}
    for dataset, slot in (("mnist", "table3"), ("fashion", "fashion")):
        for key in keys:
            def get(r: dict[str, Any], m: str, key: str = key) -> Any:
                rep = r[slot][key] if slot == "table3" else r[slot][key]["table3"]
                return rep[m]

            row = {m: collect(lambda r, m=m: get(r, m)) for m in ("codes_used", "l1", "perceptual", "equivariance")}
            size = next((_safe(lambda r=r: get(r, "codebook_size")) for r in runs), None)
            if any(v["n"] for v in row.values()):
                row["codebook_size"] = size
                t3.setdefault(dataset, {})[key] = row
    return {"table1": t1, "table2": t2, "table3": t3}


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (KeyError, TypeError):
        return None


def render_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: tables 1-3, measured beside the paper, plus the protocol."""
    tables = results.get("tables") or build_tables(results)
    scale = results.get("scale", "?")
    lines = [
        f"# TE-VQGAN reproduction ({scale} scale)",
        "",
        f"Paper: {results.get('paper', '')}. Produced by `benchmarks/reproduce_te.py` "
        f"(`{results.get('command', '')}`), started {results.get('started', '?')}, "
        f"{'finished ' + results['finished'] if results.get('finished') else 'NOT FINISHED'}; "
        f"elapsed {_minutes(results.get('elapsed_s'))}.",
        "",
    ]
    hw = results.get("hardware", {})
    seeds = results.get("seeds", {})
    opts = results.get("options", {})
    lines += [
        f"Hardware: {hw.get('device')} ({hw.get('cuda') or hw.get('cpu')}, {hw.get('torch_threads')} torch threads, "
        f"{hw.get('cpu_count')} CPUs visible), torch {hw.get('torch')}. "
        f"Budget scale {opts.get('budget_scale')} (stage 2 x{opts.get('stage2_scale', 1.0)}); runs {opts.get('runs')}; "
        f"seeds: stage 1 {seeds.get('stage1')}, stage 2 {seeds.get('stage2')}, "
        f"classifier {seeds.get('classifier')}, data generator {seeds.get('data')}.",
        "",
        "Measured numbers are the mean over runs (std in parentheses when there is more than one run); "
        "the paper's are mean (std) over 3 runs at 64x64 with 300K training pairs.",
        "",
    ]
    data = results.get("stage2_data") or {}
    if opts.get("stage1_configs"):
        lines += ["Stage 1 configs replacing the scale's: " + ", ".join(
            f"{LABELS.get(k, k)} `{v}`" for k, v in opts["stage1_configs"].items()) + ".", ""]
    if opts.get("stage2_config") or opts.get("stage2_data"):
        lines += [f"Stage 2: config `{opts.get('stage2_config') or 'the scale default'}`, data "
                  f"`{data.get('config') or opts.get('stage2_data') or 'the scale default'}`.", ""]
    if data.get("caption_style") == "short":
        lines += [f"**Captions are not the paper's**: the \"short\" style, one fixed clause per object in quadrant "
                  f"order (\"upper left red 3, lower right blue 5.\", {data.get('text_length')} tokens); the paper's "
                  "captions vary the template and the clause order. Images, held-out pairs and judges are the "
                  "same.", ""]
    clf = results.get("classifier", {})
    held = clf.get("held_out", {})
    if held:
        lines += [f"Classifier (judge of text->image): held-out digit accuracy "
                  f"{held.get('val/digit_acc', float('nan')):.4f}, color accuracy "
                  f"{held.get('val/color_acc', float('nan')):.4f} (paper: 0.995 digit).", ""]
    t1 = tables.get("table1", {})
    seen = {k: row["seen/t2i/all/digit"] for k, row in t1.items()
            if (row.get("seen/t2i/all/digit") or {}).get("mean") is not None}
    short = {k: v for k, v in seen.items() if lowest_run(v) < SEEN_BAR}
    if short:
        lines += [f"**Table 1 is not a result here**: held-out accuracy is meaningful only for a prior that has "
                  f"learned the seen pairs, and these reached text->image digit accuracy "
                  + ", ".join(f"{LABELS[k]} {v['mean']:.3f} (lowest seed {lowest_run(v):.3f})"
                              for k, v in short.items())
                  + f" on seen pairs, below the bar of {SEEN_BAR} (see the seen-pair rows and learning curves "
                  "below). The held-out numbers are printed for completeness only.", ""]
    for d, title in (("t2i", "Text-to-image"), ("i2t", "Image-to-text")):
        lines += [f"## Table 1: {title}, digit accuracy on held-out pairs (chance 0.10)", "",
                  "| Model | Quad1 | Quad2 | Quad3 | Quad4 | all |", "|---|---|---|---|---|---|"]
        for key in TOKENIZER_ORDER:
            if key in t1:
                row = t1[key]
                lines.append(f"| {LABELS[key]}, measured | " + " | ".join(fmt(row[f'{d}/{q}/digit']) for q in QUADS)
                             + f" | {fmt(row[f'{d}/all/digit'])} |")
                lines.append(f"| {LABELS[key]}, paper | " + " | ".join(fmt_paper(p) for p in PAPER_TABLE1[d][key])
                             + " | |")
        lines.append("")
    if t1:
        lines += ["Color accuracy (the paper reports none; chance 0.25) and the reconstruction oracle "
                  "(classifier digit accuracy on the tokenizer's reconstructions of the real test images, "
                  "a reference for text-to-image, not a strict bound):", "",
                  "| Model | T->I color Quad1 | Quad2 | Quad3 | Quad4 | I->T color Quad1 | Quad2 | Quad3 | Quad4 "
                  "| oracle digit Quad1 | Quad2 | Quad3 | Quad4 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in TOKENIZER_ORDER:
            if key in t1:
                row = t1[key]
                cells = [fmt(row[f"{d}/{q}/color"]) for d in ("t2i", "i2t") for q in QUADS]
                cells += [fmt(row[f"oracle/{q}/digit"]) for q in QUADS]
                lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += ["Seen pairs: the same priors judged on validation images and captions, whose (color, position) "
                  "pairs occur in training (the paper reports none; a prior near chance here is undertrained, "
                  "not failing zero-shot). \"reconstructed\" is the classifier's digit accuracy on the "
                  "tokenizer's own reconstructions of these real images: what its tokens can draw. At the "
                  "reference's rule (temperature 1) a prior that fits the data draws token grids distributed as "
                  "the real images' are, so its digits are as readable as these reconstructions; only the top-k "
                  "filter, or a prior drawing more prototypical digits than the real ones, takes it above. "
                  "\"share\" is T->I digit over reconstructed.", "",
                  "| Model | T->I digit | T->I color | T->I digit Quad1 | I->T digit | I->T color | reconstructed (digit) "
                  "| share |",
                  "|---|---|---|---|---|---|---|---|"]
        capped = []
        for key in TOKENIZER_ORDER:
            if key in t1 and "seen/t2i/all/digit" in t1[key]:
                row = t1[key]
                cells = [row["seen/t2i/all/digit"], row["seen/t2i/all/color"], row.get("seen/t2i/Quad1/digit"),
                         row["seen/i2t/all/digit"], row["seen/i2t/all/color"], row.get("seen/oracle/all/digit")]
                oracle = (row.get("seen/oracle/all/digit") or {}).get("mean")
                t2i = row["seen/t2i/all/digit"].get("mean")
                share = f"{t2i / oracle:.2f}" if oracle and t2i is not None else "n/a"
                lines.append(f"| {LABELS[key]} | " + " | ".join(fmt(c) for c in cells) + f" | {share} |")
                if oracle is not None and oracle < SEEN_BAR:
                    capped.append(f"{LABELS[key]} ({oracle:.3f})")
        lines.append("")
        if capped:
            lines += ["**Tokenizer under the bar**: the classifier reads fewer than "
                      f"{SEEN_BAR} of the digits in the reconstructions of " + ", ".join(capped)
                      + ", so no prior on its tokens is expected to pass the bar at the reference's rule, however "
                      "long it trains.", ""]
    greedy = {k: row for k, row in t1.items() if (row.get("greedy/seen/all/digit") or {}).get("mean") is not None}
    if greedy:
        lines += ["## Table 1 with greedy decoding (not the reference's rule)", "",
                  "Text-to-image digit accuracy of the same priors when every image token is the most likely one "
                  "(temperature 0, no top-k): what each prior has learned, without the noise of sampling at "
                  f"temperature 1. Bar on seen pairs: {SEEN_BAR}.", "",
                  "| Model | seen all | held-out Quad1 | Quad2 | Quad3 | Quad4 | held-out all |",
                  "|---|---|---|---|---|---|---|"]
        for key in TOKENIZER_ORDER:
            if key in greedy:
                row = greedy[key]
                lines.append(f"| {LABELS[key]} | {fmt(row['greedy/seen/all/digit'])} | "
                             + " | ".join(fmt(row[f"greedy/held_out/{q}/digit"]) for q in (*QUADS, "all")) + " |")
        # Judged per seed: a mean over the bar can hide a seed under it.
        under = [(LABELS[k], row["greedy/seen/all/digit"]) for k, row in greedy.items()
                 if lowest_run(row["greedy/seen/all/digit"]) < SEEN_BAR]
        if not under:
            verdict = ("Every prior (every seed) is over the bar on seen pairs when decoded greedily, so the held-out "
                       "columns compare priors that have learned the task.")
        else:
            verdict = "Below the bar on seen pairs even greedily: " + ", ".join(
                f"{label} (mean {s['mean']:.3f}, lowest seed {lowest_run(s):.3f})"
                for label, s in under) + "."
        lines += ["", verdict]
        lines.append("")
    t2 = tables.get("table2", {})
    if t2:
        lines += ["## Table 2: sample efficiency, text-to-image digit accuracy in Quad1", "",
                  "| Train pairs | " + " | ".join(f"{LABELS[k]} measured | paper" for k in t2) + " |",
                  "|---|" + "---|---|" * len(t2)]
        for part, paper_label in (("full", "300K"), ("reduced", "100K")):
            cells = []
            for k, row in t2.items():
                n = row["train_pairs"].get(part)
                cells += [f"{fmt(row[part])} ({n} pairs)" if n else fmt(row[part]),
                          f"{fmt_paper(PAPER_TABLE2[k][part])} ({paper_label})"]
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        diff_cells = []
        for k, row in t2.items():
            p = PAPER_TABLE2[k]
            diff_cells += [fmt(row["diff"]), f"{p['full'][0] - p['reduced'][0]:.3f}"]
        lines += ["| diff | " + " | ".join(diff_cells) + " |", ""]
    t3 = tables.get("table3", {})
    if t3:
        lines += ["## Table 3: code usage, reconstruction, perceptual loss, equivariance rate", "",
                  "Codes used: distinct indices over the whole test split. L1: mean |x - x_hat| on the "
                  "[-1, 1] scale. Perceptual: LPIPS (VGG16) per image. Equivariance: fraction of equal "
                  "indices between the token blocks of the same object drawn in the four quadrants "
                  "(the paper reports no number for it).", "",
                  "| Data | Model | codes used | L1 | perceptual | equivariance rate |", "|---|---|---|---|---|---|"]
        for dataset, label in (("mnist", "MNIST"), ("fashion", "Fashion-MNIST")):
            for key in TOKENIZER_ORDER:
                row = t3.get(dataset, {}).get(key)
                if row is not None:
                    size = row.get("codebook_size")
                    codes = fmt(row["codes_used"], 0 if row["codes_used"].get("n") == 1 else 1)
                    codes += f" of {size}" if size else ""
                    lines.append(f"| {label} | {LABELS[key]}, measured | {codes} | {fmt(row['l1'], 4)} | "
                                 f"{fmt(row['perceptual'], 4)} | {fmt(row['equivariance'])} |")
                paper = PAPER_TABLE3.get(dataset, {}).get(key)
                if paper is not None and (row is not None or dataset == "mnist"):
                    lines.append(f"| {label} | {LABELS[key]}, paper | {paper['codes_used']} | {paper['l1']:.4f} | "
                                 f"{paper['perceptual']:.4f} | n/a |")
        lines.append("")
    lines += render_seen_curves(results)
    trained = []
    for r, run in enumerate(results.get("runs", [])):
        for part, slot in (("stage 1", "stage1"), ("stage 1 Fashion", "fashion")):
            for key, info in run.get(slot, {}).items():
                if info.get("shared_from_run") is not None:
                    continue
                trained.append((f"{part} {LABELS.get(key, key)} run {r}", {**info, "pairs": _train_images(info)}))
        for part, slot in (("stage 2", "stage2"), ("stage 2 table-2", "table2")):
            for key, entry in run.get(slot, {}).items():
                info = dict(entry.get("training") or {})
                info["pairs"] = entry.get("train_pairs")
                trained.append((f"{part} {LABELS.get(key, key)} run {r}", info))
    if trained:
        lines += ["## Training runs", "",
                  "| Unit | config | seed | train images (stage 1) or pairs (stage 2) | batches | train seconds |", "|---|---|---|---|---|---|"]
        for name, info in trained:
            secs = info.get("train_seconds")
            lines.append(f"| {name} | `{info.get('config', '')}` | {info.get('seed', '')} | {info.get('pairs') or ''} | "
                         f"{info.get('batches', 'reused' if info.get('reused') else '')} | "
                         f"{'' if secs is None else round(secs)} |")
        lines.append("")
    timings = results.get("timings_s", {})
    if timings:
        lines += ["## Timings (wall seconds)", "", "| Unit | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in timings.items()]
        lines.append("")
    notes = list(results.get("notes", []))
    for run in results.get("runs", []):
        for part in ("stage1", "fashion"):
            for key, info in run.get(part, {}).items():
                for n in info.get("notes", []) if isinstance(info, dict) else []:
                    notes.append(f"{part} {key}: {n}")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    errors = results.get("errors", [])
    skipped = results.get("skipped", [])
    if errors or skipped:
        lines += ["## Failures", ""]
        lines += [f"- FAILED {e['unit']}: {e['error']}" for e in errors]
        lines += [f"- skipped {s['unit']}: {s['reason']}" for s in skipped]
        lines.append("")
    return "\n".join(lines)


def render_seen_curves(results: dict[str, Any]) -> list[str]:
    """Markdown lines: each stage-2 prior's seen-pair accuracies over its training steps (``--probe-every``)."""
    curves: dict[str, dict[int, dict[str, Any]]] = {}
    items = None
    for r, run in enumerate(results.get("runs", [])):
        for key in TOKENIZER_ORDER:
            info = (run.get("stage2", {}).get(key) or {}).get("training") or {}
            if info.get("seen_curve"):
                curves[f"{LABELS[key]} run {r}"] = {p["step"]: p for p in info["seen_curve"]}
                items = info.get("seen_curve_items", items)
    if not curves:
        return []
    steps = sorted({s for c in curves.values() for s in c})
    lines = ["## Stage 2 learning curves on seen pairs", "",
             f"Digit accuracy (text->image / image->text) on the first {items} validation pairs, whose "
             "(color, position) pairs occur in training, measured while each prior trains, with the same "
             "sampling rule as table 1.", "",
             "| step | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for step in steps:
        cells = []
        for c in curves.values():
            p = c.get(step)
            cells.append("" if p is None else
                         f"{p.get('t2i/digit', float('nan')):.3f} / {p.get('i2t/digit', float('nan')):.3f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines + [""]


def _train_images(info: dict[str, Any]) -> int | None:
    """Stage-1 train images: the override the run used, else the config's value."""
    args = list(info.get("overrides") or [])
    for flag, value in zip(args, args[1:]):
        if flag == "--data.init_args.train_size":
            return int(value)
    try:
        return _get(read_yaml(info["config"]), "data.init_args.train_size")
    except (KeyError, FileNotFoundError, ValueError):
        return None


def _minutes(seconds: Any) -> str:
    return "?" if seconds is None else f"{float(seconds) / 60:.1f} min"


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from parts of the same protocol: one process per tokenizer (``--tokenizers``),
    or later seeds added with ``--first-run`` (the parts' runs then hold disjoint seeds).

    The parts must agree on the scale and the stage-1 seeds, and their stage-2 seed lists must be
    prefixes of one another; each (run, tokenizer) comes from the one part that trained it. Commands are
    joined with " && ", elapsed is the longest part's (they ran side by side), errors, skips and notes
    are concatenated.
    """
    if not parts:
        raise ValueError("nothing to merge")

    def held(run: dict[str, Any]) -> set[str]:
        return {key for units in run.values() if isinstance(units, dict) for key, unit in units.items() if unit}

    base = json.loads(json.dumps(parts[0], default=_json_default))
    for other in parts[1:]:
        if other.get("scale") != base.get("scale"):
            raise ValueError(f"cannot merge results with different scale: {base.get('scale')} vs {other.get('scale')}")
        mine_seeds, their_seeds = base.get("seeds", {}), other.get("seeds", {})
        s2a, s2b = mine_seeds.get("stage2", []), their_seeds.get("stage2", [])
        longer, shorter = (s2a, s2b) if len(s2a) >= len(s2b) else (s2b, s2a)
        if mine_seeds.get("stage1") != their_seeds.get("stage1") or longer[:len(shorter)] != shorter:
            raise ValueError(f"cannot merge results with different seeds: {mine_seeds} vs {their_seeds}")
        for res, s2 in ((base, s2a), (other, s2b)):
            if len(res.get("runs", [])) != len(s2):
                raise ValueError(f"cannot merge: {len(res.get('runs', []))} runs but stage-2 seeds {s2}")
        if len(s2b) > len(s2a):
            base["seeds"] = {**mine_seeds, "stage2": list(s2b)}
            base["runs"] += [{slot: {} for slot in ("stage1", "table3", "stage2", "table2", "fashion")}
                             for _ in range(len(s2b) - len(s2a))]
        base["seeds"]["first_run"] = min(mine_seeds.get("first_run", 0), their_seeds.get("first_run", 0))
        clash = sorted({f"{key} run{r}" for r, (mine, theirs) in enumerate(zip(base["runs"], other["runs"]))
                        for key in held(mine) & held(theirs)})
        if clash:
            raise ValueError(f"tokenizers {clash} are in more than one part")
        base["tokenizers"] = [k for k in TOKENIZER_ORDER if k in set(base["tokenizers"]) | set(other["tokenizers"])]
        for mine, theirs in zip(base["runs"], other["runs"]):
            for slot, units in theirs.items():
                mine.setdefault(slot, {}).update({key: unit for key, unit in units.items() if unit})
        base["timings_s"].update(other.get("timings_s", {}))
        # each part may replace its own tokenizer's stage-1 config (--stage1-config)
        replaced = {**(base.get("options", {}).get("stage1_configs") or {}),
                    **(other.get("options", {}).get("stage1_configs") or {})}
        if replaced:
            base.setdefault("options", {})["stage1_configs"] = replaced
        for key in ("errors", "skipped", "notes"):
            base[key] = base.get(key, []) + [x for x in other.get(key, []) if x not in base.get(key, [])]
        base["command"] = f"{base.get('command', '')} && {other.get('command', '')}"
        base["started"] = min(base.get("started") or "~", other.get("started") or "~")
        if base.get("finished") and other.get("finished"):
            base["finished"] = max(base["finished"], other["finished"])
        else:
            base.pop("finished", None)
        base["elapsed_s"] = max(base.get("elapsed_s") or 0, other.get("elapsed_s") or 0)
    base.setdefault("options", {})["tokenizers"] = base["tokenizers"]
    base["options"]["runs"], base["options"]["first_run"] = len(base["runs"]), base["seeds"].get("first_run", 0)
    base["tables"] = build_tables(base)
    return base


def rerender(json_path: Path) -> Path:
    """Rebuild the tables and the markdown of a results JSON (e.g. after a change of layout)."""
    results = json.loads(Path(json_path).read_text())
    results["tables"] = build_tables(results)
    Path(json_path).write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    md = Path(json_path).with_suffix(".md")
    md.write_text(render_markdown(results))
    return md
