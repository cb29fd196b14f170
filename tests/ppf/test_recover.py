"""Recovery (ppf/recover.py, ppf/recipes/recover.py) on tiny random Llama models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ppf.checkpoint import load_pruned, save_pruned
from ppf.config import Params, RecoverParams, load_params
from ppf.errors import PPFError
from ppf.io import write_text_atomic
from ppf.prune import prune_model
from ppf.recipes.recover import CACHE, recover, state_dir
from ppf.recover import TeacherTargets, distill, distill_loss, steps_for, train_windows
from ppf.workbench import Workbench
from tiny import WITHOUT_PPF, make_llama, make_text, random_plan, run_cli

SMALL = {"tokens": 512, "seqlen": 16, "batch_size": 2, "eval_every": 4, "valid_windows": 2, "checkpoint_every": 4,
         "lr": 3e-3, "patience": 0, "top_k": 8}


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> Path:
    """A project whose teacher is the tiny model, with a corpus, and a pruned checkpoint of it."""
    root = tmp_path / "proj"
    # text a model can learn (a random model, pruned or not, knows nothing): phrases of a small set, in random order
    phrases = [make_text(6, seed=100 + i) for i in range(5)]
    rng = np.random.default_rng(0)
    for split, n in (("train", 700), ("valid", 150), ("test", 150)):
        write_text_atomic(root / "data" / "corpus" / f"{split}.txt", " ".join(phrases[i] for i in rng.integers(5, size=n)))
    params = {"model": {"name": str(tiny_model_dir)}, "eval": {"seqlen": 32, "max_windows": 4},
              "benchmark": {"max_windows": 4, "bootstrap": 200}, "recover": SMALL}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    teacher, tok = make_llama(4, 2)  # the same weights as tiny_model_dir
    pruned = prune_model(teacher, random_plan(teacher, seed=1))
    save_pruned(pruned, tok, root / "pruned", base=str(tiny_model_dir), extra={"policy": "random", "target": 0.3})
    monkeypatch.chdir(root)
    return root


def _wb(root: Path) -> Workbench:
    return Workbench(root, load_params(root / "params.yaml"))


def _block_and_frozen(model) -> tuple[dict, dict]:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {k: v for k, v in sd.items() if "embed_tokens" in k or "lm_head" in k or k == "model.norm.weight"}
    return sd, frozen


def test_recovery_lowers_the_distillation_loss_and_leaves_frozen_parameters_bit_identical(project):
    wb = _wb(project)
    rp = wb.params.recover.model_copy(update={"tokens": 1024})
    student, _ = load_pruned(project / "pruned")
    before, frozen = _block_and_frozen(student)
    train = train_windows(wb.split_tokens("train"), rp)
    targets, _ = TeacherTargets.cached(wb.model, "tiny", train, rp, None)
    valid = train[:2]  # any windows: only the check reads them

    def loss_on(model) -> dict[str, float]:  # the same 8 windows before and after
        with torch.no_grad():
            return distill_loss(model(train[:8]).logits, train[:8], targets.index[:8], targets.logp[:8], rp)[1]

    first = loss_on(student)
    model, rec = distill(student, targets, train, valid, rp)
    last = loss_on(model)
    assert last["loss"] < first["loss"] - 0.2 and last["lm"] < first["lm"]
    # with the KL alone, the student moves toward the teacher (here the LM term dominates: random words)
    kl_only = rp.model_copy(update={"lm_weight": 0.0})
    _, rec2 = distill(load_pruned(project / "pruned")[0], targets, train, valid, kl_only)
    kl = [x["kl"] for x in rec2["losses"]]
    assert np.mean(kl[-8:]) < 0.9 * np.mean(kl[:8])
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in frozen.items():
        assert torch.equal(after[k], v), f"{k} changed"
    assert any(not torch.equal(after[k], before[k]) for k in before if ".layers." in k)  # the blocks did train


def test_the_topk_kl_is_a_lower_bound_of_the_full_kl_and_exact_with_the_whole_vocabulary():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 30, generator=g), torch.randn(2, 5, 30, generator=g)
    x = torch.randint(30, (2, 5), generator=g)
    full = (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1).mean()
    for k, exact in ((30, True), (5, False)):
        rp = RecoverParams(top_k=k, lm_weight=0.0)
        top = torch.log_softmax(t, -1).topk(k, dim=-1)
        _, info = distill_loss(s, x, top.indices, top.values, rp)
        if exact:
            assert info["kl"] == pytest.approx(float(full), rel=1e-4, abs=1e-5)
        else:
            assert 0 < info["kl"] <= float(full) + 1e-6


def test_a_run_killed_mid_way_and_resumed_ends_with_the_same_weights(project):
    wb = _wb(project)
    rp = wb.params.recover
    train = train_windows(wb.split_tokens("train"), rp)
    targets, _ = TeacherTargets.cached(wb.model, "tiny", train, rp, None)
    valid = train[:2]
    assert steps_for(rp) == 16

    whole, rec_whole = distill(load_pruned(project / "pruned")[0], targets, train, valid, rp)

    class Killed(Exception):
        pass

    def kill_at_10(event):
        if event["step"] == 10:
            raise Killed

    state = project / "state"
    with pytest.raises(Killed):
        distill(load_pruned(project / "pruned")[0], targets, train, valid, rp, state, "s", kill_at_10)
    assert torch.load(state / "state.pt", weights_only=False)["step"] == 8  # the last state before the kill
    resumed, rec = distill(load_pruned(project / "pruned")[0], targets, train, valid, rp, state, "s")
    assert rec["resumed_from"] == 8
    a, b = whole.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rec["curve"] == rec_whole["curve"]
    # a state of another student is not resumed
    _, other = distill(load_pruned(project / "pruned")[0], targets, train, valid, rp, state, "another")
    assert other["resumed_from"] is None


def test_early_stopping_keeps_the_best_valid_weights(project):
    wb = _wb(project)
    rp = wb.params.recover.model_copy(update={"patience": 2})
    train = train_windows(wb.split_tokens("train"), rp)
    targets, _ = TeacherTargets.cached(wb.model, "tiny", train, rp, None)
    # checked on random words, which training on the phrases makes LESS likely after the first steps
    valid = torch.tensor(wb.tokenizer(make_text(200, seed=9))["input_ids"])[:64].view(2, 32)
    model, rec = distill(load_pruned(project / "pruned")[0], targets, train, valid, rp)
    assert rec["stopped"] == "early", rec["curve"]
    assert rec["steps_run"] < steps_for(rp)
    best = min(c["ppl_valid"] for c in rec["curve"])
    assert rec["best_ppl_valid"] == best and rec["curve"][-1]["ppl_valid"] > best
    from ppf.recover import valid_perplexity

    assert valid_perplexity(model, valid) == pytest.approx(best, rel=1e-9)


def test_lora_trains_only_adapters_and_merges_to_the_same_shapes(project):
    wb = _wb(project)
    rp = wb.params.recover.model_copy(update={"train": "lora", "lora_rank": 2})
    student, _ = load_pruned(project / "pruned")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    train = train_windows(wb.split_tokens("train"), rp)
    targets, _ = TeacherTargets.cached(wb.model, "tiny", train, rp, None)
    model, rec = distill(student, targets, train, train[:2], rp)
    assert rec["trained"] == "lora" and 0 < rec["trainable_params"] < sum(v.numel() for v in before.values()) / 4
    after = model.state_dict()
    assert set(after) == set(before) and all(after[k].shape == before[k].shape for k in before)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert any(not torch.equal(after[k], before[k]) for k in before if "proj" in k)


def test_teacher_targets_are_computed_once_and_shared(project):
    wb = _wb(project)
    rp = wb.params.recover
    train = train_windows(wb.split_tokens("train"), rp)
    a, cached_a = TeacherTargets.cached(wb.model, "tiny", train, rp, project / "c")
    b, cached_b = TeacherTargets.cached(wb.model, "tiny", train, rp, project / "c")
    assert (cached_a, cached_b) == (False, True)
    assert torch.equal(a.index, b.index) and torch.allclose(a.logp, b.logp, atol=2e-3)
    c, cached_c = TeacherTargets.cached(wb.model, "tiny", train, rp.model_copy(update={"temperature": 2.0}), project / "c")
    assert not cached_c and c.digest != a.digest


def test_recovered_checkpoint_reloads_through_ppf_and_remote_code_and_carries_a_model_card(project, tiny_model_dir, tmp_path):
    wb = _wb(project)
    report = recover(wb, project / "pruned", project / "recovered")
    out = project / "recovered"
    assert report["ppl_after"]["value"] < report["ppl_before"]["value"], report["recovery"]["curve"]
    assert not state_dir(out).exists() and list((project / CACHE).glob("teacher-*.safetensors"))
    meta = json.loads((out / "ppf.json").read_text())
    assert meta["extra"]["recovery"]["tokens"] == 512 and meta["extra"]["policy"] == "random"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and f"base_model: {tiny_model_dir}" in card
    assert "512 train tokens" in card and "trust_remote_code=True" in card and "--gguf" in card
    assert f"{report['ppl_after']['value']:.2f}" in card
    # the plan and compensation state survive: same shapes as the pruned input
    model, tok = load_pruned(out)
    pruned, _ = load_pruned(project / "pruned")
    assert model.ppf_plan.to_dict() == pruned.ppf_plan.to_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    ids = tok(make_text(20, seed=4))["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", "-c", WITHOUT_PPF, str(out), json.dumps(ids), "the city"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.asarray(got["logits"]), ref, atol=1e-5, rtol=0)
    pytest.importorskip("gguf")
    from ppf.export.gguf import export_gguf

    rep = export_gguf(out, tmp_path / "r.gguf", "f32", tokenizer="none")
    assert (tmp_path / "r.gguf").stat().st_size > 0
    assert rep["heads"] == [len(lp.heads) for lp in model.ppf_plan.layers]


def test_the_cli_recovers_and_bad_input_is_one_error_with_nothing_written(project, tiny_model_dir, capsys):
    out = project / "rec"
    code, stdout, _ = run_cli(["recover", str(project / "pruned"), "--out", str(out), "--json"], capsys)
    assert code == 0, stdout
    assert json.loads(stdout)["recovery"]["tokens"] == 512 and (out / "README.md").is_file()
    other, tok = make_llama(4, 2, seed=7)
    save_pruned(prune_model(other, random_plan(other)), tok, project / "foreign", base="some-other-model")
    (project / "plain").mkdir()
    cases = [(["--tokens", "0"], "tokens"), (["--tokens", "-5"], "tokens"), (["--lr", "0"], "lr"), (["--lr", "-1e-4"], "lr")]
    for extra, needle in cases:
        code, _, err = run_cli(["recover", str(project / "pruned"), "--out", str(project / "x"), *extra], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    for ck, needle in ((project / "foreign", "some-other-model"), (project / "plain", "not a ppf checkpoint"),
                       (project / "nowhere", "not a ppf checkpoint")):
        code, _, err = run_cli(["recover", str(ck), "--out", str(project / "x")], capsys)
        assert code == 2 and needle in err, err
    assert not (project / "x").exists() and not state_dir(project / "x").exists()


def test_recover_params_refuse_no_loss():
    with pytest.raises(ValueError, match="kl_weight and lm_weight"):
        RecoverParams(kl_weight=0, lm_weight=0)
    assert Params().recover.train == "blocks"
    with pytest.raises(PPFError):
        train_windows(torch.arange(10), RecoverParams(seqlen=16))
