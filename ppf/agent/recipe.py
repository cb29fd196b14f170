"""The `train_agent` recipe: what params.yaml asks to train, the predictor as the reward, the answer.

- :func:`predictor_scorer` — the environment's scorer: (policy, ratio) → (predicted JS, r_act);
- :func:`modes` / :func:`agent_config` — what params.yaml asks to train;
- :func:`mean_predicted_ppr` — how restarts are compared (the predictor judges, never the truth);
- :func:`locate` / :func:`answer` — `ppf policy`: the champion (or the project's) agent's decision.

Validation on the true model is :mod:`ppf.agent.validation`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ppf import tracking
from ppf.agent.ddpg import AgentConfig, act
from ppf.agent.env import PAPER_SPACE, ActionSpace, observe
from ppf.agent.store import Agents
from ppf.config import Params
from ppf.errors import PPFError
from ppf.policy import Policy
from ppf.predictor import Predictor
from ppf.registry import locate as locate_file
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


def answer(wb: Workbench, ratio: float, ref: str | Path | None = None) -> dict[str, Any]:
    """`ppf policy`: PPF's answer for ``ratio`` (the final choice at a static ratio, else the agent's
    decision) with its plan and predicted JS."""
    with tempfile.TemporaryDirectory() as scratch:
        agents = Agents.load(locate(ref, wb.root, wb.params, scratch))
    if agents.meta.get("model") != wb.name:
        raise PPFError(f"the agent was trained for {agents.meta.get('model')}, not {wb.name}; "
                       "train one for this model (`dvc repro train_agent` with its name in params.yaml)")
    decision = agents.answer(ratio)
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
