"""One VQGAN training step: vqzoo vs taming-transformers, side by side in one process.

What is compared
----------------
The TE-VQGAN stage-1 architecture (reference-implementations.md, section A) at
reduced width so it runs on a CPU: 64x64 RGB, ``ch_mult (1, 2, 2)``,
``num_res_blocks 1``, ``attn_resolutions [16]``, ``z_channels 256``, a
codebook of 128 codes x 256 dims, ``ch`` 64 by default (the paper uses 128).
The encoder uses zero padding and strided-conv downsampling on both sides:
stock taming has no replication padding, so vqzoo runs with
``replicate_padding=False`` to keep the two networks identical. The script
checks that the two generators hold the same parameter tensors (same count and
the same multiset of shapes) and refuses to time unequal models.

* vqzoo: ``vqzoo.VQGAN`` (its own ``forward(x) -> (x_rec, QuantizerOutput)``,
  input checks on, as in training) and its own optimizers
  (``configure_optimizers``: Adam, betas (0.5, 0.9)). The step follows
  ``Tokenizer.training_step``: forward, reconstruction + ``codebook_weight``
  x VQ loss (+ adversarial term), the non-finite-loss check, ``zero_grad``,
  backward, ``quantizer.after_backward()``, optimizer step, scheduler step,
  ``quantizer.after_step()`` (+ the discriminator step). Lightning's logging
  is left out, on both sides.
* taming-transformers (``taming-transformers-rom1504``):
  ``taming.modules.diffusionmodules.model.Encoder`` / ``Decoder``,
  ``taming.modules.vqvae.quantize.VectorQuantizer2(beta=0.25, legacy=False)``,
  and 1x1 ``quant_conv`` / ``post_quant_conv`` joined as taming's ``VQModel``
  joins them; Adam with betas (0.5, 0.9).

Loss: L1 reconstruction + VQ loss (beta 0.25 on the commitment term), codebook
weight 1. **No LPIPS** (its VGG weights cannot be downloaded offline) and, in
the default scenario ``recon_vq``, **no GAN**. The scenario ``gan`` adds the
PatchGAN on both sides from step 0: vqzoo's ``NLayerDiscriminator`` inside
``AdversarialLoss`` (hinge, adaptive weight x 0.8) against taming's
``NLayerDiscriminator`` (with its ``weights_init``), taming's ``hinge_d_loss``
and taming's own ``VQLPIPSWithDiscriminator.calculate_adaptive_weight`` (called
unbound, because constructing that class loads LPIPS). Both run the generator
step then one discriminator step on the detached reconstruction. (Taming's
real ``VQModel.training_step`` runs the whole autoencoder forward a second
time for the discriminator step; we do not charge it for that.)

How it is measured
------------------
* Throughput: images per second = batch / median step time, after warm-up.
  The two models are timed in the same process, one step each per round,
  alternating which goes first, so drift in the (shared) machine's load hits
  both alike. Also reported: the spread (min, max) and the median of the
  per-round ratios. ``torch.set_num_threads(--threads)`` (2 by default).
* Peak memory, each model in a fresh subprocess (so neither sees the other's
  allocations or allocator caches):

  - CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's
    high-water resident set) after building model, optimizer and batch,
    subtracted from the high-water mark after the warm-up and measured steps.
    The delta is what one training step adds on top of the weights: gradients,
    Adam states and the activation peak, as the OS sees it (allocator caching
    included). tracemalloc is useless here (torch allocates outside Python's
    allocator). Cross-check: the peak of live tensor bytes over one step from
    ``torch.profiler`` (``profile_memory=True``, memory timeline), which is
    allocator-independent.
  - CUDA: ``torch.cuda.max_memory_allocated()`` over the steps (absolute:
    weights, gradients, Adam states and activations), and its increase over
    the allocation after building.

* ``--device cuda --dtype bf16`` runs forward and loss under
  ``torch.autocast(dtype=bfloat16)`` (backward outside, as usual) and
  synchronises before reading each clock. The device name is recorded.
* ``--profile`` prints the ops where each step spends its time
  (``torch.profiler``, self CPU time) to find where the time goes.

Results merge into ``benchmarks/results/train_step.json`` under a key per
(device, dtype, scenario) and the table ``train_step.md`` is regenerated.

Run: ``PYTHONPATH=. python benchmarks/train_step.py`` (needs ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).parent / "results"
MODELS = ("vqzoo", "taming")
SCENARIOS = ("recon_vq", "gan")


@dataclass(frozen=True)
class Config:
    """Architecture and optimisation shared by both sides (TE-VQGAN stage 1 at reduced width)."""

    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 128
    resolution: int = 64
    batch: int = 8
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    beta: float = 0.25
    disc_ndf: int = 64
    disc_layers: int = 3
    disc_weight: float = 0.8


# ---------------------------------------------------------------------- taming import
def import_taming() -> dict[str, Any]:
    """The taming pieces we need, importing only their own modules.

    ``taming/__init__`` and the model modules pull in old ``pytorch_lightning``
    and ``transformers`` APIs; the modules below only need torch, einops and
    (for vqperceptual) torchvision, so they import as they are. Should a newer
    environment break ``taming.modules.losses.lpips`` (imported by
    vqperceptual only for the class we never construct), a stub module is
    installed in ``sys.modules`` first and the fact is recorded in the results.
    """
    import importlib

    shims: list[str] = []
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
    from taming.modules.vqvae.quantize import VectorQuantizer2

    try:
        vqp = importlib.import_module("taming.modules.losses.vqperceptual")
    except ImportError:
        import types

        stub = types.ModuleType("taming.modules.losses.lpips")
        stub.LPIPS = type("LPIPS", (nn.Module,), {})  # never instantiated here
        sys.modules["taming.modules.losses.lpips"] = stub
        shims.append("taming.modules.losses.lpips (stub: LPIPS is never constructed)")
        vqp = importlib.import_module("taming.modules.losses.vqperceptual")
    return {
        "Encoder": Encoder,
        "Decoder": Decoder,
        "VectorQuantizer2": VectorQuantizer2,
        "NLayerDiscriminator": NLayerDiscriminator,
        "weights_init": weights_init,
        "hinge_d_loss": vqp.hinge_d_loss,
        "calculate_adaptive_weight": vqp.VQLPIPSWithDiscriminator.calculate_adaptive_weight,
        "shims": shims,
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------- the two steps
def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class VqzooStep:
    """vqzoo's VQGAN trained as ``Tokenizer.training_step`` does it, without Lightning's logging."""

    name = "vqzoo"

    def __init__(self, cfg: Config, scenario: str, device: torch.device, dtype: str) -> None:
        from vqzoo.losses.adversarial import AdversarialLoss, NLayerDiscriminator
        from vqzoo.quantize import VectorQuantizer
        from vqzoo.tokenizers.vqgan import VQGAN

        adversarial = None
        if scenario == "gan":
            disc = NLayerDiscriminator(in_channels=3, ndf=cfg.disc_ndf, n_layers=cfg.disc_layers, norm="batch")
            adversarial = AdversarialLoss(disc, disc_start=0, disc_weight=cfg.disc_weight, loss="hinge", adaptive=True)
        self.model = VQGAN(
            VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=cfg.beta),
            in_channels=3, resolution=cfg.resolution, ch=cfg.ch, ch_mult=cfg.ch_mult,
            num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
            z_channels=cfg.z_channels, dropout=0.0, downsample="strided_conv", replicate_padding=False,
            reconstruction_loss="l1", perceptual_weight=0.0, codebook_weight=1.0, adversarial=adversarial,
            optimizer="adam", learning_rate=cfg.learning_rate, betas=cfg.betas,
        ).to(device).train()
        self.device, self.dtype = device, dtype
        self.optimizers, self.schedulers = self.model.configure_optimizers()
        self.step_count = 0

    def generator_parameters(self) -> list[nn.Parameter]:
        return self.model._generator_parameters()

    def discriminator_parameters(self) -> list[nn.Parameter]:
        adv = self.model.adversarial
        return [] if adv is None else list(adv.parameters())

    def __call__(self, x: torch.Tensor) -> None:
        m, vq, adv = self.model, self.model.quantizer, self.model.adversarial
        opt_g = self.optimizers[0]
        with _autocast(self.device, self.dtype):
            x_rec, q = m(x)
            nll, _ = m.reconstruction_terms(x, x_rec)
            loss = nll + m.codebook_weight * q.loss
            if adv is not None:
                g_term, _ = adv.generator_term(x_rec, nll, m.last_layer, self.step_count)
                loss = loss + g_term
        if not m._all_finite(loss):
            raise RuntimeError("vqzoo: non-finite loss in the benchmark")
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        vq.after_backward()
        opt_g.step()
        self.schedulers[0].step()
        vq.after_step()
        if adv is not None and adv.is_active(self.step_count):
            opt_d = self.optimizers[1]
            with _autocast(self.device, self.dtype):
                d_loss, _ = adv.discriminator_term(x, x_rec.detach(), self.step_count)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            self.schedulers[1].step()
        self.step_count += 1


class TamingVQ(nn.Module):
    """taming's encoder, quant_conv, VectorQuantizer2, post_quant_conv, decoder, joined as in ``VQModel``."""

    def __init__(self, cfg: Config, t: dict[str, Any]) -> None:
        super().__init__()
        dd = dict(
            ch=cfg.ch, out_ch=3, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=list(cfg.attn_resolutions), dropout=0.0, resamp_with_conv=True, in_channels=3,
            resolution=cfg.resolution, z_channels=cfg.z_channels, double_z=False,
        )
        self.encoder = t["Encoder"](**dd)
        self.decoder = t["Decoder"](**dd)
        self.quantize = t["VectorQuantizer2"](cfg.n_embed, cfg.embed_dim, beta=cfg.beta, legacy=False)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, qloss, _ = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), qloss


class TamingStep:
    """taming's modules trained with the same loss and optimizer (see the module docstring)."""

    name = "taming"

    def __init__(self, cfg: Config, scenario: str, device: torch.device, dtype: str) -> None:
        t = import_taming()
        self.t = t
        self.model = TamingVQ(cfg, t).to(device).train()
        self.device, self.dtype = device, dtype
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, betas=cfg.betas)
        self.disc = None
        if scenario == "gan":
            disc = t["NLayerDiscriminator"](input_nc=3, ndf=cfg.disc_ndf, n_layers=cfg.disc_layers, use_actnorm=False)
            self.disc = disc.apply(t["weights_init"]).to(device).train()
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.learning_rate, betas=cfg.betas)
            # calculate_adaptive_weight only reads ``discriminator_weight`` from self.
            self.loss_attrs = type("TamingLossAttrs", (), {"discriminator_weight": cfg.disc_weight})()

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [] if self.disc is None else list(self.disc.parameters())

    def __call__(self, x: torch.Tensor) -> None:
        with _autocast(self.device, self.dtype):
            x_rec, qloss = self.model(x)
            nll = torch.abs(x.contiguous() - x_rec.contiguous()).mean()
            loss = nll + 1.0 * qloss.mean()
            if self.disc is not None:
                g_loss = -torch.mean(self.disc(x_rec.contiguous()))
                d_weight = self.t["calculate_adaptive_weight"](
                    self.loss_attrs, nll, g_loss, last_layer=self.model.decoder.conv_out.weight
                )
                loss = loss + d_weight * 1.0 * g_loss
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if self.disc is not None:
            with _autocast(self.device, self.dtype):
                logits_real = self.disc(x.contiguous().detach())
                logits_fake = self.disc(x_rec.contiguous().detach())
                d_loss = 1.0 * self.t["hinge_d_loss"](logits_real, logits_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()


def build(name: str, cfg: Config, scenario: str, device: torch.device, dtype: str) -> VqzooStep | TamingStep:
    torch.manual_seed(0)
    return (VqzooStep if name == "vqzoo" else TamingStep)(cfg, scenario, device, dtype)


def make_batch(cfg: Config, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return (torch.rand(cfg.batch, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1).to(device)


def _shape(p: nn.Parameter) -> tuple[int, ...]:
    # vqzoo's codebook is (groups=1, K, D), taming's embedding (K, D): drop leading singleton dims.
    shape = tuple(p.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def param_summary(params: list[nn.Parameter]) -> tuple[int, list[tuple[int, ...]]]:
    return sum(p.numel() for p in params), sorted(_shape(p) for p in params)


def check_equal_architecture(a: Any, b: Any) -> dict[str, int]:
    """Same generator (and discriminator) parameter count and multiset of tensor shapes, or ValueError."""
    out = {}
    for part in ("generator", "discriminator"):
        na, sa = param_summary(getattr(a, f"{part}_parameters")())
        nb, sb = param_summary(getattr(b, f"{part}_parameters")())
        print(f"{part} parameters: vqzoo {na:,}  taming {nb:,}")
        if na != nb or Counter(sa) != Counter(sb):
            diff = (Counter(sa) - Counter(sb)) + (Counter(sb) - Counter(sa))
            raise ValueError(f"{part} architectures differ: vqzoo {na} vs taming {nb} parameters; shapes {diff}")
        out[f"{part}_parameters"] = na
    return out


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[torch.Tensor], None], x: torch.Tensor) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    step(x)
    _sync(x.device)
    return time.perf_counter() - t0


def interleaved_times(steps: dict[str, Any], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, list[float]]:
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n](x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(timed(steps[n], x))
        print(f"  round {r + 1}/{repeats}: " + "  ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    return times


# ---------------------------------------------------------------------- memory (subprocess)
def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; Linux >= 4.0 (clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    """The process's peak resident set.

    ``VmHWM`` of the current address space where available: unlike
    ``ru_maxrss``, which survives ``execve`` and so starts at the parent's
    peak, it belongs to this process alone (and can be reset). Elsewhere,
    ``ru_maxrss`` (kilobytes on Linux, bytes on macOS).
    """
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def live_tensor_peak(step: Callable[[torch.Tensor], None], x: torch.Tensor) -> int | None:
    """Peak bytes of live CPU tensors over one step, from torch.profiler's memory timeline (private API)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            step(x)
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        return int(max(sum(s) for s in sizes))
    except Exception as err:  # noqa: BLE001 - a private API; the RSS figure stands without it
        print(f"  (live-tensor peak unavailable: {type(err).__name__}: {err})", file=sys.stderr)
        return None


def memory_child(name: str, cfg: Config, scenario: str, device: torch.device, dtype: str, steps: int) -> dict:
    import_taming()  # both children import the same libraries
    import vqzoo.tokenizers.vqgan  # noqa: F401

    step = build(name, cfg, scenario, device, dtype)
    x = make_batch(cfg, device)
    gc.collect()
    out: dict[str, Any] = {"model": name}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(method="torch.cuda.max_memory_allocated", base_bytes=base, peak_bytes=peak, delta_bytes=peak - base)
    else:
        reset = _reset_peak_rss()
        base = _proc_status_bytes("VmRSS") if reset else None
        base = _peak_rss_bytes() if base is None else base
        for _ in range(steps):
            step(x)
        peak = _peak_rss_bytes()
        method = "VmHWM after reset minus VmRSS" if reset else "peak RSS delta (ru_maxrss)"
        out.update(method=method, base_bytes=base, peak_bytes=peak, delta_bytes=peak - base)
        out["live_tensor_peak_bytes"] = live_tensor_peak(step, x)
    return out


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--memory-child", name, "--scenario", args.scenario, "--device", args.device,
        "--dtype", args.dtype, "--threads", str(args.threads), "--ch", str(args.ch), "--batch", str(args.batch),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess for {name} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- profiling
def profile_steps(steps: dict[str, Any], x: torch.Tensor, rows: int = 25) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    tables = {}
    for n, step in steps.items():
        step(x)
        with profile(activities=activities) as prof:
            step(x)
            _sync(x.device)
        key = "self_cuda_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
        tables[n] = prof.key_averages().table(sort_by=key, row_limit=rows)
        print(f"\n=== {n}: top ops by {key} ===\n{tables[n]}")
    return tables


# ---------------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summarize(times: list[float], batch: int) -> dict[str, float]:
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "images_per_s": batch / med,
        "spread_pct": 100.0 * (max(times) - min(times)) / med,
    }


def write_markdown(path: Path, runs: dict[str, dict]) -> None:
    lines = [
        "# VQGAN training step: vqzoo vs taming-transformers",
        "",
        "One training step (forward, L1 + VQ loss [+ PatchGAN hinge with adaptive weight in `gan`], backward, "
        "Adam step) of the TE-VQGAN architecture at reduced width. **No LPIPS** (weights unavailable offline); "
        "the `recon_vq` scenario has **no GAN**. Throughput: batch / median step time after warm-up, the two "
        "models interleaved in one process. Memory: each model in its own subprocess (CPU: `ru_maxrss` high-water "
        "delta over the steps; CUDA: `max_memory_allocated`). Protocol and raw times in `train_step.json`; "
        "script `benchmarks/train_step.py`.",
        "",
        "| run | device | threads | vqzoo img/s | taming img/s | speedup (medians) | per-round ratio (min-max) "
        "| vqzoo mem (MiB) | taming mem (MiB) | live-tensor peak vqzoo / taming (MiB) | params (G / D) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 2**20
    for key, r in sorted(runs.items()):
        v, t = r["timing"]["vqzoo"], r["timing"]["taming"]
        mv, mt = r["memory"]["vqzoo"], r["memory"]["taming"]
        lv, lt = mv.get("live_tensor_peak_bytes"), mt.get("live_tensor_peak_bytes")
        live = f"{lv / mib:.0f} / {lt / mib:.0f}" if lv and lt else "n/a"
        pr = r["per_round_ratio"]
        lines.append(
            f"| {key} | {r['device_name']} | {r['threads']} | {v['images_per_s']:.2f} (±{v['spread_pct']:.0f}%) "
            f"| {t['images_per_s']:.2f} (±{t['spread_pct']:.0f}%) | **{r['speedup']:.2f}x** "
            f"| {pr['median']:.2f} ({pr['min']:.2f}-{pr['max']:.2f}) "
            f"| {mv['delta_bytes'] / mib:.0f} | {mt['delta_bytes'] / mib:.0f} | {live} "
            f"| {r['parameters']['generator_parameters']:,} / {r['parameters']['discriminator_parameters']:,} |"
        )
    lines += [
        "",
        "Spread: (max - min) / median of the timed steps. Memory columns: CPU = growth of the peak resident set "
        "over the steps on top of the built model (gradients, Adam states, activations, allocator caching); "
        "CUDA = growth of the peak allocation over the allocation after building.",
    ]
    notes = [r.get("notes") for r in runs.values() if r.get("notes")]
    for n in dict.fromkeys(notes):
        lines += ["", n]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=SCENARIOS + ("all",), default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ch", type=int, default=Config.ch)
    ap.add_argument("--batch", type=int, default=Config.batch)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler op tables for both steps")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results")
    ap.add_argument("--out", default=str(RESULTS / "train_step.json"))
    ap.add_argument("--memory-child", choices=MODELS, help=argparse.SUPPRESS)
    return ap.parse_args()


def run_scenario(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    print(f"\n## scenario {args.scenario} on {device} ({args.dtype}), {args.threads} threads, batch {cfg.batch}")
    steps = {n: build(n, cfg, args.scenario, device, args.dtype) for n in MODELS}
    params = check_equal_architecture(steps["vqzoo"], steps["taming"])
    x = make_batch(cfg, device)
    times = interleaved_times(steps, x, args.warmup, args.repeats)
    timing = {n: summarize(times[n], cfg.batch) | {"times_s": times[n]} for n in MODELS}
    ratios = [t / v for v, t in zip(times["vqzoo"], times["taming"])]
    speedup = timing["taming"]["median_s"] / timing["vqzoo"]["median_s"]
    for n in MODELS:
        s = timing[n]
        print(f"{n:7s} {s['images_per_s']:7.2f} img/s  median {s['median_s']:.3f}s  "
              f"[{s['min_s']:.3f}, {s['max_s']:.3f}]  spread {s['spread_pct']:.0f}%")
    print(f"speedup vqzoo/taming (throughput): {speedup:.3f}x  per-round ratios median "
          f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
    if args.profile:
        profile_steps(steps, x)
    del steps
    gc.collect()
    memory = {}
    if not args.no_memory:
        for n in MODELS:
            memory[n] = measure_memory(n, args)
            m = memory[n]
            live = m.get("live_tensor_peak_bytes")
            print(f"{n:7s} memory ({m['method']}): +{m['delta_bytes'] / 2**20:.1f} MiB over the built model "
                  f"(peak {m['peak_bytes'] / 2**20:.1f} MiB)"
                  + (f", live-tensor peak {live / 2**20:.1f} MiB" if live else ""))
    shims = import_taming()["shims"]
    return {
        "scenario": args.scenario,
        "loss": "L1 + VQ (beta 0.25 on commitment), codebook weight 1; no LPIPS"
        + ("; PatchGAN hinge, adaptive weight x0.8, from step 0" if args.scenario == "gan" else "; no GAN"),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "config": asdict(cfg),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "taming": _version("taming-transformers-rom1504"),
        "taming_import_shims": shims,
        "parameters": params,
        "timing": timing,
        "speedup": speedup,
        "per_round_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "memory": memory,
        "memory_method": (
            "each model in a fresh subprocess; CPU: ru_maxrss after the steps minus ru_maxrss after building "
            "model, optimizer and batch; live_tensor_peak_bytes: peak live CPU tensor bytes over one step from "
            "torch.profiler's memory timeline. CUDA: torch.cuda.max_memory_allocated (peak_bytes, absolute) and "
            "its increase over memory_allocated after building (delta_bytes)."
        ),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config(ch=args.ch, batch=args.batch)
    if args.memory_child:
        scenario = args.scenario if args.scenario != "all" else "recon_vq"
        res = memory_child(args.memory_child, cfg, scenario, device, args.dtype, args.memory_steps)
        print(json.dumps(res))
        return
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = {}
    for s in scenarios:
        args.scenario = s
        results[f"{device.type}-{args.dtype}-{s}"] = run_scenario(args, cfg, device)
    if args.no_save or args.no_memory:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    runs = existing.get("runs", {})
    runs.update(results)
    out.write_text(json.dumps({"benchmark": "VQGAN training step, vqzoo vs taming-transformers", "runs": runs}, indent=2))
    write_markdown(out.with_suffix(".md"), runs)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
