"""Validation of the trained agents on the TRUE model, and the report of it.

- :func:`validation_ratios` — the ratios of the paper's dynamic setting (uniform in a range);
- :func:`contenders` — per ratio, the policies compared: the agent's, uniform, LLM-Pruner's
  (edge layers kept), OWL's and AlphaPruning's mappings, and the best of the exhaustive (method ×
  a_eta) grid judged by the predictor, ShortGPT's allocation (lowest-BI layers removed),
  BlockPruner's (its stored block order as far as the ratio holds, uniform width for the rest), the
  dynamic actor on its own (``dynamic_agent``: the agent's answer at a static ratio comes from that
  ratio's static actor), and at the static ratios every restart's actors (``agent@seedN``,
  ``dynamic_agent@seedN``);
- :func:`search_candidates` — beyond the paper: CMA-ES over per-layer ratio vectors at each static
  ratio, its ``search.top_k`` best by the predictor, to be evaluated for real;
- :func:`judge` — one row pruned and measured (true JS, KL, NLL above dense; valid perplexity);
- :func:`plan_of` — the plan a row stands for (the final choice, :mod:`ppf.agent.choice`, merges
  rows that plan alike);
- :func:`table` / :func:`summarise` — the judged rows as results/agent_validation.csv and
  metrics/agent.json, with :func:`reward_agreement` (which held-out signal ranks one ratio's
  contenders as valid perplexity does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ppf.agent.env import AGENT_METHODS
from ppf.baselines import alpha, llm_pruner, owl
from ppf.config import Params
from ppf.depth import block_ratio
from ppf.metrics import SIGNALS
from ppf.plan import PruningPlan
from ppf.policy import Planner, Policy, feasible
from ppf.search import cma_search
from ppf.workbench import Workbench

CONTENDERS = ("agent", "uniform", "llm_pruner", "owl", "alpha", "shortgpt", "blockpruner", "grid_best")


def predicted(predictor: Any, policy: Policy, ratio: float) -> tuple[float, float]:
    """(the predicted signal — JS by default, ``predictor.signal`` — and the actual ratio) of ``policy`` at ``ratio``."""
    out = predictor.predict(policy, ratio)
    return out["score"], out["actual_ratio"]


def validation_ratios(params: Params) -> list[float]:
    v = params.agent.validation
    return [round(float(r), 6) for r in np.linspace(v.range[0], v.range[1], v.n_ratios)]


def grid(step: float) -> list[Policy]:
    n = int(round(0.5 / step))
    etas = sorted({round(min(0.5, i * step), 6) for i in range(n + 1)})
    return [Policy(m, e) for m in AGENT_METHODS for e in etas]


def grid_best(predictor: Any, ratio: float, step: float) -> tuple[Policy, float]:
    """The grid policy with the lowest predicted PPR at ``ratio`` (and that PPR)."""
    best, best_ppr = None, float("inf")
    for pol in grid(step):
        score, actual = predicted(predictor, pol, ratio)
        if score / actual < best_ppr:
            best, best_ppr = pol, score / actual
    return best, best_ppr


def contenders(agents: Any, predictor: Any, params: Params, ratios: list[float], setting: str,
               restarts: dict[str, Callable[[float], Policy | None]] | None = None) -> list[dict[str, Any]]:
    """One row per (ratio, contender): its policy (object and text) and predicted signal / PPR.
    ``restarts``: more contenders by name (the agents' restarts that were not kept), each a function
    ratio → policy, or None where that restart has no actor of its own at the ratio."""
    v = params.agent.validation
    planner = predictor.planner
    n_layers = planner.shape.n_layers
    rows = []
    for r in ratios:
        policies = {"agent": agents.decide(r)["policy"], "uniform": Policy("uniform"),
                    "owl": owl.policy(r, v.owl_lambda), "alpha": alpha.policy(r, v.alpha_epsilon),
                    "grid_best": grid_best(predictor, r, v.grid_step)[0]}
        if sum(params.benchmark.llm_pruner_keep) < n_layers:  # a model too shallow for its kept layers has none
            policies["llm_pruner"] = llm_pruner.policy(n_layers, *params.benchmark.llm_pruner_keep)
        # ShortGPT's allocation: as many lowest-BI layers removed as fit in the ratio, width the rest
        depth = int(r / block_ratio(predictor.planner.shape, [0], [0]) + 1e-9)
        if "bi" in predictor.planner.layer_scores and 1 <= depth < n_layers:
            policies["shortgpt"] = Policy("uniform", depth=depth)
        if planner.block_order is not None:  # BlockPruner's order as far as the ratio holds, width the rest
            deep = Policy("uniform", depth=len(planner.block_order), order="blocks")
            policies["blockpruner"] = feasible(deep, r, planner.shape, planner.max_layer_ratio,
                                               block_order=planner.block_order)
        if "dynamic" in agents.modes:  # the dynamic actor on its own (at a static ratio, a candidate of the choice)
            policies["dynamic_agent"] = agents.decide(r, mode="dynamic")["policy"]
        for name, decide in (restarts or {}).items():
            if (pol := decide(r)) is not None:
                policies[name] = pol
        for name, pol in policies.items():
            score, actual = predicted(predictor, pol, r)
            rows.append({"ratio": r, "contender": name, "policy": str(pol), "predicted": score,
                         "predicted_ppr": score / actual, "setting": setting, "_policy": pol})
    return rows


def search_candidates(predictor: Any, rows: list[dict[str, Any]], params: Params) -> tuple[list[dict], dict]:
    """CMA-ES from the grid's best at every static ratio: rows of its best candidates, and stats."""
    s = params.search
    out, stats = [], {}
    for r in params.agent.static:
        start = next(x["_policy"] for x in rows
                     if x["setting"] == "static" and x["ratio"] == r and x["contender"] == "grid_best")
        cands, stats[f"{r:g}"] = cma_search(predictor, r, start, s.budget, s.sigma0, s.top_k, s.seed)
        out += [{"ratio": r, "contender": f"search#{i + 1}", "policy": f"search:{i + 1}",
                 "predicted": c.predicted, "predicted_ppr": c.predicted_ppr, "setting": "static",
                 "_scores": c.scores, "_a_eta": c.a_eta} for i, c in enumerate(cands)]
    return out, stats


def plan_of(planner: Planner, row: dict[str, Any]) -> PruningPlan:
    """The plan a row stands for: its policy, or a searched ratio vector."""
    if row.get("_scores") is not None:
        return planner.plan_scores(list(row["_scores"]), row["_a_eta"], row["ratio"])
    return planner.plan(row["_policy"], row["ratio"])


def judge(wb: Workbench, plan: PruningPlan, ppl_windows: int, window_seed: int | None = None) -> dict[str, Any]:
    """True JS (with KL and the NLL above dense from the same pass) + valid perplexity of a plan on the
    first ``ppl_windows`` windows of the choice's window order (``window_seed``), with each window's
    summed NLL (``nll_valid``: what the final choice compares paired)."""
    res = wb.judge(plan, ppl_windows, window_seed)
    ratios = plan.layer_ratios()
    return {"true_js": res["js"], "true_kl": res["kl"], "true_nll": res["nll"], "ppl_valid": res["ppl_valid"],
            "nll_valid": res["nll_valid"], "actual_ratio": plan.block_ratio,
            "layer_ratio_min": float(min(ratios)), "layer_ratio_max": float(max(ratios)), "seconds": res["seconds"],
            "compensation": res["compensation"]}


def table(rows: list[dict[str, Any]], signal: str = "js") -> pd.DataFrame:
    """The judged rows, ``true_ppr`` their true ``signal`` (the reward's) over the actual ratio; of the
    search candidates, the best by that TRUE signal per ratio becomes ``search``."""
    t = pd.DataFrame(rows).drop(columns=["_policy", "_scores", "_a_eta", "_plan", "nll_valid"], errors="ignore")
    t["true_ppr"] = t[f"true_{signal}"] / t.actual_ratio
    static = t[t.setting == "static"]
    searched = static[static.contender.str.startswith("search#")]
    best = searched.loc[searched.groupby("ratio")[f"true_{signal}"].idxmin()].assign(contender="search")
    return pd.concat([t[~t.contender.str.startswith("search#")], best,
                      searched.assign(contender=searched.contender.str.replace("#", "_candidate"))], ignore_index=True)


def reward_agreement(t: pd.DataFrame) -> dict[str, Any]:
    """How well each signal measured on the held-out tokens (JS, the reward; KL; the NLL above dense)
    ranks the contenders of ONE ratio as their valid perplexity does: the Spearman correlation within
    each (setting, ratio) of the judged rows (the aggregated ``search`` row left out: it repeats a
    candidate), its mean over the ratios and its worst. The measurement that decides the reward."""
    rows = t[t.contender != "search"]
    out: dict[str, Any] = {}
    for signal in SIGNALS:
        col = f"true_{signal}"
        if col not in rows:
            continue
        rho = [spearmanr(g[col], g.ppl_valid)[0] for _, g in rows.groupby(["setting", "ratio"])
               if len(g) >= 3 and g[col].nunique() > 1 and g.ppl_valid.nunique() > 1]
        rho = [float(x) for x in rho if np.isfinite(x)]
        if rho:
            out[signal] = {"mean": float(np.mean(rho)), "min": float(np.min(rho)), "ratios": len(rho)}
    if out:
        out["best"] = max((k for k in out), key=lambda k: out[k]["mean"])
    return out


def summarise(t: pd.DataFrame, params: Params, search_stats: dict) -> dict[str, Any]:
    """metrics/agent.json's validation part: mean ppl / JS per contender, and per static ratio."""
    dyn = t[t.setting == "dynamic"].groupby("contender")
    m: dict[str, Any] = {"n_validation_ratios": int(params.agent.validation.n_ratios)}
    present = [c for c in CONTENDERS if c in dyn.ppl_valid.mean()]
    for c in present:
        m[f"mean_ppl_{c}"] = float(dyn.ppl_valid.mean()[c])
        m[f"mean_js_{c}"] = float(dyn.true_js.mean()[c])
    if "dynamic_agent" in dyn.ppl_valid.mean():
        m["mean_ppl_dynamic_agent"] = float(dyn.ppl_valid.mean()["dynamic_agent"])
        m["mean_js_dynamic_agent"] = float(dyn.true_js.mean()["dynamic_agent"])
    for c in present[1:]:
        m[f"ppl_reduction_vs_{c}_pct"] = 100.0 * (1 - m["mean_ppl_agent"] / m[f"mean_ppl_{c}"])
        if "mean_ppl_dynamic_agent" in m:
            m[f"dynamic_agent_ppl_reduction_vs_{c}_pct"] = 100.0 * (1 - m["mean_ppl_dynamic_agent"] / m[f"mean_ppl_{c}"])
    m["reward_agreement"] = reward_agreement(t)
    for r, g in t[t.setting == "static"].groupby("ratio"):
        by = g.set_index("contender")
        for c in (*CONTENDERS, "dynamic_agent", "search"):
            if c in by.index:
                m[f"static_{r:g}_ppl_{c}"] = float(by.ppl_valid[c])
        m[f"static_{r:g}_search"] = search_stats[f"{r:g}"]
    return m
