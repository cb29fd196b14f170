"""The `train_agent` recipe: DDPG agents on the predictor, validated on the TRUE model, PPF's choice.

- :func:`predictor_scorer` — the environment's scorer: (policy, ratio) → (predicted signal, r_act);
- :func:`modes` / :func:`agent_config` / :func:`action_space` — what params.yaml asks to train, in
  the policy space collection sampled;
- :func:`train_mode` / :func:`mean_predicted_ppr` — one DDPG run (a cached task's body) and how
  restarts are compared (the predictor judges, never the truth); :func:`restarts` — the restarts
  that were not kept, as contenders of the final choice;
- :func:`judged` — every validation row measured on the true model, once per distinct plan;
- :func:`choose` — PPF's final choice per static ratio (:mod:`ppf.agent.choice`) and its refinement
  (:mod:`ppf.agent.refine`) on growing valid budgets;
- :func:`publish` — the agent file with the choices, metrics/agent.json, the tables and plots, the
  MLflow run and the registered ``ppf-agent``;
- :func:`locate` / :func:`answer` — `ppf policy`: the champion (or the project's) agent's decision.

The validation's contenders and its report are :mod:`ppf.recipes.validation`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppf import plots, tracking
from ppf.agent import choice as C
from ppf.agent.ddpg import AgentConfig, act, build_actor, train_agent
from ppf.agent.env import PAPER_SPACE, ActionSpace, observe
from ppf.agent.refine import refine_choices
from ppf.agent.store import Agents, save_agents
from ppf.config import Params
from ppf.errors import PPFError
from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from ppf.plan import PruningPlan
from ppf.policy import Policy
from ppf.predictor import Predictor, timed
from ppf.recipes import validation as V
from ppf.recipes.collect import context_key as collect_context
from ppf.champion import Incomparable, locate as locate_file, promote
from ppf.workbench import Workbench


def predictor_scorer(predictor: Any):
    def score(policy: Policy, ratio: float) -> tuple[float, float]:
        out = predictor.predict(policy, ratio)
        return out["score"], out["actual_ratio"]

    return score


def modes(params: Params) -> dict[str, tuple[float, float]]:
    a = params.agent
    out = {"dynamic": (float(a.dynamic[0]), float(a.dynamic[1]))}
    out.update({f"static-{r:g}": (float(r), float(r)) for r in a.static})
    return out


def agent_config(params: Params) -> AgentConfig:
    a = params.agent
    return AgentConfig(episodes=a.episodes, window=a.window, noise=a.noise, noise_decay=a.noise_decay,
                       gamma=a.gamma, learning_rate=a.learning_rate, batch_size=a.batch_size,
                       buffer_size=a.buffer_size, learning_starts=a.learning_starts,
                       gradient_steps=a.gradient_steps, tau=a.tau, net_arch=tuple(a.net_arch), seed=a.seed)


def selection_ratios(alpha: float, beta: float, n: int = 9) -> list[float]:
    """The ratios a mode's restarts are compared on (the predictor judges; the truth is not peeked at)."""
    return [alpha] if beta <= alpha else [float(r) for r in np.linspace(alpha, beta, n)]


def action_space(wb: Workbench) -> ActionSpace:
    """The agent searches the space collection sampled (``collect.space``; the paper's when it is off)."""
    space = wb.params.collect.space
    order = wb.stored_block_order() if space.fraction > 0 and "blocks" in space.orders else None
    return ActionSpace.of(space, wb.shape, wb.params.pruning.max_layer_ratio, order)


def mean_predicted_ppr(actor: Any, predictor: Any, alpha: float, beta: float, space: ActionSpace = PAPER_SPACE) -> float:
    score = predictor_scorer(predictor)
    pprs = []
    for r in selection_ratios(alpha, beta):
        value, actual = score(space.decode(act(actor, observe(r, alpha, beta)), r), r)
        pprs.append(value / actual)
    return float(np.mean(pprs))


def locate(ref: str | Path | None, root: Path, params: Params, scratch: str | Path) -> Path:
    """The agent file for ``ref``: a path, ``registry:champion`` / ``registry:<version>``, or None —
    the champion when one is registered, else the project's models/agent."""
    own = Path(root) / "models" / "agent"
    if ref is None and (tracking.store_dir(root) / "mlflow.db").is_file():
        tracking.configure(root)
        if tracking.champion(params.tracking.agent_name) is not None:
            ref = "registry:champion"
    return locate_file(ref, own, params.tracking.agent_name, "agent.safetensors", root, scratch, "train_agent")


def predictor_dir(root: Path, params: Params) -> Path:
    """The predictor the agents train on: the active stage's refit one (``active.feed_agent``) or
    train_predictor's."""
    return Path(root) / "models" / ("predictor_active" if params.active.feed_agent else "predictor")


def policy_for(wb: Workbench, ratio: float, ref: str | Path | None = None) -> dict[str, Any]:
    """`ppf policy`: PPF's policy for ``ratio`` (:meth:`Agents.policy_for`: the final choice at a static
    ratio, else the actor's decision) with its plan and the predictor's score."""
    with tempfile.TemporaryDirectory() as scratch:
        agents = Agents.load(locate(ref, wb.root, wb.params, scratch))
    if agents.meta.get("model") != wb.name:
        raise PPFError(f"the agent was trained for {agents.meta.get('model')}, not {wb.name}; "
                       "train one for this model (`dvc repro train_agent` with its name in params.yaml)")
    decision = agents.policy_for(ratio)
    pol = decision["policy"]
    folder = predictor_dir(wb.root, wb.params)
    if not (folder / "predictor.safetensors").is_file():  # a project whose agent trained on train_predictor's
        folder = wb.root / "models" / "predictor"
    pred = Predictor.load(folder, wb.planner).predict(pol, ratio)
    return {"ratio": ratio, "policy": pol, "method": pol.method, "a_eta": pol.a_eta, "mode": decision["mode"],
            "actual_ratio": pred["actual_ratio"], "layer_ratios": pred["plan"].layer_ratios(),
            "removed_attention": pred["plan"].removed_attention, "removed_mlp": pred["plan"].removed_mlp,
            "signal": pred["signal"], "predicted": pred["score"], "predicted_ppr": pred["score"] / pred["actual_ratio"],
            "decision_ms": decision["decision_ms"], "warning": decision["warning"], "chosen": decision["chosen"]}


# ---- the stage ------------------------------------------------------------------------------------
def context_key(root: Path, params: Params) -> str:
    """What a validation judgment depends on besides the plan: collection's context (model, tokens,
    importance, pruning settings), the evaluation settings, the order of the valid windows
    (``agent.choice.seed``) and the valid split's text."""
    corpus = Path(root) / "data" / "corpus" / "valid.txt"
    payload = [collect_context(root, params), params.eval.model_dump(), params.agent.choice.seed,
               hashlib.sha256(corpus.read_bytes()).hexdigest()[:16] if corpus.is_file() else "none"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def predictor_digest(root: Path, params: Params) -> str:
    """The hash of the predictor file the agents train on (part of every training task's key)."""
    path = predictor_dir(root, params) / "predictor.safetensors"
    if not path.is_file():
        stage = "active" if path.parent.name == "predictor_active" else "train_predictor"
        raise PPFError(f"'{path}' is missing; run `dvc repro {stage}` first")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_predictor(root: Path, params: Params) -> Predictor:
    return Predictor.load(predictor_dir(root, params), Workbench(root, params).planner)


def train_mode(root: Path, params: Params, alpha: float, beta: float, config: dict[str, Any]) -> dict[str, Any]:
    """One DDPG run of a mode on the predictor, with its mean predicted PPR over the mode's selection
    ratios (the training task's body; ``config`` is :func:`agent_config`'s as a dict, with its seed)."""
    predictor = load_predictor(root, params)
    cfg = AgentConfig(**{**config, "net_arch": tuple(config["net_arch"])})
    space = action_space(Workbench(root, params))
    actor, history = train_agent(predictor_scorer(predictor), alpha, beta, cfg, space=space)
    return {"state": actor.state_dict(), "episodes": history.episodes, "steps": history.steps,
            "seed": cfg.seed, "selection_ppr": mean_predicted_ppr(actor, predictor, alpha, beta, space)}


def train_modes(params: Params, train: Callable[[str, float, float, dict[str, Any]], dict[str, Any]]) -> dict:
    """Every mode trained ``agent.restarts`` times by ``train(mode, alpha, beta, config)``; kept: the best
    by PREDICTED reward (never the truth), with every run in ``runs``."""
    a = params.agent
    config = agent_config(params).__dict__ | {"net_arch": list(a.net_arch)}
    trained = {}
    for m, (lo, hi) in modes(params).items():
        runs = [train(m, lo, hi, config | {"seed": a.seed + k}) for k in range(a.restarts)]
        trained[m] = dict(min(runs, key=lambda run: run["selection_ppr"]))
        trained[m] |= {"restart_pprs": [run["selection_ppr"] for run in runs], "runs": runs}
    return trained


def restarts(root: Path, params: Params, trained: dict) -> dict[str, Callable[[float], Policy | None]]:
    """The restarts that were not kept, as contenders of the final choice: ``agent@seedN`` (the static
    actors of seed N at their ratios) and ``dynamic_agent@seedN`` — a restart costs the choice one
    judgment per static ratio, and identical plans are merged."""
    a = params.agent
    space = action_space(Workbench(root, params))
    actors: dict[str, dict[str, tuple]] = {}
    for m, res in trained.items():
        lo, hi = modes(params)[m]
        for run in res["runs"]:
            if run["seed"] == res["seed"]:
                continue
            actor = build_actor(tuple(a.net_arch), space.dim)
            actor.load_state_dict(run["state"])
            name = ("dynamic_agent" if m == "dynamic" else "agent") + f"@seed{run['seed']}"
            actors.setdefault(name, {})[m] = (actor, lo, hi)

    def decide(held: dict[str, tuple], dynamic: bool) -> Callable[[float], Policy | None]:
        def policy(r: float) -> Policy | None:  # None where this seed's actor is the kept one (`agent` already)
            found = held.get("dynamic" if dynamic else f"static-{r:g}")
            return None if found is None else space.decode(act(found[0], observe(r, found[1], found[2])), r)
        return policy

    return {name: decide(held, name.startswith("dynamic")) for name, held in actors.items()}


def save(root: Path, params: Params, trained: dict, predictor_hash: str) -> tuple[Path, Agents]:
    """models/agent/agent.safetensors: every mode's kept actor and what it was trained for; (the file,
    the agents read back from it)."""
    a = params.agent
    space = action_space(Workbench(root, params))
    actors = {}
    for m, res in trained.items():
        actors[m] = build_actor(tuple(a.net_arch), space.dim)
        actors[m].load_state_dict(res["state"])
    meta = {"model": params.model.name, "predictor": predictor_hash, "net_arch": list(a.net_arch),
            "action_space": space.to_dict(),
            "config": agent_config(params).__dict__ | {"net_arch": list(a.net_arch)}}
    file = save_agents(actors, modes(params), Path(root) / "models" / "agent", meta)
    return file, Agents.load(file)


def plan_input(plan: PruningPlan) -> dict[str, Any]:
    """A plan as a task input: its shape and kept units, not its meta (the policy text it came from)."""
    return {"shape": asdict(plan.shape), "layers": [asdict(lp) for lp in plan.layers]}


def judge(wb: Workbench, plan: dict[str, Any], ppl_windows: int) -> dict[str, Any]:
    """A plan (:func:`plan_input`) judged on the true model (the judging task's body), its valid
    perplexity on the first windows of the choice's order (``agent.choice.seed``)."""
    return V.judge(wb, PruningPlan.from_dict(plan), ppl_windows, wb.params.agent.choice.seed)


def valid_nll(wb: Workbench, plan: dict[str, Any], lo: int, hi: int) -> list[float]:
    """The summed NLL of valid windows lo .. hi-1 (in the choice's order, ``agent.choice.seed``) of a
    plan's pruned model (the choice's growing budgets)."""
    return wb.window_nll(wb.pruned(PruningPlan.from_dict(plan)), "valid", lo, hi, wb.params.agent.choice.seed)


def judged(rows: list[dict], predictor: Predictor, judge_plan: Callable[[str, dict[str, Any]], dict[str, Any]]) -> list[dict]:
    """Every row judged on the true model by ``judge_plan(plan key, plan input)``, once per distinct PLAN
    (``_key``: its identity; a policy that two contenders, or both settings, propose at one ratio is
    judged once — on SmolLM2 22 of 100 rows; so are two policy texts that plan alike)."""
    out = []
    for row in rows:
        plan = V.plan_of(predictor.planner, row)
        row = row | {"_key": plan.identity, "_plan": plan_input(plan)}
        out.append(row | judge_plan(row["_key"], row["_plan"]))
    return out


def choose(root: Path, params: Params, rows: list[dict], predictor: Predictor, n_valid: int,
           measure: Callable[[str, dict[str, Any], int, int], list[float]]) -> tuple[dict, dict]:
    """The final choice per static ratio (a race of paired comparisons on growing valid budgets,
    :mod:`ppf.agent.choice`), then refined on the true model (agent.refine) under the same rule, with
    ``measure(plan key, plan input, lo, hi)`` the valid windows' NLLs and ``n_valid`` the split's
    windows; every measurement of both in results/agent_choice.csv (refinement stages after the
    choice's). Returns (the choices, their wall times per ratio)."""
    a = params.agent
    rule = C.Rule(params.eval.seqlen - 1, a.choice.bootstrap, a.choice.level, a.choice.seed, a.choice.min_windows)
    stages = C.budgets(a.validation.ppl_windows, a.choice.windows, n_valid)

    def windows(e: C.Entry, lo: int, hi: int) -> list[float]:
        return measure(e.key, e.row["_plan"], lo, hi)

    def entry_of(policy: Policy, ratio: float) -> C.Entry:
        plan = predictor.planner.plan(policy, ratio)
        return C.Entry(plan.identity, ["mutant"], str(policy), row={"_plan": plan_input(plan)})

    choices, log = C.choose(rows, lambda row: row["_key"], stages, windows, rule)
    choices, refined = refine_choices(choices, predictor, params, entry_of, windows, stages, rule)
    log += [{"ratio": x["ratio"], "stage": len(stages) + x["generation"] - 1, "contender": "mutant",
             **{k: v for k, v in x.items() if k not in ("ratio", "generation")}} for x in refined]
    write_text_atomic(Path(root) / "results" / "agent_choice.csv", pd.DataFrame(log).to_csv(index=False, float_format="%.6g"))
    seconds = {r: {"choice_s": c["_seconds"], "refine_s": c.get("_refine_seconds", 0.0)} for r, c in choices.items()}
    return {r: C.public(c) for r, c in choices.items()}, seconds


def latency(agents: Agents, predictor: Predictor, ratios: list[float]) -> dict[str, float]:
    """The decision alone, and the whole answer of `ppf policy` (decision + plan + predicted signal)."""
    return {"policy_latency_ms": 1e3 * float(np.mean([timed(lambda r=r: agents.decide(r), 20) for r in ratios])),
            "policy_answer_ms": 1e3 * float(np.mean([timed(lambda r=r: predictor.predict(agents.decide(r)["policy"], r), 20)
                                                      for r in ratios]))}


def publish(root: Path, params: Params, table: pd.DataFrame, trained: dict, metrics: dict, agent_file: Path,
            predictor: Predictor, ratios: list[float]) -> dict[str, Any]:
    """results/agent_validation.csv, plots/agent/{rewards.csv, rewards.png, validation.png},
    metrics/agent.json; the MLflow run (reward curves, tables) and the registered ``ppf-agent``
    (``champion`` moves if the new agents' mean predicted PPR over the validation ratios beats the
    champion's, re-scored now). Returns the registry's answer."""
    root = Path(root)
    write_text_atomic(root / "results" / "agent_validation.csv", table.to_csv(index=False, float_format="%.6g"))
    curves = pd.concat([pd.DataFrame(res["episodes"]).assign(mode=m) for m, res in trained.items()])
    write_text_atomic(root / "plots" / "agent" / "rewards.csv", curves.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "agent" / "rewards.png", plots.agent_rewards(curves))
    write_bytes_atomic(root / "plots" / "agent" / "validation.png", plots.agent_validation(table))
    write_json_atomic(root / "metrics" / "agent.json", metrics)
    return _track(root, params, trained, metrics, agent_file, predictor, ratios)


def _track(root: Path, params: Params, trained: dict, metrics: dict, agent_file: Path, predictor: Predictor,
           ratios: list[float]) -> dict:
    score = predictor_scorer(predictor)

    def mean_ppr(agents: Agents) -> float:
        return float(np.mean([(lambda value, act: value / act)(*score(agents.decide(r)["policy"], r)) for r in ratios]))

    def rescore(file: Path) -> float:
        champion = Agents.load(file)
        if champion.meta.get("model") != params.model.name:
            raise Incomparable(f"was trained for {champion.meta.get('model')}")
        return mean_ppr(champion)

    with tracking.run(root, params.tracking.experiment, "train_agent",
                      {"agent": params.agent.model_dump(), "search": params.search.model_dump(),
                       "model": params.model.model_dump()}, tags={"stage": "train_agent"}):
        for mode, res in trained.items():
            for ep in res["episodes"]:
                tracking.log_metrics({f"reward.{mode}": ep["mean_reward"], f"best_reward.{mode}": ep["best_reward"]},
                                     step=ep["episode"])
        tracking.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, dict)})
        for f in ("results/agent_validation.csv", "plots/agent/rewards.csv", "plots/agent/rewards.png",
                  "plots/agent/validation.png"):
            tracking.log_artifact(root / f, "results")
        return promote("agent", agent_file, params.tracking.agent_name, mean_ppr(Agents.load(agent_file)), rescore,
                        "mean predicted PPR", {"model": params.model.name})
