"""TE stage 2: does a prior that fails text->image at the reference's sampling rule know the digit?

A diagnostic beside table 1, not part of it: the reference samples text->image with top-k
(``filter_thres 0.9`` over the joint vocabulary) at temperature 1 (docs/reference-implementations.md
§A), and table 1 uses exactly that rule. An undertrained prior has flat per-token distributions, so at
temperature 1 its digits come out as noise even when the most likely tokens already draw the right
digit. This script decodes the same captions from trained priors at lower temperatures and greedily
and judges them with the same classifier, on seen pairs (validation) and held-out pairs (test).

It reads what ``benchmarks/reproduce_te.py`` left in its work directory (classifier, stage-1
tokenizers, stage-2 priors) and writes ``OUT.md`` and ``OUT.json``.

Usage::

    PYTHONPATH=. python benchmarks/te_sampling_diagnostic.py --work-dir runs/te5 --keys sc ours \\
        --out benchmarks/results/te_small_long_sampling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vqzoo.checkpoint import load
from vqzoo.experiments.te import runner
from vqzoo.experiments.te.semantic import QuadrantClassifier


def render_markdown(result: dict) -> str:
    """The markdown table of a diagnostic's JSON (also used by ``--render``)."""
    lines = ["# TE stage 2: text->image digit accuracy by sampling temperature (diagnostic)", "",
             f"Produced by `benchmarks/te_sampling_diagnostic.py` (`{result['command']}`), {result['seconds']} s, "
             f"{result['torch_threads']} torch thread(s). Priors of run {result['run']} (stage-2 seed "
             f"{result['seed']}) in `{result['work_dir']}`; {result['items']} captions per split, one image each, "
             "judged by the same classifier as table 1. Temperature 1 with top-k over the joint vocabulary is "
             "the reference's rule and table 1's; "
             "lower temperatures (same top-k) and greedy decoding (temperature 0) are NOT the reference's rule: they "
             "show what the prior's most likely tokens draw. The reconstruction rows judge the tokenizer's own "
             "reconstructions of the real images: a reference, not a bound (greedy digits can be more "
             "prototypical than the real ones and score higher).", "",
             "| tokenizer | pairs | temperature | digit all | Quad1 | Quad2 | Quad3 | Quad4 | color all |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        quads = " | ".join(f"{r.get(f'{q}/digit', float('nan')):.3f}" for q in runner.QUADS)
        temp = ("reconstruction of the real images" if r["temperature"] is None
                else "greedy" if r["temperature"] == 0 else f"{r['temperature']:g}")
        lines.append(f"| {runner.LABELS[r['key']]} | {r['split']} | {temp} | {r['all/digit']:.3f} | {quads} | "
                     f"{r['all/color']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--keys", nargs="+", default=["sc", "ours"], choices=list(runner.TOKENIZER_ORDER))
    p.add_argument("--run", type=int, default=0, help="which run's prior (stage-2 seed 42 + run)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.5, 0.0], help="0 = greedy")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--stage2-data", default=None,
                   help="the stage-2 data config the priors were trained on (default: the small scale's)")
    p.add_argument("--out", type=Path, required=True, help="results path without suffix")
    p.add_argument("--render", type=Path, default=None, help="only rewrite OUT.md from an earlier run's JSON")
    a = p.parse_args(argv)
    if a.render is not None:
        a.out.with_suffix(".md").write_text(render_markdown(json.loads(a.render.read_text())))
        print(f"wrote {a.out.with_suffix('.md')}")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = runner.SCALES["small"]
    needed = [a.work_dir / "classifier" / "model.ckpt"] + [
        a.work_dir / f"run{r}" / stage / key / "model.ckpt"
        for key in a.keys for r, stage in ((0, "stage1"), (a.run, "stage2"))]
    missing = [str(x) for x in needed if not x.is_file()]
    if missing:
        raise SystemExit(f"missing checkpoints (run benchmarks/reproduce_te.py with --work-dir {a.work_dir} first): "
                         + ", ".join(missing))
    classifier = load(needed[0], expected=QuadrantClassifier).eval()
    dm = runner.build_datamodule(a.stage2_data or spec.stage2_data)
    test = runner.collect_test_items(dm, spec.eval_batch)
    seen = runner.collect_test_items(dm, spec.eval_batch, split="val", limit=test["images"].shape[0])
    start = time.time()
    rows = []
    for key in a.keys:
        tokenizer = load(a.work_dir / "run0" / "stage1" / key / "model.ckpt").eval()
        prior = load(a.work_dir / f"run{a.run}" / "stage2" / key / "model.ckpt").eval()
        for split, items in (("seen", seen), ("held-out", test)):
            # The tokenizer's own reconstructions of the real images: what its tokens draw of real digits.
            oracle = runner.reconstruction_oracle(tokenizer, classifier, items, torch.device("cpu"), spec.eval_batch)
            rows.append({"key": key, "split": split, "temperature": None, **oracle})
            for t in a.temperatures:
                res = runner.evaluate_prior(prior, tokenizer, classifier, items, 42 + a.run, torch.device("cpu"),
                                            spec.eval_batch, ("t2i",), t2i_temperature=t)["t2i"]
                rows.append({"key": key, "split": split, "temperature": t, **res})
                print(f"[{key} {split} T={t}] digit {res['all/digit']:.3f} color {res['all/color']:.3f}", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "work_dir": str(a.work_dir),
              "run": a.run, "seed": 42 + a.run, "items": test["images"].shape[0], "seconds": round(time.time() - start),
              "torch_threads": torch.get_num_threads(), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(render_markdown(result))
    print(f"wrote {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
