"""Exact resume: stop at step N, resume with ckpt_path, end where an uninterrupted run ends.

From an epoch-end checkpoint (plain DataLoaders) and from one taken in the
middle of an epoch (vqzoo's ResumableDataLoader, shuffled: its position and
the RNG are in the checkpoint)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from vqzoo.data.batch import TensorBatchDataset
from vqzoo.data.resumable import ResumableDataLoader

from vqzoo import DeadCodeReset, MaskGIT, OrthogonalRegularizer, VectorQuantizer, VQGAN
from vqzoo.losses import AdversarialLoss, NLayerDiscriminator
from vqzoo.optim import spec


def gan_tokenizer() -> VQGAN:
    L.seed_everything(0)
    q = VectorQuantizer(16, 8, regularizers=[OrthogonalRegularizer(10.0)], reset=DeadCodeReset(every=2))
    adv = AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1), disc_start=2)
    return VQGAN(q, in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(), z_channels=8,
                 adversarial=adv, optimizer=spec("torch.optim.Adam", lr=2e-3, betas=(0.5, 0.9)), warmup_steps=4,
                 # an injected scheduler under the warm-up: its state must resume too
                 lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.5))


def image_loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 16, 16, generator=g) * 2 - 1
    return DataLoader(TensorBatchDataset(images=x, labels=torch.zeros(24, dtype=torch.long)), batch_size=8, shuffle=False)


def prior() -> MaskGIT:
    L.seed_everything(0)
    return MaskGIT(vocab_size=8, token_shape=[4, 4], n_layer=1, n_head=2, n_embd=16, embd_pdrop=0.0,
                   resid_pdrop=0.0, attn_pdrop=0.0,
                   optimizer=spec("torch.optim.AdamW", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1), warmup_steps=3)


def token_loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 8, (24, 4, 4), generator=g)
    return DataLoader(TensorBatchDataset(tokens=t), batch_size=8, shuffle=False)


def trainer(root: Path, epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, deterministic=True, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )


def run_and_resume(make_model, make_loader, tmp_path: Path) -> tuple[L.LightningModule, L.LightningModule, L.Trainer, L.Trainer]:  # noqa: ANN001
    full = make_model()
    t_full = trainer(tmp_path / "full", 4)
    t_full.fit(full, make_loader())

    part = make_model()
    trainer(tmp_path / "part", 2).fit(part, make_loader())
    resumed = make_model()  # a fresh process would rebuild the model from scratch
    torch.manual_seed(12345)  # and its RNG would be anywhere: the checkpoint must restore it
    t_resumed = trainer(tmp_path / "part", 4)
    t_resumed.fit(resumed, make_loader(), ckpt_path=tmp_path / "part" / "ckpt" / "last.ckpt")
    return full, resumed, t_full, t_resumed


def assert_same_training_state(a: L.LightningModule, b: L.LightningModule, ta: L.Trainer, tb: L.Trainer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert ta.global_step == tb.global_step
    for oa, ob in zip(ta.optimizers, tb.optimizers):
        for (ka, va), (kb, vb) in zip(oa.state_dict()["state"].items(), ob.state_dict()["state"].items()):
            for name in va:
                assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (ka, name)
    for la, lb in zip(ta.lr_scheduler_configs, tb.lr_scheduler_configs):
        assert la.scheduler.state_dict()["last_epoch"] == lb.scheduler.state_dict()["last_epoch"]
        assert la.scheduler.get_last_lr() == lb.scheduler.get_last_lr()
        assert la.scheduler.optimizer.param_groups[0]["lr"] == lb.scheduler.optimizer.param_groups[0]["lr"]


def test_gan_tokenizer_with_reset_resumes_exactly(tmp_path: Path) -> None:
    full, resumed, tf, tr = run_and_resume(gan_tokenizer, image_loader, tmp_path)
    assert full.generator_step == resumed.generator_step == 12
    assert int(full.quantizer.reset.num_resets) == 6
    assert_same_training_state(full, resumed, tf, tr)
    x = next(iter(image_loader()))["images"]
    full.eval(), resumed.eval()
    with torch.no_grad():
        fa, fb = full(x), resumed(x)
    assert torch.equal(fa[0], fb[0]) and torch.equal(fa[1].loss, fb[1].loss)


def test_prior_resumes_exactly(tmp_path: Path) -> None:
    full, resumed, tf, tr = run_and_resume(prior, token_loader, tmp_path)
    assert tf.global_step == 12
    assert_same_training_state(full, resumed, tf, tr)


# ---------------------------------------------------------------------- mid-epoch
class SaveAtBatch(L.Callback):
    """Save a checkpoint at the end of the ``n``-th training batch (what a kill or a signal leaves)."""

    def __init__(self, n: int, path: Path) -> None:
        self.n, self.path, self.seen = n, path, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen += 1
        if self.seen == self.n:
            trainer.save_checkpoint(self.path)


def shuffled_images() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 16, 16, generator=g) * 2 - 1
    return ResumableDataLoader(TensorBatchDataset(images=x), batch_size=8, shuffle=True, seed=3, drop_last=True)


def shuffled_tokens() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    return ResumableDataLoader(TensorBatchDataset(tokens=torch.randint(0, 8, (24, 4, 4), generator=g)),
                               batch_size=8, shuffle=True, seed=3, drop_last=True)


def dropout_prior() -> MaskGIT:
    # dropout on: the resumed run must also draw the same dropout masks (RNG in the checkpoint)
    L.seed_everything(0)
    return MaskGIT(vocab_size=8, token_shape=[4, 4], n_layer=1, n_head=2, n_embd=16, embd_pdrop=0.1,
                   resid_pdrop=0.1, attn_pdrop=0.0, optimizer=spec("torch.optim.AdamW", lr=1e-2), warmup_steps=3)


def run_and_resume_mid_epoch(make_model, make_loader, tmp_path: Path, stop: int):  # noqa: ANN001, ANN201
    full = make_model()
    ckpt = tmp_path / "mid.ckpt"
    t_full = trainer(tmp_path / "full", 3)
    t_full.callbacks.append(SaveAtBatch(stop, ckpt))
    t_full.fit(full, make_loader())
    state = torch.load(ckpt, weights_only=False)
    resumed = make_model()
    torch.manual_seed(12345)
    t_resumed = trainer(tmp_path / "resumed", 3)
    t_resumed.fit(resumed, make_loader(), ckpt_path=ckpt)
    return full, resumed, t_full, t_resumed, state


def test_gan_tokenizer_resumes_exactly_mid_epoch(tmp_path: Path) -> None:
    # 3 batches per epoch: stop after batch 5 = the middle of epoch 1
    full, resumed, tf, tr, state = run_and_resume_mid_epoch(gan_tokenizer, shuffled_images, tmp_path, stop=5)
    loops = state["loops"]["fit_loop"]
    assert loops["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2, "batch_size": 8}]
    assert full.generator_step == resumed.generator_step == 9
    assert_same_training_state(full, resumed, tf, tr)


def test_prior_resumes_exactly_mid_epoch(tmp_path: Path) -> None:
    full, resumed, tf, tr, state = run_and_resume_mid_epoch(dropout_prior, shuffled_tokens, tmp_path, stop=4)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1, "batch_size": 8}]
    assert tf.global_step == tr.global_step == 9
    assert_same_training_state(full, resumed, tf, tr)


def test_resumable_sampler_orders_and_shards() -> None:
    from vqzoo.data.resumable import ResumableSampler

    ds = list(range(10))
    s = ResumableSampler(ds, shuffle=True, seed=0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    assert sorted(a) == sorted(b) == ds and a != b  # a new order each epoch, every sample once
    s.set_epoch(0)
    s.start = 4
    assert list(s) == a[4:] and list(s) == a  # the skip applies once
