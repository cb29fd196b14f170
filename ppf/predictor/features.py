"""Policy → plan → mask image, without touching a weight: the predictor's (and agent's) hot path.

A :class:`Planner` holds what planning needs for one dense model — its shape (from the config
alone), the layer scores of every method and the unit ranks (from the importance cache) — so a
policy at a ratio becomes a plan in about a millisecond and an image in microseconds.

Images (``kind``): the paper's ``o_proj`` (1, L, n_heads); the ablations ``attention`` (4, L,
n_heads) and ``mlp`` (1, L, n_heads bins of MLP channels); and ``o_proj+mlp`` (2, L, n_heads), ours:
with GQA the o_proj image is coarse — SmolLM2's 9 heads under 3 KV heads give each layer only a
few attention sizes, and the MLP channels that take up the rest of the ratio are invisible in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan

KINDS = ("o_proj", "attention", "mlp", "o_proj+mlp")


def image(plan: PruningPlan, kind: str = "o_proj") -> np.ndarray:
    """The float32 mask image [C, L, W] of ``plan`` for the predictor input ``kind``."""
    from ppf.masks import mask_image

    if kind == "o_proj+mlp":
        return np.concatenate([mask_image(plan, "o_proj"), mask_image(plan, "mlp")])
    if kind not in KINDS:
        raise PPFError(f"unknown predictor input {kind!r}; use one of {', '.join(KINDS)}")
    return mask_image(plan, kind)


def image_shape(shape: DenseShape, kind: str) -> tuple[int, int, int]:
    """The [C, L, W] an image of ``kind`` has for a model of ``shape``."""
    planes = {"o_proj": 1, "attention": 4, "mlp": 1, "o_proj+mlp": 2}
    if kind not in planes:
        raise PPFError(f"unknown predictor input {kind!r}; use one of {', '.join(KINDS)}")
    return planes[kind], shape.n_layers, shape.n_heads


@dataclass(frozen=True)
class Planner:
    """Plans policies for one dense model with the project's pruning settings."""

    model: str
    shape: DenseShape
    layer_scores: dict[str, list[float]]
    ranks: Any  # ppf.policy.UnitRanks
    max_layer_ratio: float
    tolerance: float

    @classmethod
    def load(cls, root: Path, params: Any) -> "Planner":
        """From the project's prepared calibration tokens and importance cache (no weights loaded)."""
        from ppf.engine import importance
        from ppf.io import read_tensors
        from ppf.models import load_config
        from ppf.paths import cache_dir
        from ppf.policy import UnitRanks

        ref = params.model.name
        tokens = Path(root) / "data" / "calibration" / "tokens.safetensors"
        if not tokens.is_file():
            raise PPFError(f"no calibration tokens at '{tokens}'; run `dvc repro prepare` in the project first")
        tensors, meta = read_tensors(tokens)
        if meta.get("model") != str(ref) or meta.get("calibration") != params.calibration.model_dump():
            raise PPFError(f"'{tokens}' was prepared for {meta.get('model')!r} with other calibration settings "
                           f"than params.yaml ({ref!r}); run `dvc repro prepare`")
        shape = DenseShape.of(load_config(ref))
        imp = importance(None, ref, tensors["calibration"], params, cache_dir() / "importance",
                         also_look_in=(Path(root) / "data" / "importance",))
        return cls(str(ref), shape, dict(imp.layer), UnitRanks.of(imp.units, shape),
                   params.pruning.max_layer_ratio, params.pruning.tolerance)

    def plan(self, policy: str, ratio: float) -> PruningPlan:
        from ppf.policy import Policy, plan_for

        pol = Policy.parse(policy) if isinstance(policy, str) else policy
        H = self.layer_scores.get(pol.method)
        if H is None and pol.method != "uniform":
            raise PPFError(f"no '{pol.method}' layer scores in the importance cache; known: {', '.join(self.layer_scores)}")
        return plan_for(pol, ratio, H, self.ranks, self.shape, self.max_layer_ratio, self.tolerance)

    def plan_scores(self, scores: Any, a_eta: float, ratio: float) -> PruningPlan:
        """A plan from ANY per-layer scores (higher = pruned less) through Eqs 4-5: with a_eta =
        half the spread of the wanted ratios, every ratio vector of mean ``ratio`` is reachable —
        the search space of :mod:`ppf.search`."""
        from ppf.policy import Policy, plan_for

        return plan_for(Policy("lod", a_eta), ratio, scores, self.ranks, self.shape, self.max_layer_ratio,
                        self.tolerance)
