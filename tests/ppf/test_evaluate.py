"""ppf.evaluate: zero-shot accuracy through lm-eval, end to end on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tiny import WORDS, make_llama
from ppf.data.tasks import build_tasks
from ppf.errors import PPFError
from ppf.evaluate import zero_shot


def words(i: int, n: int) -> str:
    """``n`` vocabulary words, different for each ``i``: the tiny model sees no <unk> choices."""
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


@pytest.fixture
def tasks_dir(tmp_path):
    social = {"examples": [{"input": words(i, 6),
                            "target_scores": {words(i + 1 + j, 3): int(j == i % 3)
                                              for j in range(3)}} for i in range(12)]}
    hyper = {"examples": [{"input": f'Which sentence has the correct adjective order: '
                                    f'a " {words(i, 3)} " b " {words(i + 5, 3)} " ?',
                           "target_scores": {"a": i % 2, "b": 1 - i % 2}} for i in range(8)]}
    build_tasks({"social_iqa": social, "hyperbaton": hyper}, ["social_iqa", "hyperbaton"],
                limit=10, seed=0, out_dir=tmp_path / "tasks")
    return tmp_path / "tasks"


def test_zero_shot_runs_through_lm_eval(tasks_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative data_files would break here; ours are rendered absolute
    model, tok = make_llama(4, 2)
    model.train()
    rng = torch.get_rng_state()
    first = zero_shot(model, tok, tasks_dir, batch_size=4)
    for task, r in first.items():  # lm-eval's standard errors ride along
        if task != "mean":
            assert r["acc_stderr"] == pytest.approx((r["acc"] * (1 - r["acc"]) / (r["n"] - 1)) ** 0.5, rel=1e-6)
    assert 0 < first["mean"]["acc_stderr"] < max(r["acc_stderr"] for t, r in first.items() if t != "mean")
    assert model.training  # the caller's mode is restored
    assert torch.equal(rng, torch.get_rng_state())  # lm-eval's seeding did not touch ours
    assert set(first) == {"social_iqa", "hyperbaton", "mean"}
    assert first["social_iqa"]["n"] == 10 and first["hyperbaton"]["n"] == 8
    for name in ("social_iqa", "hyperbaton"):
        assert 0 <= first[name]["acc"] <= 1 and 0 <= first[name]["acc_norm"] <= 1
    assert first["mean"]["acc"] == pytest.approx(
        (first["social_iqa"]["acc"] + first["hyperbaton"]["acc"]) / 2)
    again = zero_shot(model, tok, tasks_dir, names=["hyperbaton", "social_iqa"], batch_size=2)
    assert again["social_iqa"] == first["social_iqa"]
    assert again["hyperbaton"] == first["hyperbaton"]


def test_zero_shot_limit_and_names(tasks_dir, tmp_path):
    model, tok = make_llama(4, 4, layers=1)
    out = zero_shot(model, tok, tasks_dir, names=["social_iqa"], limit=3)
    assert set(out) == {"social_iqa", "mean"} and out["social_iqa"]["n"] == 3
    # Same task name, other directory: lm-eval must read the new data, not a cached copy.
    other = tmp_path / "other"
    other.mkdir()
    for suffix in (".yaml", ".jsonl"):
        lines = (tasks_dir / f"social_iqa{suffix}").read_text().splitlines(keepends=True)
        (other / f"social_iqa{suffix}").write_text("".join(lines[:5] if suffix == ".jsonl"
                                                           else lines))
    assert zero_shot(model, tok, other)["social_iqa"]["n"] == 5


def test_zero_shot_rejects_unbuilt_tasks(tasks_dir):
    model, tok = make_llama(4, 4, layers=1)
    with pytest.raises(PPFError, match="'goal_step_wikihow' is not built"):
        zero_shot(model, tok, tasks_dir, names=["goal_step_wikihow"])


def test_speed_reports_throughput_and_memory():
    from ppf.evaluate import peak_memory_during, speed
    from tiny import make_tokenizer

    model, _ = make_llama(4, 2)
    s = speed(model, make_tokenizer(), seqlen=32, batch=2, new_tokens=4)
    assert s["prefill_tok_s"] > 0 and s["generate_tok_s"] > 0
    assert s["weights_mb"] == pytest.approx(sum(p.numel() * 4 for p in model.parameters()) / 2**20)
    assert s["peak_mem_mb"] >= s["weights_mb"]
    import torch

    out, peak = peak_memory_during(lambda: torch.ones(64, 2**20).sum())  # a 256 MB temporary
    assert out.item() == 64 * 2**20 and peak > 100


# ---- lm-eval's own registry tasks (tasks.lm_eval) ----------------------------------------------------
def test_registry_tasks_are_checked_before_anything_runs(tmp_path, monkeypatch):
    """An unknown name, or a dataset neither cached nor reachable: one clear error naming it, at once."""
    import socket
    from types import SimpleNamespace

    from ppf import evaluate as E
    from ppf.errors import PPFError

    manager = SimpleNamespace(task_index={"boolq": SimpleNamespace(cfg={"dataset_path": "aps/super_glue",
                                                                         "dataset_name": "boolq"})})
    with pytest.raises(PPFError, match="lm-eval has no task 'bolq'.*boolq, rte"):
        E.check_registry_tasks(["bolq"], manager)
    # "at once": one short probe of the hub and no other connection (counted, not timed)
    probes = []
    monkeypatch.setattr(E, "_hub_reachable", lambda timeout=3.0: probes.append(timeout) or False)
    monkeypatch.setattr(E, "_in_hf_cache", lambda dataset: False)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: pytest.fail(f"connected to {address}"))
    with pytest.raises(PPFError, match=r"needs the dataset 'aps/super_glue' \(boolq\).*not in the local Hugging Face cache"):
        E.check_registry_tasks(["boolq"], manager)
    assert len(probes) == 1
    monkeypatch.setattr(E, "_in_hf_cache", lambda dataset: dataset == "aps/super_glue")
    assert E.check_registry_tasks(["boolq"], manager) == {"boolq": "aps/super_glue"}


def test_the_paper_suite_is_in_lm_evals_registry_and_refused_cleanly_offline(monkeypatch, tmp_path):
    from lm_eval.tasks import TaskManager

    from ppf import evaluate as E
    from ppf.errors import PPFError

    manager = TaskManager()
    monkeypatch.setattr(E, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(E, "_in_hf_cache", lambda dataset: False)
    for name in E.PAPER_TASKS:
        with pytest.raises(PPFError, match=f"lm-eval task '{name}' needs the dataset '"):
            E.check_registry_tasks([name], manager)


def test_zero_shot_scores_a_cloze_and_gives_each_examples_result(tmp_path):
    from ppf.data.tasks import CORPUS_TEST

    body = [w for w in WORDS if w not in ("school", "city", "game", "team")]
    text = "\n\n".join(
        f"The school {' '.join(body[i:i + 9])}. Then {' '.join(body[i + 9:i + 20])} city. "
        f"There {' '.join(body[i + 20:i + 31])} school" + "." for i in range(0, 48, 8))
    build_tasks({CORPUS_TEST: text}, ["cloze"], limit=None, seed=0, out_dir=tmp_path / "tasks")
    model, tok = make_llama(4, 2)
    out = zero_shot(model, tok, tmp_path / "tasks", batch_size=2)
    r = out["cloze"]
    assert r["metric"] == "acc" and r["chance"] == 0.0 and r["n"] == len(r["correct"]) > 0
    assert set(r["correct"]) <= {0.0, 1.0} and r["score"] == pytest.approx(sum(r["correct"]) / r["n"])
    assert r["perplexity"] > 1  # the target word's perplexity under a random model


def test_zero_shot_refuses_a_malformed_task_file(tasks_dir):
    (tasks_dir / "social_iqa.jsonl").write_text('{"query": "q"}\n')
    model, tok = make_llama(4, 4, layers=1)
    with pytest.raises(PPFError, match="social_iqa.jsonl.*line 1 is not a task record"):
        zero_shot(model, tok, tasks_dir, names=["social_iqa"])
