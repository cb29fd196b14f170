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
import mlflow.pyfunc


# read once: mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into the environment itself
_USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def store_dir(root: str | Path) -> Path:
    """The project's ``mlruns/``. A ``dvc exp run --temp`` (or queued) experiment runs in a copy under
    ``<project>/.dvc/tmp/exps/``, which DVC deletes afterwards: its runs go to the project's store."""
    parts = Path(root).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i]) / "mlruns"
    return Path(root).resolve() / "mlruns"


def configure(root: str | Path) -> str:
    """Point mlflow at the project's store; return the tracking URI."""
    store = store_dir(root)
    store.mkdir(parents=True, exist_ok=True)
    uri = _USER_URI or f"sqlite:///{store / 'mlflow.db'}"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _git_commit(root: Path) -> str:
    """The project's HEAD commit (+ "-dirty" with uncommitted changes), or "unknown" outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _experiment_id(root: Path, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = store_dir(root) / "artifacts"
    return mlflow.create_experiment(name, artifact_location=artifacts.as_uri())


@contextlib.contextmanager
def run(root: str | Path, experiment: str, name: str, params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None, nested: bool = False) -> Iterator[str]:
    """Open an MLflow run (flattened params logged); yield its run id."""
    root = Path(root).resolve()
    configure(root)
    exp_id = _experiment_id(root, experiment)
    tags = {"git_commit": _git_commit(root), **dict(tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=name, nested=nested, tags=tags) as r:
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


# ---- the model registry ------------------------------------------------------------------------
class _Served(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper of a registered ppf file: ``serving`` (:mod:`ppf.serving`, an object with
    ``load(path)`` and ``predict(loaded, inputs)``) does the work; MLflow pickles it by reference, so
    this module knows no ppf type."""

    _skip_type_hint_validation = True  # inputs are arrays or texts, not a schema mlflow could infer

    def __init__(self, serving: Any, kind: str) -> None:
        self.serving, self.kind = serving, kind

    def load_context(self, context):
        self.loaded = self.serving.load(context.artifacts[self.kind])

    def predict(self, context, model_input, params=None):
        return self.serving.predict(self.loaded, model_input)


def log_and_register(kind: str, path: str | Path, registered_name: str, serving: Any,
                     tags: Mapping[str, str] | None = None) -> str:
    """Log a ppf file (``kind`` = predictor | agent | pruned) as a pyfunc model served by ``serving``
    (:mod:`ppf.serving`) in the active run, register it, return the version. pip requirements are
    given, not inferred (inference is slow)."""
    import torch

    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the cloudpickle notice: our classes are importable
    info = mlflow.pyfunc.log_model(name=kind, python_model=_Served(serving, kind), artifacts={kind: str(path)},
                                   pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "safetensors"])
    mv = mlflow.register_model(info.model_uri, registered_name, tags=dict(tags or {}))
    return str(mv.version)


def champion(name: str, alias: str = "champion") -> dict[str, Any] | None:
    """The version holding ``alias`` ({version, run_id, tags}) or None (no model / no alias yet)."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags or {})}


def version_file(name: str, version: str, artifact: str, dst: str | Path) -> Path:
    """Download one artifact (e.g. the predictor file) of a registered model version into ``dst``."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    return root / "artifacts" / artifact


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


def set_run_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def load_registered(root: str | Path, name: str, load: Any, version: str = "latest"):
    """``load(directory)`` of a registered model's one artifact directory, e.g. a pruned checkpoint
    (:func:`ppf.serving.load_registered_pruned`); ``version`` is a number, ``latest`` or ``@alias``."""
    import tempfile

    configure(root)
    uri = f"models:/{name}{version}" if version.startswith("@") else f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        return load(next((local / "artifacts").iterdir()))  # the one checkpoint directory


# ---- comparing and promoting registered versions ----------------------------------------------
def registered_names(root: str | Path, prefix: str) -> list[str]:
    configure(root)
    return sorted(m.name for m in mlflow.MlflowClient().search_registered_models() if m.name.startswith(prefix))


def versions(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Every version of a registered model with its aliases, tags and its training run's metrics
    and params, oldest first."""
    configure(root)
    client = mlflow.MlflowClient()
    out = []
    for found in client.search_model_versions(f"name='{name}'"):
        mv = client.get_model_version(name, found.version)  # search results leave the aliases out
        run = client.get_run(mv.run_id) if mv.run_id else None
        out.append({"name": name, "version": str(mv.version), "aliases": list(mv.aliases or []),
                    "created": int(mv.creation_timestamp or 0), "run_id": mv.run_id, "tags": dict(mv.tags or {}),
                    "metrics": dict(run.data.metrics) if run else {}, "params": dict(run.data.params) if run else {},
                    "run_tags": dict(run.data.tags) if run else {}})
    return sorted(out, key=lambda v: int(v["version"]))


def promote(name: str, version: str, alias: str = "champion") -> str | None:
    """Give ``alias`` to ``version`` (in the configured store); the previous holder is remembered
    for :func:`rollback`. Returns it."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise LookupError(f"{name} has no version {version}") from None
    current = champion(name, alias)
    previous = current["version"] if current else None
    if previous is not None and previous != str(version):
        history = client.get_registered_model(name).tags.get(f"{alias}_history", "")
        client.set_registered_model_tag(name, f"{alias}_history", ",".join(filter(None, [history, previous])))
    client.set_registered_model_alias(name, alias, str(version))
    return previous


def rollback(name: str, alias: str = "champion") -> tuple[str | None, str]:
    """Give ``alias`` back to the version that held it before the last :func:`promote`: (from, to)."""
    client = mlflow.MlflowClient()
    history = [v for v in client.get_registered_model(name).tags.get(f"{alias}_history", "").split(",") if v]
    if not history:
        raise LookupError(f"{name}: no earlier {alias} to roll back to")
    current = champion(name, alias)
    client.set_registered_model_alias(name, alias, history[-1])
    client.set_registered_model_tag(name, f"{alias}_history", ",".join(history[:-1]))
    return (current["version"] if current else None), history[-1]
