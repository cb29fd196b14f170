"""Masks of a pruning plan: the full binary masks, the paper's compressed image, and the way back.

PPF's predictor reads a pruning policy as an image. The full mask of Llama2-7B is
(7 matrices, 32 layers, 11008); the paper ("Mask Compression") keeps only o_proj — every head's
output reaches the residual stream through o_proj's input columns, in MHA and GQA alike — and then
groups those columns by head_dim, one pixel per head: (1, layers, n_heads). :func:`compress` is
that image; :func:`attention_image`, :func:`mlp_image` and the ``"full"`` kind of
:func:`mask_image` are the paper's ablations.

:func:`plan_from_model` reads the plan back off a physically pruned model by matching its weights
against the dense model, so "the mask the predictor saw is the mask of the model we evaluated" is
checked on the weights themselves, not on metadata that travelled with them.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape, LayerPlan, PruningPlan

if TYPE_CHECKING:
    import torch
    from torch import nn

MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")  # the paper's order
MASK_KINDS = ("o_proj", "attention", "mlp", "full")


# ---- unit masks and full masks -----------------------------------------------------------------
def unit_masks(plan: PruningPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean KEEP masks of query heads [L, n_heads], KV heads [L, n_kv_heads], channels [L, intermediate]."""
    s = plan.shape
    heads = np.zeros((s.n_layers, s.n_heads), dtype=bool)
    kv = np.zeros((s.n_layers, s.n_kv_heads), dtype=bool)
    channels = np.zeros((s.n_layers, s.intermediate), dtype=bool)
    for i, lp in enumerate(plan.layers):
        heads[i, list(lp.heads)] = True
        kv[i, list(lp.kv_heads)] = True
        channels[i, list(lp.channels)] = True
    return heads, kv, channels


def full_masks(plan: PruningPlan) -> dict[str, np.ndarray]:
    """Per matrix, the boolean KEEP mask over the dimension pruning removes, shape (L, dim).

    q/k/v_proj: output rows; o_proj: input columns (n_heads·head_dim); gate/up_proj: output rows;
    down_proj: input columns (intermediate).
    """
    heads, kv, channels = unit_masks(plan)
    hd = plan.shape.head_dim
    q = np.repeat(heads, hd, axis=1)
    k = np.repeat(kv, hd, axis=1)
    return {"q_proj": q, "k_proj": k, "v_proj": k.copy(), "o_proj": q.copy(),
            "up_proj": channels, "gate_proj": channels.copy(), "down_proj": channels.copy()}


# ---- images for the predictor ------------------------------------------------------------------
def compress(plan: PruningPlan) -> np.ndarray:
    """The paper's compressed mask, float32 (1, L, n_heads): o_proj's input columns grouped by
    head_dim, 1 = head kept. Equal to grouping :func:`full_masks` ``["o_proj"]``, built directly."""
    s = plan.shape
    out = np.zeros((1, s.n_layers, s.n_heads), dtype=np.float32)
    for i, lp in enumerate(plan.layers):
        out[0, i, list(lp.heads)] = 1.0
    return out


def attention_image(plan: PruningPlan) -> np.ndarray:
    """Ablation "attention only": float32 (4, L, n_heads), q/k/v/o masks grouped by head_dim.

    k and v have n_kv_heads groups; each query head's pixel shows its own KV head, so all four
    planes share one width."""
    heads, kv, _ = unit_masks(plan)
    kv_per_head = np.repeat(kv, plan.shape.groups, axis=1)
    return np.stack([heads, kv_per_head, kv_per_head, heads]).astype(np.float32)


def mlp_image(plan: PruningPlan, bins: int | None = None) -> np.ndarray:
    """Ablation "FFN only": float32 (1, L, bins), the fraction of kept channels in each of ``bins``
    equal runs of channel indices (default n_heads, so it lines up with the attention images)."""
    s = plan.shape
    bins = s.n_heads if bins is None else bins
    if not (isinstance(bins, (int, np.integer)) and 1 <= bins <= s.intermediate):
        raise PPFError(f"mlp bins {bins!r} must be an integer in [1, {s.intermediate}] (the MLP width)")
    _, _, channels = unit_masks(plan)
    edges = (np.arange(bins + 1) * s.intermediate) // bins
    kept = np.add.reduceat(channels.astype(np.float32), edges[:-1], axis=1)
    return (kept / np.diff(edges)).astype(np.float32)[None]


def _full_image(plan: PruningPlan) -> np.ndarray:
    """Ablation "initial mask": float32 (7, L, max dim), the full masks zero-padded to the widest."""
    masks = full_masks(plan)
    width = max(m.shape[1] for m in masks.values())
    out = np.zeros((len(MATRICES), plan.shape.n_layers, width), dtype=np.float32)
    for j, name in enumerate(MATRICES):
        out[j, :, : masks[name].shape[1]] = masks[name]
    return out


def mask_image(plan: PruningPlan, kind: str = "o_proj", bins: int | None = None) -> np.ndarray:
    """The predictor's input for one plan: ``"o_proj"`` (the paper's choice), ``"attention"``,
    ``"mlp"`` or ``"full"``."""
    if kind == "o_proj":
        return compress(plan)
    if kind == "attention":
        return attention_image(plan)
    if kind == "mlp":
        return mlp_image(plan, bins)
    if kind == "full":
        return _full_image(plan)
    raise PPFError(f"unknown mask kind {kind!r}; use one of {', '.join(MASK_KINDS)}")


# ---- reading a plan back off a pruned model ----------------------------------------------------
def _match(pruned: "torch.Tensor", dense: "torch.Tensor", what: str, layer: int) -> tuple[int, ...]:
    """Dense index of every pruned row (rows flattened to vectors): nearest dense row, checked.

    Pruning copies rows, so the nearest row is an exact match; the relative tolerance only allows
    for a dtype round-trip (e.g. a bfloat16 checkpoint). Candidates come from a random 1-D
    projection (O(n·d), where all-pairs distances take seconds for a 30-layer model); rows whose
    candidate fails the check fall back to all-pairs distances. Indices must increase, as pruning
    with sorted indices keeps the dense order.
    """
    import torch

    p, d = pruned.detach().float().cpu(), dense.detach().float().cpu()
    r = torch.randn(d.shape[1], generator=torch.Generator().manual_seed(0))
    sp, sd = p @ r, d @ r
    order = torch.argsort(sd)
    pos = torch.searchsorted(sd[order].contiguous(), sp)
    left, right = order[(pos - 1).clamp(min=0)], order[pos.clamp(max=len(sd) - 1)]
    idx = torch.where((sp - sd[left]).abs() <= (sp - sd[right]).abs(), left, right)

    def far(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":  # relative distance > 1%
        return (a - b).norm(dim=1) > 1e-2 * b.norm(dim=1).clamp_min(1e-12)

    miss = torch.nonzero(far(p, d[idx])).flatten()
    if len(miss):
        idx[miss] = torch.cdist(p[miss], d).argmin(dim=1)
        bad = miss[far(p[miss], d[idx[miss]])].tolist()
        if bad:
            raise PPFError(f"layer {layer}: pruned {what} {bad[0]} matches no dense {what}; "
                           "is this model pruned from that dense model?")
    out = tuple(idx.tolist())
    if any(a >= b for a, b in pairwise(out)):
        raise PPFError(f"layer {layer}: pruned {what}s map to dense {what}s {list(out)}, not increasing; "
                       "the model was not pruned by keeping units in dense order")
    return out


def plan_from_model(pruned_model: "nn.Module", dense_model: "nn.Module") -> PruningPlan:
    """The plan a physically pruned model embodies, read from its weights against the dense model.

    Query heads come from o_proj's input-column blocks (one head_dim-wide block per head), KV heads
    from k_proj's row blocks, channels from gate_proj's rows. No stored metadata is consulted.
    """
    from ppf import arch

    shape = DenseShape.of(dense_model)
    pv, dv = arch.layers(pruned_model), arch.layers(dense_model)
    if len(pv) != len(dv):
        raise PPFError(f"the pruned model has {len(pv)} layers, the dense model {len(dv)}; "
                       "layer removal is not a ppf plan, compare with the model it was pruned from")
    hd = shape.head_dim
    layers = []
    for i, (p, d) in enumerate(zip(pv, dv, strict=True)):
        if p.head_dim != hd or p.o_proj.out_features != d.o_proj.out_features:
            raise PPFError(f"layer {i}: the pruned model's hidden size or head_dim differs from the dense model's; "
                           "compare with the model it was pruned from")
        # one vector per head: o_proj's head_dim input columns, k_proj's head_dim output rows
        heads = _match(p.o_proj.weight.T.reshape(p.n_heads, -1), d.o_proj.weight.T.reshape(d.n_heads, -1),
                       "query head", i)
        kv = _match(p.k_proj.weight.reshape(p.n_kv_heads, -1), d.k_proj.weight.reshape(d.n_kv_heads, -1),
                    "KV head", i)
        channels = _match(p.gate_proj.weight, d.gate_proj.weight, "MLP channel", i)
        layers.append(LayerPlan(heads, kv, channels))
    return PruningPlan(shape, tuple(layers), {"source": "weights"})
