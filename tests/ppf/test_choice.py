"""The final choice: identical plans merged, paired comparisons on growing budgets, the floor."""

from __future__ import annotations

import numpy as np
import pytest

from ppf.agent.choice import FLOOR, Entry, Rule, budgets, choose, merge, race
from ppf.policy import Policy

TOKENS = 511  # eval.seqlen 512: a window predicts 511 tokens
RULE = Rule(TOKENS, n_boot=400, level=0.95, seed=0)


class Windows:
    """Synthetic valid windows: a shared difficulty per window, and per contender a log-ppl offset plus its
    own per-window noise (sd ``noise`` in log-ppl), so that pairing removes the shared part only."""

    def __init__(self, offsets: dict[str, float], noise: float = 0.08, n: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.difficulty = rng.normal(np.log(40.0), 0.3, n)
        self.nll = {k: TOKENS * (self.difficulty + off + rng.normal(0.0, noise, n)) for k, off in offsets.items()}
        self.calls: list[tuple[str, int, int]] = []

    def measure(self, e: Entry, lo: int, hi: int) -> list[float]:
        self.calls.append((e.key, lo, hi))
        return self.nll[e.key][lo:hi].tolist()

    def entries(self, first: int = 8, floor: tuple[str, ...] = ()) -> list[Entry]:
        return [Entry(k, [k], k, k in floor, np.asarray(v[:first])) for k, v in self.nll.items()]


def test_identical_plans_are_merged_before_ranking():
    rows = [{"contender": "agent", "policy": "bi:0.1,layers=6", "nll_valid": [1.0, 2.0], "plan": "A"},
            {"contender": "shortgpt", "policy": "uniform,layers=6", "nll_valid": [1.0, 2.0], "plan": "A"},
            {"contender": "dynamic_agent", "policy": "bi:0.2,layers=6", "nll_valid": [1.0, 2.0], "plan": "A"},
            {"contender": "llm_pruner", "policy": "uniform,keep=4:2,attn=groups", "nll_valid": [1.5, 2.5], "plan": "B"}]
    entries = merge(rows, key=lambda row: row["plan"])
    assert [e.names for e in entries] == [["agent", "shortgpt", "dynamic_agent"], ["llm_pruner"]]
    assert entries[0].policy == "bi:0.1,layers=6"  # the first row's text stands for the plan
    assert [e.floor for e in entries] == [True, True]  # ShortGPT's allocation is among the first's names
    assert merge(rows[:1], key=lambda row: row["plan"])[0].floor is False


def test_a_contender_within_noise_of_the_leader_survives_a_stage():
    # b is 1 % worse than a: on 8 noisy windows nothing can tell them apart, so both are measured further
    w = Windows({"a": 0.0, "b": 0.01, "c": 0.6}, seed=3)
    answer, decision, log = race(w.entries(), [8, 16, 32], w.measure, RULE)
    first = {x["contender"]: x["status"] for x in log if x["stage"] == 0}
    assert first["c"] == "out" and {first["a"], first["b"]} == {"leader", "tied"}
    assert ("b", 8, 16) in w.calls and ("a", 8, 16) in w.calls and not any(k == "c" for k, _, _ in w.calls)
    assert answer.key in ("a", "b") and decision["windows"] >= 16


def test_the_race_finds_a_known_better_contender_in_most_draws():
    offsets = {"best": -0.03, "near": 0.0, "also": 0.0, "worse": 0.02, "bad": 0.15, "awful": 0.5}
    wins, measured = 0, []
    for seed in range(120):
        w = Windows(offsets, seed=seed)
        answer, decision, _ = race(w.entries(), [8, 16, 32, 64, 128], w.measure, RULE)
        wins += answer.key == "best"
        assert answer.key not in ("bad", "awful")
        measured.append(decision["measured_windows"])
    assert wins / 120 >= 0.9
    # a fixed cut after 8 windows (the old rule: the best 3 on 8, then the best on 32) loses it more often
    cut = 0
    for seed in range(120):
        w = Windows(offsets, seed=seed)
        top = sorted(offsets, key=lambda k: w.nll[k][:8].mean())[:3]
        cut += min(top, key=lambda k: w.nll[k][:32].mean()) == "best"
    assert cut < wins
    # windows are spent on the close calls only: far less than every contender on every window
    assert np.mean(measured) < 0.6 * len(offsets) * 128


def test_the_floor_is_the_answer_when_the_agents_propose_only_worse_policies():
    w = Windows({"agent": 0.05, "dynamic_agent": 0.08, "llm_pruner": 0.0, "owl": 0.2, "uniform": 0.25})
    answer, decision, log = race(w.entries(floor=("llm_pruner", "owl", "uniform")), [8, 16, 32, 64], w.measure, RULE)
    assert answer.key == "llm_pruner" and decision["reason"] == "floor: it led"


def test_the_answer_leaves_the_floor_only_with_the_interval_below_0():
    # the agent is 0.5 % better than LLM-Pruner's allocation: real, but far inside the noise of 128 windows
    w = Windows({"agent": -0.005, "llm_pruner": 0.0, "uniform": 0.3}, noise=0.1)
    answer, decision, log = race(w.entries(floor=("llm_pruner", "uniform")), [8, 16, 32, 64, 128], w.measure, RULE)
    if decision["leader"] == "agent":
        assert decision["vs_floor"]["ci_hi"] >= 0 and answer.key == "llm_pruner"
        assert decision["reason"].startswith("floor: nothing was better")
    assert answer.key == "llm_pruner" and decision["windows"] == 128  # the tie was followed to the last budget
    assert all(x["status"] != "out" for x in log if x["contender"] == "llm_pruner")  # the floor never leaves
    # 10 % better: the agent is the answer, and the record says it beat the floor
    w = Windows({"agent": -0.1, "llm_pruner": 0.0, "uniform": 0.3})
    answer, decision, _ = race(w.entries(floor=("llm_pruner", "uniform")), [8, 16, 32, 64, 128], w.measure, RULE)
    assert answer.key == "agent" and decision["reason"] == "better than the floor" and decision["vs_floor"]["ci_hi"] < 0


def test_the_floor_stays_while_significantly_worse_baselines_leave():
    w = Windows({"agent": -0.3, "llm_pruner": 0.0, "owl": 0.4, "uniform": 0.45})
    answer, decision, log = race(w.entries(floor=("llm_pruner", "owl", "uniform")), [8, 16], w.measure, RULE)
    status = {x["contender"]: x["status"] for x in log if x["stage"] == 0}
    assert status == {"agent": "leader", "llm_pruner": "floor", "owl": "out", "uniform": "out"}
    assert answer.key == "agent" and decision["stages"] == 1  # nothing open: no more windows spent


def test_the_race_is_deterministic_and_leaves_out_the_held_out_windows():
    w = Windows({"a": 0.0, "b": 0.02})
    # b looks far better on the first 8 windows only: with them held out it does not win on them
    w.nll["b"][:8] -= TOKENS * 1.0
    once = race(w.entries(), [16, 32, 64], w.measure, RULE, held_out=8)
    twice = race(w.entries(), [16, 32, 64], w.measure, RULE, held_out=8)
    assert once[0].key == twice[0].key == "a" and once[1] == twice[1] and once[2] == twice[2]
    assert all(x["windows"] in (8, 24, 56) for x in once[2])


def test_budgets_start_with_the_validation_and_stop_at_the_split():
    assert budgets(8, [16, 32, 64, 128], 117) == [8, 16, 32, 64, 117]
    assert budgets(8, [16, 32], 20) == [8, 16, 20]
    assert budgets(8, [], 117) == [8]
    assert budgets(8, [16], 4) == [4]


def test_choose_races_each_static_ratio_and_names_a_baseline_answer():
    w = Windows({"A": 0.0, "B": 0.2, "C": -0.2}, n=64)
    rows = [{"ratio": 0.2, "setting": "static", "contender": "agent", "policy": "bi:0.1", "key": "B"},
            {"ratio": 0.2, "setting": "static", "contender": "llm_pruner", "policy": "uniform,keep=4:2,attn=groups", "key": "A"},
            {"ratio": 0.4, "setting": "static", "contender": "agent", "policy": "bi:0.3", "key": "C"},
            {"ratio": 0.4, "setting": "static", "contender": "llm_pruner", "policy": "uniform,keep=4:2,attn=groups", "key": "A"},
            {"ratio": 0.4, "setting": "static", "contender": "search#1", "policy": "search:1", "key": "Z"},
            {"ratio": 0.3, "setting": "dynamic", "contender": "agent", "policy": "bi:0.2", "key": "C"}]
    for row in rows:
        row["_policy"] = None if row["contender"].startswith("search") else Policy("uniform")
        row["nll_valid"] = w.nll.get(row["key"], np.zeros(64))[:8].tolist()
    choices, log = choose(rows, lambda row: row["key"], [8, 16, 32, 64], w.measure, RULE)
    assert set(choices) == {"0.2", "0.4"}  # static ratios only; the search vector and dynamic rows take no part
    low, high = choices["0.2"], choices["0.4"]
    assert low["contender"] == "llm_pruner" and low["allocation"] == FLOOR["llm_pruner"]
    assert high["contender"] == "agent" and high["allocation"] is None and high["candidates"] == 2
    assert {x["ratio"] for x in log} == {0.2, 0.4}


def test_the_benchmark_names_a_baseline_allocation_that_ppf_answers(tmp_path):
    import torch

    import ppf.workbench as W
    from ppf.agent import Agents, build_actor, save_agents
    from ppf.baselines import get
    from ppf.config import parse_params
    from tiny import make_llama

    model, tok = make_llama(4, 2, layers=8)
    gen = torch.Generator().manual_seed(0)
    wb = W.Workbench.of(model, tok, parse_params({"pruning": {"compensation": "none"}}),
                        torch.randint(4, 90, (4, 16), generator=gen), torch.randint(4, 90, (2, 16), generator=gen),
                        root=tmp_path)
    file = save_agents({"static-0.4": build_actor((8,))}, {"static-0.4": (0.4, 0.4)}, tmp_path / "models" / "agent",
                       {"model": wb.name, "net_arch": [8]})
    for allocation, needle in ((FLOOR["llm_pruner"], "(LLM-Pruner's allocation: nothing beat it on valid)"),
                               (None, "(chosen (agent) agent)")):
        chosen = {"contender": "llm_pruner" if allocation else "agent", "policy": "uniform,keep=1:1,attn=groups",
                  "allocation": allocation, "ppl_valid": 9.0, "windows": 32}
        Agents.load(file).with_choices({"0.4": chosen}, file)
        desc, plan = get("ppf").plan(wb, 0.4)
        assert desc == "uniform,keep=1:1,attn=groups " + needle
        assert plan == wb.planner.plan(Policy.parse(chosen["policy"]), 0.4)


def test_with_confirm_an_early_lead_is_measured_to_the_last_budget():
    # b is 3 % better on windows 0..15 and as much worse after them, equal over all 128: an early look would
    # take it, confirm does not
    w = Windows({"a": 0.0, "b": 0.0}, noise=0.005, n=128, seed=2)
    w.nll["b"][:16] -= TOKENS * 0.03
    w.nll["b"][16:] += TOKENS * 0.03 * 16 / 112
    early, decision, _ = race(w.entries(floor=("a",)), [8, 16, 32, 64, 128], w.measure, RULE)
    assert early.key == "b" and decision["windows"] <= 16  # without confirm: decided on its early lead
    w.calls.clear()
    answer, decision, log = race(w.entries(floor=("a",)), [8, 16, 32, 64, 128], w.measure, RULE, confirm=True)
    assert answer.key == "a" and decision["windows"] == 128 and ("b", 64, 128) in w.calls
    # a challenger clearly worse still leaves at once
    w = Windows({"a": 0.0, "b": 0.2})
    answer, decision, _ = race(w.entries(floor=("a",)), [8, 16, 32, 64, 128], w.measure, RULE, confirm=True)
    assert answer.key == "a" and decision["windows"] == 8


def test_no_answer_before_the_minimum_windows():
    w = Windows({"agent": -0.2, "llm_pruner": 0.0})
    _, decision, _ = race(w.entries(floor=("llm_pruner",)), [8, 16, 32, 64], w.measure, RULE)
    assert decision["windows"] == 8  # a clear winner: decided at once without a minimum
    answer, decision, _ = race(w.entries(floor=("llm_pruner",)), [8, 16, 32, 64], w.measure,
                               Rule(TOKENS, n_boot=400, min_windows=32))
    assert answer.key == "agent" and decision["windows"] == 32


def test_the_windows_are_a_seeded_random_sample_of_the_split():
    import torch

    import ppf.workbench as W
    from ppf.config import parse_params
    from ppf.metrics import window_nll
    from tiny import make_llama

    model, tok = make_llama(4, 2)
    params = parse_params({"eval": {"seqlen": 16, "batch_size": 3, "matmul_precision": "ieee"}})
    gen = torch.Generator().manual_seed(0)
    wb = W.Workbench.of(model, tok, params, torch.randint(4, 90, (4, 16), generator=gen),
                        torch.randint(4, 90, (2, 16), generator=gen))
    wb._splits["valid"] = torch.randint(4, 90, (16 * 20 + 5,), generator=gen)
    order = wb.window_order("valid", 7)
    assert sorted(order) == list(range(20)) and order != list(range(20)) and order == wb.window_order("valid", 7)
    assert wb.window_order("valid", None) == list(range(20))
    every = window_nll(model, wb._splits["valid"], 16, 4)  # file order, all 20 windows
    grown = wb.window_nll(model, "valid", 0, 5, 7) + wb.window_nll(model, "valid", 5, 20, 7)
    assert grown == pytest.approx([float(every[i]) for i in order], rel=1e-6)
    assert wb.window_nll(model, "valid", 0, 4) == pytest.approx(every[:4].tolist(), rel=1e-6)
