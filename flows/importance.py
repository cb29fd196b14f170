"""Stage `importance`: score the dense model once — layer H for lod/esd/bi/uniform, head/channel scores.

Output: data/importance/<model>-<key>.{json,safetensors} (read by every later stage and by
`ppf prune`, so no policy evaluation ever runs the dense model over calibration data again), with
BlockPruner's greedy block order up to ``benchmark.blockpruner.order_ratio``
(<model>-blockorder-<key>.json: ``blocks=N`` policies and the blockpruner baseline), and
metrics/importance.json (seconds per part, the H vectors, the block order).
Run: ``python -m flows.importance [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import ROOT, Params, finish, load_params, run_main
from ppf.recipes import importance as R


@task
def score(root: Path, params: Params) -> dict:
    return R.score(root, params)


@flow(name="importance")
def importance_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    return finish(root, params, "importance", score(root, params),
                  {"model": params.model.model_dump(), "pruning": params.pruning.model_dump(),
                   "calibration": params.calibration.model_dump(),
                   "blockpruner": params.benchmark.blockpruner.model_dump()})


if __name__ == "__main__":
    sys.exit(run_main(importance_flow, __doc__))
