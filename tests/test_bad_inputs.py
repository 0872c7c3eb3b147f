"""One table of bad inputs across vqzoo: each raises its exact error class with a message
that names what was expected. Cases that need a training run or the CLI live in
test_cli.py / test_vqgan.py and are listed at the bottom for completeness."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqzoo import QGVAE, VQGAN, MaskGIT, MiniGPT, VectorQuantizer
from vqzoo.checkpoint import CheckpointError, load
from vqzoo.checkpoint_io import CheckpointWriteError
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


def _export_with(tmp: Path, key: str, value: torch.Tensor) -> Path:
    from vqzoo.checkpoint import export_model

    out = export_model(_minigpt(), tmp / "exp")
    from safetensors.torch import load_file, save_file

    state = load_file(str(out / "model.safetensors"))
    state[key] = value(state[key])
    save_file(state, str(out / "model.safetensors"))
    return out


def _float_tokens(tmp: Path) -> None:
    import json

    import numpy as np

    from vqzoo.data.tokens import TokenDataset

    (tmp / "tok").mkdir()
    np.save(tmp / "tok" / "tokens.npy", np.full((4, 2, 2), 3.7, dtype=np.float32))
    (tmp / "tok" / "meta.json").write_text(json.dumps({"vocab_size": 8, "token_shape": [2, 2], "num_samples": 4}))
    TokenDataset(tmp / "tok")


def _resume_other_class(tmp: Path) -> None:
    from vqzoo.cli.resume import check_resume

    torch.save({"state_dict": {}, "vqzoo": {"class_path": "vqzoo.priors.minigpt.MiniGPT"}}, tmp / "o.ckpt")
    check_resume(tmp / "o.ckpt", _vqgan(), "fit")


def _resume_other_architecture(tmp: Path) -> None:
    from vqzoo.checkpoint import model_config
    from vqzoo.cli.resume import check_resume

    hp = model_config(_vqgan())
    torch.save({"state_dict": {}, "vqzoo": {"class_path": "vqzoo.tokenizers.vqgan.VQGAN"},
                "hyper_parameters": {**hp, "ch": 16, "optimizer": {**hp["optimizer"], "init_args": {"lr": 0.5}}}},
               tmp / "a.ckpt")
    check_resume(tmp / "a.ckpt", _vqgan(), "fit")


def _full_disk(tmp: Path, m: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import vqzoo.checkpoint_io as cio
    from vqzoo.checkpoint_io import AtomicCheckpointIO

    def no_space(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    m.setattr(cio.torch, "save", no_space)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp / "last.ckpt")


def _resume_other_batch_size(tmp: Path) -> None:
    from vqzoo.data.batch import TensorBatchDataset
    from vqzoo.data.resumable import ResumableDataLoader

    loader = ResumableDataLoader(TensorBatchDataset(tokens=torch.zeros(8, 2, dtype=torch.long)), batch_size=4)
    loader.load_state_dict({"epoch": 0, "batches": 1, "batch_size": 2})


def _export_over_existing(tmp: Path) -> None:
    from vqzoo.cli.export import main as export

    (tmp / "out").mkdir()
    export(["--ckpt", str(tmp / "any.ckpt"), "--out", str(tmp / "out")])


def _sample_over_existing(tmp: Path) -> None:
    from vqzoo.priors.sample import sample_prior

    (tmp / "out").mkdir()
    sample_prior(tmp / "any.ckpt", 4, None, tmp / "out")


def _empty_checkpoint_on_resume(tmp: Path) -> None:
    from vqzoo.checkpoint_io import AtomicCheckpointIO

    (tmp / "empty.ckpt").write_bytes(b"")
    AtomicCheckpointIO().load_checkpoint(tmp / "empty.ckpt")
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
    # issue 18: no silent garbage, resume semantics, full disks
    ("export with NaN weights", lambda t, m: load(_export_with(t, "tok_emb.weight", lambda w: w * float("nan"))), CheckpointError, r"model\.safetensors: tensor 'tok_emb\.weight' has \d+ non-finite values"),
    ("export with int32 weights", lambda t, m: load(_export_with(t, "tok_emb.weight", lambda w: w.to(torch.int32))), CheckpointError, r"tensor 'tok_emb\.weight' is torch\.int32 but the model's is torch\.float32"),
    ("export with bool weights", lambda t, m: load(_export_with(t, "tok_emb.weight", lambda w: w > 0)), CheckpointError, r"tensor 'tok_emb\.weight' is torch\.bool but the model's is torch\.float32"),
    ("float token file", lambda t, m: _float_tokens(t), ValueError, r"tokens\.npy holds float32 values; token ids must be integers"),
    ("NaN loss weight", lambda t, m: VQGAN(VectorQuantizer(16, 8), reconstruction_weight=float("nan")), ValueError, "reconstruction_weight must be a finite number >= 0, got nan"),
    ("infinite loss weight", lambda t, m: VQGAN(VectorQuantizer(16, 8), codebook_weight=float("inf")), ValueError, "codebook_weight must be a finite number >= 0, got inf"),
    ("prior max_nonfinite_steps 0", lambda t, m: MiniGPT(vocab_size=8, token_shape=[2, 2], n_layer=1, n_head=1, n_embd=8, max_nonfinite_steps=0), ValueError, "max_nonfinite_steps must be an integer >= 1, got 0"),
    ("empty checkpoint on resume", lambda t, m: _empty_checkpoint_on_resume(t), CheckpointError, r"empty\.ckpt is not a readable checkpoint \(corrupt or truncated\)"),
    ("resume from another model class", lambda t, m: _resume_other_class(t), CheckpointError, r"holds a vqzoo\.priors\.minigpt\.MiniGPT but the config builds a vqzoo\.tokenizers\.vqgan\.VQGAN"),
    ("resume with another architecture", lambda t, m: _resume_other_architecture(t), ValueError, r"cannot resume .*a\.ckpt with a different architecture \(ch\)"),
    ("resume with another batch size", lambda t, m: _resume_other_batch_size(t), ValueError, "position is in batches of 2, but the batch size is now 4"),
    ("disk full while saving a checkpoint", lambda t, m: _full_disk(t, m), CheckpointWriteError, r"could not write the checkpoint .*last\.ckpt: No space left on device"),
    ("export over an existing --out", lambda t, m: _export_over_existing(t), FileExistsError, "out already exists; pass --overwrite"),
    ("sample over an existing --out", lambda t, m: _sample_over_existing(t), FileExistsError, "out already exists; pass --overwrite"),
    ("evaluate: a model that is neither tokenizer nor prior", lambda t, m: _evaluate_not_a_model(t), ValueError, r"QuadrantClassifier, expected a tokenizer .* or a prior"),
    ("evaluate: data with other channels than the model", lambda t, m: _evaluate(t, _tok_export(t), channels=3), ValueError, r"yields images of shape \(3, 16, 16\) but the VQGAN expects \(1, H, W\)"),
    ("evaluate: data of a size the model cannot take", lambda t, m: _evaluate(t, _tok_export(t), resolution=15), ValueError, r"shape \(1, 15, 15\) but the VQGAN expects \(1, H, W\) with H, W divisible by 2"),
    ("evaluate: more images than the split", lambda t, m: _evaluate(t, _tok_export(t), "--num-images", "501"), ValueError, r"--num-images 501 is larger than the test split .* \(500 images\)"),
    ("evaluate: prior and tokenizer vocabularies differ", lambda t, m: _evaluate_vocab_mismatch(t), ValueError, r"tokenizer has vocab_size=16 but MiniGPT was configured with vocab_size=32"),
    ("evaluate: missing Inception weights", lambda t, m: (m.setenv("TORCH_HOME", str(t)), _evaluate(t, _tok_export(t), "--feature-extractor", "inception")), FileNotFoundError, r"weights-inception-2015-12-05-6726825d.pth into .*hub/checkpoints"),
]
# Also covered elsewhere: kill -9 during saves, SIGTERM/SIGINT, `--ckpt_path last`, one-line CLI
# errors, 16-bit images and the prior's non-finite stop (test_reliability.py); the missing-LPIPS stop at `fit`
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
