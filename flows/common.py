"""What every flow shares: the cross-run cache policy, the per-process objects, the project root.

A flow imports only this module and the recipes (:mod:`ppf.recipes`); the params type, its loader
and the error type come from here.

Prefect's TASK_SOURCE hashes only a task's own body, so a change inside ``ppf`` would not
invalidate a cached result. ``CACHE`` adds a hash of every ppf source file to the inputs and the
task source, so cached results are reused across runs exactly while inputs and code are the same.
Tasks that use it return VALUES (texts, records, numbers), never paths to files that DVC may have
deleted: writing files is left to uncached tasks. Tasks take the typed ``params`` the flow read once;
it is left out of their cache key (``CACHE``), which holds instead the context keys that say what a
result depends on.

:func:`per_process` keeps ONE heavy object (a :class:`~ppf.workbench.Workbench` with its dense
model) per process, shared by the tasks of a flow run (threads, or each Dask worker).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TypeVar

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

import ppf
from ppf import tracking
from ppf.config import Params, load_params
from ppf.errors import PPFError
from ppf.io import write_json_atomic
from ppf.workbench import Workbench

__all__ = ["CACHE", "ROOT", "Params", "PPFError", "finish", "load_params", "per_process", "run_main", "workbench"]

ROOT = Path(__file__).resolve().parent.parent


@cache
def code_version() -> str:
    """sha256 over the ppf package sources (paths and contents)."""
    h = hashlib.sha256()
    pkg = Path(ppf.__file__).parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


CACHE: CachePolicy = (INPUTS - "params") + TASK_SOURCE + CachePolicy.from_cache_key_fn(lambda ctx, inputs: code_version())

T = TypeVar("T")
_HELD: dict[str, tuple[str, object]] = {}
_LOCK = threading.Lock()


def per_process(kind: str, key: str, make: Callable[[], T]) -> T:
    """The process's object of ``kind`` for ``key``, made once; another key replaces it (one dense
    model in memory at a time)."""
    with _LOCK:
        held = _HELD.get(kind)
        if held is None or held[0] != key:
            _HELD.clear()
            _HELD[kind] = (key, make())
        return _HELD[kind][1]  # type: ignore[return-value]


def workbench(root: Path, params, key: str, *warm: str, compute_importance: bool = False):
    """The process's :class:`~ppf.workbench.Workbench` for ``key``; ``warm`` names its attributes to
    compute inside the lock (e.g. ``reference``), so that threads never compute them twice."""
    def make():
        wb = Workbench(root, params, compute_importance)
        for attr in warm:
            getattr(wb, attr)
        return wb

    return per_process("workbench", key, make)


def finish(root: Path, params, stage: str, metrics: dict, run_params: dict, metrics_file: str | None = None) -> dict:
    """A stage's end: metrics/<stage>.json written atomically, and one MLflow run with its params and metrics."""
    name = metrics_file or f"{stage}.json"
    write_json_atomic(root / "metrics" / name, metrics)
    with tracking.run(root, params.tracking.experiment, stage, run_params):
        tracking.log_metrics(metrics)
        tracking.log_dict(metrics, name)
    return metrics


def _interrupted(signum, frame) -> None:
    import os
    import sys

    sys.stderr.write("\ninterrupted: finished work is cached; run the same command again "
                     "(e.g. `dvc repro`) to resume where it stopped\n")
    sys.stderr.flush()
    os._exit(130)


def run_main(flow_fn, doc: str, argv: list[str] | None = None) -> int:
    """`python -m flows.<stage> [--params P]`: run the flow, print its result as JSON.

    A PPFError (bad params, missing data) is one line on stderr and exit status 2. Ctrl-C stops at
    once with one line saying how to resume (exit 130): the terminal's SIGINT also reaches the
    temporary Prefect server, and a flow left to report its state to the dead server hangs and
    ends in a traceback. Nothing is lost by stopping hard: finished tasks are already persisted in
    the cache, and every output file is written atomically.
    """
    import argparse
    import json
    import signal
    import sys

    signal.signal(signal.SIGINT, _interrupted)

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    args = ap.parse_args(argv)
    try:
        result = flow_fn(args.params)
    except PPFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0
