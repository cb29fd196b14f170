"""Stage `active`: active learning on the trained predictor (:mod:`ppf.active`).

Each of ``active.rounds`` rounds: at every static agent ratio (``agent.static``) a CMA-ES over the
agent's action space proposes the ``active.k`` policies the CURRENT predictor rates best (never one of
the dataset or of an earlier round); they are pruned and measured for real (as in collection: lsq,
JS on the held-out tokens), added to the training rows (never to the held-out ones), and the
predictor is refit. The original collection stays as it was.

Outputs: data/active/rows.parquet (the evaluated rows, with the round, the predicted JS and the
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

import numpy as np
import pandas as pd
from prefect import flow, task

from flows.collect import context_key
from flows.common import CACHE, ROOT, finish, run_main, workbench
from ppf import collect as C
from ppf import plots
from ppf.active import active_learning, propose
from ppf.agent.recipe import action_space
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


@flow(name="active")
def active_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    a = params.active
    wb = Workbench(root, params)
    data = recipe.prepare_data(wb)
    first = Predictor.load(root / "models" / "predictor", wb.planner)
    space, context = action_space(wb), context_key(root, params)
    columns = list(data.df.columns)
    refits: list[dict] = []

    def predict_with(predictor):
        def predict(policy: Policy, ratio: float) -> tuple[float, float]:
            out = predictor.predict(policy, ratio)
            return out["js"], out["actual_ratio"]
        return predict

    def propose_with(predictor, ratio, k, known, rnd):
        return propose(predict_with(predictor), space, ratio, k, a.budget, a.seed + 1000 * rnd, known)

    def evaluate(p):
        return evaluate_policy(str(p.policy), p.ratio, context, str(root), params)

    last: dict = {}

    def refit(rows):
        train_rows = [{c: r.get(c) for c in columns} for r in rows]
        last["result"] = result = refit_predictor(train_rows, len(train_rows), data.digest, str(root), params)
        refits.append({"rows": len(rows), **{k: result["held_out"].get(k) for k in ("mae", "spearman", "spearman_within_ratio")}})
        return Predictor(recipe.network(result["config"], result["state"]), first.meta | {"active_rows": len(rows)}, wb.planner)

    known = {f"{float(r.ratio):.6f}|{C.Sample.from_row(r).policy}" for r in data.df.itertuples(index=False)}
    final, rows, curve = active_learning(first, list(params.agent.static), a.rounds, a.k, propose_with, evaluate,
                                         refit, progress=lambda msg: print(msg, flush=True), known=known)
    df = pd.DataFrame(rows).drop(columns=["plan_s", "eval_s"], errors="ignore")
    df = df.sort_values(["round", "target", "key"]).reset_index(drop=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(root / ROWS, buf.getvalue())
    meta = first.meta | {"active_rows": len(rows), "active_rounds": a.rounds, "held_out": last["result"]["held_out"]}
    save_predictor(recipe.network(last["result"]["config"], last["result"]["state"]), root / "models" / "predictor_active", meta)
    table = pd.DataFrame(curve)
    folder = root / "plots" / "active"
    write_text_atomic(folder / "curve.csv", table.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(folder / "curve.png", plots.active_curve(table))
    metrics = {f"round_{c['round']}": {k: v for k, v in c.items() if k != "round"} for c in curve}
    metrics["refits"] = refits
    metrics["first_predictor_held_out"] = {k: first.meta["held_out"].get(k) for k in ("mae", "spearman", "spearman_within_ratio")}
    metrics["proposal_mae_falls"] = bool(len(curve) > 1 and curve[-1]["proposal_mae"] < curve[0]["proposal_mae"])
    metrics["evaluated"] = len(rows)
    metrics["best_true_js"] = {f"{r:g}": float(np.min(df[df.target == r].js)) for r in params.agent.static
                               if (df.target == r).any()}
    return finish(root, params, "active", metrics, {"active": a.model_dump(), "context": context})


if __name__ == "__main__":
    sys.exit(run_main(active_flow, __doc__))
