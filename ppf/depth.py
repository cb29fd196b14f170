"""Depth pruning: removing whole decoder layers or single attention / MLP blocks.

A removed block is part of a :class:`~ppf.plan.PruningPlan` like any pruned head: a layer whose plan
keeps no heads has no attention, one that keeps no channels has no MLP, one with neither is gone
(:mod:`ppf.prune` applies it). Which blocks go is a policy's or a method's choice
(:mod:`ppf.policy`, :mod:`ppf.baselines.shortgpt`, :mod:`ppf.baselines.blockpruner`).

A removed block is replaced by a zero-width stand-in (:class:`NoAttention`, :class:`NoMLP`): its
projections have no heads / channels, so it adds nothing to the residual stream — exactly as if the
block were not there — or, with removed-block compensation, its output projection's bias: the block's
dense mean output (:func:`ppf.compensate.compensate_blocks`). The norm in front of a removed block
goes with it (``nn.Identity``), so a removed whole layer keeps no parameters at all and the layer
count, layer indices and the KV cache's layout stay those of the dense model. A removed attention
still reports an empty key/value entry to the cache, so generation's sequence bookkeeping (read
from layer 0) keeps working.

:func:`block_ratio` counts the parameters removed, in the same units as a plan's block ratio;
:func:`layer_calls` / :func:`logits_from` rerun a model from one layer on (cached inputs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ppf.errors import PPFError
from ppf.plan import DenseShape, LayerPlan, PruningPlan

# transformers modules are duck-typed: their submodules (self_attn, o_proj, model.layers) are attributes the
# type checker cannot see through nn.Module.__getattr__, so they are typed Any here
HFModule = Any


def empty_linear(in_features: int, out_features: int, bias: bool = False, like: torch.Tensor | None = None) -> nn.Linear:
    """A Linear with zero inputs or zero outputs (no weights to initialise), on ``like``'s device and dtype."""
    kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore", UserWarning)
        lin = nn.Linear(in_features, out_features, bias=bias, **kw)
    if bias:
        with torch.no_grad():
            lin.bias.zero_()
    return lin


class _Removed(nn.Module):
    """A removed block: zero-width projections; its output is the last projection's bias (or zero)."""

    out_name = ""

    def set_shift(self, value: torch.Tensor) -> None:
        """Make the block add ``value`` (its dense mean output) to the residual stream."""
        old = getattr(self, self.out_name)
        new = empty_linear(old.in_features, old.out_features, bias=True, like=old.weight)
        with torch.no_grad():
            new.bias.copy_(value.to(new.bias.dtype).reshape(-1))
        setattr(self, self.out_name, new)

    @property
    def shift(self) -> torch.Tensor | None:
        return getattr(self, self.out_name).bias

    def _out(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bias = self.shift
        if bias is None:
            return torch.zeros_like(hidden_states)
        return bias.to(hidden_states.device, hidden_states.dtype).expand_as(hidden_states).clone()


class NoAttention(_Removed):
    """A removed attention block: adds nothing (or its o_proj bias) to the residual stream."""

    out_name = "o_proj"

    def __init__(self, layer_idx: int, head_dim: int, hidden: int, like: torch.Tensor | None = None,
                 bias: bool = False):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim
        self.q_proj = empty_linear(hidden, 0, like=like)
        self.k_proj = empty_linear(hidden, 0, like=like)
        self.v_proj = empty_linear(hidden, 0, like=like)
        self.o_proj = empty_linear(0, hidden, bias=bias, like=like)
        self.num_key_value_groups = 0

    @classmethod
    def replacing(cls, attn: HFModule, layer_idx: int, bias: bool = False) -> "NoAttention":
        return cls(layer_idx, attn.head_dim, attn.o_proj.out_features, like=attn.o_proj.weight, bias=bias)

    def forward(self, hidden_states: torch.Tensor, past_key_values=None, **kwargs):
        if past_key_values is not None:
            b, t, _ = hidden_states.shape
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return self._out(hidden_states), None


class NoMLP(_Removed):
    """A removed MLP block: adds nothing (or its down_proj bias) to the residual stream."""

    out_name = "down_proj"

    def __init__(self, hidden: int, like: torch.Tensor | None = None, bias: bool = False):
        super().__init__()
        self.gate_proj = empty_linear(hidden, 0, like=like)
        self.up_proj = empty_linear(hidden, 0, like=like)
        self.down_proj = empty_linear(0, hidden, bias=bias, like=like)

    @classmethod
    def replacing(cls, mlp: HFModule, bias: bool = False) -> "NoMLP":
        return cls(mlp.down_proj.out_features, like=mlp.down_proj.weight, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._out(hidden_states)


def remove_blocks(layer: HFModule, index: int, attention: bool, mlp: bool, attention_bias: bool = False,
                  mlp_bias: bool = False) -> None:
    """Swap a decoder layer's attention and/or MLP (and the norm in front of each) for stand-ins; with a
    ``*_bias`` the stand-in has room for its mean output (a checkpoint's skeleton)."""
    if attention and not isinstance(layer.self_attn, NoAttention):
        layer.self_attn = NoAttention.replacing(layer.self_attn, index, attention_bias)
        layer.input_layernorm = nn.Identity()
    if mlp and not isinstance(layer.mlp, NoMLP):
        layer.mlp = NoMLP.replacing(layer.mlp, mlp_bias)
        layer.post_attention_layernorm = nn.Identity()


def block_ratio(shape: DenseShape, attention: Sequence[int], mlp: Sequence[int]) -> float:
    """Fraction of the dense blocks' parameters removed (a removed block takes its norm with it)."""
    return removal_plan(shape, attention, mlp).block_ratio


def removal_plan(shape: DenseShape, attention: Sequence[int] = (), mlp: Sequence[int] = (),
                 meta: dict | None = None) -> PruningPlan:
    """The plan that keeps everything but the given attention / MLP blocks (dense layer indices)."""
    attn, mlps = {int(i) for i in attention}, {int(i) for i in mlp}
    bad = sorted(i for i in attn | mlps if not 0 <= i < shape.n_layers)
    if bad:
        raise PPFError(f"layer index {bad[0]} is out of range for a {shape.n_layers}-layer model")
    full = PruningPlan.dense(shape).layers[0]
    layers = tuple(LayerPlan(() if i in attn else full.heads, () if i in attn else full.kv_heads,
                             () if i in mlps else full.channels) for i in range(shape.n_layers))
    return PruningPlan(shape, layers, dict(meta or {}))


def layer_calls(model: HFModule, batch: torch.Tensor) -> list[tuple]:
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


def logits_from(model: HFModule, calls: list[tuple], start: int) -> torch.Tensor:
    """The model's logits computed from layer ``start`` on, its input taken from ``calls``: the
    same operations as a full forward pass, without recomputing the layers before ``start``."""
    hidden = calls[start][0]
    for layer, (_, args, kwargs) in zip(model.model.layers[start:], calls[start:], strict=True):
        out = layer(hidden, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.lm_head(model.model.norm(hidden))
