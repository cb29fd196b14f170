"""What a policy's protection and depth take before width pruning: the protected edge layers, the
attention / MLP blocks the depth part removes (:func:`removed_by_depth`), how deep it may go
(:func:`depth_room`), the ratio depth removes on its own (:func:`depth_ratio`), and the parameters
the layers that width pruning leaves alone keep (:func:`kept_params`, one sum for every caller).

These are numbers about a plan; the weights' side of removing blocks is :mod:`ppf.depth`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape
from ppf.policy.text import Policy


def _protected(policy: Policy, n: int) -> np.ndarray:
    protected = np.zeros(n, dtype=bool)
    protected[: policy.first] = True
    protected[n - policy.last:] = True
    return protected


def removed_by_depth(policy: Policy, shape: DenseShape, protected: np.ndarray, bi: Sequence[float] | None,
                     block_order: Sequence[Sequence[Any]] | None) -> tuple[set[int], set[int]]:
    """(attention layers, MLP layers) the policy's depth part removes, never a protected layer."""
    if policy.depth == 0:
        return set(), set()
    free = [i for i in range(shape.n_layers) if not protected[i]]
    if policy.order == "layers":
        if bi is None:
            raise PPFError("depth order 'layers' needs Block Influence (bi) layer scores; recompute the importance with bi")
        if policy.depth >= len(free):
            raise PPFError(f"layers={policy.depth} removes every one of the {len(free)} layers left to prune "
                           f"(of {shape.n_layers}); use depth < {len(free)}")
        b = np.asarray(bi, dtype=np.float64)
        chosen = sorted(free, key=lambda i: (b[i], i))[: policy.depth]
        return set(chosen), set(chosen)
    if block_order is None:
        raise PPFError("depth order 'blocks' needs BlockPruner's block order, and none is stored for this model and "
                       "calibration: run `dvc repro importance` with benchmark.blockpruner.order_ratio > 0 (or "
                       "`ppf prune`, which searches it once), or use layers=N")
    steps = [(str(k), int(i)) for k, i in block_order if not protected[int(i)]]
    if policy.depth > len(steps):
        raise PPFError(f"blocks={policy.depth} asks for more blocks than BlockPruner's stored order has ({len(steps)} "
                       "outside the protected layers); lower depth or raise benchmark.blockpruner.order_ratio")
    attn = {i for k, i in steps[: policy.depth] if k == "attention"}
    mlp = {i for k, i in steps[: policy.depth] if k == "mlp"}
    if len(attn & mlp) == shape.n_layers:
        raise PPFError(f"layers={policy.depth} removes every layer; use a smaller N")
    return attn, mlp


def width_layers(protected: np.ndarray, attn_gone: Container[int], mlp_gone: Container[int]) -> np.ndarray:
    """The layers width pruning may cut: neither protected nor touched by the depth part."""
    touched = np.array([i in attn_gone or i in mlp_gone for i in range(protected.size)], dtype=bool)
    return ~protected & ~touched


def kept_params(shape: DenseShape, layers: Iterable[int], attn_gone: Container[int], mlp_gone: Container[int]) -> int:
    """The parameters ``layers`` keep with no width pruning: the attention blocks of ``attn_gone`` and
    the MLP blocks of ``mlp_gone`` removed, everything else dense (a protected layer keeps them all)."""
    return sum(shape.layer_params(0 if i in attn_gone else shape.n_heads, 0 if i in attn_gone else shape.n_kv_heads,
                                  0 if i in mlp_gone else shape.intermediate) for i in layers)


def depth_room(policy: Policy, shape: DenseShape, block_order: Sequence[Sequence[Any]] | None = None) -> int:
    """The most ``depth`` can be for ``policy``'s protection and order without removing every layer:
    the unprotected layers less one (``layers``), or the stored BlockPruner steps outside the
    protected layers (``blocks``; unbounded without a stored order — planning then says it is missing)."""
    n = shape.n_layers
    free = max(0, n - policy.first - policy.last)
    if policy.order == "layers":
        return max(0, free - 1)
    if block_order is None:
        return policy.depth
    protected = _protected(policy, n)
    steps = [(str(k), int(i)) for k, i in block_order if not protected[int(i)]]
    attn: set[int] = set()
    mlp: set[int] = set()
    for d, (k, i) in enumerate(steps):
        (attn if k == "attention" else mlp).add(i)
        if len(attn & mlp) == free:  # this step would leave no layer at all
            return d
    return len(steps)


def depth_ratio(policy: Policy, shape: DenseShape, block_order: Sequence[Sequence[Any]] | None = None) -> float:
    """The block ratio ``policy``'s depth part removes on its own (``blocks=N`` needs the stored
    ``block_order``; without it 0). Whole layers are alike, so ``layers`` needs no scores."""
    n = shape.n_layers
    if policy.depth == 0:
        return 0.0
    if policy.order == "layers":
        return min(policy.depth, depth_room(policy, shape)) / n
    if block_order is None:
        return 0.0
    p = replace(policy, depth=min(policy.depth, depth_room(policy, shape, block_order)))
    attn, mlp = removed_by_depth(p, shape, _protected(policy, n), None, block_order)
    kept = kept_params(shape, attn | mlp, attn, mlp)
    return float(shape.dense_layer_params * len(attn | mlp) - kept) / float(shape.dense_layer_params * n)
