"""examples/tour.ipynb runs top to bottom (nbclient), on a tiny exported model so it takes seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_tour_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from vqzoo import VQGAN, VectorQuantizer
    from vqzoo.checkpoint import export_model

    torch.manual_seed(0)
    model = VQGAN(VectorQuantizer(16, 4), in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(),
                  z_channels=8, ema_decay=0.9)
    export_model(model, tmp_path / "tok")
    monkeypatch.setenv("VQZOO_TOUR_MODEL", str(tmp_path / "tok"))
    monkeypatch.setenv("VQZOO_TOUR_IMAGES", "32")
    monkeypatch.setenv("VQZOO_ROOT", str(ROOT))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend keeps the figures as outputs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(ROOT / "examples" / "tour.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "tokens (10, 8, 8) torch.int64" in text
    assert "cFID (MNIST classifier features)" in text and "psnr" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # inputs beside reconstructions, codebook histogram
