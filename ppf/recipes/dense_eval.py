"""The `dense_eval` recipe: the unpruned model's perplexity and zero-shot accuracy — the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppf.config import Params
from ppf.evaluate import evaluate_model


def evaluate(root: Path, params: Params) -> dict[str, Any]:
    """Perplexity on the valid and test splits and every configured zero-shot task (metrics/dense.json)."""
    return evaluate_model(params.model.name, root, params, splits=["valid", "test"], zero_shot_tasks=True)
