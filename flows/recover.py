"""Stage `recover`: PPF and the best baselines at every benchmark ratio, each distilled from the dense
model with the same budget and seed (:mod:`ppf.recipes.recover`), measured paired on the test windows.

One Prefect task per (method, ratio) cell. A cell recovers into cache/recover/models/ under a key of
its model, params and windows; it saves its resumable state every ``recover.checkpoint_every`` steps,
so a run killed midway resumes from the last state, and a finished cell is read back, not rerun.

Outputs: results/recover.{csv,md} (before/after, PPF vs each recovered baseline paired, whether the
ranking holds), plots/recover/curve.{csv,png} (test perplexity vs recovery tokens), metrics/recover.json,
models/pruned/ppf-<ratio>/ (PPF's delivered checkpoints: the recovered ones; the benchmark's unrecovered
ones stay in models/unrecovered/); MLflow: a parent run, a nested run per cell with its curve, the
delivered models registered as ``ppf-pruned-<ratio>``.
Run: ``python -m flows.recover [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import ROOT, Params, load_params, run_main, workbench
from ppf.recipes import benchmark as B
from ppf.recipes import recover as R


@task(task_run_name="recover {method}@{ratio}")
def cell(method: str, ratio: float, key: str, root: str, params: Params) -> dict:
    return R.stage_cell(Path(root), workbench(Path(root), params, key), method, ratio, key)


@flow(name="recover")
def recover_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    key = B.context_key(root, params)
    rows = [cell(m, r, key, str(root), params) for m, r in R.stage_cells(root, params)]
    return R.publish(root, params, rows)


if __name__ == "__main__":
    sys.exit(run_main(recover_flow, __doc__))
