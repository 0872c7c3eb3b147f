"""The shared quantization core against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from vqzoo.metrics.codebook import CodebookUsage
from vqzoo.quantize import (
    Codebook,
    DeadCodeReset,
    GradientMagnitudeReset,
    OrthogonalRegularizer,
    VectorQuantizer,
)


def brute_force_nearest(x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ‖x − e‖² for every pair with explicit differences, and its argmin."""
    x64, c64 = x.double(), codes.double()
    d = ((x64[:, :, None, :] - c64[:, None, :, :]) ** 2).sum(-1)
    return d, d.argmin(-1)


# ---------------------------------------------------------------------- search
@pytest.mark.parametrize("groups", [1, 3])
def test_distances_and_argmin_match_brute_force(groups: int) -> None:
    torch.manual_seed(0)
    cb = Codebook(17, 5, num_groups=groups, init="normal")
    x = torch.randn(groups, 40, 5)
    d_ref, idx_ref = brute_force_nearest(x, cb.weight.detach())
    assert torch.allclose(cb.distances(x).double(), d_ref, atol=1e-4)
    assert torch.equal(cb.nearest(x), idx_ref)


def test_chunked_search_equals_one_shot() -> None:
    torch.manual_seed(1)
    cb = Codebook(64, 8, init="normal")
    x = torch.randn(1, 1000, 8)
    full = cb.nearest(x)
    cb.max_chunk_bytes = 4 * 64 * 7  # seven rows per chunk
    assert cb._rows_per_chunk(x.device) == 7
    assert torch.equal(cb.nearest(x), full)


def test_cpu_chunks_stay_near_cache_size() -> None:
    from vqzoo.quantize.codebook import CPU_CHUNK_BYTES

    cb = Codebook(8192, 4, init="normal")
    assert cb._rows_per_chunk(torch.device("cpu")) == CPU_CHUNK_BYTES // (4 * 8192)
    assert cb._rows_per_chunk(torch.device("meta")) == cb.max_chunk_bytes // (4 * 8192)


@pytest.mark.parametrize("K", [1024, 544, 100, 512])
def test_blocked_argmin_is_torch_argmin_with_ties(K: int) -> None:
    from vqzoo.quantize.codebook import argmin_last

    torch.manual_seed(K)
    # small integers: many exact ties, inside one block and across blocks
    scores = torch.randint(0, 6, (3, 37, K)).float()
    assert torch.equal(argmin_last(scores), scores.argmin(-1))
    scores = torch.randn(200, K)
    scores[:, -1] = -10.0  # the minimum in the last block
    scores[::2, 40] = -10.0  # tie with an earlier block: the first index wins
    expected = scores.argmin(-1)
    assert torch.equal(argmin_last(scores), expected)
    assert expected[0] == 40 and expected[1] == K - 1


def test_cosine_search_picks_largest_cosine() -> None:
    torch.manual_seed(2)
    cb = Codebook(20, 6, distance="cosine", init="normal")
    x = torch.randn(1, 50, 6)
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    cn = torch.nn.functional.normalize(cb.weight.detach().double(), dim=-1)
    expected = torch.einsum("gnd,gkd->gnk", xn, cn).argmax(-1)
    assert torch.equal(cb.nearest(xn.float()), expected)


def test_search_never_uses_sqrt_and_handles_huge_values() -> None:
    # Squared distances of nearly identical vectors can come out slightly negative in
    # float32; with no sqrt the argmin stays defined and finite (docs/pitfalls.md #6).
    cb = Codebook(4, 3, init="normal")
    x = cb.weight.detach().clone() * 1e3
    cb.weight.data *= 1e3
    assert torch.equal(cb.nearest(x)[0], torch.arange(4))


# ---------------------------------------------------------------------- loss and gradients
def test_loss_value_and_beta_placement() -> None:
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float32, requires_grad=True)
    out = vq(z)
    e = vq.lookup(out.indices).double()
    zd = z.detach().double()
    mse = ((zd - e) ** 2).mean()
    assert math.isclose(out.losses["commitment"].item(), 0.25 * mse.item(), rel_tol=1e-5)
    assert math.isclose(out.losses["codebook"].item(), mse.item(), rel_tol=1e-5)
    assert math.isclose(out.loss.item(), 1.25 * mse.item(), rel_tol=1e-5)

    # gradient w.r.t. z carries β: d/dz β·mean((z − e)²) = 2β(z − e)/n
    (gz,) = torch.autograd.grad(out.loss, z, retain_graph=True)
    assert torch.allclose(gz.double(), 2 * 0.25 * (zd - e) / z.numel(), atol=1e-7)
    # gradient w.r.t. the codebook has weight 1: Σ_{z→k} 2(e_k − z)/n
    (gw,) = torch.autograd.grad(out.loss, vq.codebook.weight)
    idx = out.indices.reshape(-1)
    zf = zd.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.zeros(8, 4, dtype=torch.float64)
    expected.index_add_(0, idx, 2 * (e.permute(0, 2, 3, 1).reshape(-1, 4) - zf) / z.numel())
    assert torch.allclose(gw[0].double(), expected, atol=1e-7)


def test_codebook_loss_weight_reaches_qgvae_reference_weighting() -> None:
    torch.manual_seed(4)
    vq = VectorQuantizer(8, 4, layout="per_token", num_groups=2, beta=1.0, codebook_loss_weight=0.25)
    z = torch.randn(3, 6, 4)
    out = vq(z)
    mse = ((z.double() - vq.lookup(out.indices).double()) ** 2).mean().item()
    assert math.isclose(out.losses["commitment"].item(), mse, rel_tol=1e-5)
    assert math.isclose(out.losses["codebook"].item(), 0.25 * mse, rel_tol=1e-5)


def test_straight_through_gradient_reaches_encoder_side() -> None:
    torch.manual_seed(5)
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = vq(z)
    g = torch.randn_like(out.quantized)
    (gz,) = torch.autograd.grad((out.quantized * g).sum(), z)
    assert torch.allclose(gz, g)


def test_codebook_learns_by_gradient() -> None:
    torch.manual_seed(6)
    vq = VectorQuantizer(8, 4)
    opt = torch.optim.SGD(vq.parameters(), lr=1.0)
    z = torch.randn(4, 4, 4, 4)
    before = vq.codebook.weight.detach().clone()
    losses = []
    for _ in range(20):
        out = vq(z)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    used = torch.unique(vq(z).indices)
    assert losses[-1] < 0.7 * losses[0]  # 8 codes for 64 vectors: k-means distortion stays
    assert not torch.allclose(vq.codebook.weight[0, used], before[0, used])


def test_ema_mode_has_no_trainable_codes_and_no_codebook_term() -> None:
    vq = VectorQuantizer(8, 4, update="ema")
    assert not vq.codebook.weight.requires_grad
    out = vq(torch.randn(2, 4, 3, 3))
    assert set(out.losses) == {"commitment"}
    with pytest.raises(ValueError, match="update='ema'"):
        VectorQuantizer(8, 4, update="ema", regularizers=[OrthogonalRegularizer(10.0)])


def test_one_ema_step_matches_hand_worked_update() -> None:
    cb_kwargs = dict(update="ema", decay=0.5, eps=0.1)
    vq = VectorQuantizer(2, 1, layout="per_token", **cb_kwargs)
    vq.codebook.weight.data = torch.tensor([[[0.0], [10.0]]])
    vq.codebook.ema_sum.copy_(vq.codebook.weight.data)
    # tokens 1, 2 -> code 0; token 9 -> code 1
    z = torch.tensor([[[1.0], [2.0], [9.0]]])
    vq.train()
    vq(z)
    # N = 0.5·[1, 1] + 0.5·[2, 1] = [1.5, 1]; m = 0.5·[0, 10] + 0.5·[3, 9] = [1.5, 9.5]
    # n = 2.5; Ñ = (N + 0.1) / (2.5 + 0.2) · 2.5 = [1.481481.., 1.018518..]
    n_tilde = [(1.5 + 0.1) / 2.7 * 2.5, (1.0 + 0.1) / 2.7 * 2.5]
    expected = [1.5 / n_tilde[0], 9.5 / n_tilde[1]]
    assert torch.allclose(vq.codebook.ema_count, torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(vq.codebook.weight.data.flatten(), torch.tensor(expected), atol=1e-6)


def test_ema_not_updated_in_eval_mode() -> None:
    vq = VectorQuantizer(4, 2, update="ema").eval()
    before = vq.codebook.weight.detach().clone()
    vq(torch.randn(2, 2, 3, 3))
    assert torch.equal(vq.codebook.weight, before)
    assert int(vq.codebook.usage.sum()) == 0


def test_data_init_uses_first_batch_vectors() -> None:
    torch.manual_seed(7)
    vq = VectorQuantizer(5, 3, init="data").train()
    z = torch.randn(2, 3, 4, 4)
    vq(z)
    assert bool(vq.codebook.initialized)
    zf = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for code in vq.codebook.weight[0]:
        assert (zf - code).abs().sum(-1).min() < 1e-6


# ---------------------------------------------------------------------- regularizer
def test_orthogonal_regularizer_hand_worked() -> None:
    # codes (1, 0) and (1, 1): cosine 1/√2, ‖ÊÊᵀ − I‖² = 2·(1/2) = 1, / K² = 1/4
    reg = OrthogonalRegularizer(weight=10.0)
    codes = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert math.isclose(reg(codes).item(), 10.0 * 0.25, rel_tol=1e-6)


@pytest.mark.parametrize("K,D", [(6, 16), (40, 8)])
def test_orthogonal_regularizer_matches_float64_gram(K: int, D: int) -> None:
    torch.manual_seed(8)
    codes = torch.randn(3, K, D)
    e = torch.nn.functional.normalize(codes.double(), dim=-1)
    gram = e @ e.transpose(1, 2)
    ref = (((gram - torch.eye(K, dtype=torch.float64)) ** 2).sum((1, 2)) / K**2).mean() * 10
    assert math.isclose(OrthogonalRegularizer(10.0)(codes).item(), ref.item(), rel_tol=1e-4)


@pytest.mark.parametrize("K,D", [(6, 16), (40, 8)])
def test_orthogonal_regularizer_gradient_matches_float64_gram(K: int, D: int) -> None:
    # the K > D path has a hand-written backward (4 e (eᵀe − I)); both paths must give
    # the gradient of the plain K x K formula
    torch.manual_seed(10)
    codes = torch.randn(2, K, D, requires_grad=True)
    OrthogonalRegularizer(10.0)(codes).backward()
    ref_codes = codes.detach().double().requires_grad_(True)
    e = torch.nn.functional.normalize(ref_codes, dim=-1)
    gram = e @ e.transpose(1, 2)
    ((((gram - torch.eye(K, dtype=torch.float64)) ** 2).sum((1, 2)) / K**2).mean() * 10).backward()
    assert torch.allclose(codes.grad.double(), ref_codes.grad, rtol=1e-4, atol=1e-6)


def test_gram_frobenius_backward_passes_gradcheck() -> None:
    from vqzoo.quantize.regularizers import _GramFrobenius

    e = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GramFrobenius.apply, (e,))


def test_orthogonal_regularizer_subset_and_presence_in_loss() -> None:
    torch.manual_seed(9)
    reg = OrthogonalRegularizer(1.0, max_codes=8)
    codes = torch.nn.functional.normalize(torch.randn(1, 64, 4), dim=-1)
    val = reg(codes)
    assert val.item() > 0
    plain = VectorQuantizer(16, 4)
    withreg = VectorQuantizer(16, 4, regularizers=[OrthogonalRegularizer(10.0)])
    z = torch.randn(1, 4, 2, 2)
    assert "orthogonal" not in plain(z).losses
    out = withreg(z)
    assert "orthogonal" in out.losses
    assert math.isclose(out.loss.item(), sum(v.item() for v in out.losses.values()), rel_tol=1e-6)
    # the term's gradient reaches the codebook
    (gw,) = torch.autograd.grad(out.losses["orthogonal"], withreg.codebook.weight)
    assert gw.abs().sum() > 0


# ---------------------------------------------------------------------- layouts
def _layouts():
    return [
        (VectorQuantizer(12, 4), torch.randn(2, 4, 3, 5), (2, 3, 5)),
        (VectorQuantizer(12, 4, layout="multichannel", num_channels=3), torch.randn(2, 12, 3, 5), (2, 3, 5, 3)),
        (VectorQuantizer(12, 4, layout="per_token", num_groups=6), torch.randn(2, 6, 4), (2, 6)),
        (VectorQuantizer(12, 4, layout="per_token", num_groups=3), torch.randn(2, 6, 4), (2, 6)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_every_layout_round_trips_through_lookup(case: int) -> None:
    torch.manual_seed(10)
    vq, z, index_shape = _layouts()[case]
    out = vq(z)
    assert out.indices.shape == index_shape and out.indices.dtype == torch.int64
    assert out.quantized.shape == z.shape
    assert torch.equal(vq.lookup(out.indices), out.quantized.detach())


def test_multichannel_chunks_are_contiguous_channel_blocks() -> None:
    torch.manual_seed(11)
    vq = VectorQuantizer(10, 2, layout="multichannel", num_channels=3)
    z = torch.randn(1, 6, 2, 2)
    out = vq(z)
    codes = vq.codebook.weight[0].detach()
    for m in range(3):
        chunk = z[:, 2 * m : 2 * m + 2].permute(0, 2, 3, 1).reshape(-1, 2)
        expected = ((chunk[:, None] - codes[None]) ** 2).sum(-1).argmin(-1)
        assert torch.equal(out.indices[..., m].reshape(-1), expected)


def test_multichannel_with_one_channel_equals_spatial() -> None:
    torch.manual_seed(12)
    spatial = VectorQuantizer(9, 3)
    multi = VectorQuantizer(9, 3, layout="multichannel", num_channels=1)
    multi.load_state_dict(spatial.state_dict())
    z = torch.randn(2, 3, 4, 4)
    a, b = spatial(z), multi(z)
    assert torch.equal(a.indices, b.indices[..., 0])
    assert torch.equal(a.quantized, b.quantized)


def test_per_token_token_t_uses_codebook_of_its_group() -> None:
    torch.manual_seed(13)
    vq = VectorQuantizer(7, 3, layout="per_token", num_groups=2)  # tokens 0-1 -> group 0, 2-3 -> group 1
    z = torch.randn(5, 4, 3)
    out = vq(z)
    w = vq.codebook.weight.detach()
    for t in range(4):
        g = t // 2
        d = ((z[:, t, None, :] - w[g][None]) ** 2).sum(-1)
        assert torch.equal(out.indices[:, t], d.argmin(-1))
        assert torch.equal(out.quantized[:, t].detach(), w[g][out.indices[:, t]])


# ---------------------------------------------------------------------- resets
def test_dead_code_reset_moves_exactly_unused_codes() -> None:
    torch.manual_seed(14)
    vq = VectorQuantizer(8, 2, reset=DeadCodeReset(every=2)).train()
    vq.codebook.weight.data[0] = torch.tensor(
        [[0.0, 0.0], [10.0, 10.0], [20, 20], [30, 30], [-5, -5], [-9, -9], [100, 0], [0, 100]]
    )
    z = torch.randn(1, 2, 6, 6) * 0.1  # every vector lands on code 0
    vq(z)
    assert vq.reset._candidates is None  # no reset follows this step: no candidates drawn
    assert vq.after_step() == 0  # step 1 of 2: nothing happens
    before = vq.codebook.weight.detach().clone()
    vq(z)
    assert vq.reset._candidates is not None
    moved = vq.after_step()
    after = vq.codebook.weight.detach()
    assert moved == 7
    assert torch.equal(after[0, 0], before[0, 0])  # the used code stays
    zf = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in range(1, 8):  # each dead code is now one of the batch's encoder outputs
        assert (zf - after[0, k]).abs().sum(-1).min() < 1e-6
    assert len({tuple(v.tolist()) for v in after[0, 1:]}) == 7  # distinct candidates
    assert int(vq.codebook.usage.sum()) == 0


def test_dead_code_reset_resets_ema_statistics_and_survives_next_ema_step() -> None:
    torch.manual_seed(15)
    vq = VectorQuantizer(4, 2, update="ema", decay=0.9, reset=DeadCodeReset(every=1)).train()
    vq.codebook.weight.data[0] = torch.tensor([[0.0, 0.0], [50.0, 50.0], [60, 60], [70, 70]])
    vq.codebook.ema_sum.copy_(vq.codebook.weight.data)
    z = torch.randn(1, 2, 4, 4)
    vq(z)
    vq.after_step()
    cb = vq.codebook
    assert torch.allclose(cb.ema_count[0, 1:], torch.ones(3))
    assert torch.allclose(cb.ema_sum[0, 1:], cb.weight[0, 1:])
    # the reset codes now sit among the data and win assignments in the next step
    out = vq(z)
    assert len(torch.unique(out.indices)) > 1


def _reference_gradient_reset(mag: torch.Tensor, w: torch.Tensor) -> list[tuple[int, int, int]]:
    """The reference loop (docs/reference-implementations.md §B), returning (group, target, donor)."""
    pairs = []
    mag = mag.clone()
    for c in range(mag.shape[0]):
        while True:
            u = int(torch.argmin(mag[c]))
            if mag[c, u] > 0:
                break
            r = int(torch.argmax(mag[c]))
            if mag[c, r] <= 1e-6:
                break
            pairs.append((c, u, r))
            mag[c, r] = 1e-6
            mag[c, u] = 1e-6
    return pairs


def test_gradient_magnitude_reset_matches_reference_loop() -> None:
    torch.manual_seed(16)
    reset = GradientMagnitudeReset(every=1, perturbation=1e-4)
    vq = VectorQuantizer(6, 3, layout="per_token", num_groups=3, init="uniform_half", reset=reset)
    mag = torch.tensor(
        [
            [0.0, 5.0, 0.0, 3.0, 0.0, 1.0],  # three zeros, three donors
            [0.0, 0.0, 0.0, 0.0, 2.0, 5e-7],  # four zeros, one donor (5e-7 is no donor)
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # no zero: nothing moves
        ]
    )
    reset.magnitude.copy_(mag)
    before = vq.codebook.weight.detach().clone()
    moved = vq.after_step()
    after = vq.codebook.weight.detach()
    pairs = _reference_gradient_reset(mag, before)
    assert moved == len(pairs) == 4
    targets = {(c, u) for c, u, _ in pairs}
    for c, u, r in pairs:
        assert (after[c, u] - before[c, r]).abs().max() <= 1e-4 + 1e-7
        assert not torch.equal(after[c, u], before[c, r]) or True
    for c in range(3):
        for k in range(6):
            if (c, k) not in targets:
                assert torch.equal(after[c, k], before[c, k])
    assert float(reset.magnitude.abs().sum()) == 0.0


def test_gradient_magnitude_reset_accumulates_after_backward_and_fires_on_period() -> None:
    torch.manual_seed(17)
    vq = VectorQuantizer(16, 2, layout="per_token", num_groups=1, reset=GradientMagnitudeReset(every=3))
    opt = torch.optim.SGD(vq.parameters(), lr=0.1)
    z = torch.randn(4, 2, 2) * 0.01  # all tokens pick few codes; many codes get zero gradient
    fired = []
    for _ in range(3):
        out = vq(z)
        opt.zero_grad()
        out.loss.backward()
        vq.after_backward()
        if vq.reset.step + 1 < 3:
            assert float(vq.reset.magnitude.sum()) > 0
        opt.step()
        fired.append(vq.after_step())
    assert fired[0] == 0 and fired[1] == 0 and fired[2] > 0
    with pytest.raises(ValueError, match="gradient"):
        VectorQuantizer(4, 2, update="ema", reset=GradientMagnitudeReset())


def test_state_dict_round_trip_keeps_reset_and_ema_state() -> None:
    torch.manual_seed(18)
    vq = VectorQuantizer(8, 2, layout="per_token", num_groups=2, reset=GradientMagnitudeReset(every=5))
    out = vq(torch.randn(3, 4, 2))
    out.loss.backward()
    vq.after_backward()
    vq.after_step()
    fresh = VectorQuantizer(8, 2, layout="per_token", num_groups=2, reset=GradientMagnitudeReset(every=5))
    fresh.load_state_dict(vq.state_dict())
    for (k, a), (_, b) in zip(vq.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    ema = VectorQuantizer(8, 2, update="ema", reset=DeadCodeReset(every=3)).train()
    ema(torch.randn(2, 2, 3, 3))
    ema.after_step()
    fresh = VectorQuantizer(8, 2, update="ema", reset=DeadCodeReset(every=3))
    fresh.load_state_dict(ema.state_dict())
    assert int(fresh.reset.step) == 1 and torch.equal(fresh.codebook.ema_count, ema.codebook.ema_count)


# ---------------------------------------------------------------------- metrics
def test_codebook_usage_metric_and_perplexity() -> None:
    vq = VectorQuantizer(4, 1, layout="per_token")
    metric = CodebookUsage(4)
    metric.update(vq.histogram(torch.tensor([[0, 0, 1, 1]])))
    metric.update(vq.histogram(torch.tensor([[0, 1, 0, 1]])))
    res = metric.compute()
    assert res["usage"].item() == 0.5 and int(res["codes_used"]) == 2
    assert math.isclose(res["perplexity"].item(), 2.0, rel_tol=1e-6)  # uniform over two codes


# ---------------------------------------------------------------------- numerics and bad input
def test_bf16_autocast_keeps_quantizer_in_float32() -> None:
    torch.manual_seed(19)
    vq = VectorQuantizer(32, 8, regularizers=[OrthogonalRegularizer(10.0)])
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.to(torch.bfloat16))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    ref = vq(z.detach())
    assert torch.equal(out.indices, vq(z.detach().to(torch.bfloat16).float()).indices)
    assert ref.indices.shape == out.indices.shape


@pytest.mark.parametrize(
    "make, call, match",
    [
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.randn(1, 3, 2, 2)), r"\(B, 4, H, W\).*\(1, 3, 2, 2\)"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.randn(1, 4, 2)), r"got \(1, 4, 2\)"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.full((1, 4, 2, 2), float("nan"))), "NaN or Inf"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.full((1, 4, 2, 2), float("inf"))), "NaN or Inf"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.ones(1, 4, 2, 2, dtype=torch.long)), "floating-point"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq(torch.randn(0, 4, 2, 2)), "empty"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq.lookup(torch.tensor([[[8]]])), r"\[0, 8\).*\[8, 8\]"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq.lookup(torch.tensor([[[-1]]])), r"\[0, 8\)"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq.lookup(torch.zeros(2, 2, dtype=torch.long)), "3 dims"),
        (lambda: VectorQuantizer(8, 4), lambda vq: vq.lookup(torch.zeros(1, 2, 2)), "integer"),
        (lambda: VectorQuantizer(8, 4, layout="per_token", num_groups=2), lambda vq: vq(torch.randn(1, 3, 4)), "multiple"),
        (
            lambda: VectorQuantizer(8, 2, layout="multichannel", num_channels=2),
            lambda vq: vq.lookup(torch.zeros(1, 2, 2, 3, dtype=torch.long)),
            "M=2",
        ),
    ],
)
def test_bad_input_raises_clear_value_error(make, call, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call(make())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_codes": 0, "dim": 4}, "num_codes must be an integer >= 1, got 0"),
        ({"num_codes": 4, "dim": 0}, "dim must be an integer >= 1"),
        ({"num_codes": 4, "dim": 2, "layout": "grid"}, "layout"),
        ({"num_codes": 4, "dim": 2, "num_channels": 2}, "multichannel"),
        ({"num_codes": 4, "dim": 2, "num_groups": 2}, "per_token"),
        ({"num_codes": 4, "dim": 2, "decay": 1.5}, "decay"),
    ],
)
def test_bad_construction_raises(kwargs, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**kwargs)


@pytest.mark.parametrize("threads", [1, 2])  # index_add_ on one thread, sorted segments on several
def test_sum_rows_and_lookup_gradient_match_index_add(threads: int) -> None:
    from vqzoo.quantize.codebook import sum_rows

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_sum_rows(sum_rows)
    finally:
        torch.set_num_threads(before)


def _check_sum_rows(sum_rows) -> None:  # noqa: ANN001
    torch.manual_seed(20)
    index = torch.randint(0, 50, (300,))
    index[index == 7] = 8  # row 7 receives nothing
    src = torch.randn(300, 6)
    expected = torch.zeros(50, 6, dtype=torch.float64).index_add_(0, index, src.double())
    got = sum_rows(index, src, 50)
    assert torch.allclose(got.double(), expected, atol=1e-5) and float(got[7].abs().sum()) == 0.0
    cb = Codebook(50, 6, num_groups=2)
    idx = torch.randint(0, 50, (2, 150))
    g = torch.randn(2, 150, 6)
    (gw,) = torch.autograd.grad((cb.embed(idx) * g).sum(), cb.weight)
    ref = torch.zeros(2, 50, 6, dtype=torch.float64)
    for grp in range(2):
        ref[grp].index_add_(0, idx[grp], g[grp].double())
    assert torch.allclose(gw.double(), ref, atol=1e-5)
