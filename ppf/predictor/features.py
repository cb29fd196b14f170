"""Plan → mask image, without touching a weight: the predictor's (and agent's) hot path.

A :class:`~ppf.policy.Planner` turns a policy at a ratio into a plan in about a millisecond; this
module turns the plan into the predictor's image in microseconds.

Images (``kind``): the paper's ``o_proj`` (1, L, n_heads); the ablations ``attention`` (4, L,
n_heads) and ``mlp`` (1, L, n_heads bins of MLP channels); ``o_proj+mlp`` (2, L, n_heads); and
``blocks`` (2, L, n_heads), ours and the default: with GQA the o_proj image is coarse — SmolLM2's 9
heads under 3 KV heads give each layer only a few attention sizes — and the MLP channels (75 % of a
layer's parameters) are invisible in it. ``blocks`` shows the kept heads beside the exact kept MLP
width as a thermometer code (bin j of n_heads filled by min(1, max(0, kept/intermediate · n_heads − j))),
so every channel count is a different image; a removed attention is an all-zero head row (a kept one
keeps at least one head), a removed MLP an all-zero thermometer row.
"""

from __future__ import annotations

import numpy as np

from ppf.errors import PPFError
from ppf.masks import mask_image
from ppf.plan import DenseShape, PruningPlan

INPUTS = ("o_proj", "attention", "mlp", "o_proj+mlp", "blocks")


def mlp_width(plan: PruningPlan) -> np.ndarray:
    """float32 (1, L, n_heads): each layer's kept MLP fraction as a thermometer code over n_heads bins."""
    s = plan.shape
    frac = np.array([len(lp.channels) / s.intermediate for lp in plan.layers], dtype=np.float64)
    bins = np.arange(s.n_heads, dtype=np.float64)
    return np.clip(frac[:, None] * s.n_heads - bins[None, :], 0.0, 1.0).astype(np.float32)[None]


def image(plan: PruningPlan, kind: str = "o_proj") -> np.ndarray:
    """The float32 mask image [C, L, W] of ``plan`` for the predictor input ``kind``."""
    if kind == "blocks":
        return np.concatenate([mask_image(plan, "o_proj"), mlp_width(plan)])
    if kind == "o_proj+mlp":
        return np.concatenate([mask_image(plan, "o_proj"), mask_image(plan, "mlp")])
    if kind not in INPUTS:
        raise PPFError(f"unknown predictor input {kind!r}; use one of {', '.join(INPUTS)}")
    return mask_image(plan, kind)


def image_of_masks(shape: DenseShape, heads: np.ndarray, kv_heads: np.ndarray, channels: np.ndarray,
                   kind: str = "o_proj") -> np.ndarray:
    """:func:`image` straight from a plan's KEEP masks (:meth:`ppf.policy.Planner.masks`) — the
    predictor's batch path, which never builds the plan's index lists; equal to ``image`` of the plan."""
    if kind not in ("o_proj", "blocks"):
        return image(PruningPlan.from_masks(shape, heads, kv_heads, channels), kind)
    o_proj = np.asarray(heads, dtype=np.float32)[None]
    if kind == "o_proj":
        return o_proj
    frac = np.asarray(channels).sum(axis=1) / shape.intermediate
    bins = np.arange(shape.n_heads, dtype=np.float64)
    mlp = np.clip(frac[:, None] * shape.n_heads - bins[None, :], 0.0, 1.0).astype(np.float32)[None]
    return np.concatenate([o_proj, mlp])


def image_shape(shape: DenseShape, kind: str) -> tuple[int, int, int]:
    """The [C, L, W] an image of ``kind`` has for a model of ``shape``."""
    planes = {"o_proj": 1, "attention": 4, "mlp": 1, "o_proj+mlp": 2, "blocks": 2}
    if kind not in planes:
        raise PPFError(f"unknown predictor input {kind!r}; use one of {', '.join(INPUTS)}")
    return planes[kind], shape.n_layers, shape.n_heads
