"""Physical pruning: apply a :class:`~ppf.plan.PruningPlan` to a model, in place.

Every decoder layer loses the weight slices of the units the plan drops:

* dropped query heads: their ``head_dim`` rows of ``q_proj`` (and bias) and columns of ``o_proj``;
* dropped KV heads (whole GQA groups): their rows of ``k_proj`` / ``v_proj`` (and biases);
* dropped MLP channels: their rows of ``gate_proj`` / ``up_proj`` and columns of ``down_proj``;
* a removed attention or MLP block (no heads / no channels kept): a zero-width stand-in
  (:mod:`ppf.depth`), the norm in front of it removed too.

The slicing is done by torch-pruning's low-level functions (``prune_linear_out_channels`` /
``prune_linear_in_channels``, which take the indices to REMOVE). Its dependency-graph pruner
(``MetaPruner``) is deliberately not used: it hangs on GQA Llama models (torch-pruning #527), and
the plan already says exactly which slices go.

transformers' Llama / Mistral / Qwen2 attention reshapes q/k/v with ``view(..., -1, head_dim)``,
so it picks up the new head counts from the tensor shapes; the one piece of per-layer bookkeeping
it reads is ``self_attn.num_key_value_groups`` (``repeat_kv`` / SDPA's GQA path), which is set
here per layer. ``model.config`` keeps describing the DENSE model (that is what the plan's
:class:`~ppf.plan.DenseShape` refers to); the per-layer shapes live on the modules and in
``model.ppf_plan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppf.arch import layers
from ppf.depth import HFModule, remove_blocks, removal_plan
from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan

PLAN_ATTR = "ppf_plan"  # the plan a model was pruned with, recorded on the model


def plan_of(model: nn.Module) -> PruningPlan | None:
    """The plan ``model`` was pruned with (by :func:`prune_model` or a ppf checkpoint), or None."""
    return getattr(model, PLAN_ATTR, None)


def _removed(kept: Sequence[int], n: int) -> list[int]:
    keep = set(kept)
    return [i for i in range(n) if i not in keep]


def _head_rows(heads: Sequence[int], head_dim: int) -> list[int]:
    """The output rows (or input columns) that ``heads`` occupy, ``head_dim`` per head."""
    return [h * head_dim + d for h in heads for d in range(head_dim)]


def _out(layer: nn.Linear, remove: list[int]) -> None:
    import torch_pruning as tp

    if remove:
        grad = layer.weight.requires_grad
        tp.prune_linear_out_channels(layer, remove)
        layer.weight.requires_grad_(grad)
        if layer.bias is not None:
            layer.bias.requires_grad_(grad)


def _in(layer: nn.Linear, remove: list[int]) -> None:
    import torch_pruning as tp

    if remove:
        grad = layer.weight.requires_grad
        tp.prune_linear_in_channels(layer, remove)
        layer.weight.requires_grad_(grad)


def check_prunable(model: nn.Module, plan: PruningPlan) -> None:
    """Raise PPFError unless ``plan`` refers to ``model``'s dense geometry and ``model`` is unpruned."""
    if plan_of(model) is not None:
        raise PPFError("the model is already pruned (it carries a ppf plan); "
                       "prune the dense model, not a pruned one")
    shape = DenseShape.of(model)
    if plan.shape != shape:
        raise PPFError(f"the plan was made for a different model: plan shape {plan.shape}, model shape {shape}")
    for v in layers(model):
        if (v.n_heads, v.n_kv_heads, v.intermediate) != (shape.n_heads, shape.n_kv_heads, shape.intermediate):
            raise PPFError(
                f"the model is already pruned: layer {v.index} has {v.n_heads} heads / {v.n_kv_heads} KV heads / "
                f"{v.intermediate} channels, its config says {shape.n_heads} / {shape.n_kv_heads} / "
                f"{shape.intermediate}; prune the dense model"
            )


@torch.no_grad()
def prune_model(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Physically remove what ``plan`` drops from ``model`` (in place) and return it.

    Afterwards ``model.ppf_plan is plan``; forward and ``generate()`` (with KV cache) work, and the
    number of parameters is ``plan.kept_block_params`` plus embeddings and the final norm.
    Raises PPFError for a plan made for another geometry or a model that is already pruned.
    """
    check_prunable(model, plan)
    s = plan.shape
    hd = s.head_dim
    for view, lp in zip(layers(model), plan.layers, strict=True):
        if not (lp.has_attention and lp.has_mlp):  # a removed block: a zero-width stand-in (ppf.depth)
            remove_blocks(view.module, view.index, not lp.has_attention, not lp.has_mlp)
        drop_heads = _removed(lp.heads, s.n_heads)
        drop_kv = _removed(lp.kv_heads, s.n_kv_heads)
        drop_ch = _removed(lp.channels, s.intermediate)
        if lp.has_attention:
            _out(view.q_proj, _head_rows(drop_heads, hd))
            _in(view.o_proj, _head_rows(drop_heads, hd))
            _out(view.k_proj, _head_rows(drop_kv, hd))
            _out(view.v_proj, _head_rows(drop_kv, hd))
            set_attention_bookkeeping(view.module.self_attn, len(lp.heads), len(lp.kv_heads))
        if lp.has_mlp:
            _out(view.gate_proj, drop_ch)
            _out(view.up_proj, drop_ch)
            _in(view.down_proj, drop_ch)
    setattr(model, PLAN_ATTR, plan)
    return model


def set_attention_bookkeeping(attn: HFModule, n_heads: int, n_kv_heads: int) -> None:
    """Make a transformers attention module consistent with ``n_heads`` / ``n_kv_heads``.

    transformers 5.x Llama/Mistral/Qwen2 attention only stores ``num_key_value_groups`` (and
    ``head_dim``, which never changes); older versions and some forks also keep ``num_heads`` /
    ``num_key_value_heads``, updated when present.
    """
    attn.num_key_value_groups = n_heads // n_kv_heads
    for name, value in (("num_heads", n_heads), ("num_attention_heads", n_heads),
                        ("num_key_value_heads", n_kv_heads)):
        if hasattr(attn, name):
            setattr(attn, name, value)


def drop_blocks(model: nn.Module, attention: Sequence[int] = (), mlp: Sequence[int] = ()) -> nn.Module:
    """Remove attention / MLP blocks (dense layer indices) from a dense model, in place: the plan that
    removes only those blocks (:func:`ppf.depth.removal_plan`), applied by :func:`prune_model`."""
    plan = removal_plan(DenseShape.of(model), attention, mlp,
                        {"removed": {"attention": sorted(set(attention)), "mlp": sorted(set(mlp))}})
    return prune_model(model, plan)
