"""Every reference in the code to a document resolves to a file (and a section) under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = [p for d in ("vqzoo", "tests", "benchmarks", "configs") for p in sorted((ROOT / d).rglob("*"))
           if p.suffix in (".py", ".yaml") and p.name != "test_docs.py"]


def _occurrences(pattern: str) -> list[tuple[str, re.Match]]:
    found = []
    for path in SCANNED:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(pattern, line):
                found.append((f"{path.relative_to(ROOT)}:{lineno}", m))
    return found


def test_the_docs_exist():
    for name in ("DESIGN.md", "pitfalls.md", "reference-implementations.md", "papers.md"):
        assert (DOCS / name).is_file(), name


def test_the_code_cites_docs_at_all():
    # guards the scan itself: if the patterns stopped matching, the tests below would pass vacuously
    assert len(_occurrences(r"docs/pitfalls\.md #\d+")) > 20
    assert len(_occurrences(r"docs/reference-implementations\.md")) > 20


def test_every_named_docs_file_exists():
    missing = [f"{where}: {m.group(0)}" for where, m in _occurrences(r"\bdocs/([\w./-]+\.md)")
               if not (DOCS / m.group(1)).is_file()]
    assert not missing, missing


def test_every_numbered_pitfall_exists():
    numbers = {int(n) for n in re.findall(r"^(\d+)\. ", (DOCS / "pitfalls.md").read_text(), re.M)}
    assert numbers == set(range(1, max(numbers) + 1))
    cited = _occurrences(r"docs/pitfalls\.md #(\d+)((?:, #\d+)*)")
    bad = []
    for where, m in cited:
        for n in re.findall(r"\d+", m.group(1) + m.group(2)):
            if int(n) not in numbers:
                bad.append(f"{where}: pitfall #{n}")
    assert not bad, bad


def test_every_cited_reference_section_exists():
    text = (DOCS / "reference-implementations.md").read_text()
    lettered = set(re.findall(r"^## ([A-Z])\. ", text, re.M))
    named = set(re.findall(r"^## (\w+)", text, re.M))
    assert {"A", "B", "C"} <= lettered and {"MaskGIT", "minGPT"} <= named
    bad = []
    for where, m in _occurrences(r"docs/reference-implementations\.md( §[A-Z](?:, §[A-Z])*| \"(\w+)\")?"):
        if m.group(2):
            ok = m.group(2) in named
        elif m.group(1):
            ok = set(re.findall(r"§([A-Z])", m.group(1))) <= lettered
        else:
            ok = True
        if not ok:
            bad.append(f"{where}: {m.group(0)}")
    assert not bad, bad


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?<!docs/)\b(pitfalls|reference-implementations|DESIGN)\.md",  # a document outside docs/
        r"\bpitfalls? \d",  # "pitfall 12" instead of "docs/pitfalls.md #12"
        r"shared/",  # the team's shared folder is not in the repository
        r"\bpapers/",  # nor are the papers
    ],
)
def test_no_reference_points_outside_the_repository(pattern):
    hits = [f"{where}: {m.string.strip()}" for where, m in _occurrences(pattern)]
    assert not hits, hits
