"""``llm_pruner`` — LLM-Pruner (Ma et al. 2023): one ratio for every prunable layer, heads and
channels ranked by first-order Taylor importance (``pruning.unit_importance``), the first and last
layers kept dense as in its defaults (layers 4..30 of LLaMA-7B's 32 → ``benchmark.llm_pruner_keep``).
"""

from __future__ import annotations

from ppf.baselines.registry import Method, register
from ppf.errors import PPFError


def keep_scores(n_layers: int, keep_first: int, keep_last: int) -> list[float]:
    """Layer scores that make Eqs 4-5 (a_eta 0.5) give the kept layers 0 and the rest one ratio."""
    if keep_first + keep_last >= n_layers:
        raise PPFError(f"llm_pruner_keep {keep_first}+{keep_last} leaves no layer of {n_layers} to prune")
    return [1.0 if i < keep_first or i >= n_layers - keep_last else 0.0 for i in range(n_layers)]


def plan(wb, ratio: float):
    first, last = wb.params.benchmark.llm_pruner_keep
    n = wb.shape.n_layers
    return f"uniform, layers {first}..{n - last - 1}", wb.planner.plan_scores(keep_scores(n, first, last), 0.5, ratio)


METHOD = register(Method("llm_pruner", "width", "one ratio per prunable layer, Taylor units, edge layers kept",
                         "no LoRA recovery fine-tuning (no method here is fine-tuned)", plan=plan))
