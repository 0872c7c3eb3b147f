"""MiniGPT prior, the shared Prior base, and the token data helpers."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vqzoo.data.batch import TensorBatchDataset

from vqzoo.checkpoint import load
from vqzoo.data.tokens import TokenDataModule, TokenDataset, read_token_meta
from vqzoo.io import make_grid as sample_to_grid
from vqzoo.priors import MiniGPT, PriorBatch
from vqzoo.priors.sample import sample_prior
from vqzoo.tokenizers.encode import encode_tokens
from vqzoo.priors.base import filter_logits

TINY = dict(n_layer=2, n_head=2, n_embd=32, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)


class FakeTokenizer(torch.nn.Module):
    """4x4 RGB images -> 2x2 tokens: the mean of each 2x2 patch quantized to 4 levels."""

    vocab_size = 4
    token_shape = (2, 2)

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        m = F.avg_pool2d(x.mean(1, keepdim=True), 2)[:, 0]
        return ((m + 1) / 2 * 4).floor().clamp(0, 3).long()

    def detokenize(self, idx: torch.Tensor) -> torch.Tensor:
        v = (idx.float() + 0.5) / 4 * 2 - 1
        return F.interpolate(v[:, None], scale_factor=2, mode="nearest").expand(-1, 3, -1, -1)


def _images_for(tokens: torch.Tensor) -> torch.Tensor:
    return FakeTokenizer().detokenize(tokens)


# ---------------------------------------------------------------------------
# causality and loss formula
# ---------------------------------------------------------------------------


def test_changing_a_later_image_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=8, token_shape=[3, 3], condition="class", num_classes=2, **TINY).eval()
    x = torch.randint(0, 8, (2, 3, 3))
    labels = torch.tensor([0, 1])
    base = m(x, labels).image
    for j in range(9):
        y = x.clone().view(2, 9)
        y[:, j] = (y[:, j] + 1) % 8
        out = m(y.view(2, 3, 3), labels).image
        # logits[:, i] predict token i from tokens < i: only i > j may change
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], atol=0, rtol=0)
        if j < 8:
            assert (out[:, j + 1 :] - base[:, j + 1 :]).abs().amax() > 1e-6
    other = m(x, torch.tensor([1, 0])).image
    assert (other[:, 0] - base[:, 0]).abs().amax() > 1e-6  # the class reaches the first token


def test_text_image_causality_in_both_directions():
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=8, token_shape=[4], condition="text", text_vocab_size=6, text_length=3, order="both", **TINY).eval()
    x = torch.randint(0, 8, (2, 4))
    t = torch.randint(1, 6, (2, 3))
    t2 = t.clone()
    t2[:, 2] = (t2[:, 2] % 5) + 1
    a, b = m(x, t, direction="t2i"), m(x, t2, direction="t2i")
    torch.testing.assert_close(a.text[:, :3], b.text[:, :3], atol=0, rtol=0)  # text[2] is predicted, not seen
    assert (a.image - b.image).abs().amax(-1).min() > 1e-6  # every image token sees the whole text
    a, b = m(x, t, direction="i2t"), m(x, t2, direction="i2t")
    torch.testing.assert_close(a.image, b.image, atol=0, rtol=0)  # image comes first
    torch.testing.assert_close(a.text, b.text, atol=0, rtol=0)  # last text token is never an input


def test_loss_is_weighted_1_to_7_and_ignores_text_padding():
    torch.manual_seed(0)
    kw = dict(vocab_size=8, token_shape=[2, 2], condition="text", text_vocab_size=6, text_length=4, **TINY)
    x = torch.randint(0, 8, (3, 2, 2))
    t = torch.tensor([[1, 3, 0, 0], [1, 4, 5, 0], [1, 2, 2, 3]])  # PAD = 0
    for order, direction in (("text_first", "t2i"), ("image_first", "i2t")):
        m = MiniGPT(order=order, **kw).eval()
        loss, logs = m.compute_loss(PriorBatch(x, None, t))
        out = m(x, t, direction=direction)
        lp_img = out.image.double().log_softmax(-1)
        ce_img = -lp_img.gather(-1, x.view(3, 4, 1)).mean()
        lp_txt = out.text.double().log_softmax(-1)
        nll = -lp_txt.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        ce_txt = nll[t != 0].mean()
        if direction == "t2i":
            want = (1 * ce_txt + 7 * ce_img) / 8
        else:
            want = (1 * ce_img + 7 * ce_txt) / 8
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)
        assert logs["loss_text"].item() == pytest.approx(ce_txt.item(), rel=1e-5)


# ---------------------------------------------------------------------------
# KV cache vs full recomputation
# ---------------------------------------------------------------------------


def _cached_vs_uncached(m, call):
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(1234)
        outs.append(call(use_cache, g))
    return outs


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=5), dict(temperature=1.2, top_p=0.7), dict(top_k=6, top_p=0.9)],
)
def test_kv_cache_sampling_equals_uncached_token_for_token(sampling):
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=16, token_shape=[4, 4], **TINY)
    a, b = _cached_vs_uncached(m, lambda c, g: m.generate(6, use_cache=c, generator=g, **sampling))
    assert a.shape == (6, 4, 4)
    assert torch.equal(a, b)
    if sampling.get("temperature", 1.0) > 0:
        assert len(torch.unique(a.view(6, -1), dim=0)) > 1  # really sampled


def test_kv_cache_equivalence_with_class_cfg_and_text():
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=16, token_shape=[3, 3], condition="class", num_classes=4, cond_drop_prob=0.1, **TINY)
    a, b = _cached_vs_uncached(m, lambda c, g: m.generate(5, [0, 1, 2, 3, 0], cfg_scale=3.0, top_k=8, use_cache=c, generator=g))
    assert torch.equal(a, b)
    mt = MiniGPT(vocab_size=16, token_shape=[6], condition="text", text_vocab_size=7, text_length=5, order="both", **TINY)
    text = torch.randint(0, 7, (3, 5))
    a, b = _cached_vs_uncached(mt, lambda c, g: mt.generate(3, text, top_p=0.9, use_cache=c, generator=g))
    assert torch.equal(a, b)
    img = torch.randint(0, 16, (3, 6))
    a, b = _cached_vs_uncached(mt, lambda c, g: mt.generate_text(img, use_cache=c, generator=g))
    assert a.shape == (3, 5) and torch.equal(a, b)


def test_filter_logits_hand_example():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False, False]]  # 0.5 + 0.2 reaches 0.7
    kept = torch.isfinite(filter_logits(logits, top_p=0.71))
    assert kept.tolist() == [[True, True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False, False]]


# ---------------------------------------------------------------------------
# learning a toy distribution
# ---------------------------------------------------------------------------


def _fit(m, batches, steps, lr=3e-3):
    torch.manual_seed(0)
    m.optimizer_factory = functools.partial(torch.optim.AdamW, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    opt = m.configure_optimizers()
    m.train()
    for step in range(steps):
        loss, _ = m.compute_loss(batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_tiny_class_conditional_minigpt_learns_a_deterministic_pattern():
    V, N, C = 8, 8, 3
    patterns = torch.stack([(torch.arange(N) * (c + 1) + c) % V for c in range(C)])  # class c -> its sequence
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=V, token_shape=[2, 4], condition="class", num_classes=C, **TINY)

    def batches(step):
        y = torch.randint(0, C, (32,))
        return PriorBatch(patterns[y].view(32, 2, 4), y)

    loss = _fit(m, batches, 150)
    assert loss < 0.05 * math.log(V)
    y = torch.arange(30) % C
    samples = m.generate(30, y, generator=torch.Generator().manual_seed(0)).view(30, N)
    match = (samples == patterns[y]).all(1).float().mean().item()
    assert match >= 0.9
    greedy = m.generate(3, torch.arange(3), temperature=0.0).view(3, N)
    assert torch.equal(greedy, patterns)


def test_tiny_text_minigpt_learns_both_directions():
    V, Vt, L = 8, 6, 4
    images = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [0, 0, 7, 7, 0, 0], [7, 1, 7, 1, 7, 1]])
    texts = torch.tensor([[1, 2, 0, 0], [1, 3, 4, 0], [1, 5, 5, 2], [1, 4, 0, 0]])  # 0 = PAD
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=V, token_shape=[6], condition="text", text_vocab_size=Vt, text_length=L, order="both", **TINY)

    def batches(step):
        i = torch.randint(0, 4, (16,))
        return PriorBatch(images[i], None, texts[i])

    _fit(m, batches, 200)
    got_img = m.generate(4, texts, temperature=0.0)
    assert torch.equal(got_img, images)
    got_txt = m.generate_text(images, temperature=0.0)
    assert torch.equal(got_txt[texts != 0], texts[texts != 0])  # positions after the caption are untrained


def test_alternate_order_trains_one_direction_per_step_and_evaluates_both(monkeypatch):
    """order="alternate" (the reference's --task alternate): t2i on even optimizer steps, i2t on odd
    ones, each loss exactly the "both" model's per-direction loss; evaluation averages the two."""
    V, Vt, L = 8, 6, 4
    torch.manual_seed(0)
    both = MiniGPT(vocab_size=V, token_shape=[6], condition="text", text_vocab_size=Vt, text_length=L, order="both", **TINY)
    alt = MiniGPT(vocab_size=V, token_shape=[6], condition="text", text_vocab_size=Vt, text_length=L,
                  order="alternate", **TINY)
    alt.load_state_dict(both.state_dict())
    img, text = torch.randint(0, V, (5, 6)), torch.tensor([[1, 2, 0, 0], [1, 3, 4, 0], [1, 5, 5, 2]] * 2)[:5]
    batch = PriorBatch(img, None, text)
    step = {"n": 0}
    monkeypatch.setattr(MiniGPT, "global_step", property(lambda self: step["n"]))
    both.eval()
    ref_total, ref = both.compute_loss(batch)
    alt.train()
    for n, direction in ((0, "t2i"), (1, "i2t"), (2, "t2i")):
        step["n"] = n
        loss, logs = alt.compute_loss(batch)
        assert set(logs) == {f"loss_image_{direction}", f"loss_text_{direction}", f"loss_{direction}"}
        torch.testing.assert_close(loss, ref[f"loss_{direction}"])
    alt.eval()
    total, logs = alt.compute_loss(batch)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(total, (ref["loss_t2i"] + ref["loss_i2t"]) / 2)
    assert set(logs) == set(ref)


def test_tiny_text_minigpt_learns_both_directions_when_alternating(monkeypatch):
    V, Vt, L = 8, 6, 4
    images = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [0, 0, 7, 7, 0, 0], [7, 1, 7, 1, 7, 1]])
    texts = torch.tensor([[1, 2, 0, 0], [1, 3, 4, 0], [1, 5, 5, 2], [1, 4, 0, 0]])
    torch.manual_seed(0)
    m = MiniGPT(vocab_size=V, token_shape=[6], condition="text", text_vocab_size=Vt, text_length=L,
                order="alternate", **TINY)
    step = {"n": 0}
    monkeypatch.setattr(MiniGPT, "global_step", property(lambda self: step["n"]))

    def batches(n):
        step["n"] = n
        i = torch.randint(0, 4, (16,))
        return PriorBatch(images[i], None, texts[i])

    _fit(m, batches, 400)
    assert torch.equal(m.generate(4, texts, temperature=0.0), images)
    got_txt = m.generate_text(images, temperature=0.0)
    assert torch.equal(got_txt[texts != 0], texts[texts != 0])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    m = MiniGPT(vocab_size=8, token_shape=[2, 2], condition="class", num_classes=3, **TINY)
    good = torch.zeros(2, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"must be in \[0, 8\).*\[0, 8\]"):
        m.compute_loss(PriorBatch(good + 8 * torch.eye(2, dtype=torch.long)[None], torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"shape \(B, 2, 2\), got \(2, 5\)"):
        m.compute_loss(PriorBatch(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="integer tensor"):
        m(good.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs class labels"):
        m.compute_loss(PriorBatch(good))
    with pytest.raises(ValueError, match=r"looks like text"):
        m.generate(2, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        m.generate(2, 3)
    with pytest.raises(ValueError, match="cond_drop_prob > 0"):
        m.generate(2, 0, cfg_scale=2.0)
    u = MiniGPT(vocab_size=8, num_image_tokens=4, **TINY)
    with pytest.raises(ValueError, match="unconditional"):
        u.generate(2, 1)
    assert u.generate(2).shape == (2, 4)
    u.check_image_tokens(torch.zeros(1, 2, 2, dtype=torch.long))  # flat-only models accept any 4-token layout
    t = MiniGPT(vocab_size=8, token_shape=[4], condition="text", text_vocab_size=5, text_length=3, order="image_first", **TINY)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        t.compute_loss(PriorBatch(torch.zeros(2, 4, dtype=torch.long), None, torch.zeros(2, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="text condition must be token ids"):
        t.forward(torch.zeros(1, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="image_first"):
        MiniGPT(vocab_size=8, token_shape=[4], **TINY).generate_text(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot generate images"):
        t.generate(1, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        MiniGPT(vocab_size=8, token_shape=[4], condition="class")
    with pytest.raises(ValueError, match="disagrees"):
        MiniGPT(vocab_size=8, token_shape=[2, 2], num_image_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        u.generate(1, top_p=1.5)


# ---------------------------------------------------------------------------
# Prior base: optimizer, schedule, frozen tokenizer
# ---------------------------------------------------------------------------


def test_weight_decay_only_on_linear_weights_and_lr_schedule():
    m = MiniGPT(vocab_size=8, token_shape=[4], warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1, total_steps=110, **TINY)
    decay, no_decay = m.configure_optimizers()["optimizer"].param_groups
    linear = {id(mod.weight) for mod in m.modules() if isinstance(mod, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear and decay["weight_decay"] == 0.1  # the default AdamW's
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    assert any(p is m.tok_emb.weight for p in no_decay["params"])
    want = {0: 0.1, 9: 1.0, 10: 1.0, 60: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), 110: 0.1, 500: 0.1}
    for step, value in want.items():
        assert m.lr_lambda(step, 110) == pytest.approx(value)


def test_frozen_tokenizer_tokenizes_images_and_decodes_samples(monkeypatch, tmp_path):
    fake = FakeTokenizer()
    ckpt = tmp_path / "tok.ckpt"
    ckpt.write_bytes(b"placeholder")
    monkeypatch.setattr("vqzoo.checkpoint.load", lambda path, **kw: fake)
    m = MiniGPT(vocab_size=4, token_shape=[2, 2], tokenizer=str(ckpt), **TINY)
    tokens = torch.randint(0, 4, (3, 2, 2))
    pb = m.prepare_batch({"images": _images_for(tokens), "labels": torch.zeros(3, dtype=torch.long)})
    assert torch.equal(pb.tokens, tokens)
    assert not fake.training and not any(p.requires_grad for p in fake.parameters())
    assert not any("dummy" in k for k in m.state_dict())  # the tokenizer's weights stay out of the prior's
    imgs = m.sample_images(2, generator=torch.Generator().manual_seed(3))
    want = fake.detokenize(m.generate(2, generator=torch.Generator().manual_seed(3)))
    assert imgs.shape == (2, 3, 4, 4) and torch.equal(imgs, want)
    with pytest.raises(ValueError, match=r"vocab_size=4 but MiniGPT was configured with vocab_size=5"):
        MiniGPT(vocab_size=5, token_shape=[2, 2], **TINY).set_tokenizer(fake)
    with pytest.raises(ValueError, match=r"token_shape=\(2, 2\) but MiniGPT was configured with token_shape=\(3, 3\)"):
        MiniGPT(vocab_size=4, token_shape=[3, 3], **TINY).set_tokenizer(fake)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        MiniGPT(vocab_size=4, token_shape=[2, 2], tokenizer=str(tmp_path / "missing.ckpt"), **TINY).frozen_tokenizer


# ---------------------------------------------------------------------------
# token directories, Lightning fit, checkpoint, sampling to disk
# ---------------------------------------------------------------------------


def _image_loader(n=24, bs=8):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (n, 2, 2), generator=g)
    return DataLoader(TensorBatchDataset(images=_images_for(tokens), labels=torch.arange(n) % 3), batch_size=bs), tokens


def test_encode_tokens_roundtrip_and_atomicity(tmp_path):
    loader, tokens = _image_loader()
    out = encode_tokens(FakeTokenizer(), loader, tmp_path / "tok", tokenizer_path="fake.ckpt")
    meta = read_token_meta(out)
    assert meta["vocab_size"] == 4 and meta["token_shape"] == [2, 2] and meta["num_samples"] == 24
    assert meta["dtype"] == "int16" and meta["tokenizer"] == "fake.ckpt" and meta["has_labels"]
    ds = TokenDataset(out)
    assert torch.equal(torch.stack([ds[i]["tokens"] for i in range(24)]), tokens)
    assert ds[5]["labels"].item() == 5 % 3
    with pytest.raises(FileExistsError):
        encode_tokens(FakeTokenizer(), loader, out)

    def failing():
        for i, batch in enumerate(loader):
            if i == 2:
                raise RuntimeError("disk on fire")
            yield batch

    with pytest.raises(RuntimeError, match="disk on fire"):
        encode_tokens(FakeTokenizer(), failing(), tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no partial or temporary output
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TokenDataset(tmp_path / "nothing")


def test_fit_checkpoint_load_and_sample_prior(tmp_path, monkeypatch):
    loader, _ = _image_loader(n=40)
    root = encode_tokens(FakeTokenizer(), loader, tmp_path / "tok")
    dm = TokenDataModule(str(root), val_fraction=0.2, batch_size=8)
    m = MiniGPT(vocab_size=4, token_shape=[2, 2], condition="class", num_classes=3, cond_drop_prob=0.1, warmup_steps=2, **TINY)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(m, dm)
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    ckpt = tmp_path / "prior.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load(ckpt)
    assert isinstance(loaded, MiniGPT)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    from vqzoo.checkpoint import export_model

    exported = load(export_model(loaded, tmp_path / "export"))  # safetensors + config.json
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in m.state_dict().items())

    bad = MiniGPT(vocab_size=5, token_shape=[2, 2], condition="class", num_classes=3, **TINY)
    with pytest.raises(ValueError, match="token data has vocab_size=4"):
        L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).fit(bad, dm)

    out = sample_prior(ckpt, 5, [0, 1, 2, 0, 1], tmp_path / "s1", batch_size=2, save_images=False, top_k=3)
    first = torch.load(out / "tokens.pt")["tokens"]
    assert first.shape == (5, 2, 2)
    again = sample_prior(ckpt, 5, [0, 1, 2, 0, 1], tmp_path / "s2", batch_size=2, save_images=False, top_k=3)
    assert torch.equal(torch.load(again / "tokens.pt")["tokens"], first)  # seeded

    by_string = sample_prior(ckpt, 2, "1", tmp_path / "s4", steps=None, top_k=None)  # CLI-style arguments
    assert torch.load(by_string / "tokens.pt")["tokens"].shape == (2, 2, 2)
    with pytest.raises(ValueError, match="has no option 'num_steps'"):
        sample_prior(ckpt, 2, 1, tmp_path / "s5", steps=4)
    assert not (tmp_path / "s5").exists()

    tok_file = tmp_path / "tok.ckpt"
    tok_file.write_bytes(b"placeholder")
    monkeypatch.setattr("vqzoo.checkpoint.load", lambda path, **kw: FakeTokenizer() if str(path) == str(tok_file) else load(path, **kw))
    out = sample_prior(ckpt, 4, 2, tmp_path / "s3", tokenizer=str(tok_file), nrow=2)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * 4 + 3 * 2, 2 * 4 + 3 * 2)


def test_sample_to_grid_layout_and_values():
    imgs = torch.full((3, 3, 2, 2), -1.0)
    imgs[1] = 1.0
    grid = sample_to_grid(imgs, nrow=2, padding=1)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 3 + 1, 2 * 3 + 1)
    assert grid[:, 1:3, 1:3].eq(0).all() and grid[:, 1:3, 4:6].eq(255).all() and grid[:, 4:6, 1:3].eq(0).all()
    assert grid[:, 0].eq(255).all()  # white padding
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sample_to_grid(torch.zeros(3, 4, 4))


def test_draw_categorical_matches_probabilities_and_skips_zero_mass() -> None:
    from vqzoo.priors.base import draw_categorical

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0]])  # rows need not sum to 1
    g = torch.Generator().manual_seed(0)
    draws = draw_categorical(probs.repeat(20000, 1), g).view(20000, 2)
    freq = torch.bincount(draws[:, 0], minlength=4).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64), atol=0.015)
    assert int((draws[:, 0] == 1).sum()) == 0
    assert bool((draws[:, 1] == 3).all())
