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
    from vqzoo.experiments.te import runner
    from vqzoo.experiments.te.runner import build_from_config

    opts = reproduce_te.parse_args(["--preset", "gpu10"])
    # stage 2 is the protocol that learned the seen pairs on CPU: short captions, alternating directions
    assert opts.stage2_config == "configs/experiments/te_small_stage2_short_12ep.yaml" and opts.probe_every == 1000
    # stage 1: the 4-epoch pair whose reconstructions both read well (TE with the paper's L2 distance)
    assert opts.stage1_configs == {"sc": "configs/experiments/te_small_vqgan_sc_4ep.yaml",
                                   "ours": "configs/experiments/te_small_vqgan_ours_l2_4ep.yaml"}
    # an explicit --stage1-config wins over the preset's for its tokenizer
    mine = reproduce_te.parse_args(["--preset", "gpu10", "--stage1-config", "ours=configs/experiments/te_small_vqgan_ours.yaml"])
    assert mine.stage1_configs["ours"] == "configs/experiments/te_small_vqgan_ours.yaml"
    assert mine.stage1_configs["sc"] == "configs/experiments/te_small_vqgan_sc_4ep.yaml"
    for config, extra in ((opts.stage1_configs["ours"], opts.stage1_overrides), (opts.stage1_configs["sc"], opts.stage1_overrides),
                          (opts.stage2_config, opts.stage2_overrides)):
        cli = build_from_config(config, list(extra), 0, "cpu")
        assert cli.config["trainer"]["precision"] == "bf16-mixed"
        assert cli.datamodule.hparams.get("batch_size", getattr(cli.datamodule, "batch_size", None)) == 128
    data = runner.build_datamodule(opts.stage2_data)
    assert data.hparams.caption_style == "short" and cli.model.hparams.text_length == data.vocabulary.max_length
    assert cli.model.hparams.order == "alternate"


def test_reproduce_te_long_protocol_flags_and_merge(tmp_path) -> None:
    """The long CPU protocol's flags parse; --merge writes one results file and the seen-curve plot."""
    import json

    import reproduce_te

    opts = reproduce_te.parse_args(["--tokenizers", "ours", "sc", "--shared-stage1", "--probe-every", "1000",
                                    "--stage2-config", "configs/experiments/te_small_stage2_long.yaml"])
    assert opts.tokenizers == ("ours", "sc") and opts.shared_stage1 and opts.probe_every == 1000
    with pytest.raises(SystemExit):
        reproduce_te.parse_args(["--tokenizers", "xx"])

    def part(key):
        curve = [{"step": 1000, "t2i/digit": 0.1, "i2t/digit": 0.2}, {"step": 2000, "t2i/digit": 0.3, "i2t/digit": 0.4}]
        run = {"stage1": {}, "table3": {}, "table2": {}, "fashion": {},
               "stage2": {key: {"training": {"seen_curve": curve, "seen_curve_items": 200}}}}
        return {"scale": "small", "seeds": {"stage2": [42]}, "tokenizers": [key], "runs": [run], "timings_s": {},
                "errors": [], "skipped": [], "notes": [], "command": key, "started": "s", "elapsed_s": 1.0}

    paths = []
    for key in ("sc", "ours"):
        paths.append(tmp_path / f"{key}.json")
        paths[-1].write_text(json.dumps(part(key)))
    assert reproduce_te.main(["--merge", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["tokenizers"] == ["sc", "ours"]
    md = (tmp_path / "all.md").read_text()
    assert "| 2000 | 0.300 / 0.400 | 0.300 / 0.400 |" in md
    assert (tmp_path / "all.png").stat().st_size > 1000
    # --compare: curves of several results files side by side, one column per prior
    assert reproduce_te.main(["--compare", f"a={paths[0]}", f"b={tmp_path / 'all.json'}", "--out",
                              str(tmp_path / "cmp")]) == 0
    cmp = (tmp_path / "cmp.md").read_text()
    assert "| step | a SC (VQGAN) seed 42 | b SC (VQGAN) seed 42 | b Ours (TE-VQGAN) seed 42 |" in cmp
    assert "| 1000 | 0.100 / 0.200 | 0.100 / 0.200 | 0.100 / 0.200 |" in cmp
    assert "| a SC (VQGAN) seed 42 | n/a | n/a | n/a |" in cmp
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="LABEL=RESULTS.json"):
        reproduce_te.main(["--compare", str(paths[0]), "x", "--out", str(tmp_path / "c2")])


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


def test_te_sampling_diagnostic_names_the_missing_checkpoints(tmp_path) -> None:
    import te_sampling_diagnostic

    with pytest.raises(SystemExit, match=r"missing checkpoints .*classifier/model.ckpt.*run0/stage2/sc/model.ckpt"):
        te_sampling_diagnostic.main(["--work-dir", str(tmp_path), "--keys", "sc", "--out", str(tmp_path / "x")])
    # --render rewrites the markdown from an earlier JSON
    row = {"key": "sc", "split": "seen", "all/digit": 0.5, "all/color": 0.9, **{f"Quad{i}/digit": 0.5 for i in range(1, 5)}}
    result = {"command": "c", "seconds": 1, "torch_threads": 1, "run": 1, "seed": 43, "work_dir": "w", "items": 4,
              "rows": [{**row, "temperature": None}, {**row, "temperature": 0.0}]}
    (tmp_path / "d.json").write_text(__import__("json").dumps(result))
    assert te_sampling_diagnostic.main(["--work-dir", "w", "--render", str(tmp_path / "d.json"),
                                        "--out", str(tmp_path / "d")]) == 0
    md = (tmp_path / "d.md").read_text()
    assert "Priors of run 1 (stage-2 seed 43)" in md
    assert "| SC (VQGAN) | seen | reconstruction of the real images | 0.500 |" in md
    assert "| SC (VQGAN) | seen | greedy | 0.500 |" in md
