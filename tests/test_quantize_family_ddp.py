"""Two processes on CPU (gloo): LFQ's global entropy and RVQ's quantizer dropout stay rank-consistent."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from two_ranks import run_on_two_ranks

from vqzoo.quantize import LookupFreeQuantizer, ResidualQuantizer, VectorQuantizer

STEPS = 5


def _data(step: int, rank: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(*shape, generator=g) * 0.3 + 0.2 * rank  # ranks see different data


def _lfq() -> LookupFreeQuantizer:
    torch.manual_seed(0)
    return LookupFreeQuantizer(4, dim=6, temperature=0.5).train()


def _rvq() -> ResidualQuantizer:
    torch.manual_seed(0)
    inner = VectorQuantizer(8, 4, update="ema", decay=0.8)
    return ResidualQuantizer(inner, depth=3, quantizer_dropout=0.7, dropout_seed=5).train()


def _average_grads(module: torch.nn.Module, world: int) -> None:
    """What DDP does to parameter gradients."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different global RNG per rank: nothing may depend on it
        lfq = _lfq()
        opt = torch.optim.SGD(lfq.parameters(), lr=0.1)
        entropies, first_grads = [], None
        for step in range(STEPS):
            out = lfq(_data(step, rank, (2, 6, 3, 3)))
            opt.zero_grad()
            (out.loss + out.quantized.square().mean()).backward()  # a decoder stand-in reaches project_out
            _average_grads(lfq, world)
            if step == 0:
                first_grads = [p.grad.clone() for p in lfq.parameters()]
            entropies.append(out.losses["codebook_entropy"].detach().clone())
            opt.step()
        rvq = _rvq()
        depths = []
        for step in range(3 * STEPS):
            rvq(_data(step, rank, (2, 4, 3, 3)))
            depths.append(rvq.last_depth)
        torch.save(
            {
                "lfq": {k: v.clone() for k, v in lfq.state_dict().items()},
                "entropies": entropies,
                "first_grads": first_grads,
                "rvq": {k: v.clone() for k, v in rvq.state_dict().items() if isinstance(v, torch.Tensor)},
                "depths": depths,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_lfq_and_rvq_stay_bit_identical_across_two_ranks() -> None:
    r0, r1 = run_on_two_ranks(_worker)

    for key in r0["lfq"]:
        assert torch.equal(r0["lfq"][key], r1["lfq"][key]), key
    for a, b in zip(r0["entropies"], r1["entropies"]):
        assert torch.equal(a, b)  # the codebook entropy is of the global batch, on both ranks
    for key in r0["rvq"]:
        if key.endswith("usage"):  # local assignment counts, summed over ranks only when a reset reads them
            continue
        assert torch.equal(r0["rvq"][key], r1["rvq"][key]), key
    assert r0["depths"] == r1["depths"] and len(set(r0["depths"])) > 1  # same dropout draws, and some drop

    # one process over both ranks' data: the same codebook entropy and the same (averaged) gradient
    single = _lfq()
    z = torch.cat([_data(0, 0, (2, 6, 3, 3)), _data(0, 1, (2, 6, 3, 3))])
    out = single(z)
    (out.loss + out.quantized.square().mean()).backward()
    assert torch.allclose(out.losses["codebook_entropy"], r0["entropies"][0], atol=1e-6)
    for p, g in zip(single.parameters(), r0["first_grads"]):
        assert torch.allclose(p.grad, g, atol=1e-6)
