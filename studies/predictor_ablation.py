"""Predictor ablations (paper Figs 7-8) on the collected dataset: which input, which branches.

Not a test: it trains one predictor per variant on the SAME policy-held-out split as the
`train_predictor` stage (same params, several seeds) and reports held-out MAE and Spearman:

  * input: the o_proj-compressed mask (paper), all four attention masks, the MLP mask, and
    o_proj + MLP (ours);
  * architecture on the o_proj input: base (no spatial attention, no SPP, no density branch),
    without SA, without SPP, without the density branch, full.

  * target (``--targets``): the signal itself vs its log (``predictor.log_target``).

Writes studies/results/<--out, default predictor_ablation>.{csv,md}.
Run (after `dvc repro collect`):  python studies/predictor_ablation.py [--seeds 0 1 2] [--epochs N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from ppf.config import load_params
from ppf.io import write_text_atomic
from ppf.predictor import TrainConfig
from ppf.recipes import predictor as recipe
from ppf.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ["o_proj", "attention", "mlp", "o_proj+mlp", "blocks"]
ARCHS = {"base (no SA, SPP, density)": dict(attention=False, spp=False, density=False),
         "without SA": dict(attention=False), "without SPP": dict(spp=False),
         "without density": dict(density=False), "full": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: predictor.epochs of params.yaml")
    ap.add_argument("--inputs", nargs="*", default=INPUTS, choices=INPUTS,
                    help="predictor inputs compared (none: no input ablation)")
    ap.add_argument("--no-architecture", action="store_true", help="only the input ablation")
    ap.add_argument("--targets", action="store_true",
                    help="also the target ablation on the configured input: the signal itself vs its log")
    ap.add_argument("--out", default="predictor_ablation", help="file name (no suffix) in studies/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    epochs = args.epochs or params.predictor.epochs
    wb = Workbench(ROOT, params)
    inputs = list(dict.fromkeys([*args.inputs, params.predictor.input]))
    data = {kind: recipe.prepare_data(wb, kind) for kind in inputs}
    variants = [("input", kind, kind, {}) for kind in args.inputs]
    if not args.no_architecture:
        variants += [("architecture", name, params.predictor.input, over) for name, over in ARCHS.items()]
    if args.targets:
        variants += [("target", name, params.predictor.input, {"log_target": log})
                     for name, log in (("signal", False), ("log(signal)", True))]
    rows = []
    for group, name, kind, over in variants:
        d = data[kind]
        for seed in args.seeds:
            t = time.perf_counter()
            cfg = recipe.net_config(params, d.images.shape[1], **over)
            tc = TrainConfig(**{**recipe.train_config(params).__dict__, "epochs": epochs, "seed": seed})
            *_, s = recipe.train_and_score(d, cfg, tc)
            s = {k: v for k, v in s.items() if not isinstance(v, dict)}
            s.setdefault("spearman_within_ratio", float("nan"))
            rows.append({"group": group, "variant": name, "input": kind, "seed": seed, **s,
                         "train_s": time.perf_counter() - t})
            print(f"{group:12s} {name:28s} seed {seed}: MAE {s['mae']:.4f}  Spearman {s['spearman']:.4f}  "
                  f"within-ratio {s['spearman_within_ratio']:.4f}", flush=True)
    df = pd.DataFrame(rows)
    out = ROOT / "studies" / "results"
    write_text_atomic(out / f"{args.out}.csv", df.to_csv(index=False, float_format="%.6g"))
    y = data[inputs[0]].y
    table = df.groupby(["group", "variant"], sort=False).agg(
        mae=("mae", "mean"), mae_std=("mae", "std"), spearman=("spearman", "mean"), spearman_std=("spearman", "std"),
        within=("spearman_within_ratio", "mean"), within_std=("spearman_within_ratio", "std"),
        distinct=("distinct_predictions", "mean"),
        rmse=("rmse", "mean"), r2=("r2", "mean"), train_s=("train_s", "mean")).reset_index()
    lines = [f"# Predictor ablations ({len(data[inputs[0]].train)} train / {len(data[inputs[0]].test)} held-out samples, "
             f"held out by {params.predictor.split}; {epochs} epochs; mean ± std over seeds {args.seeds}; "
             f"{params.predictor.signal} range {y.min():.3f}-{y.max():.3f})", "",
             "| group | variant | MAE | MAE % of range | Spearman | within-ratio Spearman (collect.within) | "
             "distinct predictions | RMSE | R² | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.group} | {r.variant} | {r.mae:.4f} ± {r.mae_std:.4f} | {100 * r.mae / (y.max() - y.min()):.2f} | "
                     f"{r.spearman:.4f} ± {r.spearman_std:.4f} | {r.within:.4f} ± {r.within_std:.4f} | {r.distinct:.0f} | "
                     f"{r.rmse:.4f} | {r.r2:.4f} | {r.train_s:.0f} |")
    write_text_atomic(out / f"{args.out}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
