"""The whole pipeline as one flow on a tiny project; a second run is served by the caches."""

from __future__ import annotations

import pytest
from tiny import TINY_PIPELINE, edit_params

from flows.pipeline import pipeline_flow
from ppf.errors import PPFError


def test_the_pipeline_runs_end_to_end_and_reruns_from_cache(tiny_project, monkeypatch):
    edit_params(tiny_project, **TINY_PIPELINE)
    edit_params(tiny_project, benchmark={"methods": ["dense", "owl", "shortgpt", "ppf"], "ratios": [0.34],
                                         "max_windows": 2, "zero_shot_limit": 2, "speed_seqlen": 8, "speed_batch": 1,
                                         "new_tokens": 2})
    first = pipeline_flow("params.yaml", root=str(tiny_project))
    assert list(first["seconds"]) == ["prepare", "dense_eval", "importance", "collect", "train_predictor",
                                      "active", "train_agent", "benchmark", "recover"]
    # active learning: rounds of real evaluations of the predictor's proposals, none a dataset row
    import json

    import pandas as pd

    active = json.loads((tiny_project / "metrics" / "active.json").read_text())
    rounds = TINY_PIPELINE["active"]["rounds"]
    assert [k for k in active if k.startswith("round_")] == [f"round_{i}" for i in range(1, rounds + 1)]
    rows = pd.read_parquet(tiny_project / "data" / "active" / "rows.parquet")
    dataset = pd.read_parquet(tiny_project / "data" / "masks" / "samples.parquet")
    assert not set(rows.key) & set(dataset.key) and not rows.key.duplicated().any()
    assert len(rows) == active["evaluated"] == sum(active[f"round_{i}"]["proposed"] for i in range(1, rounds + 1))
    assert (tiny_project / "models" / "predictor_active" / "predictor.safetensors").stat().st_size > 0
    assert (tiny_project / "plots" / "active" / "curve.png").stat().st_size > 0
    for f in ("data/masks/samples.parquet", "models/predictor/predictor.safetensors", "models/agent/agent.safetensors",
              "results/agent_validation.csv", "results/benchmark.csv", "metrics/benchmark.json", "results/recover.md",
              "models/pruned/ppf-0.34/model.safetensors"):
        assert (tiny_project / f).stat().st_size > 0, f

    # second run: no sample, judged policy, benchmark cell or recovery is computed again
    import ppf.recipes.validation as validation
    import ppf.recipes.benchmark as bench
    from ppf.recipes import collect as collect_lib

    def boom(*a, **k):
        raise AssertionError("cached work was recomputed")

    monkeypatch.setattr(collect_lib, "evaluate", boom)
    monkeypatch.setattr(validation, "judge", boom)
    monkeypatch.setattr(bench, "evaluate", boom)
    monkeypatch.setattr("ppf.recipes.recover.distill", boom)
    pipeline_flow("params.yaml", root=str(tiny_project), stages=["collect", "train_agent", "benchmark", "recover"])


def test_an_unknown_stage_is_refused(tiny_project):
    with pytest.raises(PPFError, match="unknown stage 'colect'"):
        pipeline_flow("params.yaml", root=str(tiny_project), stages=["colect"])
