"""The Llama-family adapter: one place that knows where the prunable pieces of a model live.

Everything else in ppf (importance, pruning, policies, the predictor) talks to a model through
:func:`layers` and :func:`describe`, never through ``model.config``. That matters because ppf
prunes *physically*: after pruning, layer 3 may keep 7 of 9 query heads and layer 12 only 900
of 1536 MLP channels, while ``config.json`` still says 9 and 1536. So every per-layer size here is
read from the shapes of the ``nn.Linear`` modules themselves; the config is consulted only for
``head_dim``, which head pruning never changes.

"Llama family" is structural, not a list of names: a causal LM whose decoder layers live in
``model.layers[i]`` with ``self_attn.{q,k,v,o}_proj`` and a gated ``mlp.{gate,up,down}_proj``.
That covers Llama, Mistral and Qwen2 (which adds biases to q/k/v), with MHA or GQA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ppf.errors import PPFError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
NEEDS = "model.layers[i].self_attn.{q,k,v,o}_proj / mlp.{gate,up,down}_proj"


def _missing(model: nn.Module) -> str | None:
    """The first structural piece a Llama-family causal LM needs that ``model`` lacks, or None."""
    inner = getattr(model, "model", None)
    if inner is None:
        return "model.layers"
    blocks = getattr(inner, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return "model.layers"
    for name in ("embed_tokens", "norm"):
        if not isinstance(getattr(inner, name, None), nn.Module):
            return f"model.{name}"
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        return "lm_head"
    for i, block in enumerate(blocks):
        for parent, names in (("self_attn", ATTN), ("mlp", MLP)):
            sub = getattr(block, parent, None)
            for name in names:
                if not isinstance(getattr(sub, name, None), nn.Linear):
                    return f"model.layers[{i}].{parent}.{name}"
    return None


def check_llama_family(model: nn.Module) -> None:
    """Raise a one-line PPFError naming what is missing unless ``model`` is a Llama-family causal LM.

    Called at load time so that a GPT-2 or a T5 fails immediately with a clear message instead of
    an AttributeError deep inside an importance pass.
    """
    missing = _missing(model)
    if missing is not None:
        raise PPFError(
            f"{type(model).__name__} is not a Llama-family causal LM: it has no {missing} "
            f"(ppf needs {NEEDS}; use a Llama, Mistral or Qwen2 checkpoint)"
        )


@dataclass
class LayerView:
    """One decoder layer's prunable linears and the sizes they currently have.

    Sizes are derived from the module shapes, so a view taken after pruning is correct even
    though ``model.config`` still describes the dense model.
    """

    index: int
    module: nn.Module  # the whole decoder layer (norms included), for parameter counts and hooks
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    groups: int = field(init=False)  # query heads per KV head (1 for MHA)

    def __post_init__(self) -> None:
        self.groups = self.n_heads // self.n_kv_heads if self.n_kv_heads else 0


def head_dim(model: nn.Module) -> int:
    """The per-head width: the attention module's own ``head_dim``, else the config's.

    Read from the module first because that is what its forward actually reshapes by.
    """
    attn = model.model.layers[0].self_attn
    hd = getattr(attn, "head_dim", None) or getattr(model.config, "head_dim", None)
    if not hd:
        hd = model.config.hidden_size // model.config.num_attention_heads
    return int(hd)


def layers(model: nn.Module) -> list[LayerView]:
    """One :class:`LayerView` per decoder layer, sizes read from the current module shapes."""
    check_llama_family(model)
    hd = head_dim(model)
    views = []
    for i, block in enumerate(model.model.layers):
        attn, mlp = block.self_attn, block.mlp
        q, k, v = attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features
        if q % hd or k % hd or k != v or (k and (q // hd) % (k // hd)):
            raise PPFError(
                f"layer {i} has inconsistent attention shapes (q {q}, k {k}, v {v} outputs, head_dim {hd}): "
                "the checkpoint was pruned without keeping whole heads / whole GQA groups; re-prune it"
            )
        views.append(LayerView(
            index=i, module=block,
            q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj, o_proj=attn.o_proj,
            gate_proj=mlp.gate_proj, up_proj=mlp.up_proj, down_proj=mlp.down_proj,
            n_heads=q // hd, n_kv_heads=k // hd, head_dim=hd, intermediate=mlp.gate_proj.out_features,
        ))
    return views


def block_params(view: LayerView) -> int:
    """Parameters in one decoder layer (attention, MLP and its two norms)."""
    return sum(p.numel() for p in view.module.parameters())


def _one(values: list[int]) -> int:
    """The headline number for a per-layer quantity: the widest layer (= the dense width)."""
    return max(values) if values else 0


@dataclass
class ArchInfo:
    """What ``ppf info`` prints and what policies and the predictor need about a model.

    The scalar ``n_heads`` / ``n_kv_heads`` / ``intermediate`` are the widest layer's values (the
    dense model's, before pruning); the ``*_per_layer`` lists are always filled and are what
    matters once layers differ (``uniform`` says whether they do).
    """

    model_type: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool
    heads_per_layer: list[int]
    kv_heads_per_layer: list[int]
    intermediate_per_layer: list[int]
    params_per_layer: list[int]
    embedding_params: int  # embed_tokens, plus lm_head when it is not tied to it
    block_params: int  # all decoder layers
    other_params: int  # the final norm (and anything else outside the blocks)
    total_params: int

    @property
    def uniform(self) -> bool:
        """True when every layer has the same heads, KV heads and MLP width (an unpruned model)."""
        return all(len(set(xs)) <= 1 for xs in
                   (self.heads_per_layer, self.kv_heads_per_layer, self.intermediate_per_layer))

    @property
    def groups(self) -> int:
        """Query heads per KV head in the widest layer (1 for MHA)."""
        return self.n_heads // self.n_kv_heads if self.n_kv_heads else 0

    def summary(self) -> str:
        """A few human-readable lines; per-layer lists only when the layers differ."""
        lines = [
            f"{self.model_type}: {self.n_layers} layers, hidden {self.hidden}, "
            f"{self.n_heads} heads / {self.n_kv_heads} KV heads x {self.head_dim}, MLP {self.intermediate}, "
            f"vocab {self.vocab}{', tied embeddings' if self.tied_embeddings else ''}"
            f"{', q/k/v bias' if self.attention_bias else ''}",
            f"params: {self.total_params:,} total = {self.embedding_params:,} embedding + "
            f"{self.block_params:,} blocks + {self.other_params:,} other",
        ]
        if not self.uniform:
            lines += [f"heads per layer: {self.heads_per_layer}",
                      f"KV heads per layer: {self.kv_heads_per_layer}",
                      f"MLP channels per layer: {self.intermediate_per_layer}"]
        return "\n".join(lines)


def describe(model: nn.Module) -> ArchInfo:
    """Sizes and parameter counts of a (possibly pruned) Llama-family model, from its modules."""
    views = layers(model)
    embed, head = model.model.embed_tokens, model.lm_head
    tied = head.weight is embed.weight
    total = sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights
    embedding = embed.weight.numel() + (0 if tied else sum(p.numel() for p in head.parameters()))
    per_layer = [block_params(v) for v in views]
    heads = [v.n_heads for v in views]
    kv = [v.n_kv_heads for v in views]
    inter = [v.intermediate for v in views]
    return ArchInfo(
        model_type=getattr(model.config, "model_type", type(model).__name__),
        n_layers=len(views),
        hidden=embed.weight.shape[1],
        n_heads=_one(heads),
        n_kv_heads=_one(kv),
        head_dim=views[0].head_dim,
        intermediate=_one(inter),
        vocab=embed.weight.shape[0],
        tied_embeddings=tied,
        attention_bias=views[0].q_proj.bias is not None,
        heads_per_layer=heads,
        kv_heads_per_layer=kv,
        intermediate_per_layer=inter,
        params_per_layer=per_layer,
        embedding_params=embedding,
        block_params=sum(per_layer),
        other_params=total - embedding - sum(per_layer),
        total_params=total,
    )


def describe_config(config: PretrainedConfig) -> ArchInfo:
    """Describe the dense model a config would build, without allocating or loading any weights.

    The model is instantiated on the meta device (shapes only, no storage), so ``ppf info`` is
    instant even for a multi-GB checkpoint. It describes the *config's* sizes: for a physically
    pruned checkpoint, load it and use :func:`describe` instead.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return describe(model)
