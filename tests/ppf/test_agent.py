"""The agent: sampling windows (Eqs 1-3), action decoding, the environment, DDPG, saved agents, search."""

from __future__ import annotations

import numpy as np
import pytest

from ppf.agent import AgentConfig, Agents, PruningEnv, act, decode, encode, sampling_window, save_agents, train_agent
from ppf.agent.env import observe
from ppf.baselines import alpha, owl
from ppf.errors import PPFError
from ppf.plan import DenseShape
from ppf.policy import Policy


def test_a_window_draws_one_ratio_in_each_sub_interval():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = sampling_window(0.2, 0.4, 5, rng)
        edges = np.linspace(0.2, 0.4, 6)
        assert len(r) == 5 and np.all((r >= edges[:-1]) & (r <= edges[1:]))
    assert np.allclose(sampling_window(0.3, 0.3, 4, rng), 0.3)  # static mode: alpha = beta
    a, b = sampling_window(0.2, 0.4, 5, np.random.default_rng(1)), sampling_window(0.2, 0.4, 5, np.random.default_rng(1))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("args,match", [((0.4, 0.2, 5), "reversed"), ((0.2, 1.2, 5), "outside"), ((0.2, 0.4, 0), "positive")])
def test_bad_windows_are_refused(args, match):
    with pytest.raises(PPFError, match=match):
        sampling_window(*args, np.random.default_rng(0))


def test_actions_decode_to_valid_policies_and_back():
    assert decode(np.array([0.1, 0.9, -0.5, -1.0])) == Policy("esd", 0.0)
    assert decode(np.array([0.9, 0.1, -0.5, 1.0])) == Policy("lod", 0.5)
    assert decode(np.array([-1, -1, 1, 0.0])) == Policy("bi", 0.25)
    assert decode(np.array([5, 0, 0, 7])) == Policy("lod", 0.5)  # out-of-box actions are clipped
    for p in (Policy("bi", 0.1), Policy("esd", 0.45), Policy("lod", 0.0)):
        assert decode(encode(p)) == p
    with pytest.raises(PPFError, match="4 numbers"):
        decode(np.zeros(3))


def test_the_state_spans_the_trained_range():
    assert [observe(r, 0.2, 0.4) for r in (0.2, 0.3, 0.4)] == pytest.approx([-1, 0, 1])
    assert observe(0.5, 0.5, 0.5) == 0 and observe(0.5, 0.2, 0.4) == pytest.approx(2)


def test_an_episode_is_one_window_with_reward_minus_ppr():
    seen = []

    def scorer(policy, ratio):
        seen.append((policy, ratio))
        return 0.5 * ratio, ratio * 1.01

    env = PruningEnv(scorer, 0.2, 0.4, window=3, seed=0)
    obs, _ = env.reset()
    rewards, done, n = [], False, 0
    while not done:
        obs, reward, done, truncated, info = env.step(np.array([1, -1, -1, 0.0]))
        rewards.append(reward)
        n += 1
    assert n == 3 and not truncated
    assert np.allclose(rewards, -0.5 / 1.01)
    assert [str(p) for p, _ in seen] == ["lod:0.25"] * 3 and len({r for _, r in seen}) == 3


def _toy_scorer(policy, ratio):
    """Best policy: bi with a_eta 0.3 at every ratio."""
    return ratio * (1 + 0.3 * (policy.method != "bi") + (policy.a_eta - 0.3) ** 2), ratio


def test_ddpg_finds_the_best_method_and_decays_its_noise():
    actor, history = train_agent(_toy_scorer, 0.2, 0.4, AgentConfig(episodes=80, gradient_steps=10, seed=0))
    assert len(history.episodes) == 80 and len(history.steps) == 400
    assert history.episodes[-1]["noise"] == pytest.approx(0.5 * 0.95 ** 79)
    assert np.mean([e["mean_reward"] for e in history.episodes[-10:]]) > np.mean(
        [e["mean_reward"] for e in history.episodes[:10]])
    for r in (0.2, 0.3, 0.4):
        p = decode(act(actor, observe(r, 0.2, 0.4)))
        assert p.method == "bi" and abs(p.a_eta - 0.3) < 0.15


def test_saved_agents_choose_their_mode_and_warn_outside(tmp_path):
    from ppf.agent import build_actor

    actors = {m: build_actor((8,)) for m in ("dynamic", "static-0.5")}
    modes = {"dynamic": (0.2, 0.4), "static-0.5": (0.5, 0.5)}
    save_agents(actors, modes, tmp_path / "agent", {"model": "m", "net_arch": [8]})
    agents = Agents.load(tmp_path / "agent")
    assert agents.mode_for(0.3) == ("dynamic", None) and agents.mode_for(0.5) == ("static-0.5", None)
    mode, warning = agents.mode_for(0.7)
    assert mode == "dynamic" and "outside every trained range" in warning and "[0.2, 0.4]" in warning
    # a decision is ONE forward of the mode's actor and nothing else (counted, not timed: no wall-clock
    # threshold on a shared machine)
    forwards = []
    for name, actor in agents.actors.items():
        actor.register_forward_hook(lambda module, args, output, name=name: forwards.append(name))
    out = agents.decide(0.25)
    assert isinstance(out["policy"], Policy) and out["decision_ms"] >= 0 and forwards == ["dynamic"]
    agents.decide(0.5)
    assert forwards == ["dynamic", "static-0.5"]
    assert out["policy"] == decode(act(actors["dynamic"], observe(0.25, 0.2, 0.4)))  # -0.5: the range maps to [-1, 1]
    with pytest.raises(PPFError, match="outside"):
        agents.decide(1.3)
    with pytest.raises(PPFError, match="no trained agent"):
        Agents.load(tmp_path / "none")


def test_baseline_mappings_follow_their_papers():
    assert owl.policy(0.3) == Policy("lod", 0.08)
    p = alpha.policy(0.4)
    assert p.method == "esd" and p.a_eta == pytest.approx(0.12)
    assert alpha.policy(0.5, epsilon=1.0).a_eta == 0.5  # capped to the policy range


def test_search_improves_the_surrogate_and_returns_distinct_plans():
    from ppf.policy import Planner, UnitRanks
    from ppf.search import cma_search

    shape = DenseShape(6, 16, 4, 2, 4, 32)
    planner = Planner("m", shape, {"lod": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}, UnitRanks.of(None, shape), 0.9, 0.02)
    weights = np.array([3.0, 0.2, 0.2, 0.2, 0.2, 3.0])  # first and last layers hurt most

    class Surrogate:
        def __init__(self):
            self.planner = planner

        def predict_plan(self, plan):
            return float(np.dot(weights, plan.layer_ratios())) / 10

    start = Policy("lod", 0.0)
    cands, stats = cma_search(Surrogate(), 0.4, start, budget=300, sigma0=0.05, top_k=3, seed=0)
    assert stats["best_predicted_ppr"] < stats["start_predicted_ppr"]
    assert len(cands) == 3 and len({c.scores for c in cands}) == 3
    best = planner.plan_scores(list(cands[0].scores), cands[0].a_eta, 0.4).layer_ratios()
    assert best[0] < 0.4 and best[-1] < 0.4  # it spared the expensive layers


def test_a_stored_choice_is_the_answer_at_its_ratio(tmp_path):
    from ppf.agent import build_actor

    actors = {m: build_actor((8,)) for m in ("dynamic", "static-0.4")}
    save_agents(actors, {"dynamic": (0.2, 0.4), "static-0.4": (0.4, 0.4)}, tmp_path / "agent", {"model": "m", "net_arch": [8]})
    agents = Agents.load(tmp_path / "agent")
    assert agents.policy_for(0.4)["chosen"] is None and agents.policy_for(0.4)["policy"] == agents.decide(0.4)["policy"]
    chosen = {"contender": "llm_pruner", "policy": "uniform,keep=4:2,attn=groups", "ppl_valid": 9.0, "windows": 32,
              "candidates": 8}
    file = agents.with_choices({"0.4": chosen}, tmp_path / "agent")
    again = Agents.load(file)
    out = again.policy_for(0.4)
    assert out["policy"] == Policy.parse("uniform,keep=4:2,attn=groups") and out["mode"] == "chosen (llm_pruner)"
    assert out["chosen"] == chosen
    assert again.policy_for(0.3)["policy"] == again.decide(0.3)["policy"] and again.choice(0.3) is None
    assert again.decide(0.4)["policy"] == agents.decide(0.4)["policy"]  # the actors are untouched


def test_reward_agreement_says_which_signal_ranks_a_ratio_as_perplexity_does():
    import pandas as pd

    from ppf.recipes.validation import reward_agreement

    rows = []
    for r in (0.2, 0.4):
        for i, ppl in enumerate([30.0, 40.0, 50.0, 60.0]):
            rows.append({"setting": "dynamic", "ratio": r, "contender": f"c{i}", "ppl_valid": ppl,
                         "true_js": [0.1, 0.3, 0.2, 0.4][i],      # one swap: rho 0.8
                         "true_kl": [1.0, 2.0, 3.0, 4.0][i],      # same order: rho 1
                         "true_nll": [4.0, 3.0, 2.0, 1.0][i]})    # reversed: rho -1
    rows.append(rows[0] | {"contender": "search", "true_kl": 99.0})  # the aggregated search row is left out
    out = reward_agreement(pd.DataFrame(rows))
    assert out["kl"] == {"mean": pytest.approx(1.0), "min": pytest.approx(1.0), "ratios": 2}
    assert out["js"]["mean"] == pytest.approx(0.8) and out["nll"]["mean"] == pytest.approx(-1.0)
    assert out["best"] == "kl"


def test_restart_contenders_skip_a_ratio_whose_kept_actor_is_that_seed(monkeypatch):
    """Each mode keeps its own best restart: seed 1 may be kept at one static ratio and not at another;
    `agent@seed1` is then a contender only where it is not `agent` already."""
    import ppf.recipes.agent as R
    from ppf.agent import build_actor
    from ppf.agent.env import PAPER_SPACE
    from ppf.config import parse_params

    params = parse_params({"agent": {"static": [0.2, 0.4], "net_arch": [8]}})
    monkeypatch.setattr(R, "action_space", lambda wb: PAPER_SPACE)
    monkeypatch.setattr(R, "Workbench", lambda root, params: None)
    state = build_actor((8,), PAPER_SPACE.dim).state_dict()
    runs = [{"seed": k, "state": state} for k in range(3)]
    trained = {"dynamic": {"seed": 0, "runs": runs}, "static-0.2": {"seed": 1, "runs": runs},
               "static-0.4": {"seed": 0, "runs": runs}}
    restarts = R.restarts(None, params, trained)
    assert set(restarts) == {"agent@seed0", "agent@seed1", "agent@seed2", "dynamic_agent@seed1", "dynamic_agent@seed2"}
    assert restarts["agent@seed1"](0.2) is None and restarts["agent@seed1"](0.4) is not None
    assert restarts["agent@seed0"](0.4) is None and restarts["agent@seed0"](0.2) is not None
    assert restarts["dynamic_agent@seed2"](0.5) is not None  # the dynamic actor answers at every static ratio
