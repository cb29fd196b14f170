"""Stage `importance`: score the dense model once — layer H for lod/esd/bi/uniform, head/channel scores.

Output: data/importance/<model>-<key>.{json,safetensors} (read by every later stage and by
`ppf prune`, so no policy evaluation ever runs the dense model over calibration data again), and
metrics/importance.json (seconds per part, the H vectors).
Run: ``python -m flows.importance [--params params.yaml]``.
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
def score(root: str, params_path: str) -> dict:
    from ppf.engine import importance, token_batches
    from ppf.models import load

    params = load_params(Path(root) / params_path)
    model, tokenizer = load(params.model.name, params.model.dtype, params.model.device)
    calib, _ = token_batches(Path(root), params.model.name, tokenizer, params)
    imp = importance(model, params.model.name, calib, params, Path(root) / "data" / "importance")
    return {"layer": imp.layer, "seconds": imp.meta.get("timings", {}), "unit_importance": imp.meta["unit_importance"]}


@flow(name="importance")
def importance_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    result = score(str(root), params_path)
    write_json_atomic(root / "metrics" / "importance.json", result)
    with tracking.run(root, params.tracking.experiment, "importance",
                      {"model": params.model.model_dump(), "pruning": params.pruning.model_dump(),
                       "calibration": params.calibration.model_dump()}):
        tracking.log_metrics({"seconds": result["seconds"]})
        tracking.log_dict(result, "importance.json")
    return result


if __name__ == "__main__":
    sys.exit(run_main(importance_flow, __doc__))
