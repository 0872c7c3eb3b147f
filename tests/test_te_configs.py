"""TE-VQGAN reproduction: every TE config builds what its header promises, and the
helpers of the runner (vqzoo.experiments.te.runner) compute what they claim on tiny inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from vqzoo.cli import VQZooCLI
from vqzoo.experiments.te import runner
from vqzoo.experiments.te.captions import MAX_CAPTION_LENGTH, SHORT_CAPTION_LENGTH, VOCAB, VOCAB_SIZE
from vqzoo.experiments.te.quadrants import QuadrantsDataModule
from vqzoo.priors import MiniGPT
from vqzoo.quantize import OrthogonalRegularizer
from vqzoo.tokenizers import VQGAN

ROOT = Path(__file__).resolve().parents[1]
STAGE1_PAPER = sorted((ROOT / "configs" / "tokenizers").glob("te_*.yaml"))
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("te_*.yaml"))
METHODS = {"sc": "strided_conv", "cb": "conv_blurpool", "mp": "maxpool", "mb": "max_blurpool", "ours": "strided_conv"}


@pytest.fixture(scope="module")
def rt():
    """The runner behind benchmarks/reproduce_te.py."""
    return runner


def build(path: Path, *extra: str) -> VQZooCLI:
    """Parse and instantiate a config on CPU (the paper configs ask for 2 GPUs) without setting data up."""
    args = ["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.strategy", "auto", *extra]
    return VQZooCLI(run=False, args=args)


def key_of(path: Path) -> str:
    stem = path.stem.replace("_fashion", "").replace("_100k", "").removesuffix("_4ep").removesuffix("_l2")
    return stem.rsplit("_", 1)[-1]


def test_the_expected_configs_exist():
    names = {p.stem for p in STAGE1_PAPER} | {p.stem for p in EXPERIMENTS}
    for k in METHODS:
        assert f"te_vqgan_{k}" in names and f"te_small_vqgan_{k}" in names and f"te_stage2_{k}" in names
    for extra in ("te_vqgan_sc_fashion", "te_vqgan_ours_fashion", "te_stage2_sc_100k", "te_stage2_ours_100k",
                  "te_stage2_data", "te_stage2_data_100k", "te_small_stage2", "te_small_stage2_data"):
        assert extra in names


@pytest.mark.parametrize("path", STAGE1_PAPER, ids=lambda p: p.stem)
def test_paper_stage1_config_is_the_reference_recipe(path):
    cli = build(path)
    m, dm, key = cli.model, cli.datamodule, key_of(path)
    assert isinstance(m, VQGAN) and isinstance(dm, QuadrantsDataModule)
    assert not dm.datasets  # not set up: nothing generated or loaded
    assert m.resolution == 64 and m.in_channels == 3 and m.downsample_factor == 4 and m.token_shape == (16, 16)
    assert m.encoder.downsample_factor == 4 and m.quant_conv.in_channels == 256
    assert m.quantizer.num_codes == 128 and m.quantizer.dim == 256 and m.quantizer.beta == 0.25
    assert {d.method for d in m.encoder.modules() if type(d).__name__ == "Downsample"} == {METHODS[key]}
    regs = list(m.quantizer.regularizers)
    if key == "ours":
        assert len(regs) == 1 and isinstance(regs[0], OrthogonalRegularizer) and regs[0].weight == 10.0
    else:
        assert regs == []
    adv = m.adversarial
    assert adv.disc_start == 30001 and adv.disc_weight == 0.8 and adv.adaptive and adv.loss == "hinge"
    assert m.codebook_weight == 1.0 and m.perceptual_weight == 1.0 and m.reconstruction_loss == "l1"
    opt_g, opt_d = m.configure_optimizers()[0]
    for opt in (opt_g, opt_d):
        assert type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.5, 0.9)
    # The TE code's rule base_lr x batch x GPUs = 8e-6 x 96 x 2; scale_lr supplies the GPU factor.
    cfg = yaml.safe_load(path.read_text())
    assert cfg["trainer"]["devices"] == 2 and m.scale_lr == "linear"
    assert math.isclose(opt_g.param_groups[0]["lr"] * cfg["trainer"]["devices"], 2 * 96 * 8e-6)
    assert opt_d.param_groups[0]["lr"] == opt_g.param_groups[0]["lr"]
    assert cfg["seed_everything"] == 23 and cfg["trainer"]["max_epochs"] == 40
    hp = dm.hparams
    assert (hp.canvas_size, hp.train_size, hp.val_size, hp.test_size, hp.batch_size) == (64, 300_000, 3000, 3000, 96)
    assert hp.source == ("fashion_mnist" if "fashion" in path.stem else "mnist") and not hp.with_captions
    header = path.read_text().split("\nseed_everything")[0]
    for word in ("Paper:", "Hardware:", "vgg16-397923af.pth", "Expected"):
        assert word in header


@pytest.mark.parametrize("key", list(METHODS))
def test_paper_headers_carry_the_papers_numbers(rt, key):
    tok = (ROOT / "configs" / "tokenizers" / f"te_vqgan_{key}.yaml").read_text()
    st2 = (ROOT / "configs" / "experiments" / f"te_stage2_{key}.yaml").read_text()
    for direction in ("t2i", "i2t"):
        for mean, std in rt.PAPER_TABLE1[direction][key]:
            assert f"{mean:.3f} ({std:.3f})" in tok and f"{mean:.3f} ({std:.3f})" in st2
    if key in rt.PAPER_TABLE2:
        mean, std = rt.PAPER_TABLE2[key]["reduced"]
        assert f"{mean:.3f} ({std:.3f})" in tok
        assert f"{mean:.3f} ({std:.3f})" in (ROOT / "configs" / "experiments" / f"te_stage2_{key}_100k.yaml").read_text()
        for dataset, suffix in (("mnist", ""), ("fashion", "_fashion")):
            text = (ROOT / "configs" / "tokenizers" / f"te_vqgan_{key}{suffix}.yaml").read_text()
            paper = rt.PAPER_TABLE3[dataset][key]
            assert f"code usage {paper['codes_used']}" in text and f"{paper['l1']:.4f}" in text


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "small_vqgan" in p.stem], ids=lambda p: p.stem)
def test_small_stage1_config_keeps_the_codebook_and_tokenizes_8x8(path):
    cli = build(path)
    m, dm, key = cli.model, cli.datamodule, key_of(path)
    assert isinstance(m, VQGAN) and m.resolution == 32 and m.token_shape == (8, 8)
    assert m.quantizer.num_codes == 128 and m.quantizer.dim == 256
    assert {d.method for d in m.encoder.modules() if type(d).__name__ == "Downsample"} == {METHODS[key]}
    assert (len(m.quantizer.regularizers) == 1) == (key == "ours")
    # the documented departures, the same for every tokenizer: no VGG weights offline, MSE,
    # cosine distance (but in the _l2 variant), no PatchGAN
    assert m.perceptual_weight == 0.0 and m.reconstruction_loss == "l2" and m.adversarial is None
    distance = "l2" if path.stem.removesuffix("_4ep").endswith("_l2") else "cosine"
    assert m.quantizer.codebook.distance == distance and m.quantizer.beta == 0.25
    hp = dm.hparams
    assert hp.source == "mnist5k" and hp.canvas_size == 32
    # the 4-epoch variants double the 1,000 steps; each header states its step count
    steps = hp.train_size // hp.batch_size * cli.config["trainer"]["max_epochs"]
    assert steps == (2000 if path.stem.endswith("_4ep") else 1000)
    header = path.read_text().split("\nseed_everything")[0]
    assert f"{steps:,} steps" in header or f"{steps} steps" in header
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    idx = m.tokenize(x)
    assert idx.shape == (2, 8, 8) and idx.dtype == torch.int64
    assert m.detokenize(idx).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "stage2" in p.stem and "data" not in p.stem],
                         ids=lambda p: p.stem)
def test_stage2_configs_fit_their_tokenizers_and_vocabulary(path):
    cli = build(path)
    prior = cli.model
    # the long CPU configs alternate the directions per optimizer step (the reference's --task alternate)
    assert isinstance(prior, MiniGPT) and prior.condition == "text"
    long = "_long" in path.stem or "_short" in path.stem
    assert prior.order == ("alternate" if long else "both")
    # the short-caption config reads te_small_stage2_data_short.yaml's 24-token captions
    short = "_short" in path.stem
    assert prior.text_vocab_size == VOCAB_SIZE
    assert prior.text_length == (SHORT_CAPTION_LENGTH if short else MAX_CAPTION_LENGTH)
    assert prior.text_pad_id == VOCAB.pad_id
    assert (prior.condition_loss_weight, prior.image_loss_weight) == (1.0, 7.0)
    cfg = yaml.safe_load(path.read_text())
    # the paper's lr 1e-3; the CPU config uses 3e-3 at batch 32 (measured in its header)
    opt = prior.optimizer_factory(prior.parameter_groups())  # the schedule needs a trainer; the optimizer not
    assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.defaults["lr"] == (3e-3 if "small" in path.stem else 1e-3)
    assert opt.defaults["weight_decay"] == 0.0 and prior.tokenizer_path is None
    assert cfg["trainer"]["gradient_clip_val"] == 1.0 and cfg["seed_everything"] == 42
    small = "small" in path.stem
    tokenizer_cfg = (ROOT / "configs" / "experiments" / "te_small_vqgan_sc.yaml") if small else (
        ROOT / "configs" / "tokenizers" / f"te_vqgan_{key_of(path)}.yaml")
    tok_cfg = yaml.safe_load(tokenizer_cfg.read_text())["model"]["init_args"]
    side = tok_cfg["resolution"] // 4
    assert prior.vocab_size == tok_cfg["quantizer"]["init_args"]["num_codes"]
    assert prior.token_shape == (side, side)
    size = (prior.trunk.n_layer, prior.trunk.n_head, prior.n_embd)
    assert size == ((4, 4, 128) if small else (8, 8, 256))
    if not small:
        assert cfg["trainer"]["max_epochs"] == 20 and cfg["data"]["init_args"]["batch_size"] == 100


@pytest.mark.parametrize("name", ["te_stage2_data", "te_stage2_data_100k", "te_small_stage2_data",
                                  "te_small_stage2_data_short"])
def test_stage2_data_configs_describe_captioned_quadrants(rt, name):
    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / f"{name}.yaml")
    assert isinstance(dm, QuadrantsDataModule) and dm.hparams.with_captions and not dm.datasets
    expected = {"te_stage2_data": (64, 300_000), "te_stage2_data_100k": (64, 100_000),
                "te_small_stage2_data": (32, 20_000), "te_small_stage2_data_short": (32, 20_000)}
    short = name.endswith("_short")
    assert dm.hparams.caption_style == ("short" if short else "varied")
    assert dm.vocabulary.max_length == (SHORT_CAPTION_LENGTH if short else MAX_CAPTION_LENGTH)
    assert (dm.hparams.canvas_size, dm.hparams.train_size) == expected[name]
    # same generator as the stage-1 data of that scale, so both stages share the train split
    stage1 = "configs/experiments/te_small_vqgan_sc.yaml" if "small" in name else "configs/tokenizers/te_vqgan_sc.yaml"
    s1 = yaml.safe_load((ROOT / stage1).read_text())["data"]["init_args"]
    assert s1["seed"] == dm.hparams.seed and s1["source"] == dm.hparams.source
    assert s1["canvas_size"] == dm.hparams.canvas_size


# ----------------------------------------------------------------------- script helpers
def test_summarize_fmt_and_top_k(rt):
    s = rt.summarize([0.5, 0.7, None])
    assert s["n"] == 2 and math.isclose(s["mean"], 0.6) and math.isclose(s["std"], math.sqrt(0.02))
    assert rt.summarize([0.25]) == {"mean": 0.25, "std": None, "n": 1, "min": 0.25}
    assert rt.summarize([0.9, 0.79, 0.85])["min"] == 0.79
    assert rt.summarize([None])["mean"] is None
    assert rt.fmt(s) == "0.600 (0.141)" and rt.fmt(rt.summarize([])) == "n/a"
    # the reference's rule: 10 % of the joint text + image vocabulary, capped by the generated modality
    assert rt.top_k_for(53 + 128, 128) == rt.top_k_for(53 + 128, 53) == 18
    assert rt.top_k_for(256, 200) == 25  # the reference's setting: 25 of 256
    assert rt.top_k_for(30, 20) == 2  # int((1 - 0.9) * 30) = int(2.9999...) = 2, as in the reference
    assert rt.top_k_for(5, 5) == 1 and rt.top_k_for(63, 3) == 3
    with pytest.raises(ValueError):
        rt.top_k_for(10, 11)
    assert rt.scaled(1000, 0.5) == 500 and rt.scaled(500, 0.001, 0) == 0 and rt.scaled(3, 0.01) == 1


def test_single_device_overrides_keep_the_effective_batch_and_rate(rt):
    cfg = yaml.safe_load((ROOT / "configs" / "tokenizers" / "te_vqgan_sc.yaml").read_text())
    args, notes = rt.single_device_overrides(cfg, "tokenizer")
    got = dict(zip(args[::2], args[1::2]))
    assert got["--data.init_args.batch_size"] == "192"
    assert math.isclose(float(got["--model.init_args.optimizer.init_args.lr"]), 1.536e-3) and len(notes) == 2
    cfg2 = yaml.safe_load((ROOT / "configs" / "experiments" / "te_stage2_sc.yaml").read_text())
    args2, _ = rt.single_device_overrides(cfg2, "prior")
    assert args2 == ["--data.init_args.batch_size", "200"]  # the prior's lr is not scaled
    small = yaml.safe_load((ROOT / "configs" / "experiments" / "te_small_vqgan_sc.yaml").read_text())
    assert rt.single_device_overrides(small, "tokenizer") == ([], [])


def fake_results(rt, values):
    runs = []
    for v in values:
        ev = {d: {**{f"{q}/digit": v + i / 100 for i, q in enumerate(rt.QUADS)},
                  **{f"{q}/color": 1.0 for q in rt.QUADS}, "all/digit": v} for d in ("t2i", "i2t")}
        runs.append({
            "stage1": {}, "fashion": {},
            "table3": {k: {"codes_used": 10.0 + 100 * (k == "sc"), "l1": v, "perceptual": None, "equivariance": v,
                           "codebook_size": 128} for k in ("sc", "ours")},
            "stage2": {k: {"eval": ev, "oracle": ev["t2i"], "train_pairs": 300,
                           "eval_seen": {d: {"all/digit": v / 2, "all/color": 0.9, "Quad1/digit": v}
                                         for d in ("t2i", "i2t")},
                           "oracle_seen": {"all/digit": 0.95},
                           "eval_greedy": {"seen": {"all/digit": 0.9},
                                           "held_out": {**{f"{q}/digit": 0.6 for q in rt.QUADS}, "all/digit": v}}}
                       for k in ("sc", "ours")},
            "table2": {k: {"eval": {"t2i": {"Quad1/digit": v - 0.1}}, "train_pairs": 100} for k in ("sc", "ours")},
        })
    return {"scale": "small", "tokenizers": ["sc", "ours"], "runs": runs, "options": {"budget_scale": 1.0}}


def test_tables_average_runs_and_markdown_sits_beside_the_paper(rt):
    res = fake_results(rt, [0.5, 0.7])
    tables = rt.build_tables(res)
    q2 = tables["table1"]["sc"]["t2i/Quad2/digit"]
    assert math.isclose(q2["mean"], 0.61) and math.isclose(q2["std"], math.sqrt(0.02)) and q2["n"] == 2
    t2 = tables["table2"]["ours"]
    assert math.isclose(t2["full"]["mean"], 0.6) and math.isclose(t2["reduced"]["mean"], 0.5)
    assert math.isclose(t2["diff"]["mean"], 0.1) and t2["train_pairs"] == {"full": 300, "reduced": 100}
    assert tables["table3"]["mnist"]["sc"]["codes_used"]["mean"] == 110.0
    assert tables["table3"]["mnist"]["sc"]["perceptual"]["mean"] is None
    md = rt.render_markdown(res)
    assert "| SC (VQGAN), measured | 0.600 (0.141) | 0.610 (0.141)" in md
    assert "| Ours (TE-VQGAN), paper | 0.931 (0.033) | 0.913 (0.032) | 0.890 (0.048) | 0.868 (0.059)" in md
    assert "| MNIST | Ours (TE-VQGAN), paper | 14 | 0.0084 | 0.0048 | n/a |" in md
    assert "0.073" in md  # the paper's table-2 difference for VQGAN
    assert "NOT FINISHED" in md  # no "finished" stamp in these results
    # seen pairs: mean over runs of the validation-split accuracies, beside nothing from the paper
    assert math.isclose(tables["table1"]["ours"]["seen/i2t/all/digit"]["mean"], 0.3)
    # columns: T->I digit, T->I color, T->I digit Quad1, I->T digit, I->T color, reconstruction ceiling
    # ... and the share of it the prior reaches (0.3 / 0.95)
    assert ("| Ours (TE-VQGAN) | 0.300 (0.071) | 0.900 (0.000) | 0.600 (0.141) | 0.300 (0.071) | 0.900 (0.000) "
            "| 0.950 (0.000) | 0.32 |") in md
    assert "Tokenizer under the bar" not in md
    low = fake_results(rt, [0.5, 0.7])
    for run in low["runs"]:
        run["stage2"]["ours"]["oracle_seen"]["all/digit"] = 0.7
    low_md = rt.render_markdown(low)
    assert ("**Tokenizer under the bar**: the classifier reads fewer than 0.8 of the digits in the reconstructions "
            "of Ours (TE-VQGAN) (0.700),") in low_md and "SC (VQGAN) (0.950)" not in low_md
    # greedy decoding: its own table, over the bar on seen pairs here (0.9)
    assert "## Table 1 with greedy decoding (not the reference's rule)" in md
    assert "| SC (VQGAN) | 0.900 (0.000) | 0.600 (0.000) | 0.600 (0.000) | 0.600 (0.000) | 0.600 (0.000) | 0.600 (0.141) |" in md
    assert "Every prior (every seed) is over the bar on seen pairs when decoded greedily" in md
    # judged per seed: a mean over the bar (0.85) with one seed under it (0.79) is named
    res["runs"][1]["stage2"]["ours"]["eval_greedy"]["seen"]["all/digit"] = 0.79
    md2 = rt.render_markdown(res)
    assert "Below the bar on seen pairs even greedily: Ours (TE-VQGAN) (mean 0.845, lowest seed 0.790)." in md2
    assert "Every prior" not in md2
    # a prior below the seen-pair bar (0.8) marks table 1 as not a result
    assert "**Table 1 is not a result here**" in md and "Ours (TE-VQGAN) 0.300" in md
    # judged per seed too: a mean over the bar (0.825) with one seed under it (0.75) is not a result either
    for r, v in zip(res["runs"], (0.9, 0.75)):
        for key in ("sc", "ours"):
            r["stage2"][key]["eval_seen"]["t2i"]["all/digit"] = v
    assert "Ours (TE-VQGAN) 0.825 (lowest seed 0.750)" in rt.render_markdown(res)
    for run in res["runs"]:
        for key in run["stage2"]:
            for d in ("t2i", "i2t"):
                run["stage2"][key]["eval_seen"][d]["all/digit"] = 0.85
    res.pop("tables", None)
    assert "not a result" not in rt.render_markdown(res)


class LookupTokenizer(nn.Module):
    """Token = position of the image among ``images`` (an exact lookup), shape (B, 1, 1)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab_size, self.token_shape = len(images), (1, 1)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        d = (x.flatten(1)[:, None] - self.images.flatten(1)[None]).abs().sum(-1)
        return d.argmin(1).view(-1, 1, 1)

    def detokenize(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx.flatten()]


class LookupPrior(nn.Module):
    """t2i: the token of the test image whose caption ids match; i2t: that image's caption ids."""

    def __init__(self, text: torch.Tensor) -> None:
        super().__init__()
        self.text = text
        self.vocab_size, self.text_vocab_size = len(text), VOCAB_SIZE
        self.calls: list[int] = []
        self.modes: set[tuple] = set()

    def generate(self, n, condition, temperature, top_k, generator):  # noqa: ANN001
        # the reference rule (joint top-k, temperature 1) or greedy decoding (no top-k, temperature 0)
        assert (top_k, temperature) in ((6, 1.0), (None, 0.0)) and condition.shape == (n, MAX_CAPTION_LENGTH)
        self.calls.append(n)
        self.modes.add((top_k, temperature))
        match = (condition[:, None] == self.text[None]).all(-1).float().argmax(1)
        return match.view(n, 1, 1)

    def generate_text(self, tokens, temperature, top_k, generator):  # noqa: ANN001
        assert top_k == 6
        return self.text[tokens.flatten()]


class ColorOnlyClassifier(nn.Module):
    """Reads the color from the crop's channel maxima; always answers label 0."""

    crop_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, crops: torch.Tensor):  # noqa: ANN201
        peak = (crops.amax(dim=(2, 3)) + 1) / 2  # (B, 3) in [0, 1]
        white = (peak > 0.5).all(1)
        color = torch.where(white, torch.zeros_like(white, dtype=torch.long), peak.argmax(1) + 1)
        label = torch.zeros(crops.shape[0], 10)
        label[:, 0] = 1.0
        return nn.functional.one_hot(color, 4).float(), label


def test_evaluate_prior_scores_a_perfect_generator(rt):
    """Exact lookups give i2t accuracy 1, t2i color accuracy 1, and a digit accuracy
    equal to the share of label-0 objects (what an always-0 classifier earns)."""
    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml",
                             canvas_size=16, train_size=4, val_size=4, test_size=12)
    items = rt.collect_test_items(dm, batch_size=5)
    assert items["images"].shape == (12, 3, 16, 16) and len(items["captions"]) == 12
    prior, tok = LookupPrior(items["text"]), LookupTokenizer(items["images"])
    prior.vocab_size = 10  # the lookup ignores top_k; the call must pass the joint-vocabulary k
    res = rt.evaluate_prior(prior, tok, ColorOnlyClassifier(), items, seed=0, device=torch.device("cpu"),
                            batch_size=5)
    assert prior.calls == [5, 5, 2]  # generated in chunks of the eval batch
    k = max(int((1 - 0.9) * (10 + VOCAB_SIZE)), 1)  # 6
    assert res["num_test"] == 12 and res["t2i_top_k"] == min(k, 10) == 6 and res["i2t_top_k"] == 6
    assert res["i2t"]["all/digit"] == 1.0 and res["i2t"]["all/exact"] == 1.0
    assert res["t2i"]["all/color"] == 1.0
    labels = [int(t[p, 1]) for t in items["layout"] for p in range(4) if int(t[p, 0]) >= 0]
    assert math.isclose(res["t2i"]["all/digit"], float(np.mean([lab == 0 for lab in labels])))
    assert sum(res["t2i"][f"{q}/images"] for q in rt.QUADS if f"{q}/images" in res["t2i"]) == 12
    assert res["i2t_examples"][0]["generated"] == items["captions"][0]
    oracle = rt.reconstruction_oracle(tok, ColorOnlyClassifier(), items, torch.device("cpu"), batch_size=5)
    assert oracle == res["t2i"]


def test_eval_unit_records_both_rules_and_the_reconstruction_reference(rt, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml").read_text())
    cfg["data"]["init_args"].update(canvas_size=16, train_size=4, val_size=12, test_size=12)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(cfg))
    repro = rt.Reproduction(rt.Options(scale="small", work_dir=tmp_path, out=tmp_path / "res", stage2_data=str(data)))
    items = repro.test_items()
    seen = repro.seen_items()
    prior = LookupPrior(torch.cat([items["text"], seen["text"]]))
    tok = LookupTokenizer(torch.cat([items["images"], seen["images"]]))
    prior.vocab_size = 10
    repro.eval_unit("sc", 0, prior, tok, ColorOnlyClassifier(), reduced=False)
    slot = repro.results["runs"][0]["stage2"]["sc"]
    assert set(slot) >= {"eval", "oracle", "eval_seen", "oracle_seen", "eval_greedy"}
    assert prior.modes == {(6, 1.0), (None, 0.0)}
    # the lookup prior ignores the rule, so greedy and sampled held-out images are the same ones
    assert slot["eval_greedy"]["held_out"] == slot["eval"]["t2i"] and slot["oracle"] == slot["eval"]["t2i"]
    assert set(slot["eval_greedy"]) == {"held_out", "seen"}
    row = rt.build_tables(repro.results)["table1"]["sc"]
    assert row["greedy/held_out/all/digit"]["mean"] == slot["eval"]["t2i"]["all/digit"]


def test_seen_items_come_from_validation_and_never_hold_a_held_out_pair(rt):
    from vqzoo.experiments.te.quadrants import layout_from_tensor

    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml",
                             canvas_size=16, train_size=4, val_size=9, test_size=6)
    seen = rt.collect_test_items(dm, batch_size=4, split="val", limit=6)
    test = rt.collect_test_items(dm, batch_size=4)
    assert seen["images"].shape == test["images"].shape == (6, 3, 16, 16) and len(seen["captions"]) == 6
    held = dm.heldout
    seen_objs = [o for t in seen["layout"] for o in layout_from_tensor(t)]
    test_objs = [o for t in test["layout"] for o in layout_from_tensor(t)]
    assert seen_objs and not any(held.is_held_out(o.label, o.color, o.position) for o in seen_objs)
    assert all(held.is_held_out(o.label, o.color, o.position) for o in test_objs)


def test_stage1_table3_counts_codes_of_an_exact_tokenizer(rt):
    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_vqgan_sc.yaml",
                             canvas_size=16, train_size=4, val_size=4, test_size=6, batch_size=4)
    dm.setup("test")
    images = torch.cat([b["images"] for b in dm.test_dataloader()])
    tok = LookupTokenizer(images)
    # equivariance needs a spatial map with an even side: repeat the lookup token on 2x2
    tok.tokenize = lambda x: LookupTokenizer.tokenize(tok, x).expand(-1, 2, 2)
    tok.detokenize = lambda idx: images[idx[:, 0, 0]]
    rep = rt.stage1_table3(tok, dm, n_objects=3, perceptual=None, device=torch.device("cpu"))
    assert rep["codes_used"] == 6.0 and rep["l1"] == 0.0 and rep["perceptual"] is None
    assert rep["codebook_size"] == 6 and rep["equivariance_objects"] == 3
    assert 0.0 <= rep["equivariance"] <= 1.0


class RandomTokenizer(nn.Module):
    """Any image -> fixed pseudo-random 8x8 tokens < 128 (a stand-in for a trained tokenizer)."""

    vocab_size, token_shape = 128, (8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        seed = (x.flatten(1).sum(1) * 1000).long().abs()
        return (seed[:, None] * torch.arange(1, 65) % 128).view(-1, 8, 8)


def test_fit_config_trains_the_small_stage2_config_and_the_checkpoint_reloads(rt, tmp_path, capsys):
    from torch.utils.data import DataLoader

    from vqzoo.checkpoint import load
    from vqzoo.tokenizers.encode import encode_tokens

    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml",
                             train_size=8, val_size=4, test_size=4)
    dm.setup("fit")
    for split in ("train", "test"):
        encode_tokens(RandomTokenizer(), DataLoader(dm.datasets[split], batch_size=4), tmp_path / split)
    overrides = ["--data.init_args.root", str(tmp_path / "train"), "--data.init_args.val_root", str(tmp_path / "test"),
                 "--data.init_args.batch_size", "4", "--model.init_args.n_layer", "1", "--model.init_args.n_head", "1",
                 "--model.init_args.n_embd", "16", "--model.init_args.warmup_steps", "1"]
    prior, _, info = rt.fit_config("configs/experiments/te_small_stage2.yaml", overrides, 7, tmp_path / "fit",
                                   "tiny", "cpu")
    assert info["batches"] == 2 and info["seed"] == 7 and not prior.training  # 1 epoch x 2 batches
    assert "[tiny] 2/2 loss" in capsys.readouterr().out
    again = load(info["checkpoint"])
    for (name, a), (_, b) in zip(prior.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert math.isfinite(info["logged"]["val/loss"])


def test_reuse_needs_the_same_signature(rt, tmp_path):
    repro = rt.Reproduction(rt.Options(scale="small", reuse=True, work_dir=tmp_path, out=tmp_path / "res"))
    out = tmp_path / "unit"
    out.mkdir()
    sig = {"config": "c.yaml", "overrides": ["--data.init_args.train_size", "10"], "seed": 23}
    assert not repro.reusable(out, sig)  # no checkpoint
    (out / "model.ckpt").write_bytes(b"x")
    assert not repro.reusable(out, sig)  # no signature: trained by something else
    repro.sign(out, sig)
    assert repro.reusable(out, sig)
    assert not repro.reusable(out, {**sig, "seed": 24})
    assert not repro.reusable(out, {**sig, "overrides": ["--data.init_args.train_size", "20"]})
    repro.opts.reuse = False
    assert not repro.reusable(out, sig)
    with pytest.raises(ValueError, match="stage2-scale"):
        rt.Reproduction(rt.Options(scale="small", stage2_scale=0.0, work_dir=tmp_path))


def test_tokens_are_reused_only_from_the_same_data_config(rt, tmp_path):
    """--stage2-data switches captions (and text length); tokens of the other config are re-encoded."""
    short = "configs/experiments/te_small_stage2_data_short.yaml"
    opts = rt.Options(scale="small", reuse=True, work_dir=tmp_path, out=tmp_path / "res", budget_scale=0.001,
                      stage2_data=short)
    repro = rt.Reproduction(opts)
    repro.results["runs"][0]["stage1"]["sc"] = {"reused": True}
    dirs = repro.encode_unit("sc", 0, RandomTokenizer(), reduced=False)
    text = np.load(dirs["train"] / "text.npy")
    assert text.shape == (20, SHORT_CAPTION_LENGTH)  # 20K pairs x 0.001
    stamp = (dirs["train"] / "meta.json").stat().st_mtime_ns
    repro.encode_unit("sc", 0, RandomTokenizer(), reduced=False)
    assert (dirs["train"] / "meta.json").stat().st_mtime_ns == stamp  # same data config: reused
    varied = rt.Reproduction(rt.Options(scale="small", reuse=True, work_dir=tmp_path, out=tmp_path / "res",
                                        budget_scale=0.001))
    varied.results["runs"][0]["stage1"]["sc"] = {"reused": True}
    varied.encode_unit("sc", 0, RandomTokenizer(), reduced=False)
    assert np.load(dirs["train"] / "text.npy").shape == (20, MAX_CAPTION_LENGTH)  # other config: re-encoded
    assert varied.test_items()["text"].shape[1] == MAX_CAPTION_LENGTH
    assert repro.test_items()["text"].shape[1] == SHORT_CAPTION_LENGTH
    assert repro.results["stage2_data"] == {"config": short, "caption_style": "short", "text_length": 24}
    assert varied.results["stage2_data"]["caption_style"] == "varied"
    text = rt.render_markdown(repro.results)
    assert "**Captions are not the paper's**" in text and f"data `{short}`" in text
    assert "not the paper's" not in rt.render_markdown(varied.results)


def test_a_reused_prior_brings_back_what_its_training_recorded(rt, tmp_path):
    tiny = ("--data.init_args.batch_size", "4", "--model.init_args.n_layer", "1", "--model.init_args.n_head", "1",
            "--model.init_args.n_embd", "16")
    opts = rt.Options(scale="small", reuse=True, work_dir=tmp_path, out=tmp_path / "res", budget_scale=0.001,
                      stage2_overrides=tiny)
    repro = rt.Reproduction(opts)
    repro.results["runs"][0]["stage1"]["sc"] = {"reused": True}
    dirs = repro.encode_unit("sc", 0, RandomTokenizer(), reduced=False)
    repro.stage2_unit("sc", 0, dirs, reduced=False)
    first = repro.results["runs"][0]["stage2"]["sc"]["training"]
    assert first["batches"] == 5 and "reused" not in first  # 20 pairs, batch 4, 1 epoch
    again = rt.Reproduction(opts)
    again.results["runs"][0]["stage1"]["sc"] = {"reused": True}
    again.results["runs"][0]["stage2"]["sc"] = {"train_pairs": 20}
    again.stage2_unit("sc", 0, dirs, reduced=False)
    info = again.results["runs"][0]["stage2"]["sc"]["training"]
    assert info["reused"] and info["train_seconds"] == first["train_seconds"] and info["batches"] == 5


class DecodingRandomTokenizer(RandomTokenizer):
    """RandomTokenizer that also decodes: 8x8 tokens -> a 3x32x32 image in [-1, 1]."""

    def detokenize(self, idx: torch.Tensor) -> torch.Tensor:
        img = (idx.float() / 63.5 - 1).repeat_interleave(4, 1).repeat_interleave(4, 2)
        return img[:, None].expand(-1, 3, -1, -1)


def test_seen_pair_probe_records_a_curve_and_leaves_training_unchanged(rt, tmp_path):
    """Probing every step samples with its own generator, so the trained weights are bit-identical."""
    from torch.utils.data import DataLoader

    from vqzoo.tokenizers.encode import encode_tokens

    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml",
                             train_size=12, val_size=4, test_size=4)
    dm.setup("fit")
    for split in ("train", "test"):
        encode_tokens(RandomTokenizer(), DataLoader(dm.datasets[split], batch_size=4), tmp_path / split)
    seen = rt.collect_test_items(dm, batch_size=4, split="val")
    overrides = ["--data.init_args.root", str(tmp_path / "train"), "--data.init_args.val_root", str(tmp_path / "test"),
                 "--data.init_args.batch_size", "4", "--model.init_args.n_layer", "1", "--model.init_args.n_head", "1",
                 "--model.init_args.n_embd", "16", "--model.init_args.warmup_steps", "1"]
    probe = rt.SeenPairProbe(DecodingRandomTokenizer(), ColorOnlyClassifier(), seen, every=2, seed=3,
                             device=torch.device("cpu"), batch_size=4, label="p")
    probed, _, _ = rt.fit_config("configs/experiments/te_small_stage2.yaml", overrides, 7, tmp_path / "a", "a", "cpu",
                                 [probe])
    plain, _, _ = rt.fit_config("configs/experiments/te_small_stage2.yaml", overrides, 7, tmp_path / "b", "b", "cpu")
    assert [p["step"] for p in probe.curve] == [2, 3]  # every 2 steps, plus the last of 3
    for p in probe.curve:
        assert set(p) == {"step", "seconds", "t2i/digit", "t2i/color", "i2t/digit", "i2t/color"}
        assert all(0.0 <= p[k] <= 1.0 for k in p if "/" in k)
    for (name, a), (_, b) in zip(probed.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="probe every"):
        rt.SeenPairProbe(None, None, seen, every=0, seed=0, device=torch.device("cpu"), batch_size=4)


def test_seen_curves_render_one_column_per_prior(rt):
    curve = [{"step": 250, "t2i/digit": 0.25, "i2t/digit": 0.5}, {"step": 500, "t2i/digit": 0.75, "i2t/digit": 1.0}]
    results = {"runs": [{"stage2": {"sc": {"training": {"seen_curve": curve, "seen_curve_items": 200}}}},
                        {"stage2": {"sc": {"training": {"seen_curve": curve[:1]}}}}]}
    text = "\n".join(rt.render_seen_curves(results))
    assert "| step | SC (VQGAN) run 0 | SC (VQGAN) run 1 |" in text and "first 200 validation pairs" in text
    assert "| 500 | 0.750 / 1.000 |  |" in text
    assert rt.render_seen_curves({"runs": [{"stage2": {}}]}) == []


def test_merge_results_joins_one_process_per_tokenizer(rt):
    def part(key, acc, started, elapsed):
        run = {"stage1": {key: {"seed": 23}}, "table3": {}, "stage2": {key: {"eval": {"t2i": {"Quad1/digit": acc}}}},
               "table2": {}, "fashion": {}}
        return {"scale": "small", "seeds": {"stage2": [42]}, "tokenizers": [key], "runs": [run],
                "timings_s": {f"stage2 {key} run0": elapsed}, "errors": [], "skipped": [], "notes": ["n"],
                "command": f"--tokenizers {key}", "started": started, "finished": started, "elapsed_s": elapsed}

    merged = rt.merge_results([part("ours", 0.5, "2026-01-02", 30.0), part("sc", 0.25, "2026-01-01", 20.0)])
    assert merged["tokenizers"] == ["sc", "ours"] and merged["notes"] == ["n"]
    assert merged["started"] == "2026-01-01" and merged["finished"] == "2026-01-02" and merged["elapsed_s"] == 30.0
    assert merged["command"] == "--tokenizers ours && --tokenizers sc"
    assert "stage1_configs" not in merged["options"]
    # each part's replaced stage-1 config survives the merge and is named in the report
    a, b = part("ours", 0.5, "a", 1.0), part("sc", 0.25, "b", 1.0)
    a["options"], b["options"] = {"stage1_configs": {"ours": "o.yaml"}}, {"stage1_configs": {"sc": "s.yaml"}}
    both = rt.merge_results([a, b])
    assert both["options"]["stage1_configs"] == {"ours": "o.yaml", "sc": "s.yaml"}
    assert "SC (VQGAN) `s.yaml`" in rt.render_markdown(both) and "Ours (TE-VQGAN) `o.yaml`" in rt.render_markdown(both)
    t2 = merged["tables"]["table2"]
    assert t2["sc"]["full"]["mean"] == 0.25 and t2["ours"]["full"]["mean"] == 0.5
    with pytest.raises(ValueError, match="more than one part"):
        rt.merge_results([part("sc", 0.1, "a", 1.0), part("sc", 0.2, "b", 1.0)])
    other = part("ours", 0.1, "a", 1.0)
    other["seeds"] = {"stage2": [43]}
    with pytest.raises(ValueError, match="different seeds"):
        rt.merge_results([part("sc", 0.1, "a", 1.0), other])


def test_merge_results_adds_later_seeds_from_first_run_parts(rt):
    """A seed trained later with --first-run 2 (one process per tokenizer) joins a two-seed results file."""
    def run(keys, acc):
        return {"stage1": {k: {"seed": 23} for k in keys}, "table3": {},
                "stage2": {k: {"eval": {"t2i": {"Quad1/digit": acc}}} for k in keys}, "table2": {}, "fashion": {}}

    def empty():
        return {slot: {} for slot in ("stage1", "table3", "stage2", "table2", "fashion")}

    old = {"scale": "small", "seeds": {"stage1": [23], "stage2": [42, 43]}, "tokenizers": ["sc", "ours"],
           "runs": [run(["sc", "ours"], 0.5), run(["sc", "ours"], 0.7)], "timings_s": {}, "errors": [],
           "skipped": [], "notes": [], "command": "old", "started": "a", "finished": "a", "elapsed_s": 5.0}

    def later(key, acc):
        return {"scale": "small", "seeds": {"stage1": [23], "stage2": [42, 43, 44], "first_run": 2},
                "tokenizers": [key], "runs": [empty(), empty(), run([key], acc)], "timings_s": {"x": 1.0},
                "errors": [], "skipped": [], "notes": [], "command": key, "started": "b", "finished": "b",
                "elapsed_s": 9.0}

    merged = rt.merge_results([old, later("sc", 0.9), later("ours", 0.3)])
    assert merged["seeds"]["stage2"] == [42, 43, 44] and merged["seeds"]["first_run"] == 0
    assert len(merged["runs"]) == 3 and merged["tokenizers"] == ["sc", "ours"]
    assert merged["options"]["runs"] == 3 and merged["options"]["first_run"] == 0
    full = {k: merged["tables"]["table2"][k]["full"] for k in ("sc", "ours")}
    assert full["sc"]["n"] == 3 and full["sc"]["mean"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert full["ours"]["n"] == 3 and full["ours"]["mean"] == pytest.approx((0.5 + 0.7 + 0.3) / 3)
    # the earlier runs are untouched; a seed trained twice is refused; stage-2 seeds must extend each other
    assert merged["runs"][0]["stage2"]["sc"]["eval"]["t2i"]["Quad1/digit"] == 0.5
    with pytest.raises(ValueError, match=r"\['sc run2'\] are in more than one part"):
        rt.merge_results([old, later("sc", 0.9), later("sc", 0.8)])
    shifted = later("sc", 0.9)
    shifted["seeds"]["stage2"] = [50, 51, 52]
    with pytest.raises(ValueError, match="different seeds"):
        rt.merge_results([old, shifted])
    short = later("sc", 0.9)
    short["runs"] = short["runs"][2:]
    with pytest.raises(ValueError, match="1 runs but stage-2 seeds"):
        rt.merge_results([old, short])


def test_evaluate_prior_greedy_diagnostic_and_no_classifier(rt):
    """t2i_temperature 0 decodes greedily without top-k; image->text needs no classifier, text->image does."""
    dm = rt.build_datamodule(ROOT / "configs" / "experiments" / "te_small_stage2_data.yaml",
                             canvas_size=16, train_size=4, val_size=4, test_size=5)
    items = rt.collect_test_items(dm, batch_size=5)
    prior, tok = LookupPrior(items["text"]), LookupTokenizer(items["images"])
    prior.vocab_size = 10  # joint top-k 6, as LookupPrior expects
    calls = []
    prior.generate = lambda n, condition, temperature, top_k, generator: (
        calls.append((temperature, top_k)) or LookupPrior.generate(prior, n, condition, 1.0, 6, generator))
    res = rt.evaluate_prior(prior, tok, ColorOnlyClassifier(), items, seed=0, device=torch.device("cpu"),
                            batch_size=5, directions=("t2i",), t2i_temperature=0.0)
    assert calls == [(0.0, None)] and res["t2i_top_k"] is None and res["t2i"]["all/color"] == 1.0
    res = rt.evaluate_prior(prior, tok, None, items, seed=0, device=torch.device("cpu"), batch_size=5,
                            directions=("i2t",))
    assert res["i2t"]["all/digit"] == 1.0
    with pytest.raises(ValueError, match="needs a classifier"):
        rt.evaluate_prior(prior, tok, None, items, seed=0, device=torch.device("cpu"), batch_size=5)


def test_stage1_config_replaces_the_scales_config_for_one_tokenizer(rt, tmp_path, monkeypatch):
    """--stage1-config ours=...: that tokenizer trains from the given config, the others and Fashion keep the scale's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import reproduce_te

    l2 = "configs/experiments/te_small_vqgan_ours_l2.yaml"
    opts = reproduce_te.parse_args(["--tokenizers", "ours", "sc", "--stage1-config", f"ours={l2}",
                                    "--work-dir", str(tmp_path), "--out", str(tmp_path / "res")])
    assert opts.stage1_configs == {"ours": l2}
    assert reproduce_te.parse_args([]).stage1_configs is None
    with pytest.raises(SystemExit):
        reproduce_te.parse_args(["--stage1-config", "ours"])
    with pytest.raises(ValueError, match="unknown tokenizer 'xx'"):
        rt.Reproduction(rt.Options(scale="small", work_dir=tmp_path, stage1_configs={"xx": l2}))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        rt.Reproduction(rt.Options(scale="small", work_dir=tmp_path, stage1_configs={"ours": "nope.yaml"}))

    trained = []

    def fake_fit(config, overrides, seed, out_dir, label, accelerator, callbacks=()):
        trained.append(config)
        out_dir.mkdir(parents=True)
        return None, None, {}

    monkeypatch.setattr(rt, "fit_config", fake_fit)
    repro = rt.Reproduction(opts)
    for key, fashion in (("ours", False), ("sc", False), ("ours", True)):
        repro.stage1_unit(key, 0, fashion=fashion)
    assert trained == [l2, "configs/experiments/te_small_vqgan_sc.yaml", "configs/experiments/te_small_vqgan_ours.yaml"]
    assert f"Ours (TE-VQGAN) `{l2}`" in rt.render_markdown(repro.results)
    cfg = rt.read_yaml(l2)
    assert rt._get(cfg, "model.init_args.quantizer.init_args.distance") == "l2"
    base = rt.read_yaml("configs/experiments/te_small_vqgan_ours.yaml")
    base["model"]["init_args"]["quantizer"]["init_args"]["distance"] = "l2"
    base["trainer"]["default_root_dir"] = cfg["trainer"]["default_root_dir"]
    assert cfg == base  # one change from the cosine config: the distance


def test_first_run_trains_only_the_later_seeds_on_the_shared_stage1_seed(rt, tmp_path, monkeypatch):
    """--first-run 1 --runs 3 --shared-stage1: stage 1 once (seed 23, in run 1), stage 2 for runs 1 and 2 only."""
    with pytest.raises(ValueError, match="--first-run must be in"):
        rt.Reproduction(rt.Options(scale="small", runs=2, first_run=2, work_dir=tmp_path))
    fits, priors = [], []

    def fake_fit(config, overrides, seed, out_dir, label, accelerator, callbacks=()):
        fits.append((label, seed))
        out_dir.mkdir(parents=True)
        return None, None, {}

    monkeypatch.setattr(rt, "fit_config", fake_fit)
    repro = rt.Reproduction(rt.Options(scale="small", runs=3, first_run=1, shared_stage1=True, table2=False,
                                       tokenizers=("sc",), work_dir=tmp_path, out=tmp_path / "res"))
    monkeypatch.setattr(repro, "classifier_unit", lambda: None)
    monkeypatch.setattr(repro, "table3_unit", lambda *a, **k: None)
    monkeypatch.setattr(repro, "encode_unit", lambda key, run, *a: {"run": run})
    monkeypatch.setattr(repro, "stage2_unit", lambda key, run, dirs, *a: priors.append((run, dirs["run"])) or "prior")
    monkeypatch.setattr(repro, "eval_unit", lambda *a: None)
    monkeypatch.setattr(repro, "write", lambda: None)
    assert repro.run() == 0
    assert fits == [("stage1 sc run1", 23)] and priors == [(1, 1), (2, 1)]
    runs = repro.results["runs"]
    assert runs[0] == {slot: {} for slot in ("stage1", "table3", "stage2", "table2", "fashion")}
    assert runs[2]["stage1"]["sc"]["shared_from_run"] == 1
    assert repro.results["seeds"] == {"stage1": [23], "stage2": [42, 43, 44], "classifier": None, "data": 0,
                                      "first_run": 1}


@pytest.mark.parametrize("stem", ["te_small_vqgan_sc", "te_small_vqgan_ours_l2"])
def test_four_epoch_tokenizer_configs_change_only_the_epochs(rt, stem):
    # table 1 on the 4-epoch pair compares priors on tokenizers trained for equal steps
    base = rt.read_yaml(f"configs/experiments/{stem}.yaml")
    longer = rt.read_yaml(f"configs/experiments/{stem}_4ep.yaml")
    assert (base["trainer"]["max_epochs"], longer["trainer"]["max_epochs"]) == (2, 4)
    base["trainer"]["max_epochs"] = 4
    base["trainer"]["default_root_dir"] = f"runs/te_small/{stem}_4ep"
    assert longer == base
