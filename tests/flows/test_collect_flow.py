"""The `collect` flow on a tiny project: dataset contents, resume after a crash, no duplicates."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from flows.collect import collect
from flows.prepare import prepare


def _setup(project, n: int = 6):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["collect"] = {"n_samples": n, "ratios": [0.2, 0.5, 0.1]}
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
    from ppf import collect as C

    _setup(tiny_project)
    real = C.SampleEvaluator.evaluate
    calls = {"n": 0, "done": 0}

    def dies_on_the_fourth(self, sample):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        row = real(self, sample)
        calls["done"] += 1
        return row

    monkeypatch.setattr(C.SampleEvaluator, "evaluate", dies_on_the_fourth)
    with pytest.raises(BaseException):
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
    monkeypatch.setattr(C.SampleEvaluator, "evaluate", real)
    # an uninterrupted run in a second copy of the project gives the same dataset
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_project, other)
    (other / "data" / "masks" / "samples.parquet").unlink()
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["js"]["batch_size"] = 1  # another context: nothing comes from the first run's cache
    (other / "params.yaml").write_text(yaml.safe_dump(params))
    collect("params.yaml", root=str(other))
    fresh = pd.read_parquet(other / "data" / "masks" / "samples.parquet")
    pd.testing.assert_series_equal(fresh.key, resumed.key)
    assert (fresh.js - resumed.js).abs().max() < 1e-5
