"""``dense``: the unpruned model, the reference every method is measured against (ratio 0)."""

from __future__ import annotations

from ppf.baselines.registry import Method, register


def build(wb, ratio: float, state=None):
    return wb.model, {"policy": "dense", "actual_ratio": 0.0}


METHOD = register(Method("dense", "dense", "the unpruned model (ratio 0)", build=build))
