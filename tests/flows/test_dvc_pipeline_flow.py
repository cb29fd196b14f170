"""The `tiny` profile end to end under real `dvc repro` in a fresh git checkout: every stage runs, a
second repro is a no-op, `dvc exp run -S` reruns only the stages that depend on the changed
parameter, metrics/plots diff work, and `dvc push` / `dvc pull` restore the outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tiny import git_project, subprocess_env

from conftest import build_wheel

STAGES = ["prepare", "dense_eval", "importance", "collect", "train_predictor", "active", "train_agent", "benchmark",
          "recover"]
OUTS = ["data/masks/samples.parquet", "models/predictor/predictor.safetensors", "data/active/rows.parquet",
        "models/agent/agent.safetensors"]


def dvc(project: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=project, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness, tiny_model_cache):
    """A tiny-profile checkout after one full `dvc repro` (stage flows report to the test server)."""
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("dvc")
    root = git_project(base / "project", build_wheel(base / "gensim-4.4.0-py3-none-any.whl"))
    env = subprocess_env(PREFECT_API_URL=PREFECT_API_URL.value(), PPF_CACHE_DIR=str(tiny_model_cache))
    start = time.perf_counter()
    out = dvc(root, env, "repro").stdout
    print(f"tiny profile: dvc repro {time.perf_counter() - start:.0f} s")
    return root, env, out


def test_repro_runs_every_stage_of_the_tiny_profile(project):
    root, env, out = project
    assert ran(out) == STAGES
    lock = (root / "dvc.lock").read_text()
    assert all(f"  {s}:" in lock for s in STAGES)
    for f in OUTS + ["results/benchmark.csv", "metrics/agent.json", "results/recover.md",
                     "models/pruned/ppf-0.3/model.safetensors"]:
        assert (root / f).stat().st_size > 0, f
    bench = json.loads((root / "metrics" / "benchmark.json").read_text())
    assert "0.3" in bench and "ppf_ppl" in bench["0.3"]
    # BlockPruner's order searched once in the importance stage, stored beside the layer scores
    imp = json.loads((root / "metrics" / "importance.json").read_text())
    assert imp["block_order"] and "block_order_s" in imp["seconds"]
    assert len(list((root / "data" / "importance").glob("*-blockorder-*.json"))) == 1
    # the tiny profile's space has both depth orders: the dataset holds policies that remove blocks in
    # that stored order, and the agent's action has the order's coordinate
    import pandas as pd

    parts = pd.read_parquet(root / "data" / "masks" / "samples.parquet")["parts"]
    assert parts.str.contains("blocks=").any() and parts.str.contains("layers=").any(), list(parts)
    from ppf.agent.store import Agents

    space = Agents.load(root / "models" / "agent").space
    assert space.orders == ("layers", "blocks") and space.block_order and space.block_depth == 2


def written(root: Path) -> dict[str, int]:
    """{file: mtime_ns} of everything the stages write, and of dvc.lock."""
    files = [f for d in ("data", "models", "metrics", "results", "plots") for f in (root / d).rglob("*") if f.is_file()]
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in files + [root / "dvc.lock"]}


def test_a_second_repro_is_a_no_op(project):
    # no stage runs and no file is rewritten (the work is counted; a wall-clock limit would flake on a busy machine)
    root, env, _ = project
    before, lock = written(root), (root / "dvc.lock").read_text()
    out = dvc(root, env, "repro").stdout
    assert ran(out) == [] and "up to date" in out
    assert written(root) == before and (root / "dvc.lock").read_text() == lock


def test_exp_run_reruns_only_what_depends_on_the_parameter(project):
    root, env, _ = project
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny results"], cwd=root, env=env, check=True)
    before = {f: sha(root / f) for f in OUTS}
    out = dvc(root, env, "exp", "run", "-n", "more-tokens", "-S", "benchmark.new_tokens=6").stdout
    # the benchmark's csv changes (its speed columns): recover reruns, reading its finished cells back
    assert ran(out) == ["benchmark", "recover"]
    assert {f: sha(root / f) for f in OUTS} == before  # upstream outputs untouched
    diff = dvc(root, env, "params", "diff", "--json").stdout
    changed = json.loads(diff)["params.yaml"]
    assert list(changed) == ["benchmark.new_tokens"] and changed["benchmark.new_tokens"]["new"] == 6
    metrics = dvc(root, env, "metrics", "diff", "--json").stdout
    assert "metrics/benchmark.json" in json.loads(metrics)
    plots = dvc(root, env, "plots", "diff", "-o", str(root.parent / "plots-diff"), "HEAD").stdout
    assert (root.parent / "plots-diff" / "index.html").is_file(), plots
    listed = dvc(root, env, "exp", "show", "--json").stdout
    assert "more-tokens" in listed


def test_push_then_pull_restores_the_outputs(project):
    root, env, _ = project
    before = {f: sha(root / f) for f in OUTS}
    dvc(root, env, "push")
    assert any((root.parent / "remote").rglob("*")), "nothing was pushed"
    for d in ("data/masks", "models", ".dvc/cache"):
        shutil.rmtree(root / d)
    assert "deleted" in dvc(root, env, "status").stdout
    dvc(root, env, "pull")
    assert {f: sha(root / f) for f in OUTS} == before
    assert "up to date" in dvc(root, env, "status").stdout
