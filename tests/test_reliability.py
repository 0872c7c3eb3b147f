"""Reliability (issue 18): atomic checkpoints under kill -9 and a full disk, signals that save,
resume semantics, umask, temp clean-up, one-line CLI errors, 16-bit images.

Real-process tests run ``python -m vqzoo.cli fit`` with ``$TMPDIR`` on /dev/shm (tmpfs) while the
run directory is in pytest's tmp dir (another filesystem here), the set-up where Lightning's own
"write to $TMPDIR, then move" became a truncating copy."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqzoo.checkpoint import load
from vqzoo.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tokenizers" / "vqgan_tiny.yaml"
KILL_TRIES = int(os.environ.get("VQZOO_KILL_TRIES", "2"))


def _env(tmp: Path) -> dict[str, str]:
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp / "other_tmp"
    tmpdir = shm / f"vqzoo-test-{os.getpid()}-{tmp.name}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TMPDIR=str(tmpdir))


def _long_fit(tmp: Path, run: str, *extra: str) -> list[str]:
    """A fit that runs until stopped, saving last.ckpt every 2 steps into RUN/ck."""
    return [
        sys.executable, "-m", "vqzoo.cli", "fit", "--config", str(TINY), "--trainer.max_epochs", "100000",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp / run),
        "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={tmp / run / 'ck'}",
        "--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_last=true", *extra,
    ]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"fit ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# ---------------------------------------------------------------------- kill -9 during saves
def test_kill9_during_checkpoint_writes_never_leaves_an_unloadable_last_ckpt(tmp_path: Path) -> None:
    rng = random.Random(0)
    env = _env(tmp_path)
    hits = failures = 0
    for attempt in range(KILL_TRIES):
        run = f"k{attempt}"
        ck = tmp_path / run / "ck"
        proc = subprocess.Popen(_long_fit(tmp_path, run), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _wait_for(ck / "last.ckpt", proc)
        # kill at a random moment, preferably while a checkpoint is being written (its temp exists)
        deadline = time.monotonic() + rng.uniform(0.2, 3.0)
        while time.monotonic() < deadline and not list(ck.glob(".*.tmp-*")):
            time.sleep(0.0005)
        during_save = bool(list(ck.glob(".*.tmp-*")))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        hits += during_save
        try:
            load(ck / "last.ckpt")
        except Exception:  # noqa: BLE001
            failures += 1
    print(f"kill -9: {KILL_TRIES} tries, {hits} during a save, {failures} unloadable last.ckpt")
    assert failures == 0


# ---------------------------------------------------------------------- disk full
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _checkpoint(fill: float) -> dict:
    return {"state_dict": {"w": torch.full((100_000,), fill)}, "epoch": 0}  # ~400 KB


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "600k")  # room for one checkpoint, not for the new one beside it
    try:
        if not mounted:  # no permission to mount: simulate the full disk in the writer
            import vqzoo.checkpoint_io as cio

            real_save = torch.save
            calls = {"n": 0}

            def save(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003
                calls["n"] += 1
                if calls["n"] > 1:
                    f.write(b"x" * 1000)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_save(obj, f, *a, **k)

            monkeypatch.setattr(cio.torch, "save", save)
        print(f"disk full: {'a 600 KiB tmpfs' if mounted else 'simulated ENOSPC (mount not permitted)'}")
        io = AtomicCheckpointIO()
        target = disk / "last.ckpt"
        io.save_checkpoint(_checkpoint(1.0), target)
        with pytest.raises(CheckpointWriteError, match=r"could not write the checkpoint .*last\.ckpt: No space left"):
            io.save_checkpoint(_checkpoint(2.0), target)
        assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.full((100_000,), 1.0))
        assert sorted(p.name for p in disk.iterdir()) == ["last.ckpt"]  # no temp left behind
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------- signals
def _signal_run(tmp: Path, sig: int, env: dict[str, str], before: int | None = None) -> tuple[int, str, Path]:
    ck = tmp / f"s{sig}" / "ck"
    proc = subprocess.Popen(_long_fit(tmp, f"s{sig}"), env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(ck / "last.ckpt", proc)
    if before is not None:  # SIGUSR1 under SLURM: Lightning saves an hpc checkpoint and keeps training
        proc.send_signal(before)
        _wait_for(tmp / f"s{sig}" / "hpc_ckpt_1.ckpt", proc, timeout=120)
        assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, ck / "last.ckpt"


def test_sigterm_saves_and_exits_143_and_sigusr1_keeps_slurm_requeue(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.update(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_JOB_NAME="vqzoo-test", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS_PER_NODE="1")
    code, err, last = _signal_run(tmp_path, signal.SIGTERM, env, before=signal.SIGUSR1)
    assert code == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in line and str(last) in line, line
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] > 0
    load(last)  # complete and loadable


def test_sigint_saves_and_exits_130(tmp_path: Path) -> None:
    code, err, last = _signal_run(tmp_path, signal.SIGINT, _env(tmp_path))
    assert code == 130, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert "stopped by SIGINT" in line and str(last) in line, line
    load(last)


# ---------------------------------------------------------------------- resume semantics (in process)
def test_ckpt_path_last_finds_the_newest_and_applies_safe_overrides(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from vqzoo.cli import main

    monkeypatch.chdir(tmp_path)
    base = ["fit", "--config", str(TINY), "--trainer.default_root_dir", "r", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    assert main(base) == 0
    last = next((tmp_path / "r").rglob("last.ckpt"))
    (last.parent / f".last.ckpt.tmp-999999999-abc").write_bytes(b"left by a kill -9")
    capsys.readouterr()
    assert main([*base, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                 "--model.init_args.optimizer.init_args.lr", "0.002"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {last.relative_to(tmp_path)}" in err
    assert "optimizer.init_args.lr: 0.001 -> 0.002 (applied)" in err
    newest = max((tmp_path / "r").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    state = torch.load(newest, weights_only=False)
    assert state["epoch"] == 1  # resumed, not retrained from scratch
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.002)
    assert not list(last.parent.glob(".last.ckpt.tmp-*"))  # the killed writer's temp was cleaned up
    assert isinstance(newest, Path)
    # an architecture change is refused, in one line, with the difference listed
    assert main([*base, "--ckpt_path", str(last), "--model.init_args.ch", "16"]) == 2
    err = capsys.readouterr().err
    assert "ch: 8 -> 16 (refused)" in err
    assert err.strip().splitlines()[-1].startswith("vqzoo fit: error: ValueError: cannot resume")


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from vqzoo.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    args = ["validate", "--config", str(TINY), "--ckpt_path", "empty.ckpt", "--trainer.logger", "false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vqzoo validate: error: CheckpointError: empty.ckpt is not a readable checkpoint")
    assert not any("Traceback" in line for line in err)
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["export", "--ckpt", "missing.ckpt", "--out", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "vqzoo export: error: FileNotFoundError: no model at missing.ckpt: expected a .ckpt file written by "
        "`vqzoo fit` or a directory written by `vqzoo export`")


# ---------------------------------------------------------------------- files
def test_outputs_follow_the_umask_and_stale_temps_are_cleaned(tmp_path: Path) -> None:
    from vqzoo.io import atomic_dir, atomic_write

    old = os.umask(0o002)
    try:
        with atomic_write(tmp_path / "f.bin") as f:
            f.write(b"1")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o775
    dead = tmp_path / ".f.bin.tmp-999999999-x"
    alive = tmp_path / f".f.bin.tmp-{os.getpid()}-y"  # a writer still at work keeps its temp
    dead_dir = tmp_path / ".d.tmp-999999999-z"
    dead.write_bytes(b"")
    alive.write_bytes(b"")
    dead_dir.mkdir()
    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"2")
    with atomic_dir(tmp_path / "d", overwrite=True):
        pass
    assert not dead.exists() and alive.exists() and not dead_dir.exists()


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from vqzoo.data.images import ImageTransform
    from vqzoo.data.sources import ImageFolderDataset

    ramp = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    for channels, mode in ((1, "L"), (3, "RGB")):
        x, _ = ImageFolderDataset(str(tmp_path), ImageTransform(16, channels), mode=mode)[0]
        assert x.shape == (channels, 16, 16)
        expected = torch.from_numpy(ramp.astype(np.float32) / 65535 * 2 - 1)
        assert torch.allclose(x[0], expected, atol=1e-5)  # the full range, not white from 1/255 of it


def test_prior_skips_nonfinite_steps_then_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    import lightning as L
    from torch.utils.data import DataLoader

    from vqzoo import MiniGPT
    from vqzoo.data.batch import TensorBatchDataset
    from vqzoo.nn.nonfinite import NonFiniteLossError

    model = MiniGPT(vocab_size=8, token_shape=[2, 2], n_layer=1, n_head=1, n_embd=8, max_nonfinite_steps=3)
    before = copy.deepcopy(model.state_dict())
    real = model.compute_loss

    def nan_loss(batch):  # noqa: ANN001, ANN202
        loss, logs = real(batch)
        return loss * float("nan"), logs

    monkeypatch.setattr(model, "compute_loss", nan_loss)
    data = DataLoader(TensorBatchDataset(tokens=torch.randint(0, 8, (16, 2, 2))), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match="3 consecutive training steps had a non-finite loss"):
        trainer.fit(model, data)
    assert int(model._nonfinite_total) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update from a NaN step
