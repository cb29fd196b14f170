"""``shortgpt`` — ShortGPT (Men et al. 2024): the decoder layers of lowest Block Influence removed,
as many as bring the block ratio nearest the target (whole layers: the nearest reachable ratio)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ppf.baselines.registry import Method, register
from ppf.depth import block_ratio, removal_plan
from ppf.errors import PPFError
from ppf.plan import DenseShape


def layers_to_remove(bi: Sequence[float], shape: DenseShape, ratio: float) -> list[int]:
    """The layers of lowest BI (oriented like every ppf layer score: higher = more important)."""
    order = [int(i) for i in np.argsort(np.asarray(bi, dtype=float), kind="stable")]
    per_layer = block_ratio(shape, [0], [0])
    n = int(round(ratio / per_layer))
    if not 1 <= n < shape.n_layers:
        raise PPFError(f"ratio {ratio} removes {n} of {shape.n_layers} layers; use a ratio between "
                       f"{per_layer:.3f} and {1 - per_layer:.3f}")
    return sorted(order[:n])


def plan(wb, ratio: float, state=None):
    layers = layers_to_remove(wb.planner.layer_scores["bi"], wb.shape, ratio)
    return f"layers {layers} removed", removal_plan(wb.shape, layers, layers, {"method": "shortgpt"})


METHOD = register(Method("shortgpt", "depth", "the layers of lowest Block Influence removed",
                         "none (the ratio is the nearest whole number of layers)", plan=plan))
