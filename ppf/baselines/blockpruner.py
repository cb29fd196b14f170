"""``blockpruner`` — BlockPruner (Zhong et al. 2024): greedy removal of single attention / MLP blocks,
each step the block whose removal gives the lowest calibration perplexity.

The greedy search is the expensive part (:mod:`ppf.block_order`, the method's ``prepare``): it runs
once up to the largest ratio asked for, and any prefix of the order is BlockPruner's answer for a
smaller ratio (:func:`blocks_for_ratio`: the nearest reachable). The importance stage searches the
order once per model and calibration slice up to ``benchmark.blockpruner.order_ratio`` into
``data/importance``; this method's preparation reads its prefix where it reaches far enough. Deviation: the
calibration budget ``benchmark.blockpruner`` (2 × 128 tokens by default) instead of the original's
larger sets.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ppf.baselines.registry import Method, register
from ppf.depth import removal_plan
from ppf.errors import PPFError


def blocks_for_ratio(steps: list[dict], ratio: float) -> tuple[list[int], list[int], float]:
    """(attention layers, MLP layers, actual ratio) of the greedy prefix whose ratio is nearest ``ratio``."""
    if not steps:
        raise PPFError("the BlockPruner search removed nothing; raise its ratio")
    k = int(np.argmin([abs(s["block_ratio"] - ratio) for s in steps]))
    prefix = steps[: k + 1]
    return ([s["layer"] for s in prefix if s["kind"] == "attention"],
            [s["layer"] for s in prefix if s["kind"] == "mlp"], prefix[-1]["block_ratio"])


def prepare(wb, max_ratio: float, progress: Callable[[int, float], None] = lambda step, ratio: None) -> list[dict]:
    """The greedy removal order up to ``max_ratio`` on ``benchmark.blockpruner``'s calibration slice
    (the importance stage's stored order where it reaches ``max_ratio``)."""
    return wb.block_steps(max_ratio, compute=True, progress=progress)


def plan(wb, ratio: float, steps: list[dict] | None = None):
    if steps is None:
        raise PPFError("blockpruner needs its greedy removal order; compute it with its `prepare` first")
    attn, mlp, _ = blocks_for_ratio(steps, ratio)
    return (f"attention {sorted(attn)} / mlp {sorted(mlp)} removed",
            removal_plan(wb.shape, attn, mlp, {"method": "blockpruner"}))


METHOD = register(Method("blockpruner", "depth", "greedy removal of attention / MLP blocks by calibration perplexity",
                         "calibration budget benchmark.blockpruner (2 x 128 tokens) instead of its larger sets",
                         plan=plan, prepare=prepare))
