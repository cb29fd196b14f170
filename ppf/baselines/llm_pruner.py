"""``llm_pruner`` — LLM-Pruner (Ma et al. 2023): one ratio for every prunable layer, heads and
channels ranked by first-order Taylor importance (``pruning.unit_importance``), the first and last
layers kept dense as in its defaults (layers 4..30 of LLaMA-7B's 32 → ``benchmark.llm_pruner_keep``).

Inside a layer it follows LLM-Pruner's own rule (its ``llama3.py`` for GQA models): one unit ratio,
the attention losing whole KV groups with their query heads, the MLP the rest (``attn=groups``).
Splitting by parameter count instead (4 of 9 query heads in 2 KV groups at 40 %) measured 196.5 test
perplexity vs 146.2 with the rule (SmolLM2, 40 %, no compensation, 32 windows; dense 23.2: 6.3x, as
the upstream code's 6.4x) and 64.3 vs 42.1 at 20 %.

In PPF's policy space that is ``uniform,keep=FIRST:LAST,attn=groups`` (:class:`~ppf.policy.Policy`).
"""

from __future__ import annotations

from ppf.baselines.registry import Method, register
from ppf.errors import PPFError
from ppf.policy import Policy


def policy(n_layers: int, keep_first: int, keep_last: int) -> Policy:
    """LLM-Pruner's allocation as a policy: the edge layers protected, one ratio for the rest."""
    if keep_first + keep_last >= n_layers:
        raise PPFError(f"llm_pruner_keep {keep_first}+{keep_last} leaves no layer of {n_layers} to prune")
    return Policy("uniform", first=keep_first, last=keep_last, attn="groups")


def plan(wb, ratio: float, state=None):
    first, last = wb.params.benchmark.llm_pruner_keep
    n = wb.shape.n_layers
    return f"uniform, layers {first}..{n - last - 1}", wb.planner.plan(policy(n, first, last), ratio)


METHOD = register(Method("llm_pruner", "width", "one ratio per prunable layer, Taylor units, edge layers kept",
                         "no LoRA recovery fine-tuning (no method here is fine-tuned)", plan=plan))
