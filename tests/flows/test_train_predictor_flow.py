"""`train_predictor` on a tiny project: outputs, registry champion rule, `ppf predict`, mismatches."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from tiny import TINY_PIPELINE, edit_params, run_cli

from flows.collect import collect
from flows.prepare import prepare
from flows.train_predictor import train_predictor_flow

KEYS = {"n_train", "n_test", "mae", "rmse", "spearman", "kendall", "r2", "max_error", "signal", "signal_min", "signal_max",
        "predictor_ms", "true_eval_ms", "speedup", "batch_speedup", "batch_ms_per_policy"}


@pytest.fixture
def trained(tiny_project):
    edit_params(tiny_project, **TINY_PIPELINE)
    edit_params(tiny_project, collect={"n_samples": 16}, predictor={"epochs": 4})
    prepare("params.yaml", root=str(tiny_project))
    collect("params.yaml", root=str(tiny_project))
    result = train_predictor_flow("params.yaml", root=str(tiny_project))
    return tiny_project, result


def test_training_writes_metrics_plots_and_a_registered_champion(trained):
    project, result = trained
    metrics = json.loads((project / "metrics" / "predictor.json").read_text())
    assert KEYS <= set(metrics)
    assert metrics["n_train"] + metrics["n_test"] == 16 and metrics["speedup"] > 1
    assert metrics["batch_policies"] >= 256 and metrics["batch_speedup"] > metrics["speedup"] * 0.5
    assert metrics["speed_signal_reproduced"] < 1e-6  # the real evaluation reproduced the collected JS
    for f in ("models/predictor/predictor.safetensors", "plots/predictor/scatter.png",
              "plots/predictor/heldout.csv", "plots/predictor/loss.csv"):
        assert (project / f).stat().st_size > 0
    heldout = pd.read_csv(project / "plots" / "predictor" / "heldout.csv")
    assert len(heldout) == metrics["n_test"]
    assert result["registry"] == {"version": "1", "champion": True, "reason": "no champion yet"}


def test_the_champion_moves_only_for_a_better_predictor(trained):
    from ppf import tracking

    project, first = trained
    edit_params(project, predictor={"lr": 1e-9})  # barely moves from its random start: worse on the same held-out set
    second = train_predictor_flow("params.yaml", root=str(project))["registry"]
    assert second["version"] == "2" and not second["champion"]
    assert "vs champion v1" in second["reason"] and "same data" in second["reason"]
    tracking.configure(project)
    assert tracking.champion("ppf-predictor")["version"] == "1"
    edit_params(project, predictor={"lr": 0.003, "epochs": 30})
    third = train_predictor_flow("params.yaml", root=str(project))["registry"]
    assert third["champion"] == (json.loads((project / "metrics" / "predictor.json").read_text())["mae"]
                                 < first["mae"])


def test_ppf_predict_and_verify_on_a_collected_policy(trained, capsys, monkeypatch):
    project, _ = trained
    monkeypatch.chdir(project)
    model = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    row = pd.read_parquet(project / "data" / "masks" / "samples.parquet").iloc[3]
    policy = "uniform" if row.a_eta == 0 else f"{row.method}:{row.a_eta}"
    code, out, err = run_cli(["predict", "--model", model, "--ratio", str(row.ratio), "--policy", policy,
                           "--verify", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert abs(report["true"] - row.js) < 1e-6 and report["predicted"] > 0 and report["signal"] == "js"
    code, out, err = run_cli(["predict", "--model", model, "--ratio", "0.3", "--predictor", "registry:champion",
                           "--json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["predict", "--model", model, "--predictor", "registry:7"], capsys)
    assert code == 2 and "version '7'" in err
    code, _, err = run_cli(["predict", "--model", model, "--predictor", str(project / "nowhere")], capsys)
    assert code == 2 and "no trained predictor" in err


def test_a_dataset_collected_with_other_settings_is_refused(trained):
    from ppf.errors import PPFError

    project, _ = trained
    edit_params(project, pruning={"max_layer_ratio": 0.5})  # other plans for the same policies
    with pytest.raises(PPFError, match="stored mask differs|cannot be met|above what any policy"):
        train_predictor_flow("params.yaml", root=str(project))


def test_compare_promote_and_rollback_registered_versions(trained, capsys, monkeypatch):
    project, _ = trained
    edit_params(project, predictor={"lr": 1e-9})
    train_predictor_flow("params.yaml", root=str(project))  # v2, worse: v1 stays champion
    monkeypatch.chdir(project)
    code, out, err = run_cli(["compare", "predictor", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["version"] for r in rows] == ["1", "2"] and rows[0]["aliases"] == ["champion"] and not rows[1]["aliases"]
    assert rows[0]["metrics"]["mae"] < rows[1]["metrics"]["mae"] and rows[0]["tags"]["dataset"]
    assert rows[1]["run_tags"]["git_commit"]  # which code trained it ("unknown" outside git)
    code, out, _ = run_cli(["compare", "predictor"], capsys)
    assert code == 0 and "ppf-pred" in out and "✓" in out  # (names may fold in a narrow table)
    code, out, _ = run_cli(["promote", "ppf-predictor", "2"], capsys)
    assert code == 0 and "champion 1 -> 2" in out
    code, out, _ = run_cli(["rollback", "ppf-predictor"], capsys)
    assert code == 0 and "champion 2 -> 1" in out
    code, _, err = run_cli(["rollback", "ppf-predictor"], capsys)
    assert code == 2 and "no earlier champion" in err
    code, _, err = run_cli(["promote", "ppf-predictor", "9"], capsys)
    assert code == 2 and "no version 9" in err
    code, _, err = run_cli(["compare", "pruned"], capsys)
    assert code == 2 and "no registered pruned versions" in err


def test_another_signal_is_learned_from_its_column_and_replaces_a_champion_of_another_signal(trained):
    from ppf.recipes.agent import predictor_scorer
    from ppf.config import load_params
    from ppf.policy import Policy
    from ppf.predictor import Predictor
    from ppf.workbench import Workbench

    project, _ = trained
    edit_params(project, predictor={"signal": "nll"})
    result = train_predictor_flow("params.yaml", root=str(project))
    metrics = json.loads((project / "metrics" / "predictor.json").read_text())
    df = pd.read_parquet(project / "data" / "masks" / "samples.parquet")
    assert metrics["signal"] == "nll" and metrics["signal_min"] == pytest.approx(df.nll.min())
    assert metrics["speed_signal_reproduced"] < 1e-6  # the real evaluation measured the same NLL
    heldout = pd.read_csv(project / "plots" / "predictor" / "heldout.csv")
    assert heldout["true"].to_numpy() == pytest.approx(df.set_index("key").nll[heldout.key].to_numpy(), abs=1e-6)
    # the js champion cannot be re-scored on NLL: the project now learns nll, the new version takes over
    assert "not comparable" in result["registry"]["reason"] and result["registry"]["champion"]
    predictor = Predictor.load(project / "models" / "predictor",
                               Workbench(project, load_params(project / "params.yaml")).planner)
    assert predictor.signal == "nll"
    score, actual = predictor_scorer(predictor)(Policy("lod", 0.2), 0.3)  # what the agent's reward divides
    assert score == pytest.approx(predictor.predict(Policy("lod", 0.2), 0.3)["score"]) and 0 < actual < 1
