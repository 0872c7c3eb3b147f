"""The GPU-ready hot path, checked on CPU: host syncs per training step, an exact sync-free
non-finite skip, bf16-mixed training and torch.compile for every tokenizer and prior.

Sync counting wraps the Python-level sync points and attributes each call to vqzoo's files
(benchmarks/count_syncs.py). Speed goals live in benchmarks/, never here.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from count_syncs import MODELS, SyncCounter, build_model, count_model  # noqa: E402

from vqzoo.data.batch import TensorBatchDataset  # noqa: E402
from vqzoo.priors.base import Prior  # noqa: E402


def _trainer(steps: int, **kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)


def _loader(batch: dict[str, torch.Tensor], repeat: int) -> DataLoader:
    data = TensorBatchDataset(**{k: v.repeat(repeat, *[1] * (v.dim() - 1)) for k, v in batch.items()})
    return DataLoader(data, batch_size=len(next(iter(batch.values()))))


# ------------------------------------------------------------------ host syncs
@pytest.mark.parametrize("name", MODELS)
def test_steady_state_training_step_makes_no_host_sync_but_the_guard_check(name: str) -> None:
    # 10 counted steps with max_nonfinite_steps = 10: exactly one is the guard's periodic check.
    r = count_model(name, warmup=2, steps=10)
    assert r["steps"] == 10
    assert r["vqzoo_total"] <= 1, r["vqzoo_where"]
    assert r["vqzoo_per_step"] <= 1
    assert all(w.startswith("vqzoo/nn/nonfinite.py") for w in r["vqzoo_where"]), r["vqzoo_where"]


def test_sync_counter_sees_syncs_from_vqzoo_code() -> None:
    # The counter itself: a vqzoo-file call is attributed to vqzoo, a call from here to "other".
    from vqzoo.quantize.base import check_int  # noqa: F401 - any vqzoo module

    t = torch.ones(3)
    with SyncCounter() as c:
        float(t.sum())
        bool(t[t > 0].any())
        code = compile("float(t.sum()); t[t > 0]", str(ROOT / "vqzoo" / "fake.py"), "exec")
        exec(code, {"t": t})
    assert c.counts["vqzoo"] == 2 and c.counts["other"] == 3


# ------------------------------------------------------------------ the sync-free non-finite skip
def _nan_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(batch)
    out["images"] = torch.full_like(batch["images"], float("nan"))
    return out


def _fit_batches(model: L.LightningModule, batches: list[dict[str, torch.Tensor]]) -> None:
    class Seq(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return batches[i]

    _trainer(len(batches) * 2).fit(model, DataLoader(Seq(), batch_size=None))


def test_a_nonfinite_step_is_undone_exactly_with_adam_and_ema_codebook() -> None:
    """A NaN step between two good ones leaves weights, Adam state and EMA statistics as if it never ran."""
    from vqzoo.quantize import VectorQuantizer
    from vqzoo.tokenizers import VQGAN
    from vqzoo.losses import AdversarialLoss, NLayerDiscriminator

    torch.manual_seed(0)
    model = VQGAN(VectorQuantizer(16, 8, update="ema"), in_channels=1, resolution=16, ch=8, ch_mult=[1, 2],
                  num_res_blocks=1, attn_resolutions=[], z_channels=8,
                  adversarial=AdversarialLoss(NLayerDiscriminator(1, ndf=8, n_layers=1), disc_start=0),
                  optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}})
    good = [{"images": torch.rand(4, 1, 16, 16) * 2 - 1} for _ in range(2)]
    clean, skipped = copy.deepcopy(model), copy.deepcopy(model)
    _fit_batches(clean, good)
    _fit_batches(skipped, [good[0], _nan_batch(good[0]), good[1]])
    assert int(skipped._nonfinite_total) == 1 and int(clean._nonfinite_total) == 0
    a, b = clean.state_dict(), skipped.state_dict()
    for k in a:
        if a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
    opt_a = clean.trainer.optimizers[0].state
    opt_b = skipped.trainer.optimizers[0].state
    for (pa, sa), (pb, sb) in zip(opt_a.items(), opt_b.items()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_prior_nonfinite_step_is_undone_and_counted_on_device() -> None:
    model, batch = build_model("minigpt")
    ref = copy.deepcopy(model.state_dict())
    real = model.compute_loss
    model.compute_loss = lambda pb: (lambda out: (out[0] * float("nan"), out[1]))(real(pb))  # type: ignore[method-assign]
    _trainer(2).fit(model, _loader(batch, 2))
    assert int(model._nonfinite_total) == 2 and int(model._nonfinite_in_a_row) == 2
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ bf16-mixed
def _float32_quantizer_outputs(model: L.LightningModule) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    if isinstance(model, Prior):
        return seen

    def hook(module: Any, args: Any, out: Any) -> None:
        seen.append(out.loss.dtype)
        seen.extend(v.dtype for v in out.losses.values())

    model.quantizer.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("name", ["vqgan_quickstart", "vqgan_fsq", "vqgan_lfq", "vqgan_rvq", "qgvae", "movq",
                                  "minigpt", "maskgit"])
def test_bf16_mixed_training_step_is_finite_with_float32_statistics(name: str) -> None:
    torch.manual_seed(0)
    model, batch = build_model(name)
    seen = _float32_quantizer_outputs(model)
    losses: list[torch.Tensor] = []

    class Grab(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(outputs["loss"] if isinstance(outputs, dict) else outputs)

    trainer = _trainer(2 if isinstance(model, Prior) else 4, precision="bf16-mixed", callbacks=[Grab()])
    trainer.fit(model, _loader(batch, 4))
    assert losses and all(torch.isfinite(x).all() for x in losses)
    assert int(model._nonfinite_total) == 0
    assert all(d == torch.float32 for d in seen), seen  # docs/pitfalls.md #7
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: weights stay float32


# ------------------------------------------------------------------ torch.compile
def _eval_output(model: L.LightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(model, Prior):
        tokens = batch["tokens"]
        return model(tokens, batch["labels"])
    rec, q = model(batch["images"])
    return torch.cat([rec.flatten(), q.loss.reshape(1)])


@pytest.mark.parametrize("name", ["vqgan_quickstart", "vqgan_fsq", "vqgan_lfq", "vqgan_rvq", "qgvae", "movq", "minigpt",
                                  "maskgit"])
def test_compile_option_gives_the_eager_output(name: str) -> None:
    # aot_eager: the whole torch.compile graph capture (dynamo + AOT autograd) without the
    # inductor code generation, which takes minutes on a 2-core CPU; the GPU suite uses inductor.
    torch.manual_seed(0)
    model, batch = build_model(name)
    model.eval()
    with torch.no_grad():
        eager = _eval_output(model, batch)
    torch._dynamo.reset()
    modules = [model.trunk] if isinstance(model, Prior) else [model.encoder, model.decoder]
    for m in modules:
        m.compile(backend="aot_eager")
    keys = set(model.state_dict())
    with torch.no_grad():
        compiled = _eval_output(model, batch)
    assert set(model.state_dict()) == keys  # in place: checkpoints unchanged
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_compile_flag_compiles_in_configure_model() -> None:
    from vqzoo.priors import MiniGPT

    m = MiniGPT(vocab_size=8, token_shape=[2, 2], n_layer=1, n_head=1, n_embd=8, compile=True)
    assert m.hparams["compile"] is True
    m.configure_model()
    assert m.trunk._compiled_call_impl is not None


# ------------------------------------------------------------------ the GPU suite's CPU smoke path
def test_gpu_suite_quick_cpu_path_of_the_train_step_benchmark(tmp_path: Path) -> None:
    """benchmarks/gpu_suite.sh's first step with --device cpu --quick, then its summary (one scenario, to stay brief)."""
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "cpu_quick_train_step.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", "cpu", "--dtype", "fp32",
                    "--threads", "1", "--quick", "--scenario", "recon_vq", "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=300)
    runs = json.loads(out.read_text())["runs"]
    (r,) = runs.values()
    assert r["config"]["ch"] == 32 and r["flops_per_step"]["vqzoo"] > 0 and r["mfu"]["vqzoo"] is None  # no CPU peak
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_report.py"), "--dir", str(tmp_path),
                    "--prefix", "cpu_quick_"], check=True, env=env, capture_output=True, timeout=60)
    assert "Train step vs taming" in (tmp_path / "cpu_quick_suite.md").read_text()


def test_check_values_every_n_batches_catches_a_bad_batch_later() -> None:
    model, batch = build_model("vqgan_fsq")
    model.check_values_every = 2
    bad = {"images": batch["images"] * 3}  # out of [-1, 1]
    data = [batch, batch, bad]

    class Seq(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return data[i]

    with pytest.raises(ValueError, match=r"expects images in \[-1, 1\]"):
        _trainer(6).fit(model, DataLoader(Seq(), batch_size=None))
    quiet, _ = build_model("vqgan_fsq")  # default: only the first batch is read back
    _trainer(6).fit(quiet, DataLoader(Seq(), batch_size=None))
    with pytest.raises(ValueError, match="check_values_every"):
        build_model("minigpt")[0].__class__(vocab_size=8, token_shape=[2, 2], n_layer=1, n_head=1, n_embd=8,
                                            check_values_every=0)
