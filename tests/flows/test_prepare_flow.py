"""The `prepare` flow end to end on a tiny model and a synthetic gensim wheel (or bigbench sdist)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from safetensors.torch import load_file

from flows.prepare import prepare
from ppf import tracking
from ppf.errors import PPFError


def _digest(root):
    files = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_prepare_writes_splits_tasks_calibration_and_metrics(tiny_project):
    metrics = prepare("params.yaml", root=str(tiny_project))
    data = tiny_project / "data"
    for split in ("train", "valid", "test"):
        assert (data / "corpus" / f"{split}.txt").stat().st_size > 0
        assert metrics["tokens"][split] > 0
    assert metrics["tokens"]["train"] > metrics["tokens"]["valid"]
    for name in ("analogy", "polarity"):
        assert (data / "tasks" / f"{name}.yaml").is_file()
        assert metrics["task_examples"][name] == 5
    text = (data / "corpus" / "train.txt").read_text()
    # the dump's markup is gone, its link text stays; the redirect and the talk page are not articles
    assert "[[" not in text and "<ref>" not in text and "{{" not in text and "REDIRECT" not in text and "talk" not in text
    tensors = load_file(data / "calibration" / "tokens.safetensors")
    assert tuple(tensors["calibration"].shape) == (4, 16)
    assert tuple(tensors["heldout"].shape) == (2, 16)
    assert json.loads((tiny_project / "metrics" / "prepare.json").read_text()) == json.loads(json.dumps(metrics))
    runs = tracking.runs(tiny_project, "ppf")
    assert runs and runs[0]["tags.mlflow.runName"] == "prepare"
    assert runs[0]["metrics.tokens.train"] == metrics["tokens"]["train"]


def test_prepare_is_deterministic_and_rewrites_deleted_outputs(tiny_project):
    prepare("params.yaml", root=str(tiny_project))
    first = _digest(tiny_project)
    # DVC deletes a stage's outs before rerunning it: cached tasks must not skip the writes.
    for f in (tiny_project / "data" / "corpus").iterdir():
        f.unlink()
    prepare("params.yaml", root=str(tiny_project))
    assert _digest(tiny_project) == first


def test_prepare_split_seed_changes_the_split(tiny_project):
    prepare("params.yaml", root=str(tiny_project))
    before = (tiny_project / "data" / "corpus" / "test.txt").read_text()
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["data"]["split_seed"] = 7
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    prepare("params.yaml", root=str(tiny_project))
    assert (tiny_project / "data" / "corpus" / "test.txt").read_text() != before


def test_prepare_bad_params_is_one_clear_error(tiny_project):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["calibration"]["n_sampels"] = 3
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PPFError, match="unknown key 'calibration.n_sampels'"):
        prepare("params.yaml", root=str(tiny_project))
    assert not (tiny_project / "data").exists()


def test_prepare_reads_a_bigbench_sdist_for_its_corpus_and_tasks(tiny_project, tmp_path):
    from conftest import build_sdist

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["data"] = {"bigbench": {"sdist": str(build_sdist(tmp_path / "bigbench-1.0.0.tar.gz"))},
                      "corpus": {"source": "bigbench", "language": "en"}, "valid_fraction": 0.2, "test_fraction": 0.2}
    params["tasks"]["names"] = ["goal_step_wikihow", "social_iqa", "hyperbaton"]
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = prepare("params.yaml", root=str(tiny_project))
    assert metrics["task_examples"] == {"goal_step_wikihow": 5, "social_iqa": 5, "hyperbaton": 5}
    assert metrics["tokens"]["train"] > metrics["tokens"]["valid"] > 0
