"""The final choice refined on the true model: budget-preserving mutants, accepted only when paired better."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch

import ppf.workbench as W
from ppf.agent.choice import Entry, Rule
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


@pytest.mark.parametrize("start", ["uniform,keep=2:1,attn=groups", "lod:0.2", "bi:0.1,norm=rank,layers=1,attn=0.2"])
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


TOKENS = 63
RULE = Rule(TOKENS, n_boot=400)


def _quadratic(best_eta: float, noise: float = 0.01, bonus: dict[str, float] | None = None):
    """Per-window NLLs of a 'perplexity' with its minimum at lod:best_eta: a shared difficulty per window,
    a policy's own noise (sd ``noise`` in log-ppl); ``bonus`` makes a policy look better on windows 0..1 only."""
    difficulty = np.random.default_rng(0).normal(0.0, 0.3, 64)
    calls = []

    def ppl(p: Policy) -> float:
        return 10 + 100 * ((p.a_eta - best_eta) ** 2 if p.method == "lod" else 0.1) + (p.first + p.last + p.depth)

    def measure(e: Entry, lo: int, hi: int) -> list[float]:
        calls.append((e.policy, lo, hi))
        p = Policy.parse(e.policy)
        own = np.random.default_rng(zlib.crc32(e.policy.encode())).normal(0.0, noise, 64)
        x = np.log(ppl(p)) + difficulty + own
        x[:2] -= (bonus or {}).get(e.policy, 0.0)
        return (TOKENS * x[lo:hi]).tolist()

    return measure, calls


def _entry(p: Policy) -> Entry:
    return Entry(str(p), ["mutant"], str(p))


def _start(p: Policy, measure, windows: int = 2) -> Entry:
    e = Entry(str(p), ["uniform"], str(p), True)
    e.nll = np.asarray(measure(e, 0, windows))
    return e


def _a_eta_steps(parent: Policy, rng: random.Random) -> list[Policy]:
    return [Policy("lod", round(min(0.5, max(0.0, parent.a_eta + d)), 3)) for d in (-0.05, 0.05, 0.1)]


def _refine(start, measure, **kw):
    args = {"propose": _a_eta_steps, "screen": lambda ps: ps, "entry_of": _entry, "measure": measure, "low": 2,
            "budgets": [2, 8, 32], "rule": RULE, "generations": 5} | kw
    return refine(start, 0.4, **args)


def test_refinement_climbs_to_the_true_optimum_and_never_accepts_worse():
    measure, calls = _quadratic(0.3)
    best, log = _refine(_start(Policy("lod", 0.0), measure), measure)
    assert Policy.parse(best.policy) == Policy("lod", 0.3)
    accepted = [r for r in log if r["accepted"]]
    assert [r["policy"] for r in accepted] == ["lod:0.1", "lod:0.2", "lod:0.3"]
    assert all(r["vs_parent_pct"] < 0 for r in accepted)  # each accepted step beat its parent
    again, again_log = _refine(_start(Policy("lod", 0.0), measure), measure)  # the same seed, the same refinement
    assert again.policy == best.policy and again_log == log


def test_a_mutant_lucky_on_the_windows_it_was_picked_on_is_not_accepted():
    # lod:0.45 looks best on the 2 low windows (a bonus there), is worse than the parent everywhere else
    measure, _ = _quadratic(0.2, bonus={"lod:0.45": 2.0})
    parent = _start(Policy("lod", 0.2), measure)
    best, log = _refine(parent, measure, propose=lambda p, rng: [Policy("lod", 0.45), Policy("lod", 0.25)], generations=1)
    assert best is parent
    assert [r["policy"] for r in log if r["status"] == "judged"][0] == "lod:0.45" and not any(r["accepted"] for r in log)


def test_a_mutant_equal_within_the_noise_is_not_accepted():
    # a changed part that plans to the same quality: noise alone must not move the answer
    measure, _ = _quadratic(0.2, noise=0.1)
    parent = _start(Policy("lod", 0.2), measure)
    best, log = _refine(parent, measure, propose=lambda p, rng: [Policy("lod", 0.2, norm="rank")], generations=1)
    assert best is parent and not any(r["accepted"] for r in log)


def test_the_screen_decides_which_mutants_are_judged():
    measure, calls = _quadratic(0.3)
    best, log = _refine(_start(Policy("lod", 0.1), measure), measure, screen=lambda ps: ps[:1], generations=1)
    assert [r["policy"] for r in log if r["status"] == "judged"] == ["lod:0.05"]  # only the first was judged
    assert best.policy == "lod:0.1"


class _Predictor:
    """The predictor's interface for the screen: a signal that prefers lod at a_eta 0.3."""

    def __init__(self, planner):
        self.planner = planner

    def predict(self, policy, ratio):
        plan = self.planner.plan(policy, ratio)
        return {"score": 1 + abs(policy.a_eta - 0.3) + (policy.method != "lod"), "actual_ratio": plan.block_ratio}


def test_refine_choices_keeps_the_ratio_and_records_where_it_started(bench):
    params = parse_params({"agent": {"static": [0.35], "validation": {"ppl_windows": 2}, "choice": {"windows": [8, 32]},
                           "refine": {"generations": 2, "offspring": 2, "proposals": 6}}})
    measure, calls = _quadratic(0.3)
    start = _start(Policy("uniform"), measure, 32)
    choices = {"0.35": {"contender": "uniform", "contenders": ["uniform"], "policy": "uniform",
                        "ppl_valid": RULE.ppl(start, 0, 32), "windows": 32, "candidates": 5,
                        "_key": start.key, "_nll": start.nll, "_row": {}}}
    out, log = refine_choices(choices, _Predictor(bench.planner), params, lambda p, r: _entry(p), measure, [2, 8, 32], RULE)
    c = out["0.35"]
    assert c["refined_from"] == "uniform" and c["refined_from_ppl_valid"] == choices["0.35"]["ppl_valid"]
    assert c["contender"] == ("refined" if c["policy"] != "uniform" else "uniform")
    if c["contender"] == "refined":
        assert c["ppl_valid"] < c["refined_from_ppl_valid"] and c["refined_vs_choice"]["ci_hi"] < 0 and c["windows"] == 32
    assert {r["ratio"] for r in log} == {0.35} and len([r for r in log if r["status"] == "judged"]) == 4
    assert abs(bench.planner.plan(Policy.parse(c["policy"]), 0.35).block_ratio - 0.35) <= bench.planner.tolerance + 1e-9
    off = parse_params({"agent": {"refine": {"generations": 0}}})
    assert refine_choices(choices, _Predictor(bench.planner), off, lambda p, r: _entry(p), measure, [2], RULE) == (choices, [])


def test_bad_refine_settings_are_refused():
    from ppf.errors import PPFError

    with pytest.raises((PPFError, ValueError), match="proposals"):
        parse_params({"agent": {"refine": {"offspring": 8, "proposals": 4}}})
