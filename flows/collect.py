"""Stage `collect`: the mask dataset — sampled policies evaluated for real (prune + JS).

Output: data/masks/samples.parquet (one row per policy: method, a_eta, the extended parts of the
policy (``parts``; ``collect.space``), whether it belongs to the within-ratio test set
(``holdout``; ``collect.within``), target and actual ratio, per-layer ratios, removed blocks,
compressed mask, JS, PPR; sorted by key) and metrics/collect.json (counts and
timings: the dataset itself holds only what the same params reproduce bit for bit).

Each sample is one Prefect task cached across runs on (sample, evaluation context, task source,
ppf code): a run killed midway resumes without re-evaluating finished samples, and rows are
assembled from the sample list, so none is lost or duplicated. The dense model is loaded lazily,
once per process, only when some sample is not cached yet.

Scale-out: the flow code is the same on every task runner; ``collect.runner`` picks it.
``threads`` evaluates ``collect.workers`` samples at once in this process; ``dask`` submits them
to a Dask cluster (prefect-dask): the one at ``collect.dask_address``, or a local cluster of
``collect.workers`` worker processes. Each worker loads the model once and evaluates its share; the
results come back to the flow, which alone writes the dataset. (``RayTaskRunner`` from prefect-ray
plugs in the same way through ``collect_flow.with_options``.)
Run: ``python -m flows.collect [--params params.yaml]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import CACHE, ROOT, Params, PPFError, finish, load_params, run_main, workbench
from ppf.recipes import collect as R


@task(cache_policy=CACHE, persist_result=True, task_run_name="{method}:{a_eta}{parts}@{ratio}")
def evaluate_sample(method: str, a_eta: float, ratio: float, parts: str, holdout: bool, context: str, root: str,
                    params: Params) -> dict:
    wb = workbench(Path(root), params, context, "planner", "reference", compute_importance=True)
    return R.evaluate(wb, R.Sample(method, a_eta, ratio, parts, holdout))


@flow(name="collect", task_runner=ThreadPoolTaskRunner(max_workers=1))
def collect_flow(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """Evaluate the sampled policies (cached per sample) and write the parquet dataset."""
    root = Path(root or ROOT)
    params = load_params(root / params_path)
    c = params.collect
    samples = R.samples_of(root, params)
    context = R.context_key(root, params)
    start = time.perf_counter()
    futures = [evaluate_sample.submit(s.method, s.a_eta, s.ratio, s.parts, s.holdout, context, str(root), params)
               for s in samples]
    df = R.write_dataset(root, [f.result() for f in futures])
    return finish(root, params, "collect", R.summary(df, time.perf_counter() - start),
                  {"collect": c.model_dump(), "model": params.model.model_dump(), "context": context})


def task_runner(c):
    """The task runner ``collect.runner`` asks for (the flow code does not change with it)."""
    if c.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=c.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:  # pragma: no cover - prefect-dask is a dependency of ppf
        raise PPFError("collect.runner is 'dask' but prefect-dask is not installed; pip install prefect-dask") from None
    if c.dask_address:
        return DaskTaskRunner(address=c.dask_address)
    # threads_per_worker=1: torch already uses the cores; one sample per worker process at a time
    return DaskTaskRunner(cluster_kwargs={"n_workers": c.workers, "threads_per_worker": 1, "processes": True,
                                         "dashboard_address": None})


def collect(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """The flow on the task runner of ``collect.runner`` / ``collect.workers``."""
    c = load_params(Path(root or ROOT) / params_path).collect
    return collect_flow.with_options(task_runner=task_runner(c))(params_path, root)


if __name__ == "__main__":
    sys.exit(run_main(collect, __doc__))
