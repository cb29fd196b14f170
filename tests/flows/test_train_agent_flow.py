"""`train_agent` on a tiny project: agents, validation on the true model, registry, `ppf policy`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from tiny import TINY_PIPELINE, edit_params, run_cli

from flows.active import active_flow
from flows.collect import collect
from flows.prepare import prepare
from flows.train_agent import train_agent_flow
from flows.train_predictor import train_predictor_flow


@pytest.fixture
def agent_project(tiny_project):
    edit_params(tiny_project, **TINY_PIPELINE)
    prepare("params.yaml", root=str(tiny_project))
    collect("params.yaml", root=str(tiny_project))
    train_predictor_flow("params.yaml", root=str(tiny_project))
    active_flow("params.yaml", root=str(tiny_project))  # active.feed_agent: the agents train on its refit predictor
    return tiny_project


def test_train_agent_validates_on_the_true_model_and_registers(agent_project, capsys, monkeypatch):
    import flows.train_agent as T

    judged = []
    real_judge = T.V.judge
    monkeypatch.setattr(T.V, "judge", lambda wb, plan, windows, seed: judged.append((plan.identity, windows))
                        or real_judge(wb, plan, windows, seed))
    result = train_agent_flow("params.yaml", root=str(agent_project))
    # one judgment per (plan, windows): a policy two contenders or both settings propose, or two policies
    # that plan alike, are judged once
    assert len(judged) == len(set(judged))
    metrics = json.loads((agent_project / "metrics" / "agent.json").read_text())
    for key in ("policy_latency_ms", "mean_ppl_agent", "mean_ppl_uniform", "mean_ppl_owl", "mean_ppl_alpha",
                "mean_ppl_grid_best"):
        assert metrics[key] > 0, key
    # active.feed_agent: the agents trained on the active stage's refit predictor, not train_predictor's
    import hashlib

    from ppf.agent import Agents

    digest = lambda f: hashlib.sha256((agent_project / "models" / f / "predictor.safetensors").read_bytes()).hexdigest()[:16]  # noqa: E731
    assert Agents.load(agent_project / "models" / "agent").meta["predictor"] == digest("predictor_active") != digest("predictor")
    # what policy_latency_ms times: a decision is ONE forward of one actor, nothing else (counted, not
    # timed: no wall-clock threshold on a shared machine)
    agents = Agents.load(agent_project / "models" / "agent")
    forwards = []
    for mode, actor in agents.actors.items():
        actor.register_forward_hook(lambda module, args, output, mode=mode: forwards.append(mode))
    for r in (0.2, 0.3, 0.4):
        agents.decide(r)
    assert forwards == [agents.mode_for(r)[0] for r in (0.2, 0.3, 0.4)]
    assert "reward_agreement" in metrics and set(metrics["reward_agreement"]) <= {"js", "kl", "nll", "best"}
    table = pd.read_csv(agent_project / "results" / "agent_validation.csv")
    dyn = table[table.setting == "dynamic"]
    assert sorted(dyn.ratio.unique()) == [0.2, 0.3, 0.4]
    # the dynamic actor on its own beside the agent (which answers 0.2 / 0.4 with a static actor when one
    # exists); LLM-Pruner's allocation only where the model has layers left to prune beside its kept ones
    assert set(dyn.contender) - {"llm_pruner", "blockpruner"} == {"agent", "dynamic_agent", "uniform", "owl", "alpha",
                                                                   "shortgpt", "grid_best"}
    assert metrics["mean_ppl_dynamic_agent"] > 0
    assert ((table.actual_ratio - table.ratio).abs() <= 0.02 + 1e-9).all()
    assert "search" in set(table[table.setting == "static"].contender)
    curves = pd.read_csv(agent_project / "plots" / "agent" / "rewards.csv")
    assert set(curves["mode"]) == {"dynamic", "static-0.3"} and curves.episode.max() == 4
    assert result["registry"]["version"] == "1" and result["registry"]["champion"]
    # the final choice at the static ratio: every policy contender (with the restarts' actors), identical
    # plans merged, races on the validation's 1 window, then 2 and 4 (tiny profile); then the refinement
    stages = pd.read_csv(agent_project / "results" / "agent_choice.csv")
    static = table[(table.setting == "static") & ~table.contender.str.startswith("search")]
    restarts = {c for c in static.contender if "@seed" in c}  # 3 restarts: the 2 not kept of each mode
    assert len(restarts) == 4 and {c.split("@")[0] for c in restarts} == {"agent", "dynamic_agent"}
    race, refine = stages[stages.contender != "mutant"], stages[stages.contender == "mutant"]
    first = race[race.stage == 0]
    assert sorted(n for names in first.contender for n in names.split("+")) == sorted(static.contender)
    assert len(first) == static.groupby(["ppl_valid", "true_js", "true_kl"]).ngroups  # one entry per distinct plan
    assert (first.windows == 1).all() and (first.status != "out").all()  # 1 window: nothing can be told apart
    assert set(race.windows) <= {1, 2, 4} and race.stage.max() >= 1
    chosen = metrics["choice"]["0.3"]
    last = race[race.stage == race.stage.max()]
    answer = last[last.policy == chosen["refined_from"]].iloc[0]
    assert answer.status in ("leader", "floor") and chosen["decision"]["windows"] == answer.windows
    assert chosen["refined_from_ppl_valid"] == pytest.approx(answer.ppl_valid, rel=1e-5) or chosen["contender"] == "refined"
    if chosen["decision"]["reason"].startswith("floor"):
        assert chosen["allocation"] and answer.status in ("floor", "leader")
    # the refinement (tiny: 1 generation, 2 of 4 mutants judged on 1 window, the better raced on 2 and 4)
    judged_mutants = refine[refine.status == "judged"]
    assert len(judged_mutants) == 2 and (judged_mutants.windows == 1).all()
    assert not set(judged_mutants.policy) & {chosen["refined_from"]}
    assert chosen["contender"] == ("refined" if refine.accepted.any() else chosen["contender"])
    if refine.accepted.any():
        assert chosen["refined_vs_choice"]["ci_hi"] < 0 and chosen["policy"] == refine[refine.accepted].policy.iloc[0]
    else:
        assert chosen["policy"] == chosen["refined_from"]
    from ppf.agent import Agents

    assert Agents.load(agent_project / "models" / "agent").choice(0.3) == chosen

    monkeypatch.chdir(agent_project)
    model = yaml.safe_load((agent_project / "params.yaml").read_text())["model"]["name"]
    import ppf.agent.store as S
    import ppf.workbench as W
    from ppf.predictor import Predictor

    with monkeypatch.context() as m:  # `ppf policy` at a dynamic ratio: one actor forward, one predictor
        acts, predicted = [], []  # answer, and never the dense model (counted, not timed)
        real_act, real_predict = S.act, Predictor.predict
        m.setattr(S, "act", lambda actor, state: acts.append(state) or real_act(actor, state))
        m.setattr(Predictor, "predict", lambda self, *a, **k: predicted.append(a) or real_predict(self, *a, **k))
        m.setattr(W, "load", lambda *a, **k: pytest.fail("`ppf policy` loaded the dense model"))
        code, out, err = run_cli(["policy", "--model", model, "--ratio", "0.25"], capsys)
    assert code == 0, err
    assert len(acts) == 1 and len(predicted) == 1
    answer = json.loads(out)
    assert answer["method"] in {"lod", "esd", "bi"} and 0 <= answer["a_eta"] <= 0.5
    assert len(answer["layer_ratios"]) == 3 and answer["predicted"] > 0
    assert answer["signal"] == "js" and answer["mode"] == "dynamic"
    assert answer["decision_ms"] >= 0 and answer["warning"] is None
    code, out, err = run_cli(["policy", "--model", model, "--ratio", "0.6"], capsys)
    assert code == 0 and "outside every trained range" in err and json.loads(out)["warning"]
    code, _, err = run_cli(["policy", "--model", model, "--ratio", "1.3"], capsys)
    assert code == 2 and "outside (0, 1)" in err
    code, out, err = run_cli(["prune", "--model", model, "--ratio", "0.3", "--policy", "agent", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["policy"] == answer_for(agent_project, model, 0.3, capsys) == chosen["policy"]


def answer_for(project, model, ratio, capsys) -> str:
    code, out, err = run_cli(["policy", "--model", model, "--ratio", str(ratio)], capsys)
    assert code == 0, err
    return json.loads(out)["policy"]


def test_no_trained_agent_is_a_clear_error(agent_project, capsys, monkeypatch):
    monkeypatch.chdir(agent_project)
    model = yaml.safe_load((agent_project / "params.yaml").read_text())["model"]["name"]
    code, _, err = run_cli(["policy", "--model", model, "--ratio", "0.3"], capsys)
    assert code == 2 and "no trained agent" in err and "train_agent" in err
    code, _, err = run_cli(["policy", "--model", model, "--ratio", "0.3", "--agent", "registry:champion"], capsys)
    assert code == 2 and "champion" in err

