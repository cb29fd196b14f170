"""Stage `active`: active learning on the trained predictor (:mod:`ppf.recipes.active`).

Each of ``active.rounds`` rounds: at every static agent ratio (``agent.static``) a CMA-ES over the
agent's action space proposes the ``active.k`` policies the CURRENT predictor rates best (never one of
the dataset or of an earlier round); they are pruned and measured for real (as in collection: lsq,
JS on the held-out tokens), added to the training rows (never to the held-out ones), and the
predictor is refit. The original collection stays as it was.

Outputs: data/active/rows.parquet (the evaluated rows, with the round, the predicted signal and the
proposing ratio), models/predictor_active (the predictor refit on dataset + every active row),
plots/active/{curve.csv, curve.png} and metrics/active.json (per round, keyed ``round_<n>``: the
predictor's error ON ITS PROPOSALS and the best true PPR found so far; the refit predictors'
held-out scores). Every real evaluation and every refit is a cached Prefect task: an interrupted run
resumes without evaluating or training twice.
Run: ``python -m flows.active [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, Params, finish, load_params, run_main, workbench
from ppf.recipes import active as R


@task(cache_policy=CACHE, persist_result=True, task_run_name="{policy}@{ratio}")
def evaluate_policy(policy: str, ratio: float, context: str, root: str, params: Params) -> dict:
    wb = workbench(Path(root), params, context, "planner", "reference", compute_importance=True)
    return R.evaluate(wb, policy, ratio)


@task(cache_policy=CACHE, persist_result=True, task_run_name="refit on {n_rows} active rows")
def refit_predictor(rows: list[dict], n_rows: int, dataset: str, root: str, params: Params) -> dict:
    return R.refit(Path(root), params, rows, dataset)


@flow(name="active")
def active_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    context = R.context_key(root, params)
    metrics = R.stage(root, params, lambda policy, ratio: evaluate_policy(policy, ratio, context, str(root), params),
                      lambda rows, dataset: refit_predictor(rows, len(rows), dataset, str(root), params),
                      progress=lambda msg: print(msg, flush=True))
    return finish(root, params, "active", metrics, {"active": params.active.model_dump(), "context": context})


if __name__ == "__main__":
    sys.exit(run_main(active_flow, __doc__))
