"""Summarise one run of benchmarks/gpu_suite.sh: PREFIXsuite.md (and .json) from the PREFIX*.json it wrote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _load(d: Path, name: str) -> Any:
    p = d / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="benchmarks/results")
    ap.add_argument("--prefix", default="gpu_")
    ap.add_argument("--seconds", type=int, default=None, help="the suite's wall time")
    a = ap.parse_args()
    d, p = Path(a.dir), a.prefix
    lines = [f"# vqzoo benchmark suite ({p.rstrip('_')})", ""]
    if a.seconds is not None:
        lines += [f"Suite wall time: {a.seconds} s.", ""]
    status = (d / f"{p}suite_status.txt")
    if status.exists():
        lines += ["Steps (rc 0 = ok, 124 = out of time):", "", "```", status.read_text().strip(), "```", ""]
    summary: dict[str, Any] = {}

    ts = _load(d, f"{p}train_step.json")
    if ts:
        lines += ["## Train step vs taming-transformers", "",
                  "| run | vqzoo img/s | taming img/s | speedup (per-round min-max) | vqzoo MFU | taming MFU | memory vqzoo / taming MiB |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in ts.get("runs", {}).items():
            t = r["timing"]
            pr = r["per_round_ratio"].get("vqzoo", {})
            mfu = r.get("mfu", {})
            mem = r.get("memory", {})
            mv = mem.get("vqzoo", {}).get("delta_bytes")
            mt = mem.get("taming", {}).get("delta_bytes")
            lines.append(
                f"| {key} | {t['vqzoo']['wall']['images_per_s']:.1f} | {t['taming']['wall']['images_per_s']:.1f} | "
                f"{r['speedup']['vqzoo']:.2f}x ({_fmt(pr.get('min'))}-{_fmt(pr.get('max'))}) | "
                f"{_pct(mfu.get('vqzoo'))} | {_pct(mfu.get('taming'))} | "
                f"{_fmt(mv and mv / 2**20, '.0f')} / {_fmt(mt and mt / 2**20, '.0f')} |")
            summary[f"train_step/{key}"] = {"speedup": r["speedup"]["vqzoo"], "mfu": mfu.get("vqzoo")}
        lines.append("")

    q = _load(d, f"{p}quantizer_speed.json")
    if q:
        lines += ["## Quantizer forward+backward", "", "| N | D | K | features | vqzoo ms | x floor | x faster than vector-quantize-pytorch |",
                  "|---|---|---|---|---|---|---|"]
        for r in q["rows"]:
            lines.append(f"| {r['N']} | {r['D']} | {r['K']} | {r['feature']} | {r['vqzoo_ms']:.2f} | "
                         f"{r['vqzoo_over_floor']:.2f} | {_fmt(r.get('speedup_vs_peer'))} |")
        summary["quantizer"] = q["rows"]
        lines.append("")

    s = _load(d, f"{p}sampling_speed.json")
    if s:
        lines += ["## Sampling", ""]
        for k in ("minigpt", "maskgit"):
            r = s.get(k) or {}
            lines.append(f"- {k}: {r.get('setup', '')}")
            for kk, v in r.items():
                if kk.startswith("ratio") or kk.endswith("speedup"):
                    lines.append(f"  - {kk}: {_fmt(v) if isinstance(v, float) else v}")
            peer = r.get("peer") or {}
            for kk, v in peer.items():
                if kk.startswith("ratio") or kk.endswith("speedup") or kk == "status":
                    lines.append(f"  - peer {kk}: {_fmt(v) if isinstance(v, float) else v}")
        lines.append("")

    m = _load(d, f"{p}movq_decoder_speed.json")
    if m:
        lines += ["## MoVQ decoder vs diffusers", "",
                  f"vqzoo (M=1) / diffusers time ratio: {_fmt(m.get('ratio_vqzoo_over_diffusers'), '.3f')}", ""]
        summary["movq_ratio_vqzoo_over_diffusers"] = m.get("ratio_vqzoo_over_diffusers")

    f = _load(d, f"{p}fit_sync_warnings.json")
    if f:
        lines += ["## TE-VQGAN fit, syncs counted", "",
                  f"{f['generator_steps']} generator steps in {f['seconds']:.0f} s, {_fmt(f['images_per_s'], '.1f')} img/s; "
                  f"syncs per steady-state step {_fmt(f['syncs_per_counted_step'], '.3f')} (vqzoo's own "
                  f"{_fmt(f['vqzoo_syncs_per_counted_step'], '.3f')}), over {f['counted_steps']} steps.", ""]
        for k, v in list(f["where"].items())[:10]:
            lines.append(f"- `{k}`: {v}")
        lines.append("")
        summary["fit_sync"] = {k: f[k] for k in ("syncs_per_counted_step", "vqzoo_syncs_per_counted_step", "images_per_s")}

    for name in ("prior_mfu", "prior_mfu_compiled"):
        r = _load(d, f"{p}{name}.json")
        if r:
            lines += [f"## {name}", "",
                      f"{r['n_layer']} layers x {r['n_embd']}, batch {r['batch']}, seq {r['sequence']}: "
                      f"{r['median_s'] * 1e3:.1f} ms/step ({r['spread_pct']:.0f}% spread), "
                      f"{_fmt(r['achieved_tflops'], '.2f')} TFLOP/s, MFU {_pct(r['mfu'])}", ""]
            summary[name] = {"mfu": r["mfu"], "median_s": r["median_s"]}
    (d / f"{p}suite.md").write_text("\n".join(lines) + "\n")
    (d / f"{p}suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
