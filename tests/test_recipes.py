"""Recipes named in docstrings live in configs/recipes/ and parse layered over the config they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vqzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


def _python_sources() -> list[Path]:
    return sorted((ROOT / "vqzoo").rglob("*.py"))


def test_docstrings_hold_no_yaml_recipes():
    # A YAML block in a docstring: a `class_path: module.Class` key on its own indented line.
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _python_sources()
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.match(r"\s+class_path: [A-Za-z_]\w*\.[\w.]+\s*$", line)]
    assert not hits, hits


def test_recipes_named_in_the_code_exist():
    named = {m for p in _python_sources() for m in re.findall(r"configs/recipes/[\w.-]+\.yaml", p.read_text())}
    assert named, "the MoVQ docstring names its loss recipes"
    for name in named:
        assert (ROOT / name).is_file(), name
    assert {ROOT / n for n in named} == set(RECIPES)


def _base_of(recipe: Path) -> Path:
    """The config a recipe's header says to layer it over (`--config BASE --config RECIPE`)."""
    m = re.search(r"--config (configs/\S+\.yaml) --config configs/recipes/", recipe.read_text())
    assert m, f"{recipe.name}: no usage line"
    return ROOT / m.group(1)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_over_its_base(recipe: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(_base_of(recipe)), "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    merged = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    wanted = yaml.safe_load(recipe.read_text())["model"]["init_args"]

    def contains(have, want, where="model.init_args"):
        if isinstance(want, dict):
            for k, v in want.items():
                assert k in have, f"{where}.{k} missing"
                contains(have[k], v, f"{where}.{k}")
        else:
            assert have == want, f"{where}: {have!r} != {want!r}"

    contains(merged, wanted)
