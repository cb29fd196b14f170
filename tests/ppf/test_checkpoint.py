"""Pruned checkpoints: save -> load_pruned / AutoModelForCausalLM round trips, atomicity, bad dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ppf import checkpoint
from ppf.checkpoint import load_pruned, read_plan, register_with_transformers, save_pruned
from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan
from ppf.prune import plan_of, prune_model
from tiny import make_llama, make_text, random_plan


def _plan(model, seed: int = 0) -> PruningPlan:
    return random_plan(model, seed, {"method": "test", "a_eta": 0.5})


def _pruned(n_kv: int = 2, model_type: str = "llama", seed: int = 0):
    model, tok = make_llama(4, n_kv, model_type=model_type)
    return prune_model(model, _plan(model, seed)), tok


def _ids(tok) -> torch.Tensor:
    return tok(make_text(20), return_tensors="pt").input_ids


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("n_kv,model_type", [(2, "llama"), (4, "llama"), (2, "mistral"), (4, "qwen2"), (2, "qwen2")])
def test_round_trip_is_bit_identical(tmp_path: Path, n_kv, model_type):
    model, tok = _pruned(n_kv, model_type)
    ids = _ids(tok)
    expected = _logits(model, ids)
    out = save_pruned(model, tok, tmp_path / "ck", base="tiny", extra={"ratio": 0.3})
    assert out == tmp_path / "ck"
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "ppf_layers.json", "ppf.json", "tokenizer.json"} <= files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}  # no pickle anywhere
    assert list(tmp_path.iterdir()) == [out]  # no temp dir left beside it
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable, not mkstemp-private

    loaded, tok2 = load_pruned(out)
    assert type(loaded).__name__ == f"PPF{ {'llama': 'Llama', 'mistral': 'Mistral', 'qwen2': 'Qwen2'}[model_type]}ForCausalLM"
    assert isinstance(loaded, type(model))  # a subclass of the base <X>ForCausalLM
    assert not loaded.training
    assert plan_of(loaded) == plan_of(model)
    assert torch.equal(_logits(loaded, ids), expected)
    assert tok2(make_text(20), return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert torch.equal(loaded.generate(ids, **kw), model.generate(ids, **kw))

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == f"ppf_{model_type}" and cfg["ppf_base_model_type"] == model_type
    assert cfg["auto_map"]["AutoModelForCausalLM"] == f"modeling_ppf.{type(loaded).__name__}"  # remote code
    assert cfg["num_attention_heads"] == 4 and cfg["intermediate_size"] == 96  # the dense config
    assert cfg["ppf_layers"] == checkpoint.layer_shapes(plan_of(model))
    meta = json.loads((out / "ppf.json").read_text())
    assert meta["base"] == "tiny" and meta["extra"] == {"ratio": 0.3}
    assert meta["policy"] == {"method": "test", "a_eta": 0.5} and meta["ppf_version"]
    assert read_plan(out) == plan_of(model)


@pytest.mark.parametrize("n_kv,model_type", [(2, "llama"), (2, "qwen2")])
def test_auto_classes_load_the_checkpoint(tmp_path: Path, n_kv, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tok = _pruned(n_kv, model_type)
    save_pruned(model, tok, tmp_path / "ck", base="tiny")
    register_with_transformers()
    register_with_transformers()  # idempotent
    cfg = AutoConfig.from_pretrained(tmp_path / "ck")
    assert cfg.model_type == f"ppf_{model_type}"
    assert cfg.ppf_layers == checkpoint.layer_shapes(plan_of(model))
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32)
    mine, _ = load_pruned(tmp_path / "ck")
    ids = _ids(tok)
    assert type(auto) is type(mine)
    assert plan_of(auto) == plan_of(mine)
    assert torch.equal(_logits(auto.eval(), ids), _logits(mine, ids))


def test_tied_embeddings(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    model, tok = make_llama(4, 2)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    prune_model(model, _plan(model))
    ids = _ids(tok)
    save_pruned(model, tok, tmp_path / "ck", base="tiny")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # stored once
    loaded, _ = load_pruned(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    register_with_transformers()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    assert auto.lm_head.weight is auto.model.embed_tokens.weight
    assert torch.equal(_logits(auto, ids), _logits(model, ids))


def test_dense_model_and_resave(tmp_path: Path):
    """An unpruned model saves with the identity plan; a loaded checkpoint saves again unchanged."""
    model, tok = make_llama(4, 2)
    ids = _ids(tok)
    save_pruned(model, tok, tmp_path / "dense", base="tiny")
    assert read_plan(tmp_path / "dense") == PruningPlan.dense(DenseShape.of(model))
    assert torch.equal(_logits(load_pruned(tmp_path / "dense")[0], ids), _logits(model, ids))

    pruned, tok = _pruned()
    save_pruned(pruned, tok, tmp_path / "a", base="tiny")
    again, tok_a = load_pruned(tmp_path / "a")
    with pytest.raises(PPFError, match="already pruned"):
        prune_model(again, plan_of(pruned))
    save_pruned(again, tok_a, tmp_path / "b", base="tiny")
    b, _ = load_pruned(tmp_path / "b")
    assert torch.equal(_logits(b, ids), _logits(pruned, ids))
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "ppf_llama"


def test_interrupted_save_leaves_nothing(tmp_path: Path, monkeypatch):
    model, tok = _pruned()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)  # fails after the weights are written
    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, tok, tmp_path / "ck", base="tiny")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch):
    model, tok = _pruned(seed=0)
    save_pruned(model, tok, tmp_path / "ck", base="first")
    other, tok2 = _pruned(seed=1)
    monkeypatch.setattr(checkpoint.store, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError):
        save_pruned(other, tok2, tmp_path / "ck", base="second")
    monkeypatch.undo()
    assert json.loads((tmp_path / "ck" / "ppf.json").read_text())["base"] == "first"
    assert read_plan(tmp_path / "ck") == plan_of(model)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    save_pruned(other, tok2, tmp_path / "ck", base="second")  # a completed overwrite replaces it
    assert json.loads((tmp_path / "ck" / "ppf.json").read_text())["base"] == "second"


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path):
    model, tok = _pruned()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PPFError, match="not a ppf checkpoint"):
        save_pruned(model, tok, tmp_path / "mine", base="tiny")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_pruned(model, tok, tmp_path / "empty", base="tiny")  # an empty dir is fine
    assert (tmp_path / "empty" / "ppf_layers.json").is_file()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_directories(tmp_path: Path, tiny_model_dir: Path):
    missing = tmp_path / "nope"
    with pytest.raises(PPFError) as e:
        load_pruned(missing)
    assert str(missing) in _one_line(e) and "does not exist" in _one_line(e)

    (tmp_path / "empty").mkdir()
    with pytest.raises(PPFError) as e:
        load_pruned(tmp_path / "empty")
    assert "ppf_layers.json" in _one_line(e) and str(tmp_path / "empty") in _one_line(e)

    with pytest.raises(PPFError) as e:  # a plain transformers model directory
        load_pruned(tiny_model_dir)
    assert "ppf_layers.json" in _one_line(e) and "plain transformers" in _one_line(e)

    model, tok = _pruned()
    good = save_pruned(model, tok, tmp_path / "good", base="tiny")
    for name, damage, expect in [
        ("ppf_layers.json", "{not json", "ppf_layers.json is corrupt"),
        ("ppf_layers.json", '{"layers": []}', "ppf_layers.json is malformed"),
        ("config.json", "[1, 2", "config.json is corrupt"),
        ("model.safetensors", None, "no model.safetensors"),
        ("model.safetensors", "garbage", "model.safetensors is corrupt"),
    ]:
        bad = tmp_path / f"bad-{name}-{expect.split()[-1]}"
        save_pruned(model, tok, bad, base="tiny")
        if damage is None:
            (bad / name).unlink()
        else:
            (bad / name).write_text(damage)
        with pytest.raises(PPFError) as e:
            load_pruned(bad)
        assert expect in _one_line(e) and str(bad) in _one_line(e)

    cfg = json.loads((good / "config.json").read_text())
    cfg["model_type"] = "llama"
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PPFError, match="model_type 'llama'"):
        load_pruned(good)


def test_unsupported_base_type():
    with pytest.raises(PPFError, match="gpt2"):
        checkpoint.classes("gpt2")


def test_register_on_import_defers_transformers(tmp_path: Path):
    """register_on_import() (cheap for `import ppf`) still lets the Auto classes load a checkpoint."""
    import subprocess
    import sys

    model, tok = _pruned()
    save_pruned(model, tok, tmp_path / "ck", base="tiny")
    code = (
        "import sys\n"
        "import ppf.checkpoint as c\n"
        "c.register_on_import(); c.register_on_import()\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        f"assert AutoConfig.from_pretrained({str(tmp_path / 'ck')!r}).model_type == 'ppf_llama'\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ck')!r})\n"
        "print(type(m).__name__, m.ppf_plan.block_ratio > 0)\n"
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["PPFLlamaForCausalLM", "True"]


def test_bfloat16_round_trip(tmp_path: Path):
    model, tok = _pruned()
    model.to(torch.bfloat16)
    ids = _ids(tok)
    save_pruned(model, tok, tmp_path / "ck", base="tiny")
    loaded, _ = load_pruned(tmp_path / "ck")
    assert loaded.dtype == torch.bfloat16
    # model.to(bfloat16) cast the RoPE buffer too; the loaded model's must follow, or logits differ
    assert loaded.model.rotary_emb.inv_freq.dtype == model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    register_with_transformers()
    from transformers import AutoModelForCausalLM
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    assert auto.dtype == torch.bfloat16
    assert torch.equal(_logits(auto, ids), _logits(model, ids))
