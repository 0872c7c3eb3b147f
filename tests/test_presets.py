"""GPU presets of the three reproduction scripts: they parse and their models/configs build (no GPU run)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_reproduce_te_presets_parse() -> None:
    import reproduce_te

    default = reproduce_te.parse_args([])
    assert default.preset is None and default.stage1_overrides == () and default.scale == "small"
    gpu = reproduce_te.parse_args(["--preset", "gpu10"])
    assert gpu.accelerator == "gpu" and gpu.scale == "small" and not gpu.table2 and gpu.runs == 1
    assert "bf16-mixed" in gpu.stage1_overrides and "bf16-mixed" in gpu.stage2_overrides
    assert gpu.out.name == "te_reproduction_gpu10"  # never overwrites the CPU results
    paper = reproduce_te.parse_args(["--preset", "paper"])
    assert paper.scale == "paper" and paper.runs == 3 and paper.all_baselines and paper.table2
    # explicit flags win over the preset
    assert reproduce_te.parse_args(["--preset", "gpu10", "--runs", "3"]).runs == 3


def test_reproduce_te_gpu10_overrides_build_every_config() -> None:
    import reproduce_te
    from vqzoo.experiments.te.runner import SCALES, build_from_config

    opts = reproduce_te.parse_args(["--preset", "gpu10"])
    spec = SCALES[opts.scale]
    for config, extra in ((spec.stage1["ours"], opts.stage1_overrides), (spec.stage2["ours"], opts.stage2_overrides)):
        cli = build_from_config(config, list(extra), 0, "cpu")
        assert cli.config["trainer"]["precision"] == "bf16-mixed"
        assert cli.datamodule.hparams.get("batch_size", getattr(cli.datamodule, "batch_size", None)) == 128


def test_qgvae_benchmark_presets() -> None:
    import qgvae_vs_vqvae as bench

    cpu = bench.parse_args([])
    assert (cpu.preset, cpu.steps, cpu.batch_size, cpu.lr, cpu.accelerator) == ("cpu", 3000, 32, 2e-4, "cpu")
    assert cpu.out.name == "qgvae_vs_vqvae.json"
    gpu = bench.parse_args(["--preset", "gpu10"])
    assert gpu.precision == "bf16-mixed" and gpu.accelerator == "gpu" and gpu.out.name == "qgvae_vs_vqvae_gpu10.json"
    paper = bench.parse_args(["--preset", "paper"])
    assert paper.steps == 168_750 and paper.batch_size == 32 and paper.source == "mnist"
    models = bench.build_models(gpu)  # the paper's MNIST-row model and its matched VQ-VAE
    qg, vq = models["QG-VAE"], models["VQ-VAE"]
    assert qg.quantizer.num_codes == vq.quantizer.num_codes == 512 and vq.quantizer.dim == 64
    assert qg.encoder.unet.level_convs and qg.encoder.unet.skip_from == "input"  # reference layout
    ratio = bench.network_parameters(vq) / bench.network_parameters(qg)
    assert 0.9 < ratio < 1.1
    assert tuple(qg.token_shape) == (64,) and tuple(vq.token_shape) == (8, 8)


def test_movq_benchmark_presets() -> None:
    import movq_vs_vqgan as bench
    from vqzoo.cli import VQZooCLI

    cpu = bench.parse_args([])
    assert (cpu.steps, cpu.batch_size, cpu.device, cpu.precision) == (1000, 16, "cpu", "fp32")
    gpu = bench.parse_args(["--preset", "gpu10"])
    assert (gpu.device, gpu.precision, gpu.batch_size) == ("cuda", "bf16", 256) and gpu.out.endswith("_gpu10")
    assert bench.main(["--preset", "paper"])["preset"] == "paper"  # prints the commands, trains nothing
    kinds = []
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        for command in bench.PAPER_COMMANDS:
            args = shlex.split(command.split("#")[0])[2:]
            cli = VQZooCLI(run=False, args=[*args, "--trainer.accelerator", "cpu"])
            kinds.append((type(cli.model).__name__, cli.model.quantizer.layout))
    finally:
        sys.argv = saved
    assert kinds == [("MoVQ", "multichannel"), ("MoVQ", "spatial"), ("VQGAN", "spatial")]


@pytest.mark.parametrize("script", ["qgvae_vs_vqvae", "movq_vs_vqgan", "reproduce_te"])
def test_help_mentions_presets(script: str, capsys: pytest.CaptureFixture) -> None:
    module = __import__(script)
    with pytest.raises(SystemExit):
        (module.parse_args if hasattr(module, "parse_args") else module.main)(["--help"])
    assert "--preset" in capsys.readouterr().out
