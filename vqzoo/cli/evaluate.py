"""``vqzoo evaluate --model PATH --data DATA.yaml``: the field's metrics under a written protocol.

* A tokenizer: PSNR, SSIM, LPIPS, the Fréchet distance and IS of its
  reconstructions against the same images, and codebook usage, perplexity and
  entropy over the images evaluated (the whole split by default).
* A prior (with its tokenizer): the Fréchet distance and IS of N generated
  images against the split, and images per second (generation + decoding).

Writes ``--out`` (JSON), the same name with ``.md`` (one markdown table row)
and ``.png`` (inputs above reconstructions, or samples), each atomically, and
only after every number is computed: a run that fails writes nothing.

Everything that can be checked is checked before any image is processed
(docs/pitfalls.md #17 for why the protocol is in every report): the model
class, the data's image shape against the model, N against the split, the
prior's vocabulary against its tokenizer, the feature extractor's weights
(Inception is never downloaded: a missing file stops here naming file and
folder), and LPIPS's weights when ``--lpips on``. The Fréchet distance on
Inception features is called FID (rFID for reconstructions, gFID for
samples); on any other network it is named after it (``cFID (MNIST classifier
features)``), never rFID.

By default the model's EMA weights are evaluated when it has them
(``--weights raw`` for the raw ones); the report says which.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqzoo evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="tokenizer or prior: .ckpt or export directory")
    p.add_argument("--data", required=True, help="YAML with a `data:` section (the reference images)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--num-images", type=int, default=None,
                   help="tokenizer: images evaluated (default: the whole split); prior: images generated "
                   "(default: as many as the split holds)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the data config's batch size")
    p.add_argument("--out", default="report.json", help="JSON report; .md and .png are written beside it")
    p.add_argument("--feature-extractor", default="inception",
                   help="'inception' (torch-fidelity's Inception-V3: FID/IS), 'classifier:DIR' (a feature "
                   "classifier: cFID), a registered name, or 'none' (no Fréchet distance / IS)")
    p.add_argument("--inception-weights", default=None,
                   help="path of weights-inception-2015-12-05-6726825d.pth (default: the torch hub cache)")
    p.add_argument("--lpips", default="auto", choices=["auto", "on", "off"],
                   help="auto: LPIPS when its VGG16 weights are cached, else reported unavailable with the "
                   "reason; on: stop at start-up if they are missing")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="evaluate the EMA weights when the model has them (default) or the raw weights")
    p.add_argument("--tokenizer", default=None, help="prior only: decode with this tokenizer instead of its own")
    p.add_argument("--grid", type=int, default=8, help="images in the PNG grid")
    p.add_argument("--seed", type=int, default=0, help="seed of prior sampling and of the IS splits")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--device", default="cpu")
    return p


def _model_kind(model: Any, path: str) -> str:
    from vqzoo.priors.base import Prior
    from vqzoo.tokenizers.base import Tokenizer

    if isinstance(model, Tokenizer):
        return "tokenizer"
    if isinstance(model, Prior):
        return "prior"
    cls = type(model)
    raise ValueError(
        f"{path} holds a {cls.__module__}.{cls.__qualname__}, expected a tokenizer "
        "(vqzoo.tokenizers.base.Tokenizer: VQGAN, QGVAE, MoVQ) or a prior (vqzoo.priors.base.Prior: MiniGPT, MaskGIT)"
    )


def _check_images(tokenizer: Any, shape: tuple[int, ...], data: str, what: str) -> None:
    c, h, w = shape
    f = tokenizer.downsample_factor
    fixed = tokenizer.fixed_resolution or what == "reference"
    ok = c == tokenizer.in_channels and (
        (h == w == tokenizer.resolution) if fixed else (h % f == 0 and w % f == 0)
    )
    if not ok:
        want = (f"({tokenizer.in_channels}, {tokenizer.resolution}, {tokenizer.resolution})" if fixed
                else f"({tokenizer.in_channels}, H, W) with H, W divisible by {f}")
        raise ValueError(
            f"{data} yields images of shape {tuple(shape)} but the {type(tokenizer).__name__} "
            f"{'generates' if what == 'reference' else 'expects'} {want}: set the data config's "
            "channels/resolution to match the model"
        )


def _export_note(path: Any) -> str:
    """What an export says about its weights (``config.json``'s "weights"), else that there is no EMA."""
    import json

    cfg = Path(path) / "config.json" if path is not None else None
    if cfg is not None and cfg.is_file():
        note = json.loads(cfg.read_text()).get("weights")
        if note:
            return f"as exported: {note}"
    return "the model's weights (it keeps no EMA)"


def _lpips(mode: str) -> tuple[Any, str | None]:
    if mode == "off":
        return None, "not requested (--lpips off)"
    from vqzoo.losses.perceptual import LPIPS

    try:
        return LPIPS(pretrained=True, allow_download=False), None
    except FileNotFoundError as err:
        if mode == "on":
            raise
        return None, f"unavailable: {err}"


def _reference_protocol(dm: Any, data: str, split: str, n: int, shape: tuple[int, ...]) -> dict[str, Any]:
    hp = dict(getattr(dm, "hparams", {}) or {})
    crop = hp.get("crop")
    geometry = {
        "center": "shorter side resized (bilinear, antialiased) to the resolution, central square crop",
        "random": "shorter side resized (bilinear, antialiased), central square crop (val/test)",
        "none": "resized to resolution x resolution ignoring the aspect ratio",
    }.get(crop, "as the DataModule yields them")
    return {
        "data_config": str(data),
        "datamodule": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "source": hp.get("source"),
        "split": split,
        "num_images": n,
        "resolution": list(shape[1:]),
        "channels": shape[0],
        "resize_crop": geometry,
        "value_range": "[-1, 1] float32; metrics map to [0, 1] (PSNR/SSIM, data_range 1) or uint8 RGB (Inception)",
        "data_init_args": {k: v for k, v in hp.items() if not k.startswith("_")},
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    from vqzoo import __version__
    from vqzoo.checkpoint import CheckpointError, load
    from vqzoo.cli.common import datamodule_from_yaml, split_loader
    from vqzoo.io import make_grid
    from vqzoo.metrics.generation import GenerativeMetrics, build_feature_extractor
    from vqzoo.metrics.reconstruction import ReconstructionMetrics
    from vqzoo.metrics.report import backend_versions, model_hash, write_report

    if a.num_images is not None and a.num_images < 2:
        raise ValueError(f"--num-images must be >= 2 (a Fréchet distance needs two images), got {a.num_images}")
    out = Path(a.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must name a .json file (the .md and .png go beside it), got {out}")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory; expected a .json file name")

    # ---- start-up checks: nothing is computed or written before all pass
    overrides = {"tokenizer": a.tokenizer} if a.tokenizer else {}
    try:
        model = load(a.model, **overrides)
    except CheckpointError as err:
        raise CheckpointError(
            f"--model {a.model} is not a loadable vqzoo model ({err}); expected a tokenizer or a prior: a .ckpt "
            "written by `vqzoo fit` or a directory written by `vqzoo export`"
        ) from err
    kind = _model_kind(model, a.model)
    if a.tokenizer and kind != "prior":
        raise ValueError("--tokenizer applies to priors only")
    tokenizer = model if kind == "tokenizer" else model.frozen_tokenizer  # checks vocab/token shape
    if tokenizer is None:
        raise ValueError(f"{a.model} is a prior without a tokenizer; pass --tokenizer PATH to decode its samples")
    weights = {}
    roles = (("model", model, a.model), ("tokenizer", tokenizer, a.tokenizer or getattr(model, "tokenizer_path", None)))
    for role, m, path in roles if kind == "prior" else roles[:1]:
        has = getattr(m, "weight_ema", None) is not None
        if has and a.weights == "ema":
            m.use_ema_weights()
        weights[role] = ("EMA weights" if a.weights == "ema" else "raw weights (EMA not used)") if has else _export_note(path)
    device = torch.device(a.device)
    model.to(device).eval()
    tokenizer.to(device).eval()

    dm = datamodule_from_yaml(a.data)
    if a.batch_size is not None:
        if a.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
        dm.batch_size = a.batch_size
    loader = split_loader(dm, a.split)
    split_size = len(loader.dataset)
    from vqzoo.data.batch import as_batch

    first = as_batch(next(iter(loader)), main="images").get("images")
    if first is None:
        raise ValueError(f"{a.data} yields no 'images' (the reference set must be images)")
    shape = tuple(first.shape[1:])
    _check_images(tokenizer, shape, a.data, "input" if kind == "tokenizer" else "reference")
    n = split_size if a.num_images is None else a.num_images
    if n > split_size:
        raise ValueError(f"--num-images {n} is larger than the {a.split} split of {a.data} ({split_size} images)")
    n_ref = split_size if kind == "prior" else n

    extractor = None
    if a.feature_extractor != "none":
        extractor = build_feature_extractor(a.feature_extractor, a.inception_weights).to(device)
    lpips_fn, lpips_note = (None, "not computed for priors") if kind == "prior" else _lpips(a.lpips)
    if lpips_fn is not None:
        lpips_fn.to(device)

    # ---- evaluation (seeded: the IS splits are drawn at random by torchmetrics)
    torch.manual_seed(a.seed)
    gen = GenerativeMetrics(extractor).to(device) if extractor is not None else None
    t0 = time.perf_counter()
    if kind == "tokenizer":
        metrics = ReconstructionMetrics(lpips_fn, gen, tokenizer.vocab_size, tokenizer.quantizer.num_codebooks).to(device)
        seen, grid_in, grid_out = 0, None, None
        with torch.no_grad():
            for batch in loader:
                x = as_batch(batch, main="images")["images"][: n - seen].to(device)
                idx = tokenizer.tokenize(x)
                rec = tokenizer.detokenize(idx).float()
                metrics.update(x, rec, tokenizer.quantizer.histogram(idx))
                if grid_in is None:
                    grid_in, grid_out = x[: a.grid].cpu(), rec[: a.grid].cpu()
                seen += x.shape[0]
                if seen >= n:
                    break
        values = metrics.compute()
        values["num_images"] = seen
        grid = make_grid(torch.cat([grid_in, grid_out]), nrow=grid_in.shape[0])
    else:
        from vqzoo.priors.sample import _generate_kwargs

        gen_kwargs = _generate_kwargs(model, {"temperature": a.temperature, "top_k": a.top_k})
        if getattr(model, "condition", "none") != "none":
            num_classes = getattr(model, "num_classes", None)
            if getattr(model, "condition", None) != "class" or not num_classes:
                raise ValueError("vqzoo evaluate samples unconditional or class-conditional priors only")
        with torch.no_grad():
            seen = 0
            for batch in loader:
                x = as_batch(batch, main="images")["images"].to(device)
                if gen is not None:
                    gen.update_real(x)
                seen += x.shape[0]
            generator = torch.Generator(device=device).manual_seed(a.seed)
            bs = dm.batch_size
            done, samples = 0, []
            t_gen = time.perf_counter()
            while done < n:
                m = min(bs, n - done)
                cond = None
                if getattr(model, "condition", "none") == "class":
                    cond = torch.arange(done, done + m, device=device) % model.num_classes
                tokens = model.generate(m, cond, generator=generator, **gen_kwargs)
                imgs = tokenizer.detokenize(tokens.reshape(m, *tuple(tokenizer.token_shape))).float().clamp(-1, 1)
                if gen is not None:
                    gen.update_fake(imgs)
                if len(samples) * bs < a.grid:
                    samples.append(imgs[: a.grid].cpu())
                done += m
            elapsed = time.perf_counter() - t_gen
        values = gen.compute() if gen is not None else {}
        values["num_generated"] = n
        values["images_per_second"] = n / max(elapsed, 1e-9)
        grid = make_grid(torch.cat(samples)[: a.grid], nrow=min(a.grid, 8))
    wall = time.perf_counter() - t0

    fd_name = None
    is_name = extractor.is_name if extractor is not None else None
    if extractor is not None:
        base = extractor.fid_name
        fd_name = ("rFID" if kind == "tokenizer" else "gFID") if base == "FID" else base
    if lpips_fn is None and kind == "tokenizer":
        values["lpips"] = None
    report = {
        "kind": kind,
        "fd_name": fd_name,
        "is_name": is_name,
        "metrics": values,
        "notes": {
            "fd": (f"'fd' is the {fd_name}: Fréchet distance of "
                   + ("reconstructions vs the same images" if kind == "tokenizer" else "generated images vs the split")
                   + f" on {extractor.label}" if extractor is not None else "not computed (--feature-extractor none)"),
            "is": (f"'is_mean' is the {is_name} of the " + ("reconstructions" if kind == "tokenizer" else "samples")
                   + ("; 'is_real_mean' that of the input images" if kind == "tokenizer" else "")
                   if extractor is not None else "not computed (--feature-extractor none)"),
            "lpips": lpips_note or "LPIPS (VGG16, lpips v0.1 heads) via vqzoo.losses.perceptual",
            "psnr_ssim": "torchmetrics, per image on [0, 1] (data_range 1), averaged over images",
        },
        "model": {
            "name": Path(a.model).stem if Path(a.model).is_file() else Path(a.model).name,
            "path": str(a.model),
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            **model_hash(a.model),
            "weights": weights,
            "tokenizer": None if kind == "tokenizer" else {
                "path": str(a.tokenizer or model.tokenizer_path),
                "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
                "sha256": model_hash(a.tokenizer or model.tokenizer_path)["sha256"],
            },
        },
        "protocol": {
            "reference_set": _reference_protocol(dm, a.data, a.split, n_ref, shape),
            "num_evaluated": n,
            "feature_extractor": extractor.protocol() if extractor is not None else None,
            "backend": {"fd_is": "torchmetrics FrechetInceptionDistance / InceptionScore (float64 statistics)",
                        "psnr_ssim": "torchmetrics", "versions": backend_versions()},
            "vqzoo_version": __version__,
            "device": str(device),
            "seed": a.seed,
        },
        "wall_seconds": wall,
    }
    paths = write_report(report, out, grid)
    report["written"] = {k: str(v) for k, v in paths.items()}
    return report


def main(argv: list[str]) -> int:
    from vqzoo.metrics.report import markdown_row

    a = _parser().parse_args(argv)
    report = run(a)
    header, row = markdown_row(report)
    print(header)
    print(row)
    print(f"wrote {', '.join(report['written'].values())}")
    return 0
