"""Stage `train_agent`: DDPG agents on the predictor, validated on the TRUE model.

1. Train the dynamic agent (ratios in ``agent.dynamic``) and one static agent per ``agent.static``
   ratio on the predictor (one cached Prefect task per mode) → models/agent/agent.safetensors.
2. Validation (paper, dynamic setting): at ``agent.validation.n_ratios`` ratios in its range, and at
   every static ratio, the agent's policy vs uniform, OWL's and AlphaPruning's mappings and the best
   policy of the exhaustive (method x a_eta) grid judged by the predictor — each pruned for real:
   true JS and valid perplexity (one cached task per (policy, ratio): resumable).
3. Beyond the paper: at each static ratio, CMA-ES over full per-layer ratio vectors with the predictor
   as fitness; its ``search.top_k`` best are evaluated for real and the best by true JS is kept.
4. The final choice at each static ratio (multi-fidelity, valid split only): the policy contenders
   ranked by their validation perplexity, the best ``agent.choice.survivors`` re-measured on
   ``agent.choice.windows`` valid windows, stage by stage; then refined on the true model
   (``agent.refine``, :mod:`ppf.agent.refine`: budget-preserving mutants screened by the predictor,
   judged on few valid windows, the best kept only if better on the choice's last windows). The result
   is stored in the agent file and is PPF's answer there (``ppf policy``, ``ppf prune -p agent``, the benchmark).

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
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task

from flows.collect import context_key
from flows.common import CACHE, ROOT, run_main, workbench
from ppf import plots, tracking
from ppf.agent import AgentConfig, Agents, build_actor, save_agents, train_agent
from ppf.agent import recipe as R
from ppf.agent.refine import refine_choices
from ppf.agent import validation as V
from ppf.config import Params, load_params
from ppf.errors import PPFError
from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic
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


@task(cache_policy=CACHE, persist_result=True, task_run_name="true {row[policy]}@{row[ratio]}")
def judge(row: dict, context: str, ppl_windows: int, root: str, params: Params) -> dict:
    """True JS + valid perplexity of a row's policy (or searched ratio vector)."""
    return V.judge(workbench(Path(root), params, context, "reference"), row, ppl_windows)


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
        trained[m] = min(runs, key=lambda run: run["selection_ppr"])
        trained[m]["restart_pprs"] = [run["selection_ppr"] for run in runs]
    return trained


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
    rows += V.contenders(agents, predictor, params, list(a.static), "static")
    searched, search_stats = V.search_candidates(predictor, rows, params)
    rows += searched
    context = _context(root, params)
    rows = [row | judge(_plan_key(row), context, a.validation.ppl_windows, str(root), params) for row in rows]
    table = V.table(rows, predictor.signal)
    metrics = _latency(agents, predictor, ratios) | {"train_s": train_s} | V.summarise(table, params, search_stats)
    start = time.perf_counter()
    choices = _choose(root, params, rows, predictor, context)
    agent_file = agents.with_choices(choices, agent_file)
    metrics |= {"choice": choices, "choice_s": time.perf_counter() - start}
    metrics["selection"] = {m: {"seed": res["seed"], "predicted_ppr": res["selection_ppr"],
                                "restarts_predicted_ppr": res["restart_pprs"]} for m, res in trained.items()}
    _write(root, table, trained, metrics)
    return {**metrics, "registry": _track(root, params, trained, metrics, agent_file, predictor, ratios)}


def _choose(root: Path, params: Params, rows: list[dict], predictor: Predictor, context: str) -> dict:
    """The multi-fidelity final choice per static ratio, then refined on the true model (agent.refine);
    every measurement of both in results/agent_choice.csv (refinement stages after the choice's)."""
    a = params.agent

    def ppl(row: dict, windows: int) -> float:
        return judge(_plan_key(row), context, windows, str(root), params)["ppl_valid"]

    choices, stages = V.choose(rows, a.validation.ppl_windows, list(zip(a.choice.windows, a.choice.survivors)), ppl)
    choices, refined = refine_choices(choices, predictor, params,
                                      lambda pol, r, w: ppl({"ratio": r, "policy": str(pol), "_policy": pol}, w))
    stages += [{"ratio": x["ratio"], "stage": len(a.choice.windows) + x["generation"], "contender": "mutant",
                "policy": x["policy"], "windows": x["windows"], "ppl_valid": x["ppl_valid"], "accepted": x["accepted"]}
               for x in refined]
    write_text_atomic(root / "results" / "agent_choice.csv", pd.DataFrame(stages).to_csv(index=False, float_format="%.6g"))
    return choices


def _plan_key(row: dict) -> dict:
    """What a row's judgment depends on — its ratio and policy, or its searched vector — as the judging
    task's input (cache key): a policy that two contenders, or both settings, propose at one ratio
    (on SmolLM2 22 of 100 rows, e.g. the dynamic range's ends are static ratios too) is judged once."""
    return {k: row[k] for k in ("ratio", "policy", "_policy", "_scores", "_a_eta") if k in row}


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
