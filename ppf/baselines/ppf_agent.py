"""``ppf`` — PPF: its answer for the ratio from the project's ``models/agent`` — at a static ratio
the final choice of train_agent (the agents' and every expressible allocation's policies raced on
growing valid budgets, :mod:`ppf.agent.choice`; where it is a baseline's allocation the description
says so), else the dynamic agent's policy."""

from __future__ import annotations

from ppf.agent.store import Agents
from ppf.baselines.registry import Method, register
from ppf.errors import PPFError


def agents_of(wb) -> Agents:
    """The project's trained agents (models/agent), checked to be this model's."""
    agents = Agents.load(wb.root / "models" / "agent")
    if agents.meta.get("model") != wb.name:
        raise PPFError(f"models/agent was trained for {agents.meta.get('model')}, not {wb.name}; "
                       "run `dvc repro train_agent` for this model or leave `ppf` out of the methods")
    return agents


def plan(wb, ratio: float, state=None):
    decision = agents_of(wb).policy_for(ratio)
    allocation = (decision["chosen"] or {}).get("allocation")
    desc = f"{decision['policy']} ({allocation}: nothing beat it on valid)" if allocation else \
        f"{decision['policy']} ({decision['mode']} agent)"
    return desc, wb.planner.plan(decision["policy"], ratio)


METHOD = register(Method("ppf", "width", "PPF's answer: the final choice at a static ratio, else the dynamic agent's policy",
                         plan=plan))
