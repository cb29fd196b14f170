"""Depth pruning: removing whole decoder layers or single attention / MLP blocks.

Width pruning (heads, channels) is :mod:`ppf.prune`; this is the mechanism beside it. Which blocks
go is a method's choice (:mod:`ppf.baselines.shortgpt`, :mod:`ppf.baselines.blockpruner`).
:func:`drop_blocks` deletes a layer outright when both of its blocks go (the ModuleList shrinks,
``layer_idx`` and ``config.num_hidden_layers`` are renumbered, so the KV cache stays right) and
otherwise swaps the removed block for a zero-output stand-in: the residual stream passes through
unchanged, exactly as if the block were not there. A removed attention block still reports an
empty key/value entry to the cache, so generation's sequence bookkeeping (read from layer 0)
keeps working.

:func:`block_ratio` counts the parameters removed, in the same units as a width plan's block
ratio; :func:`layer_calls` / :func:`logits_from` rerun a model from one layer on (cached inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppf.errors import PPFError
from ppf.plan import DenseShape

REMOVED_ATTR = "ppf_removed_blocks"


class _Shifted(nn.Module):
    """A stand-in that adds a constant (its ``shift``, zero until :meth:`set_shift`) to the residual stream."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", None)

    def set_shift(self, value: torch.Tensor) -> None:
        self.shift = value.detach().clone()

    def _out(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            return torch.zeros_like(hidden_states)
        return self.shift.to(hidden_states.device, hidden_states.dtype).expand_as(hidden_states).clone()


class NoAttention(_Shifted):
    """A removed attention block: adds nothing (or its ``shift``) to the residual stream."""

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states: torch.Tensor, past_key_values=None, **kwargs):
        if past_key_values is not None:
            b, t, _ = hidden_states.shape
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return self._out(hidden_states), None


class NoMLP(_Shifted):
    """A removed MLP block: adds nothing (or its ``shift``) to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._out(hidden_states)


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


def layer_calls(model: nn.Module, batch: torch.Tensor) -> list[tuple]:
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


def logits_from(model: nn.Module, calls: list[tuple], start: int) -> torch.Tensor:
    """The model's logits computed from layer ``start`` on, its input taken from ``calls``: the
    same operations as a full forward pass, without recomputing the layers before ``start``."""
    hidden = calls[start][0]
    for layer, (_, args, kwargs) in zip(model.model.layers[start:], calls[start:]):
        out = layer(hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.lm_head(model.model.norm(hidden))
