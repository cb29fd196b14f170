"""MLflow, in one place.

This is the only module that imports mlflow. Runs go to a SQLite store at an ABSOLUTE path inside
the project (``mlruns/mlflow.db``) with artifacts under ``mlruns/artifacts`` — the file store is
in maintenance mode, and an absolute path keeps the store valid whatever the working directory.
``MLFLOW_TRACKING_URI`` in the environment overrides the store (e.g. a shared server).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def configure(root: str | Path) -> str:
    """Point mlflow at the project's store; return the tracking URI."""
    root = Path(root).resolve()
    store = root / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    return uri


def _experiment_id(root: Path, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (root / "mlruns" / "artifacts").resolve()
    return mlflow.create_experiment(name, artifact_location=artifacts.as_uri())


@contextlib.contextmanager
def run(root: str | Path, experiment: str, name: str, params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None, nested: bool = False) -> Iterator[str]:
    """Open an MLflow run (flattened params logged); yield its run id."""
    root = Path(root).resolve()
    configure(root)
    exp_id = _experiment_id(root, experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=name, nested=nested, tags=dict(tags or {})) as r:
        if params:
            flat = {k: ("None" if v is None else str(v))[:500] for k, v in _flatten(params).items()}
            mlflow.log_params(flat)
        yield r.info.run_id


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log the numeric leaves of a (nested) mapping as metrics."""
    flat = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if flat:
        mlflow.log_metrics(flat, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(data: Mapping[str, Any], filename: str) -> None:
    mlflow.log_dict(dict(data), filename)


def runs(root: str | Path, experiment: str) -> list[dict[str, Any]]:
    """All runs of an experiment as plain dicts (newest first) — for tests and `ppf` reports."""
    configure(root)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    df = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    return df.to_dict("records")
