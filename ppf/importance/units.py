"""Unit importance: which query heads, KV heads and MLP channels of each layer to remove.

A unit is a *structure* that physical pruning removes as a whole, so its score is the sum of the
element scores of every parameter that goes with it:

  query head h   its head_dim rows of q_proj (and q bias) + its head_dim input columns of o_proj
  KV head g      its rows of k_proj and v_proj (and biases) + the scores of its query heads, since
                 dropping a KV head drops its whole GQA group
  MLP channel c  row c of gate_proj and up_proj (and biases) + input column c of down_proj

Two element scores:

  taylor (default, as in LLM-Pruner, Ma et al. 2023): first-order Taylor |w * dL/dw| of the LM
      loss on the calibration batch - the loss change if that weight were zeroed. One backward
      sweep, gradients accumulated over micro-batches, then freed.
  activation (Wanda-style, no gradients): |W_ij| * ||X_j||_2, with X the input of that linear
      (the normed block input for q/k/v and gate/up, the attention output for o_proj, the gated
      activation for down_proj). Cheaper and needs no backward, but blind to what the loss needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ppf.arch import LayerView, layers
from ppf.errors import PPFError
from ppf.importance.stats import LINEARS, check_calib, collect

# linear name -> (element scores of its weight [out, in], of its bias [out] or None)
Score = Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]


def structure_scores(v: LayerView, score: Score) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(head [n_heads], kv [n_kv_heads], channel [intermediate]) summed from element scores."""
    def rows(name: str) -> torch.Tensor:  # per output row: the row's weights plus its bias
        w, b = score(name)
        return w.sum(1) + (b if b is not None else 0)

    def cols(name: str) -> torch.Tensor:  # per input column (the output bias is shared, not owned)
        return score(name)[0].sum(0)

    hd = v.head_dim
    head = rows("q_proj").view(v.n_heads, hd).sum(1) + cols("o_proj").view(v.n_heads, hd).sum(1)
    kv = (rows("k_proj") + rows("v_proj")).view(v.n_kv_heads, hd).sum(1)
    kv = kv + head.view(v.n_kv_heads, v.groups).sum(1)
    channel = rows("gate_proj") + rows("up_proj") + cols("down_proj")
    return head, kv, channel


def _stack(views: list[LayerView], score_of: Callable[[LayerView], Score]) -> dict[str, torch.Tensor]:
    per_layer = [structure_scores(v, score_of(v)) for v in views]
    return {key: torch.stack([s[i] for s in per_layer]).float().cpu()
            for i, key in enumerate(("head", "kv", "channel"))}


def taylor(model: nn.Module, views: list[LayerView], calib: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """First-order Taylor |w * dL/dw| summed per structure (LLM-Pruner's element-wise 'param_first')."""
    params = [p for v in views for n in LINEARS for p in getattr(v, n).parameters()]
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        for p, _ in saved:  # only the prunable linears need .grad: skips the huge embedding/lm_head grads
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for batch in calib.split(batch_size):
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (loss * (batch.shape[0] / calib.shape[0])).backward()  # grads of the mean loss over all rows

        def elem(p: torch.Tensor | None) -> torch.Tensor | None:
            if p is None:
                return None
            if p.grad is None:  # unreachable from the loss: zero importance
                return torch.zeros_like(p, dtype=torch.float32)
            return (p.detach().float() * p.grad.float()).abs()

        def score_of(v: LayerView) -> Score:
            return lambda name: (elem(getattr(v, name).weight), elem(getattr(v, name).bias))

        with torch.no_grad():
            return _stack(views, score_of)
    finally:
        for p in params:
            p.grad = None
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(was_training)


def activation(model: nn.Module, views: list[LayerView], calib: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Wanda's |W_ij| * ||X_j||_2 summed per structure; biases are not scored (they see no input)."""
    stats = collect(model, views, calib, batch_size=batch_size, norms=True, cosine=False)

    def score_of(v: LayerView) -> Score:
        st = stats[v.index]
        return lambda name: (getattr(v, name).weight.detach().float().abs() * st.input_norm(name)[None, :], None)

    with torch.no_grad():
        return _stack(views, score_of)


UNIT_KINDS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {"taylor": taylor, "activation": activation}


def unit_importance(model: nn.Module, calib: torch.Tensor, kind: str = "taylor",
                    batch_size: int = 4) -> dict[str, torch.Tensor]:
    """{"head": [L, n_heads], "kv": [L, n_kv_heads], "channel": [L, intermediate]} float32 scores,
    higher = more important, for a dense model (every layer the same shape)."""
    if kind not in UNIT_KINDS:
        raise PPFError(f"unknown unit-importance kind '{kind}'; use one of {', '.join(UNIT_KINDS)}")
    if batch_size < 1:
        raise PPFError(f"batch_size must be >= 1, got {batch_size}")
    check_calib(calib)
    views = layers(model)
    if len({(v.n_heads, v.n_kv_heads, v.intermediate) for v in views}) != 1:
        raise PPFError("unit importance needs a dense model (all layers the same shape); "
                       "score the unpruned base model, not a pruned checkpoint")
    return UNIT_KINDS[kind](model, views, calib, batch_size)
