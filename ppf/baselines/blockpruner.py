"""``blockpruner`` — BlockPruner (Zhong et al. 2024): greedy removal of single attention / MLP blocks,
each step the block whose removal gives the lowest calibration perplexity.

The greedy search is the expensive part (:func:`removal_order`, the method's ``prepare``): it runs
once up to the largest ratio asked for, and any prefix of the order is BlockPruner's answer for a
smaller ratio (:func:`blocks_for_ratio`: the nearest reachable). Deviation: the calibration budget
``benchmark.blockpruner`` (2 × 128 tokens by default) instead of the original's larger sets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ppf.baselines.registry import Method, register
from ppf.depth import NoAttention, NoMLP, block_ratio, layer_calls, logits_from, removal_plan
from ppf.errors import PPFError
from ppf.plan import DenseShape


def next_token_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """BlockPruner's criterion: mean next-token negative log-likelihood of ``batch``."""
    logits = logits[:, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)))


@torch.no_grad()
def removal_order(model: nn.Module, batch: torch.Tensor, shape: DenseShape, max_ratio: float,
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
            layer.self_attn = saved[(kind, i)] if on else NoAttention.replacing(saved[(kind, i)], i)
        else:
            layer.mlp = saved[(kind, i)] if on else NoMLP.replacing(saved[(kind, i)])

    ratio = 0.0
    while ratio < max_ratio:
        calls = layer_calls(work, batch)
        best = None
        for kind, i in saved:
            if i in removed[kind]:
                continue
            set_block(kind, i, False)
            value = loss(logits_from(work, calls, i), batch)
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


def prepare(wb, max_ratio: float, progress: Callable[[int, float], None] = lambda step, ratio: None) -> list[dict]:
    """The greedy removal order up to ``max_ratio`` on ``benchmark.blockpruner``'s calibration slice."""
    bp = wb.params.benchmark.blockpruner
    batch = wb.tokens[0][: bp.n_samples, : bp.seqlen].long()
    return removal_order(wb.model, batch, wb.shape, max_ratio, progress=progress)


def plan(wb, ratio: float, steps: list[dict] | None = None):
    if steps is None:
        raise PPFError("blockpruner needs its greedy removal order; compute it with its `prepare` first")
    attn, mlp, _ = blocks_for_ratio(steps, ratio)
    return (f"attention {sorted(attn)} / mlp {sorted(mlp)} removed",
            removal_plan(wb.shape, attn, mlp, {"method": "blockpruner"}))


METHOD = register(Method("blockpruner", "depth", "greedy removal of attention / MLP blocks by calibration perplexity",
                         "calibration budget benchmark.blockpruner (2 x 128 tokens) instead of its larger sets",
                         plan=plan, prepare=prepare))
