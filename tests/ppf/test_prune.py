"""Physical pruning: shapes, parameter counts, and equivalence with masking the dense model."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from ppf import arch
from ppf.errors import PPFError
from ppf.plan import DenseShape, LayerPlan, PruningPlan
from ppf.prune import plan_of, prune_model
from tiny import make_llama, make_text


def random_plan(model, seed: int = 0) -> PruningPlan:
    """A random plan respecting the GQA rule, with the corner cases on fixed layers.

    Layer 0 drops a whole KV group (or, for MHA, some heads) and keeps the others partly; layer 1
    keeps a single query head and a single MLP channel; other layers are random.
    """
    s = DenseShape.of(model)
    rng = random.Random(seed)
    out = []
    for i in range(s.n_layers):
        if i == 0:
            n_kv = max(1, s.n_kv_heads - 1)
            per_group = max(1, s.groups - 1) if s.groups > 1 else 1
        elif i == 1:
            n_kv, per_group = 1, 1
        else:
            n_kv, per_group = rng.randint(1, s.n_kv_heads), rng.randint(1, s.groups)
        kv = sorted(rng.sample(range(s.n_kv_heads), n_kv))
        if i == 0 and s.n_kv_heads > 1:
            kv = list(range(1, s.n_kv_heads))  # drop KV group 0 (and with it its query heads)
        heads = sorted(h for g in kv for h in rng.sample(range(g * s.groups, (g + 1) * s.groups), per_group))
        n_ch = 1 if i == 1 else rng.randint(1, s.intermediate)
        channels = sorted(rng.sample(range(s.intermediate), n_ch))
        out.append(LayerPlan(tuple(heads), tuple(kv), tuple(channels)))
    return PruningPlan(s, tuple(out), meta={"method": "random", "seed": seed})


@torch.no_grad()
def masked_dense(model, plan: PruningPlan):
    """A copy of the dense model computing what the pruned one should: dropped heads' o_proj
    input columns and dropped channels' down_proj input columns zeroed. (Query heads of a dropped
    KV group are dropped too, by the GQA rule, so K/V never need masking.)"""
    ref = copy.deepcopy(model)
    hd = plan.shape.head_dim
    for view, lp in zip(arch.layers(ref), plan.layers, strict=True):
        for h in set(range(plan.shape.n_heads)) - set(lp.heads):
            view.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
        dropped = sorted(set(range(plan.shape.intermediate)) - set(lp.channels))
        view.down_proj.weight[:, dropped] = 0
    return ref


def _ids(tok, n_words: int = 24, seed: int = 0) -> torch.Tensor:
    return tok(make_text(n_words, seed), return_tensors="pt").input_ids


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


CASES = [
    (4, 4, "llama", False),   # MHA
    (4, 2, "llama", False),   # GQA
    (4, 2, "llama", True),    # GQA with q/k/v/o bias
    (4, 1, "llama", False),   # MQA
    (4, 4, "mistral", False),
    (4, 2, "mistral", False),
    (4, 4, "qwen2", False),   # Qwen2: q/k/v bias always
    (4, 2, "qwen2", False),
]


@pytest.mark.parametrize("n_heads,n_kv,model_type,bias", CASES)
def test_pruned_equals_masked_dense(n_heads, n_kv, model_type, bias):
    model, tok = make_llama(n_heads, n_kv, model_type=model_type, bias=bias)
    plan = random_plan(model, seed=n_kv)
    reference = masked_dense(model, plan)
    ids = _ids(tok)
    with torch.no_grad():
        expected = reference(ids).logits
        assert prune_model(model, plan) is model
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # ... and the masking really changed something: a wrong slice would not go unnoticed
    assert not torch.allclose(expected, make_llama(n_heads, n_kv, model_type=model_type, bias=bias)[0](ids).logits)


@pytest.mark.parametrize("n_heads,n_kv,model_type,bias", CASES)
def test_shapes_and_parameter_count(n_heads, n_kv, model_type, bias):
    model, _ = make_llama(n_heads, n_kv, model_type=model_type, bias=bias)
    plan = random_plan(model, seed=1)
    prune_model(model, plan)
    assert plan_of(model) is plan
    views = arch.layers(model)
    for view, lp in zip(views, plan.layers, strict=True):
        assert (view.n_heads, view.n_kv_heads, view.intermediate) == (len(lp.heads), len(lp.kv_heads), len(lp.channels))
        assert view.module.self_attn.num_key_value_groups == len(lp.heads) // len(lp.kv_heads)
        assert arch.block_params(view) == plan.layer_params(view.index)
        for lin in (view.q_proj, view.k_proj, view.v_proj, view.o_proj):
            assert (lin.bias is not None) == (bias or model_type == "qwen2" and lin is not view.o_proj)
    outside = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel() + model.model.norm.weight.numel()
    assert _numel(model) == plan.kept_block_params + outside
    info = arch.describe(model)
    assert info.heads_per_layer == [len(lp.heads) for lp in plan.layers]
    assert info.block_params == plan.kept_block_params


@pytest.mark.parametrize("n_kv,model_type", [(4, "llama"), (2, "llama"), (2, "mistral"), (2, "qwen2")])
def test_generate_with_kv_cache(n_kv, model_type):
    model, tok = make_llama(4, n_kv, model_type=model_type)
    prune_model(model, random_plan(model, seed=3))
    ids = _ids(tok, 8)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kw)
        uncached = model.generate(ids, use_cache=False, **kw)
    assert cached.shape == (1, ids.shape[1] + 6)
    assert torch.equal(cached, uncached)
    # batched with left padding goes through the masked SDPA path
    tok.padding_side = "left"
    batch = tok([make_text(5, 1), make_text(9, 2)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, **kw)
    assert out.shape == (2, batch.input_ids.shape[1] + 6)


def test_identity_plan_changes_nothing(tiny_gqa):
    model, tok = tiny_gqa
    ids = _ids(tok)
    with torch.no_grad():
        before = model(ids).logits
        prune_model(model, PruningPlan.dense(DenseShape.of(model)))
        assert torch.equal(model(ids).logits, before)


def test_refuses_a_plan_for_another_model(tiny_gqa):
    model, _ = tiny_gqa
    other, _ = make_llama(4, 4)
    with pytest.raises(PPFError, match="different model"):
        prune_model(model, random_plan(other))


def test_refuses_an_already_pruned_model(tiny_gqa):
    model, _ = tiny_gqa
    plan = random_plan(model)
    prune_model(model, plan)
    with pytest.raises(PPFError, match="already pruned"):
        prune_model(model, plan)
    del model.ppf_plan  # shapes alone give it away too
    with pytest.raises(PPFError, match="already pruned"):
        prune_model(model, PruningPlan.dense(plan.shape))


def test_pruned_model_trains(tiny_gqa):
    """The new weights are ordinary trainable Parameters (no stale grads, autograd works)."""
    model, tok = tiny_gqa
    prune_model(model, random_plan(model))
    model.train()
    ids = _ids(tok, 10)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
