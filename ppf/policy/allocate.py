"""From a pruning policy (method, a_eta) and a target ratio to a :class:`~ppf.plan.PruningPlan`.

This is the agent's action space (PPF, Eqs 4-5) made concrete. The agent picks an importance
method (which layer scores ``H`` to use) and a scaling factor ``a_eta``; Eqs 4-5 turn them into a
ratio per layer that averages to the target and spreads by at most ``±2·a_eta`` around it (the
most important layer is pruned least). Those ratios are then rounded to whole units — a GQA-valid
attention configuration plus a number of MLP channels — and which units go is decided by the
unit scores (heads, KV heads, channels).

Rounding moves the real ratio off the target: with 9 heads / 3 KV heads a layer's attention can
only take 7 distinct sizes. The reward divides by the ACTUAL ratio and the predictor sees the
actual mask, so a policy "at 0.4" must really remove 0.4 of the block parameters. Hence
:func:`plan_for` shifts all layer ratios by one common offset (found by bisection on the rounded
ratio) until the plan's :attr:`~ppf.plan.PruningPlan.block_ratio` is within ``tol`` of the target;
a common offset keeps the policy's shape, which is what the agent chose.

Everything here works on numbers (scores and a :class:`~ppf.plan.DenseShape`), never on weights,
and is vectorised: :func:`plan_for` is on the predictor's hot path (a few ms for 30 layers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan
from ppf.policy.depth import _protected, kept_params, removed_by_depth, width_layers
from ppf.policy.text import Policy, check_a_eta, check_ratio
from ppf.policy.units import UnitRanks, _Rounder


# ---- Eqs 4-5 -----------------------------------------------------------------------------------
def _scores(H: Sequence[float] | np.ndarray | None) -> np.ndarray:
    h = np.asarray(H, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise PPFError(f"layer scores H must be a non-empty 1-D sequence, got shape {h.shape}; pass one score per layer")
    if not np.isfinite(h).all():
        raise PPFError(f"layer scores H contain NaN/inf at layers {np.flatnonzero(~np.isfinite(h)).tolist()}; "
                       "recompute the importance")
    return h


def requested_ratios(H: Sequence[float] | np.ndarray, target: float, a_eta: float) -> np.ndarray:
    """The paper's per-layer ratios: η = 2·a_eta / (max H − min H), S_i = S_tar + η·(mean H − H_i).

    H is oriented higher = more important, so important layers get ratios below the target. The
    spread is at most ±2·a_eta and the mean is exactly the target. Equal scores (e.g. ``uniform``)
    give η = 0: every layer at the target. Values are NOT clipped here; :func:`plan_for` clips.
    """
    h = _scores(H)
    target = check_ratio(target)
    a = check_a_eta(a_eta)
    span = float(h.max() - h.min())
    eta = 2.0 * a / span if span > 0 else 0.0
    return target + eta * (h.mean() - h)


# ---- the plan ----------------------------------------------------------------------------------
def _normalised(h: np.ndarray, norm: str) -> np.ndarray:
    """Layer scores as Eq 4 reads them: as given (``minmax``: Eq 4 scales by the span itself) or their
    ranks, evenly spaced in [0, 1] (``rank``: an outlier is only the highest, not far away)."""
    if norm == "minmax" or h.size < 2:
        return h
    return np.argsort(np.argsort(h, kind="stable"), kind="stable") / (h.size - 1.0)




def plan_for(policy: Policy | str, target: float, H: Sequence[float] | None,
             units: "Mapping[str, Any] | UnitRanks | None", shape: DenseShape,
             max_layer_ratio: float = 0.9, tol: float = 0.005, bi: Sequence[float] | None = None,
             block_order: Sequence[Sequence[Any]] | None = None) -> PruningPlan:
    """The pruning plan of ``policy`` at ``target`` (:func:`keep_masks`, as a :class:`PruningPlan`)."""
    return _plan(shape, *keep_masks(policy, target, H, units, shape, max_layer_ratio, tol, bi, block_order))


def _plan(shape: DenseShape, heads: np.ndarray, kv_heads: np.ndarray, channels: np.ndarray,
          meta: dict[str, Any]) -> PruningPlan:
    """The plan of KEEP masks, its meta completed with the actual ratio and per-layer ratios."""
    plan = PruningPlan.from_masks(shape, heads, kv_heads, channels, meta)
    plan.meta["actual"] = plan.block_ratio
    plan.meta["layer_ratios"] = plan.layer_ratios()
    return plan


def keep_masks(policy: Policy | str, target: float, H: Sequence[float] | None,
               units: "Mapping[str, Any] | UnitRanks | None", shape: DenseShape,
               max_layer_ratio: float = 0.9, tol: float = 0.005, bi: Sequence[float] | None = None,
               block_order: Sequence[Sequence[Any]] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The KEEP masks (query heads [L, n_heads], KV heads [L, n_kv_heads], channels [L, intermediate])
    and the meta of the pruning plan of ``policy`` at ``target``, whose ACTUAL block ratio is within ``tol`` of it.

    The policy's depth part removes its blocks first (whole layers in ``bi`` order, or the first
    ``depth`` blocks of BlockPruner's ``block_order``: ``[(kind, layer), ...]``); protected edge layers
    stay dense. The rest of the target is width-pruned over the layers neither touched: their ratios
    are Eqs 4-5 (:func:`requested_ratios`, on the ``norm``-scaled scores of those layers) plus one
    common offset δ, clipped to [0, max_layer_ratio]; δ is found by bisection on the rounded block
    ratio, which rises with δ (up to dips of about one MLP channel where a layer's attention changes
    size). ``attn`` decides how each layer's reduction divides between attention and MLP.
    ``H`` may be None for ``uniform``. ``units`` are the unit scores (see :meth:`UnitRanks.of`;
    pass a prebuilt :class:`UnitRanks` when planning many policies for one model). ``meta`` records
    the policy, the target, the actual ratio, the requested (Eq 5) ratios, δ, the corrected ratios
    before rounding (``ratios``), the actual per-layer ratios after it (``layer_ratios``) and the
    removed blocks. For a paper policy (no extended part) this is exactly the paper's mapping.
    """
    policy, target, m, h = _arguments(policy, target, H, shape, max_layer_ratio, tol)
    n = shape.n_layers
    protected = _protected(policy, n)
    attn_gone, mlp_gone = removed_by_depth(policy, shape, protected, bi, block_order)
    ranks = UnitRanks.of(units, shape)
    rounder = _Rounder.of(shape)
    dense_total = float(shape.dense_layer_params * n)
    width = width_layers(protected, attn_gone, mlp_gone)  # the layers width pruning may cut
    fixed_kept = kept_params(shape, (i for i in range(n) if not width[i]), attn_gone, mlp_gone)
    depth_ratio = 1.0 - (fixed_kept + shape.dense_layer_params * width.sum()) / dense_total
    if depth_ratio > target + tol:
        raise PPFError(f"{policy.order}={policy.depth} already removes {depth_ratio:.4f} of the block "
                       f"parameters, more than the target {target}; use a smaller depth")

    requested = np.zeros(n)
    if width.any():
        requested[width] = requested_ratios(_normalised(h[width], policy.norm), target, policy.a_eta)
    attn = policy.attn

    def actual(delta: float) -> float:
        kept = rounder(np.clip(requested[width] + delta, 0.0, m), attn)[2].sum()
        return 1.0 - (kept + fixed_kept) / dense_total

    best, cut = _offset(policy, target, m, tol, requested[width], actual, depth_ratio)
    ratios = np.where(width & cut, np.clip(requested + best, 0.0, m), 0.0)
    head_keep, kv_keep, channel_keep = _unit_masks(shape, ranks, rounder, ratios, attn, width, attn_gone, mlp_gone)
    meta = {"policy": str(policy), "method": policy.method, "a_eta": policy.a_eta, "target": target,
            "max_layer_ratio": m, "tol": float(tol), "offset": float(best),
            "requested": [float(x) for x in requested], "ratios": [float(x) for x in ratios]}
    if not policy.is_paper:
        meta |= {"norm": policy.norm, "keep": [policy.first, policy.last], "depth": policy.depth,
                 "order": policy.order, "attn": policy.attn,
                 "removed": {"attention": sorted(attn_gone), "mlp": sorted(mlp_gone)}}
    return head_keep, kv_keep, channel_keep, meta


# ---- the steps of keep_masks -------------------------------------------------------------------
def _arguments(policy: Policy | str, target: float, H: Sequence[float] | None, shape: DenseShape,
               max_layer_ratio: float, tol: float) -> tuple[Policy, float, float, np.ndarray]:
    """:func:`keep_masks`' arguments checked: (the policy, parsed if text; the target; max_layer_ratio;
    the layer scores, zeros for ``uniform`` without ``H``), or a PPFError."""
    if not isinstance(policy, Policy):
        policy = Policy.parse(policy)
    target = check_ratio(target)
    m = check_ratio(max_layer_ratio, "max_layer_ratio")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise PPFError(f"tol {tol!r} must be a small positive number, e.g. 0.005")
    n = shape.n_layers
    h = _scores(np.zeros(n) if H is None and policy.method == "uniform" else H)
    if h.size != n:
        raise PPFError(f"layer scores H have {h.size} entries, the model has {n} layers; "
                       "recompute the importance for this model")
    if policy.first + policy.last >= n:
        raise PPFError(f"keep={policy.first}:{policy.last} protects {policy.first + policy.last} layers of {n}, "
                       f"leaving none to prune; keep fewer than {n} edge layers")
    return policy, target, m, h


def _offset(policy: Policy, target: float, m: float, tol: float, requested: np.ndarray,
            actual: Callable[[float], float], depth_ratio: float) -> tuple[float, bool]:
    """(δ, cut): the common offset of the width-pruned layers' ``requested`` ratios whose rounded block
    ratio ``actual(δ)`` is nearest ``target`` (δ = 0 if that is close enough, else bisection), and
    whether width pruning has anything left to do once depth removed ``depth_ratio`` (if not, δ = 0).
    A PPFError when no δ brings the plan within ``tol`` of the target."""
    best, best_actual = 0.0, depth_ratio
    cut = target - depth_ratio > tol / 10  # whether width pruning has anything left to do
    if cut:
        if not requested.size:
            raise PPFError(f"the policy leaves no layer to width-prune and its depth reaches {depth_ratio:.4f}, "
                           f"not the target {target}; protect fewer layers or change depth")
        lo, hi = -float(requested.max()), m - float(requested.min())  # all at 0 .. all at m
        reach = actual(hi)
        if reach < target - tol:
            where = "" if policy.is_paper else f" and the layers policy {policy} leaves to width pruning"
            raise PPFError(f"target {target} is above what any policy can reach with max_layer_ratio {m} "
                           f"(at most {reach:.4f} for this model's heads and channels{where}); lower the target, "
                           "raise max_layer_ratio" + ("" if policy.is_paper else ", or protect fewer layers"))
        best, best_actual = 0.0, actual(0.0)  # δ = 0 keeps the policy exactly, if it is close enough
        for _ in range(64):
            if abs(best_actual - target) <= tol / 10 or hi - lo < 1e-12:
                break
            mid = 0.5 * (lo + hi)
            a = actual(mid)
            if abs(a - target) < abs(best_actual - target):
                best, best_actual = mid, a
            lo, hi = (mid, hi) if a < target else (lo, mid)
    if abs(best_actual - target) > tol:
        raise PPFError(f"target {target} cannot be met within ±{tol} (closest: {best_actual:.4f}): "
                       "this model's heads and channels are too coarse; raise tol")
    return best, cut


def _unit_masks(shape: DenseShape, ranks: UnitRanks, rounder: _Rounder, ratios: np.ndarray, attn: float | str | None,
                width: np.ndarray, attn_gone: set[int], mlp_gone: set[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The KEEP masks (query heads, KV heads, channels) of the layer ``ratios`` rounded to whole units:
    each width-pruned layer keeps its best-ranked units, every other layer is dense less the blocks
    its depth part removed."""
    k, channels, _ = rounder(ratios, attn)
    g, q = rounder.configs[k, 0].copy(), rounder.configs[k, 1].copy()
    channels = channels.copy()
    g[~width], q[~width], channels[~width] = shape.n_kv_heads, shape.groups, shape.intermediate
    for i in attn_gone:
        g[i] = q[i] = 0
    for i in mlp_gone:
        channels[i] = 0
    kv_keep = ranks.kv < g[:, None]
    head_keep = np.repeat(kv_keep, shape.groups, axis=1) & (ranks.head < q[:, None])
    channel_keep = ranks.channel < channels[:, None]
    return head_keep, kv_keep, channel_keep
