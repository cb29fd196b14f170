"""The `collect` flow on a tiny project: dataset contents, resume after a crash, no duplicates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.collect import collect
from flows.prepare import prepare


def _setup(project, n: int = 6):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["collect"] = {"n_samples": n, "ratios": [0.2, 0.5, 0.1], "space": {"fraction": 0.0}, "within": {"ratios": []}}
    params["pruning"] = {"unit_importance": "activation"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    prepare("params.yaml", root=str(project))


def test_collect_writes_the_dataset(tiny_project):
    _setup(tiny_project)
    metrics = collect("params.yaml", root=str(tiny_project))
    df = pd.read_parquet(tiny_project / "data" / "masks" / "samples.parquet")
    assert len(df) == 6 == metrics["n_samples"] and df.key.is_unique and list(df.key) == sorted(df.key)
    assert (df.actual_ratio - df.ratio).abs().max() <= 0.005 + 1e-9
    assert (df.js > 0).all() and set(df.method) <= {"lod", "esd", "bi"}
    assert all(list(s) == [1, 3, 4] for s in df.mask_shape) and all(len(m) == 12 for m in df["mask"])


def test_a_killed_collection_resumes_without_loss_or_duplicates(tiny_project, tmp_path, monkeypatch):
    from ppf.recipes import collect as C

    _setup(tiny_project)
    real = C.evaluate
    calls = {"n": 0, "done": 0}

    def dies_on_the_fourth(wb, sample):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        row = real(wb, sample)
        calls["done"] += 1
        return row

    monkeypatch.setattr(C, "evaluate", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        collect("params.yaml", root=str(tiny_project))
    assert not (tiny_project / "data" / "masks" / "samples.parquet").exists()
    finished = calls["done"]
    assert 3 <= finished < 6
    calls["n"] = 100  # no more crashes; count what the rerun evaluates
    collect("params.yaml", root=str(tiny_project))
    evaluated_on_rerun = calls["done"] - finished
    assert evaluated_on_rerun == 6 - finished  # the finished ones came from Prefect's cache
    resumed = pd.read_parquet(tiny_project / "data" / "masks" / "samples.parquet")
    assert len(resumed) == 6 and resumed.key.is_unique
    monkeypatch.setattr(C, "evaluate", real)
    # an uninterrupted run in a second copy of the project gives the same dataset
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_project, other)
    (other / "data" / "masks" / "samples.parquet").unlink()
    params = yaml.safe_load((other / "params.yaml").read_text())
    params.setdefault("heldout", {})["batch_size"] = 1  # another context: nothing comes from the first run's cache
    (other / "params.yaml").write_text(yaml.safe_dump(params))
    collect("params.yaml", root=str(other))
    fresh = pd.read_parquet(other / "data" / "masks" / "samples.parquet")
    pd.testing.assert_series_equal(fresh.key, resumed.key)
    assert (fresh.js - resumed.js).abs().max() < 1e-5


def test_collection_runs_on_a_two_worker_dask_cluster_with_the_same_result(tiny_project, tmp_path):
    import shutil

    from distributed import Client, LocalCluster

    _setup(tiny_project, n=8)
    threads = collect("params.yaml", root=str(tiny_project))
    expected = pd.read_parquet(tiny_project / "data" / "masks" / "samples.parquet")
    # a second checkout of the same project: its samples are not in Prefect's cache (the root is a task
    # input), so the cluster evaluates every one of them
    other = Path(shutil.copytree(tiny_project, tmp_path / "other"))
    (other / "data" / "masks" / "samples.parquet").unlink()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        params = yaml.safe_load((other / "params.yaml").read_text())
        params["collect"] |= {"runner": "dask", "dask_address": cluster.scheduler_address}
        (other / "params.yaml").write_text(yaml.safe_dump(params))
        metrics = collect("params.yaml", root=str(other))
        per_worker = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker  # both worked
    df = pd.read_parquet(other / "data" / "masks" / "samples.parquet")
    assert metrics["n_samples"] == threads["n_samples"] == 8 and list(df.key) == list(expected.key)
    assert (df.js - expected.js).abs().max() < 1e-5  # same policies, same JS as in threads


def test_dask_runner_without_an_address_starts_a_local_cluster_of_collect_workers():
    from prefect_dask import DaskTaskRunner

    from flows.collect import task_runner
    from ppf.config import CollectParams

    runner = task_runner(CollectParams(runner="dask", workers=2))
    assert isinstance(runner, DaskTaskRunner) and runner.cluster_kwargs["n_workers"] == 2
    remote = task_runner(CollectParams(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"
