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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan

IMPORTANCE_METHODS = ("lod", "esd", "bi", "uniform")
A_ETA_MAX = 0.5  # the paper's range for the scaling factor: [0, 0.5]
UNIT_KEYS = ("head", "kv", "channel")
NORMS = ("minmax", "rank")  # how layer scores are scaled before Eq 4
DEPTH_ORDERS = ("layers", "blocks")  # whole layers by Block Influence (ShortGPT) | BlockPruner's block order
PARTS = ("norm", "keep", "depth", "order", "split")  # the extended text form's parts, in this order


# ---- the policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """An agent action: which layer-importance ``method`` and how strongly to follow it (``a_eta``) —
    the paper's policy — and, beyond it, where the allocation may go that (method, a_eta) cannot:

    * ``norm``: how the layer scores are scaled before Eq 4 — ``minmax`` (the paper: one outlier layer
      squeezes all the others together) or ``rank`` (the scores' ranks, evenly spaced: an outlier is
      just the first or last);
    * ``first`` / ``last``: protected edge layers, never pruned (LLM-Pruner keeps 4 and 2);
    * ``depth`` blocks removed first, in ``order``: ``layers`` — whole layers of lowest Block
      Influence (ShortGPT) — or ``blocks`` — attention / MLP blocks in BlockPruner's greedy order;
      the rest of the target is then width-pruned over the layers depth and protection left alone;
    * ``split``: the share of a layer's removed parameters taken from its attention (the rest from
      its MLP); ``None`` prunes both at the layer's ratio, as the paper does; ``groups`` is
      LLM-Pruner's rule — one unit ratio r per layer, the attention losing whole KV groups
      (floor(r·KV heads), each with its query heads), the MLP the fraction r of its channels.

    ``uniform`` ignores importance, so its ``a_eta`` (and ``norm``) are stored as defaults: two uniform
    policies are equal. The text form is ``lod:0.2`` (the paper's policy) with optional parts,
    e.g. ``lod:0.2,norm=rank,keep=4:2,depth=3,order=layers,split=0.1`` (:meth:`parse`, ``str``).
    """

    method: str
    a_eta: float = 0.0
    norm: str = "minmax"
    first: int = 0
    last: int = 0
    depth: int = 0
    order: str = "layers"
    split: float | str | None = None

    def __post_init__(self) -> None:
        if self.method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {self.method!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        uniform = self.method == "uniform"
        object.__setattr__(self, "a_eta", 0.0 if uniform else check_a_eta(self.a_eta))
        if self.norm not in NORMS:
            raise PPFError(f"unknown score normalisation norm={self.norm!r}; use one of {', '.join(NORMS)}")
        if uniform:
            object.__setattr__(self, "norm", "minmax")
        for name in ("first", "last", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise PPFError(f"{name}={v!r} must be a whole number >= 0")
            object.__setattr__(self, name, int(v))
        if self.order not in DEPTH_ORDERS:
            raise PPFError(f"unknown depth order={self.order!r}; use one of {', '.join(DEPTH_ORDERS)}")
        if self.depth == 0:
            object.__setattr__(self, "order", "layers")
        if isinstance(self.split, str) and self.split.strip().lower() == "groups":
            object.__setattr__(self, "split", "groups")
        elif self.split is not None:
            try:
                x = float(self.split)
            except (TypeError, ValueError):
                raise PPFError(f"split={self.split!r} is not a number; use the attention share in [0, 1], e.g. "
                               "split=0.25, or split=groups (LLM-Pruner's whole KV groups)") from None
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                raise PPFError(f"split={self.split!r} is outside [0, 1]; it is the share of a layer's reduction "
                               "taken from attention, e.g. split=0.25")
            object.__setattr__(self, "split", x)

    def with_parts(self, parts: str) -> "Policy":
        """This policy with the extended ``parts`` of the text form (``",norm=rank,keep=2:1"``) added."""
        return Policy.parse(str(self) + parts) if parts else self

    @property
    def is_paper(self) -> bool:
        """True for the paper's (method, a_eta) policy: none of the extended parts in use."""
        return (self.norm, self.first, self.last, self.depth, self.split) == ("minmax", 0, 0, 0, None)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``"lod:0.2"``, ``"esd:0.1"``, ``"bi:0.3"`` or ``"uniform"``, optionally followed by
        ``,norm=minmax|rank``, ``,keep=FIRST:LAST``, ``,depth=N``, ``,order=layers|blocks``,
        ``,split=S`` (case and spaces ignored)."""
        if not isinstance(text, str):
            raise PPFError(f"policy {text!r} is not text; write it as method:a_eta, e.g. lod:0.2")
        head, *parts = [p.strip() for p in text.strip().lower().split(",")]
        method, sep, value = head.partition(":")
        method, value = method.strip(), value.strip()
        if method not in IMPORTANCE_METHODS:
            raise PPFError(f"unknown importance method {method!r} in policy {text!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        if method == "uniform" and not sep:
            a = 0.0
        elif not sep or not value:
            raise PPFError(f"policy {text!r} has no scaling factor; write it as {method}:<a_eta>, e.g. {method}:0.2")
        else:
            try:
                a = float(value)
            except ValueError:
                raise PPFError(f"a_eta {value!r} in policy {text!r} is not a number; write e.g. {method}:0.2") from None
        kw: dict[str, Any] = {}
        for part in parts:
            key, eq, val = (x.strip() for x in part.partition("="))
            if key not in PARTS or not eq or not val:
                raise PPFError(f"unknown part {part!r} in policy {text!r}; the parts after the method are "
                               "norm=minmax|rank, keep=FIRST:LAST, depth=N, order=layers|blocks, split=S")
            if key in kw or (key == "keep" and "first" in kw):
                raise PPFError(f"policy {text!r} gives {key} twice; give each part once")
            if key in ("norm", "order"):
                kw[key] = val
            elif key == "split":
                kw["split"] = val
            else:
                nums = val.split(":") if key == "keep" else [val]
                if len(nums) != (2 if key == "keep" else 1) or not all(n.strip().isdigit() for n in nums):
                    want = "keep=FIRST:LAST with whole numbers, e.g. keep=4:2" if key == "keep" else "depth=N, e.g. depth=3"
                    raise PPFError(f"{part!r} in policy {text!r} is not {want}")
                if key == "keep":
                    kw["first"], kw["last"] = int(nums[0]), int(nums[1])
                else:
                    kw["depth"] = int(nums[0])
        return cls(method, a, **kw)

    def __str__(self) -> str:
        # repr(float) is the shortest text that round-trips, so parse(str(p)) == p for any a_eta
        out = "uniform" if self.method == "uniform" else f"{self.method}:{self.a_eta!r}"
        if self.norm != "minmax":
            out += f",norm={self.norm}"
        if self.first or self.last:
            out += f",keep={self.first}:{self.last}"
        if self.depth:
            out += f",depth={self.depth},order={self.order}"
        if self.split is not None:
            out += f",split={self.split if self.split == 'groups' else repr(self.split)}"
        return out


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
    head_dim: int

    @classmethod
    @functools.lru_cache(maxsize=16)  # DenseShape is frozen, so hashable: one rounder per model
    def of(cls, s: DenseShape) -> "_Rounder":
        gq = [(g, q) for g in range(1, s.n_kv_heads + 1) for q in range(1, s.groups + 1)]
        # ties in size: prefer more query heads (more of what o_proj writes to the residual stream)
        gq.sort(key=lambda c: (-s.attention_params(c[0] * c[1], c[0]), -c[0] * c[1]))
        attn = np.array([s.attention_params(g * q, g) for g, q in gq], dtype=np.float64)
        per_channel = s.mlp_params(2) - s.mlp_params(1)
        # what a layer with attention and >= 1 channel has besides them: two norms (and a down_proj bias)
        fixed = s.layer_params(1, 1, 1) - s.attention_params(1, 1) - per_channel
        return cls(np.array(gq, dtype=np.int64), attn, s.attention_params(s.n_heads, s.n_kv_heads),
                   s.dense_layer_params, per_channel, fixed, s.intermediate, s.head_dim)

    @functools.cached_property
    def _groups_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LLM-Pruner's rule for every MLP width c = 1..I (unit ratio r = 1 − c/I): (config index of
        floor-pruned whole KV groups with all their query heads, c, kept layer params)."""
        n_kv, groups = int(self.configs[:, 0].max()), int(self.configs[:, 1].max())
        c = np.arange(1, self.intermediate + 1)
        # its pruner removes n·hd − int(n·hd·(1 − r)) of the KV rows, in whole heads: floor(that / hd)
        kept_rows = np.floor(n_kv * self.head_dim * c / self.intermediate + 1e-9)
        keep_kv = np.maximum(1, np.ceil(kept_rows / self.head_dim - 1e-9)).astype(np.int64)
        index = {(int(g), int(q)): i for i, (g, q) in enumerate(self.configs)}
        k = np.array([index[(int(g), groups)] for g in keep_kv])
        return k, c, self.attn[k] + self.fixed + c * self.per_channel

    def __call__(self, ratios: np.ndarray, split: float | str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(config index, channels, kept layer params) per layer for layer ratios in [0, 1).

        ``split`` is the share of each layer's removed parameters taken from attention (None: the
        attention at the layer's ratio); the MLP takes the rest either way. ``"groups"``: the attention
        LLM-Pruner's unit ratio gives (whole KV groups) at the unit ratio whose layer size is nearest; the
        MLP then absorbs the difference to the layer's size, so the plan meets its target exactly
        where LLM-Pruner's all-layers-alike KV cliffs would miss it (its channel count otherwise)."""
        keep = 1.0 - ratios
        if split == "groups":
            table_k, _, table_kept = self._groups_table
            k = table_k[np.abs(table_kept[None, :] - keep[:, None] * self.dense_layer).argmin(axis=1)]
            attn = self.attn[k]
            c = np.clip(np.floor((keep * self.dense_layer - attn - self.fixed) / self.per_channel + 0.5), 1, self.intermediate)
            return k, c.astype(np.int64), attn + self.fixed + c * self.per_channel
        want = keep * self.dense_attn if split is None else self.dense_attn - split * ratios * self.dense_layer
        k = np.abs(self.attn[None, :] - want[:, None]).argmin(axis=1)  # first = tie rule
        attn = self.attn[k]
        c = np.floor((keep * self.dense_layer - attn - self.fixed) / self.per_channel + 0.5)
        c = np.clip(c, 1, self.intermediate)
        return k, c.astype(np.int64), attn + self.fixed + c * self.per_channel


# ---- the plan ----------------------------------------------------------------------------------
def _normalised(h: np.ndarray, norm: str) -> np.ndarray:
    """Layer scores as Eq 4 reads them: as given (``minmax``: Eq 4 scales by the span itself) or their
    ranks, evenly spaced in [0, 1] (``rank``: an outlier is only the highest, not far away)."""
    if norm == "minmax" or h.size < 2:
        return h
    return np.argsort(np.argsort(h, kind="stable"), kind="stable") / (h.size - 1.0)


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
            raise PPFError(f"depth={policy.depth} removes every one of the {len(free)} layers left to prune "
                           f"(of {shape.n_layers}); use depth < {len(free)}")
        b = np.asarray(bi, dtype=np.float64)
        chosen = sorted(free, key=lambda i: (b[i], i))[: policy.depth]
        return set(chosen), set(chosen)
    if block_order is None:
        raise PPFError("depth order 'blocks' needs BlockPruner's block order, and none is stored for this model and "
                       "calibration: run `dvc repro importance` with benchmark.blockpruner.order_ratio > 0 (or "
                       "`ppf prune`, which searches it once), or use order=layers")
    steps = [(str(k), int(i)) for k, i in block_order if not protected[int(i)]]
    if policy.depth > len(steps):
        raise PPFError(f"depth={policy.depth} asks for more blocks than BlockPruner's stored order has ({len(steps)} "
                       "outside the protected layers); lower depth or raise benchmark.blockpruner.order_ratio")
    attn = {i for k, i in steps[: policy.depth] if k == "attention"}
    mlp = {i for k, i in steps[: policy.depth] if k == "mlp"}
    if len(attn & mlp) == shape.n_layers:
        raise PPFError(f"depth={policy.depth} removes every layer; use a smaller depth")
    return attn, mlp


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
    size). ``split`` decides how each layer's reduction divides between attention and MLP.
    ``H`` may be None for ``uniform``. ``units`` are the unit scores (see :meth:`UnitRanks.of`;
    pass a prebuilt :class:`UnitRanks` when planning many policies for one model). ``meta`` records
    the policy, the target, the actual ratio, the requested (Eq 5) ratios, δ, the corrected ratios
    before rounding (``ratios``), the actual per-layer ratios after it (``layer_ratios``) and the
    removed blocks. For a paper policy (no extended part) this is exactly the paper's mapping.
    """
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
    protected = _protected(policy, n)
    attn_gone, mlp_gone = removed_by_depth(policy, shape, protected, bi, block_order)
    ranks = UnitRanks.of(units, shape)
    rounder = _Rounder.of(shape)
    dense_total = float(shape.dense_layer_params * n)
    touched = np.array([i in attn_gone or i in mlp_gone for i in range(n)])
    width = ~protected & ~touched  # the layers width pruning may cut
    fixed_kept = sum(shape.layer_params(0 if i in attn_gone else shape.n_heads, 0 if i in attn_gone else shape.n_kv_heads,
                                        0 if i in mlp_gone else shape.intermediate) for i in range(n) if not width[i])
    depth_ratio = 1.0 - (fixed_kept + shape.dense_layer_params * width.sum()) / dense_total
    if depth_ratio > target + tol:
        raise PPFError(f"depth={policy.depth} ({policy.order}) already removes {depth_ratio:.4f} of the block "
                       f"parameters, more than the target {target}; use a smaller depth")

    requested = np.zeros(n)
    if width.any():
        requested[width] = requested_ratios(_normalised(h[width], policy.norm), target, policy.a_eta)
    split = policy.split

    def actual(delta: float) -> float:
        kept = rounder(np.clip(requested[width] + delta, 0.0, m), split)[2].sum()
        return 1.0 - (kept + fixed_kept) / dense_total

    best, best_actual = 0.0, depth_ratio
    cut = target - depth_ratio > tol / 10  # whether width pruning has anything left to do
    if cut:
        if not width.any():
            raise PPFError(f"the policy leaves no layer to width-prune and its depth reaches {depth_ratio:.4f}, "
                           f"not the target {target}; protect fewer layers or change depth")
        lo, hi = -float(requested[width].max()), m - float(requested[width].min())  # all at 0 .. all at m
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

    ratios = np.where(width & cut, np.clip(requested + best, 0.0, m), 0.0)
    k, channels, _ = rounder(ratios, split)
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
    meta = {"policy": str(policy), "method": policy.method, "a_eta": policy.a_eta, "target": target,
            "max_layer_ratio": m, "tol": float(tol), "offset": float(best),
            "requested": [float(x) for x in requested], "ratios": [float(x) for x in ratios]}
    if not policy.is_paper:
        meta |= {"norm": policy.norm, "keep": [policy.first, policy.last], "depth": policy.depth,
                 "order": policy.order, "split": policy.split,
                 "removed": {"attention": sorted(attn_gone), "mlp": sorted(mlp_gone)}}
    return head_keep, kv_keep, channel_keep, meta


def _protected(policy: Policy, n: int) -> np.ndarray:
    protected = np.zeros(n, dtype=bool)
    protected[: policy.first] = True
    protected[n - policy.last:] = True
    return protected


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


def reach(policy: Policy, shape: DenseShape, max_layer_ratio: float = 0.9,
          block_order: Sequence[Sequence[Any]] | None = None) -> float:
    """The largest block ratio ``policy`` can reach on a model of ``shape``: its depth's blocks gone,
    its protected layers dense, every other layer at ``max_layer_ratio`` (after rounding, with the
    policy's attention share). For ``order=layers`` which layers go does not matter (dense layers are
    alike); for ``order=blocks`` the stored ``block_order`` says which attention / MLP blocks go (without
    it, depth is left out: the reach of the width pruning alone)."""
    n = shape.n_layers
    protected = _protected(policy, n)
    free = int((~protected).sum())
    if policy.order == "layers" or block_order is None:
        removed = min(policy.depth, max(0, free - 1)) if policy.order == "layers" else 0
        kept = _Rounder.of(shape)(np.full(max(0, free - removed), float(max_layer_ratio)), policy.split)[2].sum()
        kept += shape.dense_layer_params * (n - free)
        return 1.0 - float(kept) / float(shape.dense_layer_params * n)
    p = replace(policy, depth=min(policy.depth, depth_room(policy, shape, block_order)))
    attn, mlp = removed_by_depth(p, shape, protected, None, block_order)
    touched = attn | mlp
    width = [i for i in range(n) if not protected[i] and i not in touched]
    kept = _Rounder.of(shape)(np.full(len(width), float(max_layer_ratio)), policy.split)[2].sum()
    kept += shape.dense_layer_params * int(protected.sum())
    kept += sum(shape.layer_params(0 if i in attn else shape.n_heads, 0 if i in attn else shape.n_kv_heads,
                                   0 if i in mlp else shape.intermediate) for i in touched)
    return 1.0 - float(kept) / float(shape.dense_layer_params * n)


def depth_ratio(policy: Policy, shape: DenseShape, block_order: Sequence[Sequence[Any]] | None = None) -> float:
    """The block ratio ``policy``'s depth part removes on its own (``order=blocks`` needs the stored
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
    kept = sum(shape.layer_params(0 if i in attn else shape.n_heads, 0 if i in attn else shape.n_kv_heads,
                                  0 if i in mlp else shape.intermediate) for i in attn | mlp)
    return float(shape.dense_layer_params * len(attn | mlp) - kept) / float(shape.dense_layer_params * n)


def feasible(policy: Policy, ratio: float, shape: DenseShape, max_layer_ratio: float = 0.9,
             margin: float = 0.01, block_order: Sequence[Sequence[Any]] | None = None) -> Policy:
    """``policy`` made able to reach ``ratio`` by giving up what stands in the way, in this order: depth
    beyond what ``ratio`` holds (whole layers; for ``order=blocks`` the blocks of the stored
    ``block_order`` past ``ratio`` less ``margin`` or past the stored steps), protected layers (the
    larger side first), then the attention share (back to the paper's: attention at the layer's
    ratio). The agent's relaxed actions and the collection's draws go through it, so every policy
    they produce plans; an explicit policy is planned as given (and refused with a clear error if it cannot)."""
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
        elif p.split is not None:
            p = replace(p, split=None)
        else:
            break
    return p


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
    block_order: tuple[tuple[str, int], ...] | None = None  # BlockPruner's greedy order, where computed

    def plan(self, policy: Policy, ratio: float) -> PruningPlan:
        return _plan(self.shape, *self.masks(policy, ratio))

    def masks(self, policy: Policy, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """:meth:`plan`'s KEEP masks and meta, without building the plan (the predictor's batch path)."""
        H = self.layer_scores.get(policy.method)
        if H is None and policy.method != "uniform":
            raise PPFError(f"no '{policy.method}' layer scores in the importance cache; known: {', '.join(self.layer_scores)}")
        return keep_masks(policy, ratio, H, self.ranks, self.shape, self.max_layer_ratio, self.tolerance,
                          bi=self.layer_scores.get("bi"), block_order=self.block_order)

    def plan_scores(self, scores: Sequence[float], a_eta: float, ratio: float) -> PruningPlan:
        """A plan from ANY per-layer scores (higher = pruned less) through Eqs 4-5: with a_eta = half
        the spread of the wanted ratios, every ratio vector of mean ``ratio`` is reachable — the search
        space of :mod:`ppf.search`."""
        return plan_for(Policy("lod", a_eta), ratio, scores, self.ranks, self.shape, self.max_layer_ratio,
                        self.tolerance)
