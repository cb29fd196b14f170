"""Flow tests run against a throwaway Prefect server (prefect_test_harness), once per session."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

import flows  # noqa: F401  (pins PREFECT_HOME etc. before prefect is imported)
from tiny import make_text


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _mc(n: int, k: int, prefix: str) -> dict:
    return {"examples": [{"input": f"{prefix} {make_text(6, seed=i)}? ",
                          "target_scores": {f"{prefix} {make_text(3, seed=100 + i * k + j)}": int(j == i % k)
                                            for j in range(k)}} for i in range(n)]}


def build_sdist(path: Path, n_articles: int = 30) -> Path:
    """A small bigbench-like sdist: English articles in the tiny test vocabulary + MC tasks."""
    articles = []
    for a in range(n_articles):
        sentences = [make_text(12, seed=a * 100 + s) + " ." for s in range(20)]
        labels = " ".join("1" if (s + 1) % 5 == 0 else "0" for s in range(20))
        articles.append({"input": "\n".join(sentences), "target": labels})
    hyper = {"examples": [{"input": f'Which sentence has the correct adjective order: a " new old city {i} " '
                                    f'b " old new city {i} " ?', "target_scores": {"a": 1, "b": 0}} for i in range(8)]}
    tasks = {
        "paragraph_segmentation": {"examples": articles},
        "goal_step_wikihow/goal_inference": _mc(6, 4, "goal"),
        "goal_step_wikihow/step_inference": _mc(6, 4, "step"),
        "goal_step_wikihow/step_ordering": _mc(6, 2, "order"),
        "social_iqa": _mc(8, 3, "social"),
        "hyperbaton": hyper,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, content in tasks.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A project directory whose params point at a tiny model and a synthetic sdist."""
    import yaml

    root = tmp_path / "project"
    root.mkdir()
    sdist = build_sdist(tmp_path / "bigbench-1.0.0.tar.gz")
    params = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"bigbench": {"sdist": str(sdist)}, "valid_fraction": 0.2, "test_fraction": 0.2},
        "calibration": {"n_samples": 4, "seqlen": 16},
        "js": {"n_samples": 2, "seqlen": 16},
        "tasks": {"limit": 5},
        "eval": {"seqlen": 32, "max_windows": 4, "zero_shot_limit": 4},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory) -> Path:
    """A ppf cache shared by the tests that run the `tiny` profile in subprocesses (its model is
    converted from the embedded GGUF once per session, not into the user's ~/.cache/ppf)."""
    return tmp_path_factory.mktemp("ppf-cache-tiny")
