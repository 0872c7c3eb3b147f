"""diffusers ``VQModel`` -> a vqzoo ``VQGAN`` (``norm_type="group"``) or ``MoVQ`` (``norm_type="spatial"``).

Meant for ``VQModel`` directories written by ``save_pretrained`` (``config.json``
+ ``diffusion_pytorch_model.safetensors`` or ``.bin``), locally or on the Hub:
Kandinsky 2.2's MoVQ (``kandinsky-community/kandinsky-2-2-decoder``, subfolder
``movq``: block_out_channels (128, 256, 256, 512), 2 layers per block, 4 latent
channels, 16384 codes of dim 4, ``norm_type="spatial"``, attention in the
lowest-resolution down and up blocks) and the group-norm VQ models diffusers
converted from latent-diffusion.

The layouts are the same function as vqzoo's :mod:`vqzoo.nn.convnet`, named
differently (docs/reference-implementations.md §C):

==========================================  ==========================================
diffusers                                   vqzoo
==========================================  ==========================================
encoder.down_blocks.i.resnets.j             encoder.down.i.block.j
encoder.down_blocks.i.attentions.j          encoder.down.i.attn.j
encoder.down_blocks.i.downsamplers.0.conv   encoder.down.i.resample.conv
{en,de}coder.mid_block.resnets.0 / 1        {en,de}coder.mid.block_1 / block_2
{en,de}coder.mid_block.attentions.0         {en,de}coder.mid.attn_1
decoder.up_blocks.j (lowest resolution 0)   decoder.up.(n-1-j) (full resolution 0)
.upsamplers.0.conv                          .resample.conv
conv_shortcut (1x1)                         nin_shortcut
attention group_norm / spatial_norm         attention norm
to_q, to_k, to_v, to_out.0 (Linear C x C)   q, k, v, proj_out (1x1 conv)
conv_norm_out                               norm_out
quantize.embedding.weight (K, D)            quantizer.codebook.weight (1, K, D)
==========================================  ==========================================

With ``norm_type="spatial"`` every decoder norm is a SpatialNorm with the same
``norm_layer`` / ``conv_y`` / ``conv_b`` children in both libraries, and the
condition is the quantized map before ``post_quant_conv`` in both.

Where diffusers is more general than vqzoo the converter refuses: block
widths that are not ``block_out_channels[0]`` times an integer,
``norm_num_groups != 32``, ``act_fn != "silu"``, encoder and decoder attention
at different levels, no mid-block attention, ``latent_channels !=
vq_embed_dim`` with the spatial norm (diffusers itself requires it).
``scaling_factor`` and ``force_upcast`` concern diffusion pipelines, not the
tokenizer; they are recorded. The quantizer loss: diffusers' VectorQuantizer
uses taming's legacy β placement; the export uses vqzoo's (β on the
commitment term), recorded, or taming's weights with ``quantizer_loss="taming"``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch

from vqzoo import hub
from vqzoo.convert.common import (
    ConversionError,
    KeyTable,
    UnsupportedError,
    build,
    check_request,
    map_state,
    read_safetensors,
    read_torch_checkpoint,
    write_export,
)
from vqzoo.io import sha256_file

__all__ = ["convert_diffusers", "diffusers_to_vqzoo_config", "read_diffusers_model"]

VQGAN_CLASS = "vqzoo.tokenizers.vqgan.VQGAN"
MOVQ_CLASS = "vqzoo.tokenizers.movq.MoVQ"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")


# ---------------------------------------------------------------------- reading
def _model_dir(root: Path, subfolder: str | None) -> Path:
    if subfolder:
        root = root / subfolder
    if (root / "config.json").is_file():
        return root
    # A pipeline directory (e.g. Kandinsky 2.2's decoder) keeps the VQModel in movq/ or vqvae/.
    for name in ("movq", "vqvae", "vae"):
        if (root / name / "config.json").is_file():
            return root / name
    raise FileNotFoundError(f"{root} holds no diffusers model (no config.json there or in movq/, vqvae/)")


def read_diffusers_model(
    model: str | os.PathLike, subfolder: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path, Path]:
    """``(config, state_dict, model_dir, weights_file)`` of a local or Hub ``save_pretrained`` directory."""
    if hub.is_hub_id(model):
        patterns = None
        if subfolder:
            patterns = [f"{subfolder}/config.json"] + [f"{subfolder}/{w}" for w in _WEIGHT_FILES]
        else:
            patterns = [f"{d}{f}" for d in ("", "movq/", "vqvae/") for f in ("config.json", *_WEIGHT_FILES)]
        root = hub.download(os.fspath(model), allow_patterns=patterns)
    else:
        root = Path(model)
        if not root.exists():
            raise FileNotFoundError(f"model directory not found: {root} (a diffusers save_pretrained directory "
                                    "or a Hub id such as kandinsky-community/kandinsky-2-2-decoder)")
    model_dir = _model_dir(root, subfolder)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{model_dir / 'config.json'} is not valid JSON: {err}") from err
    weights = next((model_dir / w for w in _WEIGHT_FILES if (model_dir / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{model_dir} has config.json but no weights ({', '.join(_WEIGHT_FILES)})")
    if weights.suffix == ".safetensors":
        state = read_safetensors(weights)
    else:
        state = read_torch_checkpoint(weights, what="weights file")
    return config, state, model_dir, weights


# ---------------------------------------------------------------------- config
def diffusers_to_vqzoo_config(
    cfg: dict[str, Any],
    source: str = "config.json",
    resolution: int | None = None,
    quantizer_loss: Literal["vqzoo", "taming"] = "vqzoo",
) -> tuple[str, dict[str, Any], list[str], int]:
    """``(class_path, init args, notes, number of levels)`` for a diffusers VQModel config."""
    name = cfg.get("_class_name")
    if name != "VQModel":
        raise ConversionError(f"{source}: _class_name is {name!r}; vqzoo convert diffusers handles VQModel "
                              "(AutoencoderKL and other models have no codebook)")
    defaults = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1,
                "act_fn": "silu", "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256,
                "norm_num_groups": 32, "vq_embed_dim": None, "norm_type": "group",
                "mid_block_add_attention": True}
    c = {**defaults, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    notes: list[str] = []
    widths = [int(w) for w in c["block_out_channels"]]
    n = len(widths)
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != n or len(up) != n:
        raise ConversionError(f"{source}: {len(down)} down and {len(up)} up block types for {n} block_out_channels")
    for t in down:
        if t not in ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"):
            raise UnsupportedError(f"{source}: down block type {t!r} has no vqzoo counterpart")
    for t in up:
        if t not in ("UpDecoderBlock2D", "AttnUpDecoderBlock2D"):
            raise UnsupportedError(f"{source}: up block type {t!r} has no vqzoo counterpart")
    if c["act_fn"] != "silu":
        raise UnsupportedError(f"{source}: act_fn {c['act_fn']!r}; vqzoo's blocks use SiLU (swish)")
    if int(c["norm_num_groups"]) != 32:
        raise UnsupportedError(f"{source}: norm_num_groups={c['norm_num_groups']}; vqzoo's blocks use 32 groups")
    if not c["mid_block_add_attention"]:
        raise UnsupportedError(f"{source}: mid_block_add_attention is false; vqzoo's mid block always has attention")
    ch = widths[0]
    if any(w % ch for w in widths) or any(w % 32 for w in widths):
        raise UnsupportedError(f"{source}: block_out_channels {widths} are not multiples of the first width "
                               f"{ch} and of 32 (vqzoo's widths are ch * ch_mult[i], normed in 32 groups)")
    if c["in_channels"] != c["out_channels"]:
        raise UnsupportedError(f"{source}: in_channels {c['in_channels']} != out_channels {c['out_channels']}")
    norm_type = c["norm_type"]
    if norm_type not in ("group", "spatial"):
        raise UnsupportedError(f"{source}: norm_type {norm_type!r}; vqzoo converts 'group' and 'spatial'")
    latent = int(c["latent_channels"])
    embed_dim = int(c["vq_embed_dim"] or latent)
    if norm_type == "spatial" and embed_dim != latent:
        raise UnsupportedError(f"{source}: norm_type 'spatial' with vq_embed_dim {embed_dim} != latent_channels "
                               f"{latent}: diffusers conditions its SpatialNorms on latent_channels channels")

    enc_attn = [i for i, t in enumerate(down) if t.startswith("Attn")]
    dec_attn = [n - 1 - j for j, t in enumerate(up) if t.startswith("Attn")]
    if sorted(enc_attn) != sorted(dec_attn):
        raise UnsupportedError(f"{source}: attention at encoder levels {enc_attn} but decoder levels "
                               f"{sorted(dec_attn)}; vqzoo places attention at the same levels in both")
    factor = 2 ** (n - 1)
    if resolution is None:
        resolution = int(c["sample_size"]) if isinstance(c["sample_size"], int) else 256
        if resolution % factor or resolution < factor:
            resolution = 256 if 256 % factor == 0 else factor
        notes.append(f"resolution {resolution} (from sample_size {c['sample_size']}): it only names the attention "
                     "levels and token_shape; any size divisible by the downsampling factor is accepted")
    if resolution % factor:
        raise ConversionError(f"resolution {resolution} is not divisible by the downsampling factor {factor}")
    beta, cb_weight = (0.25, 1.0) if quantizer_loss == "vqzoo" else (1.0, 0.25)
    config: dict[str, Any] = {
        "quantizer": {"class_path": "vqzoo.VectorQuantizer",
                      "init_args": {"num_codes": int(c["num_vq_embeddings"]), "dim": embed_dim,
                                    "beta": beta, "codebook_loss_weight": cb_weight}},
        "in_channels": int(c["in_channels"]),
        "resolution": int(resolution),
        "ch": ch,
        "ch_mult": [w // ch for w in widths],
        "num_res_blocks": int(c["layers_per_block"]),
        "attn_resolutions": [resolution // 2**i for i in enc_attn],
        "z_channels": latent,
        "dropout": 0.0,
    }
    # diffusers files carry no training settings: fine-tuning gets each family's reference recipe.
    if norm_type == "group":
        config.update({"downsample": "strided_conv", "replicate_padding": False,
                       "reconstruction_loss": "l1", "perceptual_weight": 1.0})
        class_path = VQGAN_CLASS
        notes.append("fine-tuning losses: taming's recipe (L1 + 1.0 LPIPS); the file holds no training settings")
    else:
        config.update({"reconstruction_loss": "l2", "perceptual_weight": 0.1})
        class_path = MOVQ_CLASS
        notes.append("fine-tuning losses: the MoVQ reference recipe (L2 + 0.1 LPIPS, reference-implementations C); "
                     "the file holds no training settings")
    notes.append("quantizer loss: diffusers' VectorQuantizer (legacy=True) puts beta on the codebook term; "
                 + ("this export puts beta=0.25 on the commitment term (pitfalls #1); tokens and reconstructions "
                    "are unchanged, fine-tuning gradients differ" if quantizer_loss == "vqzoo"
                    else "this export keeps those weights (beta=1.0, codebook_loss_weight=0.25)"))
    notes.append("no discriminator: diffusers VQModel files hold none; add an adversarial loss to fine-tune as a "
                 "GAN (it starts from random weights)")
    for key in ("scaling_factor", "force_upcast", "lookup_from_codebook"):
        if key in cfg:
            notes.append(f"{key}={cfg[key]!r} concerns diffusers pipelines, not the tokenizer; not used")
    return class_path, config, notes, n


# ---------------------------------------------------------------------- keys
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _block(prefix: str, rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{prefix}.{_RESNET[head]}.{tail}"


def _attn(prefix: str, rest: str, spatial: bool) -> str:
    head, _, tail = rest.partition(".")
    if head == "norm":
        return f"{prefix}.{'spatial_norm' if spatial else 'group_norm'}.{tail}"
    return f"{prefix}.{_ATTN[head]}.{tail}"


def _diffusers_key(vq_key: str, levels: int, spatial: bool) -> str | None:
    """The diffusers key of a vqzoo key (None: vqzoo-only state)."""
    if vq_key == "quantizer.codebook.weight":
        return "quantize.embedding.weight"
    if vq_key.startswith(("quant_conv.", "post_quant_conv.")):
        return vq_key
    m = re.match(r"^(encoder|decoder)\.(.*)$", vq_key)
    if not m:
        return None
    part, rest = m.groups()
    dec_spatial = spatial and part == "decoder"
    if rest.startswith(("conv_in.", "conv_out.")):
        return vq_key
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out.{rest[len('norm_out.'):]}"
    m = re.match(r"^mid\.(block_1|block_2|attn_1)\.(.*)$", rest)
    if m:
        which, tail = m.groups()
        if which == "attn_1":
            return _attn(f"{part}.mid_block.attentions.0", tail, dec_spatial)
        return _block(f"{part}.mid_block.resnets.{0 if which == 'block_1' else 1}", tail)
    m = re.match(r"^(down|up)\.(\d+)\.(block|attn|resample)\.(.*)$", rest)
    if not m:
        return None
    kind, level, child, tail = m.groups()
    level = int(level)
    blocks = "down_blocks" if kind == "down" else "up_blocks"
    index = level if kind == "down" else levels - 1 - level
    prefix = f"{part}.{blocks}.{index}"
    if child == "resample":
        return f"{prefix}.{'downsamplers' if kind == 'down' else 'upsamplers'}.0.{tail}"
    j, _, tail = tail.partition(".")
    if child == "block":
        return _block(f"{prefix}.resnets.{j}", tail)
    return _attn(f"{prefix}.attentions.{j}", tail, dec_spatial)


def diffusers_key_table(model: torch.nn.Module, levels: int, spatial: bool) -> KeyTable:
    table = KeyTable()
    attn_linear = re.compile(r"\.(to_q|to_k|to_v|to_out\.0)\.weight$")
    for vq_key, value in model.state_dict().items():
        peer = _diffusers_key(vq_key, levels, spatial)
        if peer is None:
            continue
        if vq_key == "quantizer.codebook.weight":
            table.add(peer, vq_key, value.shape[1:], lambda t: t.unsqueeze(0))
        elif attn_linear.search(peer):
            # diffusers' attention projections are Linear (C, C); vqzoo's are 1x1 convs (C, C, 1, 1).
            table.add(peer, vq_key, value.shape[:2], lambda t: t[:, :, None, None])
        else:
            table.add(peer, vq_key, value.shape)
    return table


# ---------------------------------------------------------------------- entry point
def convert_diffusers(
    model: str | os.PathLike,
    out: str | os.PathLike,
    subfolder: str | None = None,
    resolution: int | None = None,
    overwrite: bool = False,
    quantizer_loss: Literal["vqzoo", "taming"] = "vqzoo",
) -> Path:
    """Convert a diffusers VQModel (directory or Hub id) into a vqzoo VQGAN / MoVQ export at ``out``."""
    out = check_request(out, overwrite, quantizer_loss)
    cfg, state, model_dir, weights = read_diffusers_model(model, subfolder)
    class_path, vq_config, notes, levels = diffusers_to_vqzoo_config(
        cfg, str(model_dir / "config.json"), resolution, quantizer_loss)
    vq_model = build(class_path, vq_config)
    table = diffusers_key_table(vq_model, levels, spatial=class_path == MOVQ_CLASS)
    vq_state = map_state(table, state, vq_model, str(weights))
    converted_from = {
        "format": f"diffusers VQModel (norm_type={cfg.get('norm_type', 'group')!r})",
        "model": os.fspath(model),
        "subfolder": subfolder,
        "weights": str(weights.name),
        "weights_sha256": sha256_file(weights),
        "original_config": cfg,
        "kept": [f"{len(table.entries)} tensors"],
        "dropped": [],
        "differences": notes,
    }
    return write_export(out, class_path, vq_config, vq_state, converted_from, overwrite=overwrite)
