"""Feasibility: the largest block ratio a policy can reach on a model (:func:`reach`) and the policy
made able to reach a ratio by giving up what stands in the way (:func:`feasible`). The agent's
relaxed actions and the collection's draws go through :func:`feasible`, so every policy they produce plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ppf.plan import DenseShape
from ppf.policy.depth import _protected, depth_ratio, depth_room, kept_params, removed_by_depth, width_layers
from ppf.policy.text import Policy
from ppf.policy.units import _Rounder


def reach(policy: Policy, shape: DenseShape, max_layer_ratio: float = 0.9,
          block_order: Sequence[Sequence[Any]] | None = None) -> float:
    """The largest block ratio ``policy`` can reach on a model of ``shape``: its depth's blocks gone,
    its protected layers dense, every other layer at ``max_layer_ratio`` (after rounding, with the
    policy's attention share). For ``layers=N`` which layers go does not matter (dense layers are
    alike); for ``blocks=N`` the stored ``block_order`` says which attention / MLP blocks go (without
    it, depth is left out: the reach of the width pruning alone)."""
    n = shape.n_layers
    protected = _protected(policy, n)
    if policy.order == "layers":  # any unprotected layers stand for those Block Influence would pick
        free = np.flatnonzero(~protected).tolist()
        attn = mlp = set(free[: min(policy.depth, max(0, len(free) - 1))])
    elif block_order is None:
        attn = mlp = set()
    else:
        p = replace(policy, depth=min(policy.depth, depth_room(policy, shape, block_order)))
        attn, mlp = removed_by_depth(p, shape, protected, None, block_order)
    width = width_layers(protected, attn, mlp)
    kept = _Rounder.of(shape)(np.full(int(width.sum()), float(max_layer_ratio)), policy.attn)[2].sum()
    kept += kept_params(shape, (i for i in range(n) if not width[i]), attn, mlp)
    return 1.0 - float(kept) / float(shape.dense_layer_params * n)


def feasible(policy: Policy, ratio: float, shape: DenseShape, max_layer_ratio: float = 0.9,
             margin: float = 0.01, block_order: Sequence[Sequence[Any]] | None = None) -> Policy:
    """``policy`` made able to reach ``ratio`` by giving up what stands in the way, in this order: depth
    beyond what ``ratio`` holds (whole layers; for ``blocks=N`` the blocks of the stored
    ``block_order`` past ``ratio`` less ``margin`` or past the stored steps), protected layers (the
    larger side first), the attention share (back to the paper's: attention at the layer's
    ratio), then depth itself, a unit at a time (``blocks=N`` can touch so many layers, each losing
    one half, that too few are left for width pruning to reach ``ratio``). The agent's relaxed
    actions and the collection's draws go through it, so every policy they produce plans; an
    explicit policy is planned as given (and refused with a clear error if it cannot)."""
    n = shape.n_layers
    p = policy

    def shallow(p: Policy) -> Policy:
        if p.order == "layers":
            d = min(p.depth, int(ratio * n + 1e-9))
        else:
            d = min(p.depth, depth_room(p, shape, block_order))
            while d > 0 and depth_ratio(replace(p, depth=d), shape, block_order) > ratio - margin:
                d -= 1
        return replace(p, depth=d) if d != p.depth else p

    p = shallow(p)
    while reach(p, shape, max_layer_ratio, block_order) < ratio + margin:
        if p.first or p.last:
            p = shallow(replace(p, first=p.first - 1) if p.first >= p.last else replace(p, last=p.last - 1))
        elif p.attn is not None:
            p = replace(p, attn=None)
        elif p.depth > 0:  # the depth part touches so many layers that width pruning cannot reach the rest
            p = replace(p, depth=p.depth - 1)
        else:
            break
    return p
