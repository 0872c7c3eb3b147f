"""FSQ, LFQ, residual VQ, SimVQ and the rotation trick against independent float64 computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqzoo.metrics.codebook import CodebookUsage
from vqzoo.quantize import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    ResidualQuantizer,
    VectorQuantizer,
)


# ---------------------------------------------------------------------- FSQ
def fsq_reference(z: torch.Tensor, levels: list[int], eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 bound, rounding and normalisation of Mentzer et al. (atanh shift), and the mixed-radix index."""
    z = z.double()
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - eps) / 2
    offset = torch.tensor([0.5 if n % 2 == 0 else 0.0 for n in levels], dtype=torch.float64)
    bounded = torch.tanh(z + torch.atanh((offset / half_l).clamp(max=1 - eps))) * half_l - offset
    half_width = torch.tensor([n // 2 for n in levels], dtype=torch.float64)
    rounded = torch.round(bounded)
    index = torch.zeros(z.shape[:-1], dtype=torch.long)
    radix = 1
    for i, n in enumerate(levels):
        index += (rounded[..., i] + n // 2).long() * radix
        radix *= n
    return rounded / half_width, index


def fsq_input_for(digits: torch.Tensor, levels: list[int], eps: float = 1e-3, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """Features whose bounded value lands 0.3 (or ``jitter``) inside digit ``k_i``'s rounding cell."""
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * (1 - eps) / 2
    offset = torch.tensor([0.5 if n % 2 == 0 else 0.0 for n in levels], dtype=torch.float64)
    v = digits.double() - torch.tensor([n // 2 for n in levels], dtype=torch.float64)
    t = v - 0.3 * torch.sign(v) if jitter is None else v + jitter.double()
    t = torch.minimum(torch.maximum(t + offset, -0.999 * half_l), 0.999 * half_l) - offset  # inside tanh's range
    return (torch.atanh((t + offset) / half_l) - torch.atanh((offset / half_l).clamp(max=1 - eps))).float()


def test_fsq_bound_hand_worked() -> None:
    fsq = FiniteScalarQuantizer([4, 5])
    # L = 5: h = 2·0.999, no offset, bound(0) = 0; L = 4: h = 1.5·0.999, offset 0.5, shift atanh(0.5/h)
    z = torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0]])
    b = fsq.bound(z)
    assert torch.allclose(b[0], torch.zeros(2), atol=1e-6)
    assert torch.allclose(b[1], torch.tensor([1.5 * 0.999 - 0.5, 2 * 0.999]), atol=1e-6)
    assert torch.allclose(b[2], torch.tensor([-1.5 * 0.999 - 0.5, -2 * 0.999]), atol=1e-6)
    # so the grid ends are L = 4: {-1, ..., 0.5} (-2/2 .. 1/2), L = 5: {-1, ..., 1}
    out = fsq(z.view(3, 1, 2).transpose(1, 2).unsqueeze(-1))  # (B, 2, 1, 1)
    assert out.quantized[:, :, 0, 0].tolist() == [[0.0, 0.0], [0.5, 1.0], [-1.0, -1.0]]
    # digits (2, 2), (3, 4), (0, 0) -> mixed radix k_0 + 4 k_1
    assert out.indices.flatten().tolist() == [2 + 4 * 2, 3 + 4 * 4, 0]


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3], [7, 6, 4]])
def test_fsq_matches_float64_reference(levels: list[int]) -> None:
    torch.manual_seed(0)
    fsq = FiniteScalarQuantizer(levels, layout="per_token")
    z = torch.randn(4, 50, len(levels)) * 2
    out = fsq(z)
    grid, index = fsq_reference(z, levels)
    assert torch.allclose(out.quantized.double(), grid, atol=1e-6)
    assert torch.equal(out.indices, index)
    assert out.loss.item() == 0.0 and out.losses == {}


def test_fsq_every_code_round_trips() -> None:
    levels = [3, 4, 5]
    fsq = FiniteScalarQuantizer(levels, layout="per_token")
    K = fsq.num_codes
    assert K == 60
    codes = torch.arange(K)
    digits = fsq.indices_to_digits(codes)
    assert torch.equal(fsq.digits_to_indices(digits), codes)  # index <-> digits is a bijection
    grid = fsq.lookup(codes.view(1, K))[0]
    assert len({tuple(row.tolist()) for row in grid}) == K  # distinct grid points
    assert grid.min() >= -1 and grid.max() <= 1
    # a feature inside each code's cell quantizes to that code, and to its grid point
    z = fsq_input_for(digits, levels).view(1, K, 3)
    out = fsq(z)
    assert torch.equal(out.indices[0], codes)
    assert torch.equal(out.quantized, fsq.lookup(out.indices))


def test_fsq_straight_through_gradient_is_the_tanh_derivative() -> None:
    levels = [5, 4]
    fsq = FiniteScalarQuantizer(levels, layout="per_token")
    z = torch.randn(2, 7, 2, dtype=torch.float32, requires_grad=True)
    g = torch.randn(2, 7, 2)
    (gz,) = torch.autograd.grad((fsq(z).quantized * g).sum(), z)
    zd = z.detach().double()
    L = torch.tensor(levels, dtype=torch.float64)
    half_l = (L - 1) * 0.999 / 2
    offset = torch.tensor([0.0, 0.5], dtype=torch.float64)
    d_bound = (1 - torch.tanh(zd + torch.atanh(offset / half_l)) ** 2) * half_l
    expected = g.double() * d_bound / torch.tensor([2.0, 2.0], dtype=torch.float64)
    assert torch.allclose(gz.double(), expected, atol=1e-6)


def test_fsq_projections_when_dim_differs_and_reach_gradients() -> None:
    torch.manual_seed(1)
    fsq = FiniteScalarQuantizer([8, 5, 5, 5], dim=16)
    assert fsq.project_in is not None and fsq.feature_dim == 16
    z = torch.randn(2, 16, 3, 3, requires_grad=True)
    out = fsq(z)
    assert out.quantized.shape == z.shape
    out.quantized.square().sum().backward()
    for p in (fsq.project_in.weight, fsq.project_out.weight, z):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert torch.equal(fsq.lookup(out.indices), out.quantized.detach())


def test_fsq_keeps_full_usage_under_bf16_autocast() -> None:
    torch.manual_seed(2)
    levels = [8, 5, 5, 5]
    fsq = FiniteScalarQuantizer(levels, layout="per_token").train()
    n = 20000
    digits = torch.stack([torch.randint(0, L, (n,)) for L in levels], dim=-1)
    jitter = torch.empty(n, 4).uniform_(-0.45, 0.45)  # spread over each cell
    z = fsq_input_for(digits, levels, jitter=jitter).view(1, n, 4).to(torch.bfloat16)
    metric = CodebookUsage(fsq.num_codes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(z)
    metric.update(fsq.histogram(out.indices))
    assert metric.compute()["usage"].item() == 1.0
    # and the indices are those of float32 features equal to the bf16 inputs
    assert torch.equal(out.indices, fsq(z.float()).indices)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FiniteScalarQuantizer([1, 5]), "levels must be a non-empty list of integers >= 2"),
        (lambda: FiniteScalarQuantizer([]), "levels"),
        (lambda: FiniteScalarQuantizer([2] * 63), "int64"),
        (lambda: LookupFreeQuantizer(63), "int64"),
        (lambda: LookupFreeQuantizer(0), "num_bits must be an integer >= 1"),
        (lambda: LookupFreeQuantizer(8, temperature=0), "temperature"),
        (lambda: ResidualQuantizer(VectorQuantizer(8, 2), depth=0), "depth must be an integer >= 1"),
        (lambda: ResidualQuantizer(VectorQuantizer(8, 2)), "give depth"),
        (lambda: ResidualQuantizer([VectorQuantizer(8, 2), VectorQuantizer(8, 3)]), "same"),
        (lambda: ResidualQuantizer(VectorQuantizer(8, 2), depth=2, quantizer_dropout=1.5), "quantizer_dropout"),
        (lambda: VectorQuantizer(8, 2, gradient="rotate"), "gradient"),
        (lambda: VectorQuantizer(8, 2, parameterization="simvq", update="ema"), "simvq"),
    ],
)
def test_bad_construction_raises_clear_value_error(make, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        make()


def test_feature_dimension_that_does_not_match_the_levels_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\).*levels=\[8, 5, 5, 5\].*got \(1, 3, 2, 2\)"):
        FiniteScalarQuantizer([8, 5, 5, 5])(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"num_bits=6"):
        LookupFreeQuantizer(6, layout="per_token")(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        FiniteScalarQuantizer([8, 5, 5, 5]).lookup(torch.full((1, 2, 2), 1000))


# ---------------------------------------------------------------------- LFQ
def lfq_entropies_brute_force(h: torch.Tensor, temperature: float, scale: float) -> tuple[float, float, float]:
    """float64 softmax over all 2^B codes: (mean per-sample entropy, H(batch mean), Σ_i H_b(batch mean of bit i))."""
    G, N, B = h.shape
    k = torch.arange(2**B)
    bits = ((k.unsqueeze(1) >> torch.arange(B)) & 1).double()
    codes = (2 * bits - 1) * scale  # (K, B)
    d = ((h.double().unsqueeze(2) - codes) ** 2).sum(-1)  # (G, N, K)
    p = torch.softmax(-d / temperature, dim=-1)
    per_sample = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean()
    mean = p.mean(1)  # (G, K)
    codebook = -(mean * torch.log(mean.clamp_min(1e-300))).sum(-1).mean()
    marg = mean @ bits  # (G, B): P(bit i = 1)
    per_bit = -(marg * torch.log(marg) + (1 - marg) * torch.log(1 - marg)).sum(-1).mean()
    return per_sample.item(), codebook.item(), per_bit.item()


@pytest.mark.parametrize("bits", [1, 3, 4, 5])
@pytest.mark.parametrize("temperature, spread", [(1.0, 1.0), (0.01, 0.02)])
def test_lfq_entropy_terms_match_float64_brute_force(bits: int, temperature: float, spread: float) -> None:
    torch.manual_seed(bits)
    h = torch.randn(2, 40, bits) * spread
    exact = LookupFreeQuantizer(bits, temperature=temperature, code_scale=1.0, codebook_entropy="exact")
    per_bit = LookupFreeQuantizer(bits, temperature=temperature, code_scale=1.0, codebook_entropy="per_bit")
    ref_ps, ref_cb, ref_pb = lfq_entropies_brute_force(h, temperature, 1.0)
    ps, cb = exact.entropy_terms(h)
    assert math.isclose(ps.item(), ref_ps, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(cb.item(), ref_cb, rel_tol=1e-4, abs_tol=1e-6)
    ps2, pb = per_bit.entropy_terms(h)
    assert math.isclose(ps2.item(), ref_ps, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(pb.item(), ref_pb, rel_tol=1e-4, abs_tol=1e-6)
    assert ref_pb >= ref_cb - 1e-9  # the per-bit form bounds the joint entropy from above


def test_lfq_entropy_gradient_matches_float64_autograd() -> None:
    torch.manual_seed(3)
    B, tau, s = 5, 0.5, 1.5
    h = (torch.randn(1, 30, B) * 0.7).requires_grad_()
    lfq = LookupFreeQuantizer(B, temperature=tau, code_scale=s, entropy_weight=1.0, diversity_weight=0.7)
    ps, cb = lfq.entropy_terms(h)
    (g,) = torch.autograd.grad(ps - 0.7 * cb, h)

    h64 = h.detach().double().requires_grad_()
    k = torch.arange(2**B)
    codes = (2 * ((k.unsqueeze(1) >> torch.arange(B)) & 1).double() - 1) * s
    p = torch.softmax(-((h64.unsqueeze(2) - codes) ** 2).sum(-1) / tau, dim=-1)
    mean = p.mean(1)
    ref = -(p * torch.log(p)).sum(-1).mean() + 0.7 * (mean * torch.log(mean)).sum()
    (g64,) = torch.autograd.grad(ref, h64)
    assert torch.allclose(g.double(), g64, rtol=1e-3, atol=1e-6)


def test_lfq_indices_values_and_loss_parts_hand_worked() -> None:
    lfq = LookupFreeQuantizer(3, code_scale=0.5, commitment_weight=0.25, entropy_weight=0.0, layout="per_token")
    z = torch.tensor([[[0.2, -0.1, 0.7], [-0.3, 0.4, -0.2]]])
    out = lfq(z)
    assert out.indices.tolist() == [[1 + 4, 2]]  # bits 1,0,1 and 0,1,0
    assert out.quantized.tolist() == [[[0.5, -0.5, 0.5], [-0.5, 0.5, -0.5]]]
    q = torch.tensor([[[0.5, -0.5, 0.5], [-0.5, 0.5, -0.5]]])
    assert math.isclose(out.loss.item(), 0.25 * ((z - q) ** 2).mean().item(), rel_tol=1e-6)
    assert torch.equal(lfq.lookup(out.indices), out.quantized)
    full = LookupFreeQuantizer(3, layout="per_token")
    out = full(z)
    assert set(out.losses) == {"commitment", "per_sample_entropy", "codebook_entropy"}
    assert math.isclose(out.loss.item(), sum(v.item() for v in out.losses.values()), rel_tol=1e-6)


def test_lfq_at_two_to_the_eighteen_codes_runs_and_counts_usage() -> None:
    torch.manual_seed(4)
    lfq = LookupFreeQuantizer(18, dim=8).train()  # exact codebook entropy through the two halves
    assert lfq.codebook_entropy == "exact" and lfq.num_codes == 2**18
    z = torch.randn(2, 8, 8, 8, requires_grad=True)
    out = lfq(z)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    metric = CodebookUsage(lfq.num_codes)
    metric.update(lfq.histogram(out.indices))
    res = metric.compute()
    assert int(res["codes_used"]) == len(torch.unique(out.indices))
    assert LookupFreeQuantizer(24).codebook_entropy == "per_bit"


# ---------------------------------------------------------------------- residual VQ
def test_residual_sum_and_losses_match_an_independent_loop() -> None:
    torch.manual_seed(5)
    rvq = ResidualQuantizer(VectorQuantizer(6, 3, beta=0.25, layout="per_token"), depth=3)
    z = torch.randn(2, 5, 3)
    out = rvq(z)
    assert out.indices.shape == (2, 5, 3)
    residual = z.double().reshape(-1, 3)
    total = torch.zeros_like(residual)
    loss = 0.0
    for r in range(3):
        codes = rvq.levels[r].codebook.weight[0].detach().double()
        idx = ((residual[:, None] - codes[None]) ** 2).sum(-1).argmin(-1)
        assert torch.equal(out.indices[..., r].reshape(-1), idx)
        e = codes[idx]
        mse = ((residual - e) ** 2).mean().item()
        loss += 1.25 * mse
        assert math.isclose(out.losses[f"commitment_{r}"].item(), 0.25 * mse, rel_tol=1e-5)
        total += e
        residual = residual - e
    assert torch.allclose(out.quantized.double().reshape(-1, 3), total, atol=1e-6)
    assert math.isclose(out.loss.item(), loss, rel_tol=1e-5)
    assert torch.equal(rvq.lookup(out.indices), out.quantized.detach())
    # levels are distinct codebooks drawn afresh, not copies of one another
    assert not torch.equal(rvq.levels[0].codebook.weight, rvq.levels[1].codebook.weight)


def test_residual_gradient_to_the_encoder_is_the_identity() -> None:
    rvq = ResidualQuantizer(VectorQuantizer(8, 4), depth=3)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    (gz,) = torch.autograd.grad((rvq(z).quantized * g).sum(), z)
    assert torch.allclose(gz, g)


def test_residual_multichannel_indices_keep_levels_of_a_chunk_together() -> None:
    torch.manual_seed(6)
    inner = VectorQuantizer(10, 2, layout="multichannel", num_channels=3)
    rvq = ResidualQuantizer(inner, depth=2)
    z = torch.randn(2, 6, 4, 4)
    out = rvq(z)
    assert out.indices.shape == (2, 4, 4, 6) and rvq.index_shape((4, 4)) == (4, 4, 6)
    first = VectorQuantizer(10, 2, layout="multichannel", num_channels=3)
    first.load_state_dict(rvq.levels[0].state_dict())
    level0 = first(z).indices
    for m in range(3):
        assert torch.equal(out.indices[..., 2 * m], level0[..., m])
    assert torch.equal(rvq.lookup(out.indices), out.quantized)
    assert rvq.histogram(out.indices).shape == (2, 10) and int(rvq.histogram(out.indices).sum()) == 2 * 96


def test_residual_over_fsq_and_shared_codebook() -> None:
    torch.manual_seed(7)
    shared = ResidualQuantizer(FiniteScalarQuantizer([5, 5, 5]), depth=3, shared_codebook=True)
    assert len(shared.levels) == 1 and shared.num_codebooks == 1
    z = torch.randn(2, 3, 4, 4)
    out = shared(z)
    assert out.indices.shape == (2, 4, 4, 3)
    assert torch.equal(shared.lookup(out.indices), out.quantized)
    # finer levels shrink the error
    one = ResidualQuantizer(FiniteScalarQuantizer([5, 5, 5]), depth=1)
    assert (out.quantized - z).abs().mean() < (one(z).quantized - z).abs().mean()
    assert shared.histogram(out.indices).shape == (1, 125)


def test_quantizer_dropout_draws_a_prefix_per_batch_reproducibly_and_resumes() -> None:
    def make() -> ResidualQuantizer:
        torch.manual_seed(8)
        return ResidualQuantizer(VectorQuantizer(8, 2), depth=4, quantizer_dropout=1.0, dropout_seed=3).train()

    rvq = make()
    z = torch.randn(2, 2, 3, 3)
    depths = []
    for _ in range(12):
        out = rvq(z)
        d = rvq.last_depth
        depths.append(d)
        expected = sum(rvq.levels[r].lookup(out.indices[..., r]) for r in range(d))
        assert torch.allclose(out.quantized, expected, atol=1e-6)
        for r in range(d, 4):
            assert out.losses[f"commitment_{r}"].item() == 0.0
    assert len(set(depths)) > 1 and all(1 <= d <= 4 for d in depths)

    def draws(q: ResidualQuantizer, n: int) -> list[int]:
        out = []
        for _ in range(n):
            q(z)
            out.append(q.last_depth)
        return out

    assert draws(make(), 12) == depths  # the same seed draws the same depths
    partial = make()
    draws(partial, 5)
    resumed = make()
    resumed.load_state_dict(partial.state_dict())  # the step counter travels in the state dict
    assert draws(resumed, 7) == depths[5:]
    rvq.eval()
    rvq(z)
    assert rvq.last_depth == 4


# ---------------------------------------------------------------------- SimVQ
def test_simvq_codes_are_frozen_codes_times_a_learned_map() -> None:
    torch.manual_seed(9)
    vq = VectorQuantizer(12, 4, init="normal", parameterization="simvq", layout="per_token", num_groups=2)
    cb = vq.codebook
    assert not cb.weight.requires_grad and cb.linear.requires_grad
    expected = cb.weight.detach().double() @ cb.linear.detach().double()
    assert torch.allclose(cb.codes().detach().double(), expected, atol=1e-6)
    z = torch.randn(3, 4, 4)
    out = vq(z)
    for t in range(4):
        d = ((z[:, t, None].double() - expected[t // 2][None]) ** 2).sum(-1)
        assert torch.equal(out.indices[:, t], d.argmin(-1))
    assert torch.equal(vq.lookup(out.indices), out.quantized)
    # one gradient step moves every code, used or not
    before = cb.codes().detach().clone()
    frozen = cb.weight.detach().clone()
    out.loss.backward()
    assert cb.weight.grad is None and cb.linear.grad.abs().sum() > 0
    with torch.no_grad():
        cb.linear -= 0.5 * cb.linear.grad
    moved = (cb.codes().detach() - before).abs().sum(-1) > 0
    assert bool(moved.all()) and torch.equal(cb.weight, frozen)


def test_simvq_refuses_what_writes_codes_directly() -> None:
    from vqzoo.quantize import DeadCodeReset

    with pytest.raises(ValueError, match="simvq"):
        VectorQuantizer(8, 2, parameterization="simvq", reset=DeadCodeReset())
    with pytest.raises(ValueError, match="simvq"):
        VectorQuantizer(8, 2, parameterization="simvq", init="data")


# ---------------------------------------------------------------------- rotation trick
def test_rotation_trick_hand_worked_2d() -> None:
    vq = VectorQuantizer(1, 2, layout="per_token", gradient="rotation")
    vq.codebook.weight.data = torch.tensor([[[0.0, 1.0]]])
    z = torch.tensor([[[2.0, 0.0]]], requires_grad=True)
    out = vq(z)
    assert out.quantized.tolist() == [[[0.0, 1.0]]]
    # R rotates by +90 degrees, λ = ‖e‖/‖z‖ = 1/2: ∂L/∂z = λ Rᵀ g, Rᵀ (1, 0) = (0, −1)
    (gz,) = torch.autograd.grad((out.quantized * torch.tensor([1.0, 0.0])).sum(), z)
    assert torch.allclose(gz, torch.tensor([[[0.0, -0.5]]]), atol=1e-7)


def test_rotation_trick_gradient_matches_closed_form_in_float64() -> None:
    torch.manual_seed(10)
    vq = VectorQuantizer(16, 5, layout="per_token", init="normal", gradient="rotation")
    z = torch.randn(3, 7, 5, requires_grad=True)
    g = torch.randn(3, 7, 5)
    out = vq(z)
    assert torch.equal(out.quantized.detach(), vq.lookup(out.indices))  # the value is e exactly
    (gz,) = torch.autograd.grad((out.quantized * g).sum(), z)
    e = vq.lookup(out.indices).double().reshape(-1, 5)
    zz = z.detach().double().reshape(-1, 5)
    gg = g.double().reshape(-1, 5)
    eye = torch.eye(5, dtype=torch.float64)
    for n in range(zz.shape[0]):
        zh, eh = zz[n] / zz[n].norm(), e[n] / e[n].norm()
        r = (zh + eh) / (zh + eh).norm()
        R = eye - 2 * torch.outer(r, r) + 2 * torch.outer(eh, zh)
        lam = e[n].norm() / zz[n].norm()
        assert torch.allclose(R @ R.T, eye, atol=1e-12)  # a rotation
        assert torch.allclose(lam * R @ zz[n], e[n], atol=1e-12)  # that takes z to e
        expected = lam * R.T @ gg[n]
        assert torch.allclose(gz.reshape(-1, 5)[n].double(), expected, atol=1e-5)
    # the codes still learn from the codebook term only
    (gw,) = torch.autograd.grad((vq(z).quantized * g).sum(), vq.codebook.weight, allow_unused=True)
    assert gw is None or gw.abs().sum() == 0


# ---------------------------------------------------------------------- shared contract
def _all_quantizers() -> list[tuple[str, Quantizer, tuple[int, ...]]]:
    return [
        ("fsq-spatial", FiniteScalarQuantizer([4, 3, 3]), (2, 3, 3, 4)),
        ("fsq-multi", FiniteScalarQuantizer([4, 3], layout="multichannel", num_channels=3), (2, 6, 3, 4)),
        ("fsq-token", FiniteScalarQuantizer([4, 3], dim=6, layout="per_token", num_groups=2), (2, 4, 6)),
        ("lfq-spatial", LookupFreeQuantizer(6), (2, 6, 3, 4)),
        ("lfq-multi", LookupFreeQuantizer(3, dim=4, layout="multichannel", num_channels=2), (2, 8, 3, 4)),
        ("lfq-token", LookupFreeQuantizer(4, layout="per_token", num_groups=3), (2, 6, 4)),
        ("rvq-spatial", ResidualQuantizer(VectorQuantizer(9, 3), depth=2), (2, 3, 3, 4)),
        ("rvq-token", ResidualQuantizer(LookupFreeQuantizer(3, layout="per_token", num_groups=2), depth=2), (2, 4, 3)),
        ("simvq", VectorQuantizer(9, 3, init="normal", parameterization="simvq"), (2, 3, 3, 4)),
        ("rotation", VectorQuantizer(9, 3, gradient="rotation", layout="multichannel", num_channels=2), (2, 6, 3, 4)),
    ]


@pytest.mark.parametrize("case", range(10), ids=[c[0] for c in _all_quantizers()])
def test_every_quantizer_follows_the_contract_in_every_layout(case: int) -> None:
    torch.manual_seed(11)
    name, q, shape = _all_quantizers()[case]
    z = torch.randn(*shape, requires_grad=True)
    out = q.train()(z)
    assert out.quantized.shape == z.shape and out.indices.dtype == torch.int64
    positions = (shape[1],) if q.layout == "per_token" else shape[2:]
    assert tuple(out.indices.shape) == (shape[0], *q.index_shape(tuple(positions)))
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.num_codes
    assert out.loss.dim() == 0 and out.loss.dtype == torch.float32
    if out.losses:
        assert math.isclose(out.loss.item(), sum(v.item() for v in out.losses.values()), rel_tol=1e-5, abs_tol=1e-7)
    (out.loss + out.quantized.square().mean()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad():
        ev = q(z)
    assert torch.equal(q.lookup(ev.indices), ev.quantized)
    hist = q.histogram(ev.indices)
    assert hist.shape == (q.num_codebooks, q.num_codes) and int(hist.sum()) == ev.indices.numel()
    metric = CodebookUsage(q.num_codes, q.num_codebooks)
    metric.update(hist)
    assert 0 < metric.compute()["usage"].item() <= 1
    # state dict round trip
    fresh = _all_quantizers()[case][1]
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(z).indices, ev.indices)


def test_check_inputs_off_skips_the_check() -> None:
    nan = torch.full((1, 4, 2, 2), float("nan"))
    for q in (VectorQuantizer(8, 4), FiniteScalarQuantizer([3, 3, 3, 3])):
        with pytest.raises(ValueError, match="NaN or Inf"):
            q(nan)
        q.check_inputs = False
        q(nan)  # no ValueError, no host sync: the caller checked at its own door
