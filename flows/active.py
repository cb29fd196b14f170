"""Stage `active`: active learning on the trained predictor (:mod:`ppf.active`).

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

import io
import sys
from pathlib import Path

import pandas as pd
from prefect import flow, task

from flows.collect import context_key
from flows.common import CACHE, ROOT, finish, run_main, workbench
from ppf import active as A
from ppf import collect as C
from ppf import plots
from ppf.config import Params, load_params
from ppf.io import write_bytes_atomic, write_text_atomic
from ppf.policy import Policy
from ppf.predictor import Predictor, recipe
from ppf.predictor.store import save_predictor
from ppf.workbench import Workbench

ROWS = Path("data") / "active" / "rows.parquet"


@task(cache_policy=CACHE, persist_result=True, task_run_name="{policy}@{ratio}")
def evaluate_policy(policy: str, ratio: float, context: str, root: str, params: Params) -> dict:
    wb = workbench(Path(root), params, context, "planner", "reference", compute_importance=True)
    return C.evaluate(wb, C.Sample.of(Policy.parse(policy), ratio))


@task(cache_policy=CACHE, persist_result=True, task_run_name="refit on {n_rows} active rows")
def refit_predictor(rows: list[dict], n_rows: int, dataset: str, root: str, params: Params) -> dict:
    data = recipe.prepare_data(Workbench(Path(root), params))
    if data.digest != dataset:
        raise RuntimeError("the mask dataset changed while the flow ran; rerun it")
    more = recipe.with_rows(data, pd.DataFrame(rows))
    config = recipe.net_config(params, more.images.shape[1])
    net, history, _, held_out = recipe.train_and_score(more, config, recipe.train_config(params))
    return {"state": net.state_dict(), "config": config.to_dict(), "held_out": held_out}


def _write(root: Path, rows: list[dict], curve: list[dict], result: dict, meta: dict) -> pd.DataFrame:
    """data/active/rows.parquet (no wall-clock columns: same params, same bytes), the refit
    predictor, plots/active/curve.{csv,png}."""
    df = pd.DataFrame(rows).drop(columns=["plan_s", "eval_s"], errors="ignore")
    df = df.sort_values(["round", "target", "key"]).reset_index(drop=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(root / ROWS, buf.getvalue())
    save_predictor(recipe.network(result["config"], result["state"]), root / "models" / "predictor_active", meta)
    table = pd.DataFrame(curve)
    write_text_atomic(root / "plots" / "active" / "curve.csv", table.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "active" / "curve.png", plots.active_curve(table))
    return df


@flow(name="active")
def active_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    wb = Workbench(root, params)
    data = recipe.prepare_data(wb)
    first = Predictor.load(root / "models" / "predictor", wb.planner)
    context, columns = context_key(root, params), list(data.df.columns)
    refits: list[dict] = []

    def evaluate(p):
        return evaluate_policy(str(p.policy), p.ratio, context, str(root), params)

    def refit(rows):
        train_rows = [{c: r.get(c) for c in columns} for r in rows]
        refits.append(refit_predictor(train_rows, len(train_rows), data.digest, str(root), params) | {"rows": len(rows)})
        return Predictor(recipe.network(refits[-1]["config"], refits[-1]["state"]), first.meta, wb.planner)

    _, rows, curve = A.run(wb, first, data.df, evaluate, refit, progress=lambda msg: print(msg, flush=True))
    meta = first.meta | {"active_rows": len(rows), "active_rounds": params.active.rounds,
                         "held_out": refits[-1]["held_out"]}
    df = _write(root, rows, curve, refits[-1], meta)
    scores = [{"rows": r["rows"], **{k: r["held_out"].get(k) for k in ("mae", "spearman", "spearman_within_ratio")}}
              for r in refits]
    metrics = A.summary(curve, scores, first.meta["held_out"], df, list(params.agent.static),
                        params.predictor.signal)
    return finish(root, params, "active", metrics, {"active": params.active.model_dump(), "context": context})


if __name__ == "__main__":
    sys.exit(run_main(active_flow, __doc__))
