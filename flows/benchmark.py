"""Stage `benchmark`: PPF vs re-run baselines at every ratio — perplexity, zero-shot, speed, memory.

One cached Prefect task per (method, ratio) cell builds the pruned model from the dense one and
evaluates it (:mod:`ppf.recipes.benchmark`); a method's preparation (BlockPruner's greedy removal order)
is one cached task too. A run killed midway resumes with the finished cells from the cache.

Outputs: results/benchmark.csv (one row per cell), results/benchmark.md (Table 2 layout + PPF vs
the best baseline per ratio), plots/benchmark/{ppl,zeroshot,speed}.png, metrics/benchmark.json,
models/unrecovered/ppf-<ratio>/ (the PPF-pruned checkpoints, which the `recover` stage recovers into
models/pruned/ and registers); MLflow: a parent run with a nested run per cell.
Run: ``python -m flows.benchmark [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, Params, load_params, run_main, workbench
from ppf.recipes import benchmark as R


@task(cache_policy=CACHE, persist_result=True, task_run_name="prepare {method} to {max_ratio}")
def prepare_method(method: str, max_ratio: float, key: str, root: str, params: Params):
    return R.get(method).prepare(workbench(Path(root), params, key), max_ratio)


@task(cache_policy=CACHE, persist_result=True, task_run_name="{method}@{ratio} ({compensation})")
def cell(method: str, ratio: float, compensation: str, state, key: str, root: str, params: Params) -> dict:
    return R.cell(workbench(Path(root), params, key), method, ratio, state, compensation)


@flow(name="benchmark")
def benchmark_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    b = params.benchmark
    methods = R.check_methods(b.methods)
    key = R.context_key(root, params)
    states = {m: prepare_method(m, R.prepare_ratio(b.ratios), key, str(root), params)
              for m in methods if R.get(m).prepare is not None}
    rows = [cell(m, r, c, states.get(m), key, str(root), params)
            for m, r, c in R.cells(methods, b.ratios, params.pruning)]
    return R.publish(root, params, workbench(root, params, key), rows)


if __name__ == "__main__":
    sys.exit(run_main(benchmark_flow, __doc__))
