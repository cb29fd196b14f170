"""Active learning on a surrogate that is deliberately wrong in one region: the search is fooled in
round 1, the real evaluations correct the surrogate there, and later rounds find truly good policies."""

from __future__ import annotations

import pytest

from ppf.active import Proposal, active_learning, propose
from ppf.agent.env import PAPER_SPACE
from ppf.policy import Policy


def true_js(policy: Policy, ratio: float) -> float:
    """The 'real model': lod is best around a_eta 0.2, bi is bad, the more so at high a_eta."""
    base = {"lod": 0.20, "esd": 0.24, "bi": 0.30}[policy.method]
    shape = (policy.a_eta - 0.2) ** 2 if policy.method == "lod" else 0.1 * policy.a_eta
    return ratio * (base + shape)


def in_wrong_region(policy: Policy) -> bool:
    return policy.method == "bi" and policy.a_eta > 0.25


class Surrogate:
    """Right everywhere except bi at a_eta > 0.25, where it promises a near-zero JS — until it has
    seen real rows there: then it predicts their mean (what a refit on those rows learns)."""

    def __init__(self, rows=()):
        self.fixed = [r["js"] / r["target"] for r in rows if in_wrong_region(Policy.parse(r["policy_text"]))]

    def __call__(self, policy: Policy, ratio: float) -> tuple[float, float]:
        if in_wrong_region(policy):
            return (ratio * sum(self.fixed) / len(self.fixed) if self.fixed else 0.01 * ratio), ratio
        return true_js(policy, ratio), ratio


def run(rounds, seed=0):
    def propose_with(predictor, ratio, k, known, rnd):
        return propose(predictor, PAPER_SPACE, ratio, k, budget=150, seed=seed + rnd, known=known)

    def evaluate(p: Proposal) -> dict:
        return {"js": true_js(p.policy, p.ratio), "actual_ratio": p.ratio}

    return active_learning(Surrogate(), [0.3, 0.5], rounds, 3, propose_with, evaluate, Surrogate)


def test_a_fooled_search_recovers_a_truly_good_policy_after_active_learning():
    _, rows, curve = run(rounds=3)
    first = [r for r in rows if r["round"] == 1]
    assert all(in_wrong_region(Policy.parse(r["policy_text"])) for r in first)  # fooled at first
    assert curve[-1]["proposal_mae"] < 0.2 * curve[0]["proposal_mae"]      # the error on proposals falls
    best_true = {r: min(x["true_ppr"] for x in rows if x["target"] == r) for r in (0.3, 0.5)}
    optimum = 0.20  # lod at a_eta 0.2: true PPR = base
    assert all(v <= optimum + 0.005 for v in best_true.values())
    assert curve[-1]["best_true_ppr"] <= curve[0]["best_true_ppr"]
    assert len({(r["target"], r["policy_text"]) for r in rows}) == len(rows)  # never evaluated twice


def test_the_same_seed_gives_the_same_rounds():
    a, b = run(rounds=2)[1], run(rounds=2)[1]
    assert [(r["target"], r["policy_text"]) for r in a] == [(r["target"], r["policy_text"]) for r in b]


def test_bad_rounds_are_refused():
    with pytest.raises(ValueError, match="rounds"):
        active_learning(None, [0.3], 0, 3, None, None, None)
