"""Stage `benchmark`: PPF vs re-run baselines at every ratio — perplexity, zero-shot, speed, memory.

One cached Prefect task per (method, ratio) cell builds the pruned model from the dense one and
evaluates it (:mod:`ppf.benchmark`); a method's preparation (BlockPruner's greedy removal order)
is one cached task too. A run killed midway resumes with the finished cells from the cache.

Outputs: results/benchmark.csv (one row per cell), results/benchmark.md (Table 2 layout + PPF vs
the best baseline per ratio), plots/benchmark/{ppl,zeroshot,speed}.png, metrics/benchmark.json,
models/pruned/ppf-<ratio>/ (the PPF-pruned checkpoints); MLflow: a parent run with a nested run per
cell, the PPF-pruned models registered as ``ppf-pruned-<ratio>``
(``ppf.tracking.load_registered_pruned(root, "ppf-pruned-0.4")`` loads one back).
Run: ``python -m flows.benchmark [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from prefect import flow, task

from flows.common import CACHE, ROOT, run_main, workbench
from ppf import benchmark as B
from ppf import plots, tracking
from ppf.baselines import check_methods, get
from ppf.checkpoint import save_pruned
from ppf.config import Params, load_params
from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic


@task(cache_policy=CACHE, persist_result=True, task_run_name="prepare {method} to {max_ratio}")
def prepare_method(method: str, max_ratio: float, key: str, root: str, params: Params):
    return get(method).prepare(workbench(Path(root), params, key), max_ratio)


@task(cache_policy=CACHE, persist_result=True, task_run_name="{method}@{ratio} ({compensation})")
def cell(method: str, ratio: float, compensation: str, state, key: str, root: str, params: Params) -> dict:
    return B.cell(workbench(Path(root), params, key), method, ratio, state, compensation)


@flow(name="benchmark")
def benchmark_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    b = params.benchmark
    methods = check_methods(b.methods)
    key = B.context_key(root, params)
    states = {m: prepare_method(m, B.prepare_ratio(b.ratios), key, str(root), params)
              for m in methods if get(m).prepare is not None}
    rows = [cell(m, r, c, states.get(m), key, str(root), params)
            for m, r, c in B.cells(methods, b.ratios, params.pruning)]
    df, nll, comparisons, summary = B.report(rows, params)
    write_text_atomic(root / "results" / "benchmark.csv", df.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(root / "results" / "benchmark_windows.csv", nll.to_csv(index=False, float_format="%.9g"))
    write_text_atomic(root / "results" / "benchmark.md", B.markdown(df, summary, params, comparisons))
    for name, png in plots.benchmark_curves(B.as_configured(df, params)).items():
        write_bytes_atomic(root / "plots" / "benchmark" / f"{name}.png", png)
    pruned = B.as_configured(df, params).query("method != 'dense'")
    write_text_atomic(root / "plots" / "benchmark" / "by_ratio.csv",
                      pruned[["method", "actual_ratio", "ppl_test", "zs_mean", "tokens_per_s", "peak_mem_mb"]]
                      .to_csv(index=False, float_format="%.6g"))
    write_json_atomic(root / "metrics" / "benchmark.json", summary)
    saved = {r: _save_ppf(root, params, key, r) for r in b.ratios} if "ppf" in methods else {}
    return {**summary, "registered": _track(root, params, df, summary, saved)}


def _save_ppf(root: Path, params: Params, key: str, ratio: float) -> Path:
    """Write models/pruned/ppf-<ratio> (rebuilt: cheap, and a cached cell never returns files)."""
    wb = workbench(root, params, key)
    model, info = B.build(wb, "ppf", ratio)
    out = root / "models" / "pruned" / f"ppf-{ratio:g}"
    save_pruned(model, wb.tokenizer, out, base=params.model.name, extra={"policy": info["policy"], "target": ratio})
    return out


def _track(root: Path, params: Params, df: pd.DataFrame, summary: dict, saved: dict) -> dict:
    """MLflow: parent run + nested run per cell; the PPF-pruned checkpoints logged and registered."""
    registered = {}
    with tracking.run(root, params.tracking.experiment, "benchmark",
                      {"benchmark": params.benchmark.model_dump(), "model": params.model.model_dump()},
                      tags={"stage": "benchmark"}):
        tracking.log_dict(summary, "summary.json")
        for f in ("results/benchmark.csv", "results/benchmark.md", "plots/benchmark/ppl.png",
                  "plots/benchmark/zeroshot.png", "plots/benchmark/speed.png"):
            tracking.log_artifact(root / f, "results")
        for row in df.to_dict("records"):
            with tracking.run(root, params.tracking.experiment, f"{row['method']}@{row['target_ratio']:g}-{row['compensation']}",
                              {"method": row["method"], "target_ratio": row["target_ratio"], "policy": row["policy"],
                               "compensation": row["compensation"]},
                              nested=True):
                tracking.log_metrics({k: v for k, v in row.items() if k not in ("method", "policy", "compensation")})
                if row["method"] == "ppf" and row["compensation"] == params.pruning.compensation \
                        and params.benchmark.register_models:
                    name = f"ppf-pruned-{row['target_ratio']:g}"
                    registered[name] = tracking.log_and_register(
                        "pruned", saved[row["target_ratio"]], name,
                        {"policy": row["policy"], "ppl_test": f"{row['ppl_test']:.4g}", "model": params.model.name})
    return registered


if __name__ == "__main__":
    sys.exit(run_main(benchmark_flow, __doc__))
