"""Stage `train_agent`: DDPG agents on the predictor, validated on the TRUE model.

1. Train the dynamic agent (ratios in ``agent.dynamic``) and one static agent per ``agent.static``
   ratio on the predictor (one cached Prefect task per mode) → models/agent/agent.safetensors.
2. Validation (paper, dynamic setting): at ``agent.validation.n_ratios`` ratios in its range, and at
   every static ratio, the agent's policy vs uniform, OWL's and AlphaPruning's mappings and the best
   policy of the exhaustive (method x a_eta) grid judged by the predictor — each pruned for real:
   true JS and valid perplexity (one cached task per (policy, ratio): resumable).
3. Beyond the paper: at each static ratio, CMA-ES over full per-layer ratio vectors with the predictor
   as fitness; its ``search.top_k`` best are evaluated for real and the best by true JS is kept.

Outputs: metrics/agent.json, results/agent_validation.csv, plots/agent/{rewards.csv, rewards.png,
validation.png}; MLflow run (reward curves, tables), model `ppf-agent` (alias `champion` moves if
the new agents' mean predicted PPR over the validation ratios beats the champion's, re-scored now).
Run: ``python -m flows.train_agent [--params params.yaml]``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, run_main
from ppf.config import load_params

_JUDGES: dict[str, object] = {}
_LOCK = threading.Lock()


def _predictor(root: Path, params):
    from ppf.predictor import Predictor

    return Predictor.load(root / "models" / "predictor", root, params)


def _digest(path: Path) -> str:
    if not path.is_file():
        from ppf.errors import PPFError

        raise PPFError(f"'{path}' is missing; run `dvc repro train_predictor` first")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@task(cache_policy=CACHE, persist_result=True, task_run_name="ddpg {mode} seed {config[seed]}")
def train_mode(mode: str, alpha: float, beta: float, config: dict, predictor: str, root: str, params_path: str) -> dict:
    """One DDPG run of a mode on the predictor (``predictor`` = its file hash, part of the cache key),
    with its mean predicted PPR over the mode's selection ratios."""
    from ppf.agent import AgentConfig, train_agent
    from ppf.agent.recipe import mean_predicted_ppr, predictor_scorer

    params = load_params(Path(root) / params_path)
    predictor_ = _predictor(Path(root), params)
    cfg = AgentConfig(**{**config, "net_arch": tuple(config["net_arch"])})
    actor, history = train_agent(predictor_scorer(predictor_), alpha, beta, cfg)
    return {"state": actor.state_dict(), "episodes": history.episodes, "steps": history.steps,
            "seed": cfg.seed, "selection_ppr": mean_predicted_ppr(actor, predictor_, alpha, beta)}


def _judge(root: str, params_path: str, context: str, ppl_windows: int):
    with _LOCK:
        if context not in _JUDGES:
            from ppf.agent.recipe import TrueJudge

            _JUDGES.clear()
            _JUDGES[context] = TrueJudge(Path(root), load_params(Path(root) / params_path), ppl_windows)
        return _JUDGES[context]


@task(cache_policy=CACHE, persist_result=True, task_run_name="true {policy}@{ratio}")
def judge(policy: str, ratio: float, scores: tuple | None, a_eta: float, context: str, ppl_windows: int,
          root: str, params_path: str) -> dict:
    """True JS + valid perplexity of a policy (or, with ``scores``, of a searched ratio vector)."""
    j = _judge(root, params_path, context, ppl_windows)
    if scores is None:
        return j(policy, ratio)
    return j.evaluate_plan(j.planner.plan_scores(list(scores), a_eta, ratio))


def _context(root: Path, params) -> str:
    from flows.collect import context_key

    corpus = root / "data" / "corpus" / "valid.txt"
    payload = [context_key(root, params), params.eval.model_dump(),
               hashlib.sha256(corpus.read_bytes()).hexdigest()[:16] if corpus.is_file() else "none"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@flow(name="train_agent")
def train_agent_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    import numpy as np
    import pandas as pd

    from ppf.agent import Agents, build_actor, save_agents
    from ppf.agent import recipe as R
    from ppf.io import write_json_atomic
    from ppf.search import cma_search

    root = Path(root or ROOT)
    params = load_params(root / params_path)
    a = params.agent
    predictor_hash = _digest(root / "models" / "predictor" / "predictor.safetensors")
    predictor = _predictor(root, params)
    modes = R.modes(params)
    config = R.agent_config(params).__dict__ | {"net_arch": list(a.net_arch)}
    start = time.perf_counter()
    trained = {}
    for m, (lo, hi) in modes.items():  # restarts: keep the best by predicted reward (never by the truth)
        runs = [train_mode(m, lo, hi, config | {"seed": a.seed + k}, predictor_hash, str(root), params_path)
                for k in range(a.restarts)]
        trained[m] = min(runs, key=lambda run: run["selection_ppr"])
        trained[m]["restart_pprs"] = [run["selection_ppr"] for run in runs]
    train_s = time.perf_counter() - start
    actors = {}
    for m, res in trained.items():
        actors[m] = build_actor(tuple(a.net_arch))
        actors[m].load_state_dict(res["state"])
    meta = {"model": params.model.name, "predictor": predictor_hash, "net_arch": list(a.net_arch),
            "config": config}
    agent_file = save_agents(actors, modes, root / "models" / "agent", meta)
    agents = Agents.load(agent_file)

    # -- latency: the decision alone, and the whole answer of `ppf policy` (decision + plan + predicted JS)
    ratios = R.validation_ratios(params)
    from ppf.predictor import timed

    decision_ms = 1e3 * float(np.mean([timed(lambda r=r: agents.decide(r), 20) for r in ratios]))
    answer_ms = 1e3 * float(np.mean([timed(lambda r=r: predictor.predict(str(agents.decide(r)["policy"]), r), 20)
                                     for r in ratios]))

    # -- validation on the true model
    rows = [dict(row, setting="dynamic") for row in R.validation_policies(agents, predictor, params, ratios)]
    rows += [dict(row, setting="static") for row in R.validation_policies(agents, predictor, params, list(a.static))]
    search_stats = {}
    for r in a.static:
        best = next(x for x in rows if x["setting"] == "static" and x["ratio"] == r and x["contender"] == "grid_best")
        from ppf.policy import Policy

        cands, stats = cma_search(predictor, r, Policy.parse(best["policy"]), params.search.budget,
                                  params.search.sigma0, params.search.top_k, params.search.seed)
        search_stats[f"{r:g}"] = stats
        for i, c in enumerate(cands):
            rows.append({"ratio": r, "contender": f"search#{i + 1}", "policy": f"search:{i + 1}",
                         "predicted_js": c.predicted_js, "predicted_ppr": c.predicted_ppr, "setting": "static",
                         "_scores": c.scores, "_a_eta": c.a_eta})
    context = _context(root, params)
    windows = a.validation.ppl_windows
    for row in rows:
        res = judge(row["policy"], row["ratio"], row.get("_scores"), row.get("_a_eta", 0.0), context, windows,
                    str(root), params_path)
        row.update(res)
    table = pd.DataFrame(rows).drop(columns=["_scores", "_a_eta"])
    table["true_ppr"] = table.true_js / table.actual_ratio
    static = table[table.setting == "static"]
    searched = static[static.contender.str.startswith("search#")]
    best_search = searched.loc[searched.groupby("ratio").true_js.idxmin()].assign(contender="search")
    table = pd.concat([table[~table.contender.str.startswith("search#")], best_search,
                       searched.assign(contender=searched.contender.str.replace("#", "_candidate"))], ignore_index=True)
    metrics = _summarise(table, params, decision_ms, answer_ms, train_s, search_stats)
    metrics["selection"] = {m: {"seed": res["seed"], "predicted_ppr": res["selection_ppr"],
                                "restarts_predicted_ppr": res["restart_pprs"]} for m, res in trained.items()}
    _write(root, table, trained, metrics)
    registry = _track(root, params, trained, metrics, agent_file, predictor, ratios)
    return {**metrics, "registry": registry}


def _summarise(table, params, decision_ms, answer_ms, train_s, search_stats) -> dict:
    dyn = table[table.setting == "dynamic"].groupby("contender")
    m = {"policy_latency_ms": decision_ms, "policy_answer_ms": answer_ms, "train_s": train_s,
         "n_validation_ratios": int(params.agent.validation.n_ratios)}
    for c in ("agent", "uniform", "owl", "alpha", "grid_best"):
        m[f"mean_ppl_{c}"] = float(dyn.ppl_valid.mean()[c])
        m[f"mean_js_{c}"] = float(dyn.true_js.mean()[c])
    for c in ("uniform", "owl", "alpha", "grid_best"):
        m[f"ppl_reduction_vs_{c}_pct"] = 100.0 * (1 - m["mean_ppl_agent"] / m[f"mean_ppl_{c}"])
    st = table[table.setting == "static"]
    for r, g in st.groupby("ratio"):
        by = g.set_index("contender")
        for c in ("agent", "uniform", "owl", "alpha", "grid_best", "search"):
            if c in by.index:
                m[f"static_{r:g}_ppl_{c}"] = float(by.ppl_valid[c])
        m[f"static_{r:g}_search"] = search_stats[f"{r:g}"]
    return m


def _write(root: Path, table, trained, metrics) -> None:
    import pandas as pd

    from ppf.io import write_bytes_atomic, write_json_atomic, write_text_atomic

    write_text_atomic(root / "results" / "agent_validation.csv", table.to_csv(index=False, float_format="%.6g"))
    curves = pd.concat([pd.DataFrame(res["episodes"]).assign(mode=m) for m, res in trained.items()])
    write_text_atomic(root / "plots" / "agent" / "rewards.csv", curves.to_csv(index=False, float_format="%.6g"))
    write_bytes_atomic(root / "plots" / "agent" / "rewards.png", _plot_rewards(curves))
    write_bytes_atomic(root / "plots" / "agent" / "validation.png", _plot_validation(table))
    write_json_atomic(root / "metrics" / "agent.json", metrics)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _plot_rewards(curves) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for mode, g in curves.groupby("mode"):
        line, = ax.plot(g.episode, g.mean_reward, lw=1, alpha=0.6, label=f"{mode} (episode mean)")
        ax.plot(g.episode, g.best_reward, lw=1.5, color=line.get_color(), ls="--")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward = -predicted JS / r_act  (dashed: best so far)")
    ax.legend(fontsize=7)
    return _png(fig)


def _plot_validation(table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dyn = table[table.setting == "dynamic"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for c, g in dyn.groupby("contender"):
        ax.plot(g.ratio, g.ppl_valid, marker="o", ms=3, label=c)
    ax.set_yscale("log")
    ax.set_xlabel("target block ratio")
    ax.set_ylabel("valid perplexity (true model)")
    ax.legend(fontsize=7)
    return _png(fig)


def _track(root: Path, params, trained, metrics, agent_file: Path, predictor, ratios) -> dict:
    import numpy as np

    from ppf import tracking
    from ppf.agent import Agents
    from ppf.agent.recipe import predictor_scorer
    from ppf.registry import Incomparable, register

    score = predictor_scorer(predictor)

    def mean_ppr(agents) -> float:
        return float(np.mean([(lambda js, act: js / act)(*score(agents.decide(r)["policy"], r)) for r in ratios]))

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
        mine = mean_ppr(Agents.load(agent_file))
        return register("agent", agent_file, params.tracking.agent_name, mine, rescore,
                        "mean predicted PPR", {"model": params.model.name})


if __name__ == "__main__":
    sys.exit(run_main(train_agent_flow, __doc__))
