"""Stage `dense_eval`: the unpruned model's perplexity and zero-shot accuracy — the reference.

Output: metrics/dense.json (perplexity per split, lm-eval accuracy per task and their mean).
Run: ``python -m flows.dense_eval [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import ROOT, run_main
from ppf import tracking
from ppf.config import load_params
from ppf.io import write_json_atomic


@task
def evaluate(model: str, root: str, params_path: str) -> dict:
    from ppf.evaluate import evaluate_model

    params = load_params(Path(root) / params_path)
    return evaluate_model(model, Path(root), params, splits=["valid", "test"], zero_shot_tasks=True)


@flow(name="dense_eval")
def dense_eval(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """Evaluate the base model named in params; return what is written to metrics/dense.json."""
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    result = evaluate(params.model.name, str(root), params_path)
    write_json_atomic(root / "metrics" / "dense.json", result)
    with tracking.run(root, params.tracking.experiment, "dense_eval",
                      {"model": params.model.model_dump(), "eval": params.eval.model_dump()}):
        tracking.log_metrics(result)
    return result


if __name__ == "__main__":
    sys.exit(run_main(dense_eval, __doc__))
