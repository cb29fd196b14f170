"""The samples of the mask dataset: policies of the space at target ratios, each evaluated for real.

This is what the predictor's training data is made of (paper, "Implementation Details": ratios 0.1-0.7 in steps of
0.025, a_eta 0-0.5 in steps of 0.05, methods lod/esd/bi). One sample = one policy at one target
ratio → its plan, compressed mask, actual ratio, JS divergence against the dense model and PPR.

Cost is dominated by the pruned model's forward on the held-out tokens; everything else (dense
reference log-probabilities, importance, the planner, embeddings shared by the pruned copies) is
done once by the :class:`~ppf.workbench.Workbench` that :func:`evaluate` is handed. Which samples a
project collects, and the dataset file, are the collect recipe's (:mod:`ppf.recipes.collect`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.masks import compress
from ppf.metrics import ppr
from ppf.plan import DenseShape
from ppf.policy import IMPORTANCE_METHODS, Policy, check_a_eta, check_ratio, feasible
from ppf.workbench import Workbench


@dataclass(frozen=True, order=True)
class Sample:
    """One point of the policy space at a target block ratio: (importance method, a_eta) of the paper's
    grid plus, optionally, the extended parts (``parts``: the text after the method, e.g.
    ``,norm=rank,keep=2:1``; :class:`~ppf.policy.Policy`). ``holdout`` marks a within-ratio test policy."""

    method: str
    a_eta: float
    ratio: float
    parts: str = ""
    holdout: bool = False

    @classmethod
    def of(cls, policy: Policy, ratio: float, holdout: bool = False) -> "Sample":
        """The sample of ``policy`` at ``ratio``."""
        return cls(policy.method, policy.a_eta, ratio, str(policy)[len(str(Policy(policy.method, policy.a_eta))):], holdout)

    @classmethod
    def from_row(cls, row: Any) -> "Sample":
        """The sample a dataset row was collected from (rows of a paper-only dataset have no parts)."""
        return cls(row.method, float(row.a_eta), float(row.ratio), getattr(row, "parts", "") or "",
                   bool(getattr(row, "holdout", False)))

    @property
    def policy(self) -> Policy:
        return Policy(self.method, self.a_eta).with_parts(self.parts)

    @property
    def label(self) -> str:
        """The dataset's short text of the policy (``lod:0.25``, ``bi:0.1,keep=2:0``)."""
        return ("uniform" if self.method == "uniform" else f"{self.method}:{self.a_eta:g}") + self.parts

    @property
    def key(self) -> str:
        """Stable identity of the sample (dataset primary key, cache key)."""
        return f"{self.method}:{self.a_eta:.4f}{self.parts}@{self.ratio:.4f}" + ("#within" if self.holdout else "")


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


def draw_parts(rng: random.Random, space: Any, ratio: float, shape: DenseShape, max_layer_ratio: float = 0.9,
               block_order: Sequence[Sequence[Any]] | None = None) -> str:
    """The extended parts of one sample, drawn from ``space`` (:class:`ppf.config.SpaceParams`): a
    normalisation, protected edge layers, a depth order and the blocks it removes (whole layers by
    Block Influence, at most what ``ratio`` allows and leaving a layer to prune; or attention / MLP
    blocks of BlockPruner's stored ``block_order``) and an attention share, made
    :func:`~ppf.policy.feasible` at ``ratio``; "" when every part is the paper's."""
    n_layers = shape.n_layers
    norm = rng.choice(list(space.norms))
    first, last = rng.randint(0, space.keep), rng.randint(0, space.keep)
    while first + last >= n_layers:
        first, last = first // 2, last // 2
    order = rng.choice(list(space.orders)) if len(space.orders) > 1 else space.orders[0]
    if order == "blocks" and block_order is None:
        raise PPFError("collect.space.orders has blocks but no BlockPruner block order is stored for this model; run "
                       "`dvc repro importance` (benchmark.blockpruner.order_ratio > 0) or drop blocks")
    if order == "layers":
        room = min(int(ratio * n_layers + 1e-9), n_layers - first - last - 1)
        depth = rng.randint(0, max(0, min(space.depth, room)))
    else:
        depth = rng.randint(0, space.block_depth)  # feasible() trims it to the ratio and the stored order
    attn = None if space.attn is None else round(rng.uniform(*space.attn), 3)
    if space.groups > 0 and rng.random() < space.groups:
        attn = "groups"
    parts = feasible(Policy("lod", 0.1, norm=norm, first=first, last=last, depth=depth, order=order, attn=attn),
                     ratio, shape, max_layer_ratio, block_order=block_order)
    return str(parts)[len("lod:0.1"):]


def sample_space(grid: list[Sample], n: int | None, seed: int, space: Any, shape: DenseShape,
                 max_layer_ratio: float = 0.9, block_order: Sequence[Sequence[Any]] | None = None) -> list[Sample]:
    """:func:`sample_policies`, then each chosen point draws the extended parts with probability
    ``space.fraction`` (seeded; ``fraction: 0`` leaves the paper's samples exactly as they were)."""
    chosen = sample_policies(grid, n, seed)
    if space.fraction <= 0:
        return chosen
    rng = random.Random(f"{seed}:space")
    out = []
    for s in chosen:
        extended = rng.random() < space.fraction
        parts = draw_parts(rng, space, s.ratio, shape, max_layer_ratio, block_order) if extended else ""
        out.append(Sample(s.method, s.a_eta, s.ratio, parts))
    return sorted(set(out))


def within_ratio_samples(c: Any, shape: DenseShape, max_layer_ratio: float = 0.9,
                         block_order: Sequence[Sequence[Any]] | None = None) -> list[Sample]:
    """The within-ratio test set of ``c`` (:class:`ppf.config.CollectParams`): at each of
    ``c.within.ratios``, ``c.within.n`` distinct policies of the collection's space (a method, an
    a_eta of the grid, and — with probability ``space.fraction`` — extended parts), never trained on."""
    etas = _steps(*c.a_etas)
    out: list[Sample] = []
    for r in c.within.ratios:
        rng = random.Random(f"{c.within.seed}:{r:.4f}")
        seen: set[Sample] = set()
        for _ in range(100 * c.within.n):
            if len(seen) == c.within.n:
                break
            parts = (draw_parts(rng, c.space, r, shape, max_layer_ratio, block_order)
                     if rng.random() < c.space.fraction else "")
            seen.add(Sample(rng.choice(list(c.methods)), rng.choice(etas), round(float(r), 6), parts, True))
        if len(seen) < c.within.n:
            raise PPFError(f"the policy space holds fewer than {c.within.n} distinct policies at ratio {r}; "
                           "lower collect.within.n or widen collect.space")
        out += sorted(seen)
    return out


def evaluate(wb: Workbench, sample: Sample) -> dict[str, Any]:
    """One dataset row of ``sample``: plan → prune a copy → JS vs the dense model (and, from the same
    pass, KL and the NLL above dense: the other reward signals); plain JSON-able values, the mask
    flattened with its shape."""
    t = time.perf_counter()
    plan = wb.planner.plan(sample.policy, sample.ratio)
    mask = compress(plan)
    plan_s = time.perf_counter() - t
    res = wb.judge(plan)
    js = res["js"]
    return {
        **asdict(sample), "key": sample.key, "policy": sample.label,
        "removed_attention": len(plan.removed_attention), "removed_mlp": len(plan.removed_mlp),
        "actual_ratio": plan.block_ratio, "layer_ratios": [float(x) for x in plan.layer_ratios()],
        "mask": mask.astype(np.uint8).ravel().tolist(), "mask_shape": list(mask.shape),
        "js": js, "kl": res["kl"], "nll": res["nll"], "ppr": ppr(js, plan.block_ratio), "compensation": res["compensation"],
        "plan_s": plan_s, "eval_s": time.perf_counter() - t - plan_s,
    }
