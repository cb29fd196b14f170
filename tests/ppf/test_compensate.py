"""Compensation after pruning (tiny MHA and GQA models): exact where it must be, better where it can be."""

from __future__ import annotations

import copy

import pytest
import torch

from ppf.compensate import compensate, compensate_blocks, dense_statistics
from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan
from ppf.policy import Policy, plan_for
from ppf.prune import prune_model
from tiny import make_llama


def _calib(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 90, (n, 16), generator=torch.Generator().manual_seed(seed))


def _pruned(model, ratio=0.4):
    shape = DenseShape.of(model)
    plan = plan_for("uniform", ratio, None, None, shape, tol=0.05)
    return prune_model(copy.deepcopy(model), plan), plan


@pytest.mark.parametrize("kv", [4, 2])
@pytest.mark.parametrize("method", ["bias", "lsq"])
def test_a_plan_that_removes_nothing_changes_no_output(kv, method):
    model, _ = make_llama(4, kv)
    pruned = prune_model(copy.deepcopy(model), PruningPlan.dense(DenseShape.of(model)))
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    stats = compensate(model, pruned, _calib(), method)
    after = pruned.state_dict()
    assert stats["layers"] == 0 and after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bias_is_exact_when_the_removed_inputs_are_constant():
    """MHA with attention biases: zero the removed heads' v_proj rows, so each removed head outputs its
    v bias — a non-zero CONSTANT — whatever the input; bias compensation must then reproduce o_proj exactly."""
    model, _ = make_llama(4, 4, bias=True, seed=2)
    _, plan = _pruned(model)
    hd = model.model.layers[0].self_attn.head_dim
    with torch.no_grad():
        for layer, lp in zip(model.model.layers, plan.layers, strict=True):
            for h in set(range(4)) - set(lp.heads):
                layer.self_attn.v_proj.weight[h * hd:(h + 1) * hd] = 0.0
                layer.self_attn.v_proj.bias[h * hd:(h + 1) * hd] = torch.linspace(0.5, 1.5, hd)
    pruned, plan = _pruned(model)
    assert any(len(lp.heads) < 4 for lp in plan.layers)
    x = _calib()
    compensate(model, pruned, x, "bias")
    captured = {}
    for name, m in (("dense", model), ("pruned", pruned)):
        hooks = [layer.self_attn.o_proj.register_forward_hook(lambda mod, i, o, k=(name, j): captured.__setitem__(k, o))
                 for j, layer in enumerate(m.model.layers[:1])]  # layer 0: same input in both models
        m(x[:2])
        for h in hooks:
            h.remove()
    assert torch.allclose(captured[("dense", 0)], captured[("pruned", 0)], atol=1e-5)


@pytest.mark.parametrize("inputs", ["dense", "sequential"])
@pytest.mark.parametrize("kv", [4, 2])
def test_lsq_lowers_the_calibration_error_of_every_projection(kv, inputs):
    model, _ = make_llama(4, kv)
    pruned, _ = _pruned(model)
    stats = compensate(model, pruned, _calib(8), "lsq", damping=0.01, inputs=inputs, errors=True)
    assert stats["layers"] == 3 and {p["proj"] for p in stats["projections"]} == {"o_proj", "down_proj"}
    for p in stats["projections"]:
        assert p["error"] < p["error_none"], p
    assert stats["seconds"] > 0 and stats["tokens"] == 8 * 16


@pytest.mark.parametrize("inputs", ["dense", "sequential"])
@pytest.mark.parametrize("method", ["lsq"])
def test_compensation_brings_the_outputs_closer_to_dense(method, inputs):
    from ppf.metrics import js_divergence

    model, _ = make_llama(4, 2, layers=3, seed=1)
    pruned, _ = _pruned(model, 0.5)
    held = _calib(4, seed=9)
    js_none = js_divergence(model, pruned, held)
    compensate(model, pruned, _calib(16, seed=3), method, inputs=inputs)
    assert js_divergence(model, pruned, held) < js_none


def test_bad_input_is_one_clear_error():
    model, _ = make_llama(4, 2)
    pruned, _ = _pruned(model)
    with pytest.raises(PPFError, match="unknown compensation 'ols'"):
        compensate(model, pruned, _calib(), "ols")
    with pytest.raises(PPFError, match="damping 0 must be > 0"):
        compensate(model, pruned, _calib(), "lsq", damping=0)
    with pytest.raises(PPFError, match="carries no pruning plan"):
        compensate(model, copy.deepcopy(model), _calib(), "bias")
    with pytest.raises(PPFError, match="unknown compensation inputs 'both'"):
        compensate(model, pruned, _calib(), "lsq", inputs="both")
    with pytest.raises(PPFError, match="unknown block compensation 'median'"):
        compensate_blocks(pruned, dense_statistics(model, _calib()), "median")
    assert pruned.model.layers[0].self_attn.o_proj.bias is None  # nothing was changed by the refused calls


@pytest.mark.parametrize("method", ["bias", "lsq"])
def test_shared_dense_statistics_give_the_same_model_as_gathering_them_per_plan(method):
    model, _ = make_llama(4, 2)
    x = _calib(8)
    shared = dense_statistics(model, x, gram=True)
    a, _ = _pruned(model)
    b, _ = _pruned(model)
    compensate(model, a, x, method, statistics=shared)
    compensate(model, b, x, method)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # the key sets first, then every tensor by name
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_workbench_gathers_the_dense_statistics_once(monkeypatch):
    import ppf.workbench as W
    from ppf.config import parse_params

    model, tok = make_llama(4, 2)
    calls = []
    real = W.dense_statistics
    monkeypatch.setattr(W, "dense_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = parse_params({"calibration": {"n_samples": 6, "seqlen": 16}, "pruning": {"compensation": "lsq"}})
    wb = W.Workbench.of(model, tok, params, _calib(6), _calib(2, seed=4))
    plan = wb.planner.plan(Policy.parse("lod:0.2"), 0.3)
    first, second = wb.pruned(plan), wb.pruned(plan)
    assert len(calls) == 1 and first.ppf_compensation["statistics_s"] > 0 == second.ppf_compensation["statistics_s"]
    assert torch.equal(first(_calib(1)).logits, second(_calib(1)).logits)


@pytest.mark.parametrize("kv", [4, 2])
def test_removed_blocks_add_their_dense_mean_output(kv):
    """drop_blocks + mean: every removed block adds its dense mean output where it stood — a leading one
    and both blocks of a removed whole layer too — exactly the model that keeps those blocks as constants."""
    from ppf.depth import NoAttention, NoMLP
    from ppf.prune import drop_blocks

    model, _ = make_llama(4, kv, layers=4)
    x = _calib(4)
    st = dense_statistics(model, x, gram=False)
    pruned = drop_blocks(copy.deepcopy(model), attention=[0, 2], mlp=[2, 3])  # layer 2 goes whole
    out = compensate_blocks(pruned, st, "mean")
    assert out["blocks"] == 4
    reference = copy.deepcopy(model)
    for i, (attn, mlp) in enumerate([(True, False), (False, False), (True, True), (False, True)]):
        layer = reference.model.layers[i]
        if attn:
            layer.self_attn = NoAttention.replacing(layer.self_attn, i)
            layer.self_attn.set_shift(st.attention_out[i])
        if mlp:
            layer.mlp = NoMLP.replacing(layer.mlp)
            layer.mlp.set_shift(st.mlp_out[i])
    with torch.no_grad():
        got, want = pruned(x[:2]).logits, reference(x[:2]).logits
        zero = drop_blocks(copy.deepcopy(model), attention=[0, 2], mlp=[2, 3])(x[:2]).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, zero, atol=1e-3)
    stand_in = pruned.model.layers[0].self_attn(torch.zeros(1, 3, 64))[0]  # layer 0's removed attention
    assert torch.allclose(stand_in, st.attention_out[0].float().expand(1, 3, 64), atol=1e-6)


@pytest.mark.parametrize("kv", [4, 2])
def test_a_compensated_checkpoint_reloads_with_identical_logits_and_counts_its_biases(kv, tmp_path):
    from transformers import AutoModelForCausalLM

    import ppf  # noqa: F401  (registers the ppf classes)
    from ppf.arch import describe
    from ppf.checkpoint import load_pruned, save_pruned

    model, tok = make_llama(4, kv)
    pruned, plan = _pruned(model)
    before = describe(pruned).total_params
    compensate(model, pruned, _calib(), "lsq")
    n_biased = sum(lp.heads != tuple(range(4)) for lp in plan.layers) + sum(
        len(lp.channels) < 96 for lp in plan.layers)
    assert describe(pruned).total_params == before + 64 * n_biased  # one hidden-sized bias per compensated projection
    save_pruned(pruned, tok, tmp_path / "ck", base="tiny")
    x = _calib(2, seed=5)
    back, _ = load_pruned(tmp_path / "ck")
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert torch.equal(back(x).logits, pruned(x).logits) and torch.equal(auto(x).logits, pruned(x).logits)
    assert describe(back).total_params == describe(pruned).total_params


def test_a_checkpoint_whose_bias_shapes_do_not_match_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from ppf.checkpoint import load_pruned, save_pruned

    model, tok = make_llama(4, 2)
    pruned, _ = _pruned(model)
    compensate(model, pruned, _calib(), "bias")
    save_pruned(pruned, tok, tmp_path / "ck", base="tiny")
    weights = tmp_path / "ck" / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("down_proj.bias"))
    tensors[key] = torch.zeros(7)
    save_file(tensors, str(weights))
    with pytest.raises(PPFError, match=r"down_proj.bias has shape \(7,\).*need \(64,\)"):
        load_pruned(tmp_path / "ck")
