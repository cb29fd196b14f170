"""Masks of a plan (full, compressed, ablation images) and reading a plan back off pruned weights."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from torch import nn

from tiny import make_llama
from ppf.errors import PPFError
from ppf.masks import (MASK_KINDS, MATRICES, attention_image, compress, full_masks, mask_image, mlp_image,
                       plan_from_model, unit_masks)
from ppf.plan import DenseShape, LayerPlan, PruningPlan
from ppf.policy import Policy, plan_for

GQA8 = DenseShape(n_layers=6, hidden=128, n_heads=8, n_kv_heads=2, head_dim=16, intermediate=256)


def random_plan(shape: DenseShape, target: float = 0.4, seed: int = 0, policy: str = "lod:0.3") -> PruningPlan:
    g = torch.Generator().manual_seed(seed)
    units = {"head": torch.rand(shape.n_layers, shape.n_heads, generator=g),
             "kv": torch.rand(shape.n_layers, shape.n_kv_heads, generator=g),
             "channel": torch.rand(shape.n_layers, shape.intermediate, generator=g)}
    H = torch.rand(shape.n_layers, generator=g).numpy()
    return plan_for(Policy.parse(policy), target, H, units, shape)


def hand_plan() -> PruningPlan:
    """GQA 8 heads / 2 KV heads (groups of 4), written out by hand."""
    shape = DenseShape(n_layers=2, hidden=32, n_heads=8, n_kv_heads=2, head_dim=4, intermediate=10)
    return PruningPlan(shape, (
        LayerPlan(heads=(0, 2, 5, 7), kv_heads=(0, 1), channels=(1, 2, 9)),
        LayerPlan(heads=(4, 5, 6), kv_heads=(1,), channels=tuple(range(10))),
    ))


# ---- masks and images --------------------------------------------------------------------------
def test_compress_by_hand():
    img = compress(hand_plan())
    assert img.shape == (1, 2, 8) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0], [[1, 0, 1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1, 0]])
    assert np.array_equal(mask_image(hand_plan()), img)  # o_proj is the default kind


def test_full_masks_by_hand():
    m = full_masks(hand_plan())
    assert list(m) == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]
    assert {k: v.shape for k, v in m.items()} == {
        "q_proj": (2, 32), "k_proj": (2, 8), "v_proj": (2, 8), "o_proj": (2, 32),
        "up_proj": (2, 10), "gate_proj": (2, 10), "down_proj": (2, 10)}
    np.testing.assert_array_equal(m["k_proj"][1], [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(m["o_proj"][0, :8], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.flatnonzero(m["down_proj"][0]), [1, 2, 9])


@pytest.mark.parametrize("shape", [
    DenseShape(3, 64, 4, 4, 16, 96),  # MHA (make_llama(4, 4))
    DenseShape(3, 64, 4, 2, 16, 96),  # GQA (make_llama(4, 2))
    GQA8,
])
def test_full_masks_consistent_with_compress(shape):
    for seed, target in ((0, 0.2), (1, 0.5), (2, 0.7)):
        plan = random_plan(shape, target, seed)
        m = full_masks(plan)
        L, hd = shape.n_layers, shape.head_dim
        assert m["q_proj"].shape == (L, shape.n_heads * hd) and m["k_proj"].shape == (L, shape.n_kv_heads * hd)
        assert m["gate_proj"].shape == (L, shape.intermediate) and all(v.dtype == bool for v in m.values())
        grouped = m["o_proj"].reshape(L, shape.n_heads, hd).mean(axis=2)
        np.testing.assert_array_equal(compress(plan)[0], grouped)  # compress = o_proj grouped by head_dim
        assert set(np.unique(grouped)) <= {0.0, 1.0}  # whole heads only
        assert np.array_equal(m["q_proj"], m["o_proj"]) and np.array_equal(m["k_proj"], m["v_proj"])
        assert np.array_equal(m["gate_proj"], m["up_proj"]) and np.array_equal(m["up_proj"], m["down_proj"])
        for i, lp in enumerate(plan.layers):
            assert m["q_proj"][i].sum() == len(lp.heads) * hd and m["k_proj"][i].sum() == len(lp.kv_heads) * hd
            assert m["gate_proj"][i].sum() == len(lp.channels)
        # every kept query head's KV head is kept (the GQA rule, seen in the masks)
        heads, kv, _ = unit_masks(plan)
        assert not (heads & ~np.repeat(kv, shape.groups, axis=1)).any()


def test_attention_image():
    plan = hand_plan()
    img = attention_image(plan)
    assert img.shape == (4, 2, 8) and img.dtype == np.float32
    assert np.array_equal(img[0], compress(plan)[0]) and np.array_equal(img[3], img[0])
    np.testing.assert_array_equal(img[1], [[1] * 8, [0] * 4 + [1] * 4])  # each query head shows its KV head
    assert np.array_equal(img[1], img[2])
    assert np.array_equal(mask_image(plan, "attention"), img)


def test_mlp_image():
    plan = hand_plan()  # 10 channels into 8 bins: edges 0,1,2,3,5,6,7,8,10
    img = mlp_image(plan)
    assert img.shape == (1, 2, 8) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], [0, 1, 1, 0, 0, 0, 0, 0.5])
    np.testing.assert_allclose(img[0, 1], [1] * 8)
    np.testing.assert_allclose(mlp_image(plan, bins=2)[0], [[0.4, 0.2], [1, 1]])
    assert np.array_equal(mask_image(plan, "mlp", bins=2), mlp_image(plan, 2))
    big = random_plan(GQA8, 0.5)
    frac = mlp_image(big, bins=16)[0]
    np.testing.assert_allclose(frac.mean(axis=1), [len(lp.channels) / 256 for lp in big.layers], rtol=1e-6)
    for bad in (0, 11, 2.5):
        with pytest.raises(PPFError, match="bins"):
            mlp_image(plan, bins=bad)


def test_full_image_and_kinds():
    plan = hand_plan()
    img = mask_image(plan, "full")
    assert img.shape == (7, 2, 32) and img.dtype == np.float32
    m = full_masks(plan)
    for j, name in enumerate(MATRICES):
        w = m[name].shape[1]
        assert np.array_equal(img[j, :, :w], m[name]) and not img[j, :, w:].any()  # zero-padded
    assert MASK_KINDS == ("o_proj", "attention", "mlp", "full")
    with pytest.raises(PPFError, match="unknown mask kind 'ffn'; use one of o_proj, attention, mlp, full"):
        mask_image(plan, "ffn")


def test_dense_plan_masks_are_all_ones():
    shape = DenseShape(2, 32, 8, 2, 4, 10)
    plan = PruningPlan.dense(shape)
    assert compress(plan).all() and attention_image(plan).all() and mlp_image(plan).min() == 1.0
    assert all(v.all() for v in full_masks(plan).values())


# ---- plan_from_model ---------------------------------------------------------------------------
def _select(linear: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.data
    b = linear.bias.data if linear.bias is not None else None
    if out_idx is not None:
        w = w.index_select(0, out_idx)
        b = b.index_select(0, out_idx) if b is not None else None
    if in_idx is not None:
        w = w.index_select(1, in_idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def prune_by_hand(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Physically prune ``model`` in place per ``plan`` with index_select (independent of ppf.prune)."""
    hd = plan.shape.head_dim

    def rows(units: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor([u * hd + j for u in units for j in range(hd)])

    for block, lp in zip(model.model.layers, plan.layers, strict=True):
        attn, mlp = block.self_attn, block.mlp
        q_rows, kv_rows, ch = rows(lp.heads), rows(lp.kv_heads), torch.tensor(lp.channels)
        attn.q_proj = _select(attn.q_proj, out_idx=q_rows)
        attn.k_proj = _select(attn.k_proj, out_idx=kv_rows)
        attn.v_proj = _select(attn.v_proj, out_idx=kv_rows)
        attn.o_proj = _select(attn.o_proj, in_idx=q_rows)
        attn.num_key_value_groups = len(lp.heads) // len(lp.kv_heads)
        mlp.gate_proj = _select(mlp.gate_proj, out_idx=ch)
        mlp.up_proj = _select(mlp.up_proj, out_idx=ch)
        mlp.down_proj = _select(mlp.down_proj, in_idx=ch)
    return model


@pytest.mark.parametrize("n_heads,n_kv,model_type,bias", [
    (4, 4, "llama", False), (4, 2, "llama", False), (4, 2, "qwen2", True), (4, 1, "mistral", False),
])
def test_plan_from_model_recovers_the_plan(n_heads, n_kv, model_type, bias):
    dense, tok = make_llama(n_heads, n_kv, model_type=model_type, bias=bias)
    shape = DenseShape.of(dense)
    for seed, target in ((0, 0.3), (1, 0.6)):
        plan = random_plan(shape, target, seed)
        pruned = prune_by_hand(copy.deepcopy(dense), plan)
        with torch.no_grad():  # the hand-pruned model really runs
            assert torch.isfinite(pruned(torch.randint(4, len(tok), (1, 12))).logits).all()
        recovered = plan_from_model(pruned, dense)
        assert recovered == plan and recovered.meta == {"source": "weights"}
        assert np.array_equal(compress(recovered), compress(plan))
        assert recovered.block_ratio == pytest.approx(plan.meta["actual"])


def test_plan_from_model_dense_and_low_precision():
    dense, _ = make_llama(4, 2)
    assert plan_from_model(dense, dense) == PruningPlan.dense(DenseShape.of(dense))
    plan = random_plan(DenseShape.of(dense), 0.5, 3)
    pruned = prune_by_hand(copy.deepcopy(dense).to(torch.bfloat16), plan)  # a bfloat16 checkpoint still matches
    assert plan_from_model(pruned, dense) == plan


def test_plan_from_model_rejects_foreign_models():
    dense, _ = make_llama(4, 2)
    other, _ = make_llama(4, 2, seed=1)
    with pytest.raises(PPFError, match="matches no dense"):
        plan_from_model(other, dense)
    with pytest.raises(PPFError, match="layers"):
        plan_from_model(make_llama(4, 2, layers=2)[0], dense)
    shuffled = copy.deepcopy(dense)
    gate = shuffled.model.layers[0].mlp.gate_proj
    gate.weight.data = gate.weight.data.flip(0)
    with pytest.raises(PPFError, match="not increasing"):
        plan_from_model(shuffled, dense)


@pytest.mark.parametrize("shape", [DenseShape(3, 64, 4, 4, 16, 96), DenseShape(3, 64, 4, 2, 16, 96), GQA8])
@pytest.mark.parametrize("policy", ["lod:0.3", "bi:0.2,norm=rank,keep=1:0,layers=1,attn=0.25", "uniform,attn=groups"])
def test_the_batch_path_images_equal_the_plans(shape, policy):
    """Planner.masks + image_of_masks (no index lists) give exactly the image of the plan, every kind,
    and from_masks' vectorised checks build the same plan the per-layer validation accepts."""
    from ppf.policy import keep_masks
    from ppf.predictor.features import INPUTS, image, image_of_masks

    g = torch.Generator().manual_seed(1)
    units = {"head": torch.rand(shape.n_layers, shape.n_heads, generator=g),
             "kv": torch.rand(shape.n_layers, shape.n_kv_heads, generator=g),
             "channel": torch.rand(shape.n_layers, shape.intermediate, generator=g)}
    H = torch.rand(shape.n_layers, generator=g).numpy()
    for ratio in (0.4, 0.55):
        masks = keep_masks(Policy.parse(policy), ratio, H, units, shape, bi=H)
        plan = plan_for(Policy.parse(policy), ratio, H, units, shape, bi=H)
        assert PruningPlan(shape, plan.layers) == plan  # the slow, per-layer validation agrees
        for kind in INPUTS:
            assert np.array_equal(image_of_masks(shape, *masks[:3], kind), image(plan, kind)), kind


def test_masks_breaking_the_rules_are_refused_whole():
    shape = DenseShape(2, 32, 8, 2, 4, 10)
    heads, kv, ch = np.ones((2, 8), bool), np.ones((2, 2), bool), np.ones((2, 10), bool)
    bad = heads.copy()
    bad[1, 0] = False  # 3 heads from group 0, 4 from group 1
    with pytest.raises(PPFError, match=r"plan layer 1 breaks the GQA rule"):
        PruningPlan.from_masks(shape, bad, kv, ch)
    orphan = kv.copy()
    orphan[0, 1] = False  # group 1's heads kept without its KV head
    with pytest.raises(PPFError, match=r"plan layer 0 breaks the GQA rule"):
        PruningPlan.from_masks(shape, heads, orphan, ch)
    with pytest.raises(PPFError, match=r"keeps 8 query heads and 0 KV heads"):
        PruningPlan.from_masks(shape, heads, np.zeros((2, 2), bool), ch)
    with pytest.raises(PPFError, match="removes all 2 layers"):
        PruningPlan.from_masks(shape, ~heads, ~kv, ~ch)
    with pytest.raises(PPFError, match=r"channels mask has shape \(2, 9\)"):
        PruningPlan.from_masks(shape, heads, kv, ch[:, :9])
