"""Stage `train_agent`: DDPG agents on the predictor, validated on the TRUE model.

1. Train the dynamic agent (ratios in ``agent.dynamic``) and one static agent per ``agent.static``
   ratio on the predictor (one cached Prefect task per mode) → models/agent/agent.safetensors.
2. Validation (paper, dynamic setting): at ``agent.validation.n_ratios`` ratios in its range, and at
   every static ratio, the agent's policy vs uniform, LLM-Pruner's, OWL's, AlphaPruning's, ShortGPT's
   and BlockPruner's allocations and the best policy of the exhaustive (method x a_eta) grid judged by
   the predictor — each pruned for real: true JS, KL, NLL above dense and valid perplexity (one cached
   task per distinct plan: resumable, and two policies that plan alike are judged once).
3. Beyond the paper: at each static ratio, CMA-ES over full per-layer ratio vectors with the predictor
   as fitness; its ``search.top_k`` best are evaluated for real and the best by the true signal is kept.
4. The final choice at each static ratio (valid split only, :mod:`ppf.agent.choice`): the policy
   contenders — with every restart's actors, identical plans merged — race on growing valid budgets
   (``agent.validation.ppl_windows``, then ``agent.choice.windows``), compared PAIRED; a contender
   leaves only when its interval against the leader lies above 0, and the answer leaves the best
   baseline allocation only for a plan whose interval against it lies below 0. Then refined on the
   true model (``agent.refine``, :mod:`ppf.agent.refine`: budget-preserving mutants screened by the
   predictor, judged on few valid windows, the best raced against the choice under the same rule).
   The result is stored in the agent file and is PPF's answer there (``ppf policy``, ``ppf prune -p
   agent``, the benchmark); every window range measured is a cached task, so a killed run resumes.

Outputs: metrics/agent.json, results/agent_validation.csv, results/agent_choice.csv, plots/agent/{rewards.csv, rewards.png,
validation.png}; MLflow run (reward curves, tables), model `ppf-agent` (alias `champion` moves if
the new agents' mean predicted PPR over the validation ratios beats the champion's, re-scored now).
Run: ``python -m flows.train_agent [--params params.yaml]``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task

from flows.collect import context_key
from flows.common import CACHE, ROOT, run_main, workbench
from ppf import plots, tracking
from ppf.agent import AgentConfig, Agents, act, build_actor, save_agents, train_agent
from ppf.agent import choice as C
from ppf.agent import recipe as R
from ppf.agent.choice import Rule
from ppf.agent.env import observe
from ppf.agent.refine import refine_choices
from ppf.agent import validation as V
from ppf.config import Params, load_params
from ppf.errors import PPFError
from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from ppf.plan import PruningPlan
from ppf.policy import Policy
from ppf.predictor import Predictor, timed
from ppf.registry import Incomparable, register
from ppf.workbench import Workbench


def _predictor(root: Path, params: Params) -> Predictor:
    return Predictor.load(R.predictor_dir(root, params), Workbench(root, params).planner)


def _digest(path: Path) -> str:
    if not path.is_file():
        stage = "active" if path.parent.name == "predictor_active" else "train_predictor"
        raise PPFError(f"'{path}' is missing; run `dvc repro {stage}` first")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@task(cache_policy=CACHE, persist_result=True, task_run_name="ddpg {mode} seed {config[seed]}")
def train_mode(mode: str, alpha: float, beta: float, config: dict, predictor: str, root: str, params: Params) -> dict:
    """One DDPG run of a mode on the predictor (``predictor`` = its file hash, part of the cache key),
    with its mean predicted PPR over the mode's selection ratios."""
    predictor_ = _predictor(Path(root), params)
    cfg = AgentConfig(**{**config, "net_arch": tuple(config["net_arch"])})
    space = R.action_space(Workbench(Path(root), params))
    actor, history = train_agent(R.predictor_scorer(predictor_), alpha, beta, cfg, space=space)
    return {"state": actor.state_dict(), "episodes": history.episodes, "steps": history.steps,
            "seed": cfg.seed, "selection_ppr": R.mean_predicted_ppr(actor, predictor_, alpha, beta, space)}


@task(cache_policy=CACHE, persist_result=True, task_run_name="true plan {key}")
def judge(key: str, plan: dict, context: str, ppl_windows: int, root: str, params: Params) -> dict:
    """True JS + valid perplexity (and each valid window's NLL) of a plan: its identity ``key`` and
    kept units (``plan``) are the cache key, so policies that plan alike are judged once."""
    return V.judge(workbench(Path(root), params, context, "reference"), PruningPlan.from_dict(plan), ppl_windows)


@task(cache_policy=CACHE, persist_result=True, task_run_name="valid windows {lo}-{hi} of plan {key}")
def valid_nll(key: str, plan: dict, lo: int, hi: int, context: str, root: str, params: Params) -> list[float]:
    """The summed NLL of valid windows lo .. hi-1 of a plan's pruned model (the choice's growing budgets)."""
    wb = workbench(Path(root), params, context, "reference")
    return wb.window_nll(wb.pruned(PruningPlan.from_dict(plan)), "valid", lo, hi)


def _plan_input(plan: PruningPlan) -> dict:
    """A plan as a task input: its shape and kept units, not its meta (the policy text it came from)."""
    return {"shape": asdict(plan.shape), "layers": [asdict(lp) for lp in plan.layers]}


def _context(root: Path, params: Params) -> str:
    corpus = root / "data" / "corpus" / "valid.txt"
    payload = [context_key(root, params), params.eval.model_dump(),
               hashlib.sha256(corpus.read_bytes()).hexdigest()[:16] if corpus.is_file() else "none"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_modes(root: Path, params: Params, predictor_hash: str) -> dict:
    """Every mode trained ``agent.restarts`` times; kept: the best by PREDICTED reward (never the truth)."""
    a = params.agent
    config = R.agent_config(params).__dict__ | {"net_arch": list(a.net_arch)}
    trained = {}
    for m, (lo, hi) in R.modes(params).items():
        runs = [train_mode(m, lo, hi, config | {"seed": a.seed + k}, predictor_hash, str(root), params)
                for k in range(a.restarts)]
        trained[m] = dict(min(runs, key=lambda run: run["selection_ppr"]))
        trained[m] |= {"restart_pprs": [run["selection_ppr"] for run in runs], "runs": runs}
    return trained


def _restarts(root: Path, params: Params, trained: dict) -> dict:
    """The restarts that were not kept, as contenders of the final choice: ``agent@seedN`` (the static
    actors of seed N at their ratios) and ``dynamic_agent@seedN`` — a restart costs the choice one
    judgment per static ratio, and identical plans are merged."""
    a = params.agent
    space = R.action_space(Workbench(root, params))
    actors: dict[str, dict[str, tuple]] = {}
    for m, res in trained.items():
        lo, hi = R.modes(params)[m]
        for run in res["runs"]:
            if run["seed"] == res["seed"]:
                continue
            actor = build_actor(tuple(a.net_arch), space.dim)
            actor.load_state_dict(run["state"])
            name = ("dynamic_agent" if m == "dynamic" else "agent") + f"@seed{run['seed']}"
            actors.setdefault(name, {})[m] = (actor, lo, hi)

    def decide(modes: dict[str, tuple], dynamic: bool):
        def policy(r: float):  # None where this seed's actor is the kept one (then it is `agent` already)
            found = modes.get("dynamic" if dynamic else f"static-{r:g}")
            return None if found is None else space.decode(act(found[0], observe(r, found[1], found[2])), r)
        return policy

    return {name: decide(modes, name.startswith("dynamic")) for name, modes in actors.items()}


@flow(name="train_agent")
def train_agent_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    a = params.agent
    predictor_hash = _digest(R.predictor_dir(root, params) / "predictor.safetensors")
    predictor = _predictor(root, params)
    start = time.perf_counter()
    trained = train_modes(root, params, predictor_hash)
    train_s = time.perf_counter() - start
    agent_file = _save(root, params, trained, predictor_hash)
    agents = Agents.load(agent_file)
    ratios = V.validation_ratios(params)
    rows = V.contenders(agents, predictor, params, ratios, "dynamic")
    rows += V.contenders(agents, predictor, params, list(a.static), "static", _restarts(root, params, trained))
    searched, search_stats = V.search_candidates(predictor, rows, params)
    context = _context(root, params)
    rows = _judged(root, params, rows + searched, predictor, context)
    table = V.table(rows, predictor.signal)
    metrics = _latency(agents, predictor, ratios) | {"train_s": train_s} | V.summarise(table, params, search_stats)
    start = time.perf_counter()
    choices, seconds = _choose(root, params, rows, predictor, context)
    agent_file = agents.with_choices(choices, agent_file)
    metrics |= {"choice": choices, "choice_s": time.perf_counter() - start, "choice_seconds": seconds}
    metrics["selection"] = {m: {"seed": res["seed"], "predicted_ppr": res["selection_ppr"],
                                "restarts_predicted_ppr": res["restart_pprs"]} for m, res in trained.items()}
    _write(root, table, trained, metrics)
    return {**metrics, "registry": _track(root, params, trained, metrics, agent_file, predictor, ratios)}


def _judged(root: Path, params: Params, rows: list[dict], predictor: Predictor, context: str) -> list[dict]:
    """Every row judged on the true model, once per distinct PLAN (``_key``: its identity; a policy
    that two contenders, or both settings, propose at one ratio is judged once — on SmolLM2 22 of 100
    rows; so are two policy texts that plan alike)."""
    out = []
    for row in rows:
        plan = V.plan_of(predictor.planner, row)
        row = row | {"_key": plan.identity, "_plan": _plan_input(plan)}
        out.append(row | judge(row["_key"], row["_plan"], context, params.agent.validation.ppl_windows, str(root), params))
    return out


def _choose(root: Path, params: Params, rows: list[dict], predictor: Predictor, context: str) -> tuple[dict, dict]:
    """The final choice per static ratio (a race of paired comparisons on growing valid budgets,
    :mod:`ppf.agent.choice`), then refined on the true model (agent.refine) under the same rule; every
    measurement of both in results/agent_choice.csv (refinement stages after the choice's). Returns
    (the choices, their wall times per ratio)."""
    a = params.agent
    rule = Rule(params.eval.seqlen - 1, a.choice.bootstrap, a.choice.level, a.choice.seed)
    stages = C.budgets(a.validation.ppl_windows, a.choice.windows, workbench(root, params, context).n_windows("valid"))

    def measure(e: C.Entry, lo: int, hi: int) -> list[float]:
        return valid_nll(e.key, e.row["_plan"], lo, hi, context, str(root), params)

    def entry_of(policy: Policy, ratio: float) -> C.Entry:
        plan = predictor.planner.plan(policy, ratio)
        return C.Entry(plan.identity, ["mutant"], str(policy), row={"_plan": _plan_input(plan)})

    choices, log = C.choose(rows, lambda row: row["_key"], stages, measure, rule)
    choices, refined = refine_choices(choices, predictor, params, entry_of, measure, stages, rule)
    log += [{"ratio": x["ratio"], "stage": len(stages) + x["generation"] - 1, "contender": "mutant",
             **{k: v for k, v in x.items() if k not in ("ratio", "generation")}} for x in refined]
    write_text_atomic(root / "results" / "agent_choice.csv", pd.DataFrame(log).to_csv(index=False, float_format="%.6g"))
    seconds = {r: {"choice_s": c["_seconds"], "refine_s": c.get("_refine_seconds", 0.0)} for r, c in choices.items()}
    return {r: C.public(c) for r, c in choices.items()}, seconds


def _save(root: Path, params: Params, trained: dict, predictor_hash: str) -> Path:
    a = params.agent
    space = R.action_space(Workbench(root, params))
    actors = {}
    for m, res in trained.items():
        actors[m] = build_actor(tuple(a.net_arch), space.dim)
        actors[m].load_state_dict(res["state"])
    meta = {"model": params.model.name, "predictor": predictor_hash, "net_arch": list(a.net_arch),
            "action_space": space.to_dict(),
            "config": R.agent_config(params).__dict__ | {"net_arch": list(a.net_arch)}}
    return save_agents(actors, R.modes(params), root / "models" / "agent", meta)


def _latency(agents: Agents, predictor: Predictor, ratios: list[float]) -> dict:
    """The decision alone, and the whole answer of `ppf policy` (decision + plan + predicted signal)."""
    return {"policy_latency_ms": 1e3 * float(np.mean([timed(lambda r=r: agents.decide(r), 20) for r in ratios])),
            "policy_answer_ms": 1e3 * float(np.mean([timed(lambda r=r: predictor.predict(agents.decide(r)["policy"], r), 20)
                                                      for r in ratios]))}


def _write(root: Path, table: pd.DataFrame, trained: dict, metrics: dict) -> None:
    write_text_atomic(root / "results" / "agent_validation.csv", table.to_csv(index=False, float_format="%.6g"))
    curves = pd.concat([pd.DataFrame(res["episodes"]).assign(mode=m) for m, res in trained.items()])
    write_text_atomic(root / "plots" / "agent" / "rewards.csv", curves.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "agent" / "rewards.png", plots.agent_rewards(curves))
    write_bytes_atomic(root / "plots" / "agent" / "validation.png", plots.agent_validation(table))
    write_json_atomic(root / "metrics" / "agent.json", metrics)


def _track(root: Path, params: Params, trained: dict, metrics: dict, agent_file: Path, predictor: Predictor,
           ratios: list[float]) -> dict:
    score = R.predictor_scorer(predictor)

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
        return register("agent", agent_file, params.tracking.agent_name, mean_ppr(Agents.load(agent_file)), rescore,
                        "mean predicted PPR", {"model": params.model.name})


if __name__ == "__main__":
    sys.exit(run_main(train_agent_flow, __doc__))
