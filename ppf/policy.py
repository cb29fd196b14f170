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

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan

IMPORTANCE_METHODS = ("lod", "esd", "bi", "uniform")
A_ETA_MAX = 0.5  # the paper's range for the scaling factor: [0, 0.5]
UNIT_KEYS = ("head", "kv", "channel")


# ---- the policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """An agent action: which layer-importance ``method`` and how strongly to follow it (``a_eta``).

    ``uniform`` ignores importance, so its ``a_eta`` is stored as 0: two uniform policies are equal.
    """

    method: str
    a_eta: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {self.method!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        object.__setattr__(self, "a_eta", 0.0 if self.method == "uniform" else check_a_eta(self.a_eta))

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``"lod:0.2"``, ``"esd:0.1"``, ``"bi:0.3"`` or ``"uniform"`` (case and spaces ignored)."""
        if not isinstance(text, str):
            raise PPFError(f"policy {text!r} is not text; write it as method:a_eta, e.g. lod:0.2")
        method, sep, value = text.strip().lower().partition(":")
        method, value = method.strip(), value.strip()
        if method == "uniform" and not sep:
            return cls("uniform")
        if method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {method!r} in policy {text!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        if not sep or not value:
            raise PPFError(f"policy {text!r} has no scaling factor; write it as {method}:<a_eta>, e.g. {method}:0.2")
        try:
            a = float(value)
        except ValueError:
            raise PPFError(f"a_eta {value!r} in policy {text!r} is not a number; write e.g. {method}:0.2") from None
        return cls(method, a)

    def __str__(self) -> str:
        # repr(float) is the shortest text that round-trips, so parse(str(p)) == p for any a_eta
        return "uniform" if self.method == "uniform" else f"{self.method}:{self.a_eta!r}"


def check_a_eta(a_eta: float) -> float:
    """``a_eta`` as a float, or a PPFError unless it lies in the paper's range [0, 0.5]."""
    try:
        a = float(a_eta)
    except (TypeError, ValueError):
        raise PPFError(f"a_eta {a_eta!r} is not a number; use a value in [0, {A_ETA_MAX}]") from None
    if not (math.isfinite(a) and 0.0 <= a <= A_ETA_MAX):
        raise PPFError(f"a_eta {a_eta!r} is outside [0, {A_ETA_MAX}]; use a scaling factor in that range")
    return a


def check_ratio(r: float, name: str = "target") -> float:
    """``r`` as a float, or a PPFError unless 0 < r < 1 (0 prunes nothing, 1 prunes everything)."""
    try:
        x = float(r)
    except (TypeError, ValueError):
        raise PPFError(f"{name} ratio {r!r} is not a number; use a fraction strictly between 0 and 1, e.g. 0.3") from None
    if not (math.isfinite(x) and 0.0 < x < 1.0):
        raise PPFError(f"{name} ratio {r!r} is outside (0, 1); use a fraction strictly between 0 and 1, e.g. 0.3")
    return x


# ---- Eqs 4-5 -----------------------------------------------------------------------------------
def _scores(H: Sequence[float]) -> np.ndarray:
    h = np.asarray(H, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise PPFError(f"layer scores H must be a non-empty 1-D sequence, got shape {h.shape}; pass one score per layer")
    if not np.isfinite(h).all():
        raise PPFError(f"layer scores H contain NaN/inf at layers {np.flatnonzero(~np.isfinite(h)).tolist()}; recompute the importance")
    return h


def requested_ratios(H: Sequence[float], target: float, a_eta: float) -> np.ndarray:
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


# ---- unit ranking ------------------------------------------------------------------------------
def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (any dtype, any device), without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every entry along the last axis, 0 = highest score; ties go to the lower index.

    A stable argsort is ~2 ms for 30 x 1536 floats; sorting unique 64-bit keys (order-preserving
    bits of the float32 score, then the index) gives the identical order in ~0.3 ms.
    """
    x = np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0)  # -0.0 -> 0.0
    bits = x.view(np.uint32)
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    n = x.shape[-1]
    key = ((~ascending).astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    key.sort(axis=-1)
    order = (key & np.uint64(0xFFFFFFFF)).astype(np.intp)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n), order.shape), axis=-1)
    return ranks


@dataclass(frozen=True)
class UnitRanks:
    """Per-layer ranks of KV heads, of query heads within their KV group, and of MLP channels.

    Built once from the unit scores of a model and reused for every policy: the predictor scores
    thousands of plans for the same model, and ranking is the only part that touches all channels.
    """

    kv: np.ndarray  # [L, n_kv_heads]
    head: np.ndarray  # [L, n_heads], rank inside the head's own KV group
    channel: np.ndarray  # [L, intermediate]

    @classmethod
    def of(cls, units: "Mapping[str, Any] | UnitRanks | None", shape: DenseShape) -> "UnitRanks":
        """From ``{"head": [L, n_heads], "kv": [L, n_kv_heads], "channel": [L, intermediate]}``
        (higher = more important; torch or numpy). ``None`` ranks by index (keep the first units),
        which only makes sense for structure-only uses such as tests."""
        if isinstance(units, UnitRanks):
            return units
        s = shape
        want = {"head": (s.n_layers, s.n_heads), "kv": (s.n_layers, s.n_kv_heads),
                "channel": (s.n_layers, s.intermediate)}
        if units is None:
            units = {k: np.zeros(v, dtype=np.float32) for k, v in want.items()}
        if not isinstance(units, Mapping):
            raise PPFError(f"unit scores must be a mapping with keys {', '.join(UNIT_KEYS)}, got {type(units).__name__}")
        arrays = {}
        for key, expected in want.items():
            if key not in units:
                raise PPFError(f"unit scores lack {key!r}; pass a mapping with keys {', '.join(UNIT_KEYS)}")
            a = _as_array(units[key])
            if a.shape != expected:
                raise PPFError(f"unit scores {key!r} have shape {tuple(a.shape)}, the model needs {expected}; "
                               "recompute the importance for this model")
            if not np.isfinite(a).all():
                raise PPFError(f"unit scores {key!r} contain NaN/inf; recompute the importance")
            arrays[key] = a
        grouped = arrays["head"].reshape(s.n_layers, s.n_kv_heads, s.groups)
        return cls(kv=_ranks(arrays["kv"]), head=_ranks(grouped).reshape(s.n_layers, s.n_heads),
                   channel=_ranks(arrays["channel"]))


# ---- rounding one ratio per layer to whole units ------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Rounder:
    """Vectorised per-layer rounding for one DenseShape.

    Attention and MLP are pruned at the same ratio s (LLM-Pruner style). Attention takes the valid
    GQA configuration (g KV groups x q heads each) whose size is nearest (1−s)·dense attention;
    the MLP then takes the channel count that puts the whole layer nearest (1−s)·dense layer, so it
    absorbs attention's coarse steps and the block ratio stays fine-grained.
    """

    configs: np.ndarray  # [K, 2] (g, q), ordered by attention params DESC, then heads DESC
    attn: np.ndarray  # [K] attention params of each config
    dense_attn: int
    dense_layer: int
    per_channel: int
    fixed: int  # params of a layer that depend on neither heads nor channels (norms, down bias)
    intermediate: int

    @classmethod
    @functools.lru_cache(maxsize=16)  # DenseShape is frozen, so hashable: one rounder per model
    def of(cls, s: DenseShape) -> "_Rounder":
        gq = [(g, q) for g in range(1, s.n_kv_heads + 1) for q in range(1, s.groups + 1)]
        # ties in size: prefer more query heads (more of what o_proj writes to the residual stream)
        gq.sort(key=lambda c: (-s.attention_params(c[0] * c[1], c[0]), -c[0] * c[1]))
        attn = np.array([s.attention_params(g * q, g) for g, q in gq], dtype=np.float64)
        per_channel = s.mlp_params(1) - s.mlp_params(0)
        fixed = s.layer_params(1, 1, 0) - s.attention_params(1, 1)
        return cls(np.array(gq, dtype=np.int64), attn, s.attention_params(s.n_heads, s.n_kv_heads),
                   s.dense_layer_params, per_channel, fixed, s.intermediate)

    def __call__(self, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(config index, channels, kept layer params) per layer for layer ratios in [0, 1)."""
        keep = 1.0 - ratios
        k = np.abs(self.attn[None, :] - keep[:, None] * self.dense_attn).argmin(axis=1)  # first = tie rule
        attn = self.attn[k]
        c = np.floor((keep * self.dense_layer - attn - self.fixed) / self.per_channel + 0.5)
        c = np.clip(c, 1, self.intermediate)
        return k, c.astype(np.int64), attn + self.fixed + c * self.per_channel


# ---- the plan ----------------------------------------------------------------------------------
def plan_for(policy: Policy | str, target: float, H: Sequence[float] | None,
             units: "Mapping[str, Any] | UnitRanks | None", shape: DenseShape,
             max_layer_ratio: float = 0.9, tol: float = 0.005) -> PruningPlan:
    """The pruning plan of ``policy`` at ``target``, whose ACTUAL block ratio is within ``tol`` of it.

    Layer ratios are Eqs 4-5 (:func:`requested_ratios`) plus one common offset δ, clipped to
    [0, max_layer_ratio]; δ is found by bisection on the rounded block ratio, which rises with δ
    (up to dips of about one MLP channel where a layer's attention changes size).
    ``H`` may be None for ``uniform``. ``units`` are the unit scores (see :meth:`UnitRanks.of`;
    pass a prebuilt :class:`UnitRanks` when planning many policies for one model). ``meta`` records the policy, the target, the
    actual ratio, the requested (Eq 5) ratios, δ, the corrected ratios before rounding (``ratios``)
    and the actual per-layer ratios after it (``layer_ratios``).
    """
    if not isinstance(policy, Policy):
        policy = Policy.parse(policy)
    target = check_ratio(target)
    m = check_ratio(max_layer_ratio, "max_layer_ratio")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise PPFError(f"tol {tol!r} must be a small positive number, e.g. 0.005")
    h = _scores(np.zeros(shape.n_layers) if H is None and policy.method == "uniform" else H)
    if h.size != shape.n_layers:
        raise PPFError(f"layer scores H have {h.size} entries, the model has {shape.n_layers} layers; "
                       "recompute the importance for this model")
    requested = requested_ratios(h, target, policy.a_eta)
    ranks = UnitRanks.of(units, shape)
    rounder = _Rounder.of(shape)
    dense_total = float(shape.dense_layer_params * shape.n_layers)

    def actual(delta: float) -> float:
        return 1.0 - rounder(np.clip(requested + delta, 0.0, m))[2].sum() / dense_total

    lo, hi = -float(requested.max()), m - float(requested.min())  # all layers at 0 .. all at m
    reach = actual(hi)
    if reach < target - tol:
        raise PPFError(f"target {target} is above what any policy can reach with max_layer_ratio {m} "
                       f"(at most {reach:.4f} for this model's heads and channels); lower the target "
                       "or raise max_layer_ratio")
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

    ratios = np.clip(requested + best, 0.0, m)
    k, channels, _ = rounder(ratios)
    g, q = rounder.configs[k, 0], rounder.configs[k, 1]
    kv_keep = ranks.kv < g[:, None]
    head_keep = np.repeat(kv_keep, shape.groups, axis=1) & (ranks.head < q[:, None])
    channel_keep = ranks.channel < channels[:, None]
    meta = {"policy": str(policy), "method": policy.method, "a_eta": policy.a_eta, "target": target,
            "max_layer_ratio": m, "tol": float(tol), "offset": float(best),
            "requested": [float(x) for x in requested], "ratios": [float(x) for x in ratios]}
    plan = PruningPlan.from_masks(shape, head_keep, kv_keep, channel_keep, meta)
    plan.meta["actual"] = plan.block_ratio
    plan.meta["layer_ratios"] = plan.layer_ratios()
    return plan


# ---- one dense model's planner -------------------------------------------------------------------
@dataclass(frozen=True)
class Planner:
    """Plans policies for one dense model: its shape, the layer scores of every method and the unit
    ranks, with the project's pruning settings. A policy at a ratio becomes a plan in about a
    millisecond and never touches a weight (:class:`ppf.workbench.Workbench` builds one)."""

    model: str
    shape: DenseShape
    layer_scores: dict[str, list[float]]
    ranks: UnitRanks
    max_layer_ratio: float
    tolerance: float

    def plan(self, policy: Policy, ratio: float) -> PruningPlan:
        H = self.layer_scores.get(policy.method)
        if H is None and policy.method != "uniform":
            raise PPFError(f"no '{policy.method}' layer scores in the importance cache; known: {', '.join(self.layer_scores)}")
        return plan_for(policy, ratio, H, self.ranks, self.shape, self.max_layer_ratio, self.tolerance)

    def plan_scores(self, scores: Sequence[float], a_eta: float, ratio: float) -> PruningPlan:
        """A plan from ANY per-layer scores (higher = pruned less) through Eqs 4-5: with a_eta = half
        the spread of the wanted ratios, every ratio vector of mean ``ratio`` is reachable — the search
        space of :mod:`ppf.search`, and how LLM-Pruner's kept edge layers are expressed."""
        return plan_for(Policy("lod", a_eta), ratio, scores, self.ranks, self.shape, self.max_layer_ratio,
                        self.tolerance)
