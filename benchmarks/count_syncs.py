"""Count host syncs per steady-state training step, per model, attributed to vqzoo's code.

A host sync is any point where Python needs a tensor's value: ``Tensor.item``,
``__bool__`` (``if t:``), ``__int__``, ``__float__``, ``__index__``, ``tolist``,
``numpy``, ``cpu()`` of a non-CPU tensor, and the data-dependent shapes of
boolean-mask indexing (``t[mask]``, ``nonzero``, ``masked_select``), which read
the mask's count back. On a GPU each one stalls the device until the queue
drains; on CPU they cost nothing, so they are counted instead of timed:
:class:`SyncCounter` wraps those entry points and attributes each call to the
first frame on the stack that is outside torch. A call whose first such frame
is in ``vqzoo/`` is vqzoo's; anything else (Lightning's progress bar or
logger, this script) is counted apart under ``other``.

Each model trains ``--warmup`` steps under a Lightning ``Trainer`` on CPU and
then ``--steps`` counted steps; a callback brackets every step from
``on_train_batch_start`` to ``on_train_batch_end`` (so the optimizer step of
automatic optimization is inside). Models (tiny widths, the real code paths):

* ``vqgan_quickstart``: configs/quickstart.yaml's TE-VQGAN with the PatchGAN
  active from step 0 (``disc_start`` 0);
* ``vqgan_ema_reset``: the same with an EMA codebook and a ``DeadCodeReset``
  (every 1000 steps: steady state has no reset step; a reset step may sync);
* ``vqgan_grad_reset``: gradient codebook and ``GradientMagnitudeReset``;
* ``vqgan_fsq``, ``vqgan_lfq``, ``vqgan_rvq``: VQGAN with each new quantizer;
* ``qgvae``, ``movq``, ``minigpt`` (class-conditional), ``maskgit`` (class-conditional).

Run: ``python benchmarks/count_syncs.py`` (prints a table; ``--json PATH``
writes the counts). tests/test_hot_path.py asserts the vqzoo counts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VQZOO_DIR = str(ROOT / "vqzoo") + os.sep
TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
THIS_FILE = str(Path(__file__).resolve())

_SCALAR_METHODS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")


def _is_bool_index(idx: Any) -> bool:
    if isinstance(idx, torch.Tensor):
        return idx.dtype == torch.bool and idx.dim() > 0
    if isinstance(idx, tuple):
        return any(_is_bool_index(i) for i in idx)
    return False


class SyncCounter:
    """Context manager counting host syncs; ``counts["vqzoo"]`` and ``counts["other"]``.

    ``where["vqzoo"]`` keeps ``file:line (what)`` of each vqzoo call, for finding them.
    Only the thread that entered it is counted (a DataLoader's workers are not training).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.where: dict[str, collections.Counter] = {"vqzoo": collections.Counter(), "other": collections.Counter()}
        self.enabled = True
        self._saved: list[tuple[Any, str, Any]] = []
        self._thread = threading.get_ident()
        self._inside = False

    def _attribute(self, what: str) -> None:
        if not self.enabled or self._inside or threading.get_ident() != self._thread:
            return
        frame = sys._getframe(2)
        while frame is not None:
            f = frame.f_code.co_filename
            if not f.startswith(TORCH_DIR) and f != __file__ and f != THIS_FILE:
                break
            frame = frame.f_back
        if frame is None:
            return
        f = frame.f_code.co_filename
        who = "vqzoo" if f.startswith(VQZOO_DIR) else "other"
        self.counts[who] += 1
        self.where[who][f"{os.path.relpath(f, ROOT)}:{frame.f_lineno} ({what})"] += 1

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def __enter__(self) -> SyncCounter:
        counter = self

        def scalar(name: str) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                def wrapped(t: torch.Tensor, *a: Any, **k: Any) -> Any:
                    counter._attribute(name)
                    counter._inside = True
                    try:
                        return original(t, *a, **k)
                    finally:
                        counter._inside = False

                return wrapped

            return make

        for name in _SCALAR_METHODS:
            self._wrap(torch.Tensor, name, scalar(name))

        def make_cpu(original: Any) -> Any:
            def wrapped(t: torch.Tensor, *a: Any, **k: Any) -> Any:
                if t.device.type != "cpu":
                    counter._attribute("cpu")
                return original(t, *a, **k)

            return wrapped

        self._wrap(torch.Tensor, "cpu", make_cpu)

        def make_getitem(original: Any) -> Any:
            def wrapped(t: torch.Tensor, idx: Any) -> Any:
                if _is_bool_index(idx):
                    counter._attribute("bool-mask index")
                return original(t, idx)

            return wrapped

        def make_setitem(original: Any) -> Any:
            def wrapped(t: torch.Tensor, idx: Any, value: Any) -> Any:
                if _is_bool_index(idx):
                    counter._attribute("bool-mask assign")
                return original(t, idx, value)

            return wrapped

        self._wrap(torch.Tensor, "__getitem__", make_getitem)
        self._wrap(torch.Tensor, "__setitem__", make_setitem)

        def counted(what: str) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                def wrapped(*a: Any, **k: Any) -> Any:
                    counter._attribute(what)
                    return original(*a, **k)

                return wrapped

            return make

        for owner in (torch, torch.Tensor):
            for name in ("nonzero", "masked_select", "unique"):
                if hasattr(owner, name):
                    self._wrap(owner, name, counted(name))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was


# ---------------------------------------------------------------------------- models


def _quantizer(kind: str, dim: int, **kw: Any) -> Any:
    from vqzoo.quantize import (
        DeadCodeReset,
        FiniteScalarQuantizer,
        GradientMagnitudeReset,
        LookupFreeQuantizer,
        OrthogonalRegularizer,
        ResidualQuantizer,
        VectorQuantizer,
    )

    if kind == "vq":
        return VectorQuantizer(128, dim, regularizers=[OrthogonalRegularizer(weight=10.0)], **kw)
    if kind == "ema_reset":
        return VectorQuantizer(128, dim, update="ema", reset=DeadCodeReset(every=1000), **kw)
    if kind == "grad_reset":
        return VectorQuantizer(128, dim, reset=GradientMagnitudeReset(every=1000), **kw)
    if kind == "fsq":
        return FiniteScalarQuantizer([8, 5, 5, 5], dim=dim, **kw)
    if kind == "lfq":
        return LookupFreeQuantizer(10, dim=dim, **kw)
    if kind == "rvq":
        return ResidualQuantizer(VectorQuantizer(32, dim, **kw), depth=2)
    raise ValueError(kind)


def _adversarial() -> Any:
    from vqzoo.losses import AdversarialLoss, NLayerDiscriminator

    return AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=32, n_layers=2), disc_start=0, disc_weight=0.8)


def build_model(name: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """A tiny model of each kind and one batch for it (the same code paths as the configs)."""
    from vqzoo.priors import MaskGIT, MiniGPT
    from vqzoo.tokenizers import QGVAE, VQGAN, MoVQ

    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "betas": (0.5, 0.9)}}
    if name.startswith("vqgan_"):
        kind = {"vqgan_quickstart": "vq", "vqgan_ema_reset": "ema_reset", "vqgan_grad_reset": "grad_reset"}.get(
            name, name.removeprefix("vqgan_")
        )
        # configs/quickstart.yaml's architecture (TE-VQGAN, replication padding)
        model = VQGAN(
            quantizer=_quantizer(kind, 32), in_channels=1, resolution=32, ch=16, ch_mult=[1, 2, 2],
            num_res_blocks=1, attn_resolutions=[], z_channels=32, downsample="strided_conv",
            replicate_padding=True, adversarial=_adversarial(), optimizer=adam,
        )
        return model, {"images": images}
    if name == "qgvae":
        model = QGVAE(
            quantizer=_quantizer("vq", 8, layout="per_token", num_groups=4), num_tokens=8, token_dim=8,
            num_heads=2, tokens_per_codebook=2, in_channels=1, resolution=32, max_channels=16,
            encoder_start_channels=8, bottom_resolution=8, num_frequencies=2, optimizer=adam,
        )
        return model, {"images": images}
    if name == "movq":
        from vqzoo.quantize import VectorQuantizer

        q = VectorQuantizer(64, 4, layout="multichannel", num_channels=2)
        model = MoVQ(quantizer=q, in_channels=1, resolution=32, ch=8, ch_mult=[1, 2], num_res_blocks=1,
                     attn_resolutions=[], adversarial=_adversarial(), optimizer=adam)
        return model, {"images": images}
    labels = torch.randint(0, 10, (8,), generator=g)
    tiny = dict(n_layer=2, n_head=2, n_embd=32, condition="class", num_classes=10, cond_drop_prob=0.1)
    if name == "minigpt":
        model = MiniGPT(vocab_size=64, token_shape=[4, 4], **tiny)
        return model, {"tokens": torch.randint(0, 64, (8, 4, 4), generator=g), "labels": labels}
    if name == "maskgit":
        model = MaskGIT(vocab_size=64, token_shape=[4, 4, 2], **tiny)
        return model, {"tokens": torch.randint(0, 64, (8, 4, 4, 2), generator=g), "labels": labels}
    raise ValueError(f"unknown model {name!r}")


MODELS = (
    "vqgan_quickstart", "vqgan_ema_reset", "vqgan_grad_reset", "vqgan_fsq", "vqgan_lfq", "vqgan_rvq",
    "qgvae", "movq", "minigpt", "maskgit",
)


def count_model(name: str, warmup: int = 3, steps: int = 10, progress_bar: bool = False) -> dict[str, Any]:
    """Train ``name`` for ``warmup + steps`` steps; syncs per counted step (vqzoo's and others')."""
    import lightning as L
    from torch.utils.data import DataLoader

    from vqzoo.data.batch import TensorBatchDataset

    torch.manual_seed(0)
    model, batch = build_model(name)
    n = warmup + steps
    data = TensorBatchDataset(**{k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in batch.items()})
    counter = SyncCounter()
    per_step: list[tuple[int, int]] = []

    class Bracket(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.start = (counter.counts["vqzoo"], counter.counts["other"])
            counter.enabled = batch_idx >= warmup

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx >= warmup:
                per_step.append((counter.counts["vqzoo"] - self.start[0], counter.counts["other"] - self.start[1]))
            counter.enabled = False

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=10**9, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=progress_bar, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1,
        callbacks=[Bracket()],
    )
    counter.enabled = False
    loader = DataLoader(data, batch_size=len(next(iter(batch.values()))), shuffle=False)
    with counter:
        trainer.fit(model, loader)
    vq = [a for a, _ in per_step]
    other = [b for _, b in per_step]
    return {
        "model": name,
        "steps": len(per_step),
        "vqzoo_per_step": max(vq) if vq else None,
        "vqzoo_mean_per_step": sum(vq) / len(vq) if vq else None,
        "vqzoo_total": sum(vq),
        "other_per_step": max(other) if other else None,
        "vqzoo_where": dict(counter.where["vqzoo"]),
        "other_where": dict(counter.where["other"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="counted steps (10 includes one guard check)")
    ap.add_argument("--progress-bar", action="store_true", help="count Lightning's progress bar too (under other)")
    ap.add_argument("--json", default=None, help="write the counts here")
    ap.add_argument("--verbose", action="store_true", help="print where each vqzoo sync comes from")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        r = count_model(name, args.warmup, args.steps, args.progress_bar)
        rows.append(r)
        print(f"{name:18s} vqzoo syncs: max {r['vqzoo_per_step']}/step, mean {r['vqzoo_mean_per_step']:.2f}/step "
              f"over {r['steps']} steps  (other code: {r['other_per_step']}/step)", flush=True)
        if args.verbose:
            for where, c in sorted(r["vqzoo_where"].items()):
                print(f"    {c / max(r['steps'], 1):5.1f}/step  {where}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
