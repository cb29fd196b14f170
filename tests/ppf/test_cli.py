"""The `ppf` command: prune / eval / info on a tiny project, and one clear error per bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ppf.data.corpus import calibration_batch
from ppf.io import write_tensors_atomic, write_text_atomic
from tiny import make_text, run_cli


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(argv, capsys)


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> Path:
    """A prepared project: params.yaml, a corpus and calibration tokens for the tiny model."""
    from transformers import AutoTokenizer

    root = tmp_path / "proj"
    corpus = root / "data" / "corpus"
    for i, split in enumerate(("train", "valid", "test")):
        write_text_atomic(corpus / f"{split}.txt", make_text(3000 if split == "train" else 800, seed=i))
    params = {"model": {"name": str(tiny_model_dir)}, "calibration": {"n_samples": 4, "seqlen": 16},
              "heldout": {"n_samples": 2, "seqlen": 16}, "eval": {"seqlen": 32, "max_windows": 4}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = torch.tensor(tok(make_text(3000, seed=0))["input_ids"])
    valid = torch.tensor(tok(make_text(800, seed=1))["input_ids"])
    write_tensors_atomic(root / "data" / "calibration" / "tokens.safetensors",
                         {"calibration": calibration_batch(train, 4, 16, 0), "heldout": calibration_batch(valid, 2, 16, 1)},
                         {"model": str(tiny_model_dir), "calibration": {"n_samples": 4, "seqlen": 16, "seed": 0},
                          "heldout": {"n_samples": 2, "seqlen": 16, "seed": 1, "batch_size": 4}})
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("policy", ["uniform", "lod:0.2", "esd:0.3", "bi:0.5", "lod:0.2,norm=rank,keep=1:0,attn=0.4"])
def test_prune_hits_the_ratio_and_saves_a_loadable_checkpoint(project, tiny_model_dir, capsys, policy):
    out = project / "pruned"
    code, stdout, _ = run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--policy", policy,
                           "--out", str(out), "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert abs(report["actual_block_ratio"] - 0.3) <= 0.005
    assert report["params_after"] < report["params_before"]
    import ppf

    model, _ = ppf.load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    # importance is cached: a second policy does not recompute it
    assert list((Path(ppf.paths.cache_dir()) / "importance").glob("*.json"))


def test_prune_out_delivers_the_recovered_model_and_no_recover_the_pruned_one(project, tiny_model_dir, capsys):
    import torch

    import ppf
    from ppf.checkpoint.layout import META

    outs = {}
    for flag in ("--recover", "--no-recover"):
        out = outs[flag] = project / f"pruned{flag}"
        code, stdout, _ = run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--out", str(out), flag, "--json"],
                              capsys)
        assert code == 0 and not out.with_name(out.name + ".unrecovered").exists()
        recovery = json.loads(stdout)["recovery"]
        extra = json.loads((out / META).read_text())["extra"]
        assert (recovery is None) == (flag == "--no-recover") == ("recovery" not in extra)
    rec = json.loads((outs["--recover"] / META).read_text())["extra"]
    assert rec["perplexity"]["value"] <= rec["perplexity_before"]["value"] * 1.05  # best-valid weights, not worse
    a, _ = ppf.load_pruned(outs["--recover"])
    b, _ = ppf.load_pruned(outs["--no-recover"])
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]  # the same plan, trained weights
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_eval_reports_perplexity_and_js_against_the_base(project, tiny_model_dir, capsys):
    out = project / "pruned"
    assert run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.4", "--out", str(out)], capsys)[0] == 0
    code, stdout, _ = run(["eval", "--model", str(out), "--base", str(tiny_model_dir), "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["perplexity"]["valid"]["ppl"] > 1 and result["perplexity"]["test"]["tokens"] == 4 * 32
    assert 0 < result["js"]["js"] < 0.7
    code, stdout, _ = run(["eval", "--model", str(tiny_model_dir), "--base", str(tiny_model_dir), "--json"], capsys)
    assert json.loads(stdout)["js"]["js"] < 1e-6


@pytest.mark.parametrize("args, needle", [
    (["--ratio", "1.2"], "target"),
    (["--ratio", "0"], "target"),
    (["--policy", "lod:0.7"], "a_eta"),
    (["--policy", "random:0.1"], "random"),
    (["--ratio", "0.97"], "0.97"),
    (["--policy", "lod:0.2,keep=2:1"], "keep=2:1"),  # protects all 3 layers of the tiny model
    (["--policy", "lod:0.2,attn=2"], "attn='2'"),
    (["--policy", "lod:0.2,width=3"], "width=3"),
    (["--ratio", "0.3", "--policy", "uniform,layers=1"], "layers=1"),  # one of 3 layers is more than 0.3
])
def test_prune_bad_input_is_one_line_and_writes_nothing(project, tiny_model_dir, capsys, args, needle):
    out = project / "pruned"
    code, _, err = run(["prune", "--model", str(tiny_model_dir), "--out", str(out), *args], capsys)
    assert code == 2
    assert needle in err and err.strip().count("\n") == 0
    assert not out.exists()


def test_not_a_checkpoint_and_missing_model_are_clear_errors(project, tiny_model_dir, capsys):
    code, _, err = run(["eval", "--model", str(project / "nope")], capsys)
    assert code == 2 and "nope" in err
    code, _, err = run(["info", "--model", "/does/not/exist"], capsys)
    assert code == 2 and "/does/not/exist" in err and err.strip().count("\n") == 0
    from ppf.checkpoint import load_pruned
    from ppf.errors import PPFError

    with pytest.raises(PPFError, match="not a ppf checkpoint"):
        load_pruned(tiny_model_dir)


def test_info_prints_the_architecture(tiny_model_dir, capsys):
    code, stdout, _ = run(["info", "--model", str(tiny_model_dir), "--json"], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["head_dim"]) == (3, 4, 2, 16)


def test_info_on_a_pruned_checkpoint_shows_per_layer_shapes(project, tiny_model_dir, capsys):
    out = project / "pruned"
    assert run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.5", "--policy", "bi:0.5", "--out", str(out)],
               capsys)[0] == 0
    code, stdout, _ = run(["info", "--model", str(out), "--json"], capsys)
    info = json.loads(stdout)
    dense = json.loads(run(["info", "--model", str(tiny_model_dir), "--json"], capsys)[1])
    assert code == 0 and info["block_params"] < dense["block_params"]
    assert len(info["intermediate_per_layer"]) == 3


def test_pruning_a_pruned_checkpoint_is_refused(project, tiny_model_dir, capsys):
    out = project / "pruned"
    assert run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--out", str(out)], capsys)[0] == 0
    code, _, err = run(["prune", "--model", str(out), "--ratio", "0.3"], capsys)
    assert code == 2 and "already a pruned checkpoint" in err


@pytest.mark.parametrize("argv, needle", [
    (["prune", "--ratio", "abc"], "--ratio"),
    (["nosuchcmd"], "nosuchcmd"),
    (["prune", "--no-such-option"], "--no-such-option"),
    (["export"], "model"),
    (["export", "somewhere"], "--gguf"),
    (["eval", "--threads", "two"], "--threads"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err + out


def test_prune_without_out_says_nothing_was_saved(project, tiny_model_dir, capsys):
    code, stdout, err = run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3"], capsys)
    assert code == 0 and "actual block ratio" in stdout
    assert "nothing saved; pass --out DIR to save" in err
    code, stdout, err = run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["out"] is None and "nothing saved" in err
    code, _, err = run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--out", str(project / "p")], capsys)
    assert code == 0 and "nothing saved" not in err


def test_export_writes_a_gguf_and_eval_gguf_needs_the_extra(project, tiny_model_dir, capsys, monkeypatch):
    out = project / "pruned"
    assert run(["prune", "--model", str(tiny_model_dir), "--ratio", "0.4", "--out", str(out)], capsys)[0] == 0
    gguf_file = project / "tiny.gguf"
    code, stdout, err = run(["export", str(out), "--gguf", str(gguf_file), "--tokenizer", "none", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert gguf_file.is_file() and report["arch"] == "deci" and report["bytes"] == gguf_file.stat().st_size
    code, stdout, err = run(["export", str(out), "--gguf", str(gguf_file), "--tokenizer", "none"], capsys)
    assert code == 0, err
    assert "heads per layer" in stdout and "deci" not in err  # the table, not JSON
    # the tiny word-level tokenizer has no GGUF form: a clear error, nothing written
    code, _, err = run(["export", str(out), "--gguf", str(project / "t2.gguf")], capsys)
    assert code == 2 and "tokenizer" in err and err.strip().count("\n") == 0 and not (project / "t2.gguf").exists()
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if ppf[gguf] were not installed
    code, _, err = run(["eval", "--model", str(out), "--gguf", str(gguf_file)], capsys)
    assert code == 2 and "pip install 'ppf[gguf]'" in err and err.strip().count("\n") == 0
