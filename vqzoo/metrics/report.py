"""Evaluation reports: the numbers plus the protocol that makes them comparable.

Published rFID/gFID numbers disagree by 2x for the same model when the
reference set, resolution, sample count or implementation differ and are not
written down (docs/pitfalls.md #17). Every report written here therefore
carries a ``protocol`` block: the reference set (data config, split, how many
images, resize/crop, resolution), the feature extractor with the SHA-256 of
its weights file, the metric backend and its version, the model file's hash
and vqzoo's version. :func:`write_report` writes the JSON, a markdown file
with one table row, and a PNG grid, each atomically (``vqzoo.io``).
"""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import Tensor

from vqzoo.io import sha256_file

__all__ = ["backend_versions", "markdown_row", "model_hash", "write_report"]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def backend_versions() -> dict[str, str | None]:
    return {name: _version(name) for name in ("torchmetrics", "torch-fidelity", "torch", "vqzoo")} | {
        "python": platform.python_version()
    }


def model_hash(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of a model file; for an export directory, of its weights and config files together."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        if p.is_dir():
            h.update(f.name.encode() + b"\0")
        sha256_file(f, digest=h)
    return {"sha256": h.hexdigest(), "files": [f.name for f in files]}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_row(report: dict[str, Any]) -> tuple[str, str]:
    """(header, row) of one markdown table line summarising ``report``."""
    m = report["metrics"]
    fd_name = report.get("fd_name") or "FD"
    is_name = report.get("is_name") or "IS"
    if report["kind"] == "tokenizer":
        cols = [("model", report["model"]["name"]), ("split", report["protocol"]["reference_set"]["split"]),
                ("N", report["protocol"]["reference_set"]["num_images"]), ("PSNR", m.get("psnr")),
                ("SSIM", m.get("ssim")), ("LPIPS", m.get("lpips")), (fd_name, m.get("fd")),
                (is_name, m.get("is_mean")), (f"{is_name} of the inputs", m.get("is_real_mean")), ("codes used", m.get("codes_used")), ("usage", m.get("codebook_usage")),
                ("perplexity", m.get("perplexity")), ("entropy (bits)", m.get("entropy_bits"))]
    else:
        cols = [("model", report["model"]["name"]), ("split", report["protocol"]["reference_set"]["split"]),
                ("N generated", m.get("num_generated")), ("N reference", report["protocol"]["reference_set"]["num_images"]),
                (fd_name, m.get("fd")), (is_name, m.get("is_mean")), ("images/s", m.get("images_per_second"))]
    cols.append(("sha256", report["model"]["sha256"][:12]))
    header = "| " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * len(cols)
    row = "| " + " | ".join(_fmt(v) for _, v in cols) + " |"
    return header, row


def write_report(report: dict[str, Any], out: str | os.PathLike, grid: Tensor | None = None) -> dict[str, Path]:
    """Write ``out`` (JSON), ``out`` with ``.md`` (header + one row) and ``.png`` (the grid), atomically."""
    from vqzoo.io import atomic_write, save_png, write_json

    out = Path(out)
    paths = {"json": out, "markdown": out.with_suffix(".md")}
    if grid is not None:
        paths["grid"] = out.with_suffix(".png")
        report.setdefault("files", {})["grid"] = paths["grid"].name
    report.setdefault("files", {})["markdown"] = paths["markdown"].name
    header, row = markdown_row(report)
    if grid is not None:
        save_png(grid, paths["grid"])
    with atomic_write(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(header + "\n" + row + "\n")
    write_json(out, report)
    return paths
