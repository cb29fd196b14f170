"""Stage `benchmark`: PPF vs re-run baselines at every ratio — perplexity, zero-shot, speed, memory.

One cached Prefect task per (method, ratio) cell builds the pruned model from the dense one and
evaluates it (:mod:`ppf.benchmark`); BlockPruner's greedy removal order is one cached task too. A
run killed midway resumes with the finished cells from the cache.

Outputs: results/benchmark.csv (one row per cell), results/benchmark.md (Table 2 layout + PPF vs
the best baseline per ratio), plots/benchmark/{ppl,zeroshot,speed}.png, metrics/benchmark.json,
models/pruned/ppf-<ratio>/ (the PPF-pruned checkpoints); MLflow: a parent run with a nested run per
cell, the PPF-pruned models registered as ``ppf-pruned-<ratio>``
(``ppf.tracking.load_registered_pruned(root, "ppf-pruned-0.4")`` loads one back).
Run: ``python -m flows.benchmark [--params params.yaml]``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, run_main
from ppf.config import load_params

_CONTEXTS: dict[str, object] = {}
_LOCK = threading.Lock()


def _ctx(root: str, params_path: str, key: str, with_agent: bool):
    with _LOCK:
        if key not in _CONTEXTS:
            from ppf.benchmark import Context

            _CONTEXTS.clear()
            _CONTEXTS[key] = Context.load(Path(root), load_params(Path(root) / params_path), with_agent)
        return _CONTEXTS[key]


@task(cache_policy=CACHE, persist_result=True, task_run_name="blockpruner order to {max_ratio}")
def blockpruner_steps(max_ratio: float, key: str, root: str, params_path: str, with_agent: bool) -> list[dict]:
    from ppf.blocks import blockpruner_order

    ctx = _ctx(root, params_path, key, with_agent)
    return blockpruner_order(ctx.model, ctx.calibration_batch(), ctx.planner.shape, max_ratio)


@task(cache_policy=CACHE, persist_result=True, task_run_name="{method}@{ratio}")
def cell(method: str, ratio: float, steps: list | None, key: str, root: str, params_path: str, with_agent: bool) -> dict:
    from ppf.benchmark import build, evaluate

    ctx = _ctx(root, params_path, key, with_agent)
    model, info = build(ctx, method, ratio, steps)
    row = {"method": method, "target_ratio": ratio, **info, **evaluate(model, ctx.tokenizer, Path(root), ctx.params)}
    del model
    return row


@flow(name="benchmark")
def benchmark_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    import pandas as pd

    from ppf.benchmark import check_methods, context_key
    from ppf.io import write_json_atomic, write_text_atomic

    root = Path(root or ROOT)
    params = load_params(root / params_path)
    b = params.benchmark
    methods = check_methods(b.methods)
    with_agent = "ppf" in methods
    key = context_key(root, params)
    steps = None
    if "blockpruner" in methods:
        steps = blockpruner_steps(max(b.ratios) + 0.02, key, str(root), params_path, with_agent)
    cells = [("dense", 0.0)] if "dense" in methods else []
    cells += [(m, r) for m in methods if m != "dense" for r in b.ratios]
    rows = [cell(m, r, steps if m == "blockpruner" else None, key, str(root), params_path, with_agent) for m, r in cells]
    df = pd.DataFrame(rows)
    df["zs_mean"] = df["zs_mean"].astype(float)
    write_text_atomic(root / "results" / "benchmark.csv", df.to_csv(index=False, float_format="%.6g"))
    summary = _summary(df, b.ratios)
    write_text_atomic(root / "results" / "benchmark.md", _markdown(df, summary, params))
    _plots(root, df)
    write_json_atomic(root / "metrics" / "benchmark.json", summary)
    saved = {r: _save_ppf(root, params, key, with_agent, params_path, r) for r in b.ratios} if with_agent else {}
    registered = _track(root, params, df, summary, saved)
    return {**summary, "registered": registered}


def _summary(df, ratios) -> dict:
    """Per ratio: PPF's perplexity / zero-shot and the best baseline's (by perplexity)."""
    out: dict = {}
    dense = df[df.method == "dense"]
    if len(dense):
        out["dense"] = {"ppl_test": float(dense.ppl_test.iloc[0]), "zs_mean": float(dense.zs_mean.iloc[0])}
    for r in ratios:
        at = df[(df.target_ratio - r).abs() < 1e-9]
        base = at[at.method != "ppf"]
        entry = {}
        if len(base):
            best = base.loc[base.ppl_test.idxmin()]
            entry |= {"best_baseline": best.method, "best_baseline_ppl": float(best.ppl_test),
                      "best_baseline_zs": float(best.zs_mean)}
        ppf = at[at.method == "ppf"]
        if len(ppf):
            p = ppf.iloc[0]
            entry |= {"ppf_ppl": float(p.ppl_test), "ppf_zs": float(p.zs_mean), "ppf_policy": p.policy,
                      "ppf_tokens_per_s": float(p.tokens_per_s), "ppf_peak_mem_mb": float(p.peak_mem_mb)}
            if len(base):
                entry["ppf_wins_ppl"] = bool(p.ppl_test <= entry["best_baseline_ppl"])
                entry["ppl_reduction_vs_best_pct"] = 100 * (1 - p.ppl_test / entry["best_baseline_ppl"])
        out[f"{r:g}"] = entry
    return out


def _markdown(df, summary, params) -> str:
    from ppf.benchmark import table2

    lines = [f"# Benchmark: {params.model.name}", "",
             f"Test perplexity (seqlen {params.eval.seqlen}, {params.benchmark.max_windows} windows) and mean "
             f"zero-shot accuracy ({params.benchmark.zero_shot_limit} examples per task); target = actual block "
             "reduction for width methods, nearest reachable for depth methods (see results/benchmark.csv). "
             "Bold: the lowest perplexity at that ratio.", "", table2(df), "",
             "| ratio | PPF policy | PPF ppl | best baseline | its ppl | PPF vs best |", "|---|---|---|---|---|---|"]
    for r, e in summary.items():
        if r == "dense" or "ppf_ppl" not in e:
            continue
        lines.append(f"| {r} | {e['ppf_policy']} | {e['ppf_ppl']:.2f} | {e.get('best_baseline', '–')} | "
                     f"{e.get('best_baseline_ppl', float('nan')):.2f} | {e.get('ppl_reduction_vs_best_pct', float('nan')):+.1f} % |")
    cols = ["method", "target_ratio", "actual_ratio", "ppl_test", "zs_mean", "tokens_per_s", "prefill_tok_s",
            "peak_mem_mb", "params"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _plots(root: Path, df) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppf.io import write_bytes_atomic, write_text_atomic

    pruned = df[df.method != "dense"]
    dense = df[df.method == "dense"]
    for name, col, label, log in (("ppl", "ppl_test", "test perplexity", True),
                                  ("zeroshot", "zs_mean", "mean zero-shot accuracy", False),
                                  ("speed", "tokens_per_s", "generation tokens/s (batch 1)", False)):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for m, g in pruned.groupby("method"):
            g = g.sort_values("actual_ratio")
            ax.plot(g.actual_ratio, g[col], marker="o", label=m, lw=2.5 if m == "ppf" else 1.2)
        if len(dense):
            ax.axhline(float(dense[col].iloc[0]), color="k", ls="--", lw=1, label="dense")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("actual block reduction")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        write_bytes_atomic(root / "plots" / "benchmark" / f"{name}.png", buf.getvalue())
    write_text_atomic(root / "plots" / "benchmark" / "by_ratio.csv",
                      pruned[["method", "actual_ratio", "ppl_test", "zs_mean", "tokens_per_s", "peak_mem_mb"]]
                      .to_csv(index=False, float_format="%.6g"))


def _track(root: Path, params, df, summary, saved: dict) -> dict:
    """MLflow: parent run + nested run per cell; the PPF-pruned checkpoints logged and registered."""
    from ppf import tracking

    registered = {}
    with tracking.run(root, params.tracking.experiment, "benchmark",
                      {"benchmark": params.benchmark.model_dump(), "model": params.model.model_dump()},
                      tags={"stage": "benchmark"}):
        tracking.log_dict(summary, "summary.json")
        for f in ("results/benchmark.csv", "results/benchmark.md", "plots/benchmark/ppl.png",
                  "plots/benchmark/zeroshot.png", "plots/benchmark/speed.png"):
            tracking.log_artifact(root / f, "results")
        for row in df.to_dict("records"):
            with tracking.run(root, params.tracking.experiment, f"{row['method']}@{row['target_ratio']:g}",
                              {"method": row["method"], "target_ratio": row["target_ratio"], "policy": row["policy"]},
                              nested=True):
                tracking.log_metrics({k: v for k, v in row.items() if k not in ("method", "policy")})
                if row["method"] == "ppf" and params.benchmark.register_models:
                    name = f"ppf-pruned-{row['target_ratio']:g}"
                    registered[name] = tracking.log_and_register(
                        "pruned", saved[row["target_ratio"]], name,
                        {"policy": row["policy"], "ppl_test": f"{row['ppl_test']:.4g}", "model": params.model.name})
    return registered


def _save_ppf(root: Path, params, key, with_agent, params_path, ratio: float) -> Path:
    """Write models/pruned/ppf-<ratio> (rebuilt: cheap, and a cached cell never returns files)."""
    from ppf.benchmark import build
    from ppf.checkpoint import save_pruned

    ctx = _ctx(str(root), params_path, key, with_agent)
    model, info = build(ctx, "ppf", ratio)
    out = root / "models" / "pruned" / f"ppf-{ratio:g}"
    save_pruned(model, ctx.tokenizer, out, base=params.model.name, extra={"policy": info["policy"], "target": ratio})
    return out


if __name__ == "__main__":
    sys.exit(run_main(benchmark_flow, __doc__))
