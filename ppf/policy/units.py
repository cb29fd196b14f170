"""Whole units of one dense model: the ranking of its KV heads, query heads and MLP channels
(:class:`UnitRanks`, which units go first) and the rounding of one ratio per layer to a GQA-valid
attention and a number of channels (:class:`_Rounder`, how many go).

Rounding moves the real ratio off the target: with 9 heads / 3 KV heads a layer's attention can
only take 7 distinct sizes (:mod:`ppf.policy.allocate` corrects for it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape

UNIT_KEYS = ("head", "kv", "channel")


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

    def __call__(self, ratios: np.ndarray, share: float | str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(config index, channels, kept layer params) per layer for layer ratios in [0, 1).

        ``share`` (a policy's ``attn``) is the share of each layer's removed parameters taken from attention (None: the
        attention at the layer's ratio); the MLP takes the rest either way. ``"groups"``: the attention
        LLM-Pruner's unit ratio gives (whole KV groups) at the unit ratio whose layer size is nearest; the
        MLP then absorbs the difference to the layer's size, so the plan meets its target exactly
        where LLM-Pruner's all-layers-alike KV cliffs would miss it (its channel count otherwise)."""
        keep = 1.0 - ratios
        if share == "groups":
            table_k, _, table_kept = self._groups_table
            k = table_k[np.abs(table_kept[None, :] - keep[:, None] * self.dense_layer).argmin(axis=1)]
            attn = self.attn[k]
            c = np.clip(np.floor((keep * self.dense_layer - attn - self.fixed) / self.per_channel + 0.5), 1, self.intermediate)
            return k, c.astype(np.int64), attn + self.fixed + c * self.per_channel
        if isinstance(share, str):
            raise PPFError(f"attention share {share!r} must be a number in [0, 1], None or 'groups'")
        want = keep * self.dense_attn if share is None else self.dense_attn - share * ratios * self.dense_layer
        k = np.abs(self.attn[None, :] - want[:, None]).argmin(axis=1)  # first = tie rule
        attn = self.attn[k]
        c = np.floor((keep * self.dense_layer - attn - self.fixed) / self.per_channel + 0.5)
        c = np.clip(c, 1, self.intermediate)
        return k, c.astype(np.int64), attn + self.fixed + c * self.per_channel
