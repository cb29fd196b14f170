"""Depth pruning: whole decoder layers (ShortGPT) or single attention / MLP blocks (BlockPruner).

Width pruning (heads, channels) is :mod:`ppf.prune`; the depth baselines remove blocks instead.
:func:`drop_blocks` deletes a layer outright when both of its blocks go (the ModuleList shrinks,
``layer_idx`` and ``config.num_hidden_layers`` are renumbered, so the KV cache stays right) and
otherwise swaps the removed block for a zero-output stand-in: the residual stream passes through
unchanged, exactly as if the block were not there. A removed attention block still reports an
empty key/value entry to the cache, so generation's sequence bookkeeping (read from layer 0)
keeps working.

:func:`shortgpt_layers` and :func:`blockpruner_order` choose what goes; :func:`block_ratio`
counts the parameters removed, in the same units as a width plan's block ratio.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ppf.errors import PPFError
from ppf.plan import DenseShape

REMOVED_ATTR = "ppf_removed_blocks"


class NoAttention(nn.Module):
    """A removed attention block: adds nothing to the residual stream."""

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states: torch.Tensor, past_key_values=None, **kwargs):
        if past_key_values is not None:
            b, t, _ = hidden_states.shape
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoMLP(nn.Module):
    """A removed MLP block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def block_ratio(shape: DenseShape, attention: Sequence[int], mlp: Sequence[int]) -> float:
    """Fraction of the dense blocks' parameters removed (a whole layer also takes its two norms)."""
    attn, mlp = set(attention), set(mlp)
    removed = len(attn) * shape.attention_params(shape.n_heads, shape.n_kv_heads)
    removed += len(mlp) * shape.mlp_params(shape.intermediate)
    removed += len(attn & mlp) * 2 * shape.hidden
    return removed / (shape.dense_layer_params * shape.n_layers)


def drop_blocks(model: nn.Module, attention: Sequence[int] = (), mlp: Sequence[int] = ()) -> nn.Module:
    """Remove attention / MLP blocks (dense layer indices) from a dense model, in place."""
    layers = model.model.layers
    n = len(layers)
    attn, mlps = set(int(i) for i in attention), set(int(i) for i in mlp)
    bad = sorted(i for i in attn | mlps if not 0 <= i < n)
    if bad:
        raise PPFError(f"layer index {bad[0]} is out of range for a {n}-layer model")
    if hasattr(model, REMOVED_ATTR):
        raise PPFError("blocks were already removed from this model; start from the dense model")
    gone = attn & mlps
    if len(gone) == n:
        raise PPFError("that would remove every layer; remove fewer blocks")
    for i, layer in enumerate(layers):
        if i in attn and i not in gone:
            layer.self_attn = NoAttention(i, layer.self_attn.head_dim)
        if i in mlps and i not in gone:
            layer.mlp = NoMLP()
    kept = [layer for i, layer in enumerate(layers) if i not in gone]
    model.model.layers = nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_idx
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in gone]
    cfg.num_hidden_layers = len(kept)
    setattr(model, REMOVED_ATTR, {"attention": sorted(attn), "mlp": sorted(mlps), "layers": sorted(gone)})
    return model


def shortgpt_layers(bi: Sequence[float], shape: DenseShape, ratio: float) -> list[int]:
    """ShortGPT: the layers of lowest Block Influence, as many as bring the block ratio nearest ``ratio``.

    ``bi`` is oriented like every ppf layer score: higher = more important (BI = 1 − cos).
    """
    order = [int(i) for i in np.argsort(np.asarray(bi, dtype=float), kind="stable")]
    per_layer = block_ratio(shape, [0], [0])
    n = int(round(ratio / per_layer))
    if not 1 <= n < shape.n_layers:
        raise PPFError(f"ratio {ratio} removes {n} of {shape.n_layers} layers; use a ratio between "
                       f"{per_layer:.3f} and {1 - per_layer:.3f}")
    return sorted(order[:n])


def next_token_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """BlockPruner's criterion: mean next-token negative log-likelihood of ``batch``."""
    logits = logits[:, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)))


def _layer_calls(model: nn.Module, batch: torch.Tensor) -> list[tuple]:
    """(hidden states in, other args, kwargs) of every decoder layer when ``model`` runs ``batch``."""
    calls: list[tuple] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls.append((hidden, args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in model.model.layers]
    try:
        model(batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return calls


def _logits_from(model: nn.Module, calls: list[tuple], start: int) -> torch.Tensor:
    """The model's logits computed from layer ``start`` on, its input taken from ``calls``: the
    same operations as a full forward pass, without recomputing the layers before ``start``."""
    hidden = calls[start][0]
    for layer, (_, args, kwargs) in zip(model.model.layers[start:], calls[start:]):
        out = layer(hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.lm_head(model.model.norm(hidden))


@torch.no_grad()
def blockpruner_order(model: nn.Module, batch: torch.Tensor, shape: DenseShape, max_ratio: float,
                      loss: Callable[[torch.Tensor, torch.Tensor], float] = next_token_nll,
                      progress: Callable[[int, float], None] = lambda step, ratio: None) -> list[dict]:
    """BlockPruner's greedy search: repeatedly remove the attention or MLP block whose removal gives
    the lowest calibration loss (``loss(logits, batch)``), until ``max_ratio`` of the block
    parameters is gone.

    Works on a copy (the model is left dense). Returns the removal sequence: one record per step
    with the block, the calibration loss after it and the cumulative block ratio; any prefix of it
    is BlockPruner's answer for a smaller ratio. Removing a block of layer i cannot change what
    layers before i compute, so each step runs the current model once, keeps every layer's input,
    and scores a candidate from its own layer on: about half the work of a full pass per candidate,
    with the same numbers.
    """
    work = copy.deepcopy(model).eval()
    layers = work.model.layers
    saved = {("attention", i): layer.self_attn for i, layer in enumerate(layers)}
    saved |= {("mlp", i): layer.mlp for i, layer in enumerate(layers)}
    removed: dict[str, list[int]] = {"attention": [], "mlp": []}
    steps: list[dict] = []

    def set_block(kind: str, i: int, on: bool) -> None:
        layer = layers[i]
        if kind == "attention":
            layer.self_attn = saved[(kind, i)] if on else NoAttention(i, saved[(kind, i)].head_dim)
        else:
            layer.mlp = saved[(kind, i)] if on else NoMLP()

    ratio = 0.0
    while ratio < max_ratio:
        calls = _layer_calls(work, batch)
        best = None
        for kind, i in saved:
            if i in removed[kind]:
                continue
            set_block(kind, i, False)
            value = loss(_logits_from(work, calls, i), batch)
            set_block(kind, i, True)
            if best is None or value < best[0]:
                best = (value, kind, i)
        if best is None:
            break
        value, kind, i = best
        set_block(kind, i, False)
        removed[kind].append(i)
        ratio = block_ratio(shape, removed["attention"], removed["mlp"])
        steps.append({"step": len(steps) + 1, "kind": kind, "layer": i, "loss": value, "block_ratio": ratio})
        progress(len(steps), ratio)
    return steps


def blocks_for_ratio(steps: list[dict], ratio: float) -> tuple[list[int], list[int], float]:
    """(attention layers, MLP layers, actual ratio) of the greedy prefix whose ratio is nearest ``ratio``."""
    if not steps:
        raise PPFError("the BlockPruner search removed nothing; raise its ratio")
    k = int(np.argmin([abs(s["block_ratio"] - ratio) for s in steps]))
    prefix = steps[: k + 1]
    return ([s["layer"] for s in prefix if s["kind"] == "attention"],
            [s["layer"] for s in prefix if s["kind"] == "mlp"], prefix[-1]["block_ratio"])
