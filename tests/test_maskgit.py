"""MaskGIT prior: schedules against the reference formulas, decoding rules, multichannel tokens."""

from __future__ import annotations

import math

import pytest
import torch

from vqzoo.optim import spec
from vqzoo.priors import MaskGIT, PriorBatch
from vqzoo.priors.schedules import mask_ratio

TINY = dict(n_layer=2, n_head=2, n_embd=32, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)


def reference_schedule(r: float, method: str, n: int) -> float:
    """google-research/maskgit mask_schedule.schedule, written out with the math module."""
    if method == "cosine":
        v = math.cos(math.pi / 2.0 * r)
    elif method == "linear":
        v = 1.0 - r
    elif method == "square":
        v = 1.0 - r**2
    elif method == "cubic":
        v = 1.0 - r**3
    elif method == "log":
        v = math.inf if r == 0 else -math.log2(r) / math.log2(n)
    else:
        v = 1.0 - 2.0 ** (-math.log2(n) * (1.0 - r))
    return min(max(v, 1e-6), 1.0)


@pytest.mark.parametrize("method", ["cosine", "linear", "square", "cubic", "log", "exp"])
def test_schedules_match_reference_formulas_in_float64(method):
    rs = [0.0, 1e-9, 0.05, 1 / 12, 0.25, 1 / 3, 0.5, 0.7, 11 / 12, 0.999999, 1.0]
    got = mask_ratio(torch.tensor(rs, dtype=torch.float64), method, 256)
    assert got.dtype == torch.float64
    want = torch.tensor([reference_schedule(r, method, 256) for r in rs], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-15, rtol=1e-13)
    for r in rs:  # float input -> float output
        assert mask_ratio(r, method, 256) == pytest.approx(reference_schedule(r, method, 256), abs=1e-15)
    assert mask_ratio(1.0, method, 256) >= 1e-6  # clipped, never zero


def test_schedule_aliases_and_errors():
    assert mask_ratio(0.3, "uniform") == mask_ratio(0.3, "linear") == pytest.approx(0.7)
    assert mask_ratio(0.3, "pow2") == pytest.approx(1 - 0.09)
    with pytest.raises(ValueError, match="num_tokens"):
        mask_ratio(0.3, "log")
    with pytest.raises(ValueError, match="unknown mask schedule"):
        mask_ratio(0.3, "sigmoid")


def test_training_mask_counts_follow_the_schedule():
    m = MaskGIT(vocab_size=8, token_shape=[4, 4, 2], **TINY)  # N = 32 codes
    rs = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    want = [max(1, min(32, math.ceil(32 * reference_schedule(r, "cosine", 32)))) for r in rs.tolist()]
    assert m.num_masked_for(rs).tolist() == want
    torch.manual_seed(0)
    mask = m.random_mask(64)
    torch.manual_seed(0)
    r = torch.rand(64, dtype=torch.float64)
    assert mask.sum(1).tolist() == m.num_masked_for(r).tolist()
    assert mask.sum(1).min() >= 1


def test_loss_only_on_masked_codes():
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[3, 3], label_smoothing=0.0, **TINY).eval()
    x = torch.randint(0, 8, (4, 3, 3))
    torch.manual_seed(5)
    loss, logs = m.compute_loss(PriorBatch(x))
    torch.manual_seed(5)
    mask = m.random_mask(4)
    inp = x.view(4, 9).masked_fill(mask, m.mask_token_id).view(4, 3, 3)
    logp = m(inp).view(4, 9, 8).double().log_softmax(-1)
    nll = -logp.gather(-1, x.view(4, 9, 1)).squeeze(-1)
    assert loss.item() == pytest.approx(nll[mask].mean().item(), rel=1e-5)


def test_bidirectional_every_position_sees_every_other():
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[3, 3], **TINY).eval()
    x = torch.randint(0, 8, (1, 9))
    base = m(x.view(1, 3, 3)).view(9, 8)
    for j in range(9):
        y = x.clone()
        y[0, j] = m.mask_token_id
        out = m(y.view(1, 3, 3)).view(9, 8)
        changed = (out - base).abs().amax(-1) > 1e-6
        assert changed.all(), f"changing position {j} left {(~changed).nonzero().flatten().tolist()} unchanged"


def test_multichannel_layout_and_channel_aware_embedding():
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=6, token_shape=[2, 2, 3], condition="class", num_classes=2, **TINY).eval()
    x = torch.randint(0, 6, (2, 2, 2, 3))
    x[:, 0, 0] = torch.tensor([1, 4, 2])
    logits = m(x, torch.tensor([0, 1]))
    assert logits.shape == (2, 2, 2, 3, 6)
    y = x.clone()
    y[:, 0, 0] = torch.tensor([4, 1, 2])  # same codes, channels swapped
    assert (m(y, torch.tensor([0, 1])) - logits).abs().amax() > 1e-6
    out = m.generate(2, [0, 1], generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2, 2, 3) and out.max() < 6
    flat = MaskGIT(vocab_size=6, token_shape=[5], **TINY)
    assert flat.generate(3).shape == (3, 5)


def _expected_mask_counts(unknown0: list[int], steps: int, method: str) -> list[list[int]]:
    """Masked count after each step, from the reference rules in float64."""
    out = []
    for n0 in unknown0:
        counts, unknown = [], n0
        for t in range(steps):
            if unknown == 0:
                break
            if t == steps - 1:
                counts.append(0)
                break
            ratio = (t + 1) / steps
            mask_len = math.floor(n0 * reference_schedule(ratio, method, max(n0, 2)))
            mask_len = max(1, min(unknown - 1, mask_len))
            counts.append(mask_len)
            unknown = mask_len
        out.append(counts)
    return out


@pytest.mark.parametrize("method,steps", [("cosine", 12), ("linear", 8), ("square", 5), ("log", 7), ("exp", 10), ("cosine", 40)])
def test_decoding_keeps_exactly_the_scheduled_number_masked(method, steps):
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[4, 4, 2], mask_schedule=method, **TINY)
    out, traj = m.generate(3, num_steps=steps, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    want = _expected_mask_counts([32, 32, 32], steps, method)[0]
    got = torch.stack([(s == m.mask_token_id).flatten(1).sum(1) for s in traj], dim=1)  # (sample, step)
    assert got.tolist() == [want] * 3
    assert not (out == m.mask_token_id).any()
    # once unmasked, a code never changes again
    for prev, nxt in zip(traj, traj[1:]):
        known = prev != m.mask_token_id
        assert torch.equal(nxt[known], prev[known])


def test_known_tokens_never_change_and_counts_use_each_samples_start():
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[3, 3, 2], **TINY)
    start = torch.randint(0, 8, (3, 18))
    start[0, :12] = m.mask_token_id  # 12 unknown
    start[1, ::3] = m.mask_token_id  # 6 unknown
    start[2, :] = m.mask_token_id  # 18 unknown
    known = start != m.mask_token_id
    out, traj = m.generate(3, tokens=start.view(3, 3, 3, 2), num_steps=6, generator=torch.Generator().manual_seed(2), return_trajectory=True)
    for s in [*traj, out]:
        assert torch.equal(s.reshape(3, 18)[known], start[known])
    want = _expected_mask_counts([12, 6, 18], 6, "cosine")
    for b in range(3):
        assert [int((s.reshape(3, 18)[b] == m.mask_token_id).sum()) for s in traj] == want[b]
    full = torch.randint(0, 8, (2, 3, 3, 2))
    assert torch.equal(m.generate(2, tokens=full), full)  # nothing to generate


def test_remasking_keeps_the_most_confident_codes():
    """With argmax draws and no Gumbel noise, step 0 keeps the most probable codes."""
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[4, 4], **TINY).eval()
    for p in m.head.parameters():
        p.data.mul_(30)  # spread the confidences apart
    _, traj = m.generate(1, num_steps=4, temperature=0.0, choice_temperature=0.0, return_trajectory=True)
    probs = m(torch.full((1, 4, 4), m.mask_token_id)).view(16, 8).softmax(-1)
    conf, best = probs.max(-1)
    n_keep = 16 - math.floor(16 * math.cos(math.pi / 2 * 0.25))
    keep = conf.argsort(descending=True)[:n_keep]
    step0 = traj[0].view(16)
    assert sorted((step0 != m.mask_token_id).nonzero().flatten().tolist()) == sorted(keep.tolist())
    assert torch.equal(step0[keep], best[keep])


def test_tiny_maskgit_learns_a_two_mode_multichannel_distribution():
    V = 6
    idx = torch.arange(2 * 2 * 2).view(2, 2, 2)
    modes = torch.stack([idx % V, (idx * 5 + 3) % V])  # two deterministic patterns (H, W, M)
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=V, token_shape=[2, 2, 2], label_smoothing=0.0,
                optimizer=spec("torch.optim.AdamW", lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0), **TINY)
    opt = m.configure_optimizers()
    m.train()
    for step in range(150):
        batch = modes[torch.randint(0, 2, (32,))]
        loss, _ = m.compute_loss(PriorBatch(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    MASK = m.mask_token_id
    with torch.no_grad():
        # one known code identifies the mode: the other 7 codes are then certain
        x = modes[torch.arange(16) % 2].reshape(16, 8)
        keep = torch.arange(16) % 8
        inp = torch.full_like(x, MASK)
        inp[torch.arange(16), keep] = x[torch.arange(16), keep]
        logp = m(inp.view(16, 2, 2, 2)).view(16, 8, V).log_softmax(-1)
        nll = -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        unknown = inp == MASK
        assert nll[unknown].mean().item() < 0.05 * math.log(V)
        # nothing known: every code is a 50/50 mixture of the two modes' values
        p = m(torch.full((1, 2, 2, 2), MASK)).view(8, V).softmax(-1)
        p0 = p.gather(-1, modes[0].view(8, 1)).squeeze(-1)
        p1 = p.gather(-1, modes[1].view(8, 1)).squeeze(-1)
        assert (p0 + p1).min() > 0.9 and p0.min() > 0.25 and p1.min() > 0.25
    samples = m.generate(200, generator=torch.Generator().manual_seed(0), choice_temperature=1.0)
    which = [(samples == modes[k]).flatten(1).all(1) for k in range(2)]
    assert (which[0] | which[1]).float().mean() >= 0.9
    share = which[0].float().mean().item()
    # Both modes are sampled. After 150 steps the tiny model prefers mode 0 slightly, and
    # MaskGIT's most-confident-first choice amplifies that: the share is ~0.74 over seeds.
    assert 0.15 < share < 0.85


def test_class_conditioning_and_cfg():
    torch.manual_seed(0)
    m = MaskGIT(vocab_size=8, token_shape=[2, 2], condition="class", num_classes=3, cond_drop_prob=0.2, **TINY)
    a = m.generate(4, 1, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = m.generate(4, [1, 1, 1, 1], cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    x = torch.randint(0, 8, (2, 2, 2))
    assert (m(x, torch.tensor([0, 0])) - m(x, torch.tensor([2, 2]))).abs().amax() > 1e-6


def test_bad_inputs_raise_clear_errors():
    m = MaskGIT(vocab_size=8, token_shape=[2, 2], **TINY)
    with pytest.raises(ValueError, match=r"must be in \[0, 8\)"):
        m.compute_loss(PriorBatch(torch.full((1, 2, 2), 8)))  # the mask id is not a data token
    with pytest.raises(ValueError, match=r"shape \(B, 2, 2\), got \(1, 4\)"):
        m(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be in \[0, 8\)"):
        m.generate(1, tokens=torch.full((1, 2, 2), 9))
    with pytest.raises(ValueError, match="unconditional"):
        m.generate(1, 3)
    with pytest.raises(ValueError, match="cfg_scale needs condition='class'"):
        m.generate(1, cfg_scale=2.0)
    c = MaskGIT(vocab_size=8, token_shape=[2, 2], condition="class", num_classes=3, **TINY)
    with pytest.raises(ValueError, match="needs class labels"):
        c.compute_loss(PriorBatch(torch.zeros(2, 2, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        c.generate(2, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        c.generate(2, [0, 3])
    with pytest.raises(ValueError, match="token_shape"):
        MaskGIT(vocab_size=8, token_shape=[2, 2, 2, 2])
    with pytest.raises(ValueError, match="condition must be"):
        MaskGIT(vocab_size=8, token_shape=[2, 2], condition="text")
