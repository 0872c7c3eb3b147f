"""One VQGAN training step: vqzoo vs taming-transformers, side by side in one process.

What is compared
----------------
The TE-VQGAN stage-1 architecture (docs/reference-implementations.md §A) at
reduced width so that it runs on a CPU: 64x64 RGB, ``ch_mult (1, 2, 2)``,
``num_res_blocks 1``, ``attn_resolutions [16]``, ``z_channels 256``, a codebook
of 128 codes x 256 dims, and ``ch`` 64 by default (the paper uses 128). Both
encoders use zero padding and strided-conv downsampling: stock taming has no
replication padding, so vqzoo runs with ``replicate_padding=False`` to keep the
two networks identical. The script checks that the generators (and
discriminators) hold the same parameter tensors -- same count and the same
multiset of shapes -- and refuses to time unequal models.

* ``vqzoo``: ``vqzoo.VQGAN`` through its own ``forward(x) -> (x_rec,
  QuantizerOutput)`` (input checks on, as in training) and its own optimizers
  (``configure_optimizers``: Adam, betas (0.5, 0.9)). The step follows
  ``Tokenizer.training_step``: forward, reconstruction + ``codebook_weight``
  x VQ loss (+ adversarial term), the non-finite-loss check, ``zero_grad``,
  backward, ``quantizer.after_backward()``, optimizer step, scheduler step,
  ``quantizer.after_step()`` (+ the discriminator step; the discriminator is
  frozen during the generator step, as ``toggle_optimizer`` does in the
  library). Lightning's logging is left out on both sides. Three speed fixes
  that this benchmark first measured as a patched contender are library code
  now: a contiguous quantizer output, ``Upsample`` as one stride-2 transposed
  convolution with the same weights, and the frozen discriminator.
* ``taming`` (``taming-transformers-rom1504``):
  ``taming.modules.diffusionmodules.model.Encoder`` / ``Decoder``,
  ``taming.modules.vqvae.quantize.VectorQuantizer2(beta=0.25, legacy=False)``,
  and 1x1 ``quant_conv`` / ``post_quant_conv`` joined as taming's ``VQModel``
  joins them; Adam with betas (0.5, 0.9).

Loss: L1 reconstruction + VQ loss (beta 0.25 on the commitment term), codebook
weight 1. **No LPIPS** (its VGG weights cannot be downloaded offline) and, in
the scenario ``recon_vq``, **no GAN**. The scenario ``gan`` adds the PatchGAN
on both sides from step 0: vqzoo's ``NLayerDiscriminator`` (batch norm) inside
``AdversarialLoss`` (hinge, adaptive weight x 0.8) against taming's
``NLayerDiscriminator`` with its ``weights_init``, taming's ``hinge_d_loss``
and taming's own ``VQLPIPSWithDiscriminator.calculate_adaptive_weight``
(called unbound: constructing that class would load LPIPS). Both run the
generator step, then one discriminator step on the detached reconstruction.
(Taming's own ``VQModel.training_step`` runs the whole autoencoder forward a
second time for the discriminator step; it is not charged for that here.)

Taming imports: only the four modules above are imported, never ``taming``'s
model or data packages (they need old ``pytorch_lightning``/``transformers``
APIs). They import cleanly with the bench extra; should
``taming.modules.losses.lpips`` ever fail to import, a stub module is put in
``sys.modules`` first (LPIPS is never constructed) and the results say so.

How it is measured
------------------
* Throughput: images per second = batch / median step time after warm-up.
  The contenders are timed in one process, one step each per round, the order
  rotating every round so that drift in the load of the (shared) machine hits
  all alike. Wall-clock time is the headline; process CPU time per step is
  recorded too (with one thread it is nearly immune to other processes'
  load; with more it includes the pool's spin-waits). Reported: the median,
  min, max, spread = (max - min) / median, and the median of the per-round
  ratios. ``torch.set_num_threads(--threads)``, 2 by default.
* Peak memory: each contender in a fresh subprocess (so none sees another's
  allocations or allocator caches), built, then ``--memory-steps`` steps.

  - CPU: the peak resident set of the process over the steps minus the
    resident set after building model, optimizer and batch: Linux's ``VmHWM``
    after resetting it through ``/proc/self/clear_refs`` (``ru_maxrss`` is no
    use here: it survives ``execve``, so a child starts with its parent's
    peak; it is the fallback elsewhere). The delta is what training adds on
    top of the weights: gradients, Adam states and the activation peak, as the
    OS sees it (allocator caching included). tracemalloc cannot see torch's
    allocations. Cross-check, independent of the allocator: the peak of tensor
    bytes allocated during one more step and alive at once, from
    ``torch.profiler``'s memory events (see :func:`live_tensor_peak`).
  - CUDA: ``torch.cuda.max_memory_allocated()`` over the steps (absolute) and
    its increase over ``memory_allocated()`` after building.

* ``--device cuda --dtype bf16`` runs forward and losses under
  ``torch.autocast(dtype=torch.bfloat16)`` (backward outside, as usual) and
  synchronises before reading each clock; the device name is recorded.
* ``--profile`` prints, per op, the smallest self time over three profiled
  steps of each contender side by side (``torch.profiler``): where the time
  goes and where the contenders differ.

Results merge into ``benchmarks/results/train_step.json`` under a key per
(device, dtype, scenario, width, threads) and ``train_step.md`` is regenerated from it.

Run: ``PYTHONPATH=. python benchmarks/train_step.py`` (needs ``pip install -e .[bench]``);
``--scenario recon_vq|gan|all``, ``--device cuda --dtype bf16``, ``--profile``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("recon_vq", "gan")


@dataclass(frozen=True)
class Config:
    """Architecture and optimisation shared by all contenders (TE-VQGAN stage 1 at reduced width)."""

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
_TAMING: dict[str, Any] = {}


def import_taming() -> dict[str, Any]:
    """The taming pieces used here, importing only the modules that hold them (cached)."""
    if _TAMING:
        return _TAMING
    import importlib

    shims: list[str] = []
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
    from taming.modules.vqvae.quantize import VectorQuantizer2

    try:
        vqp = importlib.import_module("taming.modules.losses.vqperceptual")
    except ImportError:
        stub = types.ModuleType("taming.modules.losses.lpips")
        stub.LPIPS = type("LPIPS", (nn.Module,), {})  # never instantiated here
        sys.modules["taming.modules.losses.lpips"] = stub
        shims.append("taming.modules.losses.lpips replaced by a stub (LPIPS is never constructed)")
        vqp = importlib.import_module("taming.modules.losses.vqperceptual")
    _TAMING.update(
        Encoder=Encoder,
        Decoder=Decoder,
        VectorQuantizer2=VectorQuantizer2,
        NLayerDiscriminator=NLayerDiscriminator,
        weights_init=weights_init,
        hinge_d_loss=vqp.hinge_d_loss,
        calculate_adaptive_weight=vqp.VQLPIPSWithDiscriminator.calculate_adaptive_weight,
        shims=shims,
    )
    return _TAMING


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------- vqzoo
class VqzooStep:
    """vqzoo's VQGAN trained as ``Tokenizer.training_step`` does it, without Lightning's logging."""

    def __init__(self, cfg: Config, scenario: str, device: torch.device, dtype: str) -> None:
        from vqzoo.losses.adversarial import AdversarialLoss, NLayerDiscriminator
        from vqzoo.optim import spec
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
            optimizer=spec("torch.optim.Adam", lr=cfg.learning_rate, betas=cfg.betas),
        ).to(device).train()
        self.device, self.dtype = device, dtype
        self.optimizers, self.schedulers = self.model.configure_optimizers()
        self.step_count = 0

    def generator_parameters(self) -> list[nn.Parameter]:
        return self.model._generator_parameters()

    def discriminator_parameters(self) -> list[nn.Parameter]:
        adv = self.model.adversarial
        return [] if adv is None else list(adv.parameters())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]

    def __call__(self, x: torch.Tensor) -> None:
        m, vq, adv = self.model, self.model.quantizer, self.model.adversarial
        opt_g = self.optimizers[0]
        if adv is not None:  # Tokenizer.training_step toggles the generator optimizer: D gets no grads here
            adv.requires_grad_(False)
        disc_active = adv is not None and adv.is_active(self.step_count)
        # The library's non-finite guard, without a host sync (vqzoo/nn/nonfinite.py): saved, flagged, undone.
        m.nonfinite_begin(self.optimizers[:2] if disc_active else self.optimizers[:1], m._guarded_buffers(disc_active))
        with _autocast(self.device, self.dtype):
            x_rec, q = m(x)
            nll, _ = m.reconstruction_terms(x, x_rec)
            loss = nll + m.codebook_weight * q.loss
            if adv is not None:
                g_term, _ = adv.generator_term(x_rec, nll, m.last_layer, self.step_count)
                loss = loss + g_term
        ok = m.nonfinite_flag(loss)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        vq.after_backward()
        opt_g.step()
        self.schedulers[0].step()
        vq.after_step()
        oks = [ok]
        if disc_active:
            adv.requires_grad_(True)
            opt_d = self.optimizers[1]
            with _autocast(self.device, self.dtype):
                d_loss, _ = adv.discriminator_term(x, x_rec.detach(), self.step_count)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            self.schedulers[1].step()
            oks.append(ok & m.nonfinite_flag(d_loss))
        m.nonfinite_end(oks)
        self.step_count += 1


# ---------------------------------------------------------------------- taming
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
            # calculate_adaptive_weight reads only ``discriminator_weight`` from its ``self``.
            self.loss_attrs = types.SimpleNamespace(discriminator_weight=cfg.disc_weight)

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


# ---------------------------------------------------------------------- building and checks
def build(name: str, cfg: Config, scenario: str, device: torch.device, dtype: str) -> VqzooStep | TamingStep:
    """A contender, from seed 0."""
    torch.manual_seed(0)
    if name == "taming":
        return TamingStep(cfg, scenario, device, dtype)
    return VqzooStep(cfg, scenario, device, dtype)


def make_batch(cfg: Config, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return (torch.rand(cfg.batch, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1).to(device)


def _shape(p: nn.Parameter) -> tuple[int, ...]:
    # vqzoo's codebook is (groups=1, K, D), taming's embedding (K, D): drop leading singleton dims.
    shape = tuple(p.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def check_equal_architecture(a: Any, b: Any) -> dict[str, int]:
    """Same parameter count and multiset of tensor shapes for generator and discriminator, or ValueError."""
    out = {}
    for part in ("generator", "discriminator"):
        pa, pb = getattr(a, f"{part}_parameters")(), getattr(b, f"{part}_parameters")()
        na, nb = sum(p.numel() for p in pa), sum(p.numel() for p in pb)
        sa, sb = Counter(_shape(p) for p in pa), Counter(_shape(p) for p in pb)
        print(f"{part} parameters: vqzoo {na:,}  taming {nb:,}")
        if na != nb or sa != sb:
            raise ValueError(
                f"{part} architectures differ: vqzoo {na} vs taming {nb} parameters; shapes {(sa - sb) + (sb - sa)}"
            )
        out[f"{part}_parameters"] = na
    return out


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[torch.Tensor], None], x: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    _sync(x.device)
    c0, t0 = time.process_time(), time.perf_counter()
    step(x)
    _sync(x.device)
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved_times(steps: dict[str, Any], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, dict[str, list]]:
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n](x)
    times: dict[str, dict[str, list]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            wall, cpu = timed(steps[n], x)
            times[n]["wall"].append(wall)
            times[n]["cpu"].append(cpu)
        print(f"  round {r + 1}/{repeats}: " + "  ".join(f"{n} {times[n]['wall'][-1]:.3f}s" for n in names), flush=True)
    return times


def summarize(times: list[float], batch: int) -> dict[str, float]:
    med = statistics.median(times)
    return {
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "images_per_s": batch / med,
        "spread_pct": 100.0 * (max(times) - min(times)) / med,
    }


# ---------------------------------------------------------------------- memory (one subprocess per contender)
def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    """``VmHWM`` of this address space, else ``ru_maxrss`` (kilobytes on Linux, bytes on macOS)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def live_tensor_peak(step: Any, x: torch.Tensor) -> int | None:
    """Peak bytes of CPU tensors allocated during one step and alive at once (torch.profiler memory events).

    Gradients are released first (``grad = None``, as every step's
    ``zero_grad(set_to_none=True)`` does) because the profiler cannot see the
    freeing of blocks allocated before it started; what remains from before
    (weights, Adam states) is neither allocated nor freed during the step. So
    the figure is the step's own peak: activations, new gradients and
    temporaries.
    """
    import itertools

    from torch.profiler import ProfilerActivity, profile

    for p in step.generator_parameters() + step.discriminator_parameters():
        p.grad = None
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(x)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        deltas = (n for _, n in sorted((e.start_ns(), e.nbytes()) for e in events))
        return int(max(itertools.accumulate(deltas, initial=0)))
    except Exception as err:  # noqa: BLE001 - profiler internals; the RSS figure stands without it
        print(f"  (live-tensor peak unavailable: {type(err).__name__}: {err})", file=sys.stderr)
        return None


def memory_child(name: str, cfg: Config, scenario: str, device: torch.device, dtype: str, steps: int) -> dict:
    import_taming()  # every child imports the same libraries
    import vqzoo.tokenizers.vqgan  # noqa: F401

    step = build(name, cfg, scenario, device, dtype)
    x = make_batch(cfg, device)
    gc.collect()
    out: dict[str, Any] = {"contender": name}
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
        method = "VmHWM (reset after building) minus VmRSS after building" if reset else "ru_maxrss delta"
        out.update(method=method, base_bytes=base, peak_bytes=peak, delta_bytes=peak - base)
        out["live_tensor_peak_bytes"] = live_tensor_peak(step, x)
    return out


def measure_memory(name: str, args: argparse.Namespace, scenario: str) -> dict:
    cmd = [
        sys.executable, __file__, "--memory-child", name, "--scenario", scenario, "--device", args.device,
        "--dtype", args.dtype, "--threads", str(args.threads), "--ch", str(args.ch), "--batch", str(args.batch),
        "--memory-steps", str(args.memory_steps),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess for {name} failed:\n{res.stderr[-4000:]}")
    for line in res.stderr.splitlines():
        if "unavailable" in line:
            print(line.strip())
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- profiling
def profile_side_by_side(steps: dict[str, Any], x: torch.Tensor, reps: int = 3, rows: int = 30) -> str:
    """Per op, the smallest self time (ms) over ``reps`` profiled steps of each contender; the largest first.

    The minimum over repeats discards the time an op spent descheduled on a
    shared machine, so differences between contenders stand out.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    names = list(steps)
    best: dict[str, dict[str, tuple[float, int]]] = {n: {} for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            with profile(activities=activities) as prof:
                steps[n](x)
                _sync(x.device)
            for e in prof.key_averages():
                us = e.self_device_time_total if cuda else e.self_cpu_time_total
                old = best[n].get(e.key)
                best[n][e.key] = (us, e.count) if old is None else (min(old[0], us), e.count)
    keys = sorted(set().union(*best.values()), key=lambda k: -max(best[n].get(k, (0, 0))[0] for n in names))
    head = f"{'op (self ' + ('device' if cuda else 'CPU') + ' time, min over ' + str(reps) + ' steps)':64s}" + "".join(
        f"{n + ' ms':>14s}{'calls':>7s}" for n in names
    )
    lines = [head]
    for k in keys[:rows]:
        cells = "".join(f"{best[n].get(k, (0, 0))[0] / 1e3:14.1f}{best[n].get(k, (0, 0))[1]:7d}" for n in names)
        lines.append(f"{k[:64]:64s}{cells}")
    lines.append(f"{'total':64s}" + "".join(f"{sum(v[0] for v in best[n].values()) / 1e3:14.1f}{'':7s}" for n in names))
    table = "\n".join(lines)
    print("\n" + table)
    return table


# ---------------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _markdown_row(name: str, r: dict) -> str:
    mib = 2**20
    w, c = r["timing"][name]["wall"], r["timing"][name]["cpu"]
    tc = r["timing"]["taming"]["cpu"]["median_s"]
    mem = r["memory"].get(name)
    live = mem.get("live_tensor_peak_bytes") if mem else None
    pr = r["per_round_ratio"].get(name)
    cells = [
        name,
        f"{w['images_per_s']:.2f}",
        f"{w['median_s']:.3f} ({w['min_s']:.3f}-{w['max_s']:.3f}, {w['spread_pct']:.0f}%)",
        "1" if name == "taming" else f"**{r['speedup'][name]:.2f}x**",
        f"{pr['median']:.2f} ({pr['min']:.2f}-{pr['max']:.2f})" if pr else "-",
        f"{c['median_s']:.3f} ({c['min_s']:.3f}-{c['max_s']:.3f}, {c['spread_pct']:.0f}%)",
        "1" if name == "taming" else f"**{tc / c['median_s']:.2f}x**",
        f"{mem['delta_bytes'] / mib:.0f}" if mem else "-",
        f"{live / mib:.0f}" if live else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def write_markdown(path: Path, runs: dict[str, dict]) -> None:
    lines = [
        "# VQGAN training step: vqzoo vs taming-transformers",
        "",
        "One training step (forward; L1 + VQ loss, plus PatchGAN hinge loss with the adaptive weight and a "
        "discriminator step in `gan`; backward; Adam step) of the TE-VQGAN architecture at reduced width, 64x64, "
        "identical parameter tensors on both sides. **No LPIPS** (weights unavailable offline); `recon_vq` has "
        "**no GAN**. Throughput = batch / median wall-clock step time after warm-up, contenders interleaved in one "
        "process. Memory = growth of the peak over the built model, each contender in its own "
        "subprocess (CPU: resident set; CUDA: allocated). Script: `benchmarks/train_step.py`; raw times, CPU times "
        "and the protocol: `train_step.json`.",
        "",
    ]
    for key, r in sorted(runs.items()):
        lines += [
            f"## {key}",
            "",
            f"{r['device_name']}, {r['threads']} threads, {r['dtype']}, ch {r['config']['ch']}, batch "
            f"{r['config']['batch']}, {r['repeats']} timed rounds after {r['warmup']} warm-up; load average "
            f"{r['load_average'][0]:.1f} -> {r['load_average'][1]:.1f}. Parameters: generator "
            f"{r['parameters']['generator_parameters']:,}, discriminator {r['parameters']['discriminator_parameters']:,}.",
            "",
            "| contender | img/s (wall) | wall s/step: median (min-max, spread) | speedup vs taming (wall) "
            "| per-round ratio (min-max) | CPU s/step: median (min-max, spread) | speedup vs taming (CPU time) "
            "| memory +MiB | live-tensor peak MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in r["timing"]:
            lines.append(_markdown_row(name, r))
        if r.get("taming_import_shims"):
            lines += ["", f"taming import shims: {'; '.join(r['taming_import_shims'])}."]
        lines.append("")
    lines += [
        "Spread = (max - min) / median of the timed steps; per-round ratio = taming's wall time / the contender's "
        "in the same round. CPU s/step = process CPU time of the step, all threads. With one thread it is nearly "
        "immune to other processes' load and is the figure to trust on a shared machine; with several threads it "
        "includes the pool's spin-waits, and wall time on a loaded machine mostly measures the other processes "
        "(a descheduled thread stalls the whole parallel region).",
    ]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=SCENARIOS + ("all",), default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast to bfloat16")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--ch", type=int, default=Config.ch, help="base width (the TE paper uses 128)")
    ap.add_argument("--batch", type=int, default=Config.batch)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print a side-by-side torch.profiler op table")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses (and saving)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="ch 32, batch 2, 1 warm-up + 2 rounds, no memory: a smoke run")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak for MFU (default: known GPUs at --dtype, else no MFU)")
    ap.add_argument("--out", default=str(RESULTS / "train_step.json"))
    ap.add_argument("--memory-child", choices=("vqzoo", "taming"), help=argparse.SUPPRESS)
    return ap.parse_args()


def run_scenario(args: argparse.Namespace, scenario: str, cfg: Config, device: torch.device) -> dict:
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n## scenario {scenario} on {device} ({args.dtype}), {args.threads} threads, ch {cfg.ch}, batch {cfg.batch}")
    names = ["vqzoo", "taming"]
    steps = {n: build(n, cfg, scenario, device, args.dtype) for n in names}
    params = check_equal_architecture(steps["vqzoo"], steps["taming"])
    x = make_batch(cfg, device)
    times = interleaved_times(steps, x, args.warmup, args.repeats)
    timing = {
        n: {"wall": summarize(times[n]["wall"], cfg.batch), "cpu": summarize(times[n]["cpu"], cfg.batch),
            "wall_s": times[n]["wall"], "cpu_s": times[n]["cpu"]}
        for n in names
    }
    tw = timing["taming"]["wall"]["median_s"]
    speedup = {n: tw / timing[n]["wall"]["median_s"] for n in names}
    per_round = {}
    for n in names:
        if n == "taming":
            continue
        ratios = [t / v for v, t in zip(times[n]["wall"], times["taming"]["wall"])]
        per_round[n] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    tc = timing["taming"]["cpu"]["median_s"]
    for n in names:
        w, c = timing[n]["wall"], timing[n]["cpu"]
        print(f"{n:12s} {w['images_per_s']:7.2f} img/s  median {w['median_s']:.3f}s [{w['min_s']:.3f}, {w['max_s']:.3f}] "
              f"spread {w['spread_pct']:.0f}%  speedup {speedup[n]:.3f}x  (CPU time {c['median_s']:.3f}s, "
              f"speedup {tc / c['median_s']:.3f}x)")
    peak = peak_flops(device, args.dtype, args.peak_tflops)
    flops = {n: step_flops(steps[n], x) for n in names}
    mfu = {}
    for n in names:
        f, t = flops[n], timing[n]["wall"]["median_s"]
        mfu[n] = (f / t / peak) if (f and peak) else None
        if f:
            print(f"{n:12s} {f / 1e9:.1f} GFLOP/step, {f / t / 1e12:.3f} TFLOP/s achieved"
                  + (f", MFU {100 * mfu[n]:.1f}%" if mfu[n] is not None else ""))
    profile = profile_side_by_side(steps, x) if args.profile else None
    del steps
    gc.collect()
    memory = {}
    if not args.no_memory:
        for n in names:
            memory[n] = m = measure_memory(n, args, scenario)
            live = m.get("live_tensor_peak_bytes")
            print(f"{n:12s} memory: +{m['delta_bytes'] / 2**20:.1f} MiB over the built model "
                  f"(peak {m['peak_bytes'] / 2**20:.1f} MiB; {m['method']})"
                  + (f", live-tensor peak {live / 2**20:.1f} MiB" if live else ""))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "scenario": scenario,
        "loss": "L1 + VQ (beta 0.25 on commitment), codebook weight 1; no LPIPS"
        + ("; PatchGAN hinge, adaptive weight x0.8, active from step 0" if scenario == "gan" else "; no GAN"),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "config": asdict(cfg),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_average": [load0, load1],
        "torch": torch.__version__,
        "taming": _version("taming-transformers-rom1504"),
        "taming_import_shims": import_taming()["shims"],
        "parameters": params,
        "timing": timing,
        "speedup": speedup,
        "per_round_ratio": per_round,
        "flops_per_step": flops,
        "peak_flops": peak,
        "mfu": mfu,
        "memory": memory,
        "memory_method": (
            "each contender in a fresh subprocess, built, then memory_steps steps. CPU: peak resident set over the "
            "steps (VmHWM after a clear_refs reset) minus the resident set after building model, optimizer and batch; "
            "live_tensor_peak_bytes: peak of CPU tensor bytes allocated during one more step (gradients released "
            "first) and alive at once, from torch.profiler memory events. CUDA: torch.cuda.max_memory_allocated "
            "(peak_bytes, absolute) and its increase over "
            "memory_allocated after building (delta_bytes)."
        ),
        "profile": profile,
    }


#: dense tensor-core peaks (TFLOP/s) by device-name substring and dtype, from the vendors' datasheets
PEAK_TFLOPS = {("H200", "bf16"): 989.0, ("H100", "bf16"): 989.0, ("A100", "bf16"): 312.0,
               ("H200", "fp32"): 67.0, ("H100", "fp32"): 67.0, ("A100", "fp32"): 19.5}


def peak_flops(device: torch.device, dtype: str, override: float | None) -> float | None:
    """The device's peak FLOP/s for MFU, or None when unknown (CPU)."""
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (key, dt), tflops in PEAK_TFLOPS.items():
        if key in name and dt == dtype:
            return tflops * 1e12
    return None


def step_flops(step: Any, x: torch.Tensor) -> int | None:
    """FLOPs of one training step (forward + backward matmuls and convolutions), by torch's FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        step(x)
    return int(counter.get_total_flops())


def main() -> None:
    args = parse_args()
    if args.quick:
        args.ch, args.batch, args.warmup, args.repeats, args.no_memory = 32, 2, 1, 2, True
    if args.ch < 32 or args.ch % 32:
        raise ValueError(f"--ch must be a multiple of 32 (taming's GroupNorm has 32 groups), got {args.ch}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config(ch=args.ch, batch=args.batch)
    if args.memory_child:
        scenario = args.scenario if args.scenario != "all" else "recon_vq"
        print(json.dumps(memory_child(args.memory_child, cfg, scenario, device, args.dtype, args.memory_steps)))
        return
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = {f"{device.type}-{args.dtype}-{s}-ch{cfg.ch}-t{args.threads}": run_scenario(args, s, cfg, device) for s in scenarios}
    if args.no_save or (args.no_memory and not args.quick):
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
