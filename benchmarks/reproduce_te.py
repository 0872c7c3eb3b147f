"""Reproduce tables 1-3 of the TE-VQGAN paper: the command line of :mod:`vqzoo.experiments.te.runner`.

What runs, the scales, the decisions and the timings are described in that
module's docstring (``python benchmarks/reproduce_te.py --help`` prints its
summary).

Usage::

    PYTHONPATH=. python benchmarks/reproduce_te.py --scale small --threads 1
    PYTHONPATH=. python benchmarks/reproduce_te.py --scale paper --all-baselines --runs 3
    PYTHONPATH=. python benchmarks/reproduce_te.py --preset gpu10    # one 10-minute GPU run
    PYTHONPATH=. python benchmarks/reproduce_te.py --preset paper    # the paper's scale, 3 seeds
    # one process per tokenizer (one per core), then one results file:
    PYTHONPATH=. python benchmarks/reproduce_te.py --tokenizers sc --out /tmp/sc ... &
    PYTHONPATH=. python benchmarks/reproduce_te.py --tokenizers ours --out /tmp/ours ...
    PYTHONPATH=. python benchmarks/reproduce_te.py --merge /tmp/sc.json /tmp/ours.json --out RESULTS

Presets set defaults that explicit flags still override (see :data:`PRESETS`). Neither has
been run yet; the gpu10 sizes are an estimate for one 80 GB GPU.

Writes ``benchmarks/results/te_reproduction_{scale}.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vqzoo.experiments.te import runner
from vqzoo.experiments.te.runner import SCALES, Options, Reproduction, rerender


_GPU10_OVERRIDES = ("--trainer.precision", "bf16-mixed", "--data.init_args.batch_size", "128",
                    "--data.init_args.num_workers", "8")

#: Named option sets. ``gpu10``: the small-scale configs (32x32 canvases, 8x8 tokens) on one GPU
#: with bf16 autocast and batch 128 (4x), twice the stage-1 images and 8x the stage-2 pairs, one
#: seed, SC and TE only, no table 2. Stage 1 is the 4-epoch pair (SC, and TE with the paper's L2
#: distance), whose reconstructions both read well; stage 2 is the CPU protocol on which SC passed
#: the seen-pair bar (short captions, alternating directions, 12 epochs: te_small_stage2_short_12ep.yaml),
#: judged on seen pairs every 1,000 steps (benchmarks/results/notes/te_stage2_cpu_protocol.md).
#: ``paper``: the paper-scale configs, all baselines, tables 1-3, 3 seeds, on a GPU.
PRESETS: dict[str, dict] = {
    "gpu10": dict(scale="small", accelerator="gpu", work_dir=runner.ROOT / "runs" / "te_reproduction_gpu10",
                  out=runner.RESULTS_DIR / "te_reproduction_gpu10", budget_scale=2.0, stage2_scale=4.0, runs=1, table2=False,
                  all_baselines=False, threads=8, stage1_overrides=_GPU10_OVERRIDES,
                  stage2_overrides=_GPU10_OVERRIDES, probe_every=1000,
                  stage1_config=["sc=configs/experiments/te_small_vqgan_sc_4ep.yaml",
                                 "ours=configs/experiments/te_small_vqgan_ours_l2_4ep.yaml"],
                  stage2_config="configs/experiments/te_small_stage2_short_12ep.yaml",
                  stage2_data="configs/experiments/te_small_stage2_data_short.yaml"),
    "paper": dict(scale="paper", accelerator="gpu", out=runner.RESULTS_DIR / "te_reproduction_paper_3seeds", runs=3, all_baselines=True, table2=True, threads=8),
}


def parse_args(argv: Sequence[str] | None = None) -> Options:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    preset = pre.parse_known_args(argv)[0].preset
    p = argparse.ArgumentParser(description=runner.__doc__.split("\n\n")[0], parents=[pre],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--all-baselines", action="store_true", help="also CB, MP and MB (table 1)")
    p.add_argument("--runs", type=int, default=1, help="repetitions with seeds 23+r (stage 1) and 42+r (stage 2)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every training length (train sizes, disc start, warm-up, classifier epochs)")
    p.add_argument("--stage2-scale", type=float, default=1.0,
                   help="multiply the stage-2 train pairs (and warm-up) only, on top of --budget-scale")
    p.add_argument("--no-table2", dest="table2", action="store_false", help="skip the reduced-data priors")
    p.add_argument("--fashion", action="store_true", help="also the Fashion-MNIST rows of table 3 (stage 1 only)")
    p.add_argument("--classifier", default=None, help="a trained QuadrantClassifier checkpoint to judge with")
    p.add_argument("--accelerator", default=None, help="cpu, gpu or auto (default: the scale's)")
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints and tokens (default runs/te_reproduction_SCALE)")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (default benchmarks/results/te_reproduction_SCALE)")
    p.add_argument("--reuse", action="store_true", help="load checkpoints/tokens an earlier run left in the work dir")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--shared-stage1", action="store_true",
                   help="runs r > 0 reuse run 0's tokenizers (stage-1 seed 23); only the stage-2 seed 42+r varies")
    p.add_argument("--first-run", type=int, default=0,
                   help="start at run R (stage-2 seed 42+R), e.g. to add a seed to an earlier results file with "
                        "--merge once its work dir is gone; with --shared-stage1 stage 1 is retrained with seed 23")
    p.add_argument("--probe-every", type=int, default=0,
                   help="judge each stage-2 prior on seen pairs every N steps while it trains (0: never)")
    p.add_argument("--probe-items", type=int, default=200, help="seen pairs per probe")
    p.add_argument("--tokenizers", nargs="+", default=None, choices=list(runner.TOKENIZER_ORDER),
                   help="only these tokenizers (e.g. one per process, sharing --work-dir)")
    p.add_argument("--stage2-config", default=None,
                   help="one stage-2 config (repository-relative) for every tokenizer instead of the scale's")
    p.add_argument("--stage2-data", default=None,
                   help="the stage-2 data config (repository-relative) instead of the scale's, e.g. short captions;"
                        " its text length must match the stage-2 config's")
    p.add_argument("--stage1-config", action="append", default=None, metavar="KEY=CONFIG",
                   help="a stage-1 config (repository-relative) replacing the scale's for tokenizer KEY, e.g. "
                        "ours=configs/experiments/te_small_vqgan_ours_l2.yaml; repeatable")
    p.add_argument("--render", type=Path, default=None,
                   help="only re-render the markdown of an existing results JSON (written beside it)")
    if preset is not None:
        p.set_defaults(**PRESETS[preset])
    a = vars(p.parse_args(argv))
    a.setdefault("stage1_overrides", ())
    a.setdefault("stage2_overrides", ())
    a["stage1_overrides"], a["stage2_overrides"] = tuple(a["stage1_overrides"]), tuple(a["stage2_overrides"])
    if a["tokenizers"] is not None:
        a["tokenizers"] = tuple(a["tokenizers"])
    specs = a.pop("stage1_config") or []
    bad = [spec for spec in specs if spec.count("=") != 1 or not all(spec.split("="))]
    if bad:
        p.error(f"--stage1-config takes KEY=CONFIG, got {bad}")
    a["stage1_configs"] = dict(spec.split("=") for spec in specs) or None
    return Options(**a)


def plot_seen_curves(results: dict, path: Path) -> bool:
    """PNG of every stage-2 prior's seen-pair digit accuracy against its step (``--probe-every``)."""
    curves = {}
    for r, run in enumerate(results.get("runs", [])):
        for key in runner.TOKENIZER_ORDER:
            curve = ((run.get("stage2", {}).get(key) or {}).get("training") or {}).get("seen_curve")
            if curve:
                curves[(key, r)] = curve
    if not curves:
        return False
    colors = {"sc": "tab:blue", "ours": "tab:red", "cb": "tab:green", "mp": "tab:purple", "mb": "tab:brown"}
    _plot_curves([(f"{runner.LABELS[key]} seed {42 + r}", curve, {"color": colors.get(key), "alpha": 1.0 - 0.25 * r})
                  for (key, r), curve in curves.items()], path, (10, 3.8), legend_size=8)
    return True


def _plot_curves(series: Sequence[tuple[str, list, dict]], path: Path, figsize: tuple[float, float],
                 legend_size: int) -> None:
    """Two panels (text->image, image->text) of seen-pair digit accuracy per step, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, d, title in ((axes[0], "t2i", "text -> image"), (axes[1], "i2t", "image -> text")):
        for label, curve, style in series:
            pts = [(p["step"], p[f"{d}/digit"]) for p in curve if f"{d}/digit" in p]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label, **style)
        ax.axhline(0.8, color="grey", ls="--", lw=0.8)
        ax.axhline(0.1, color="grey", ls=":", lw=0.8)
        ax.set(title=f"{title}: digit accuracy on seen pairs", xlabel="optimizer step", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: Sequence[str], out: Path) -> Path:
    """Merge results JSONs written by one process per tokenizer (``--tokenizers``) into ``out``."""
    import json

    merged = runner.merge_results([json.loads(Path(p).read_text()) for p in paths])
    out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=2) + "\n")
    out.with_suffix(".md").write_text(runner.render_markdown(merged))
    plot_seen_curves(merged, out.with_suffix(".png"))
    return out.with_suffix(".md")


def compare(specs: Sequence[str], out: Path) -> Path:
    """Seen-pair learning curves of several results files side by side: ``OUT.md`` and ``OUT.png``.

    Each spec is ``LABEL=PATH.json`` (e.g. ``varied=...long.json short=...short.json``); every prior
    with a recorded curve becomes one column "LABEL SC seed 42", followed by its final evaluation.
    """
    import json

    curves: dict[str, list[dict]] = {}
    finals: dict[str, dict] = {}
    sources = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--compare takes LABEL=RESULTS.json, got {spec!r}")
        res = json.loads(Path(path).read_text())
        sources.append(f"{label}: `{path}` (`{res.get('command', '')}`)")
        for r, run in enumerate(res.get("runs", [])):
            for key in runner.TOKENIZER_ORDER:
                slot = run.get("stage2", {}).get(key) or {}
                curve = (slot.get("training") or {}).get("seen_curve")
                if curve:
                    name = f"{label} {runner.LABELS[key]} seed {res['seeds']['stage2'][r]}"
                    curves[name] = curve
                    finals[name] = {"seen": (slot.get("eval_seen") or {}).get("t2i", {}).get("all/digit"),
                                    "held": ((slot.get("eval") or {}).get("t2i") or {}).get("all/digit"),
                                    "seconds": (slot.get("training") or {}).get("train_seconds")}
    if not curves:
        raise SystemExit("no seen-pair curves in " + ", ".join(specs))
    steps = sorted({p["step"] for c in curves.values() for p in c})
    cell = lambda p: f"{p['t2i/digit']:.3f} / {p['i2t/digit']:.3f}" if p else ""  # noqa: E731
    lines = ["# TE stage 2: seen-pair learning curves compared", "",
             "Digit accuracy on seen validation pairs (text->image / image->text), reference sampling rule "
             "(top-k over the joint vocabulary, temperature 1), measured while each prior trains. Sources:", "",
             *[f"* {x}" for x in sources], "",
             "| step | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for st in steps:
        lines.append(f"| {st} | " + " | ".join(cell(next((p for p in c if p["step"] == st), None))
                                              for c in curves.values()) + " |")
    num = lambda v, f="{:.3f}": "n/a" if v is None else f.format(v)  # noqa: E731
    lines += ["", "Final evaluation (400 pairs each): text->image digit accuracy on seen and on held-out pairs.", "",
              "| prior | seen | held-out | train minutes |", "|---|---|---|---|"]
    for name, f in finals.items():
        lines.append(f"| {name} | {num(f['seen'])} | {num(f['held'])} | "
                     f"{num(None if f['seconds'] is None else f['seconds'] / 60, '{:.0f}')} |")
    out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot_curves([(name, c, {}) for name, c in curves.items()], out.with_suffix(".png"), (11, 4), legend_size=7)
    return out.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Two file-only modes: --merge A.json B.json --out X, --compare LABEL=A.json ... --out X.
    modes = {"--merge": (merge, "A.json B.json"), "--compare": (compare, "LABEL=A.json LABEL=B.json")}
    if args[:1] and args[0] in modes:
        fn, inputs = modes[args[0]]
        if len(args) < 4 or "--out" not in args:
            raise SystemExit(f"usage: reproduce_te.py {args[0]} {inputs} [...] --out RESULTS_PATH")
        i = args.index("--out")
        print(f"wrote {fn(args[1:i] + args[i + 2:], Path(args[i + 1]))}")
        return 0
    opts = parse_args(argv)
    if opts.render is not None:
        print(f"wrote {rerender(opts.render)}")
        return 0
    return Reproduction(opts).run()


if __name__ == "__main__":
    sys.exit(main())
