"""Active learning: the predictor's favourite policies evaluated for real, added, the predictor refit.

A surrogate is only trusted where it has data; a search over it drifts to where it is wrong (CMA-ES
at 50 % once found a predicted JS of 0.351 that measured 0.421). Each round:

1. :func:`propose` — at each ratio, CMA-ES over the agent's action space (:class:`ppf.agent.env.
   ActionSpace`: every action decodes to a feasible POLICY of the space, so each candidate is a
   policy text ``ppf prune`` takes) with the current predictor's PPR as fitness; the ``k`` best
   policies not evaluated before;
2. the caller evaluates them for real (prune + JS, as the collection does) — the round's error of
   the predictor ON THESE candidates is the curve's first number, the best true PPR found so far
   its second;
3. the rows join the training set (never the held-out rows) and the predictor is refit; the next
   round searches with it.

:func:`active_learning` is the loop over injected steps, so the same code runs on the real model
(the active recipe, :mod:`ppf.recipes.active`) and on a deliberately wrong surrogate in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.policy import Policy


def proposal_key(ratio: float, policy: Policy) -> str:
    """One policy at one ratio, as the rounds tell proposals apart (and from the dataset's rows)."""
    return f"{ratio:.6f}|{policy}"


@dataclass(frozen=True)
class Proposal:
    ratio: float
    policy: Policy
    predicted: float  # the predictor's signal (JS by default)
    actual_ratio: float

    @property
    def predicted_ppr(self) -> float:
        return self.predicted / self.actual_ratio

    @property
    def key(self) -> str:
        return proposal_key(self.ratio, self.policy)


def propose(predict: Callable[[Policy, float], tuple[float, float]], space: Any, ratio: float, k: int,
            budget: int, seed: int, known: Iterable[str] = (), sigma0: float = 0.5) -> list[Proposal]:
    """The ``k`` best policies at ``ratio`` by predicted PPR (``predict(policy, ratio) -> (predicted
    signal, actual ratio)``) after ``budget`` calls of a seeded CMA-ES over ``space``'s actions in
    [−1, 1]^dim, leaving out the ``known`` keys (:attr:`Proposal.key`)."""
    import cma

    known = set(known)
    seen: dict[str, Proposal] = {}

    def fitness(a: np.ndarray) -> float:
        policy = space.decode(np.clip(a, -1.0, 1.0), ratio)
        key = proposal_key(ratio, policy)
        if key not in seen:
            try:
                score, actual = predict(policy, ratio)
            except PPFError:  # a policy no plan meets within the tolerance: the worst fitness
                return 10.0
            seen[key] = Proposal(ratio, policy, float(score), float(actual))
        return seen[key].predicted_ppr

    es = cma.CMAEvolutionStrategy(np.zeros(space.dim), sigma0,
                                  {"seed": seed + 1, "maxfevals": budget, "bounds": [-1, 1], "verbose": -9})
    while not es.stop():
        xs = es.ask()
        es.tell(xs, [fitness(x) for x in xs])
    fresh = [p for key, p in seen.items() if key not in known]
    return sorted(fresh, key=lambda p: (p.predicted_ppr, str(p.policy)))[:k]


def active_learning(predictor: Any, ratios: list[float], rounds: int, k: int,
                    propose_with: Callable[[Any, float, int, set[str], int], list[Proposal]],
                    evaluate: Callable[[Proposal], dict[str, Any]],
                    refit: Callable[[list[dict[str, Any]]], Any],
                    progress: Callable[[str], None] = lambda msg: None, known: Iterable[str] = (),
                    signal: str = "js") -> tuple[Any, list[dict], list[dict]]:
    """``rounds`` rounds of propose → evaluate → refit; returns (the predictor refit on every row, the rows,
    the curve: per round the predictor's mean absolute error on ITS proposals, their best true PPR
    and the best true PPR found so far, per ratio and over all).

    ``propose_with(predictor, ratio, k, known, round)`` gives proposals; ``evaluate(proposal)`` a
    row with at least ``signal`` (the predictor's: js, kl or nll) and ``actual_ratio`` (true);
    ``refit(all rows so far)`` the next predictor.
    ``known``: keys (:attr:`Proposal.key`) never to propose, e.g. the dataset's own rows.
    """
    if rounds < 1 or k < 1:
        raise ValueError(f"rounds ({rounds}) and k ({k}) must be >= 1")
    rows: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    known = set(known)
    best: dict[float, float] = {}
    for rnd in range(1, rounds + 1):
        new = []
        for r in ratios:
            for p in propose_with(predictor, r, k, known, rnd):
                row = evaluate(p) | {"round": rnd, "target": r, "policy_text": str(p.policy),
                                     "predicted": p.predicted}
                row["true_ppr"] = row[signal] / row["actual_ratio"]
                known.add(p.key)
                new.append(row)
                best[r] = min(best.get(r, np.inf), row["true_ppr"])
        if not new:
            progress(f"round {rnd}: nothing new to propose; stopping")
            break
        err = [abs(x["predicted"] - x[signal]) for x in new]
        point = {"round": rnd, "proposed": len(new), "proposal_mae": float(np.mean(err)),
                 "proposal_max_error": float(np.max(err)),
                 "round_best_true_ppr": float(min(x["true_ppr"] for x in new)),
                 "best_true_ppr": float(np.mean(list(best.values())))}
        point |= {f"best_true_ppr_{r:g}": float(best[r]) for r in ratios if r in best}
        curve.append(point)
        rows += new
        progress(f"round {rnd}: {len(new)} proposals, predictor error on them {point['proposal_mae']:.4f}, "
                 f"best true PPR {point['best_true_ppr']:.4f}")
        predictor = refit(rows)  # the last refit too: the returned predictor has seen every row
    return predictor, rows, curve


def predicting(predictor: Any) -> Callable[[Policy, float], tuple[float, float]]:
    """``predict(policy, ratio) -> (predicted signal, actual ratio)`` of a :class:`ppf.predictor.Predictor`."""
    def predict(policy: Policy, ratio: float) -> tuple[float, float]:
        out = predictor.predict(policy, ratio)
        return out["score"], out["actual_ratio"]
    return predict
