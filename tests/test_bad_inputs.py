"""One table of bad inputs across vqzoo: each raises its exact error class with a message
that names what was expected. Cases that need a training run or the CLI live in
test_cli.py / test_vqgan.py and are listed at the bottom for completeness."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqzoo import QGVAE, VQGAN, MaskGIT, MiniGPT, VectorQuantizer
from vqzoo.checkpoint import CheckpointError, load
from vqzoo.data.images import ImageDataModule


def _vqgan() -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VectorQuantizer(16, 8), in_channels=3, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(),
                 z_channels=8)


def _qgvae() -> QGVAE:
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, layout="per_token", num_groups=16)
    return QGVAE(q, in_channels=1, resolution=16, num_tokens=16, token_dim=4, num_heads=4, max_channels=16,
                 encoder_start_channels=8, bottom_resolution=8)


class _FakeTokenizer(torch.nn.Module):
    vocab_size = 32
    token_shape = (4, 4)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4, 4, dtype=torch.long)

    def detokenize(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(idx.shape[0], 1, 16, 16)


def _minigpt() -> MiniGPT:
    return MiniGPT(vocab_size=16, token_shape=[4, 4], n_layer=1, n_head=1, n_embd=8)


def _maskgit() -> MaskGIT:
    return MaskGIT(vocab_size=16, token_shape=[4, 4], condition="class", num_classes=3, n_layer=1, n_head=1, n_embd=8)


def _text_minigpt() -> MiniGPT:
    return MiniGPT(vocab_size=16, token_shape=[4, 4], condition="text", text_vocab_size=10, text_length=6,
                   n_layer=1, n_head=1, n_embd=8)


QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def _cli(tmp: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """Run ``vqzoo fit --config quickstart.yaml ARGS`` (parse only) and re-raise its exit with what it printed."""
    import contextlib
    import io

    from vqzoo.cli import main

    monkeypatch.chdir(tmp)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["fit", "--config", QUICKSTART, *args, "--print_config"])
        except SystemExit as exit_:
            if exit_.code != 0:
                raise SystemExit(err.getvalue()) from None
    raise AssertionError("the config was accepted")


def _missing_folder(tmp: Path) -> None:
    from vqzoo.data.images import ImageDataModule

    ImageDataModule(source="folder", root=str(tmp / "no_such_folder"), resolution=16).setup("fit")


def _corrupt(tmp: Path) -> None:
    (tmp / "c.ckpt").write_bytes(b"\x00garbage")
    load(tmp / "c.ckpt")


def _truncated(tmp: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp / "full.ckpt")
    data = (tmp / "full.ckpt").read_bytes()
    (tmp / "t.ckpt").write_bytes(data[: len(data) // 3])
    load(tmp / "t.ckpt")


def _other_model(tmp: Path) -> None:
    torch.save({"state_dict": {}, "vqzoo": {"class_path": "vqzoo.priors.minigpt.MiniGPT"}}, tmp / "o.ckpt")
    load(tmp / "o.ckpt", expected=VQGAN)


def _untrusted_class(tmp: Path) -> None:
    torch.save({"state_dict": {}, "vqzoo": {"class_path": "os.system"}}, tmp / "u.ckpt")
    load(tmp / "u.ckpt")


def _missing_lpips(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqzoo.losses import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(tmp))
    monkeypatch.delenv("VQZOO_ALLOW_DOWNLOAD", raising=False)
    LPIPS(pretrained=True)


def _tok_export(tmp: Path, in_channels: int = 1, num_codes: int = 16) -> Path:
    from vqzoo.checkpoint import export_model

    torch.manual_seed(0)
    model = VQGAN(VectorQuantizer(num_codes, 4), in_channels=in_channels, resolution=16, ch=8, ch_mult=(1, 2),
                  attn_resolutions=(), z_channels=8)
    return export_model(model, tmp / f"tok{in_channels}_{num_codes}")


def _evaluate(tmp: Path, model: Path, *args: str, channels: int = 1, resolution: int = 16) -> None:
    from vqzoo.cli.evaluate import main

    data = tmp / "data.yaml"
    data.write_text(
        "data:\n  class_path: vqzoo.data.images.ImageDataModule\n  init_args:\n    source: mnist5k\n"
        f"    resolution: {resolution}\n    channels: {channels}\n    batch_size: 16\n"
    )
    try:
        main(["--model", str(model), "--data", str(data), "--feature-extractor", "none", "--lpips", "off",
              "--out", str(tmp / "report.json"), *args])
    finally:
        assert not list(tmp.glob("report*")) and not list(tmp.glob(".report*"))  # nothing half-written


def _evaluate_not_a_model(tmp: Path) -> None:
    from vqzoo.checkpoint import export_model
    from vqzoo.experiments.te.semantic import QuadrantClassifier

    _evaluate(tmp, export_model(QuadrantClassifier(width=4), tmp / "clf"))


def _evaluate_vocab_mismatch(tmp: Path) -> None:
    from vqzoo.checkpoint import export_model

    prior = export_model(MiniGPT(vocab_size=32, token_shape=[8, 8], n_layer=1, n_head=1, n_embd=8), tmp / "prior")
    _evaluate(tmp, prior, "--tokenizer", str(_tok_export(tmp)))


CASES = [
    # (id, callable(tmp, monkeypatch), error class, message pattern)
    ("wrong channel count", lambda t, m: _vqgan()(torch.zeros(1, 1, 16, 16)), ValueError, r"\(B, 3, H, W\).*\(1, 1, 16, 16\)"),
    ("wrong size (global tokens)", lambda t, m: _qgvae()(torch.zeros(1, 1, 32, 32)), ValueError, r"\(B, 1, 16, 16\).*\(1, 1, 32, 32\)"),
    ("not divisible by downsampling", lambda t, m: _vqgan()(torch.zeros(1, 3, 15, 15)), ValueError, "divisible by 2"),
    ("integer images", lambda t, m: _vqgan()(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), ValueError, "float images in \\[-1, 1\\]"),
    ("NaN images", lambda t, m: _vqgan()(torch.full((1, 3, 16, 16), float("nan"))), ValueError, "NaN or Inf"),
    ("images in [0, 255]", lambda t, m: _vqgan()(torch.full((1, 3, 16, 16), 200.0)), ValueError, r"expects images in \[-1, 1\]"),
    ("empty batch", lambda t, m: _vqgan()(torch.zeros(0, 3, 16, 16)), ValueError, "empty batch"),
    ("out-of-range indices", lambda t, m: _vqgan().detokenize(torch.full((1, 8, 8), 16)), ValueError, r"\[0, 16\)"),
    ("negative indices", lambda t, m: _vqgan().detokenize(torch.full((1, 8, 8), -1)), ValueError, r"\[0, 16\)"),
    ("wrong token length", lambda t, m: _minigpt()(torch.zeros(2, 5, dtype=torch.long)), ValueError, r"expected image tokens of shape \(B, 4, 4\), got \(2, 5\)"),
    ("token id >= vocabulary", lambda t, m: _minigpt()(torch.full((2, 4, 4), 16)), ValueError, r"must be in \[0, 16\) \(vocab_size=16\), got values in \[16, 16\]"),
    ("condition of the wrong kind", lambda t, m: _maskgit().generate(2, condition="a caption"), ValueError, "class labels must be integers, got 'a caption'"),
    ("prior with a tokenizer of another vocabulary", lambda t, m: _minigpt().set_tokenizer(_FakeTokenizer()), ValueError, "32.*16|16.*32"),
    ("float token ids", lambda t, m: _minigpt()(torch.zeros(2, 4, 4)), ValueError, "integer tensor, got dtype torch.float32"),
    ("wrong caption length", lambda t, m: _text_minigpt()(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)), ValueError, r"shape \(2, 6\) \(text_length=6\), got \(2, 5\)"),
    ("caption id outside the text vocabulary", lambda t, m: _text_minigpt().generate(2, condition=torch.full((2, 6), 12)), ValueError, r"text ids must be in \[0, 10\)"),
    ("zero samples requested", lambda t, m: _minigpt().generate(0), ValueError, "n must be >= 1, got 0"),
    ("unknown config key", lambda t, m: _cli(t, m, "--model.init_args.no_such_option", "3"), SystemExit, "no_such_option"),
    ("wrong type in the config", lambda t, m: _cli(t, m, "--model.init_args.ch", "wide"), SystemExit, r"Parser key \"ch\":\s+Expected a <class 'int'>. Got value: wide"),
    ("unknown data source", lambda t, m: ImageDataModule(source="cifar11", resolution=16), ValueError, r"source must be one of \(.*'mnist5k'.*got 'cifar11'"),
    ("missing data folder", lambda t, m: _missing_folder(t), FileNotFoundError, "no_such_folder"),
    ("corrupt checkpoint", lambda t, m: _corrupt(t), CheckpointError, "corrupt or truncated"),
    ("truncated checkpoint", lambda t, m: _truncated(t), CheckpointError, "corrupt or truncated"),
    ("checkpoint of another model", lambda t, m: _other_model(t), CheckpointError, "expected a vqzoo.tokenizers.vqgan.VQGAN"),
    ("checkpoint naming an untrusted class", lambda t, m: _untrusted_class(t), CheckpointError, "refusing to import 'os.system'"),
    ("missing checkpoint file", lambda t, m: load(t / "nope.ckpt"), FileNotFoundError, "nope.ckpt"),
    ("missing LPIPS weights offline", lambda t, m: _missing_lpips(t, m), FileNotFoundError, "vgg16-397923af.pth"),
    ("K < 1", lambda t, m: VectorQuantizer(0, 8), ValueError, "num_codes must be an integer >= 1, got 0"),
    ("feature dimension mismatch", lambda t, m: VectorQuantizer(8, 4)(torch.zeros(1, 5, 2, 2)), ValueError, r"\(B, 4, H, W\).*\(1, 5, 2, 2\)"),
    ("NaN features", lambda t, m: VectorQuantizer(8, 4)(torch.full((1, 4, 2, 2), float("nan"))), ValueError, "NaN or Inf"),
    ("evaluate: a model that is neither tokenizer nor prior", lambda t, m: _evaluate_not_a_model(t), ValueError, r"QuadrantClassifier, expected a tokenizer .* or a prior"),
    ("evaluate: data with other channels than the model", lambda t, m: _evaluate(t, _tok_export(t), channels=3), ValueError, r"yields images of shape \(3, 16, 16\) but the VQGAN expects \(1, H, W\)"),
    ("evaluate: data of a size the model cannot take", lambda t, m: _evaluate(t, _tok_export(t), resolution=15), ValueError, r"shape \(1, 15, 15\) but the VQGAN expects \(1, H, W\) with H, W divisible by 2"),
    ("evaluate: more images than the split", lambda t, m: _evaluate(t, _tok_export(t), "--num-images", "501"), ValueError, r"--num-images 501 is larger than the test split .* \(500 images\)"),
    ("evaluate: prior and tokenizer vocabularies differ", lambda t, m: _evaluate_vocab_mismatch(t), ValueError, r"tokenizer has vocab_size=16 but MiniGPT was configured with vocab_size=32"),
    ("evaluate: missing Inception weights", lambda t, m: (m.setenv("TORCH_HOME", str(t)), _evaluate(t, _tok_export(t), "--feature-extractor", "inception")), FileNotFoundError, r"weights-inception-2015-12-05-6726825d.pth into .*hub/checkpoints"),
]
# Also covered elsewhere: the missing-LPIPS stop at `fit`
# start-up (test_vqgan.py), a code-running pickled checkpoint (test_cli.py), no
# partial files after a failed export or encode (test_cli.py, test_minigpt.py).


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _, call, error, pattern = case
    with pytest.raises(error, match=pattern) as info:
        call(tmp_path, monkeypatch)
    assert type(info.value) is error  # the exact class, not a subclass
    if isinstance(info.value, CheckpointError):
        assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written
