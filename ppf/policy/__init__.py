"""From a pruning policy (method, a_eta) and a target ratio to a :class:`~ppf.plan.PruningPlan`.

The agent's action space (PPF, Eqs 4-5) made concrete, on numbers only (layer and unit scores and a
:class:`~ppf.plan.DenseShape`), never on weights. The modules, each importing only those above it:

:mod:`~ppf.policy.text`
    :class:`Policy` (its text form, parse / ``str``, validation), the names of its parts
    (``IMPORTANCE_METHODS``, ``NORMS``, ``DEPTH_ORDERS``, ``PARTS``, ``A_ETA_MAX``) and
    :func:`check_a_eta` / :func:`check_ratio`.
:mod:`~ppf.policy.units`
    Whole units: :class:`UnitRanks` (which heads, KV heads and channels go first) and the rounding of
    one ratio per layer to a GQA-valid attention and a channel count (``_Rounder``).
:mod:`~ppf.policy.depth`
    What protection and depth take before width pruning: the protected edge layers,
    :func:`removed_by_depth`, :func:`depth_room`, :func:`depth_ratio`, and :func:`kept_params` (the
    parameters of the layers width pruning leaves alone).
:mod:`~ppf.policy.allocate`
    Eqs 4-5 (:func:`requested_ratios`, the score normalisation) and the allocation itself:
    :func:`keep_masks` (per-layer ratios, their common offset, the KEEP masks), :func:`plan_for`.
:mod:`~ppf.policy.feasibility`
    :func:`reach` (the largest ratio a policy can reach) and :func:`feasible` (the policy made able to
    reach a ratio).
:mod:`~ppf.policy.planner`
    :class:`Planner`: one dense model's shape, scores and settings; a policy at a ratio → a plan.

Everything is importable from here (``from ppf.policy import Policy, Planner, ...``).
"""

from __future__ import annotations

from ppf.policy.text import (A_ETA_MAX, DEPTH_ORDERS, IMPORTANCE_METHODS, NORMS, PARTS, Policy, check_a_eta,
                             check_ratio)
from ppf.policy.units import UNIT_KEYS, UnitRanks
from ppf.policy.depth import depth_ratio, depth_room, kept_params, removed_by_depth, width_layers
from ppf.policy.allocate import keep_masks, plan_for, requested_ratios
from ppf.policy.feasibility import feasible, reach
from ppf.policy.planner import Planner

# the private names of the former single module, still importable from here (tests use _normalised)
from ppf.policy.units import _as_array as _as_array, _ranks as _ranks, _Rounder as _Rounder
from ppf.policy.depth import _protected as _protected
from ppf.policy.allocate import _normalised as _normalised, _plan as _plan, _scores as _scores

__all__ = [
    "A_ETA_MAX", "DEPTH_ORDERS", "IMPORTANCE_METHODS", "NORMS", "PARTS", "Policy", "check_a_eta", "check_ratio",
    "UNIT_KEYS", "UnitRanks",
    "depth_ratio", "depth_room", "kept_params", "removed_by_depth", "width_layers",
    "keep_masks", "plan_for", "requested_ratios",
    "feasible", "reach",
    "Planner",
]
