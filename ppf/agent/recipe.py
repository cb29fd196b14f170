"""The `train_agent` recipe: train every mode on the predictor, then validate on the TRUE model.

- :func:`predictor_scorer` — the environment's scorer: (policy, ratio) → (predicted JS, r_act);
- :func:`modes` / :func:`agent_config` — what params.yaml asks to train;
- :func:`grid_best` — the exhaustive (method × a_eta) grid judged by the predictor;
- :func:`validation_policies` — per validation ratio, the policies to compare: the agent's,
  uniform, OWL's and AlphaPruning's mappings, and the grid's best;
- :class:`TrueJudge` — prunes a copy of the dense model and measures the true JS and perplexity.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppf.agent.ddpg import AgentConfig
from ppf.agent.env import AGENT_METHODS
from ppf.baselines import alpha_policy, owl_policy
from ppf.policy import Policy


def predictor_scorer(predictor: Any):
    def score(policy: Policy, ratio: float) -> tuple[float, float]:
        out = predictor.predict(str(policy), ratio)
        return out["js"], out["actual_ratio"]

    return score


def modes(params: Any) -> dict[str, tuple[float, float]]:
    a = params.agent
    out = {"dynamic": (float(a.dynamic[0]), float(a.dynamic[1]))}
    out.update({f"static-{r:g}": (float(r), float(r)) for r in a.static})
    return out


def agent_config(params: Any) -> AgentConfig:
    a = params.agent
    return AgentConfig(episodes=a.episodes, window=a.window, noise=a.noise, noise_decay=a.noise_decay,
                       gamma=a.gamma, learning_rate=a.learning_rate, batch_size=a.batch_size,
                       buffer_size=a.buffer_size, learning_starts=a.learning_starts,
                       gradient_steps=a.gradient_steps, tau=a.tau, net_arch=tuple(a.net_arch), seed=a.seed)


def selection_ratios(alpha: float, beta: float, n: int = 9) -> list[float]:
    """The ratios a mode's restarts are compared on (the predictor judges; the truth is not peeked at)."""
    return [alpha] if beta <= alpha else [float(r) for r in np.linspace(alpha, beta, n)]


def mean_predicted_ppr(actor: Any, predictor: Any, alpha: float, beta: float) -> float:
    from ppf.agent.ddpg import act
    from ppf.agent.env import decode, observe

    score = predictor_scorer(predictor)
    pprs = []
    for r in selection_ratios(alpha, beta):
        js, actual = score(decode(act(actor, observe(r, alpha, beta))), r)
        pprs.append(js / actual)
    return float(np.mean(pprs))


def grid(step: float) -> list[Policy]:
    n = int(round(0.5 / step))
    etas = sorted({round(min(0.5, i * step), 6) for i in range(n + 1)})
    return [Policy(m, e) for m in AGENT_METHODS for e in etas]


def grid_best(predictor: Any, ratio: float, step: float) -> tuple[Policy, float]:
    """The grid policy with the lowest predicted PPR at ``ratio`` (and that PPR)."""
    score = predictor_scorer(predictor)
    best, best_ppr = None, float("inf")
    for pol in grid(step):
        js, actual = score(pol, ratio)
        if js / actual < best_ppr:
            best, best_ppr = pol, js / actual
    return best, best_ppr


def validation_ratios(params: Any) -> list[float]:
    v = params.agent.validation
    return [round(float(r), 6) for r in np.linspace(v.range[0], v.range[1], v.n_ratios)]


def validation_policies(agents: Any, predictor: Any, params: Any, ratios: list[float]) -> list[dict[str, Any]]:
    """One row per (ratio, contender) with the policy and its predicted JS."""
    v = params.agent.validation
    score = predictor_scorer(predictor)
    rows = []
    for r in ratios:
        contenders = {"agent": agents.decide(r)["policy"], "uniform": Policy("uniform"),
                      "owl": owl_policy(r, v.owl_lambda), "alpha": alpha_policy(r, v.alpha_epsilon),
                      "grid_best": grid_best(predictor, r, v.grid_step)[0]}
        for name, pol in contenders.items():
            js, actual = score(pol, r)
            rows.append({"ratio": r, "contender": name, "policy": str(pol), "predicted_js": js,
                         "predicted_ppr": js / actual})
    return rows


class TrueJudge:
    """Real evaluation of (policy, ratio): prune a copy (embeddings shared) → JS + perplexity."""

    def __init__(self, root: Path, params: Any, ppl_windows: int):
        from ppf.data.corpus import tokenize_text
        from ppf.engine import token_batches
        from ppf.metrics import next_token_logprobs
        from ppf.models import load
        from ppf.predictor.features import Planner

        self.params, self.ppl_windows = params, ppl_windows
        self.planner = Planner.load(Path(root), params)
        self.model, tokenizer = load(params.model.name, params.model.dtype, params.model.device)
        self.model.eval()
        _, self.heldout = token_batches(Path(root), params.model.name, tokenizer, params)
        valid = (Path(root) / "data" / "corpus" / "valid.txt").read_text(encoding="utf-8")
        self.ppl_tokens = tokenize_text(tokenizer, valid)
        self.reference = next_token_logprobs(self.model, self.heldout, params.js.batch_size)
        m = self.model
        self._share = {id(t): t for mod in (m.get_input_embeddings(), m.get_output_embeddings(), m.model.norm)
                       if mod is not None for t in (*mod.parameters(), *mod.buffers())}

    def __call__(self, policy: str, ratio: float) -> dict[str, float]:
        return self.evaluate_plan(self.planner.plan(policy, ratio))

    @torch.no_grad()
    def evaluate_plan(self, plan: Any) -> dict[str, float]:
        import time

        from ppf.metrics import js_divergence, perplexity
        from ppf.prune import prune_model

        t = time.perf_counter()
        pruned = prune_model(copy.deepcopy(self.model, memo=dict(self._share)), plan)
        js = js_divergence(self.reference, pruned, self.heldout, self.params.js.batch_size)
        ppl = perplexity(pruned, self.ppl_tokens, self.params.eval.seqlen, self.params.eval.batch_size,
                         self.ppl_windows)
        return {"true_js": js, "ppl_valid": ppl, "actual_ratio": plan.block_ratio,
                "layer_ratio_min": float(min(plan.layer_ratios())), "layer_ratio_max": float(max(plan.layer_ratios())),
                "seconds": time.perf_counter() - t}


def locate(ref: str | Path | None, root: Path, params: Any, scratch: str | Path) -> Path:
    """The agent file for ``ref``: a path, ``registry:champion`` / ``registry:<version>``, or None —
    the champion when one is registered, else the project's models/agent."""
    from ppf import tracking
    from ppf.registry import locate as locate_file

    own = Path(root) / "models" / "agent"
    if ref is None and (Path(root) / "mlruns" / "mlflow.db").is_file():
        tracking.configure(root)
        if tracking.champion(params.tracking.agent_name) is not None:
            ref = "registry:champion"
    return locate_file(ref, own, params.tracking.agent_name, "agent.safetensors", root, scratch, "train_agent")


def answer(root: Path, params: Any, ratio: float, ref: str | Path | None = None) -> dict[str, Any]:
    """`ppf policy`: the agent's decision for ``ratio`` with its plan and predicted JS."""
    import tempfile

    from ppf.agent.store import Agents
    from ppf.policy import check_ratio
    from ppf.predictor import Predictor

    ratio = check_ratio(ratio)
    with tempfile.TemporaryDirectory() as scratch:
        agents = Agents.load(locate(ref, root, params, scratch))
    if agents.meta.get("model") != params.model.name:
        from ppf.errors import PPFError

        raise PPFError(f"the agent was trained for {agents.meta.get('model')}, not {params.model.name}; "
                       "train one for this model (`dvc repro train_agent` with its name in params.yaml)")
    decision = agents.decide(ratio)
    predictor = Predictor.load(Path(root) / "models" / "predictor", root, params)
    pred = predictor.predict(str(decision["policy"]), ratio)
    pol = decision["policy"]
    return {"ratio": ratio, "policy": str(pol), "method": pol.method, "a_eta": pol.a_eta, "mode": decision["mode"],
            "actual_ratio": pred["actual_ratio"], "layer_ratios": pred["plan"].layer_ratios(),
            "predicted_js": pred["js"], "predicted_ppr": pred["js"] / pred["actual_ratio"],
            "decision_ms": decision["decision_ms"], "warning": decision["warning"]}
