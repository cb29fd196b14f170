"""The hand-designed non-uniform mappings PPF is compared with, as policies of our engine.

OWL (Yin et al. 2024) maps LOD linearly onto layer sparsities in [S − λ, S + λ] (its code: the
outlier ratios min-max scaled to a width of 2λ, then centred on S) — exactly Eqs 4–5 with
method ``lod`` and a_eta = λ; OWL's default λ = 0.08 (with M = 5, ``pruning.outlier_m``).
AlphaPruning (Lu et al. 2024) maps the ESD exponent alpha linearly onto [S(1 − ε), S(1 + ε)] and
rescales to the target — Eqs 4–5 with method ``esd`` and a_eta = ε·S; its LLaMA setting ε = 0.3.

Deviation from the originals: both were designed for UNSTRUCTURED sparsity (Wanda/SparseGPT inside a
layer); here the per-layer ratios drive our structured head/channel pruning (as PPF's own
comparison does, "LLM-Pruner + OWL / AlphaPruning"), and the plan's common offset makes the
ACTUAL block reduction equal the target.
"""

from __future__ import annotations

from ppf.policy import A_ETA_MAX, Policy, check_ratio

OWL_LAMBDA = 0.08
ALPHA_EPSILON = 0.3


def owl_policy(ratio: float, lam: float = OWL_LAMBDA) -> Policy:
    check_ratio(ratio)
    return Policy("lod", min(lam, A_ETA_MAX))


def alpha_policy(ratio: float, epsilon: float = ALPHA_EPSILON) -> Policy:
    return Policy("esd", min(epsilon * check_ratio(ratio), A_ETA_MAX))
