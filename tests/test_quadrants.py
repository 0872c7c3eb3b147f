"""Quadrant image-caption data (TE-VQGAN section 4): layouts, held-out pairs, captions, pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqzoo.experiments.te.captions import (
    COLORS,
    DIGIT_WORDS,
    FASHION_ITEMS,
    LONGEST_CAPTION_WORDS,
    MAX_CAPTION_LENGTH,
    SHORT_CAPTION_LENGTH,
    VOCAB,
    VOCAB_SIZE,
    CaptionVocabulary,
    ParsedClause,
    Placement,
    caption_length,
    longest_caption_words,
    parse_caption,
    parse_clauses,
    tokenize_text,
    write_caption,
)
from vqzoo.experiments.te.quadrants import (
    COLOR_RGB,
    HeldOutPairs,
    QuadrantsDataModule,
    QuadrantsDataset,
    layout_from_tensor,
    layout_to_tensor,
    load_source_splits,
    prepare_tiles,
    quadrant_slices,
)
from vqzoo.data.batch import as_batch

Q = 16  # quadrant side at the reduced scale (S = 32)


@pytest.fixture(scope="module")
def sources():
    return load_source_splits("mnist5k")


@pytest.fixture(scope="module")
def tiles(sources):
    return {
        "train": (prepare_tiles(sources.train_images, Q), sources.train_labels),
        "test": (prepare_tiles(sources.test_images, Q), sources.test_labels),
    }


def make(tiles, split, size=300, seed=0, heldout=None, **kw):
    t, y = tiles["test" if split != "train" else "train"]
    return QuadrantsDataset(t, y, split, size, heldout or HeldOutPairs.from_seed(None), seed=seed, **kw)


# ------------------------------------------------------------ held-out pairs
def test_canonical_heldout_pairs_match_paper_example():
    h = HeldOutPairs.from_seed(None)
    assert h.pairs[0] == (COLORS.index("white"), 0)  # white 0 on the upper left
    assert len(set(h.pairs)) == 10
    assert sorted(len(h.labels_at(p)) for p in range(4)) == [2, 2, 3, 3]
    # The rule: label d at position d mod 4, color (d + d div 4) mod 4.
    assert h.pairs == tuple(((d + d // 4) % 4, d % 4) for d in range(10))


def test_seeded_heldout_pairs_are_deterministic_and_valid():
    a, b, c = HeldOutPairs.from_seed(7), HeldOutPairs.from_seed(7), HeldOutPairs.from_seed(8)
    assert a == b and a != c
    for h in (a, c):
        assert len(set(h.pairs)) == 10
        assert h.test_positions == (0, 1, 2, 3)
    named = HeldOutPairs.from_names([(COLORS[c], ("UL", "UR", "LL", "LR")[p]) for c, p in a.pairs])
    assert named == a
    with pytest.raises(ValueError):
        HeldOutPairs.from_names([("purple", "UL")] * 10)
    with pytest.raises(ValueError):
        HeldOutPairs([(0, 0)] * 9)


@pytest.mark.parametrize("heldout_seed", [None, 3])
def test_heldout_pairs_never_in_train_or_val_always_in_test(tiles, heldout_seed):
    h = HeldOutPairs.from_seed(heldout_seed)
    for split in ("train", "val"):
        ds = make(tiles, split, size=3000, heldout=h, with_captions=False)
        placements = [p for i in range(len(ds)) for p in ds.layout(i)]
        assert not any(h.is_held_out(p.label, p.color, p.position) for p in placements)
        # Every label still occurs at every position, only not in its held-out color.
        assert {(p.label, p.position) for p in placements} == {(d, q) for d in range(10) for q in range(4)}
    test = make(tiles, "test", size=600, heldout=h, with_captions=False)
    layouts = [test.layout(i) for i in range(len(test))]
    placements = [p for lay in layouts for p in lay]
    assert all(h.is_held_out(p.label, p.color, p.position) for p in placements)
    assert {(p.color, p.position) for p in placements} == set(h.pairs)  # all ten pairs occur
    assert {len(lay) for lay in layouts} == {1, 2, 3, 4}
    assert all(len({p.label for p in lay}) == len(lay) for lay in layouts)


def test_test_split_rejects_impossible_object_counts(tiles):
    crowded = HeldOutPairs([(d % 4, 0) for d in range(10)])  # every pair on the upper left
    make(tiles, "test", heldout=crowded, max_objects=1)
    with pytest.raises(ValueError, match="distinct"):
        make(tiles, "test", heldout=crowded, max_objects=2)


# ------------------------------------------------------------------ captions
def test_vocabulary_and_max_length():
    assert VOCAB_SIZE == len(VOCAB.words) == len(set(VOCAB.words)) == 53
    assert (VOCAB.pad_id, VOCAB.bos_id, VOCAB.eos_id) == (0, 1, 2)
    # Longest clause "there is a C N on the V H" (9 words), 4 clauses, 3 joins ", and", final ".".
    assert LONGEST_CAPTION_WORDS == 4 * 9 + 3 * 2 + 1 == 43
    assert MAX_CAPTION_LENGTH >= LONGEST_CAPTION_WORDS + 2


def test_paper_style_captions_parse():
    assert parse_caption("the lower right is blue nine, and the white two is on the upper left.") == (
        Placement(0, 0, 2), Placement(3, 3, 9),
    )
    assert parse_caption("the upper left is red 3") == (Placement(0, 1, 3),)
    assert parse_caption("a blue seven is on the lower right") == (Placement(3, 3, 7),)
    assert parse_caption("the white 2 is on the top left") == (Placement(0, 0, 2),)
    with pytest.raises(ValueError):
        parse_caption("the upper left is red")  # no digit
    with pytest.raises(ValueError):
        parse_caption("a red 1 on the top left and a blue 2 on the upper left")  # same quadrant twice


@pytest.mark.parametrize("kind", ["digits", "fashion"])
def test_every_written_caption_parses_back(kind):
    rng = np.random.default_rng(0)
    longest = 0
    for _ in range(3000):
        n = int(rng.integers(1, 5))
        layout = tuple(
            sorted(Placement(int(p), int(rng.integers(4)), int(rng.integers(10))) for p in rng.permutation(4)[:n])
        )
        caption = write_caption(layout, kind, rng)
        assert parse_caption(caption) == layout
        tokens = VOCAB.encode(caption)
        assert tokens.shape == (MAX_CAPTION_LENGTH,) and tokens.dtype == torch.int64
        assert tokens[0] == VOCAB.bos_id
        assert VOCAB.decode(tokens) == caption
        longest = max(longest, int((tokens != VOCAB.pad_id).sum()) - 2)
        words = caption.replace(",", " ").replace(".", " ").split()
        if kind == "fashion":
            assert not set(words) & set(DIGIT_WORDS)
    assert 30 < longest <= LONGEST_CAPTION_WORDS


@pytest.mark.parametrize("kind", ["digits", "fashion"])
def test_short_captions_are_one_clause_per_quadrant_in_order(kind):
    rng = np.random.default_rng(0)
    layout = (Placement(0, 1, 3), Placement(3, 3, 5))
    expected = {"digits": "upper left red 3, lower right blue 5.",
                "fashion": "upper left red dress, lower right blue sandal."}[kind]
    state = rng.bit_generator.state
    assert write_caption(layout, kind, rng, "short") == expected
    assert rng.bit_generator.state == state  # draws nothing: captions on or off leave the images alone
    vocab = CaptionVocabulary(SHORT_CAPTION_LENGTH)
    full = tuple(Placement(p, (p + 1) % 4, 9 - p) for p in range(4))
    longest = write_caption(full, kind, rng, "short")
    assert longest == ("upper left red 9, upper right green 8, lower left blue 7, lower right white 6."
                       if kind == "digits" else
                       "upper left red ankle-boot, upper right green bag, lower left blue sneaker, lower right white shirt.")
    assert len(tokenize_text(longest)) == longest_caption_words("short") == 20
    assert caption_length("short") == SHORT_CAPTION_LENGTH == 24 and caption_length("varied") == MAX_CAPTION_LENGTH
    for _ in range(500):
        n = int(rng.integers(1, 5))
        lay = tuple(sorted(Placement(int(p), int(rng.integers(4)), int(rng.integers(10)))
                           for p in rng.permutation(4)[:n]))
        caption = write_caption(lay, kind, rng, "short")
        assert parse_caption(caption) == lay
        ids = vocab.encode(caption)
        assert ids.shape == (24,) and vocab.decode(ids) == caption == VOCAB.decode(ids)


def test_caption_style_and_length_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="caption style"):
        write_caption((Placement(0, 0, 0),), "digits", rng, "terse")
    with pytest.raises(ValueError, match="longest short caption"):
        CaptionVocabulary(21)
    varied = write_caption(tuple(Placement(p, 0, 7) for p in range(4)), "digits", rng)
    with pytest.raises(ValueError, match="fit in max_length 24"):
        CaptionVocabulary(24).encode(varied)  # a 4-clause varied caption has at least 28 words
    with pytest.raises(ValueError, match="text_length 24 cannot hold the longest varied caption"):
        QuadrantsDataModule(canvas_size=32, with_captions=True, text_length=24)
    with pytest.raises(ValueError, match="caption style"):
        QuadrantsDataModule(canvas_size=32, with_captions=True, caption_style="terse")


def test_captions_vary_syntactically():
    rng = np.random.default_rng(1)
    layout = (Placement(0, 0, 3), Placement(3, 2, 8))
    captions = {write_caption(layout, "digits", rng) for _ in range(200)}
    assert len(captions) > 100
    text = " ".join(captions)
    for word in ("upper", "top", "lower", "bottom", "three", "3", " and ", ", "):
        assert word in text


def test_lenient_parser_and_decode_of_sampler_output():
    clauses = parse_clauses("the top left is a red, and bottom right blue nine . . junk words")
    assert clauses == [ParsedClause(0, 1, None), ParsedClause(3, 3, 9)]
    ids = VOCAB.encode("a red 1 is on the top left.")
    noisy = torch.cat([ids[:3], torch.tensor([VOCAB.pad_id, VOCAB.bos_id]), ids[3:]])
    assert VOCAB.decode(noisy) == "a red 1 is on the top left."
    with pytest.raises(ValueError, match="outside the caption vocabulary"):
        VOCAB.encode("a purple 1 is on the top left")
    with pytest.raises(ValueError):
        VOCAB.decode(torch.tensor([VOCAB_SIZE]))


def test_layout_tensor_roundtrip():
    layout = (Placement(1, 2, 7), Placement(2, 0, 0))
    t = layout_to_tensor(layout)
    assert t.tolist() == [[-1, -1], [2, 7], [0, 0], [-1, -1]]
    assert layout_from_tensor(t) == layout


# -------------------------------------------------------------------- pixels
def test_prepare_tiles_pads_then_box_averages():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    padded = np.zeros((3, 32, 32), np.float64)
    padded[:, 2:30, 2:30] = digits
    np.testing.assert_array_equal(prepare_tiles(digits, 32), padded.astype(np.uint8))
    expected = padded.reshape(3, 16, 2, 16, 2).mean(axis=(2, 4))
    got = prepare_tiles(digits, 16).astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="28, 28"):
        prepare_tiles(digits[:, :20], 16)


def test_each_object_lands_exactly_in_its_quadrant(tiles):
    for split in ("train", "test"):
        ds = make(tiles, split, size=50)
        pool = ds.tiles
        for i in range(len(ds)):
            layout, tile_ids, _ = ds.sample(i)
            image = ds[i]["images"].numpy().astype(np.float64)
            expected = -np.ones((3, 32, 32))
            for p, tid in zip(layout, tile_ids):
                assert ds.labels[tid] == p.label
                r, c = divmod(p.position, 2)
                tile = pool[tid].astype(np.float64) / 255.0
                expected[:, r * Q : (r + 1) * Q, c * Q : (c + 1) * Q] = tile[None] * COLOR_RGB[p.color][:, None, None] * 2 - 1
            np.testing.assert_allclose(image, expected, atol=1e-6)


def test_full_tiles_light_exactly_their_quadrant():
    tiles = np.full((10, Q, Q), 255, np.uint8)
    ds = QuadrantsDataset(tiles, np.arange(10), "train", 40, HeldOutPairs.from_seed(None), with_captions=True)
    for i in range(len(ds)):
        item = ds[i]
        lit = (item["images"] > -1).any(0)
        expected = torch.zeros(32, 32, dtype=torch.bool)
        for p in layout_from_tensor(item["layout"]):
            rows, cols = quadrant_slices(p.position, 32)
            expected[rows, cols] = True
            block = item["images"][:, rows, cols]
            assert torch.equal(block, torch.from_numpy(COLOR_RGB[p.color] * 2 - 1)[:, None, None].expand(3, Q, Q))
        assert torch.equal(lit, expected)
        assert int(item["num_objects"]) == int(lit.sum()) // (Q * Q)


def test_generation_is_deterministic_per_seed(tiles):
    a, b = make(tiles, "train", seed=5), make(tiles, "train", seed=5)
    c = make(tiles, "train", seed=6)
    images_only = make(tiles, "train", seed=5, with_captions=False)
    for i in (0, 17, 299):
        x, y = a[i], b[i]
        assert torch.equal(x["images"], y["images"]) and x["captions"] == y["captions"]
        assert torch.equal(x["text"], y["text"]) and torch.equal(x["layout"], y["layout"])
        assert torch.equal(images_only[i]["images"], x["images"])
        assert set(images_only[i]) == {"images"}
    assert any(a[i]["captions"] != c[i]["captions"] for i in range(10))
    assert [a.layout(i) for i in range(20)] != [make(tiles, "val", seed=5).layout(i) for i in range(20)]
    with pytest.raises(IndexError):
        a[300]


def test_dataset_item_captions_match_layout(tiles):
    ds = make(tiles, "test", size=100)
    for i in range(len(ds)):
        item = ds[i]
        assert parse_caption(item["captions"]) == layout_from_tensor(item["layout"])
        assert VOCAB.decode(item["text"]) == item["captions"]


def test_source_splits_are_disjoint(sources):
    train = {bytes(x) for x in sources.train_images}
    test = {bytes(x) for x in sources.test_images}
    assert len(train) + len(test) == 5000 and not train & test
    assert np.bincount(sources.test_labels).tolist() == [100] * 10


def test_datamodule_batches():
    dm = QuadrantsDataModule(canvas_size=32, train_size=64, val_size=16, test_size=16,
                             with_captions=True, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 32, 32) and batch["text"].shape == (8, MAX_CAPTION_LENGTH)
    assert batch["layout"].shape == (8, 4, 2) and len(batch["captions"]) == 8
    assert dm.vocab_size == VOCAB_SIZE
    checked = as_batch(batch)  # the one batch contract
    assert checked["images"] is batch["images"] and checked["text"] is batch["text"] and "labels" not in checked
    test_batch = next(iter(dm.test_dataloader()))
    for lay in test_batch["layout"]:
        for p in layout_from_tensor(lay):
            assert dm.heldout.is_held_out(p.label, p.color, p.position)
    pairs = [("white", "UL"), ("red", "UR"), ("green", "LL"), ("blue", "LR")] * 2 + [("red", "UL"), ("blue", "UR")]
    stage1 = QuadrantsDataModule(canvas_size=32, train_size=8, batch_size=4, heldout_pairs=pairs)
    assert stage1.heldout.pairs[9] == (3, 1)
    assert set(next(iter(stage1.train_dataloader()))) == {"images"}
    crowded = QuadrantsDataModule(canvas_size=32, heldout_pairs=[("white", "UL")] * 5 + [("red", "LR")] * 5)
    with pytest.raises(ValueError, match="distinct"):
        crowded.setup()
    with pytest.raises(ValueError, match="canvas_size"):
        QuadrantsDataModule(canvas_size=31)


def test_short_caption_datamodule_draws_the_same_images():
    kw = dict(canvas_size=32, train_size=32, val_size=8, test_size=8, with_captions=True, batch_size=8)
    varied, short = QuadrantsDataModule(**kw), QuadrantsDataModule(caption_style="short", **kw)
    assert short.vocabulary.max_length == SHORT_CAPTION_LENGTH and varied.vocabulary is VOCAB
    for split in ("train", "test"):
        a = next(iter(varied._loader(split, shuffle=False)))
        b = next(iter(short._loader(split, shuffle=False)))
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["layout"], b["layout"])
        assert b["text"].shape == (8, SHORT_CAPTION_LENGTH)
        assert [parse_caption(c) for c in a["captions"]] == [parse_caption(c) for c in b["captions"]]
        assert all(c != d for c, d in zip(a["captions"], b["captions"]))


def test_fashion_captions_name_items():
    src = load_source_splits("fashion_mnist")
    ds = QuadrantsDataset(prepare_tiles(src.test_images[:500], Q), src.test_labels[:500], "train", 50,
                          HeldOutPairs.from_seed(None), kind="fashion")
    for i in range(len(ds)):
        item = ds[i]
        layout = layout_from_tensor(item["layout"])
        assert parse_caption(item["captions"]) == layout
        for p in layout:
            assert FASHION_ITEMS[p.label] in item["captions"]
