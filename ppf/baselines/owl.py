"""``owl`` — OWL (Yin et al. 2024): layerwise outlier distribution mapped onto layer ratios.

OWL maps LOD linearly onto layer sparsities in [S − λ, S + λ] (its code: the outlier ratios min-max
scaled to a width of 2λ, then centred on S) — exactly Eqs 4–5 with method ``lod`` and a_eta = λ;
its default λ = 0.08 (``agent.validation.owl_lambda``) with M = 5 (``pruning.outlier_m``).
Deviation: OWL was designed for UNSTRUCTURED sparsity; here its ratios drive structured pruning
(as PPF's own comparison "LLM-Pruner + OWL" does), and the plan meets the ACTUAL target.
"""

from __future__ import annotations

from ppf.baselines.registry import Method, register
from ppf.policy import A_ETA_MAX, Policy

LAMBDA = 0.08


def policy(ratio: float, lam: float = LAMBDA) -> Policy:
    return Policy("lod", min(lam, A_ETA_MAX))


def plan(wb, ratio: float, state=None):
    pol = policy(ratio, wb.params.agent.validation.owl_lambda)
    return str(pol), wb.planner.plan(pol, ratio)


METHOD = register(Method("owl", "width", "OWL's LOD mapping, lambda = 0.08, M = 5",
                         "structured (heads/channels) instead of unstructured Wanda sparsity", plan=plan))
