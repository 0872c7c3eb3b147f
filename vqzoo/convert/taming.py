"""taming-transformers / latent-diffusion ``VQModel`` checkpoints -> a vqzoo ``VQGAN`` export.

Meant for the published ImageNet VQGANs (f16-1024, f16-16384) and the
latent-diffusion VQ first stages (VQ-f4, VQ-f8, ...): a Lightning ``.ckpt``
whose ``state_dict`` holds ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*``, ``quantize.embedding.weight`` and, when trained with
``VQLPIPSWithDiscriminator``, ``loss.discriminator.*`` and
``loss.perceptual_loss.*``; plus its YAML (``model: {target, params:
{embed_dim, n_embed, ddconfig, lossconfig, ...}}``).

The architectures are the same function: vqzoo's :mod:`vqzoo.nn.convnet` is
taming's layout (GroupNorm(32, eps 1e-6), zero pad (0, 1, 0, 1) before the
stride-2 downsampling conv, nearest x2 + conv upsampling, single-head
attention, ``num_res_blocks + 1`` decoder blocks per level), so the key table
is a renaming (``downsample``/``upsample`` -> ``resample``,
``quantize.embedding`` -> ``quantizer.codebook``, ``loss.discriminator`` ->
``adversarial.discriminator``) and the codebook gains its group axis.
Attention runs through SDPA and the upsampling as a transposed conv in vqzoo:
the same function up to float rounding (tests: tokens equal, images within 1e-4).

What is kept, dropped, refused:

* kept: the discriminator (taming's ``NLayerDiscriminator`` is vqzoo's
  :class:`~vqzoo.losses.adversarial.NLayerDiscriminator` with ``norm="batch"``,
  same ``main.{i}`` layout, running statistics included), and the loss
  weights of ``lossconfig`` (pixel, perceptual, codebook, disc weight and
  factor, hinge/vanilla). ``disc_start`` is moved by the checkpoint's
  ``global_step`` (taming counted batches = generator steps), so the
  discriminator comes on where it would have in taming.
* dropped: ``loss.perceptual_loss.*`` (LPIPS; vqzoo builds its own from the
  user's cache when fine-tuning), ``model_ema.*`` unless ``use_ema_weights``
  (then the EMA weights *are* the weights), and any other ``loss.*`` entry.
  Every drop is listed under ``converted_from`` in ``config.json``.
* refused, with the reason: ``GumbelVQ`` / ``EMAVQ`` / other targets, ``remap``
  (index remapping to a used subset), ``double_z``, ``resamp_with_conv:
  false``, ``tanh_out``/``give_pre_end``, ``in_channels != out_ch``,
  ``disc_conditional``, ``use_actnorm``, widths not a multiple of 32.

The legacy β placement: taming's ``VectorQuantizer2(beta=0.25, legacy=True)``
computes ``‖sg(zq) − z‖² + 0.25·‖zq − sg(z)‖²`` (β on the codebook term).
The forward pass does not depend on it, so indices and images are taming's
exactly. For fine-tuning, ``quantizer_loss="vqzoo"`` (default) puts β = 0.25
on the commitment term (docs/pitfalls.md #1); ``"taming"`` keeps taming's weights
(``beta=1.0, codebook_loss_weight=0.25``). The choice is recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import torch

from vqzoo.convert.common import (
    ConversionError,
    KeyTable,
    UnsupportedError,
    build,
    check_request,
    map_state,
    read_torch_checkpoint,
    write_export,
)
from vqzoo.io import sha256_file

__all__ = ["convert_taming", "taming_to_vqzoo_config", "read_taming_config"]

VQGAN_CLASS = "vqzoo.tokenizers.vqgan.VQGAN"
_VQ_TARGETS = {
    "taming.models.vqgan.VQModel",
    "taming.models.vqgan.VQNoDiscModel",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
}
_REFUSED_TARGETS = {
    "taming.models.vqgan.GumbelVQ": "a Gumbel-softmax quantizer (vqzoo's quantizer is nearest-code VQ)",
    "taming.models.vqgan.EMAVQ": "an EMA-updated codebook whose statistics (cluster_size, embed_avg) "
    "follow taming's conventions, not vqzoo's; not covered by this converter",
    "taming.models.vqgan.VQSegmentationModel": "a segmentation VQ model (its output is class logits)",
    "ldm.models.autoencoder.AutoencoderKL": "a KL autoencoder (continuous latents, no codebook)",
    "taming.models.cond_transformer.Net2NetTransformer": "a transformer prior, not a tokenizer",
}
_LOSS_TARGETS = {
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.VQLPIPSWithDiscriminator",
}
_NO_LOSS_TARGETS = {"torch.nn.Identity", "taming.modules.losses.vqperceptual.DummyLoss",
                    "taming.modules.losses.DummyLoss"}


# ---------------------------------------------------------------------- config
def read_taming_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{target, params}`` of a taming / latent-diffusion model YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConversionError(f"{path} is not valid YAML: {err}") from err
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        base_lr = cfg["model"].get("base_learning_rate")
        cfg = dict(cfg["model"])
        cfg.setdefault("base_learning_rate", base_lr)
    if not isinstance(cfg, dict) or "target" not in cfg:
        raise ConversionError(
            f"{path} is not a taming / latent-diffusion model config: expected `model: {{target: "
            "taming.models.vqgan.VQModel, params: {...}}}` (or a bare target/params mapping)"
        )
    return cfg


def _check_ddconfig(dd: dict[str, Any], source: str) -> None:
    required = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")
    absent = [k for k in required if k not in dd]
    if absent:
        raise ConversionError(f"{source}: ddconfig lacks {', '.join(absent)}")
    if dd.get("double_z", False):
        raise UnsupportedError(f"{source}: ddconfig.double_z is true: that is a KL autoencoder's encoder, not a VQModel's")
    if not dd.get("resamp_with_conv", True):
        raise UnsupportedError(f"{source}: resamp_with_conv: false (average-pool / plain nearest resampling) "
                               "is not a vqzoo layout")
    for flag in ("tanh_out", "give_pre_end"):
        if dd.get(flag, False):
            raise UnsupportedError(f"{source}: ddconfig.{flag} is true; vqzoo's decoder has no such output option")
    if dd.get("attn_type", "vanilla") not in ("vanilla", "vanilla-xformers"):
        raise UnsupportedError(f"{source}: ddconfig.attn_type={dd['attn_type']!r}; only vanilla attention converts")
    if dd.get("out_ch", dd["in_channels"]) != dd["in_channels"]:
        raise UnsupportedError(
            f"{source}: in_channels={dd['in_channels']} but out_ch={dd['out_ch']}; a vqzoo tokenizer "
            "reconstructs the channels it encodes"
        )
    widths = [dd["ch"] * m for m in dd["ch_mult"]]
    if any(w % 32 for w in widths):
        raise UnsupportedError(
            f"{source}: level widths {widths} are not multiples of 32; taming's GroupNorm(32) needs them to be"
        )


def taming_to_vqzoo_config(
    cfg: dict[str, Any],
    source: str = "config",
    quantizer_loss: Literal["vqzoo", "taming"] = "vqzoo",
    global_step: int = 0,
) -> tuple[dict[str, Any], list[str], bool]:
    """vqzoo ``VQGAN`` init args for a taming config; also the notes and whether a discriminator is expected."""
    target = cfg.get("target")
    if target in _REFUSED_TARGETS:
        raise UnsupportedError(f"{source}: {target} is {_REFUSED_TARGETS[target]}; vqzoo convert taming handles "
                               f"{', '.join(sorted(_VQ_TARGETS))}")
    if target not in _VQ_TARGETS:
        raise ConversionError(
            f"{source}: model target {target!r} is not a taming / latent-diffusion VQModel "
            f"(expected one of {', '.join(sorted(_VQ_TARGETS))})"
        )
    params = cfg.get("params") or {}
    if not isinstance(params, dict):
        raise ConversionError(f"{source}: params must be a mapping")
    if params.get("remap") is not None:
        raise UnsupportedError(
            f"{source}: remap={params['remap']!r} re-indexes tokens to a subset of used codes through an "
            "external .npy file; vqzoo tokens index the codebook directly. Convert a model without remap"
        )
    for key in ("embed_dim", "n_embed", "ddconfig"):
        if key not in params:
            raise ConversionError(f"{source}: params lacks {key!r} (a VQModel config has embed_dim, n_embed, ddconfig)")
    dd = params["ddconfig"]
    _check_ddconfig(dd, source)
    notes: list[str] = []

    levels = [dd["resolution"] // 2**i for i in range(len(dd["ch_mult"]))]
    attn = [r for r in dd["attn_resolutions"] if r in levels]
    if len(attn) != len(dd["attn_resolutions"]):
        notes.append(f"attn_resolutions {list(dd['attn_resolutions'])} -> {attn}: taming ignores entries that "
                     f"match no level (levels {levels}); vqzoo refuses them, so they are dropped")
    beta, cb_weight = (0.25, 1.0) if quantizer_loss == "vqzoo" else (1.0, 0.25)
    config: dict[str, Any] = {
        "quantizer": {
            "class_path": "vqzoo.VectorQuantizer",
            "init_args": {"num_codes": int(params["n_embed"]), "dim": int(params["embed_dim"]),
                          "beta": beta, "codebook_loss_weight": cb_weight},
        },
        "in_channels": int(dd["in_channels"]),
        "resolution": int(dd["resolution"]),
        "ch": int(dd["ch"]),
        "ch_mult": [int(m) for m in dd["ch_mult"]],
        "num_res_blocks": int(dd["num_res_blocks"]),
        "attn_resolutions": [int(r) for r in attn],
        "z_channels": int(dd["z_channels"]),
        "dropout": float(dd.get("dropout", 0.0)),
        "downsample": "strided_conv",
        "replicate_padding": False,
    }
    if quantizer_loss == "vqzoo":
        notes.append("quantizer loss: taming's VectorQuantizer2(legacy=True) puts beta=0.25 on the codebook term "
                     "(||sg(z)-e||^2) and 1.0 on the commitment term; this export puts beta=0.25 on the commitment "
                     "term and 1.0 on the codebook term (pitfalls #1). Tokens and reconstructions are unchanged; "
                     "fine-tuning gradients differ. Convert with --quantizer-loss taming to keep taming's weights")
    else:
        notes.append("quantizer loss: taming's legacy weights kept (beta=1.0 on the commitment term, "
                     "codebook_loss_weight=0.25), i.e. taming's training objective exactly")
    if "base_learning_rate" in cfg and cfg["base_learning_rate"] is not None:
        notes.append(f"taming's base_learning_rate {cfg['base_learning_rate']} was scaled by GPUs x batch size "
                     "at launch; set model.init_args.optimizer.init_args.lr yourself (vqzoo default kept)")

    loss = params.get("lossconfig") or {}
    loss_target = loss.get("target") if isinstance(loss, dict) else None
    with_disc = False
    if loss_target in _LOSS_TARGETS:
        lp = loss.get("params") or {}
        if lp.get("disc_conditional", False):
            raise UnsupportedError(f"{source}: disc_conditional discriminators are not available in vqzoo")
        if lp.get("use_actnorm", False):
            raise UnsupportedError(f"{source}: use_actnorm (ActNorm in the discriminator) is not available in vqzoo; "
                                   "vqzoo's NLayerDiscriminator offers batch, group, spectral or no norm")
        disc_loss = lp.get("disc_loss", "hinge")
        if disc_loss not in ("hinge", "vanilla"):
            raise UnsupportedError(f"{source}: disc_loss {disc_loss!r}; vqzoo offers hinge and vanilla")
        start = int(lp.get("disc_start", 0))
        moved = max(0, start - int(global_step))
        with_disc = True
        config.update({
            "reconstruction_loss": "l1",
            "reconstruction_weight": float(lp.get("pixelloss_weight", 1.0)),
            "perceptual_weight": float(lp.get("perceptual_weight", 1.0)),
            "codebook_weight": float(lp.get("codebook_weight", 1.0)),
            "adversarial": {
                "class_path": "vqzoo.losses.adversarial.AdversarialLoss",
                "init_args": {
                    "discriminator": {
                        "class_path": "vqzoo.losses.adversarial.NLayerDiscriminator",
                        "init_args": {"in_channels": int(lp.get("disc_in_channels", 3)),
                                      "ndf": int(lp.get("disc_ndf", 64)),
                                      "n_layers": int(lp.get("disc_num_layers", 3)), "norm": "batch"},
                    },
                    "disc_start": moved,
                    "disc_weight": float(lp.get("disc_weight", 1.0)),
                    "disc_factor": float(lp.get("disc_factor", 1.0)),
                    "loss": disc_loss,
                    "adaptive": True,
                },
            },
        })
        if int(lp.get("disc_in_channels", 3)) != config["in_channels"]:
            raise UnsupportedError(f"{source}: disc_in_channels={lp.get('disc_in_channels', 3)} differs from the "
                                   f"image channels {config['in_channels']}")
        notes.append(f"disc_start: taming {start} at the checkpoint's global_step {global_step} -> {moved} "
                     "generator steps from the start of fine-tuning")
        notes.append("the adaptive GAN weight's last layer is decoder.conv_out.weight, as in taming")
    elif loss_target in _NO_LOSS_TARGETS or loss_target is None:
        config.update({"reconstruction_loss": "l1", "perceptual_weight": 1.0})
        notes.append(f"lossconfig {loss_target}: no discriminator in this checkpoint; the export has no "
                     "adversarial loss (add one in finetune.yaml to fine-tune as a GAN, it starts from random "
                     "weights)")
    else:
        raise UnsupportedError(f"{source}: lossconfig target {loss_target!r} is not taming's "
                               "VQLPIPSWithDiscriminator (or torch.nn.Identity)")
    if params.get("sane_index_shape"):
        notes.append("sane_index_shape: vqzoo tokens are always (B, H, W)")
    return config, notes, with_disc


# ---------------------------------------------------------------------- keys
def _taming_key(vq_key: str) -> str | None:
    """The taming state-dict key of a vqzoo VQGAN key (None: vqzoo-only state)."""
    if vq_key == "quantizer.codebook.weight":
        return "quantize.embedding.weight"
    if vq_key.startswith("quantizer.") or vq_key.startswith("_") or vq_key.startswith("adversarial.lecam"):
        return None
    if vq_key.startswith("adversarial.discriminator."):
        return "loss.discriminator." + vq_key[len("adversarial.discriminator."):]
    if vq_key.startswith("encoder."):
        return re.sub(r"^encoder\.down\.(\d+)\.resample\.", r"encoder.down.\1.downsample.", vq_key)
    if vq_key.startswith("decoder."):
        return re.sub(r"^decoder\.up\.(\d+)\.resample\.", r"decoder.up.\1.upsample.", vq_key)
    if vq_key.startswith(("quant_conv.", "post_quant_conv.")):
        return vq_key
    return None


def taming_key_table(model: torch.nn.Module) -> KeyTable:
    table = KeyTable()
    for vq_key, value in model.state_dict().items():
        peer = _taming_key(vq_key)
        if peer is None:
            continue
        if vq_key == "quantizer.codebook.weight":
            table.add(peer, vq_key, value.shape[1:], lambda t: t.unsqueeze(0))
        else:
            table.add(peer, vq_key, value.shape)
    return table


def _ema_state(state: dict[str, Any], table: KeyTable) -> dict[str, Any]:
    """Replace each weight by its LitEma shadow (``model_ema.<key without dots>``)."""
    out = dict(state)
    for peer_key in table.entries:
        if peer_key.startswith("loss."):
            continue
        shadow = "model_ema." + peer_key.replace(".", "")
        if shadow in state:
            out[peer_key] = state[shadow]
    return out


# ---------------------------------------------------------------------- entry point
def convert_taming(
    ckpt: str | os.PathLike,
    config: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    quantizer_loss: Literal["vqzoo", "taming"] = "vqzoo",
    use_ema_weights: bool = False,
) -> Path:
    """Convert a taming / latent-diffusion VQModel checkpoint + YAML into a vqzoo VQGAN export at ``out``."""
    out = check_request(out, overwrite, quantizer_loss)
    cfg = read_taming_config(config)
    raw = read_torch_checkpoint(ckpt)
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConversionError(f"{ckpt}: no state_dict of named tensors in this checkpoint")
    global_step = raw.get("global_step", 0)
    global_step = int(global_step) if isinstance(global_step, (int, torch.Tensor)) else 0
    vq_config, notes, with_disc = taming_to_vqzoo_config(cfg, str(config), quantizer_loss, global_step)
    if with_disc and not any(k.startswith("loss.discriminator.") for k in state):
        # Released checkpoints sometimes strip the loss; keep the config's weights but no discriminator.
        del vq_config["adversarial"]
        notes.append("the config names a discriminator but the checkpoint holds none (loss.discriminator.* "
                     "absent); the export has no adversarial loss")
    model = build(VQGAN_CLASS, vq_config)
    table = taming_key_table(model)

    has_ema = any(k.startswith("model_ema.") for k in state)
    if use_ema_weights:
        if not has_ema:
            raise ConversionError(f"{ckpt}: use_ema_weights asked for, but the checkpoint has no model_ema.* weights")
        state = _ema_state(state, table)
        notes.append("weights: the checkpoint's EMA weights (model_ema.*)")
    dropped_prefixes = ("loss.", "model_ema.")
    dropped_counts: dict[str, int] = {}
    for k in state:
        if k.startswith(dropped_prefixes) and k not in table.entries:
            prefix = "loss.perceptual_loss." if k.startswith("loss.perceptual_loss.") else (
                "model_ema." if k.startswith("model_ema.") else "loss.(other)")
            dropped_counts[prefix] = dropped_counts.get(prefix, 0) + 1
    vq_state = map_state(table, state, model, str(ckpt), dropped=lambda k: k.startswith(dropped_prefixes))

    dropped = []
    if "loss.perceptual_loss." in dropped_counts:
        dropped.append(f"loss.perceptual_loss.* ({dropped_counts['loss.perceptual_loss.']} tensors): LPIPS; "
                       "vqzoo builds its own LPIPS from the user's cache when fine-tuning")
    if "model_ema." in dropped_counts:
        dropped.append(f"model_ema.* ({dropped_counts['model_ema.']} tensors): "
                       + ("used as the weights" if use_ema_weights else
                          "latent-diffusion's EMA weights, not used (convert with --ema to use them)"))
    if "loss.(other)" in dropped_counts:
        dropped.append(f"{dropped_counts['loss.(other)']} other loss.* tensors")
    kept = []
    if "adversarial" in vq_config:
        n = sum(1 for k in table.entries if k.startswith("loss.discriminator."))
        kept.append(f"loss.discriminator.* ({n} tensors) -> adversarial.discriminator.*")
    converted_from = {
        "format": "taming-transformers VQModel",
        "target": cfg.get("target"),
        "checkpoint": str(ckpt),
        "checkpoint_sha256": sha256_file(ckpt),
        "config": str(config),
        "global_step": global_step,
        "original_params": {k: v for k, v in (cfg.get("params") or {}).items() if k != "ckpt_path"},
        "kept": kept,
        "dropped": dropped,
        "differences": notes,
    }
    return write_export(out, VQGAN_CLASS, vq_config, vq_state, converted_from, overwrite=overwrite)
