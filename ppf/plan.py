"""A pruning plan: which heads, KV heads and MLP channels of every layer are KEPT.

A layer that keeps no heads (and no KV heads) has no attention block, one that keeps no channels
has no MLP block, one with neither is removed whole (depth pruning, :mod:`ppf.depth`).

The plan is the hinge of ppf. A policy (method, a_eta) at a target ratio becomes a plan without
touching any weight (:mod:`ppf.policy`); the plan gives the binary masks and the compressed
(1, layers, heads) mask the predictor reads (:mod:`ppf.masks`); physical pruning applies it
(:mod:`ppf.prune`); a pruned checkpoint stores it so the mask can be read back.

Words, the same everywhere in ppf (code, params, docs): a *layer* is a decoder layer; a *block* is
one of its two halves, the attention or the MLP; the *block ratio* (a target ratio, a plan's
:attr:`PruningPlan.block_ratio`) is the fraction of the blocks' parameters removed (embeddings, norms
and head are not counted); a policy's *attn* is the share of a layer's removed parameters taken from
its attention; a corpus *split* is train / valid / test; the *held-out* tokens (``heldout``) are the
valid tokens the signals are measured on.

Indices are in the DENSE model's numbering. GQA rule (what transformers' ``repeat_kv`` needs):
every kept KV head keeps the SAME number of query heads, all from its own group (query head ``h``
belongs to KV head ``h // groups``); whole KV groups may go.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ppf.errors import PPFError


@dataclass(frozen=True)
class DenseShape:
    """The unpruned geometry a plan refers to (per layer, identical across layers)."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    qkv_bias: bool = False  # Qwen2, or Llama/Mistral with attention_bias
    o_bias: bool = False  # Llama with attention_bias (Qwen2 has no o_proj bias)
    mlp_bias: bool = False

    @property
    def groups(self) -> int:
        return self.n_heads // self.n_kv_heads

    @classmethod
    def of(cls, model_or_config: Any) -> "DenseShape":
        """From a transformers model or config (the config describes the dense model)."""
        cfg = getattr(model_or_config, "config", model_or_config)
        base_type = getattr(cfg, "ppf_base_model_type", None) or cfg.model_type  # a loaded ppf checkpoint
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            n_layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, n_heads=cfg.num_attention_heads,
            n_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim, intermediate=cfg.intermediate_size,
            qkv_bias=bool(getattr(cfg, "attention_bias", False) or base_type == "qwen2"),
            o_bias=bool(getattr(cfg, "attention_bias", False)) and base_type != "qwen2",
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        )

    # ---- parameter counts of one decoder layer (its two norms are counted, never pruned) --------
    def attention_params(self, n_heads: int, n_kv_heads: int) -> int:
        """q/k/v/o weights and biases of an attention with these head counts (0 heads: removed, 0)."""
        if n_heads == 0:
            return 0
        hd, h = self.head_dim, self.hidden
        n = h * hd * (n_heads + 2 * n_kv_heads) + n_heads * hd * h  # q, k, v, o weights
        n += hd * (n_heads + 2 * n_kv_heads) * self.qkv_bias + h * self.o_bias
        return n

    def mlp_params(self, channels: int) -> int:
        if channels == 0:  # a removed MLP
            return 0
        return 3 * self.hidden * channels + (2 * channels + self.hidden) * self.mlp_bias

    def layer_params(self, n_heads: int, n_kv_heads: int, channels: int) -> int:
        """One layer's parameters; a removed block (0 heads, 0 channels) takes its norm with it."""
        norms = self.hidden * ((n_heads > 0) + (channels > 0))
        return self.attention_params(n_heads, n_kv_heads) + self.mlp_params(channels) + norms

    @property
    def dense_layer_params(self) -> int:
        return self.layer_params(self.n_heads, self.n_kv_heads, self.intermediate)


@dataclass(frozen=True)
class LayerPlan:
    """Kept units of one layer, as sorted dense indices."""

    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]

    @property
    def has_attention(self) -> bool:
        return bool(self.heads)

    @property
    def has_mlp(self) -> bool:
        return bool(self.channels)


@dataclass(frozen=True)
class PruningPlan:
    """Kept units per layer plus the dense shape they index into, and where the plan came from."""

    shape: DenseShape
    layers: tuple[LayerPlan, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # set only by from_masks, which checked the masks whole (vectorised) and built sorted indices itself
    _checked: bool = field(default=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self._checked:
            validate(self)

    # ---- sizes and ratios -------------------------------------------------------------------------
    def layer_params(self, i: int) -> int:
        lp = self.layers[i]
        return self.shape.layer_params(len(lp.heads), len(lp.kv_heads), len(lp.channels))

    @property
    def kept_block_params(self) -> int:
        return sum(self.layer_params(i) for i in range(len(self.layers)))

    @property
    def dense_block_params(self) -> int:
        return self.shape.dense_layer_params * self.shape.n_layers

    @property
    def block_ratio(self) -> float:
        """The ACTUAL fraction of prunable block parameters removed."""
        return 1.0 - self.kept_block_params / self.dense_block_params

    @property
    def removed_attention(self) -> list[int]:
        """Layers whose attention block is removed (no heads kept)."""
        return [i for i, lp in enumerate(self.layers) if not lp.has_attention]

    @property
    def removed_mlp(self) -> list[int]:
        """Layers whose MLP block is removed (no channels kept)."""
        return [i for i, lp in enumerate(self.layers) if not lp.has_mlp]

    @property
    def removed_layers(self) -> list[int]:
        """Layers removed whole (neither block kept)."""
        return sorted(set(self.removed_attention) & set(self.removed_mlp))

    def layer_ratios(self) -> list[float]:
        dense = self.shape.dense_layer_params
        return [1.0 - self.layer_params(i) / dense for i in range(len(self.layers))]

    @property
    def identity(self) -> str:
        """What makes two plans the same model: a digest of the dense shape and the kept units (the
        meta, e.g. the policy text it came from, is left out)."""
        body = json.dumps([asdict(self.shape), [asdict(lp) for lp in self.layers]], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    # ---- (de)serialisation: plain JSON, stored beside pruned checkpoints ---------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"shape": asdict(self.shape), "layers": [asdict(lp) for lp in self.layers], "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningPlan":
        return cls(
            shape=DenseShape(**d["shape"]),
            layers=tuple(LayerPlan(tuple(lp["heads"]), tuple(lp["kv_heads"]), tuple(lp["channels"])) for lp in d["layers"]),
            meta=dict(d.get("meta", {})),
        )

    @classmethod
    def from_masks(cls, shape: DenseShape, heads: Any, kv_heads: Any, channels: Any,
                   meta: dict[str, Any] | None = None) -> "PruningPlan":
        """From boolean KEEP masks [layers, n_heads], [layers, n_kv_heads], [layers, intermediate].

        The vectorised way in (policies and mask readers build masks, not index lists).
        """
        import numpy as np

        rows = [np.asarray(m, dtype=bool) for m in (heads, kv_heads, channels)]
        check_masks(shape, *rows)
        per_layer = []
        for m in rows:  # one nonzero + tolist per mask, then slices per layer (row-major: sorted per row)
            flat, ends = np.nonzero(m)[1].tolist(), np.cumsum(m.sum(axis=1)).tolist()
            per_layer.append([tuple(flat[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)])
        return cls(shape, tuple(LayerPlan(*unit) for unit in zip(*per_layer, strict=True)), dict(meta or {}), _checked=True)

    @classmethod
    def dense(cls, shape: DenseShape) -> "PruningPlan":
        """The identity plan: everything kept."""
        full = LayerPlan(tuple(range(shape.n_heads)), tuple(range(shape.n_kv_heads)), tuple(range(shape.intermediate)))
        return cls(shape, tuple(full for _ in range(shape.n_layers)))


def check_masks(shape: DenseShape, heads: Any, kv_heads: Any, channels: Any) -> None:
    """:func:`validate`'s rules on whole boolean KEEP masks at once (what from_masks builds from)."""
    import numpy as np

    s = shape
    want = [(s.n_layers, s.n_heads), (s.n_layers, s.n_kv_heads), (s.n_layers, s.intermediate)]
    for name, m, w in zip(("heads", "kv_heads", "channels"), (heads, kv_heads, channels), want, strict=True):
        if m.shape != w:
            raise PPFError(f"{name} mask has shape {m.shape}, the dense shape needs {w}")
    attention, mlp = kv_heads.any(axis=1), channels.any(axis=1)
    if not (attention | mlp).any():
        raise PPFError(f"the plan removes all {s.n_layers} layers; keep at least one attention or MLP block")
    if (heads.any(axis=1) != attention).any():
        i = int((heads.any(axis=1) != attention).argmax())
        raise PPFError(f"plan layer {i} keeps {int(heads[i].sum())} query heads and {int(kv_heads[i].sum())} KV heads; "
                       "an attention block keeps both or neither (neither: the block is removed)")
    per_group = heads.reshape(s.n_layers, s.n_kv_heads, s.groups).sum(axis=2)
    top = per_group.max(axis=1, keepdims=True)
    bad = ((per_group > 0) != kv_heads).any(axis=1) | ((per_group > 0) & (per_group != top)).any(axis=1)
    if bad.any():
        i = int(bad.argmax())
        raise PPFError(
            f"plan layer {i} breaks the GQA rule: kept query heads {np.flatnonzero(heads[i]).tolist()} must come in "
            f"equal numbers from exactly the kept KV groups {np.flatnonzero(kv_heads[i]).tolist()} (groups of {s.groups})"
        )


def validate(plan: PruningPlan) -> None:
    """Check the GQA rule and index ranges; a violation is a bug upstream, reported plainly."""
    s = plan.shape
    if len(plan.layers) != s.n_layers:
        raise PPFError(f"plan has {len(plan.layers)} layers, the model {s.n_layers}")
    if len(plan.removed_layers) == s.n_layers:
        raise PPFError(f"the plan removes all {s.n_layers} layers; keep at least one attention or MLP block")
    for i, lp in enumerate(plan.layers):
        if bool(lp.heads) != bool(lp.kv_heads):
            raise PPFError(f"plan layer {i} keeps {len(lp.heads)} query heads and {len(lp.kv_heads)} KV heads; "
                           "an attention block keeps both or neither (neither: the block is removed)")
        if list(lp.heads) != sorted(set(lp.heads)) or list(lp.kv_heads) != sorted(set(lp.kv_heads)) \
                or list(lp.channels) != sorted(set(lp.channels)):
            raise PPFError(f"plan layer {i}: indices must be sorted and unique")
        if (lp.heads and (lp.heads[-1] >= s.n_heads or lp.kv_heads[-1] >= s.n_kv_heads)) \
                or (lp.channels and lp.channels[-1] >= s.intermediate):
            raise PPFError(f"plan layer {i}: an index is beyond the dense shape")
        if not lp.heads:
            continue  # no attention block: no GQA rule to keep
        per_group: dict[int, int] = {}
        for h in lp.heads:
            per_group[h // s.groups] = per_group.get(h // s.groups, 0) + 1
        if sorted(per_group) != list(lp.kv_heads) or len(set(per_group.values())) != 1:
            raise PPFError(
                f"plan layer {i} breaks the GQA rule: kept query heads {list(lp.heads)} must come in equal "
                f"numbers from exactly the kept KV groups {list(lp.kv_heads)} (groups of {s.groups})"
            )
