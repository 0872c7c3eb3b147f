"""`vqzoo convert`: parity with the peers' own code, bad inputs, use of the result, the Hub.

The peers are built from their own pip packages (the ``convert`` extra):
taming-transformers' ``Encoder``/``Decoder``/``VectorQuantizer2``/
``NLayerDiscriminator`` (``taming.models.vqgan`` itself cannot be imported
with current Lightning: it imports ``pytorch_lightning.utilities.distributed``,
so the ``VQModel`` is joined here exactly as taming's ``encode``/``decode``
do) and diffusers' ``VQModel``. Every weight is randomised (norms and the
codebook included, so a swapped key cannot hide behind an identical default),
saved in the peer's format, converted, and compared: tokens equal, images
within 1e-4 (float32).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from vqzoo.checkpoint import load
from vqzoo.cli import main
from vqzoo.convert import ConversionError, UnsupportedError, convert_diffusers, convert_taming

taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
taming_quantize = pytest.importorskip("taming.modules.vqvae.quantize")
taming_disc = pytest.importorskip("taming.modules.discriminator.model")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
PARITY: dict[str, dict[str, float]] = {}  # printed at the end of the module (pytest -s) for the report


# ---------------------------------------------------------------------- peers
class TamingVQModel(nn.Module):
    """taming.models.vqgan.VQModel's modules and its encode/decode, without its Lightning import."""

    def __init__(self, ddconfig: dict[str, Any], n_embed: int, embed_dim: int, disc: dict[str, Any] | None):
        super().__init__()
        self.encoder = taming_model.Encoder(**ddconfig)
        self.decoder = taming_model.Decoder(**ddconfig)
        self.quantize = taming_quantize.VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if disc is not None:
            self.loss = nn.Module()
            self.loss.discriminator = taming_disc.NLayerDiscriminator(**disc)
            self.loss.perceptual_loss = nn.Module()  # stands in for LPIPS (its VGG weights need the network)
            self.loss.perceptual_loss.lin0 = nn.Conv2d(64, 1, 1, bias=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, _, (_, _, idx) = self.quantize(self.quant_conv(self.encoder(x)))
        return quant, idx

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "embedding" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.ndim == 1 and name.endswith("weight"):  # norm scales
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(1 + 0.5 * torch.rand(b.shape, generator=g))


def _taming_case(tmp: Path, *, ch: int, ch_mult: list[int], num_res_blocks: int, attn: list[int], res: int,
                 channels: int, z: int, n_embed: int, embed_dim: int, disc: bool, seed: int = 0,
                 extra_params: dict[str, Any] | None = None, target: str = "taming.models.vqgan.VQModel",
                 global_step: int = 0) -> tuple[TamingVQModel, Path, Path]:
    dd = {"double_z": False, "z_channels": z, "resolution": res, "in_channels": channels, "out_ch": channels,
          "ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks, "attn_resolutions": attn, "dropout": 0.0}
    disc_cfg = {"input_nc": channels, "ndf": 8, "n_layers": 2} if disc else None
    torch.manual_seed(seed)
    peer = TamingVQModel(dd, n_embed, embed_dim, disc_cfg).eval()
    _randomize(peer, seed)
    if disc:
        lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                      "params": {"disc_conditional": False, "disc_in_channels": channels, "disc_start": 10,
                                 "disc_weight": 0.8, "codebook_weight": 1.0, "disc_num_layers": 2, "disc_ndf": 8,
                                 "perceptual_weight": 0.0}}
    else:
        lossconfig = {"target": "torch.nn.Identity"}
    params = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dd, "lossconfig": lossconfig,
              **(extra_params or {})}
    cfg = {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}
    cfg_path, ckpt_path = tmp / "model.yaml", tmp / "model.ckpt"
    cfg_path.write_text(yaml.safe_dump(cfg))
    torch.save({"state_dict": peer.state_dict(), "global_step": global_step, "epoch": 3}, ckpt_path)
    return peer, ckpt_path, cfg_path


def _images(channels: int, res: int, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, res, res, generator=g) * 2 - 1


def _record(case: str, tokens_ref: torch.Tensor, tokens: torch.Tensor, img_ref: torch.Tensor,
            img: torch.Tensor) -> None:
    agreement = (tokens_ref.reshape(tokens.shape) == tokens).float().mean().item()
    diff = (img_ref - img).abs().max().item()
    PARITY[case] = {"token_agreement": agreement, "max_abs_diff": diff, "tokens": tokens.numel(),
                    "distinct_codes": int(tokens.unique().numel()), "image_max_abs": img_ref.abs().max().item()}
    # a meaningful comparison: many codes in use, images far from zero
    assert PARITY[case]["distinct_codes"] >= 5, PARITY[case]
    assert PARITY[case]["image_max_abs"] > 0.1, PARITY[case]
    assert agreement == 1.0, f"{case}: tokens agree on {agreement:.4f}"
    assert diff <= TOL, f"{case}: max abs diff {diff:.3g}"


TAMING_CASES = {
    # ImageNet-VQGAN-like: attention at the lowest level, discriminator kept, 3 channels
    "taming_f2_attn8_disc": dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn=[8], res=16, channels=3, z=8,
                                 n_embed=32, embed_dim=4, disc=True),
    # LDM VQ-f4-like: no attention outside the mid block, Identity loss, 1 channel, sane_index_shape
    "taming_f4_noattn_gray": dict(ch=32, ch_mult=[1, 1, 2], num_res_blocks=2, attn=[], res=32, channels=1, z=3,
                                  n_embed=64, embed_dim=3, disc=False,
                                  extra_params={"sane_index_shape": True},
                                  target="ldm.models.autoencoder.VQModel"),
    # attention at two levels, wide codes
    "taming_f4_attn2levels": dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn=[8, 4], res=16, channels=3, z=16,
                                  n_embed=16, embed_dim=16, disc=False),
}


@pytest.mark.parametrize("case", list(TAMING_CASES))
def test_taming_parity(tmp_path: Path, case: str) -> None:
    kw = TAMING_CASES[case]
    peer, ckpt, cfg = _taming_case(tmp_path, **kw)
    out = convert_taming(ckpt, cfg, tmp_path / "export")
    model = load(out)
    x = _images(kw["channels"], kw["res"])
    with torch.no_grad():
        quant, idx_ref = peer.encode(x)
        img_ref = peer.decode(quant)
        idx = model.tokenize(x)
        img = model.detokenize(idx)
        img_fwd, _ = model(x)
    side = kw["res"] // 2 ** (len(kw["ch_mult"]) - 1)
    assert idx.shape == (3, side, side) and idx.dtype == torch.int64
    _record(case, idx_ref, idx, img_ref, img)
    assert (img_fwd - img_ref).abs().max().item() <= TOL
    meta = json.loads((out / "config.json").read_text())
    assert meta["class_path"] == "vqzoo.tokenizers.vqgan.VQGAN"
    conv = meta["converted_from"]
    assert any("beta=0.25 on the commitment term" in d for d in conv["differences"])
    assert meta["config"]["quantizer"]["init_args"]["beta"] == 0.25
    if kw["disc"]:
        disc_ref = peer.loss.discriminator
        disc = model.adversarial.discriminator.eval()
        with torch.no_grad():
            d_diff = (disc_ref(x) - disc(x)).abs().max().item()
        PARITY[case]["discriminator_max_abs_diff"] = d_diff
        assert d_diff <= TOL
        assert any("perceptual_loss" in d for d in conv["dropped"])
        assert any("discriminator" in k for k in conv["kept"])
        assert "perceptual" not in " ".join(load(out).state_dict())


def test_taming_legacy_quantizer_loss_reproduces_taming_loss(tmp_path: Path) -> None:
    peer, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f2_attn8_disc"])
    legacy = load(convert_taming(ckpt, cfg, tmp_path / "legacy", quantizer_loss="taming"))
    default = load(convert_taming(ckpt, cfg, tmp_path / "default"))
    x = _images(3, 16)
    z = peer.quant_conv(peer.encoder(x))
    _, loss_ref, _ = peer.quantize(z)  # taming: ||sg(zq)-z||^2 + 0.25 ||zq-sg(z)||^2
    for m in (legacy, default):
        m.train()
    q_legacy = legacy.quantizer(legacy.encode(x))
    q_default = default.quantizer(default.encode(x))
    assert torch.allclose(q_legacy.loss, loss_ref, rtol=1e-5, atol=1e-6)
    # Forward values coincide (both terms are the same MSE); the gradients differ: check the codebook's.
    g_ref = torch.autograd.grad(loss_ref, peer.quantize.embedding.weight)[0]
    g_legacy = torch.autograd.grad(q_legacy.loss, legacy.quantizer.codebook.weight)[0][0]
    g_default = torch.autograd.grad(q_default.loss, default.quantizer.codebook.weight)[0][0]
    assert torch.allclose(g_legacy, g_ref, atol=1e-6)
    assert torch.allclose(g_default, 4 * g_ref, atol=1e-6)  # vqzoo: weight 1.0 on the codebook term


def test_taming_disc_start_moves_with_global_step(tmp_path: Path) -> None:
    _, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f2_attn8_disc"], global_step=4)
    out = convert_taming(ckpt, cfg, tmp_path / "e")
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["adversarial"]["init_args"]["disc_start"] == 6  # taming's 10 minus 4 steps done
    assert meta["converted_from"]["global_step"] == 4


def test_taming_ema_weights(tmp_path: Path) -> None:
    peer, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    state = torch.load(ckpt)["state_dict"]
    ema = {"model_ema." + k.replace(".", ""): v + 0.01 for k, v in state.items()}
    torch.save({"state_dict": {**state, **ema, "model_ema.decay": torch.tensor(0.999)}}, ckpt)
    raw = load(convert_taming(ckpt, cfg, tmp_path / "raw"))
    used = load(convert_taming(ckpt, cfg, tmp_path / "ema", use_ema_weights=True))
    assert torch.equal(raw.encoder.conv_in.weight, state["encoder.conv_in.weight"])
    assert torch.allclose(used.encoder.conv_in.weight, state["encoder.conv_in.weight"] + 0.01)
    meta = json.loads((tmp_path / "raw" / "config.json").read_text())
    assert any("model_ema" in d for d in meta["converted_from"]["dropped"])


# ---------------------------------------------------------------------- diffusers
DIFFUSERS_CASES = {
    "diffusers_group_midattn": dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                                    vq_embed_dim=3, num_vq_embeddings=32, in_channels=3, out_channels=3,
                                    norm_type="group", sample_size=16),
    "diffusers_group_attn_gray": dict(block_out_channels=(32, 32, 64),
                                      down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                                                        "DownEncoderBlock2D"),
                                      up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
                                      layers_per_block=2, latent_channels=3, num_vq_embeddings=64, in_channels=1,
                                      out_channels=1, norm_type="group", sample_size=16),
    # Kandinsky 2.2 MoVQ layout, scaled down: spatial norm, attention at the lowest level
    "diffusers_spatial_movq": dict(block_out_channels=(32, 64, 64),
                                   down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D",
                                                     "AttnDownEncoderBlock2D"),
                                   up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
                                   layers_per_block=1, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=48,
                                   in_channels=3, out_channels=3, norm_type="spatial", sample_size=16),
    "diffusers_spatial_gray": dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, latent_channels=2,
                                   vq_embed_dim=2, num_vq_embeddings=16, in_channels=1, out_channels=1,
                                   norm_type="spatial", sample_size=16),
}


def _diffusers_case(tmp: Path, kw: dict[str, Any], seed: int = 0, safe: bool = True) -> tuple[Any, Path]:
    torch.manual_seed(seed)
    peer = diffusers.VQModel(**kw).eval()
    _randomize(peer, seed)
    path = tmp / "peer"
    peer.save_pretrained(path, safe_serialization=safe)
    return peer, path


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_diffusers_parity(tmp_path: Path, case: str) -> None:
    kw = DIFFUSERS_CASES[case]
    peer, path = _diffusers_case(tmp_path, kw)
    out = convert_diffusers(path, tmp_path / "export")
    model = load(out)
    expected = "MoVQ" if kw["norm_type"] == "spatial" else "VQGAN"
    assert type(model).__name__ == expected
    x = _images(kw["in_channels"], 16)
    with torch.no_grad():
        h = peer.encode(x).latents
        quant, _, (_, _, idx_ref) = peer.quantize(h)
        img_ref = peer.decode(h).sample  # diffusers quantizes inside decode
        idx = model.tokenize(x)
        img = model.detokenize(idx)
        img_fwd, _ = model(x)
    _record(case, idx_ref, idx, img_ref, img)
    assert (img_fwd - img_ref).abs().max().item() <= TOL
    meta = json.loads((out / "config.json").read_text())
    assert meta["converted_from"]["original_config"]["norm_type"] == kw["norm_type"]
    assert meta["config"]["reconstruction_loss"] == ("l2" if kw["norm_type"] == "spatial" else "l1")


def test_diffusers_bin_weights_and_pipeline_subfolder(tmp_path: Path) -> None:
    kw = DIFFUSERS_CASES["diffusers_spatial_gray"]
    peer, path = _diffusers_case(tmp_path, kw, safe=False)
    assert (path / "diffusion_pytorch_model.bin").is_file()
    pipeline = tmp_path / "pipe"
    path.rename(pipeline.mkdir() or pipeline / "movq")
    model = load(convert_diffusers(pipeline, tmp_path / "export"))  # finds movq/ by itself
    x = _images(1, 16)
    with torch.no_grad():
        assert torch.equal(peer.quantize(peer.encode(x).latents)[2][2].reshape(3, 8, 8), model.tokenize(x))


# ---------------------------------------------------------------------- refusals and bad input
def test_unsupported_taming_features_are_refused(tmp_path: Path) -> None:
    kw = dict(TAMING_CASES["taming_f4_attn2levels"])
    _, ckpt, cfg = _taming_case(tmp_path, **kw, target="taming.models.vqgan.GumbelVQ")
    with pytest.raises(UnsupportedError, match="Gumbel"):
        convert_taming(ckpt, cfg, tmp_path / "a")
    _, ckpt, cfg = _taming_case(tmp_path, **kw, extra_params={"remap": "used.npy"})
    with pytest.raises(UnsupportedError, match="remap"):
        convert_taming(ckpt, cfg, tmp_path / "b")
    _, ckpt, cfg = _taming_case(tmp_path, **kw, target="ldm.models.autoencoder.AutoencoderKL")
    with pytest.raises(UnsupportedError, match="KL autoencoder"):
        convert_taming(ckpt, cfg, tmp_path / "c")
    assert not any(p.name in ("a", "b", "c") or p.name.startswith(".") for p in tmp_path.iterdir())


def test_yaml_of_another_model_type(tmp_path: Path) -> None:
    _, ckpt, _ = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                                               "params": {"unet_config": {}}}}))
    with pytest.raises(ConversionError, match="not a taming / latent-diffusion VQModel"):
        convert_taming(ckpt, other, tmp_path / "out")
    (tmp_path / "trainer.yaml").write_text("trainer:\n  max_steps: 3\n")
    with pytest.raises(ConversionError, match="not a taming / latent-diffusion model config"):
        convert_taming(ckpt, tmp_path / "trainer.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_keys_that_do_not_fit_the_config_are_named(tmp_path: Path) -> None:
    kw = dict(TAMING_CASES["taming_f2_attn8_disc"])
    _, ckpt, cfg = _taming_case(tmp_path, **kw)
    # the same checkpoint with a config of another codebook size and without the attention
    bad = yaml.safe_load(cfg.read_text())
    bad["model"]["params"]["n_embed"] = 64
    bad["model"]["params"]["ddconfig"]["attn_resolutions"] = []
    cfg.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConversionError) as info:
        convert_taming(ckpt, cfg, tmp_path / "out")
    msg = str(info.value)
    assert "quantize.embedding.weight: checkpoint (32, 4) vs config (64, 4)" in msg
    assert "unexpected" in msg and "encoder.down.1.attn.0.norm.weight (64,)" in msg
    # a checkpoint missing a tensor
    state = torch.load(ckpt)["state_dict"]
    del state["decoder.conv_out.bias"]
    torch.save({"state_dict": state}, ckpt)
    cfg.write_text(yaml.safe_dump({**bad, "model": {**bad["model"], "params": {
        **bad["model"]["params"], "n_embed": 32, "ddconfig": {**bad["model"]["params"]["ddconfig"],
                                                               "attn_resolutions": [8]}}}}))
    with pytest.raises(ConversionError, match=r"missing from the checkpoint, first: decoder\.conv_out\.bias \(3,\)"):
        convert_taming(ckpt, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_and_unsafe_checkpoints(tmp_path: Path) -> None:
    _, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    data = ckpt.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        convert_taming(truncated, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (Path("/tmp/vqzoo-convert-evil").touch, ())


class _OldCallback:  # old Lightning keyed callback states by class
    pass


def test_old_lightning_pickles_load_without_running_code(tmp_path: Path) -> None:
    peer, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    marker = Path("/tmp/vqzoo-convert-evil")
    marker.unlink(missing_ok=True)
    state = torch.load(ckpt)["state_dict"]
    torch.save({"state_dict": state, "callbacks": {_OldCallback: {"best": 1.0}}, "hparams": _Evil(),
                "global_step": 7}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)  # what a plain safe load says
    model = load(convert_taming(ckpt, cfg, tmp_path / "out"))
    assert not marker.exists()  # the pickled call was never made
    assert torch.equal(model.decoder.conv_out.weight, state["decoder.conv_out.weight"])


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["convert", "taming", "--ckpt", str(ckpt), "--config", str(cfg), "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["convert", "taming", "--ckpt", str(ckpt), "--config", str(cfg), "--out", str(out),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "finetune.yaml", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_diffusers_bad_inputs(tmp_path: Path) -> None:
    kw = DIFFUSERS_CASES["diffusers_group_midattn"]
    _, path = _diffusers_case(tmp_path, kw)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKL"}))
    with pytest.raises(ConversionError, match="AutoencoderKL"):
        convert_diffusers(path, tmp_path / "out")
    (path / "config.json").write_text(json.dumps({**cfg, "norm_num_groups": 16}))
    with pytest.raises(UnsupportedError, match="norm_num_groups"):
        convert_diffusers(path, tmp_path / "out")
    (path / "config.json").write_text(json.dumps({**cfg, "num_vq_embeddings": 33}))
    with pytest.raises(ConversionError, match=r"quantize\.embedding\.weight: checkpoint \(32, 3\) vs config \(33, 3\)"):
        convert_diffusers(path, tmp_path / "out")
    (path / "config.json").write_text(json.dumps(cfg))
    weights = path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        convert_diffusers(path, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        convert_diffusers(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the Hub
def test_hub_ids_offline_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqzoo import hub

    calls: list[dict[str, Any]] = []

    def fake(repo_id: str, **kw: Any) -> str:
        calls.append(kw)
        raise FileNotFoundError("not in cache")

    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        load("someone/some-tokenizer")
    assert calls and all(c.get("local_files_only") for c in calls)  # only the cache was asked
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        convert_diffusers("kandinsky-community/kandinsky-2-2-decoder", tmp_path / "out")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(hub.HubError, match="cannot be downloaded"):
        load("someone/some-tokenizer")
    assert calls[-1].get("etag_timeout") is not None  # the online try had a short timeout
    assert not (tmp_path / "out").exists()
    # local-looking paths never go online: a missing one is "not found"
    calls.clear()
    for local in ("missing.ckpt", "exports/te_vqgan.safetensors", str(tmp_path / "nowhere")):
        with pytest.raises(FileNotFoundError):
            load(local)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports").mkdir()
    with pytest.raises(FileNotFoundError):
        load("exports/te_vqgan")
    assert calls == []


def test_push_and_load_through_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqzoo import hub

    _, ckpt, cfg = _taming_case(tmp_path, **TAMING_CASES["taming_f4_attn2levels"])
    export = convert_taming(ckpt, cfg, tmp_path / "export")
    remote = tmp_path / "remote"

    class FakeApi:
        def create_repo(self, repo_id: str, private: Any = None, exist_ok: bool = False) -> str:
            (remote / repo_id).mkdir(parents=True, exist_ok=exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id: str, folder_path: str, **kw: Any) -> None:
            for f in Path(folder_path).iterdir():
                (remote / repo_id / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(hub, "_api", FakeApi)
    assert main(["export", "--ckpt", str(export), "--push-to-hub", "me/tiny-vqgan"]) == 0
    assert (remote / "me/tiny-vqgan/model.safetensors").is_file()

    def fake_download(repo_id: str, **kw: Any) -> str:
        return str(remote / repo_id)

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    from_hub, local = load("me/tiny-vqgan"), load(export)
    x = _images(3, 16)
    assert torch.equal(from_hub.tokenize(x), local.tokenize(x))


# ---------------------------------------------------------------------- using the result
def test_converted_model_encodes_fine_tunes_and_serves_a_prior(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kw = dict(TAMING_CASES["taming_f2_attn8_disc"], channels=1, res=16)
    peer, ckpt, cfg = _taming_case(tmp_path, **kw)
    assert main(["convert", "taming", "--ckpt", str(ckpt), "--config", str(cfg), "--out", "export"]) == 0
    export = tmp_path / "export"
    data = {"data": {"class_path": "vqzoo.data.images.ImageDataModule",
                     "init_args": {"source": "mnist5k", "resolution": 16, "channels": 1, "batch_size": 4,
                                   "limit_train": 8}}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))

    # vqzoo encode with the converted tokenizer
    assert main(["encode", "--tokenizer", "export", "--data", "data.yaml", "--out", "tokens"]) == 0
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    assert meta["vocab_size"] == 32 and list(meta["token_shape"]) == [8, 8]

    # fine-tuning: one generator + discriminator step from the converted weights (disc_start 10 -> force 0)
    before = load(export)
    main(["fit", "--config", "export/finetune.yaml", "--config", "data.yaml",
          "--model.init_args.adversarial.init_args.disc_start", "0",
          "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", "ft", "--trainer.enable_progress_bar", "false"])
    last = next(tmp_path.glob("ft/**/last.ckpt"))
    after = load(last)
    assert after.generator_step == 1
    # started from the converted weights: one Adam step moves each weight by at most ~lr
    lr = before.configure_optimizers()[0][0].param_groups[0]["lr"]
    for name in ("decoder.conv_out.weight", "quantizer.codebook.weight", "adversarial.discriminator.main.0.weight"):
        b, a = before.state_dict()[name], after.state_dict()[name]
        assert not torch.equal(a, b), name
        assert (a - b).abs().max().item() <= 1.5 * lr, name
    # as a prior's tokenizer
    from vqzoo.priors import MiniGPT

    prior = MiniGPT(vocab_size=32, token_shape=[8, 8], preset="gpt-nano", tokenizer=str(export))
    assert prior.frozen_tokenizer is not None
    x = _images(1, 16)
    assert torch.equal(prior.frozen_tokenizer.tokenize(x), before.tokenize(x))


def test_parity_table() -> None:
    """Prints the parity numbers of this module's cases (run with -s)."""
    for case, row in sorted(PARITY.items()):
        print(f"{case}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
