"""One dense model's :class:`Planner`: its shape, layer scores and unit ranks with the project's
pruning settings — the one way the project turns a policy at a ratio into a plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan
from ppf.policy.allocate import _plan, keep_masks, plan_for
from ppf.policy.text import Policy
from ppf.policy.units import UnitRanks


# ---- one dense model's planner -------------------------------------------------------------------
@dataclass(frozen=True)
class Planner:
    """Plans policies for one dense model: its shape, the layer scores of every method and the unit
    ranks, with the project's pruning settings. A policy at a ratio becomes a plan in about a
    millisecond and never touches a weight (:class:`ppf.workbench.Workbench` builds one)."""

    model: str
    shape: DenseShape
    layer_scores: dict[str, list[float]]
    ranks: UnitRanks
    max_layer_ratio: float
    tolerance: float
    block_order: tuple[tuple[str, int], ...] | None = None  # BlockPruner's greedy order, where computed

    def plan(self, policy: Policy, ratio: float) -> PruningPlan:
        return _plan(self.shape, *self.masks(policy, ratio))

    def masks(self, policy: Policy, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """:meth:`plan`'s KEEP masks and meta, without building the plan (the predictor's batch path)."""
        H = self.layer_scores.get(policy.method)
        if H is None and policy.method != "uniform":
            raise PPFError(f"no '{policy.method}' layer scores in the importance cache; known: {', '.join(self.layer_scores)}")
        return keep_masks(policy, ratio, H, self.ranks, self.shape, self.max_layer_ratio, self.tolerance,
                          bi=self.layer_scores.get("bi"), block_order=self.block_order)

    def plan_scores(self, scores: Sequence[float], a_eta: float, ratio: float) -> PruningPlan:
        """A plan from ANY per-layer scores (higher = pruned less) through Eqs 4-5: with a_eta = half
        the spread of the wanted ratios, every ratio vector of mean ``ratio`` is reachable — the search
        space of :mod:`ppf.search`."""
        return plan_for(Policy("lod", a_eta), ratio, scores, self.ranks, self.shape, self.max_layer_ratio,
                        self.tolerance)
