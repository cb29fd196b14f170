"""Beyond the paper: a surrogate-guided search over FULL per-layer ratio vectors (CMA-ES).

PPF's agent chooses among a 2-D family of policies (method, a_eta). Any vector of layer ratios
with mean S is also a plan (:meth:`~ppf.policy.Planner.plan_scores`: scores = −x,
a_eta = half the spread of x), so an evolution strategy can search the whole L-dimensional space
with the predictor as a millisecond fitness (predicted PPR = the predictor's signal / r_act;
``predictor.signal``, NLL above dense by default). The predictor is only trusted to rank: the final
``top_k`` candidates are handed back to be evaluated for REAL, and the caller keeps the best by the
true signal (:func:`ppf.recipes.validation.table`) — a surrogate can be fooled far from its training data.

The search starts from the given policy's own layer ratios (e.g. the grid's best), so it can only
refine it in the predictor's eyes. CMA-ES comes from the `cma` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.policy import A_ETA_MAX, Policy, requested_ratios


@dataclass(frozen=True)
class Candidate:
    scores: tuple[float, ...]  # per-layer scores for Planner.plan_scores (higher = pruned less)
    a_eta: float
    predicted: float  # the predictor's signal (predictor.signal: NLL above dense by default)
    predicted_ppr: float
    actual_ratio: float


def to_plan_args(x: np.ndarray) -> tuple[tuple[float, ...], float]:
    """Layer deviations x → (scores, a_eta); a spread above 2·A_ETA_MAX is scaled down to it."""
    x = np.asarray(x, dtype=np.float64)
    spread = float(x.max() - x.min())
    if spread > 2 * A_ETA_MAX:
        x = x * (2 * A_ETA_MAX / spread)
        spread = 2 * A_ETA_MAX
    return tuple(float(v) for v in -x), spread / 2


def deviations(planner: Any, policy: Policy, ratio: float) -> np.ndarray:
    """The layer deviations (ratio_i − mean) Eqs 4-5 give ``policy``: the search's start."""
    H = planner.layer_scores.get(policy.method, [0.0] * planner.shape.n_layers)
    r = requested_ratios(H, ratio, policy.a_eta)
    return r - r.mean()


def cma_search(predictor: Any, ratio: float, start: Policy, budget: int = 800, sigma0: float = 0.03,
               top_k: int = 3, seed: int = 0) -> tuple[list[Candidate], dict[str, float]]:
    """The ``top_k`` distinct candidates by predicted PPR after ``budget`` predictor calls, and stats."""
    import cma

    planner = predictor.planner
    x0 = deviations(planner, start, ratio)
    seen: dict[tuple, Candidate] = {}

    def fitness(x: np.ndarray) -> float:
        scores, a_eta = to_plan_args(x)
        try:
            plan = planner.plan_scores(scores, a_eta, ratio)
        except Exception:  # a vector no plan can meet (e.g. every layer clipped): worst fitness
            return 10.0
        score = predictor.predict_plan(plan)
        c = Candidate(scores, a_eta, score, score / plan.block_ratio, plan.block_ratio)
        key = tuple(np.round(plan.layer_ratios(), 4))
        if key not in seen or c.predicted_ppr < seen[key].predicted_ppr:
            seen[key] = c
        return c.predicted_ppr

    start_ppr = fitness(x0)
    es = cma.CMAEvolutionStrategy(x0, sigma0, {"seed": seed + 1, "maxfevals": budget, "verbose": -9})
    while not es.stop():
        xs = es.ask()
        es.tell(xs, [fitness(x) for x in xs])
    ranked = sorted(seen.values(), key=lambda c: c.predicted_ppr)[:top_k]
    return ranked, {"start_predicted_ppr": start_ppr, "best_predicted_ppr": ranked[0].predicted_ppr,
                    "evaluations": int(es.countevals)}
