"""TE-VQGAN metrics: translation-equivariance rate, stage-1 report, semantic accuracy (table 1)."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqzoo.experiments.te.captions import VOCAB, Placement, parse_caption
from vqzoo.experiments.te.quadrants import COLOR_RGB, HeldOutPairs, QuadrantsDataset, load_source_splits, prepare_tiles
from vqzoo.checkpoint import load
from vqzoo.experiments.te.equivariance import equivariance_rate, place_in_all_quadrants, stage1_report
from vqzoo.metrics.equivariance import equivariance_rate_from_indices, quadrant_token_regions
from vqzoo.experiments.te.semantic import (
    QuadrantClassifier,
    QuadrantCropDataModule,
    classify_crops,
    crop_quadrants,
    image_to_text_accuracy,
    text_to_image_accuracy,
)

S, Q = 32, 16
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "quadrant_classifier.yaml"


@pytest.fixture(scope="module")
def sources():
    return load_source_splits("mnist5k")


class PoolTokenizer:
    """Average-pool by ``factor`` then bin the channel mean into ``levels`` codes.

    Pooling windows tile every quadrant exactly (Q % factor == 0), so a
    quadrant shift moves identical pixel blocks to identical windows: the
    indices are exactly equivariant. ``offset`` adds a position-dependent
    ramp before binning, which breaks equivariance.
    """

    def __init__(self, factor: int = 4, levels: int = 8, offset: float = 0.0) -> None:
        self.factor, self.levels, self.offset = factor, levels, offset

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        v = F.avg_pool2d(x, self.factor).mean(1)
        if self.offset:
            h, w = v.shape[-2:]
            ramp = torch.arange(h)[:, None] / h + torch.arange(w)[None, :] / w
            v = v + self.offset * ramp
        return ((v + 1) / 2 * self.levels).floor().clamp(0, self.levels - 1).long()

    def detokenize(self, idx: torch.Tensor) -> torch.Tensor:
        v = (idx.float() + 0.5) / self.levels * 2 - 1
        return v[:, None].expand(-1, 3, -1, -1).repeat_interleave(self.factor, 2).repeat_interleave(self.factor, 3)


# --------------------------------------------------------------- equivariance
def test_rate_from_indices_hand_worked():
    # N=1, 4x4 token maps (2x2 regions). Map k holds pattern P in region k, zeros elsewhere.
    pattern = torch.tensor([[1, 2], [3, 4]])
    maps = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    for k in range(4):
        r, c = divmod(k, 2)
        maps[0, k, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = pattern
    assert equivariance_rate_from_indices(maps) == 1.0
    # Change one token in the LR copy: pairs (UL,LR), (UR,LR), (LL,LR) lose 1 of 4 tokens each.
    maps[0, 3, 3, 3] = 9
    assert equivariance_rate_from_indices(maps) == pytest.approx((3 * 4 + 3 * 3) / (6 * 4))
    # Tokens outside a copy's own region are ignored.
    maps[0, 0, 3, 3] = 7
    assert equivariance_rate_from_indices(maps) == pytest.approx(21 / 24)


def test_rate_from_indices_matches_float64_loop_and_multichannel():
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 3, (5, 4, 6, 8, 2), generator=g)
    own = []
    for k in range(4):
        r, c = divmod(k, 2)
        own.append(maps[:, k, 3 * r : 3 * r + 3, 4 * c : 4 * c + 4].double())
    expected = np.mean([(own[i] == own[j]).double().mean().item() for i, j in itertools.combinations(range(4), 2)])
    assert equivariance_rate_from_indices(maps) == pytest.approx(expected, abs=1e-12)
    regions = quadrant_token_regions(maps[:, 0])
    assert regions.shape == (5, 4, 3, 4, 2) and torch.equal(regions[:, 3], maps[:, 0, 3:, 4:])


def test_rate_rejects_bad_maps():
    with pytest.raises(ValueError, match="per-token"):
        quadrant_token_regions(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="even"):
        quadrant_token_regions(torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        quadrant_token_regions(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        equivariance_rate_from_indices(torch.zeros(2, 3, 4, 4, dtype=torch.long))


def test_equivariant_tokenizer_scores_one_and_shifted_one_below(sources):
    digits, colors = sources.test_images[:12], np.arange(12) % 4
    assert equivariance_rate(PoolTokenizer().tokenize, digits, colors, S, batch_size=7) == 1.0
    assert equivariance_rate(PoolTokenizer(factor=8, levels=16).tokenize, digits, 2, 64) == 1.0
    broken = equivariance_rate(PoolTokenizer(offset=0.5).tokenize, digits, colors, S)
    assert broken < 0.9


def test_place_in_all_quadrants(sources):
    digits = sources.test_images[:3]
    canvases = place_in_all_quadrants(digits, torch.tensor([0, 1, 3]), S)
    assert canvases.shape == (3, 4, 3, S, S)
    tile = torch.from_numpy(prepare_tiles(digits, Q)).float() / 255
    for k in range(4):
        r, c = divmod(k, 2)
        block = canvases[:, k, :, r * Q : (r + 1) * Q, c * Q : (c + 1) * Q]
        expected = tile[:, None] * torch.from_numpy(COLOR_RGB[[0, 1, 3]])[:, :, None, None] * 2 - 1
        assert torch.allclose(block, expected)
        assert int((canvases[:, k] > -1).sum()) == int((expected > -1).sum())
    with pytest.raises(ValueError, match="colors"):
        place_in_all_quadrants(digits, torch.tensor([0, 5, 1]), S)


class ModuleTokenizer(nn.Module):
    """A PoolTokenizer wrapped in a module, recording the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.modes = PoolTokenizer(), set()

    def tokenize(self, x):
        self.modes.add(self.training)
        return self.inner.tokenize(x)

    def detokenize(self, idx):
        return self.inner.detokenize(idx)


def test_stage1_report_runs_modules_in_eval_mode(sources):
    tok = ModuleTokenizer().train()
    stage1_report(tok, [torch.zeros(2, 3, S, S)], sources.test_images[:2], 1, S)
    assert tok.modes == {False} and tok.training


def test_config_builds_classifier_and_data():
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False, save_config_callback=None,
                       args=["--config", str(CONFIG),
                             "--trainer.logger", "false", "--trainer.callbacks", "[]"])
    assert isinstance(cli.model, QuadrantClassifier) and cli.model.crop_size == Q
    assert isinstance(cli.datamodule, QuadrantCropDataModule) and cli.datamodule.hparams.canvas_size == S


def test_stage1_report_against_direct_computation(sources):
    tok = PoolTokenizer()
    ds = QuadrantsDataset(prepare_tiles(sources.test_images, Q), sources.test_labels, "val", 20,
                          HeldOutPairs.from_seed(None), with_captions=False)
    batches = [torch.stack([ds[i]["images"] for i in range(j, j + 10)]) for j in (0, 10)]
    loader = [{"images": b} for b in batches]
    report = stage1_report(tok, loader, sources.test_images[:4], 0, S)
    x = torch.cat(batches).double()
    idx = tok.tokenize(x.float())
    assert report["codes_used"] == len(set(idx.flatten().tolist()))
    assert report["l1"] == pytest.approx((x - tok.detokenize(idx).double()).abs().mean().item(), rel=1e-9)
    assert report["perceptual"] is None and report["equivariance"] == 1.0 and report["num_images"] == 20
    sq = stage1_report(tok, batches, sources.test_images[:4], 0, S,
                       perceptual=lambda a, b: ((a - b) ** 2).flatten(1).mean(1))
    assert sq["perceptual"] == pytest.approx(((x - tok.detokenize(idx).double()) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="tokenize"):
        stage1_report(object(), batches, sources.test_images[:4], 0, S)


# ----------------------------------------------------------- semantic accuracy
class OracleClassifier(nn.Module):
    """Nearest-neighbour stand-in for a trained classifier: exact on known crops."""

    def __init__(self, tiles: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        t = torch.from_numpy(tiles).float() / 255
        crops = t[:, None, None] * torch.from_numpy(COLOR_RGB)[None, :, :, None, None] * 2 - 1  # (N,4,3,q,q)
        n = len(tiles)
        self.register_buffer("bank", crops.reshape(n * 4, -1))
        self.register_buffer("colors", torch.arange(4).repeat(n))
        self.register_buffer("labels", torch.from_numpy(np.array(labels)).repeat_interleave(4))

    def forward(self, crops: torch.Tensor):
        nearest = torch.cdist(crops.flatten(1), self.bank).argmin(1)
        return F.one_hot(self.colors[nearest], 4).float(), F.one_hot(self.labels[nearest], 10).float()


@pytest.fixture(scope="module")
def test_set(sources):
    tiles = prepare_tiles(sources.test_images, Q)
    ds = QuadrantsDataset(tiles, sources.test_labels, "test", 60, HeldOutPairs.from_seed(None))
    items = [ds[i] for i in range(len(ds))]
    return {
        "images": torch.stack([it["images"] for it in items]),
        "captions": [it["captions"] for it in items],
        "layouts": torch.stack([it["layout"] for it in items]),
        "oracle": OracleClassifier(tiles, sources.test_labels),
    }


def test_crop_quadrants_matches_slicing():
    images = torch.randn(3, 3, 8, 8)
    crops = crop_quadrants(images, torch.tensor([0, 3, 2]))
    assert torch.equal(crops[0], images[0, :, :4, :4])
    assert torch.equal(crops[1], images[1, :, 4:, 4:])
    assert torch.equal(crops[2], images[2, :, 4:, :4])


def test_text_to_image_ground_truth_scores_one_and_blank_zero(test_set):
    res = text_to_image_accuracy(test_set["images"], test_set["captions"], test_set["oracle"])
    for k in (1, 2, 3, 4):
        assert res[f"Quad{k}/digit"] == 1.0 and res[f"Quad{k}/color"] == 1.0 and res[f"Quad{k}/both"] == 1.0
    assert sum(res[f"Quad{k}/images"] for k in (1, 2, 3, 4)) == 60
    blank = torch.full_like(test_set["images"], -1.0)
    res0 = text_to_image_accuracy(blank, test_set["captions"], test_set["oracle"])
    assert all(res0[f"Quad{k}/{m}"] == 0.0 for k in (1, 2, 3, 4) for m in ("digit", "color"))


def test_text_to_image_partial_case_hand_worked(test_set):
    # Blank one named quadrant of a 2-object image: Quad2 digit accuracy 1/2 for that image alone.
    i = next(n for n, c in enumerate(test_set["captions"]) if len(parse_caption(c)) == 2)
    image = test_set["images"][i : i + 1].clone()
    pos = parse_caption(test_set["captions"][i])[1].position
    r, c = divmod(pos, 2)
    image[:, :, r * Q : (r + 1) * Q, c * Q : (c + 1) * Q] = -1
    res = text_to_image_accuracy(image, test_set["captions"][i : i + 1], test_set["oracle"])
    assert res["Quad2/digit"] == 0.5 and res["Quad2/images"] == 1.0 and "Quad1/digit" not in res
    with pytest.raises(ValueError, match="one caption per image"):
        text_to_image_accuracy(image, test_set["captions"][:2], test_set["oracle"])


def test_image_to_text_ground_truth_one_blank_zero_and_partial(test_set):
    res = image_to_text_accuracy(test_set["captions"], test_set["layouts"])
    assert all(res[f"Quad{k}/{m}"] == 1.0 for k in (1, 2, 3, 4) for m in ("digit", "color", "exact"))
    tokens = torch.stack([VOCAB.encode(c) for c in test_set["captions"]])
    assert image_to_text_accuracy(tokens, test_set["layouts"]) == res
    res0 = image_to_text_accuracy([""] * 60, test_set["layouts"])
    assert all(res0[f"Quad{k}/{m}"] == 0.0 for k in (1, 2, 3, 4) for m in ("digit", "color", "exact"))
    truth = [(Placement(0, 0, 0), Placement(1, 1, 7), Placement(3, 3, 5))]
    said = ["the top left is white 0, a red one is on the upper right, the bottom right is blue"]
    part = image_to_text_accuracy(said, truth)
    assert part["Quad3/digit"] == pytest.approx(1 / 3)  # 0 right, 1 != 7, 5 missing
    assert part["Quad3/color"] == pytest.approx(1.0) and part["Quad3/exact"] == 0.0


def test_classify_crops_marks_empty_crops():
    clf = QuadrantClassifier(crop_size=8, width=4)
    crops = torch.full((3, 3, 8, 8), -1.0)
    crops[1, 0, 2, 2] = 1.0
    color, label = classify_crops(clf, crops)
    assert color[0] == -1 and label[0] == -1 and color[2] == -1
    assert 0 <= color[1] < 4 and 0 <= label[1] < 10
    assert clf.training  # mode restored


def test_classifier_trains_briefly_and_reloads(tmp_path):
    L.seed_everything(0)
    model = QuadrantClassifier(crop_size=Q, width=4)
    data = QuadrantCropDataModule(canvas_size=S, batch_size=32)
    trainer = L.Trainer(max_steps=3, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(path)
    loaded = load(path, expected=QuadrantClassifier)
    x = torch.rand(5, 3, Q, Q) * 2 - 1
    model.eval()
    for a, b in zip(model(x), loaded(x)):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="crops"):
        loaded(torch.zeros(1, 3, 8, 8))
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.ckpt", expected=QuadrantClassifier)
