"""Recovery curve on the real model: PPF's policies and baselines recovered with the same params, test
perplexity at step 0 and at every valid check, paired comparisons after recovery.

Not a test (nothing is asserted). Each model is pruned from the project's dense model (lsq as
configured), saved under cache/recover/study/, and recovered with ``ppf.recipes.recover.recover``
(``curve=True``: what the `recover` stage does), with the `recover` params and any ``--set`` overrides.
One JSON line per model goes to studies/results/recover_curve<tag>.jsonl (appended; a model already
there is skipped, so a killed run resumes); ``--report`` turns the lines into recover_curve<tag>.{md,png}
with the stage's own tables (recovered PPF vs each recovered baseline paired, ranking before/after).

Run (in a project after `dvc repro importance`):
  python studies/recover_curve.py --policy 0.4=bi:0.035218,norm=rank,keep=6:0,layers=6,attn=0.0 [--ratios ...]
  python studies/recover_curve.py --set '{"train": "lora", "lr": 1e-4}' --tag _lora --only ppf-0.5 ...
  python studies/recover_curve.py --report [--tag _lora --set '{"train": "lora", "lr": 1e-4}']
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from ppf import plots
from ppf.checkpoint import is_checkpoint, save_pruned
from ppf.config import load_params, overridden
from ppf.io import write_bytes_atomic, write_text_atomic
from ppf.policy import Policy
from ppf.recipes import benchmark as B
from ppf.recipes import recover as R
from ppf.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "studies" / "results"


def build(wb: Workbench, name: str, ratio: float, policy: str | None) -> Path:
    src = ROOT / R.CACHE / "study" / f"{name}-{ratio:g}"
    if not is_checkpoint(src):
        if name == "ppf":
            plan = wb.planner.plan(Policy.parse(policy), ratio)
            model, desc, comp = wb.pruned(plan), str(Policy.parse(policy)), wb.params.pruning.compensation
        else:
            model, info = B.build(wb, name, ratio)
            desc, comp = info["policy"], info["compensation"]
        save_pruned(model, wb.tokenizer, src, base=wb.params.model.name, extra={"policy": desc, "target": ratio,
                                                                               "compensation": comp})
    return src


def report(tag: str, overrides: str = "{}") -> None:
    params = overridden(load_params(ROOT / "params.yaml"), "--set", recover=json.loads(overrides))
    rows = [json.loads(line) for line in (OUT / f"recover_curve{tag}.jsonl").read_text().splitlines() if line]
    bench = ROOT / "results" / "benchmark.csv"
    dense_rows = pd.read_csv(bench).query("method == 'dense'") if bench.exists() else pd.DataFrame()
    dense = float(dense_rows.ppl_test.iloc[0]) if len(dense_rows) else None
    md = R.markdown(rows, R.compare(rows, params), R.ranking(rows), dense, params)
    write_text_atomic(OUT / f"recover_curve{tag}.md", md)
    write_bytes_atomic(OUT / f"recover_curve{tag}.png", plots.recovery_curves(R.curve_frame(rows), dense))
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.5])
    ap.add_argument("--policy", action="append", default=[], metavar="RATIO=POLICY", help="PPF's policy at a ratio")
    ap.add_argument("--baselines", nargs="*", default=["llm_pruner"])
    ap.add_argument("--set", default="{}", help="JSON overrides of the recover params")
    ap.add_argument("--only", nargs="*", default=None, help="only these models, e.g. ppf-0.5")
    ap.add_argument("--tag", default="")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if a.report:
        return report(a.tag, a.set)
    policies = {float(k): v for k, v in (p.split("=", 1) for p in a.policy)}
    params = overridden(load_params(ROOT / "params.yaml"), "--set", recover=json.loads(a.set))
    wb = Workbench(ROOT, params)
    lines = OUT / f"recover_curve{a.tag}.jsonl"
    old = lines.read_text().splitlines() if lines.exists() else []
    done = {(r["method"], r["target_ratio"]) for r in map(json.loads, old)}
    for ratio in a.ratios:
        for name in (["ppf"] if ratio in policies else []) + a.baselines:
            if (name, ratio) in done or (a.only and f"{name}-{ratio:g}" not in a.only):
                continue
            t = time.time()
            src = build(wb, name, ratio, policies.get(ratio))
            rep = R.recover(wb, src, ROOT / R.CACHE / "study" / f"{name}-{ratio:g}{a.tag}.recovered", curve=True,
                            progress=print)
            with lines.open("a") as f:
                f.write(json.dumps(R.cell_row(name, ratio, policies.get(ratio), rep) | {"wall_s": time.time() - t}) + "\n")
    report(a.tag, a.set)


if __name__ == "__main__":
    main()
