"""The Llama-family adapter: head/channel counts from module shapes, parameter accounting."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from ppf import arch
from ppf.errors import PPFError
from tiny import make_llama


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_heads,n_kv,model_type,bias", [
    (4, 4, "llama", False),   # MHA
    (4, 2, "llama", False),   # GQA
    (4, 1, "llama", True),    # MQA with attention bias
    (4, 2, "mistral", False),
    (4, 2, "qwen2", True),    # Qwen2 always has q/k/v bias
])
def test_describe_counts(n_heads, n_kv, model_type, bias):
    model, tok = make_llama(n_heads, n_kv, model_type=model_type, bias=bias)
    info = arch.describe(model)
    assert info.model_type == model_type
    assert (info.n_layers, info.hidden, info.head_dim, info.intermediate) == (3, 64, 16, 96)
    assert (info.n_heads, info.n_kv_heads, info.groups) == (n_heads, n_kv, n_heads // n_kv)
    assert info.vocab == len(tok)
    assert info.attention_bias is bias
    assert info.uniform and info.heads_per_layer == [n_heads] * 3
    assert not info.tied_embeddings
    assert info.embedding_params == 2 * len(tok) * 64
    assert info.other_params == 64  # the final RMSNorm
    assert info.embedding_params + info.block_params + info.other_params == info.total_params == _numel(model)
    assert info.params_per_layer == [arch.block_params(v) for v in arch.layers(model)]
    assert "params:" in info.summary()


def test_layer_views(tiny_llama):
    model, _ = tiny_llama
    views = arch.layers(model)
    assert [v.index for v in views] == [0, 1, 2]
    cfg = model.config
    for v, block in zip(views, model.model.layers, strict=True):
        assert v.q_proj is block.self_attn.q_proj and v.down_proj is block.mlp.down_proj
        assert (v.n_heads, v.n_kv_heads, v.head_dim) == (cfg.num_attention_heads, cfg.num_key_value_heads, 16)
        assert v.groups == cfg.num_attention_heads // cfg.num_key_value_heads
        assert v.intermediate == 96
        assert arch.block_params(v) == _numel(block)


def test_tied_embeddings_counted_once():
    model, tok = make_llama(4, 2)
    model.lm_head.weight = model.model.embed_tokens.weight
    info = arch.describe(model)
    assert info.tied_embeddings
    assert info.embedding_params == len(tok) * 64
    assert info.embedding_params + info.block_params + info.other_params == info.total_params == _numel(model)


def _shrink(linear: nn.Linear, out: int | None = None, inp: int | None = None) -> nn.Linear:
    """A smaller copy of ``linear`` (keeps the first rows/columns), like physical pruning does."""
    out = out or linear.out_features
    inp = inp or linear.in_features
    new = nn.Linear(inp, out, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:out, :inp])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[:out])
    return new


def test_sizes_come_from_shapes_not_config():
    """After physical pruning the config is stale; the adapter must read the modules."""
    model, _ = make_llama(4, 2)
    attn = model.model.layers[1].self_attn
    attn.q_proj, attn.o_proj = _shrink(attn.q_proj, out=2 * 16), _shrink(attn.o_proj, inp=2 * 16)
    attn.k_proj, attn.v_proj = _shrink(attn.k_proj, out=16), _shrink(attn.v_proj, out=16)
    mlp = model.model.layers[2].mlp
    mlp.gate_proj, mlp.up_proj = _shrink(mlp.gate_proj, out=40), _shrink(mlp.up_proj, out=40)
    mlp.down_proj = _shrink(mlp.down_proj, inp=40)
    info = arch.describe(model)
    assert info.heads_per_layer == [4, 2, 4]
    assert info.kv_heads_per_layer == [2, 1, 2]
    assert info.intermediate_per_layer == [96, 96, 40]
    assert (info.n_heads, info.n_kv_heads, info.intermediate) == (4, 2, 96)
    assert not info.uniform and "heads per layer: [4, 2, 4]" in info.summary()
    assert info.total_params == _numel(model)
    assert arch.layers(model)[1].groups == 2


def test_half_a_head_is_rejected():
    model, _ = make_llama(4, 2)
    attn = model.model.layers[0].self_attn
    attn.q_proj = _shrink(attn.q_proj, out=40)
    with pytest.raises(PPFError, match="layer 0 has inconsistent attention shapes"):
        arch.layers(model)


def test_gpt2_is_rejected():
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(PPFError) as err:
        arch.check_llama_family(model)
    msg = str(err.value)
    assert msg.startswith("GPT2LMHeadModel is not a Llama-family causal LM: it has no model.layers")
    assert "self_attn.{q,k,v,o}_proj" in msg and "\n" not in msg
    with pytest.raises(PPFError):
        arch.describe(model)


def test_missing_projection_is_named():
    model, _ = make_llama(4, 2)
    del model.model.layers[2].mlp.gate_proj
    with pytest.raises(PPFError, match=r"no model\.layers\[2\]\.mlp\.gate_proj"):
        arch.check_llama_family(model)


def test_describe_config_matches_real_model():
    model, _ = make_llama(4, 2, model_type="qwen2")
    from_cfg = arch.describe_config(model.config)
    assert from_cfg == arch.describe(model)
