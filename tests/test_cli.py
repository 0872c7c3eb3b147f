"""The `vqzoo` command line end to end on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqzoo.checkpoint import CheckpointError, load
from vqzoo.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tokenizers" / "vqgan_tiny.yaml")


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_validate_export_and_reload(run_dir: Path) -> None:
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", "runs/t"])
    ckpts = sorted(run_dir.glob("runs/t/tensorboard/version_0/checkpoints/last.ckpt"))
    assert ckpts, list(run_dir.rglob("*"))
    ckpt = ckpts[0]
    assert (run_dir / "runs/t/tensorboard/version_0/config.yaml").is_file()
    assert list(run_dir.glob("runs/t/tensorboard/version_0/reconstructions/*.png"))
    metrics = (run_dir / "runs/t/csv/version_0/metrics.csv").read_text()
    for key in ("val/psnr", "val/codebook_usage", "val/perplexity", "train/vq_orthogonal", "train/d_loss"):
        assert key in metrics

    main(["validate", "--config", CONFIG, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", "runs/v"])

    assert main(["export", "--ckpt", str(ckpt), "--out", "export"]) == 0
    meta = json.loads((run_dir / "export" / "config.json").read_text())
    assert meta["class_path"] == "vqzoo.tokenizers.vqgan.VQGAN"
    from_ckpt, from_export = load(ckpt), load(run_dir / "export")
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(from_ckpt(x)[0], from_export(x)[0])
        assert torch.equal(from_ckpt.tokenize(x), from_export.tokenize(x))

    # a second fit into the same directory overwrites the saved config (docs/pitfalls.md #16)
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", "runs/t", "--trainer.limit_train_batches", "1"])


def test_print_config_shows_nested_parts(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "vqzoo.VectorQuantizer" in out and "OrthogonalRegularizer" in out and "disc_start" in out


def test_unknown_config_key_is_a_clear_error(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--model.init_args.no_such_option", "3"])
    assert exit_info.value.code != 0
    assert "no_such_option" in capsys.readouterr().err


def test_wrong_type_in_config_is_a_clear_error(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--model.init_args.ch", "wide"])
    assert exit_info.value.code != 0
    assert "ch" in capsys.readouterr().err


def test_export_of_missing_or_corrupt_checkpoint(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--ckpt", "missing.ckpt", "--out", "x"]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    (run_dir / "bad.ckpt").write_bytes(b"not a checkpoint at all")
    assert main(["export", "--ckpt", "bad.ckpt", "--out", "x"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert not (run_dir / "x").exists()
    with pytest.raises(CheckpointError):
        load(run_dir / "bad.ckpt")


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("echo executed > vqzoo_pwned",))


def test_checkpoint_with_code_running_pickle_is_refused(run_dir: Path) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Evil()}}, run_dir / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run code.*Nothing was executed"):
        load(run_dir / "evil.ckpt")
    assert not (run_dir / "vqzoo_pwned").exists()


def test_truncated_checkpoint_and_other_model_class(run_dir: Path) -> None:
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", "r", "--trainer.limit_train_batches", "1"])
    ckpt = next(run_dir.glob("r/tensorboard/version_0/checkpoints/last.ckpt"))
    data = ckpt.read_bytes()
    (run_dir / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(run_dir / "trunc.ckpt")
    from vqzoo.priors import MiniGPT

    with pytest.raises(CheckpointError, match="holds a vqzoo.tokenizers.vqgan.VQGAN, expected a .*MiniGPT"):
        load(ckpt, expected=MiniGPT)
    # mismatched shapes are named
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["quant_conv.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, run_dir / "shapes.ckpt")
    with pytest.raises(CheckpointError, match=r"quant_conv.weight: checkpoint \(3, 3, 1, 1\) vs model \(8, 8, 1, 1\)"):
        load(run_dir / "shapes.ckpt")


def test_config_callbacks_replace_defaults(run_dir: Path) -> None:
    main([
        "fit", "--config", CONFIG, "--trainer.default_root_dir", "c", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath=mine", "--trainer.limit_train_batches", "1",
    ])
    assert list((run_dir / "mine").glob("*.ckpt"))


def test_encode_fit_prior_and_sample(run_dir: Path) -> None:
    root = Path(CONFIG).parents[1]
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", "tok"])
    ckpt = next(run_dir.glob("tok/tensorboard/version_0/checkpoints/last.ckpt"))
    assert main(["encode", "--tokenizer", str(ckpt), "--data", CONFIG, "--out", "tokens", "--split", "train"]) == 0
    meta = json.loads((run_dir / "tokens" / "meta.json").read_text())
    assert meta["vocab_size"] == 16 and list(meta["token_shape"]) == [4, 4]
    main([
        "fit", "--config", str(root / "priors" / "minigpt_tiny.yaml"), "--data.init_args.root", "tokens",
        "--trainer.max_steps", "3", "--trainer.default_root_dir", "prior", "--trainer.limit_val_batches", "1",
    ])
    prior_ckpt = next(run_dir.glob("prior/**/last.ckpt"))
    code = main(["sample", "--prior", str(prior_ckpt), "--n", "4", "--condition", "3", "--tokenizer", str(ckpt),
                 "--out", "samples"])
    assert code == 0
    files = {p.name for p in (run_dir / "samples").iterdir()}
    assert any(f.endswith(".png") for f in files) and any("token" in f for f in files), files
