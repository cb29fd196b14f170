"""The `active` recipe: active learning on the trained predictor (:mod:`ppf.active`, the method).

Each of ``active.rounds`` rounds: at every static agent ratio a CMA-ES over the agent's action space
proposes the ``active.k`` policies the current predictor rates best (never a dataset row or an
earlier proposal), they are evaluated for real exactly as the collection evaluates (the same context
key, :func:`ppf.recipes.collect.context_key`, so the same cache), added to the training rows and
the predictor refit.

- :func:`evaluate` — one proposal pruned and measured;
- :func:`refit` — the predictor refit on the dataset + the active rows (a cached task's body);
- :func:`run` — the rounds with the project's settings;
- :func:`publish` — data/active/rows.parquet, models/predictor_active, plots/active/curve.{csv,png}
  and metrics/active.json.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ppf import plots
from ppf.active import Proposal, active_learning, predicting, propose, proposal_key
from ppf.config import Params
from ppf.io import write_bytes_atomic, write_text_atomic
from ppf.policy import Policy
from ppf.predictor import Predictor
from ppf.predictor.store import save_predictor
from ppf.recipes import predictor as P
from ppf.recipes.agent import action_space
from ppf.recipes.collect import context_key
from ppf.samples import Sample
from ppf.samples import evaluate as evaluate_sample
from ppf.workbench import Workbench

ROWS = Path("data") / "active" / "rows.parquet"

__all__ = ["ROWS", "context_key", "evaluate", "publish", "refit", "run", "summary"]


def evaluate(wb: Workbench, policy: str, ratio: float) -> dict[str, Any]:
    """One proposal evaluated for real, as the collection evaluates a sample."""
    return evaluate_sample(wb, Sample.of(Policy.parse(policy), ratio))


def refit(root: Path, params: Params, rows: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """The predictor trained on the dataset (whose digest is ``dataset``) + ``rows``, scored on the same
    held-out rows: {state, config, held_out} (the refit task's body)."""
    data = P.prepare_data(Workbench(Path(root), params))
    if data.digest != dataset:
        raise RuntimeError("the mask dataset changed while the flow ran; rerun it")
    more = P.with_rows(data, pd.DataFrame(rows))
    config = P.net_config(params, more.images.shape[1])
    net, _, _, held_out = P.train_and_score(more, config, P.train_config(params))
    return {"state": net.state_dict(), "config": config.to_dict(), "held_out": held_out}


def run(wb: Workbench, first: Any, dataset: Any, evaluate: Callable[[Proposal], dict[str, Any]],
        refit: Callable[[list[dict[str, Any]]], Any], progress: Callable[[str], None] = lambda msg: None
        ) -> tuple[Any, list[dict], list[dict]]:
    """:func:`~ppf.active.active_learning` with the project's settings (``active``, the static agent
    ratios, the agent's action space), never proposing a row of ``dataset`` (the collected DataFrame)."""
    a, space = wb.params.active, action_space(wb)

    def propose_with(predictor: Any, ratio: float, k: int, known: set[str], rnd: int) -> list[Proposal]:
        return propose(predicting(predictor), space, ratio, k, a.budget, a.seed + 1000 * rnd, known)

    known = {proposal_key(float(r.ratio), Sample.from_row(r).policy) for r in dataset.itertuples(index=False)}
    return active_learning(first, list(wb.params.agent.static), a.rounds, a.k, propose_with, evaluate, refit,
                           progress, known, wb.params.predictor.signal)


def stage(root: Path, params: Params, evaluate: Callable[[str, float], dict[str, Any]],
          refit: Callable[[list[dict[str, Any]], str], dict[str, Any]],
          progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """The whole stage over the caller's (cached) ``evaluate(policy text, ratio)`` and ``refit(training
    rows, dataset digest)``: the rounds, then :func:`publish`; returns the metrics."""
    wb = Workbench(root, params)
    data = P.prepare_data(wb)
    first = Predictor.load(Path(root) / "models" / "predictor", wb.planner)
    columns = list(data.df.columns)
    refits: list[dict] = []

    def refit_on(rows: list[dict]) -> Predictor:
        train_rows = [{c: r.get(c) for c in columns} for r in rows]
        refits.append(refit(train_rows, data.digest) | {"rows": len(rows)})
        return Predictor(P.network(refits[-1]["config"], refits[-1]["state"]), first.meta, wb.planner)

    _, rows, curve = run(wb, first, data.df, lambda p: evaluate(str(p.policy), p.ratio), refit_on, progress)
    meta = first.meta | {"active_rows": len(rows), "active_rounds": params.active.rounds,
                         "held_out": refits[-1]["held_out"]}
    df = publish(root, rows, curve, refits[-1], meta)
    scores = [{"rows": r["rows"], **{k: r["held_out"].get(k) for k in ("mae", "spearman", "spearman_within_ratio")}}
              for r in refits]
    return summary(curve, scores, first.meta["held_out"], df, list(params.agent.static), params.predictor.signal)


def publish(root: Path, rows: list[dict], curve: list[dict], result: dict, meta: dict) -> pd.DataFrame:
    """data/active/rows.parquet (no wall-clock columns: same params, same bytes), the refit
    predictor, plots/active/curve.{csv,png}."""
    root = Path(root)
    df = pd.DataFrame(rows).drop(columns=["plan_s", "eval_s"], errors="ignore")
    df = df.sort_values(["round", "target", "key"]).reset_index(drop=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(root / ROWS, buf.getvalue())
    save_predictor(P.network(result["config"], result["state"]), root / "models" / "predictor_active", meta)
    table = pd.DataFrame(curve)
    write_text_atomic(root / "plots" / "active" / "curve.csv", table.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "active" / "curve.png", plots.active_curve(table))
    return df


def summary(curve: list[dict], refits: list[dict], first_held_out: dict, rows: Any, ratios: list[float],
            signal: str = "js") -> dict:
    """metrics/active.json: the curve keyed ``round_<n>``, the refits' held-out scores against the
    first predictor's, whether the error on proposals fell, and the best true signal per ratio."""
    out: dict[str, Any] = {f"round_{c['round']}": {k: v for k, v in c.items() if k != "round"} for c in curve}
    out["refits"] = refits
    out["first_predictor_held_out"] = {k: first_held_out.get(k) for k in ("mae", "spearman", "spearman_within_ratio")}
    out["proposal_mae_falls"] = bool(len(curve) > 1 and curve[-1]["proposal_mae"] < curve[0]["proposal_mae"])
    out["evaluated"] = len(rows)
    out["signal"] = signal
    out["best_true_signal"] = {f"{r:g}": float(rows[rows.target == r][signal].min()) for r in ratios
                               if (rows.target == r).any()}
    return out
