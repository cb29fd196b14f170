"""Depth pruning: removed blocks act as if absent; ShortGPT and BlockPruner choose sensibly."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch

from ppf.baselines.blockpruner import blocks_for_ratio
from ppf.block_order import next_token_nll, removal_order
from ppf.baselines.shortgpt import layers_to_remove
from ppf.depth import NoAttention, NoMLP, block_ratio
from ppf.prune import drop_blocks
from ppf.errors import PPFError
from ppf.plan import DenseShape
from tiny import make_llama


def _ids(seed=0, n=12):
    return torch.randint(5, 60, (2, n), generator=torch.Generator().manual_seed(seed))


def test_removed_blocks_pass_the_residual_stream_through(tiny_llama):
    model, _ = tiny_llama
    x = _ids()
    expected_model = copy.deepcopy(model)
    with torch.no_grad():  # the same as zeroing the removed blocks' output projections
        expected_model.model.layers[0].self_attn.o_proj.weight.zero_()
        expected_model.model.layers[2].mlp.down_proj.weight.zero_()
        for m in (expected_model.model.layers[1].self_attn.o_proj, expected_model.model.layers[1].mlp.down_proj):
            m.weight.zero_()
        expected = expected_model(x).logits
        pruned = drop_blocks(copy.deepcopy(model), attention=[0, 1], mlp=[1, 2])
        # layer 1 is gone whole: no parameters left, the layer count and indices stay the dense ones
        assert len(pruned.model.layers) == 3 and pruned.config.num_hidden_layers == 3
        assert sum(p.numel() for p in pruned.model.layers[1].parameters()) == 0
        assert pruned.ppf_plan.removed_layers == [1] and pruned.ppf_plan.removed_mlp == [1, 2]
        assert torch.allclose(pruned(x).logits, expected, atol=1e-5)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shape = DenseShape.of(model)
    assert n(model) - n(pruned) == round(block_ratio(shape, [0, 1], [1, 2]) * shape.dense_layer_params * shape.n_layers)


def test_generation_with_a_kv_cache_still_works(tiny_gqa):
    model, _ = tiny_gqa
    pruned = drop_blocks(copy.deepcopy(model), attention=[0], mlp=[2])
    x = _ids(n=6)[:1]
    with torch.no_grad():
        out = pruned.generate(x, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        # greedy decoding with the cache = argmax of a full forward at every step
        seq = x
        for _ in range(5):
            nxt = pruned(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_bad_removals_are_refused(tiny_gqa):
    model, _ = tiny_gqa
    with pytest.raises(PPFError, match="out of range"):
        drop_blocks(copy.deepcopy(model), attention=[7])
    with pytest.raises(PPFError, match="removes all 3 layers"):
        drop_blocks(copy.deepcopy(model), attention=[0, 1, 2], mlp=[0, 1, 2])
    once = drop_blocks(copy.deepcopy(model), mlp=[0])
    with pytest.raises(PPFError, match="already pruned"):
        drop_blocks(once, mlp=[1])


def test_shortgpt_drops_the_least_influential_layers():
    shape = DenseShape(10, 16, 4, 2, 4, 32)
    bi = [5, 1, 7, 0.5, 9, 3, 8, 2, 6, 4]
    assert layers_to_remove(bi, shape, 0.2) == [1, 3]
    assert layers_to_remove(bi, shape, 0.4) == [1, 3, 5, 7]
    with pytest.raises(PPFError, match="removes 0"):
        layers_to_remove(bi, shape, 0.01)


def test_blockpruner_removes_the_block_that_hurts_least_first():
    model, _ = make_llama(4, 2, layers=3)
    with torch.no_grad():  # make layer 1's MLP irrelevant: removing it changes nothing
        model.model.layers[1].mlp.down_proj.weight.mul_(1e-6)
    x = _ids()
    with torch.no_grad():
        reference = model(x).logits.log_softmax(-1)

    def loss(logits, batch):
        return float((reference.exp() * (reference - logits.log_softmax(-1))).sum(-1).mean())

    shape = DenseShape.of(model)
    steps = removal_order(model, x, shape, max_ratio=0.3, loss=loss)
    assert (steps[0]["kind"], steps[0]["layer"]) == ("mlp", 1)
    assert steps[-1]["block_ratio"] >= 0.3 and all(a["block_ratio"] < b["block_ratio"] for a, b in pairwise(steps))
    attn, mlp, actual = blocks_for_ratio(steps, 0.2)
    assert actual == pytest.approx(block_ratio(shape, attn, mlp))
    assert len(model.model.layers) == 3 and not hasattr(model, "ppf_removed_blocks")  # the model stays dense


@pytest.mark.parametrize("kv", [4, 2])
def test_blockpruner_scores_from_cached_layer_inputs_exactly_as_a_full_forward_would(kv):
    """The prefix reuse is an optimisation only: the same greedy order and losses as scoring every
    candidate with a full forward pass of the whole model."""

    model, _ = make_llama(4, kv, layers=4)
    x = _ids()
    shape = DenseShape.of(model)
    fast = removal_order(model, x, shape, max_ratio=0.5)

    import copy

    work = copy.deepcopy(model)
    layers, slow, removed = work.model.layers, [], set()
    blocks = {("attention", i): layer.self_attn for i, layer in enumerate(layers)}
    blocks |= {("mlp", i): layer.mlp for i, layer in enumerate(layers)}

    def put(kind, i, module):
        setattr(layers[i], "self_attn" if kind == "attention" else "mlp", module)

    while not slow or slow[-1]["block_ratio"] < 0.5:
        scores = []
        for kind, i in blocks:
            if (kind, i) in removed:
                continue
            put(kind, i, NoAttention.replacing(blocks[(kind, i)], i) if kind == "attention"
                else NoMLP.replacing(blocks[(kind, i)]))
            with torch.no_grad():
                scores.append((next_token_nll(work(x, use_cache=False).logits, x), kind, i))
            put(kind, i, blocks[(kind, i)])
        value, kind, i = min(scores, key=lambda t: t[0])
        put(kind, i, NoAttention.replacing(blocks[(kind, i)], i) if kind == "attention" else NoMLP.replacing(blocks[(kind, i)]))
        removed.add((kind, i))
        slow.append({"kind": kind, "layer": i, "loss": value,
                     "block_ratio": block_ratio(shape, [j for k, j in removed if k == "attention"],
                                                [j for k, j in removed if k == "mlp"])})
    assert [(s["kind"], s["layer"]) for s in fast] == [(s["kind"], s["layer"]) for s in slow]
    assert [s["loss"] for s in fast] == pytest.approx([s["loss"] for s in slow], rel=1e-6, abs=1e-7)
