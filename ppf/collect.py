"""Mask-dataset collection: sample policies, evaluate each one for real (prune + JS).

This is the predictor's training data (paper, "Implementation Details": ratios 0.1-0.7 in steps of
0.025, a_eta 0-0.5 in steps of 0.05, methods lod/esd/bi). One sample = one policy at one target
ratio → its plan, compressed mask, actual ratio, JS divergence against the dense model and PPR.

Cost is dominated by the pruned model's forward on the held-out tokens; everything else (dense
reference log-probabilities, importance, the planner, embeddings shared by the pruned copies) is
done once by the :class:`~ppf.workbench.Workbench` that :func:`evaluate` is handed.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.masks import compress
from ppf.metrics import ppr
from ppf.policy import IMPORTANCE_METHODS, Policy, check_a_eta, check_ratio
from ppf.workbench import Workbench


@dataclass(frozen=True, order=True)
class Sample:
    """One point of the policy grid: (importance method, a_eta) at a target block ratio."""

    method: str
    a_eta: float
    ratio: float

    @property
    def policy(self) -> Policy:
        return Policy(self.method, self.a_eta)

    @property
    def label(self) -> str:
        """The dataset's short text of the policy (``lod:0.25``)."""
        return "uniform" if self.method == "uniform" else f"{self.method}:{self.a_eta:g}"

    @property
    def key(self) -> str:
        """Stable identity of the sample (dataset primary key, cache key)."""
        return f"{self.method}:{self.a_eta:.4f}@{self.ratio:.4f}"


def _steps(lo: float, hi: float, step: float) -> list[float]:
    if step <= 0 or hi < lo:
        raise PPFError(f"grid range {lo}..{hi} step {step} is empty; need lo <= hi and step > 0")
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(n + 1)]


def policy_grid(ratios: tuple[float, float, float] = (0.1, 0.7, 0.025),
                a_etas: tuple[float, float, float] = (0.0, 0.5, 0.05),
                methods: tuple[str, ...] = ("lod", "esd", "bi")) -> list[Sample]:
    """The full grid of (method, a_eta, ratio), each range given as (lo, hi, step), sorted."""
    for m in methods:
        if m not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown method '{m}' in the collection grid; use some of {', '.join(IMPORTANCE_METHODS)}")
    rs, es = _steps(*ratios), _steps(*a_etas)
    for r in rs:
        check_ratio(r, "grid ratio")
    for e in es:
        check_a_eta(e)
    return sorted(Sample(m, e, r) for m in methods for e in es for r in rs)


def sample_policies(grid: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """A seeded subset of ``n`` grid points without repetition (all of them for n=None), sorted."""
    if n is None or n >= len(grid):
        if n is not None and n > len(grid):
            raise PPFError(f"asked for {n} samples but the grid has only {len(grid)} points; "
                           "lower the sample count or refine the grid steps")
        return sorted(grid)
    if n < 1:
        raise PPFError(f"sample count {n} must be >= 1")
    return sorted(random.Random(seed).sample(sorted(grid), n))


def evaluate(wb: Workbench, sample: Sample) -> dict[str, Any]:
    """One dataset row of ``sample``: plan → prune a copy → JS vs the dense model (plain JSON-able
    values; the mask flattened with its shape)."""
    t = time.perf_counter()
    plan = wb.planner.plan(sample.policy, sample.ratio)
    mask = compress(plan)
    plan_s = time.perf_counter() - t
    res = wb.judge(plan)
    js = res["js"]
    return {
        **asdict(sample), "key": sample.key, "policy": sample.label,
        "actual_ratio": plan.block_ratio, "layer_ratios": [float(x) for x in plan.layer_ratios()],
        "mask": mask.astype(np.uint8).ravel().tolist(), "mask_shape": list(mask.shape),
        "js": js, "ppr": ppr(js, plan.block_ratio), "compensation": res["compensation"], "plan_s": plan_s, "eval_s": time.perf_counter() - t - plan_s,
    }
