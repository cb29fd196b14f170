"""``ppf`` — PPF: the trained agent's policy for the ratio (the static agent trained at that ratio,
else the dynamic one), from the project's ``models/agent``."""

from __future__ import annotations

from ppf.baselines.registry import Method, register


def plan(wb, ratio: float, state=None):
    decision = wb.agents.decide(ratio)
    return f"{decision['policy']} ({decision['mode']} agent)", wb.planner.plan(decision["policy"], ratio)


METHOD = register(Method("ppf", "width", "the trained agent's policy (static agent at a trained ratio, else dynamic)",
                         plan=plan))
