"""Semantic accuracy of text-to-image and image-to-text generation (TE-VQGAN table 1).

* **Text -> image.** One generated image per test caption. The caption is
  parsed into its (position, color, label) set; the named quadrants are cropped
  from the generated image and a digit-and-color classifier reads each crop.
  Accuracy is reported per Quad1..Quad4, the test images holding one to four
  objects (the paper: "the generated image has one (Quad1), two (Quad2), three
  (Quad3), and four digits (Quad4)").
* **Image -> text.** One generated caption per test image, parsed; for every
  object of the true layout, the clause about the same quadrant must name the
  same label (digit accuracy) and color (color accuracy).

The classifier (:class:`QuadrantClassifier`) is a small ResNet with a color
head (4) and a label head (10), trained on single quadrant crops rendered from
the source digits (:class:`QuadrantCropDataModule`, configs/experiments/
quadrant_classifier.yaml) and loaded by the evaluation with
``vqzoo.checkpoint.load(path, expected=QuadrantClassifier)``.

Decisions where the paper is silent:

* Crops are whole quadrants (S/2 x S/2, i.e. the 32x32 tile with its 2-pixel
  margin at S=64; 16x16 at S=32). The authors' code cropped the inner 28x28;
  the whole quadrant also judges strokes a generator drew into the margin.
  When the classifier was trained for another crop size, crops are resized to
  it (box averaging down, bilinear up).
* A crop whose brightest pixel is below ``empty_threshold`` (0.25 on the
  [0, 1] intensity scale) counts as empty: neither its label nor its color is
  correct. A classifier must always answer something, and without this rule a
  blank image would still score about chance.
* Accuracies are averaged over objects (crops or clauses) within a QuadK group,
  not over images. ``QuadK/both`` (text -> image) and ``QuadK/exact``
  (image -> text, whole caption parses to exactly the true layout) are
  reported too.
* Classifier training data: every train-source digit, drawn in a random color,
  shifted by up to ``max_shift`` pixels, with its intensity scaled by a
  random gain in [``min_gain``, 1], so that a slightly displaced or dim
  generated digit is still read. Held-out accuracy: every test-source digit in
  each of the four colors, no augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vqzoo.data.batch import Batch
from vqzoo.experiments.te.captions import VOCAB, Layout, canonical_layout, parse_caption, parse_clauses
from vqzoo.experiments.te.quadrants import (
    COLOR_RGB,
    SourceName,
    layout_from_tensor,
    load_source_splits,
    prepare_tiles,
)

__all__ = [
    "QuadrantClassifier",
    "QuadrantCropDataModule",
    "QuadrantCropDataset",
    "classify_crops",
    "crop_quadrants",
    "image_to_text_accuracy",
    "text_to_image_accuracy",
]


# ----------------------------------------------------------------- classifier
class _ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class QuadrantClassifier(L.LightningModule):
    """Color (4) and label (10) classifier for quadrant crops.

    A ResNet-18-style network scaled down to crops of 16-32 pixels: a 3x3
    stem, three residual stages of ``width``, 2x and 4x channels (strides 1, 2,
    2), global average pooling and two linear heads. ``forward`` takes crops
    ``(B, 3, crop_size, crop_size)`` in [-1, 1] and returns
    ``(color_logits (B, 4), label_logits (B, 10))``.

    Args:
        crop_size: side of the crops it is trained on (S/2).
        width: channels of the first stage.
        learning_rate: peak AdamW learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        label_smoothing: for the label head's cross-entropy.
    """

    def __init__(
        self,
        crop_size: int = 16,
        width: int = 32,
        learning_rate: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.05,
    ) -> None:
        super().__init__()
        if crop_size < 4:
            raise ValueError(f"crop_size must be >= 4; got {crop_size}")
        if width < 1:
            raise ValueError(f"width must be >= 1; got {width}")
        self.save_hyperparameters()
        self.crop_size = crop_size
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            _ResidualBlock(width, width, 1),
            _ResidualBlock(width, 2 * width, 2),
            _ResidualBlock(2 * width, 4 * width, 2),
        )
        self.color_head = nn.Linear(4 * width, 4)
        self.label_head = nn.Linear(4 * width, 10)

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[2:] != (self.crop_size, self.crop_size):
            raise ValueError(
                f"expected crops (B, 3, {self.crop_size}, {self.crop_size}); got {tuple(crops.shape)}"
            )
        h = self.stages(self.stem(crops)).mean(dim=(2, 3))
        return self.color_head(h), self.label_head(h)

    def _step(self, batch: Batch, prefix: str) -> Tensor:
        crops, colors, labels = batch["images"], batch["colors"], batch["labels"]
        color_logits, label_logits = self(crops)
        loss = F.cross_entropy(color_logits, colors) + F.cross_entropy(
            label_logits, labels, label_smoothing=self.hparams.label_smoothing
        )
        bs = crops.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=prefix != "train")
        if prefix != "train":
            self.log(f"{prefix}/digit_acc", (label_logits.argmax(1) == labels).float().mean(),
                     prog_bar=True, batch_size=bs, sync_dist=True)
            self.log(f"{prefix}/color_acc", (color_logits.argmax(1) == colors).float().mean(),
                     batch_size=bs, sync_dist=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from vqzoo.checkpoint import checkpoint_meta

        # Names the class, so vqzoo.checkpoint.load reads a checkpoint of a classifier built in Python too.
        checkpoint["vqzoo"] = checkpoint_meta(self)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.learning_rate, total_steps=max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ----------------------------------------------------------------- crop data
class QuadrantCropDataset(Dataset):
    """Single colored quadrant crops as :class:`vqzoo.data.batch.Batch` items.

    Item: ``images`` (3, q, q) in [-1, 1], ``labels`` (int64 class id) and the
    extra key ``colors`` (int64 color id, 0 white, 1 red, 2 green, 3 blue).

    With ``augment`` (training) item i is tile i in a random color, shift and
    gain, drawn from torch's global generator (seeded by Lightning per worker).
    Without it (evaluation) item i is tile ``i // 4`` in color ``i % 4``.
    """

    def __init__(
        self,
        tiles: np.ndarray,
        labels: np.ndarray,
        augment: bool,
        max_shift: int = 1,
        min_gain: float = 0.6,
    ) -> None:
        if tiles.ndim != 3 or tiles.dtype != np.uint8 or labels.shape != (len(tiles),):
            raise ValueError(f"need uint8 tiles (N, q, q) and labels (N,); got {tiles.shape}, {labels.shape}")
        if not 0.0 < min_gain <= 1.0:
            raise ValueError(f"min_gain must lie in (0, 1]; got {min_gain}")
        if not 0 <= max_shift < tiles.shape[1] // 2:
            raise ValueError(f"max_shift must lie in [0, {tiles.shape[1] // 2}); got {max_shift}")
        self.tiles = torch.from_numpy(np.ascontiguousarray(tiles)).float() / 255.0
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.augment = augment
        self.max_shift = max_shift
        self.min_gain = min_gain
        self.rgb = torch.from_numpy(COLOR_RGB)

    def __len__(self) -> int:
        return len(self.tiles) if self.augment else 4 * len(self.tiles)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if self.augment:
            tile = self.tiles[i]
            color = int(torch.randint(4, ()))
            if self.max_shift:
                dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
                tile = _shift(tile, dy, dx)
            tile = tile * (self.min_gain + (1.0 - self.min_gain) * float(torch.rand(())))
            label = self.labels[i]
        else:
            tile, color, label = self.tiles[i // 4], i % 4, self.labels[i // 4]
        crop = tile[None] * self.rgb[color][:, None, None] * 2.0 - 1.0
        return {"images": crop, "labels": label, "colors": torch.tensor(color)}


def _shift(tile: Tensor, dy: int, dx: int) -> Tensor:
    """Shift a 2-D tile by (dy, dx) pixels, filling with black."""
    out = torch.zeros_like(tile)
    h, w = tile.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = tile[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


class QuadrantCropDataModule(L.LightningDataModule):
    """Crops for training (train source) and measuring (test source) the classifier.

    Args:
        source: "mnist5k", "mnist" or "fashion_mnist" (see
            :func:`vqzoo.experiments.te.quadrants.load_source_splits`).
        root, download, source_split_seed: where and how to load the source.
        canvas_size: S of the quadrant images to be judged; crops are S/2.
        batch_size, num_workers: loader settings.
        max_shift, min_gain: training augmentation (see the module docstring).
    """

    def __init__(
        self,
        source: SourceName = "mnist5k",
        root: str | None = None,
        download: bool = False,
        source_split_seed: int = 0,
        canvas_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 0,
        max_shift: int = 1,
        min_gain: float = 0.6,
    ) -> None:
        super().__init__()
        if canvas_size % 2 or canvas_size < 8:
            raise ValueError(f"canvas_size must be an even integer >= 8; got {canvas_size}")
        self.save_hyperparameters()
        self.train_set: QuadrantCropDataset | None = None
        self.eval_set: QuadrantCropDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        src = load_source_splits(hp.source, hp.root, hp.download, hp.source_split_seed)
        q = hp.canvas_size // 2
        self.train_set = QuadrantCropDataset(
            prepare_tiles(src.train_images, q), src.train_labels, True, hp.max_shift, hp.min_gain
        )
        self.eval_set = QuadrantCropDataset(prepare_tiles(src.test_images, q), src.test_labels, False)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=shuffle, num_workers=hp.num_workers,
                          persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.eval_set, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ------------------------------------------------------------------ evaluation
def crop_quadrants(images: Tensor, positions: Tensor) -> Tensor:
    """Crop quadrant ``positions[i]`` (UL, UR, LL, LR = 0..3) of ``images[i]``.

    ``images`` (N, 3, S, S), ``positions`` (N,) int; returns (N, 3, S/2, S/2).
    """
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] % 2:
        raise ValueError(f"expected square RGB images (N, 3, S, S) with even S; got {tuple(images.shape)}")
    positions = torch.as_tensor(positions, dtype=torch.int64, device=images.device)
    if positions.shape != (images.shape[0],) or (positions.numel() and (positions.min() < 0 or positions.max() > 3)):
        raise ValueError(f"positions must be ({images.shape[0]},) with values 0..3; got {positions}")
    q = images.shape[2] // 2
    quads = images.unfold(2, q, q).unfold(3, q, q)  # (N, 3, 2, 2, q, q)
    quads = quads.permute(0, 2, 3, 1, 4, 5).reshape(images.shape[0], 4, 3, q, q)
    return quads[torch.arange(images.shape[0], device=images.device), positions]


@torch.no_grad()
def classify_crops(
    classifier: nn.Module,
    crops: Tensor,
    empty_threshold: float = 0.25,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Predicted (color, label) of each crop, -1 for crops judged empty.

    ``crops`` (N, 3, q, q) in [-1, 1]. A crop is empty when its brightest
    value, on the [0, 1] scale, is below ``empty_threshold``. The classifier
    runs in eval mode on its own device; its training mode is restored.
    """
    if crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"expected crops (N, 3, q, q); got {tuple(crops.shape)}")
    if torch.isnan(crops).any():
        raise ValueError("crops contain NaN")
    params = list(classifier.parameters())
    device = params[0].device if params else crops.device
    size = getattr(classifier, "crop_size", crops.shape[-1])
    was_training = classifier.training
    classifier.eval()
    colors, labels = [], []
    try:
        for start in range(0, crops.shape[0], batch_size):
            x = crops[start : start + batch_size].to(device=device, dtype=torch.float32)
            if x.shape[-1] != size:
                mode = "area" if x.shape[-1] > size else "bilinear"
                x = F.interpolate(x, size=(size, size), mode=mode)
            color_logits, label_logits = classifier(x)
            colors.append(color_logits.argmax(1).cpu())
            labels.append(label_logits.argmax(1).cpu())
    finally:
        classifier.train(was_training)
    color = torch.cat(colors) if colors else torch.zeros(0, dtype=torch.int64)
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    empty = ((crops.detach().float().cpu().amax(dim=(1, 2, 3)) + 1.0) / 2.0) < empty_threshold
    color[empty] = -1
    label[empty] = -1
    return color, label


def _group_means(groups: dict[int, dict[str, list[float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    totals: dict[str, list[float]] = {}
    for k in sorted(groups):
        g = groups[k]
        out[f"Quad{k}/images"] = float(g.pop("images")[0])
        for name, values in g.items():
            out[f"Quad{k}/{name}"] = float(np.mean(values))
            totals.setdefault(name, []).extend(values)
    for name, values in totals.items():
        out[f"all/{name}"] = float(np.mean(values))
    return out


def text_to_image_accuracy(
    images: Tensor,
    captions: Sequence[str],
    classifier: nn.Module,
    empty_threshold: float = 0.25,
    batch_size: int = 256,
) -> dict[str, float]:
    """Digit and color accuracy of generated images against their captions (table 1, T->I).

    Args:
        images: ``(N, 3, S, S)`` generated images in [-1, 1], one per caption.
        captions: the N test captions they were generated from.
        classifier: maps crops to ``(color_logits, label_logits)``, e.g. a
            :class:`QuadrantClassifier`.
        empty_threshold, batch_size: see :func:`classify_crops`.

    Returns:
        ``QuadK/digit``, ``QuadK/color``, ``QuadK/both`` (mean over the objects
        of images whose caption names K objects), ``QuadK/images`` (how many
        such images) for each K present, and ``all/...`` over all objects.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, S, S); got {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise ValueError(f"need one caption per image; got {len(captions)} captions, {images.shape[0]} images")
    layouts = [parse_caption(c) for c in captions]
    image_ids = torch.tensor([i for i, lay in enumerate(layouts) for _ in lay], dtype=torch.int64)
    positions = torch.tensor([p.position for lay in layouts for p in lay], dtype=torch.int64)
    if image_ids.numel() == 0:
        raise ValueError("no objects to evaluate")
    crops = crop_quadrants(images[image_ids.to(images.device)], positions)
    pred_color, pred_label = classify_crops(classifier, crops, empty_threshold, batch_size)
    groups: dict[int, dict[str, list[float]]] = {}
    n = 0
    for lay in layouts:
        g = groups.setdefault(len(lay), {"images": [0], "digit": [], "color": [], "both": []})
        g["images"][0] += 1
        for p in lay:
            digit_ok = float(pred_label[n] == p.label)
            color_ok = float(pred_color[n] == p.color)
            g["digit"].append(digit_ok)
            g["color"].append(color_ok)
            g["both"].append(digit_ok * color_ok)
            n += 1
    return _group_means(groups)


def image_to_text_accuracy(
    generated_captions: Sequence[str] | Tensor,
    layouts: Sequence[Layout] | Tensor,
) -> dict[str, float]:
    """Digit and color accuracy of generated captions against the true layouts (table 1, I->T).

    Args:
        generated_captions: N caption strings, or an ``(N, L)`` token tensor
            decoded with the shared vocabulary.
        layouts: the N true layouts, as :data:`Layout` tuples or the
            dataset's ``(N, 4, 2)`` layout tensor.

    Returns:
        ``QuadK/digit`` and ``QuadK/color`` (mean over the true objects of
        K-object images: the first generated clause about the same quadrant
        names the right label / color), ``QuadK/exact`` (fraction of those
        images whose caption parses to exactly the true layout),
        ``QuadK/images``, and ``all/...``.
    """
    if isinstance(generated_captions, Tensor):
        generated_captions = VOCAB.decode_batch(generated_captions)
    if isinstance(layouts, Tensor):
        if layouts.dim() != 3 or layouts.shape[1:] != (4, 2):
            raise ValueError(f"layout tensors have shape (N, 4, 2); got {tuple(layouts.shape)}")
        layouts = [layout_from_tensor(t) for t in layouts]
    else:
        layouts = [canonical_layout(lay) for lay in layouts]
    if len(generated_captions) != len(layouts):
        raise ValueError(
            f"need one caption per layout; got {len(generated_captions)} captions, {len(layouts)} layouts"
        )
    groups: dict[int, dict[str, list[float]]] = {}
    for text, truth in zip(generated_captions, layouts):
        if not truth:
            raise ValueError("a true layout has no objects")
        said: dict[int, Any] = {}
        for clause in parse_clauses(text):
            if clause.position is not None and clause.position not in said:
                said[clause.position] = clause
        try:
            exact = float(parse_caption(text) == truth)
        except ValueError:
            exact = 0.0
        g = groups.setdefault(len(truth), {"images": [0], "digit": [], "color": [], "exact": []})
        g["images"][0] += 1
        g["exact"].append(exact)
        for p in truth:
            clause = said.get(p.position)
            g["digit"].append(float(clause is not None and clause.label == p.label))
            g["color"].append(float(clause is not None and clause.color == p.color))
    return _group_means(groups)
