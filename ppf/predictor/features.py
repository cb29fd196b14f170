"""Plan → mask image, without touching a weight: the predictor's (and agent's) hot path.

A :class:`~ppf.policy.Planner` turns a policy at a ratio into a plan in about a millisecond; this
module turns the plan into the predictor's image in microseconds.

Images (``kind``): the paper's ``o_proj`` (1, L, n_heads); the ablations ``attention`` (4, L,
n_heads) and ``mlp`` (1, L, n_heads bins of MLP channels); and ``o_proj+mlp`` (2, L, n_heads), ours:
with GQA the o_proj image is coarse — SmolLM2's 9 heads under 3 KV heads give each layer only a
few attention sizes, and the MLP channels that take up the rest of the ratio are invisible in it.
"""

from __future__ import annotations

import numpy as np

from ppf.errors import PPFError
from ppf.masks import mask_image
from ppf.plan import DenseShape, PruningPlan

KINDS = ("o_proj", "attention", "mlp", "o_proj+mlp")


def image(plan: PruningPlan, kind: str = "o_proj") -> np.ndarray:
    """The float32 mask image [C, L, W] of ``plan`` for the predictor input ``kind``."""
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
