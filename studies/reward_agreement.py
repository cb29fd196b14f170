"""Which held-out signal ranks one ratio's policies as valid perplexity does: JS, KL or the NLL above dense.

Not a test (nothing is asserted). Every policy contender of the agent's validation
(results/agent_validation.csv, after `dvc repro train_agent`; the search's ratio vectors are left out:
no policy text carries them) is pruned again and measured in ONE pass over the held-out tokens
(``Workbench.divergences``: JS, KL(dense || pruned), NLL above dense); the valid perplexity is the
validation's own. Per (setting, ratio) the Spearman correlation of each signal with valid
perplexity, then their mean and worst (:func:`ppf.recipes.validation.reward_agreement`, the figure the
pipeline now writes to metrics/agent.json as ``reward_agreement``). Resumable: judged rows are kept in
the CSV and skipped on a rerun. Writes studies/results/reward_agreement.{csv,md}.

Run (in a project after `dvc repro train_agent`):  python studies/reward_agreement.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from ppf.recipes.validation import reward_agreement
from ppf.config import load_params
from ppf.io import write_text_atomic
from ppf.policy import Policy
from ppf.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--out", default=str(ROOT / "studies" / "results"))
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    wb = Workbench(root, load_params(root / "params.yaml"))
    val = pd.read_csv(root / "results" / "agent_validation.csv")
    val = val[~val.contender.str.startswith("search")]
    todo = val.drop_duplicates(["ratio", "policy"])[["ratio", "policy"]]
    path = out / "reward_agreement.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["ratio", "policy", "js", "kl", "nll", "seconds"])
    rows = done.to_dict("records")
    seen = {(round(r["ratio"], 6), r["policy"]) for r in rows}
    wb.reference  # noqa: B018  (the dense side, once)
    for i, (ratio, policy) in enumerate(todo.itertuples(index=False), 1):
        if (round(ratio, 6), policy) in seen:
            continue
        t = time.perf_counter()
        with torch.no_grad():
            d = wb.divergences(wb.pruned(wb.planner.plan(Policy.parse(policy), ratio)))
        rows.append({"ratio": ratio, "policy": policy, **d, "seconds": time.perf_counter() - t})
        write_text_atomic(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
        print(f"[{i}/{len(todo)}] {ratio:g} {policy}: js {d['js']:.4f} kl {d['kl']:.4f} nll {d['nll']:.4f}", flush=True)
    measured = pd.DataFrame(rows).rename(columns={"js": "js_again", "kl": "true_kl", "nll": "true_nll"})
    t = val.merge(measured, on=["ratio", "policy"])
    agreement = reward_agreement(t)
    lines = ["# Which held-out signal ranks one ratio's contenders as valid perplexity does", "",
             f"{len(measured)} policies of results/agent_validation.csv re-pruned and measured on the held-out "
             f"tokens ({wb.tokens[1].numel()} tokens); valid perplexity on the validation's windows. "
             f"Largest |JS again − validation's JS|: {(t.js_again - t.true_js).abs().max():.2g}.", "",
             "| signal | mean within-ratio Spearman with valid ppl | worst ratio | ratios |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.3f} | {v['min']:.3f} | {v['ratios']} |" for k, v in agreement.items() if k != "best"]
    lines += ["", f"Best: `{agreement.get('best')}`."]
    write_text_atomic(out / "reward_agreement.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
