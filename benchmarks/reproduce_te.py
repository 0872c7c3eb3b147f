"""Reproduce tables 1-3 of the TE-VQGAN paper: the command line of :mod:`vqzoo.experiments.te.runner`.

What runs, the scales, the decisions and the timings are described in that
module's docstring (``python benchmarks/reproduce_te.py --help`` prints its
summary).

Usage::

    PYTHONPATH=. python benchmarks/reproduce_te.py --scale small --threads 1
    PYTHONPATH=. python benchmarks/reproduce_te.py --scale paper --all-baselines --runs 3

Writes ``benchmarks/results/te_reproduction_{scale}.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vqzoo.experiments.te import runner
from vqzoo.experiments.te.runner import SCALES, Options, Reproduction, rerender


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=runner.__doc__.split("\n\n")[0],
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
    p.add_argument("--render", type=Path, default=None,
                   help="only re-render the markdown of an existing results JSON (written beside it)")
    a = p.parse_args(argv)
    return Options(**vars(a))


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.render is not None:
        print(f"wrote {rerender(opts.render)}")
        return 0
    return Reproduction(opts).run()


if __name__ == "__main__":
    sys.exit(main())
