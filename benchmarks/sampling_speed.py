"""Sampling speed of vqzoo's priors, side by side with peer implementations.

(a) MiniGPT: 256 image tokens generated after a 32-token text prefix
    (t2i, TE-VQGAN stage-2 layout), with the KV cache and with full
    recomputation per token; peer: taming-transformers' minGPT
    (``taming.modules.transformer.mingpt``, package
    ``taming-transformers-rom1504``) at the same depth/width/vocabulary,
    sampled with its ``sample`` function (full recomputation; its
    ``sample_with_past`` too when the installed version has it).
(b) MaskGIT: 256 tokens (16x16) decoded in 12 steps; peer:
    muse-maskgit-pytorch's ``MaskGitTransformer`` at the same depth/width,
    run in the same 12-step loop (its ``MaskGit.generate`` needs a VQGAN and
    a T5 text encoder, so only its transformer is timed; a zero text
    embedding is passed and its cross-attention layers still run, which
    makes it somewhat more expensive per step than ours at equal size).
    Building it reads the ``google/t5-v1_1-base`` config from the Hugging
    Face hub or cache; offline without that cache the peer is reported as
    "could not be built".

Timings are medians over ``--repeats`` runs after ``--warmup`` runs, with
CUDA synchronised around each run. Results go to
``benchmarks/results/sampling_speed.json`` (written atomically). Peers are
optional: install them with ``pip install -e .[bench]``; a missing peer is
reported and our numbers are still printed.

Usage::

    python benchmarks/sampling_speed.py                  # full size, GPU if available
    python benchmarks/sampling_speed.py --quick --skip-peers   # smoke test on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vqzoo.priors import MaskGIT, MiniGPT

RESULTS = Path(__file__).resolve().parent / "results" / "sampling_speed.json"


def _offline_t5_dim(muse: Any) -> None:
    """Let muse build offline: it fetches a T5 config from the hub only to learn the text
    embedding width (768 for t5-v1_1-base). We pass zero text embeddings, so a locally
    built config of that width is all it needs."""
    try:
        from muse_maskgit_pytorch import t5 as muse_t5  # type: ignore[import-not-found]
        from transformers import T5Config
    except ImportError:
        return
    name = getattr(muse_t5, "DEFAULT_T5_NAME", "google/t5-v1_1-base")
    muse_t5.T5_CONFIGS.setdefault(name, {"config": T5Config(d_model=768)})


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median and all wall times (seconds) of ``fn``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or "median_s" not in a or "median_s" not in b:
        return None
    return a["median_s"] / b["median_s"]


# ---------------------------------------------------------------------------
# (a) MiniGPT
# ---------------------------------------------------------------------------


def _top_k_top_p_shim(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1
) -> torch.Tensor:
    """Stand-in for ``transformers.top_k_top_p_filtering`` (removed in transformers 4.40+)."""
    from vqzoo.priors.base import filter_logits

    out = filter_logits(logits, top_k=top_k or None, top_p=top_p if top_p < 1.0 else None)
    return out.masked_fill(torch.isinf(out) & (out < 0), filter_value)


def _import_taming_mingpt() -> Any:
    """Import taming's minGPT module.

    taming-transformers-rom1504 imports ``top_k_top_p_filtering`` from
    ``transformers`` at module level; recent transformers releases removed it,
    which makes the whole module unimportable. The benchmark installs a
    stand-in first (it is only called by ``sample_with_past`` when ``top_k``
    is given, which this benchmark never does).
    """
    import transformers  # type: ignore[import-not-found]

    if not hasattr(transformers, "top_k_top_p_filtering"):
        transformers.top_k_top_p_filtering = _top_k_top_p_shim
    from taming.modules.transformer import mingpt  # type: ignore[import-not-found]

    return mingpt


def bench_minigpt(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    side = int(round(args.image_tokens**0.5))
    model = MiniGPT(
        vocab_size=args.vocab,
        token_shape=[side, side],
        condition="text",
        text_vocab_size=args.text_vocab,
        text_length=args.prefix,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
    ).to(device).eval()
    text = torch.randint(0, args.text_vocab, (args.batch_size, args.prefix), device=device)
    res: dict[str, Any] = {
        "setup": f"{args.prefix} text tokens + {side * side} image tokens, batch {args.batch_size}, "
        f"{args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, vocab {args.vocab}+{args.text_vocab}"
    }

    def ours(use_cache: bool) -> Callable[[], Any]:
        def run() -> Any:
            g = torch.Generator(device=device).manual_seed(0)
            return model.generate(args.batch_size, text, use_cache=use_cache, generator=g)

        return run

    res["ours_cached"] = timed(ours(True), device, args.repeats, args.warmup)
    res["ours_uncached"] = timed(ours(False), device, args.repeats, args.warmup)
    res["cache_speedup"] = ratio(res["ours_uncached"], res["ours_cached"])
    same = torch.equal(ours(True)(), ours(False)())
    res["cached_equals_uncached"] = same
    print(f"[minigpt] {res['setup']}")
    print(f"  ours, KV cache     : {res['ours_cached']['median_s'] * 1e3:9.1f} ms")
    print(f"  ours, no cache     : {res['ours_uncached']['median_s'] * 1e3:9.1f} ms   (cache speed-up x{res['cache_speedup']:.2f})")
    print(f"  cached == uncached : {same}")

    if args.skip_peers:
        res["peer"] = {"status": "skipped (--skip-peers)"}
        return res
    try:
        mingpt = _import_taming_mingpt()
    except Exception as err:  # noqa: BLE001 - any import failure means the peer is unusable
        res["peer"] = {"status": f"peer not installed (taming-transformers-rom1504): {type(err).__name__}: {err}"}
        print(f"  taming minGPT      : peer not installed (pip install -e .[bench]) [{type(err).__name__}]")
        return res
    torch.manual_seed(0)
    peer = mingpt.GPT(
        vocab_size=args.vocab + args.text_vocab,
        block_size=args.prefix + side * side,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    ).to(device).eval()
    prefix = text + args.vocab
    steps = side * side
    peer_res: dict[str, Any] = {"status": "ok", "module": mingpt.__file__}

    def peer_sample() -> Any:
        return mingpt.sample(peer, prefix, steps, temperature=1.0, sample=True, top_k=None)

    peer_res["uncached"] = timed(peer_sample, device, args.repeats, args.warmup)
    print(f"  taming minGPT      : {peer_res['uncached']['median_s'] * 1e3:9.1f} ms   "
          f"(ours cached is x{ratio(peer_res['uncached'], res['ours_cached']):.2f} faster, "
          f"ours uncached x{ratio(peer_res['uncached'], res['ours_uncached']):.2f})")
    if hasattr(mingpt, "sample_with_past"):
        def peer_cached() -> Any:
            with torch.no_grad():
                return mingpt.sample_with_past(prefix, peer, steps=steps, temperature=1.0, sample_logits=True)

        try:
            peer_res["cached"] = timed(peer_cached, device, args.repeats, args.warmup)
            print(f"  taming with past   : {peer_res['cached']['median_s'] * 1e3:9.1f} ms   "
                  f"(ours cached x{ratio(peer_res['cached'], res['ours_cached']):.2f} faster)")
        except Exception as err:  # noqa: BLE001 - peer API differs between versions
            peer_res["cached"] = {"status": f"sample_with_past failed: {type(err).__name__}: {err}"}
    peer_res["ratio_peer_over_ours_cached"] = ratio(peer_res["uncached"], res["ours_cached"])
    peer_res["ratio_peer_over_ours_uncached"] = ratio(peer_res["uncached"], res["ours_uncached"])
    res["peer"] = peer_res
    return res


# ---------------------------------------------------------------------------
# (b) MaskGIT
# ---------------------------------------------------------------------------


def _peer_maskgit_loop(transformer: Any, batch: int, seq_len: int, vocab: int, steps: int, text_dim: int, device: torch.device) -> Any:
    """The MaskGIT decode loop (reference rules) driven by the peer's transformer."""
    import math

    ids = torch.full((batch, seq_len), vocab, dtype=torch.long, device=device)
    text_embeds = torch.zeros(batch, 1, text_dim, device=device)
    for t in range(steps):
        with torch.no_grad():
            logits = transformer(ids, text_embeds=text_embeds)
        unknown = ids == vocab
        sampled = torch.multinomial(logits.softmax(-1).view(-1, vocab), 1).view(batch, seq_len)
        sampled = torch.where(unknown, sampled, ids)
        if t == steps - 1:
            return sampled
        ratio_ = (t + 1) / steps
        mask_len = max(1, min(int(unknown.sum(1).min()) - 1, math.floor(seq_len * math.cos(math.pi / 2 * ratio_))))
        conf = logits.log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
        conf = conf + 4.5 * (1 - ratio_) * -torch.log(-torch.log(torch.rand_like(conf).clamp(1e-20, 1 - 1e-7)))
        conf = conf.masked_fill(~unknown, float("inf"))
        remask = conf.argsort(1).argsort(1) < mask_len
        ids = sampled.masked_fill(remask, vocab)
    return ids


def bench_maskgit(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    side = int(round(args.image_tokens**0.5))
    model = MaskGIT(
        vocab_size=args.vocab,
        token_shape=[side, side],
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
    ).to(device).eval()
    res: dict[str, Any] = {
        "setup": f"{side * side} tokens, {args.steps} steps, batch {args.batch_size}, {args.n_layer} layers, "
        f"{args.n_head} heads, width {args.n_embd}, vocab {args.vocab}"
    }

    def ours() -> Any:
        g = torch.Generator(device=device).manual_seed(0)
        return model.generate(args.batch_size, num_steps=args.steps, generator=g)

    res["ours"] = timed(ours, device, args.repeats, args.warmup)
    print(f"[maskgit] {res['setup']}")
    print(f"  ours               : {res['ours']['median_s'] * 1e3:9.1f} ms")
    if args.skip_peers:
        res["peer"] = {"status": "skipped (--skip-peers)"}
        return res
    try:
        import muse_maskgit_pytorch as muse  # type: ignore[import-not-found]

        peer_cls = getattr(muse, "MaskGitTransformer", None) or muse.Transformer
        _offline_t5_dim(muse)
    except Exception as err:  # noqa: BLE001
        res["peer"] = {"status": f"peer not installed (muse-maskgit-pytorch): {type(err).__name__}: {err}"}
        print(f"  muse MaskGit       : peer not installed (pip install -e .[bench]) [{type(err).__name__}]")
        return res
    try:
        torch.manual_seed(0)
        peer = peer_cls(
            num_tokens=args.vocab,
            seq_len=side * side,
            dim=args.n_embd,
            depth=args.n_layer,
            heads=args.n_head,
            dim_head=args.n_embd // args.n_head,
            ff_mult=4,
        ).to(device).eval()
        text_dim = peer.text_embed_proj.in_features if hasattr(peer.text_embed_proj, "in_features") else args.n_embd
    except Exception as err:  # noqa: BLE001 - e.g. its T5 config cannot be fetched offline
        res["peer"] = {"status": f"peer could not be built: {type(err).__name__}: {err}"}
        print(f"  muse MaskGit       : could not be built ({type(err).__name__}: {err})")
        return res
    peer_res: dict[str, Any] = {"status": "ok", "class": f"{peer_cls.__module__}.{peer_cls.__qualname__}"}
    peer_res["time"] = timed(
        lambda: _peer_maskgit_loop(peer, args.batch_size, side * side, args.vocab, args.steps, text_dim, device),
        device,
        args.repeats,
        args.warmup,
    )
    peer_res["ratio_peer_over_ours"] = ratio(peer_res["time"], res["ours"])
    print(f"  muse MaskGit       : {peer_res['time']['median_s'] * 1e3:9.1f} ms   (ours x{peer_res['ratio_peer_over_ours']:.2f} faster)")
    res["peer"] = peer_res
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prefix", type=int, default=32, help="text prefix length (MiniGPT)")
    p.add_argument("--image-tokens", type=int, default=256, help="a square number")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--text-vocab", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=512)
    p.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 = every contender samples under torch.autocast(bfloat16)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (1 avoids thread-barrier stalls on a shared machine)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch_size, args.n_layer, args.n_head, args.n_embd = 2, 2, 2, 64
        args.repeats, args.warmup = 2, 0
    if int(round(args.image_tokens**0.5)) ** 2 != args.image_tokens:
        p.error(f"--image-tokens must be a square number, got {args.image_tokens}")
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with autocast:
        minigpt_res, maskgit_res = bench_minigpt(args, device), bench_maskgit(args, device)
    results = {
        "benchmark": "sampling_speed",
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "minigpt": minigpt_res,
        "maskgit": maskgit_res,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=".sampling_speed-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, args.out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
