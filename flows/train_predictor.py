"""Stage `train_predictor`: the CNN performance predictor, trained on the collected mask dataset.

Outputs: models/predictor/predictor.safetensors (weights + what they were trained for),
plots/predictor/{heldout.csv, loss.csv, scatter.png} and metrics/predictor.json (held-out MAE,
RMSE, Spearman, Kendall, R², max error; predictor vs real evaluation time on the same policies).
MLflow: one run with the params, metrics, plots and the model, registered as
``tracking.predictor_name``; the ``champion`` alias moves only if the new version beats the
champion on this held-out set.

Training is a cached Prefect task (dataset hash + predictor params + code): rerunning the flow
after a crash in the later steps does not retrain.
Run: ``python -m flows.train_predictor [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from prefect import flow, task

from flows.common import CACHE, ROOT, run_main
from ppf import tracking
from ppf.config import Params, load_params
from ppf.io import write_json_atomic
from ppf.predictor import Predictor, image_shape, recipe
from ppf.workbench import Workbench


@task(cache_policy=CACHE, persist_result=True)
def train(root: str, dataset: str, predictor: dict, params: Params) -> dict:
    """Fit on the training rows; return the weights, the loss curve and held-out predictions."""
    data = recipe.prepare_data(Workbench(Path(root), params))
    if data.digest != dataset:
        raise RuntimeError("the mask dataset changed while the flow ran; rerun it")
    config = recipe.net_config(params, data.images.shape[1])
    net, history, pred, held_out = recipe.train_and_score(data, config, recipe.train_config(params))
    return {"state": net.state_dict(), "config": config.to_dict(), "history": history,
            "pred": pred.tolist(), "held_out": held_out}


@flow(name="train_predictor")
def train_predictor_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    pp = params.predictor
    wb = Workbench(root, params)
    data = recipe.prepare_data(wb)
    result = train(str(root), data.digest, pp.model_dump(), params)
    net = recipe.network(result["config"], result["state"])
    held_out = result["held_out"]
    meta = {"model": data.planner.model, "input": pp.input, "signal": data.signal, "image_shape": list(image_shape(data.planner.shape, pp.input)),
            "dataset": data.digest, "pruning": params.pruning.model_dump(), "held_out": held_out,
            "split": pp.split, "test_fraction": pp.test_fraction, "seed": pp.seed}
    table = recipe.heldout_table(data, np.asarray(result["pred"], dtype=np.float32))
    paths = recipe.write_outputs(root, net.eval(), meta, table, result["history"], held_out)
    metrics = recipe.summary(data, held_out) | recipe.speed(wb, Predictor(net, meta, data.planner), data, pp.speed_samples)
    write_json_atomic(root / "metrics" / "predictor.json", metrics)
    return {**metrics, "registry": _track(root, params, result["history"], metrics, paths, data, held_out)}


def _track(root: Path, params: Params, history: list[float], metrics: dict, paths: dict, data, held_out: dict) -> dict:
    """MLflow: the run (loss curve, metrics, plots) and the registered version (champion if better)."""
    pp = params.predictor
    with tracking.run(root, params.tracking.experiment, "train_predictor",
                      {"predictor": pp.model_dump(), "model": params.model.model_dump(), "dataset": data.digest},
                      tags={"stage": "train_predictor"}):
        for epoch, loss in enumerate(history, 1):
            tracking.log_metrics({"train_mse": loss}, step=epoch)
        tracking.log_metrics(metrics)
        for key in ("scatter", "heldout", "loss"):
            tracking.log_artifact(paths[key], "plots")
        return recipe.register(params, paths["predictor"], data, held_out,
                               {"dataset": data.digest, "model": data.planner.model, "input": pp.input,
                                "signal": data.signal})


if __name__ == "__main__":
    sys.exit(run_main(train_predictor_flow, __doc__))
