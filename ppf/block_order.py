"""BlockPruner's greedy block order (Zhong et al. 2024), searched once per model and calibration slice.

Each step removes the attention or MLP block whose removal gives the lowest calibration loss;
any prefix of the order is the search's answer for a smaller block ratio. The importance stage
stores it beside the layer scores (``data/importance``), so that policies with ``blocks=N``
(:mod:`ppf.policy`) and the ``blockpruner`` baseline read it instead of searching again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ppf.depth import NoAttention, NoMLP, block_ratio, layer_calls, logits_from
from ppf.importance.cache import slug
from ppf.io import write_json_atomic
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
    is BlockPruner's answer for a smaller ratio. Always in exact fp32, whatever
    ``eval.matmul_precision`` says: with bf16 products near-ties of its calibration loss flip (on
    SmolLM2 its 20 % model went from 58.33 to 60.59 test ppl), and a baseline must not get weaker.
    Removing a block of layer i cannot change what
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


def _code_version() -> str:
    """A hash of the search's sources (this file and the block removal it uses)."""
    h = hashlib.sha256()
    for f in (Path(__file__), Path(__file__).parent / "depth.py"):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _covers(steps: list[dict], n_blocks: int, max_ratio: float) -> bool:
    return bool(steps) and (steps[-1]["block_ratio"] >= max_ratio or len(steps) >= n_blocks)


def prefix_to(steps: list[dict], max_ratio: float) -> list[dict]:
    """The steps up to the first that reaches ``max_ratio``: what the search run to ``max_ratio`` returns."""
    for k, s in enumerate(steps):
        if s["block_ratio"] >= max_ratio:
            return steps[: k + 1]
    return list(steps)


def cached_removal_order(model: nn.Module | None, model_ref: str, batch: torch.Tensor, shape: DenseShape,
                         max_ratio: float | None, folders: tuple[Path, ...], save_to: Path | None,
                         progress: Callable[[int, float], None] = lambda step, ratio: None) -> list[dict] | None:
    """:func:`removal_order` up to ``max_ratio`` for (model, calibration slice, code): read from the
    first of ``folders`` whose stored order reaches ``max_ratio`` (its prefix: the greedy search is
    deterministic, so a longer run starts with the shorter one), else searched and saved to
    ``save_to``. ``model=None`` only reads: None on a miss; ``max_ratio=None`` reads the whole stored
    order, however long."""
    digest = hashlib.sha256(batch.contiguous().numpy().tobytes()).hexdigest()[:12]
    meta = {"model": str(model_ref), "calibration": digest, "code": _code_version()}
    name = f"{slug(model_ref)}-blockorder-{hashlib.sha256(repr(sorted(meta.items())).encode()).hexdigest()[:10]}.json"
    n_blocks = 2 * shape.n_layers
    for folder in folders:
        path = Path(folder) / name
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("meta") == meta and (max_ratio is None or _covers(stored["steps"], n_blocks, max_ratio)):
                return list(stored["steps"]) if max_ratio is None else prefix_to(stored["steps"], max_ratio)
    if model is None or max_ratio is None:
        return None
    steps = removal_order(model, batch, shape, max_ratio, progress=progress)
    if save_to is not None:
        write_json_atomic(Path(save_to) / name, {"meta": meta, "max_ratio": max_ratio, "steps": steps})
    return steps


def as_order(steps: list[dict]) -> tuple[tuple[str, int], ...]:
    """The removal steps as :attr:`ppf.policy.Planner.block_order`: ((kind, layer), ...)."""
    return tuple((str(s["kind"]), int(s["layer"])) for s in steps)
