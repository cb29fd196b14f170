"""The whole pipeline as one Prefect flow: prepare → importance → collect → train_predictor →
active → train_agent → benchmark → recover (dense_eval alongside), each stage a subflow whose work is cached tasks.

DVC (`dvc repro`) decides which stages must run from their deps and params; this flow is the
same chain for Prefect deployments and for running without DVC. A run killed midway resumes from
the cached tasks of the stage it was in (collection per sample, validation per policy, benchmark
per cell, recovery per saved state); finished stages rerun in seconds from their caches.
Run: ``python -m flows.pipeline [--params params.yaml]``.
"""

from __future__ import annotations

import sys
import time

from prefect import flow

from flows.active import active_flow
from flows.benchmark import benchmark_flow
from flows.collect import collect
from flows.common import PPFError, run_main
from flows.dense_eval import dense_eval
from flows.importance import importance_flow
from flows.prepare import prepare
from flows.recover import recover_flow
from flows.train_agent import train_agent_flow
from flows.train_predictor import train_predictor_flow

STAGES = {
    "prepare": prepare, "dense_eval": dense_eval, "importance": importance_flow, "collect": collect,
    "train_predictor": train_predictor_flow, "active": active_flow, "train_agent": train_agent_flow,
    "benchmark": benchmark_flow, "recover": recover_flow,
}


@flow(name="pipeline")
def pipeline_flow(params_path: str = "params.yaml", root: str | None = None,
                  stages: list[str] | None = None) -> dict:
    """Run ``stages`` (default: all, in order); return each stage's seconds."""

    chosen = list(STAGES) if stages is None else list(stages)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise PPFError(f"unknown stage {unknown[0]!r}; use some of {', '.join(STAGES)}")
    seconds = {}
    for name in STAGES:  # always in pipeline order
        if name in chosen:
            start = time.perf_counter()
            STAGES[name](params_path, root)
            seconds[name] = time.perf_counter() - start
    return {"seconds": seconds}


if __name__ == "__main__":
    sys.exit(run_main(pipeline_flow, __doc__))
