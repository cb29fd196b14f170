"""Compensation on the real model: test perplexity of every width method with none / bias / lsq.

Not a test (nothing is asserted). For each width method (default llm_pruner, owl, alpha, ppf) at each
ratio, the SAME plan is pruned once per compensation and scored on the same test windows as the
benchmark (``eval.seqlen``; ``--windows``, default ``benchmark.max_windows``), with a paired bootstrap
95 % interval of each compensation vs none, and the seconds each compensation adds (the shared dense
statistics once, then per plan). ``ppf`` needs the trained agent (after ``dvc repro train_agent``).
Writes studies/results/compensation.csv and compensation.md.

Run (in a project after `dvc repro`):  python studies/compensation.py [--ratios 0.2 0.4 0.5] [--windows 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from ppf.baselines import get
from ppf.config import load_params
from ppf.io import write_text_atomic
from ppf.metrics import perplexity_of, window_nll
from ppf.policy import Policy
from ppf.stats import paired_ppl_difference
from ppf.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=["llm_pruner", "owl", "alpha", "ppf"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.5])
    ap.add_argument("--compensations", nargs="+", default=["none", "bias", "lsq"])
    ap.add_argument("--windows", type=int, default=None, help="test windows (default benchmark.max_windows)")
    ap.add_argument("--policy", action="append", default=[], metavar="RATIO=POLICY",
                    help="also a fixed policy at a ratio (e.g. 0.4=bi:0.12, a past PPF choice), labelled 'policy'")
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--out", default=str(ROOT / "studies" / "results"))
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    wb = Workbench(root, params)
    ev, windows = params.eval, args.windows or params.benchmark.max_windows
    test = wb.split_tokens("test")
    t = time.perf_counter()
    st = wb.statistics
    stats_s = time.perf_counter() - t
    print(f"dense statistics: {stats_s:.1f} s, peak {st.peak_mb:.0f} MB", flush=True)
    dense_nll = window_nll(wb.model, test, ev.seqlen, ev.batch_size, windows)
    rows = [{"method": "dense", "ratio": 0.0, "compensation": "none", "ppl_test": perplexity_of(dense_nll, ev.seqlen)}]
    todo = [(m, r) for m in args.methods for r in args.ratios]
    todo += [("policy", float(r), pol) for r, pol in (p.split("=", 1) for p in args.policy)]
    for method, ratio, *fixed in todo:
        if fixed:
            desc, plan = fixed[0], wb.planner.plan(Policy.parse(fixed[0]), ratio)
        else:
            desc, plan = get(method).plan(wb, ratio)
        base = None
        for comp in args.compensations:
            model = wb.pruned(plan, comp)
            nll = window_nll(model, test, ev.seqlen, ev.batch_size, windows)
            row = {"method": method, "ratio": ratio, "policy": desc, "actual_ratio": plan.block_ratio,
                   "compensation": comp, "ppl_test": perplexity_of(nll, ev.seqlen),
                   "compensation_s": model.ppf_compensation["seconds"]}
            if comp == "none":
                base = nll
            elif base is not None:
                d = paired_ppl_difference(nll.tolist(), base.tolist(), ev.seqlen - 1, params.benchmark.bootstrap, params.seed)
                row |= {"vs_none_pct": d["diff_pct"], "vs_none_ci_lo": d["ci_lo"], "vs_none_ci_hi": d["ci_hi"]}
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            del model
    df = pd.DataFrame(rows)
    out = Path(args.out)
    write_text_atomic(out / "compensation.csv", df.to_csv(index=False, float_format="%.6g"))
    comps = args.compensations
    lines = [f"# Compensation — {params.model.name}", "",
             f"Test perplexity ({windows} windows of {ev.seqlen}; dense {rows[0]['ppl_test']:.2f}), the same plan per "
             f"method and ratio; {wb.compensation_tokens.shape[0]} x {wb.compensation_tokens.shape[1]} calibration "
             f"tokens, {params.pruning.compensation_inputs} inputs (the statistics once: {stats_s:.1f} s, peak "
             f"{st.peak_mb:.0f} MB), damping {params.pruning.damping}. In brackets: vs none, paired bootstrap 95 % "
             "interval; s: seconds the compensation adds to that plan.", "",
             "| method | ratio | " + " | ".join(comps) + " |", "|---|---|" + "---|" * len(comps)]
    for (method, ratio), g in df[df.method != "dense"].groupby(["method", "ratio"], sort=False):
        cells = []
        for c in comps:
            r = g[g.compensation == c].iloc[0]
            extra = "" if c == "none" else (f" ({r.vs_none_pct:+.1f} % [{r.vs_none_ci_lo:+.1f}, {r.vs_none_ci_hi:+.1f}], "
                                             f"{r.compensation_s:.1f} s)")
            cells.append(f"{r.ppl_test:.2f}{extra}")
        lines.append(f"| {method} | {ratio:g} | " + " | ".join(cells) + " |")
    write_text_atomic(out / "compensation.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
