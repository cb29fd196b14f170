"""`benchmark` on a tiny project: every method at a ratio, the outputs, resume, registered models."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ppf.config import load_params
import yaml
from tiny import TINY_PIPELINE, edit_params, run_cli

from flows.active import active_flow
from flows.benchmark import benchmark_flow
from flows.collect import collect
from flows.prepare import prepare
from flows.train_agent import train_agent_flow
from flows.train_predictor import train_predictor_flow

COLUMNS = {"method", "target_ratio", "actual_ratio", "ppl_test", "zs_mean", "tokens_per_s", "peak_mem_mb"}


@pytest.fixture
def bench_project(tiny_project):
    edit_params(tiny_project, **TINY_PIPELINE)
    edit_params(tiny_project, benchmark={"ratios": [0.34], "max_windows": 2, "zero_shot_limit": 2, "speed_seqlen": 8,
                                         "speed_batch": 1, "new_tokens": 2, "llm_pruner_keep": [1, 0],
                                         "blockpruner": {"n_samples": 2, "seqlen": 16}})
    for stage in (prepare, collect, train_predictor_flow, active_flow, train_agent_flow):
        stage("params.yaml", root=str(tiny_project))
    return tiny_project


def test_benchmark_runs_every_method_and_resumes(bench_project, monkeypatch, capsys):
    result = benchmark_flow("params.yaml", root=str(bench_project))
    df = pd.read_csv(bench_project / "results" / "benchmark.csv")
    assert COLUMNS <= set(df.columns)
    assert (df.ppl_test_ci_lo <= df.ppl_test + 1e-6).all() and (df.ppl_test <= df.ppl_test_ci_hi + 1e-6).all()
    others = df[~df.method.isin(["ppf", "dense"])]  # each compared with PPF in its own setting (configured / none)
    assert others.ppf_vs_ci_lo.notna().all() and (others.ppf_vs_ci_lo <= others.ppf_vs_ci_hi).all()
    assert set(others.compensation) == {"lsq", "mean", "none"}
    assert df[df.method == "ppf"].ppf_vs_pct.isna().all()
    assert (df[df.method == "dense"].js_test == 0).all() and (df[df.method != "dense"].js_test > 0).all()
    windows = pd.read_csv(bench_project / "results" / "benchmark_windows.csv")
    assert len(windows) == 2 * len(df) and (windows.nll > 0).all()
    assert "95 % interval" in (bench_project / "results" / "benchmark.md").read_text()
    code, out, _ = run_cli(["summary", "--params", str(bench_project / "params.yaml")], capsys)
    assert code == 0 and "PPF vs the best re-run baseline" in out and "models/unrecovered/ppf-0.34" in out
    assert any(v in out for v in ("win", "loss", "tie")) and "next:" in out
    assert set(df.method) == {"dense", "llm_pruner", "owl", "alpha", "shortgpt", "blockpruner", "ppf"}
    assert len(df) == 1 + 2 * 6 and (df[df.method == "dense"].actual_ratio == 0).all()  # with and without compensation
    width = df[df.method.isin(["llm_pruner", "owl", "alpha", "ppf"])]
    assert ((width.actual_ratio - 0.34).abs() <= 0.02 + 1e-9).all()
    assert df[df.method == "shortgpt"].actual_ratio.iloc[0] == pytest.approx(1 / 3, abs=1e-3)  # 1 of 3 layers
    pruned = df[df.method != "dense"]
    assert (pruned.params < df[df.method == "dense"].params.iloc[0]).all()
    assert (df.ppl_test > 1).all() and (df.js_test >= 0).all()
    # the cells with their configured compensation are measured in full; those without (benchmark.uncompensated:
    # ppl) only for test perplexity and JS
    from ppf.recipes.benchmark import as_configured

    full = as_configured(df, load_params(bench_project / "params.yaml"))
    assert full.zs_mean.between(0, 1).all() and (full.peak_mem_mb > 0).all() and len(full) == 7
    plain = df.drop(full.index)
    assert len(plain) == 6 and plain.zs_mean.isna().all() and plain.tokens_per_s.isna().all()
    for f in ("results/benchmark.md", "plots/benchmark/ppl.png", "plots/benchmark/zeroshot.png",
              "plots/benchmark/speed.png", "models/unrecovered/ppf-0.34/model.safetensors"):
        assert (bench_project / f).stat().st_size > 0
    metrics = json.loads((bench_project / "metrics" / "benchmark.json").read_text())
    assert "best_baseline" in metrics["0.34"] and "ppf_ppl" in metrics["0.34"]
    assert result["saved"] == {"0.34": str(bench_project / "models" / "unrecovered" / "ppf-0.34")}
    card = (bench_project / "models" / "unrecovered" / "ppf-0.34" / "README.md").read_text()
    ppf_ppl = df[(df.method == "ppf") & (df.compensation == "lsq")].ppl_test.iloc[0]
    assert f"{ppf_ppl:.2f}" in card and "trust_remote_code=True" in card  # the measured perplexity, how to load it

    # a rerun takes every cell from the cache: no model is built again
    import ppf.recipes.benchmark as B

    def boom(*a, **k):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(B, "evaluate", boom)
    benchmark_flow("params.yaml", root=str(bench_project))


def test_ppf_benchmark_command_resumes_from_finished_cells(bench_project, monkeypatch, capsys):
    import sys

    import ppf.recipes.benchmark as B
    from ppf.cli import main

    monkeypatch.chdir(bench_project)
    model = yaml.safe_load((bench_project / "params.yaml").read_text())["model"]["name"]
    argv = ["ppf", "benchmark", "--model", model, "--methods", "owl,shortgpt", "--ratios", "0.34",
            "--out", str(bench_project / "mine.csv")]
    real, calls = B.evaluate, []

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(B, "evaluate", dies_on_the_second)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130 and not (bench_project / "mine.csv").exists()
    monkeypatch.setattr(B, "evaluate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    main()
    assert len(calls) == 2 + 3  # (owl, lsq) came from the cache; (owl, none) and shortgpt's two were evaluated
    df = pd.read_csv(bench_project / "mine.csv")
    assert list(zip(df.method, df.compensation, strict=True)) == [("owl", "lsq"), ("owl", "none"), ("shortgpt", "mean"),
                                                                   ("shortgpt", "none")]
    assert "owl" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", argv[:3] + [model, "--methods", "owl,magic"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "unknown method 'magic'" in capsys.readouterr().err


def test_table2_marks_unmeasured_zero_shot_with_a_dash():
    from ppf.recipes.benchmark import table2

    df = pd.DataFrame({"method": ["dense", "llm_pruner", "ppf"], "target_ratio": [0.0, 0.2, 0.2],
                       "ppl_test": [20.0, 40.0, 35.0], "zs_mean": [0.8, float("nan"), 0.75]})
    rows = table2(df).splitlines()
    assert rows[2] == "| dense | 20.00 | 0.800 |"
    assert rows[3] == "| llm_pruner | 40.00 | – |"
    assert rows[4] == "| ppf | **35.00** | 0.750 |"
    assert "nan" not in table2(df)


def test_zero_shot_is_compared_paired_on_the_same_examples_and_the_tasks_report_chance_and_sensitivity(tmp_path):
    """Synthetic cells: PPF right on 30 more examples of 100 per task than LLM-Pruner → a zero-shot win; the
    tasks section names chance, dense above it, and dense vs ShortGPT at 40 % paired."""
    import numpy as np

    from ppf.data.tasks import CORPUS_TEST, build_tasks
    from ppf.recipes.benchmark import compare, examples, markdown, summary

    from tests.ppf.test_tasks import TEXT

    build_tasks({CORPUS_TEST: TEXT}, ["continuation"], limit=None, seed=0, out_dir=tmp_path)
    from ppf.config import Params

    params = Params()
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.4).astype(float)
    better = np.maximum(base, (rng.random(100) < 0.5).astype(float))

    def row(method, ratio, comp, correct, ppl):
        nll = list(np.log(ppl) * 511 + rng.normal(0, 1, 8))
        return {"method": method, "target_ratio": ratio, "compensation": comp, "policy": method, "ppl_test": ppl,
                "zs_mean": float(np.mean(correct)), "zs_continuation": float(np.mean(correct)),
                "zs_continuation_stderr": 0.04, "zs_continuation_n": 100, "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
                "actual_ratio": ratio, "ppl_test_ci_lo": ppl, "ppl_test_ci_hi": ppl, "js_test": 0.0, "zs_mean_stderr": 0.04,
                "prefill_tok_s": 1.0, "params": 1,
                "nll_windows": nll, "zs_correct": {"continuation": list(correct)}}

    rows = [row("dense", 0.0, "none", np.ones(100), 20.0), row("llm_pruner", 0.4, "lsq", base, 60.0),
            row("ppf", 0.4, "lsq", better, 50.0), row("shortgpt", 0.4, "mean", base * 0, 400.0)]
    df = pd.DataFrame(rows)
    comparisons = compare(df, [0.4], params)
    c = comparisons[comparisons.method == "llm_pruner"].iloc[0]
    assert c.ppf_vs_zs == pytest.approx(better.mean() - base.mean()) and c.ppf_vs_zs_ci_lo > 0 and c.ppf_wins_zs
    assert summary(df, [0.4], comparisons)["0.4"]["ppf_zs_verdict"] == "win"
    ex = examples(rows)
    assert len(ex) == 400 and set(ex.task) == {"continuation"}
    text = markdown(df.drop(columns=["nll_windows", "zs_correct"]), summary(df, [0.4], comparisons), params,
                    comparisons, ex, tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("| continuation |"))
    cells = [x.strip() for x in line.split("|")[1:-1]]
    assert cells[1] == "acc_norm" and cells[2] == "100" and cells[5] == "0.250"  # the metric, examples, chance
    assert cells[6].startswith("+0.750") and cells[9].endswith("✓")  # dense above chance; dense − shortgpt excludes 0
    assert float(cells[7]) == pytest.approx(1.0)  # accuracy tracks −ppl over the scored pruned cells
    assert cells[10] == "yes"  # both bars met: named as seeing damage


def test_sees_damage_names_the_failing_bar():
    """A task that does not rank the pruned cells, or cannot tell dense from ShortGPT at 40 %, is named
    as failing, with the bar it missed."""
    from ppf.recipes.benchmark import sees_damage

    assert sees_damage(0.93, True) == "yes"
    assert sees_damage(0.8, True) == "yes"
    assert sees_damage(-0.80, True) == "**no**: Spearman -0.80 < 0.8"
    assert sees_damage(0.9, False) == "**no**: dense vs shortgpt@0.4 within noise"
    assert sees_damage(float("nan"), False).startswith("**no**: too few scored cells; ")


def test_recover_stage_recovers_ppf_and_the_best_baseline_with_one_budget(bench_project, monkeypatch, capsys):
    """PPF and the best baseline at each ratio recovered alike; paired verdicts, the curve, the delivered
    (recovered) model registered; a rerun reads the finished cells back; the unrecovered model stays."""
    from flows.recover import recover_flow
    from ppf import serving
    from ppf.checkpoint import load_pruned
    from ppf.checkpoint.layout import META

    edit_params(bench_project, recover={"baselines": ["best", "owl"]})
    benchmark_flow("params.yaml", root=str(bench_project))
    bench = pd.read_csv(bench_project / "results" / "benchmark.csv")
    from ppf.recipes.benchmark import as_configured

    conf = as_configured(bench, load_params(bench_project / "params.yaml"))
    best = conf[~conf.method.isin(["ppf", "dense"])].sort_values("ppl_test").method.iloc[0]
    result = recover_flow("params.yaml", root=str(bench_project))
    rec = pd.read_csv(bench_project / "results" / "recover.csv")
    assert list(rec.method) == list(dict.fromkeys(["ppf", best, "owl"]))
    rp = load_params(bench_project / "params.yaml").recover
    step = rp.batch_size * rp.accumulation * rp.seqlen  # the budget, rounded up to whole steps
    assert (rec.budget_tokens == rp.tokens).all() and rec.tokens.between(step, rp.tokens + step - 1).all()
    assert (rec.tok_s > 0).all()
    ppf = rec[rec.method == "ppf"].iloc[0]
    assert ppf.ppl_before == pytest.approx(bench[(bench.method == "ppf") & (bench.compensation == "lsq")].ppl_test.iloc[0],
                                           rel=1e-4)  # the benchmark's model, measured on the benchmark's windows
    curve = pd.read_csv(bench_project / "plots" / "recover" / "curve.csv")
    assert set(curve.method) == set(rec.method) and curve.ppl_test.notna().all()
    assert (curve.groupby("method").tokens.min() == 0).all()
    md = (bench_project / "results" / "recover.md").read_text()
    assert f"{best} recovered" in md and "itself unrecovered" in md and "Spearman" in md
    assert "ppf_vs_" + best in result["0.34"] and result["registered"] == {"ppf-pruned-0.34": "1"}
    delivered = bench_project / "models" / "pruned" / "ppf-0.34"
    meta = json.loads((delivered / META).read_text())
    assert meta["extra"]["recovery"]["tokens"] == ppf.tokens
    assert meta["extra"]["perplexity"]["value"] == pytest.approx(ppf.ppl_after)
    assert "distilled from" in (delivered / "README.md").read_text()
    served, _ = serving.load_registered_pruned(bench_project, "ppf-pruned-0.34")
    mine, _ = load_pruned(delivered)
    x = torch.randint(0, 50, (1, 8))
    assert torch.equal(served(x).logits, mine(x).logits)  # the registered model is the recovered one
    assert (bench_project / "models" / "unrecovered" / "ppf-0.34" / "model.safetensors").exists()
    code, out, _ = run_cli(["summary", "--params", str(bench_project / "params.yaml")], capsys)
    assert code == 0 and "models/pruned/ppf-0.34" in out and "recovered 0.34: PPF" in out

    import ppf.recover as PR

    def boom(*a, **k):
        raise AssertionError("a finished cell was recovered again")

    monkeypatch.setattr(PR, "distill", boom)
    monkeypatch.setattr("ppf.recipes.recover.distill", boom)
    again = recover_flow("params.yaml", root=str(bench_project))
    assert again["0.34"] == {k: v for k, v in result.items() if k != "registered"}["0.34"]
