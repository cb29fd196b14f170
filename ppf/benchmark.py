"""The benchmark: PPF against re-run baselines on the same model, data and engine.

A registry of methods, each a way to turn the dense model into a pruned one at a target block
ratio (the fraction of the decoder blocks' parameters removed):

``dense``        the unpruned model (ratio 0);
``llm_pruner``   LLM-Pruner: every prunable layer at one ratio, heads/channels by first-order Taylor
                 importance (``pruning.unit_importance``), the first and last layers kept as in its
                 defaults (layers 4..30 of LLaMA-7B's 32 → ``benchmark.llm_pruner_keep``, scaled);
``owl``          OWL's LOD mapping, λ = 0.08 (:mod:`ppf.baselines`), structured;
``alpha``        AlphaPruning's ESD mapping, ε = 0.3, structured;
``shortgpt``     ShortGPT: whole layers of lowest Block Influence removed;
``blockpruner``  BlockPruner: greedy removal of attention / MLP blocks by calibration perplexity;
``ppf``          the trained agent's policy for the ratio (static agent where one was trained).

Width methods hit the ratio exactly (±``pruning.tolerance``); depth methods remove whole blocks, so
their actual ratio is the nearest they can reach (reported). :func:`evaluate` measures a model:
test perplexity (and an extra corpus if given), zero-shot accuracy (lm-eval, local tasks),
parameters, batched-prefill and batch-1 generation tokens/s, and peak memory (weights + the
prefill's peak on top of them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppf.errors import PPFError
from ppf.io import digest

METHODS = ("dense", "llm_pruner", "owl", "alpha", "shortgpt", "blockpruner", "ppf")
WIDTH = ("llm_pruner", "owl", "alpha", "ppf")


def check_methods(methods: list[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PPFError(f"unknown benchmark method {unknown[0]!r}; use some of {', '.join(METHODS)}")
    return list(methods)


def llm_pruner_scores(n_layers: int, keep_first: int, keep_last: int) -> list[float]:
    """Layer scores that make Eqs 4-5 (a_eta 0.5) give the kept layers 0 and the rest one ratio."""
    if keep_first + keep_last >= n_layers:
        raise PPFError(f"llm_pruner_keep {keep_first}+{keep_last} leaves no layer of {n_layers} to prune")
    return [1.0 if i < keep_first or i >= n_layers - keep_last else 0.0 for i in range(n_layers)]


@dataclass
class Context:
    """The dense model and what every method needs, loaded once per process."""

    root: Path
    params: Any
    model: torch.nn.Module
    tokenizer: Any
    planner: Any  # ppf.predictor.features.Planner
    agents: Any = None  # ppf.agent.Agents, for `ppf`
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, params: Any, with_agent: bool) -> "Context":
        from ppf.models import load
        from ppf.predictor.features import Planner

        model, tokenizer = load(params.model.name, params.model.dtype, params.model.device)
        agents = None
        if with_agent:
            from ppf.agent import Agents

            agents = Agents.load(Path(root) / "models" / "agent")
            if agents.meta.get("model") != params.model.name:
                raise PPFError(f"models/agent was trained for {agents.meta.get('model')}, not {params.model.name}; "
                               "run `dvc repro train_agent` for this model or leave `ppf` out of the methods")
        return cls(Path(root), params, model.eval(), tokenizer, Planner.load(Path(root), params), agents)

    def calibration_batch(self) -> torch.Tensor:
        """BlockPruner's calibration sequences: a slice of the calibration batch (``benchmark.blockpruner``)."""
        from ppf.io import read_tensors

        bp = self.params.benchmark.blockpruner
        tokens = read_tensors(self.root / "data" / "calibration" / "tokens.safetensors")[0]["calibration"]
        return tokens[: bp.n_samples, : bp.seqlen].long()


def policy_for(ctx: Context, method: str, ratio: float) -> tuple[str, Any]:
    """(description, plan) of a width method at ``ratio``."""
    from ppf.baselines import alpha_policy, owl_policy

    b = ctx.params.benchmark
    v = ctx.params.agent.validation
    if method == "llm_pruner":
        scores = llm_pruner_scores(ctx.planner.shape.n_layers, *b.llm_pruner_keep)
        return f"uniform, layers {b.llm_pruner_keep[0]}..{ctx.planner.shape.n_layers - b.llm_pruner_keep[1] - 1}", \
            ctx.planner.plan_scores(scores, 0.5, ratio)
    if method in ("owl", "alpha"):
        pol = owl_policy(ratio, v.owl_lambda) if method == "owl" else alpha_policy(ratio, v.alpha_epsilon)
        return str(pol), ctx.planner.plan(str(pol), ratio)
    if method == "ppf":
        decision = ctx.agents.decide(ratio)
        return f"{decision['policy']} ({decision['mode']} agent)", ctx.planner.plan(str(decision["policy"]), ratio)
    raise PPFError(f"{method} is not a width method")


def build(ctx: Context, method: str, ratio: float, blockpruner_steps: list[dict] | None = None
          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A pruned copy of the dense model (embeddings shared) and {policy, actual_ratio}."""
    from ppf.blocks import block_ratio, blocks_for_ratio, drop_blocks, shortgpt_layers
    from ppf.prune import prune_model

    shared = [ctx.model.get_input_embeddings(), ctx.model.get_output_embeddings(), ctx.model.model.norm]
    memo = {id(t): t for m in shared if m is not None for t in (*m.parameters(), *m.buffers())}
    if method == "dense":
        return ctx.model, {"policy": "dense", "actual_ratio": 0.0}
    model = copy.deepcopy(ctx.model, memo=memo)
    if method in WIDTH:
        desc, plan = policy_for(ctx, method, ratio)
        return prune_model(model, plan), {"policy": desc, "actual_ratio": plan.block_ratio}
    shape = ctx.planner.shape
    if method == "shortgpt":
        layers = shortgpt_layers(ctx.planner.layer_scores["bi"], shape, ratio)
        drop_blocks(model, attention=layers, mlp=layers)
        return model, {"policy": f"layers {layers} removed", "actual_ratio": block_ratio(shape, layers, layers)}
    if method == "blockpruner":
        if blockpruner_steps is None:
            raise PPFError("blockpruner needs its greedy removal order; compute it with ppf.blocks.blockpruner_order")
        attn, mlp, actual = blocks_for_ratio(blockpruner_steps, ratio)
        drop_blocks(model, attention=attn, mlp=mlp)
        return model, {"policy": f"attention {sorted(attn)} / mlp {sorted(mlp)} removed", "actual_ratio": actual}
    raise PPFError(f"unknown benchmark method {method!r}; use some of {', '.join(METHODS)}")


def evaluate(model: torch.nn.Module, tokenizer: Any, root: Path, params: Any) -> dict[str, Any]:
    """Test perplexity, zero-shot accuracy, parameters, speed and peak memory of ``model``."""
    from ppf.data.corpus import tokenize_text
    from ppf.evaluate import speed, zero_shot
    from ppf.metrics import perplexity

    b, ev = params.benchmark, params.eval
    start = time.perf_counter()
    out: dict[str, Any] = {}
    corpora = {"test": Path(root) / "data" / "corpus" / "test.txt"}
    if b.extra_corpus:
        corpora["extra"] = Path(root) / b.extra_corpus
    for name, path in corpora.items():
        if not path.is_file():
            raise PPFError(f"no corpus file '{path}'; run `dvc repro prepare` (or fix benchmark.extra_corpus)")
        tokens = tokenize_text(tokenizer, path.read_text(encoding="utf-8"))
        out[f"ppl_{name}"] = perplexity(model, tokens, ev.seqlen, ev.batch_size, b.max_windows)
    zs = zero_shot(model, tokenizer, Path(root) / "data" / "tasks", limit=b.zero_shot_limit,
                   batch_size=max(ev.batch_size, 8))
    for task, r in zs.items():
        out[f"zs_{task}"] = r["acc"]
        out[f"zs_{task}_norm"] = r["acc_norm"]
    s = speed(model, tokenizer, b.speed_seqlen, b.speed_batch, b.new_tokens)
    out |= {"params": int(sum(p.numel() for p in model.parameters())), "tokens_per_s": s["generate_tok_s"],
            "prefill_tok_s": s["prefill_tok_s"], "weights_mb": s["weights_mb"], "peak_mem_mb": s["peak_mem_mb"],
            "eval_s": time.perf_counter() - start}
    return out


def context_key(root: Path, params: Any) -> str:
    """What a cell depends on besides (method, ratio): model, data, engine, agent, settings."""
    root = Path(root)
    data = [root / "data" / d for d in ("corpus", "tasks", "calibration", "importance")]
    payload = {"model": params.model.model_dump(exclude={"device"}), "pruning": params.pruning.model_dump(),
               "eval": params.eval.model_dump(),
               # not the cell list (methods, ratios) nor registration: adding a ratio reuses the other cells
               "benchmark": params.benchmark.model_dump(exclude={"methods", "ratios", "register_models"}),
               "validation": params.agent.validation.model_dump(),
               "data": digest(*[d for d in data if d.exists()]),
               "agent": digest(root / "models" / "agent") if (root / "models" / "agent").exists() else "none"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run(root: Path, params: Any, methods: list[str], ratios: list[float], cache: Path,
        progress: Callable[[str], None] = lambda msg: None) -> "Any":
    """Every (method, ratio) cell as a DataFrame; each finished cell is cached as JSON under
    ``cache/<context key>/`` so that an interrupted run resumes (the `ppf benchmark` command; the
    pipeline's flow caches cells as Prefect tasks instead)."""
    import pandas as pd

    from ppf.blocks import blockpruner_order
    from ppf.io import write_json_atomic
    from ppf.policy import check_ratio

    methods = check_methods(methods)
    ratios = [check_ratio(r) for r in ratios]
    folder = Path(cache) / context_key(root, params)
    ctx: Context | None = None

    def context() -> Context:
        nonlocal ctx
        if ctx is None:
            progress(f"loading {params.model.name}")
            ctx = Context.load(Path(root), params, "ppf" in methods)
        return ctx

    steps = None
    if "blockpruner" in methods:
        path = folder / f"blockpruner-order-{max(ratios) + 0.02:g}.json"
        if path.is_file():
            steps = json.loads(path.read_text())
        else:
            progress("BlockPruner: greedy search for the block removal order")
            c = context()
            steps = blockpruner_order(c.model, c.calibration_batch(), c.planner.shape, max(ratios) + 0.02,
                                      progress=lambda k, r: progress(f"BlockPruner: step {k}, {r:.3f} removed"))
            write_json_atomic(path, steps)
    cells = [("dense", 0.0)] if "dense" in methods else []
    cells += [(m, r) for m in methods if m != "dense" for r in ratios]
    rows = []
    for i, (m, r) in enumerate(cells, 1):
        path = folder / f"{m}@{r:g}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            progress(f"[{i}/{len(cells)}] {m} at {r:g}: cached")
            continue
        progress(f"[{i}/{len(cells)}] {m} at {r:g}: pruning and evaluating")
        c = context()
        model, info = build(c, m, r, steps)
        row = {"method": m, "target_ratio": r, **info, **evaluate(model, c.tokenizer, Path(root), params)}
        write_json_atomic(path, row)
        rows.append(row)
    return pd.DataFrame(rows)


def table2(df: "Any") -> str:
    """The results as the paper's Table 2: one row per method, per ratio its perplexity and zero-shot mean."""
    ratios = sorted(r for r in df.target_ratio.unique() if r > 0)
    head = "| method | " + " | ".join(f"{r:.0%} ppl ↓ | {r:.0%} zero-shot ↑" for r in ratios) + " |"
    lines = [head, "|---|" + "---|---|" * len(ratios)]
    dense = df[df.method == "dense"]
    if len(dense):
        d = dense.iloc[0]
        lines.append("| dense | " + " | ".join(f"{d.ppl_test:.2f} | {d.zs_mean:.3f}" for _ in ratios) + " |")
    for method in [m for m in METHODS if m != "dense" and m in set(df.method)]:
        cells = []
        for r in ratios:
            row = df[(df.method == method) & np.isclose(df.target_ratio, r)]
            if len(row):
                x = row.iloc[0]
                best_ppl = df[np.isclose(df.target_ratio, r)].ppl_test.min()
                ppl = f"**{x.ppl_test:.2f}**" if x.ppl_test == best_ppl else f"{x.ppl_test:.2f}"
                cells.append(f"{ppl} | {x.zs_mean:.3f}")
            else:
                cells.append("– | –")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
