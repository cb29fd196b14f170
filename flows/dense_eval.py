"""Stage `dense_eval`: the unpruned model's perplexity and zero-shot accuracy — the reference.

Output: metrics/dense.json (perplexity per split, lm-eval accuracy per task and their mean).
Run: ``python -m flows.dense_eval [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import ROOT, Params, finish, load_params, run_main
from ppf.recipes import dense_eval as R


@task
def evaluate(root: Path, params: Params) -> dict:
    return R.evaluate(root, params)


@flow(name="dense_eval")
def dense_eval(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """Evaluate the base model named in params; return what is written to metrics/dense.json."""
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    return finish(root, params, "dense_eval", evaluate(root, params),
                  {"model": params.model.model_dump(), "eval": params.eval.model_dump()}, "dense.json")


if __name__ == "__main__":
    sys.exit(run_main(dense_eval, __doc__))
