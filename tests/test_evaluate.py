"""vqzoo evaluate, the FID path, and weight EMA.

Offline: a tiny deterministic feature extractor is registered for the tests,
so the whole Fréchet/IS path runs without Inception weights; the Fréchet
distance is checked against an independent float64 computation (scipy sqrtm).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor

from vqzoo import VQGAN, MiniGPT, VectorQuantizer
from vqzoo.checkpoint import export_model, load
from vqzoo.metrics.generation import FeatureExtractor, GenerativeMetrics, register_feature_extractor
from vqzoo.nn.ema import WeightEMA
from vqzoo.optim import spec


class TinyExtractor(FeatureExtractor):
    """A fixed random projection of 8x8-pooled pixels: 6 features, 4 logits."""

    name = "tiny-test"
    label = "tiny test projection"
    num_features = 6
    fid_name = "FD (tiny test features)"

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(64, 10, generator=g))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), 8).flatten(1)
        out = x @ self.proj
        return out[:, :6], out[:, 6:]


register_feature_extractor("tiny-test", TinyExtractor)


def tiny_vqgan(ema_decay: float | None = 0.9, in_channels: int = 1, num_codes: int = 16) -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VectorQuantizer(num_codes, 4), in_channels=in_channels, resolution=16, ch=8, ch_mult=(1, 2),
                 attn_resolutions=(), z_channels=8, optimizer=spec("torch.optim.Adam", lr=2e-3, betas=(0.5, 0.9)), ema_decay=ema_decay)


def data_yaml(tmp: Path, channels: int = 1, resolution: int = 16) -> Path:
    path = tmp / f"data_{channels}_{resolution}.yaml"
    path.write_text(
        "data:\n  class_path: vqzoo.data.images.ImageDataModule\n  init_args:\n    source: mnist5k\n"
        f"    resolution: {resolution}\n    channels: {channels}\n    batch_size: 32\n"
    )
    return path


def evaluate(*args: str) -> int:
    from vqzoo.cli.evaluate import main

    return main(list(args))


# ---------------------------------------------------------------------------- FID path


def frechet_float64(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook Fréchet distance of two Gaussians fitted to the rows of f1, f2 (scipy sqrtm)."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_float64_reference() -> None:
    g = torch.Generator().manual_seed(3)
    real = torch.randn(300, 6, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 6, generator=g, dtype=torch.float64) * 1.3 + 0.4
    m = GenerativeMetrics(None, num_features=6, inception_score=False)
    for chunk in real.split(64):  # streaming updates must equal one pass
        m.update_features(chunk, real=True)
    for chunk in fake.split(50):
        m.update_features(chunk, real=False)
    ref = frechet_float64(real.numpy(), fake.numpy())
    assert m.compute()["fd"] == pytest.approx(ref, rel=1e-6)
    m.reset()
    m.update_features(real, real=True)
    m.update_features(real, real=False)
    assert abs(m.compute()["fd"]) < 1e-6


def test_whole_fid_path_with_registered_extractor() -> None:
    from vqzoo.metrics.generation import build_feature_extractor

    ext = build_feature_extractor("tiny-test")
    g = torch.Generator().manual_seed(4)
    real = torch.rand(40, 1, 16, 16, generator=g) * 2 - 1
    fake = (real + 0.3 * torch.randn(40, 1, 16, 16, generator=g)).clamp(-1, 1)
    m = GenerativeMetrics(ext, is_splits=2)
    m.update_real(real)
    m.update_fake(fake)
    out = m.compute()
    with torch.no_grad():
        fr, ff = ext(real)[0].double().numpy(), ext(fake)[0].double().numpy()
    assert out["fd"] == pytest.approx(frechet_float64(fr, ff), rel=1e-6)
    assert out["is_mean"] >= 1.0
    assert ext.protocol()["distance_name"] == "FD (tiny test features)"


def test_missing_inception_weights_stop_with_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqzoo.metrics.generation import INCEPTION_FILE, build_feature_extractor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE) as info:
        build_feature_extractor("inception")
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)


# ---------------------------------------------------------------------------- weight EMA


def test_weight_ema_matches_hand_computation() -> None:
    p = {"a": torch.tensor([1.0, 2.0]), "b.c": torch.tensor([[0.0]])}
    ema = WeightEMA(0.5)
    ema.attach(p.items())
    expected = {k: v.clone() for k, v in p.items()}
    for n, step in enumerate([torch.tensor([3.0, -1.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 2.0])]):
        p["a"] += step
        p["b.c"] += 1.0
        d = min(0.5, (1 + n) / (10 + n))  # warm-up: 0.1, 0.1818.., 0.25
        for k in p:
            expected[k] = d * expected[k] + (1 - d) * p[k]
        ema.update(p)
    for k in p:
        assert torch.allclose(ema.shadow(k), expected[k], atol=1e-6), k
    assert int(ema.num_updates) == 3
    no_warmup = WeightEMA(0.9, warmup=False)
    no_warmup.attach({"w": torch.zeros(1)}.items())
    no_warmup.update({"w": torch.ones(1)})
    assert torch.allclose(no_warmup.shadow("w"), torch.tensor([0.1]))


def test_ema_rejects_bad_decay() -> None:
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \(0, 1\)"):
        tiny_vqgan(ema_decay=1.5)


def _images(n: int = 16) -> torch.utils.data.DataLoader:
    from vqzoo.data.batch import TensorBatchDataset

    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    return torch.utils.data.DataLoader(TensorBatchDataset(images=x), batch_size=8)


def _trainer(root: Path, **kw) -> L.Trainer:  # noqa: ANN003
    from lightning.pytorch.callbacks import ModelCheckpoint

    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)], **kw)


def test_tokenizer_ema_in_checkpoint_validation_and_export(tmp_path: Path) -> None:
    model = tiny_vqgan(ema_decay=0.9)
    seen: list[Tensor] = []
    orig = model._evaluation_step

    def spy(batch, batch_idx, stage):  # noqa: ANN001
        seen.append(model.decoder.last_layer.detach().clone())
        return orig(batch, batch_idx, stage)

    model._evaluation_step = spy
    trainer = _trainer(tmp_path, max_steps=4, num_sanity_val_steps=0, limit_val_batches=1)
    trainer.fit(model, _images(), _images())
    ema = model.weight_ema
    assert int(ema.num_updates) == 4 and not ema.swapped
    name = next(n for n in ema.names if n.endswith("conv_out.weight") and n.startswith("decoder"))
    # validation ran on the EMA weights, training goes on with the raw ones
    assert torch.equal(seen[-1], ema.shadow(name))
    assert not torch.equal(model.decoder.last_layer, ema.shadow(name))
    # the checkpoint (written while validation had the EMA swapped in) holds raw params + shadows
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"][name], model.state_dict()[name])
    assert torch.equal(ckpt["state_dict"]["weight_ema.shadow__" + name.replace(".", "__")], ema.shadow(name))
    assert not any(k.startswith("weight_ema.shadow__adversarial") for k in ckpt["state_dict"])
    # round trip through the loader keeps both
    again = load(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(again.weight_ema.shadow(name), ema.shadow(name))
    assert torch.equal(dict(again.named_parameters())[name], dict(model.named_parameters())[name])
    import pickle  # picklable (ddp_spawn sends the model to its processes): no lambdas among the hooks

    assert torch.equal(pickle.loads(pickle.dumps(again)).weight_ema.shadow(name), ema.shadow(name))
    # export writes the EMA as the weights and says so
    out = export_model(again, tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["ema_decay"] is None and meta["weights"].startswith("EMA")
    exported = load(out)
    assert exported.weight_ema is None
    assert torch.equal(dict(exported.named_parameters())[name], ema.shadow(name))
    raw = load(export_model(again, tmp_path / "raw", use_ema=False))
    assert torch.equal(dict(raw.named_parameters())[name], dict(model.named_parameters())[name])


def test_ema_resumes_exactly(tmp_path: Path) -> None:
    from test_resume import assert_same_training_state, image_loader, run_and_resume

    from vqzoo import DeadCodeReset
    from vqzoo.losses import AdversarialLoss, NLayerDiscriminator

    def model() -> VQGAN:
        L.seed_everything(0)
        adv = AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1), disc_start=2)
        return VQGAN(VectorQuantizer(16, 8, reset=DeadCodeReset(every=2)), in_channels=1, resolution=16, ch=8,
                     ch_mult=(1, 2), attn_resolutions=(), z_channels=8, adversarial=adv, optimizer=spec("torch.optim.Adam", lr=2e-3, betas=(0.5, 0.9)),
                     ema_decay=0.95)

    full, resumed, tf, tr = run_and_resume(model, image_loader, tmp_path)
    assert int(full.weight_ema.num_updates) == int(resumed.weight_ema.num_updates) == 12
    assert_same_training_state(full, resumed, tf, tr)  # every state_dict entry, shadows included


def test_prior_ema_updates_per_optimizer_step(tmp_path: Path) -> None:
    from vqzoo.data.batch import TensorBatchDataset

    torch.manual_seed(0)
    prior = MiniGPT(vocab_size=8, token_shape=[2, 2], n_layer=1, n_head=1, n_embd=8, ema_decay=0.9)
    tokens = torch.randint(0, 8, (16, 2, 2))
    loader = torch.utils.data.DataLoader(TensorBatchDataset(tokens=tokens), batch_size=4)
    _trainer(tmp_path, max_steps=3, limit_val_batches=0, accumulate_grad_batches=2).fit(prior, loader)
    assert int(prior.weight_ema.num_updates) == 3
    name = prior.weight_ema.names[0]
    assert not torch.equal(prior.weight_ema.shadow(name), dict(prior.named_parameters())[name])


# ---------------------------------------------------------------------------- vqzoo evaluate


@pytest.fixture(scope="module")
def tokenizer_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tok")
    model = tiny_vqgan(ema_decay=None)
    return export_model(model, tmp / "tok")


def test_evaluate_tokenizer_writes_report_with_protocol(tokenizer_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.json"
    rc = evaluate("--model", str(tokenizer_export), "--data", str(data_yaml(tmp_path)), "--num-images", "64",
                  "--feature-extractor", "tiny-test", "--lpips", "off", "--out", str(out))
    assert rc == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["num_images"] == 64 and 0 < m["ssim"] <= 1 and m["psnr"] > 0
    assert m["fd"] >= 0 and m["is_mean"] >= 1 and 1 <= m["codes_used"] <= 16
    assert m["lpips"] is None and "--lpips off" in report["notes"]["lpips"]
    assert report["fd_name"] == "FD (tiny test features)"  # never "rFID" on other features
    proto = report["protocol"]
    ref = proto["reference_set"]
    assert (ref["split"], ref["num_images"], ref["resolution"], ref["channels"], ref["source"]) == ("test", 64, [16, 16], 1, "mnist5k")
    assert proto["feature_extractor"]["name"] == "tiny-test"
    assert proto["backend"]["versions"]["torchmetrics"] and proto["vqzoo_version"]
    assert len(report["model"]["sha256"]) == 64
    assert (out.with_suffix(".md")).read_text().count("\n") == 3
    assert out.with_suffix(".png").is_file()
    # the same images give the same numbers as the metrics computed by hand
    from vqzoo.cli.common import datamodule_from_yaml, split_loader

    model = load(tokenizer_export)
    x = torch.cat([b["images"] for b in split_loader(datamodule_from_yaml(str(data_yaml(tmp_path))), "test")])[:64]
    with torch.no_grad():
        rec = model.detokenize(model.tokenize(x))
    mse = ((rec.clamp(-1, 1) + 1) / 2 - (x + 1) / 2).pow(2).flatten(1).mean(1)
    assert m["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)


def test_evaluate_classifier_fid_is_called_cfid(tokenizer_export: Path, tmp_path: Path) -> None:
    from vqzoo.metrics.classifier import FeatureClassifier

    torch.manual_seed(0)
    FeatureClassifier(1, 16, 10, width=4).eval().save(tmp_path / "clf", {"label": "MNIST classifier"})
    out = tmp_path / "c.json"
    evaluate("--model", str(tokenizer_export), "--data", str(data_yaml(tmp_path)), "--num-images", "32",
             "--feature-extractor", f"classifier:{tmp_path / 'clf'}", "--lpips", "off", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["fd_name"] == "cFID (MNIST classifier features)"
    assert "rFID" not in out.with_suffix(".md").read_text()
    assert len(report["protocol"]["feature_extractor"]["weights_sha256"]) == 64


def test_evaluate_lpips_unavailable_is_reported_or_fails_when_asked(tokenizer_export: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("VQZOO_ALLOW_DOWNLOAD", raising=False)
    out = tmp_path / "l.json"
    args = ["--model", str(tokenizer_export), "--data", str(data_yaml(tmp_path)), "--num-images", "8",
            "--feature-extractor", "none", "--out", str(out)]
    evaluate(*args)
    report = json.loads(out.read_text())
    assert report["metrics"]["lpips"] is None and "vgg16-397923af.pth" in report["notes"]["lpips"]
    assert report["fd_name"] is None and "fd" not in report["metrics"]
    out.unlink()
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        evaluate(*args, "--lpips", "on")
    assert not out.exists()


def test_evaluate_prior_gfid_and_speed(tokenizer_export: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    prior = MiniGPT(vocab_size=16, token_shape=[8, 8], n_layer=1, n_head=1, n_embd=8, tokenizer=str(tokenizer_export),
                    ema_decay=0.99)
    path = export_model(prior, tmp_path / "prior")
    out = tmp_path / "g.json"
    evaluate("--model", str(path), "--data", str(data_yaml(tmp_path)), "--num-images", "20",
             "--feature-extractor", "tiny-test", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["kind"] == "prior" and report["metrics"]["num_generated"] == 20
    assert report["metrics"]["fd"] > 0 and report["metrics"]["images_per_second"] > 0
    assert report["protocol"]["reference_set"]["num_images"] == 500  # the whole test split
    assert len(report["model"]["tokenizer"]["sha256"]) == 64


def test_test_and_validation_log_fid_when_configured(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQGAN(VectorQuantizer(16, 4), in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(),
                  z_channels=8, fid_every_n_epochs=1, fid_feature_extractor="tiny-test")
    trainer = _trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, _images(), _images())
    assert "val/fd" in trainer.callback_metrics and "val/is" in trainer.callback_metrics
    (res,) = trainer.test(model, _images(), verbose=False)
    for key in ("test/psnr", "test/ssim", "test/fd", "test/is", "test/codebook_usage", "test/perplexity",
                "test/codebook_entropy"):
        assert key in res, key
    with pytest.raises(ValueError, match="fid_feature_extractor"):
        VQGAN(VectorQuantizer(16, 4), in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(),
              z_channels=8, fid_every_n_epochs=1)


def test_committed_quickstart_model_reconstructs_well() -> None:
    """The export behind README's numbers and the notebook loads and still reconstructs test digits well."""
    from vqzoo.data.images import ImageDataModule

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "quickstart_tokenizer"
    model = load(path)
    assert json.loads((path / "config.json").read_text())["weights"].startswith("EMA")
    dm = ImageDataModule(source="mnist5k", resolution=32, channels=1, batch_size=100)
    dm.setup("test")
    x = next(iter(dm.test_dataloader()))["images"]
    with torch.no_grad():
        idx = model.tokenize(x)
        rec = model.detokenize(idx).clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).flatten(1).mean(1)
    assert float((10 * torch.log10(1 / mse)).mean()) > 24.0
    assert idx.shape == (100, 8, 8) and idx.unique().numel() >= 80
