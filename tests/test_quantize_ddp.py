"""Two processes on CPU (gloo): codebooks stay bit-identical and statistics equal one process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from two_ranks import run_on_two_ranks

from vqzoo.metrics.codebook import CodebookUsage
from vqzoo.quantize import DeadCodeReset, GradientMagnitudeReset, VectorQuantizer

STEPS = 6


def _data(step: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(2, 4, 3, 3, generator=g) + rank  # ranks see different data


def _ema_quantizer(reset: bool) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(16, 4, update="ema", decay=0.8, reset=DeadCodeReset(every=2) if reset else None).train()


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG per rank: resets must still agree
        # EMA + dead-code reset
        vq = _ema_quantizer(reset=True)
        moved = []
        for step in range(STEPS):
            vq(_data(step, rank))
            moved.append(vq.after_step())
        # EMA without reset, to compare with one process over the concatenated data
        plain = _ema_quantizer(reset=False)
        for step in range(STEPS):
            plain(_data(step, rank))
        # gradient codebook + gradient-magnitude reset, gradients averaged like DDP does
        torch.manual_seed(0)
        gq = VectorQuantizer(12, 4, layout="per_token", num_groups=2, reset=GradientMagnitudeReset(every=3))
        opt = torch.optim.SGD(gq.parameters(), lr=0.5)
        for step in range(STEPS):
            z = _data(step, rank).reshape(2, 9, 4)[:, :8]
            out = gq(z)
            opt.zero_grad()
            out.loss.backward()
            dist.all_reduce(gq.codebook.weight.grad)
            gq.codebook.weight.grad /= world
            gq.after_backward()
            opt.step()
            gq.after_step()
        # usage histogram over an evaluation set, reduced across ranks by the metric
        metric = CodebookUsage(16)
        plain.eval()
        for step in range(3):
            metric.update(plain.histogram(plain(_data(50 + step, rank)).indices))
        hist = metric.compute()  # syncs across ranks, then restores the local state
        with metric.sync_context():
            synced_counts = metric.counts.clone()
        torch.save(
            {
                "ema_reset": vq.codebook.weight.detach().clone(),
                "ema_reset_count": vq.codebook.ema_count.clone(),
                "moved": moved,
                "plain": plain.codebook.weight.detach().clone(),
                "grad_reset": gq.codebook.weight.detach().clone(),
                "grad_moved": int(gq.reset.num_resets),
                "metric_counts": synced_counts,
                "usage": hist["usage"],
                "perplexity": hist["perplexity"],
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_codebooks_stay_identical_and_match_single_process() -> None:
    r0, r1 = run_on_two_ranks(_worker)

    # bit-identical on both ranks after EMA steps and random resets
    assert torch.equal(r0["ema_reset"], r1["ema_reset"])
    assert torch.equal(r0["ema_reset_count"], r1["ema_reset_count"])
    assert r0["moved"] == r1["moved"] and sum(r0["moved"]) > 0
    assert torch.equal(r0["grad_reset"], r1["grad_reset"])
    assert r0["grad_moved"] == 2
    assert torch.equal(r0["plain"], r1["plain"])

    # EMA with all-reduced statistics equals one process over both ranks' data
    single = _ema_quantizer(reset=False)
    for step in range(STEPS):
        single(torch.cat([_data(step, 0), _data(step, 1)]))
    assert torch.allclose(single.codebook.weight, r0["plain"], atol=1e-5)

    # the usage histogram gathered across ranks equals one process over the same data
    single.codebook.weight.data.copy_(r0["plain"])
    single.eval()
    counts = torch.zeros(1, 16, dtype=torch.long)
    for step in range(3):
        for rank in range(2):
            counts += single.histogram(single(_data(50 + step, rank)).indices)
    assert torch.equal(r0["metric_counts"], counts)
    assert torch.equal(r1["metric_counts"], counts)
    single_metric = CodebookUsage(16)
    single_metric.update(counts)
    res = single_metric.compute()
    for r in (r0, r1):
        assert torch.equal(r["usage"], res["usage"]) and torch.allclose(r["perplexity"], res["perplexity"])
