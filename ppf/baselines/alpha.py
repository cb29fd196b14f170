"""``alpha`` — AlphaPruning (Lu et al. 2024): the ESD heavy-tail exponent mapped onto layer ratios.

AlphaPruning maps alpha linearly onto [S(1 − ε), S(1 + ε)] and rescales to the target — Eqs 4–5
with method ``esd`` and a_eta = ε·S; its LLaMA setting ε = 0.3 (``agent.validation.alpha_epsilon``).
Deviation: designed for unstructured sparsity; here structured, at the ACTUAL target.
"""

from __future__ import annotations

from ppf.baselines.registry import Method, register
from ppf.policy import A_ETA_MAX, Policy

EPSILON = 0.3


def policy(ratio: float, epsilon: float = EPSILON) -> Policy:
    return Policy("esd", min(epsilon * ratio, A_ETA_MAX))


def plan(wb, ratio: float, state=None):
    pol = policy(ratio, wb.params.agent.validation.alpha_epsilon)
    return str(pol), wb.planner.plan(pol, ratio)


METHOD = register(Method("alpha", "width", "AlphaPruning's ESD mapping, epsilon = 0.3",
                         "structured instead of unstructured", plan=plan))
