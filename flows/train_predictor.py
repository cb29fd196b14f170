"""Stage `train_predictor`: the CNN performance predictor, trained on the collected mask dataset.

Outputs: models/predictor/predictor.safetensors (weights + what they were trained for),
plots/predictor/{heldout.csv, loss.csv, scatter.png} and metrics/predictor.json (held-out MAE,
RMSE, Spearman, Kendall, R², max error; predictor vs real evaluation time on the same policies).
MLflow: one run with the params, metrics, plots and the model, registered as
``tracking.predictor_name``; the ``champion`` alias moves only if the new version beats the
champion on this held-out set (:mod:`ppf.recipes.predictor`).

Training is a cached Prefect task (dataset hash + predictor params + code): rerunning the flow
after a crash in the later steps does not retrain.
Run: ``python -m flows.train_predictor [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, Params, load_params, run_main
from ppf.recipes import predictor as R


@task(cache_policy=CACHE, persist_result=True)
def train(root: str, dataset: str, predictor: dict, params: Params) -> dict:
    """Fit on the training rows; return the weights, the loss curve and held-out predictions."""
    return R.trained(Path(root), params, dataset)


@flow(name="train_predictor")
def train_predictor_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    wb, data = R.project_data(root, params)
    result = train(str(root), data.digest, params.predictor.model_dump(), params)
    return R.publish(root, params, wb, data, result)


if __name__ == "__main__":
    sys.exit(run_main(train_predictor_flow, __doc__))
