"""The final choice refined on the true model: budget-preserving mutants, multi-fidelity acceptance."""

from __future__ import annotations

import random

import pytest
import torch

import ppf.workbench as W
from ppf.agent.refine import mutants, refine, refine_choices
from ppf.config import parse_params
from ppf.policy import Policy
from tiny import make_llama


@pytest.fixture(scope="module", params=[(4, 4), (4, 2)], ids=["mha", "gqa"])
def bench(request):
    heads, kv = request.param
    model, tok = make_llama(heads, kv, layers=8)
    params = parse_params({"calibration": {"n_samples": 4, "seqlen": 16}, "pruning": {"compensation": "none"}})
    gen = torch.Generator().manual_seed(0)
    return W.Workbench.of(model, tok, params, torch.randint(4, 90, (4, 16), generator=gen),
                          torch.randint(4, 90, (2, 16), generator=gen))


@pytest.mark.parametrize("start", ["uniform,keep=2:1,split=groups", "lod:0.2", "bi:0.1,norm=rank,depth=1,split=0.2"])
def test_every_mutant_is_a_different_policy_that_spends_the_same_budget(bench, start):
    planner, ratio, seen = bench.planner, 0.35, {start}
    kids = mutants(Policy.parse(start), ratio, 12, random.Random(0), planner.shape, planner.max_layer_ratio,
                   planner.block_order, seen, ("lod", "esd", "bi"))
    assert len(kids) == 12 and len({str(k) for k in kids}) == 12 and start not in {str(k) for k in kids}
    parent = Policy.parse(start)
    for k in kids:  # one part changed (feasible() may give up more, never adds), and the plan meets the ratio
        assert k != parent
        assert abs(planner.plan(k, ratio).block_ratio - ratio) <= planner.tolerance + 1e-9
    again = mutants(Policy.parse(start), ratio, 12, random.Random(0), planner.shape, planner.max_layer_ratio,
                    planner.block_order, {start}, ("lod", "esd", "bi"))
    assert [str(k) for k in again] == [str(k) for k in kids]  # seeded


def _quadratic(best_eta: float, noise: dict[str, float] | None = None):
    """A 'perplexity' with its minimum at lod:best_eta; ``noise`` adds a low-fidelity-only bonus to a policy."""
    calls = []

    def measure(p: Policy, windows: int) -> float:
        calls.append((str(p), windows))
        base = 10 + 100 * ((p.a_eta - best_eta) ** 2 if p.method == "lod" else 0.1) + (p.first + p.last + p.depth)
        return base - (noise or {}).get(str(p), 0.0) * (windows == 1)

    return measure, calls


def _a_eta_steps(parent: Policy, rng: random.Random) -> list[Policy]:
    return [Policy("lod", round(min(0.5, max(0.0, parent.a_eta + d)), 3)) for d in (-0.05, 0.05, 0.1)]


def test_refinement_climbs_to_the_true_optimum_and_never_accepts_worse():
    measure, calls = _quadratic(0.3)
    best, log = refine(Policy("lod", 0.0), measure(Policy("lod", 0.0), 4), 0.4, propose=_a_eta_steps,
                       screen=lambda ps: ps, measure=measure, low=1, high=4, generations=5)
    assert best["improved"] and Policy.parse(best["policy"]) == Policy("lod", 0.3) and best["windows"] == 4
    assert best["ppl_valid"] == pytest.approx(10.0)
    high = [r for r in log if r["windows"] == 4]
    accepted = [r["ppl_valid"] for r in high if r["accepted"]]
    assert accepted == sorted(accepted, reverse=True)  # each accepted step is better than the last
    # the same seed gives the same refinement
    again, _ = refine(Policy("lod", 0.0), measure(Policy("lod", 0.0), 4), 0.4, propose=_a_eta_steps,
                      screen=lambda ps: ps, measure=measure, low=1, high=4, generations=5)
    assert again == best


def test_a_mutant_lucky_on_few_windows_is_not_accepted():
    # lod:0.45 looks best on 1 window (a bonus of 50), but is worse than the parent on 4
    measure, _ = _quadratic(0.2, noise={"lod:0.45": 50.0})
    parent = Policy("lod", 0.2)
    best, log = refine(parent, measure(parent, 4), 0.4, propose=lambda p, rng: [Policy("lod", 0.45), Policy("lod", 0.25)],
                       screen=lambda ps: ps, measure=measure, low=1, high=4, generations=1)
    assert not best["improved"] and best["policy"] == str(parent)
    assert [r["policy"] for r in log if r["windows"] == 4] == ["lod:0.45"] and not log[-1]["accepted"]


def test_the_screen_decides_which_mutants_are_judged():
    measure, calls = _quadratic(0.3)
    best, log = refine(Policy("lod", 0.1), measure(Policy("lod", 0.1), 4), 0.4, propose=_a_eta_steps,
                       screen=lambda ps: ps[:1], measure=measure, low=1, high=4, generations=1)
    assert [r["policy"] for r in log if r["windows"] == 1] == ["lod:0.05"]  # only the first was judged
    assert not best["improved"]


class _Predictor:
    """The predictor's interface for the screen: a signal that prefers lod at a_eta 0.3."""

    def __init__(self, planner):
        self.planner = planner

    def predict(self, policy, ratio):
        plan = self.planner.plan(policy, ratio)
        return {"score": 1 + abs(policy.a_eta - 0.3) + (policy.method != "lod"), "actual_ratio": plan.block_ratio}


def test_refine_choices_keeps_the_ratio_and_records_where_it_started(bench):
    params = parse_params({"agent": {"static": [0.35], "validation": {"ppl_windows": 1}, "choice": {"windows": [4], "survivors": [2]},
                           "refine": {"generations": 2, "offspring": 2, "proposals": 6}}})
    measure, calls = _quadratic(0.3)
    choices = {"0.35": {"contender": "uniform", "policy": "uniform", "ppl_valid": measure(Policy("uniform"), 4),
                        "windows": 4, "candidates": 5}}
    out, log = refine_choices(choices, _Predictor(bench.planner), params, lambda p, r, w: measure(p, w))
    c = out["0.35"]
    assert c["refined_from"] == "uniform" and c["refined_from_ppl_valid"] == choices["0.35"]["ppl_valid"]
    assert c["ppl_valid"] <= c["refined_from_ppl_valid"] and c["windows"] == 4
    assert c["contender"] == ("refined" if c["policy"] != "uniform" else "uniform")
    assert {r["ratio"] for r in log} == {0.35} and len([r for r in log if r["windows"] == 1]) == 4
    assert abs(bench.planner.plan(Policy.parse(c["policy"]), 0.35).block_ratio - 0.35) <= bench.planner.tolerance + 1e-9
    off = parse_params({"agent": {"refine": {"generations": 0}}})
    assert refine_choices(choices, _Predictor(bench.planner), off, lambda p, r, w: 0.0) == (choices, [])


def test_bad_refine_settings_are_refused():
    from ppf.errors import PPFError

    with pytest.raises((PPFError, ValueError), match="proposals"):
        parse_params({"agent": {"refine": {"offspring": 8, "proposals": 4}}})
