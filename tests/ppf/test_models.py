"""Resolving and loading base models; the embedded registry's one-time, atomic conversion."""

from __future__ import annotations

import pytest
import torch
from tiny import make_llama

from ppf import models
from ppf.errors import PPFError
from ppf.paths import cache_dir


def test_resolve_missing_path():
    with pytest.raises(PPFError) as err:
        models.resolve("/does/not/exist")
    assert str(err.value) == ("model '/does/not/exist' is neither an embedded model (smollm2-135m, smollm2-135m-4l) "
                              "nor a local directory with config.json")


def test_resolve_directory_without_config(tmp_path):
    with pytest.raises(PPFError, match="nor a local directory with config.json"):
        models.resolve(tmp_path)


def test_resolve_local_dir_is_itself(tiny_model_dir):
    assert models.resolve(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_load_round_trip_same_logits(tiny_model_dir):
    reference, tok = make_llama(4, 2)  # the same seed the fixture saved
    model, tokenizer = models.load(tiny_model_dir)
    assert not model.training
    assert tokenizer("the city of the world").input_ids == tok("the city of the world").input_ids
    ids = torch.tensor([tok("the first city in the world was new").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_load_dtype(tiny_model_dir):
    model, _ = models.load(tiny_model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(PPFError, match="dtype 'fp8' is not supported"):
        models.load(tiny_model_dir, dtype="fp8")


def test_load_rejects_non_llama(tmp_path):
    import transformers

    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    from tiny import make_tokenizer
    make_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PPFError, match="GPT2LMHeadModel is not a Llama-family causal LM"):
        models.load(tmp_path / "gpt2")


def test_load_config(tiny_model_dir):
    cfg = models.load_config(tiny_model_dir)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)


def test_embedded_conversion_once_and_atomic(monkeypatch):
    """A registry name converts once into the cache (via a temp dir), then is a lookup."""
    calls = []

    def fetch():
        calls.append(1)
        return make_llama(4, 2)

    entry = models.EmbeddedModel("tiny", "a tiny test model", fetch, lambda: None)
    monkeypatch.setattr(models, "EMBEDDED", {"tiny": entry})
    path = models.resolve("tiny")
    assert path == cache_dir() / "models" / "tiny"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert [p.name for p in path.parent.iterdir()] == ["tiny"]  # no temp dir left behind
    # the second call is a lookup: no fetch, no conversion, nothing rewritten (counted, not timed)
    written = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}
    monkeypatch.setattr(models, "_convert", lambda entry, target: pytest.fail("converted a second time"))
    assert models.resolve("tiny") == path
    assert len(calls) == 1 and {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == written
    model, _ = models.load("tiny")
    assert model.config.num_key_value_heads == 2
    assert models.load_config("tiny").num_attention_heads == 4


def test_failed_conversion_leaves_nothing(monkeypatch):
    def fetch():
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "EMBEDDED", {"tiny": models.EmbeddedModel("tiny", "", fetch, lambda: None)})
    with pytest.raises(RuntimeError, match="boom"):
        models.resolve("tiny")
    assert list((cache_dir() / "models").iterdir()) == []


def test_quantization_config_is_dropped(monkeypatch):
    def fetch():
        model, tok = make_llama(4, 2)
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, tok

    monkeypatch.setattr(models, "EMBEDDED", {"tiny": models.EmbeddedModel("tiny", "", fetch, lambda: None)})
    assert "quantization_config" not in (models.resolve("tiny") / "config.json").read_text()


@pytest.mark.slow
def test_embedded_smollm2_real():
    """Converts (or reuses) the real SmolLM2 and checks its shape and that it talks."""
    from ppf import arch

    cfg = models.load_config("smollm2-135m")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    model, tok = models.load("smollm2-135m")
    info = arch.describe(model)
    assert (info.n_layers, info.hidden, info.n_heads, info.n_kv_heads, info.head_dim) == (30, 576, 9, 3, 64)
    assert (info.intermediate, info.vocab, info.tied_embeddings) == (1536, 49152, True)
    assert info.total_params == 134_515_008
    assert arch.describe_config(models.load_config("smollm2-135m")) == info
    assert "quantization_config" not in (models.resolve("smollm2-135m") / "config.json").read_text()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip()
