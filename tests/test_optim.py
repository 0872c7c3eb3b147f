"""Injected optimizers and schedulers: configs, scale_lr, warm-up composition, old keys, save/export/reload."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml

from vqzoo import VQGAN, MiniGPT, VectorQuantizer
from vqzoo.checkpoint import export_model, load
from vqzoo.cli import VQZooCLI, main
from vqzoo.optim import MultipliedLR, build_schedule, upgrade_legacy_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tokenizers" / "vqgan_tiny.yaml"
PRIOR = ROOT / "configs" / "priors" / "minigpt_tiny.yaml"


class _FakeTrainer:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


def _with_world(model, world: int):  # noqa: ANN001, ANN202
    model._trainer = _FakeTrainer(world)  # configure_optimizers reads only trainer.world_size here
    return model


def _tiny_vqgan(**kw) -> VQGAN:  # noqa: ANN003
    from vqzoo.losses import AdversarialLoss, NLayerDiscriminator

    adv = AdversarialLoss(NLayerDiscriminator(in_channels=1, ndf=8, n_layers=1))
    return VQGAN(VectorQuantizer(16, 8), in_channels=1, resolution=16, ch=8, ch_mult=(1, 2), attn_resolutions=(),
                 z_channels=8, adversarial=adv, **kw)


def test_python_default_is_adam_with_taming_betas_for_both_optimizers():
    opt_g, opt_d = _tiny_vqgan().configure_optimizers()[0]
    for opt in (opt_g, opt_d):
        assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.5, 0.9)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_config_optimizer_class_and_lr_reach_the_built_optimizers():
    args = ["--config", str(TINY), "--model.init_args.optimizer", "torch.optim.SGD",
            "--model.init_args.optimizer.init_args.lr", "0.25", "--model.init_args.optimizer.init_args.momentum", "0.5",
            "--model.init_args.disc_optimizer", "torch.optim.RMSprop", "--model.init_args.disc_optimizer.init_args.lr",
            "0.125", "--trainer.logger", "false"]
    model = VQZooCLI(run=False, args=args).model
    (opt_g, opt_d), _ = model.configure_optimizers()
    assert type(opt_g) is torch.optim.SGD and opt_g.param_groups[0]["lr"] == 0.25 and opt_g.defaults["momentum"] == 0.5
    assert type(opt_d) is torch.optim.RMSprop and opt_d.param_groups[0]["lr"] == 0.125
    # the generator's parameters and the discriminator's are disjoint and complete
    ids_g = {id(p) for g in opt_g.param_groups for p in g["params"]}
    ids_d = {id(p) for g in opt_d.param_groups for p in g["params"]}
    assert not ids_g & ids_d and ids_d == {id(p) for p in model.adversarial.parameters()}


def test_config_file_with_an_injected_optimizer(tmp_path: Path):
    cfg = yaml.safe_load(PRIOR.read_text())
    cfg["model"]["init_args"]["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
    path = tmp_path / "sgd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    model = VQZooCLI(run=False, args=["--config", str(path), "--trainer.logger", "false"]).model
    opt = model.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.05
    decay, no_decay = opt.param_groups
    assert no_decay["weight_decay"] == 0.0


def test_scale_lr_linear_multiplies_by_world_size():
    for scale_lr, want in (("linear", 2e-3), ("none", 1e-3)):
        m = _with_world(_tiny_vqgan(optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3}},
                                    scale_lr=scale_lr), 2)
        opt_g, opt_d = m.configure_optimizers()[0]
        assert opt_g.param_groups[0]["lr"] == pytest.approx(want) and opt_d.param_groups[0]["lr"] == pytest.approx(want)
    prior = _with_world(MiniGPT(vocab_size=8, token_shape=[4], n_layer=1, n_head=1, n_embd=8, scale_lr="linear"), 4)
    opt = prior.configure_optimizers()
    assert all(g["lr"] == pytest.approx(4 * 3e-4) for g in opt.param_groups)


def test_warmup_multiplies_an_injected_scheduler():
    m = _tiny_vqgan(optimizer=functools.partial(torch.optim.SGD, lr=1.0), warmup_steps=4,
                    lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5))
    (opt_g, _), (sched_g, sched_d) = m.configure_optimizers()
    assert isinstance(sched_g, MultipliedLR) and isinstance(sched_d.inner, torch.optim.lr_scheduler.StepLR)
    seen = []
    for _ in range(8):
        seen.append(opt_g.param_groups[0]["lr"])
        opt_g.step()
        sched_g.step()
    step_lr = [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    warm = [0.25, 0.5, 0.75, 1, 1, 1, 1, 1]
    assert seen == pytest.approx([a * b for a, b in zip(step_lr, warm)])
    # without an injected scheduler it is the plain warm-up
    m2 = _tiny_vqgan(optimizer=functools.partial(torch.optim.SGD, lr=1.0), warmup_steps=4)
    (opt2, _), (s2, _) = m2.configure_optimizers()
    assert s2.inner is None and opt2.param_groups[0]["lr"] == 0.25


def test_composed_schedule_state_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))

    def make():  # noqa: ANN202
        opt = torch.optim.SGD([p], lr=1.0)
        return opt, build_schedule(opt, lambda s: min(1.0, (s + 1) / 3),
                                   functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.9))

    opt, s = make()
    for _ in range(5):
        opt.step()
        s.step()
    state = s.state_dict()
    assert "inner" not in state and state["inner_state"]["last_epoch"] == 5
    torch.save(state, "/dev/null")  # plain data: no objects to pickle
    opt2, s2 = make()
    s2.load_state_dict(state)
    opt.step(), s.step(), opt2.step(), s2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == pytest.approx(0.9**6)


def test_plateau_scheduler_is_refused():
    m = _tiny_vqgan(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        m.configure_optimizers()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("learning_rate", "1e-3", "optimizer.init_args.lr"), ("betas", "[0.5, 0.9]", "optimizer.init_args.betas"),
     ("optimizer", "adam", "torch.optim.Adam")],
)
def test_old_keys_are_errors_naming_the_new_one(key, value, named, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), f"--model.init_args.{key}", value, "--print_config"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "optimizers are injected now" in err and named in err


def test_old_prior_key_in_a_config_file_names_the_new_one(tmp_path: Path, capsys: pytest.CaptureFixture):
    cfg = yaml.safe_load(PRIOR.read_text())
    cfg["model"]["init_args"].pop("optimizer")
    cfg["model"]["init_args"]["lr"] = 1e-3
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "old.yaml"), "--print_config"])
    assert "`lr` -> `optimizer.init_args.lr`" in capsys.readouterr().err


def test_legacy_saved_configs_upgrade_to_the_same_numbers():
    tok = upgrade_legacy_config({"ch": 8, "optimizer": "adamw", "learning_rate": 2e-4, "betas": [0.9, 0.999],
                                 "weight_decay": 0.01, "disc_learning_rate": 1e-4})
    assert tok["optimizer"] == {"class_path": "torch.optim.AdamW",
                                "init_args": {"lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 0.01}}
    assert tok["disc_optimizer"]["init_args"]["lr"] == 1e-4 and tok["ch"] == 8
    adam = upgrade_legacy_config({"learning_rate": 1e-3, "weight_decay": 0.5})
    assert adam["optimizer"] == {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "betas": [0.5, 0.9]}}
    prior = upgrade_legacy_config({"lr": 1e-3, "warmup_steps": 3})
    assert prior["optimizer"] == {"class_path": "torch.optim.AdamW",
                                  "init_args": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1}}
    assert upgrade_legacy_config({"ch": 8}) == {"ch": 8}


def test_cli_model_with_injected_optimizer_saves_exports_and_reloads(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(TINY), "--trainer.default_root_dir", "r", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--model.init_args.optimizer", "torch.optim.AdamW", "--model.init_args.optimizer.init_args.lr", "0.002"])
    ckpt = next(tmp_path.glob("r/**/last.ckpt"))
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["optimizer"]["class_path"] == "torch.optim.AdamW" and hp["optimizer"]["init_args"]["lr"] == 0.002
    assert main(["export", "--ckpt", str(ckpt), "--out", "export"]) == 0
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["config"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    for source in (ckpt, tmp_path / "export"):
        model = load(source)
        opt = model.configure_optimizers()[0][0]
        assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 0.002
    # and a reloaded model exports again
    export_model(load(tmp_path / "export"), tmp_path / "again")


def test_python_model_with_a_callable_saves_and_reloads_with_the_default(tmp_path: Path):
    m = MiniGPT(vocab_size=8, token_shape=[4], n_layer=1, n_head=1, n_embd=8,
                optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    assert "optimizer" not in m.hparams  # a callable cannot be saved without pickle
    assert type(m.configure_optimizers()) is torch.optim.SGD
    export_model(m, tmp_path / "e")
    again = load(tmp_path / "e")
    assert type(again.configure_optimizers()) is torch.optim.AdamW
