"""Stage `train_agent`: DDPG agents on the predictor, validated on the TRUE model (:mod:`ppf.recipes.agent`).

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

import sys
import time
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, Params, load_params, run_main, workbench
from ppf.recipes import agent as R
from ppf.recipes import validation as V


@task(cache_policy=CACHE, persist_result=True, task_run_name="ddpg {mode} seed {config[seed]}")
def train_mode(mode: str, alpha: float, beta: float, config: dict, predictor: str, root: str, params: Params) -> dict:
    """One DDPG run of a mode on the predictor (``predictor`` = its file hash, part of the cache key),
    with its mean predicted PPR over the mode's selection ratios."""
    return R.train_mode(Path(root), params, alpha, beta, config)


@task(cache_policy=CACHE, persist_result=True, task_run_name="true plan {key}")
def judge(key: str, plan: dict, context: str, ppl_windows: int, root: str, params: Params) -> dict:
    """True JS, KL and NLL above dense + valid perplexity (and each valid window's NLL) of a plan: its
    identity ``key`` and kept units (``plan``) are the cache key, so policies that plan alike are judged once."""
    return R.judge(workbench(Path(root), params, context, "reference"), plan, ppl_windows)


@task(cache_policy=CACHE, persist_result=True, task_run_name="valid windows {lo}-{hi} of plan {key}")
def valid_nll(key: str, plan: dict, lo: int, hi: int, context: str, root: str, params: Params) -> list[float]:
    """The summed NLL of valid windows lo .. hi-1 of a plan's pruned model (the choice's growing budgets)."""
    return R.valid_nll(workbench(Path(root), params, context, "reference"), plan, lo, hi)


@flow(name="train_agent")
def train_agent_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    a = params.agent
    predictor_hash, predictor = R.predictor_digest(root, params), R.load_predictor(root, params)
    start = time.perf_counter()
    trained = R.train_modes(params, lambda m, lo, hi, config: train_mode(m, lo, hi, config, predictor_hash,
                                                                          str(root), params))
    train_s = time.perf_counter() - start
    agent_file, agents = R.save(root, params, trained, predictor_hash)
    ratios = V.validation_ratios(params)
    rows = V.contenders(agents, predictor, params, ratios, "dynamic")
    rows += V.contenders(agents, predictor, params, list(a.static), "static", R.restarts(root, params, trained))
    searched, search_stats = V.search_candidates(predictor, rows, params)
    context = R.context_key(root, params)
    rows = R.judged(rows + searched, predictor, lambda key, plan: judge(key, plan, context, a.validation.ppl_windows,
                                                                        str(root), params))
    table = V.table(rows, predictor.signal)
    metrics = R.latency(agents, predictor, ratios) | {"train_s": train_s} | V.summarise(table, params, search_stats)
    start = time.perf_counter()
    n_valid = workbench(root, params, context).n_windows("valid")
    choices, seconds = R.choose(root, params, rows, predictor, n_valid, lambda key, plan, lo, hi: valid_nll(
        key, plan, lo, hi, context, str(root), params))
    agent_file = agents.with_choices(choices, agent_file)
    metrics |= {"choice": choices, "choice_s": time.perf_counter() - start, "choice_seconds": seconds}
    metrics["selection"] = {m: {"seed": res["seed"], "predicted_ppr": res["selection_ppr"],
                                "restarts_predicted_ppr": res["restart_pprs"]} for m, res in trained.items()}
    return {**metrics, "registry": R.publish(root, params, table, trained, metrics, agent_file, predictor, ratios)}


if __name__ == "__main__":
    sys.exit(run_main(train_agent_flow, __doc__))
