"""Captions for the quadrant image-caption data of the TE-VQGAN paper (section 4).

Three pieces live here, and they are kept in one file because they must agree
word for word:

* a closed word vocabulary (:class:`CaptionVocabulary`) with PAD/BOS/EOS and a
  fixed maximum length, shared by the digit and the Fashion-MNIST variants;
* a caption writer (:func:`write_caption`) that describes a layout, a set of
  (position, color, label) placements, with syntactic variation;
* a rule-based parser (:func:`parse_caption`, :func:`parse_clauses`) that turns
  any caption the writer can produce back into exactly its layout, and that
  degrades gracefully on the imperfect captions a generator writes.

Decisions where the paper is silent (it shows one example caption and says
"syntactic variations"; the authors' templates were never published):

* Positions are numbered UL=0, UR=1, LL=2, LR=3 (reading order, as in the
  reference parser); colors white=0, red=1, green=2, blue=3 (as in the
  reference parser and classifier).
* One clause per object, from eight templates, for example
  "the upper left is red 3", "a blue seven is on the lower right",
  "the white 2 is on the top left", "there is a green 5 on the bottom right".
  "upper"/"top" and "lower"/"bottom" are synonyms; digits are written as a
  numeral or as a word with equal probability; Fashion-MNIST items by their
  class name (one token each: "t-shirt", "ankle-boot", ...; "top" is a
  position word, so the "T-shirt/top" class is only ever called "t-shirt").
* Clauses are listed in random order and joined by ", ", " and " or ", and";
  the caption ends with ".".
* One vocabulary serves both source kinds (digits and fashion items), so a
  prior's text vocabulary size is a single constant, :data:`VOCAB_SIZE` (53);
  the ten unused words of the other kind cost nothing.
* The longest caption the writer can produce has 43 words (four 9-word
  clauses, three 2-word joins, the final "."), 45 tokens with BOS and EOS; the
  fixed length :data:`MAX_CAPTION_LENGTH` is 48 (the next multiple of 8).

A second caption style, ``"short"``, exists for stage-2 priors trained on a CPU
(configs/experiments/te_small_stage2_data_short.yaml): one fixed four-word
clause per object, "upper left red 3", listed in quadrant reading order and
joined by ",", so "upper left red 3, lower right blue 5.". It carries the same
layout in at most 20 words (22 tokens with BOS and EOS, fixed length
:data:`SHORT_CAPTION_LENGTH` 24) and takes no syntactic choice from the
generator; the paper's captions are the ``"varied"`` style above. The parser
reads both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

__all__ = [
    "CAPTION_STYLES",
    "COLORS",
    "DIGIT_NUMERALS",
    "DIGIT_WORDS",
    "FASHION_ITEMS",
    "LONGEST_CAPTION_WORDS",
    "MAX_CAPTION_LENGTH",
    "POSITIONS",
    "POSITION_KEYS",
    "SHORT_CAPTION_LENGTH",
    "VOCAB",
    "VOCAB_SIZE",
    "CaptionStyle",
    "CaptionVocabulary",
    "Layout",
    "ParsedClause",
    "Placement",
    "SourceKind",
    "canonical_layout",
    "caption_length",
    "longest_caption_words",
    "parse_caption",
    "parse_clauses",
    "tokenize_text",
    "write_caption",
]

SourceKind = Literal["digits", "fashion"]
#: "varied": the paper's captions (eight templates, random clause order); "short": one fixed
#: four-word clause per object in quadrant order (see the module docstring).
CaptionStyle = Literal["varied", "short"]
CAPTION_STYLES: tuple[str, ...] = ("varied", "short")

#: Quadrant names, indexed by position id (UL, UR, LL, LR).
POSITIONS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right")
#: Short position names used in metric keys and in the paper's figure.
POSITION_KEYS: tuple[str, ...] = ("UL", "UR", "LL", "LR")
#: Color names, indexed by color id.
COLORS: tuple[str, ...] = ("white", "red", "green", "blue")
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
DIGIT_NUMERALS: tuple[str, ...] = tuple(str(d) for d in range(10))
#: Fashion-MNIST class names as caption words, indexed by class id.
FASHION_ITEMS: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)

_VERTICAL = {"upper": 0, "top": 0, "lower": 1, "bottom": 1}
_VERTICAL_WORDS = (("upper", "top"), ("lower", "bottom"))
_HORIZONTAL = {"left": 0, "right": 1}
_CLAUSE_BREAKS = frozenset({",", "and", "."})

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_FUNCTION_WORDS = ("the", "a", "is", "on", "in", "there", "has", "and", ",", ".")
_WORDS: tuple[str, ...] = (
    (PAD, BOS, EOS)
    + _FUNCTION_WORDS
    + ("upper", "top", "lower", "bottom", "left", "right")
    + COLORS
    + DIGIT_NUMERALS
    + DIGIT_WORDS
    + FASHION_ITEMS
)

# Clause templates. "P" expands to two words (vertical, horizontal), "C" to a
# color, "N" to the object word. Every template names each slot exactly once
# and contains none of the clause breaks, which is what makes parsing exact.
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("the", "P", "is", "C", "N"),
    ("the", "P", "is", "a", "C", "N"),
    ("a", "C", "N", "is", "on", "the", "P"),
    ("the", "C", "N", "is", "on", "the", "P"),
    ("there", "is", "a", "C", "N", "on", "the", "P"),
    ("on", "the", "P", "is", "a", "C", "N"),
    ("the", "P", "has", "a", "C", "N"),
    ("a", "C", "N", "is", "in", "the", "P"),
)
_JOINS: tuple[tuple[str, ...], ...] = ((",",), ("and",), (",", "and"))

#: Longest caption (in words, without BOS/EOS) the writer can produce.
LONGEST_CAPTION_WORDS: int = (
    4 * (max(len(t) for t in _TEMPLATES) + 1)  # "P" is two words
    + 3 * max(len(j) for j in _JOINS)
    + 1  # final "."
)
MAX_CAPTION_LENGTH: int = 48
# "short" style: four words per clause ("upper left red 3"), "," between clauses, final ".".
_SHORT_LONGEST_WORDS: int = 4 * 4 + 3 + 1
#: Fixed caption length (tokens) of the "short" style: 22 with BOS/EOS, rounded up to a multiple of 8.
SHORT_CAPTION_LENGTH: int = 24


def _check_style(style: str) -> None:
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {list(CAPTION_STYLES)}; got {style!r}")


def longest_caption_words(style: CaptionStyle = "varied") -> int:
    """Most words (without BOS/EOS) a caption of ``style`` can have: 43 varied, 20 short."""
    _check_style(style)
    return LONGEST_CAPTION_WORDS if style == "varied" else _SHORT_LONGEST_WORDS


def caption_length(style: CaptionStyle = "varied") -> int:
    """The fixed token length used for ``style``: 48 varied, 24 short."""
    _check_style(style)
    return MAX_CAPTION_LENGTH if style == "varied" else SHORT_CAPTION_LENGTH


class Placement(NamedTuple):
    """One object of a layout: quadrant id, color id, class label (0-9)."""

    position: int
    color: int
    label: int


#: A layout: placements with distinct positions, sorted by position.
Layout = tuple[Placement, ...]


class ParsedClause(NamedTuple):
    """What the parser read from one clause; ``None`` marks a missing slot."""

    position: int | None
    color: int | None
    label: int | None


def canonical_layout(placements: Sequence[Placement | tuple[int, int, int]]) -> Layout:
    """Validate placements and return them as a position-sorted :data:`Layout`."""
    out = []
    for p in placements:
        if len(p) != 3:
            raise ValueError(f"a placement is (position, color, label); got {p!r}")
        pos, color, label = (int(v) for v in p)
        if not 0 <= pos < 4 or not 0 <= color < 4 or not 0 <= label < 10:
            raise ValueError(
                f"placement (position, color, label) must lie in [0,4)x[0,4)x[0,10); got {p!r}"
            )
        out.append(Placement(pos, color, label))
    positions = [p.position for p in out]
    if len(set(positions)) != len(positions):
        raise ValueError(f"each quadrant holds at most one object; got positions {positions}")
    return tuple(sorted(out))


def _object_word(label: int, kind: SourceKind, rng: np.random.Generator) -> str:
    if kind == "fashion":
        return FASHION_ITEMS[label]
    if kind != "digits":
        raise ValueError(f"kind must be 'digits' or 'fashion'; got {kind!r}")
    return DIGIT_NUMERALS[label] if rng.random() < 0.5 else DIGIT_WORDS[label]


def write_caption(
    layout: Sequence[Placement | tuple[int, int, int]],
    kind: SourceKind,
    rng: np.random.Generator,
    style: CaptionStyle = "varied",
) -> str:
    """Describe ``layout`` in English, drawing every syntactic choice from ``rng``.

    The same layout and generator state always give the same caption, so the
    dataset stays deterministic per index. The ``"short"`` style draws nothing
    from ``rng``: its clauses are "upper left red 3" in quadrant order, digits
    as numerals.
    """
    _check_style(style)
    placements = list(canonical_layout(layout))
    if not placements:
        raise ValueError("a caption needs at least one placement")
    if style == "short":
        if kind not in ("digits", "fashion"):
            raise ValueError(f"kind must be 'digits' or 'fashion'; got {kind!r}")
        names = DIGIT_NUMERALS if kind == "digits" else FASHION_ITEMS
        short: list[str] = []
        for n, (pos, color, label) in enumerate(placements):
            if n > 0:
                short.append(",")
            short.extend((_VERTICAL_WORDS[pos // 2][0], ("left", "right")[pos % 2], COLORS[color], names[label]))
        short.append(".")
        return _join_words(short)
    order = rng.permutation(len(placements))
    words: list[str] = []
    for n, i in enumerate(order):
        pos, color, label = placements[i]
        if n > 0:
            words.extend(_JOINS[rng.integers(len(_JOINS))])
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        vertical = _VERTICAL_WORDS[pos // 2][rng.integers(2)]
        horizontal = ("left", "right")[pos % 2]
        for slot in template:
            if slot == "P":
                words.extend((vertical, horizontal))
            elif slot == "C":
                words.append(COLORS[color])
            elif slot == "N":
                words.append(_object_word(label, kind, rng))
            else:
                words.append(slot)
    words.append(".")
    return _join_words(words)


def _join_words(words: Sequence[str]) -> str:
    text = ""
    for w in words:
        if w in (",", ".") or not text:
            text += w
        else:
            text += " " + w
    return text


_TOKEN_RE = re.compile(r"[a-z0-9\-]+|[,.]")


def tokenize_text(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and the punctuation "," and "."."""
    if not isinstance(text, str):
        raise ValueError(f"expected a caption string; got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


_NUMBER_WORDS = {w: i for i, w in enumerate(DIGIT_NUMERALS)}
_NUMBER_WORDS.update({w: i for i, w in enumerate(DIGIT_WORDS)})
_NUMBER_WORDS.update({w: i for i, w in enumerate(FASHION_ITEMS)})
_COLOR_WORDS = {w: i for i, w in enumerate(COLORS)}


def _parse_clause(words: Sequence[str]) -> ParsedClause:
    position = color = label = None
    for i, w in enumerate(words):
        if position is None and w in _VERTICAL and i + 1 < len(words) and words[i + 1] in _HORIZONTAL:
            position = 2 * _VERTICAL[w] + _HORIZONTAL[words[i + 1]]
        if color is None and w in _COLOR_WORDS:
            color = _COLOR_WORDS[w]
        if label is None and w in _NUMBER_WORDS:
            label = _NUMBER_WORDS[w]
    return ParsedClause(position, color, label)


def parse_clauses(text: str) -> list[ParsedClause]:
    """Lenient parse: one :class:`ParsedClause` per non-empty clause.

    Clauses are split at ",", "and" and "."; inside a clause the first
    position phrase (upper/top/lower/bottom followed by left/right), the first
    color and the first number word, numeral or item name are taken, in the
    spirit of the reference parser. Words outside the vocabulary are ignored,
    so a generator's imperfect caption still yields whatever it did say.
    """
    clauses: list[ParsedClause] = []
    current: list[str] = []
    for w in tokenize_text(text) + ["."]:
        if w in _CLAUSE_BREAKS:
            if current:
                parsed = _parse_clause(current)
                if parsed != ParsedClause(None, None, None):
                    clauses.append(parsed)
                current = []
        else:
            current.append(w)
    return clauses


def parse_caption(text: str) -> Layout:
    """Strict parse: the exact layout of a well-formed caption.

    Raises ``ValueError`` when a clause misses its position, color or object,
    or when two clauses name the same quadrant. Every caption produced by
    :func:`write_caption` parses back to its layout.
    """
    clauses = parse_clauses(text)
    if not clauses:
        raise ValueError(f"no object described in caption {text!r}")
    for c in clauses:
        if c.position is None or c.color is None or c.label is None:
            raise ValueError(f"incomplete clause {c} in caption {text!r}")
    return canonical_layout([(c.position, c.color, c.label) for c in clauses])


class CaptionVocabulary:
    """Closed word vocabulary with PAD=0, BOS=1, EOS=2 and a fixed length.

    ``encode`` gives ``[BOS, words..., EOS, PAD...]`` of length ``max_length``;
    ``decode`` stops at the first EOS and skips PAD and BOS wherever they
    appear, so it also reads what a sampler produced.
    """

    def __init__(self, max_length: int = MAX_CAPTION_LENGTH) -> None:
        # The short style's longest caption is the floor; a varied caption that does not fit
        # raises in encode, and QuadrantsDataModule checks the length against its style up front.
        if max_length < _SHORT_LONGEST_WORDS + 2:
            raise ValueError(
                f"max_length must fit the longest short caption ({_SHORT_LONGEST_WORDS} words + BOS/EOS"
                f" = {_SHORT_LONGEST_WORDS + 2}; {LONGEST_CAPTION_WORDS + 2} for the varied style);"
                f" got {max_length}"
            )
        self.max_length = max_length
        self.words: tuple[str, ...] = _WORDS
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.bos_id, self.eos_id = self.index[PAD], self.index[BOS], self.index[EOS]

    @property
    def size(self) -> int:
        return len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64, ``(max_length,)``) of ``text``; unknown words raise ``ValueError``."""
        words = tokenize_text(text)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise ValueError(f"words outside the caption vocabulary: {unknown} in {text!r}")
        if len(words) + 2 > self.max_length:
            raise ValueError(
                f"caption has {len(words)} words; at most {self.max_length - 2} fit in max_length"
                f" {self.max_length}"
            )
        ids = [self.bos_id] + [self.index[w] for w in words] + [self.eos_id]
        ids += [self.pad_id] * (self.max_length - len(ids))
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a 1-D id sequence (see the class docstring for BOS/EOS/PAD)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D id sequence; got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.size:
                raise ValueError(f"token id {i} outside the vocabulary of size {self.size}")
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.words[i])
        return _join_words(words)

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """Texts of a ``(B, L)`` id tensor."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"decode_batch expects a (B, L) tensor; got {getattr(ids, 'shape', ids)!r}")
        return [self.decode(row) for row in ids]


#: The shared vocabulary instance.
VOCAB = CaptionVocabulary()
#: Text vocabulary size a prior needs (PAD, BOS, EOS included).
VOCAB_SIZE: int = VOCAB.size
