"""Every experiment config in configs/ still parses with the current constructors (no stale keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vqzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml")
    if "recipes" not in p.parts and "model" in (yaml.safe_load(p.read_text()) or {})
)


def test_the_configs_are_found() -> None:
    assert len(CONFIGS) > 30 and any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --print_config parses and type-checks the whole config without building the model
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("vqzoo.")
