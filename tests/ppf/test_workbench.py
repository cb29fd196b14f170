"""The workbench and the public API: one dense model, one planner, pruned copies sharing embeddings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ppf
from ppf.config import parse_params
from tiny import make_llama


@pytest.mark.parametrize("kv", [4, 2])
def test_public_api_load_plan_prune_save_load(kv, tmp_path):
    model, tok = make_llama(4, kv)
    g = torch.Generator().manual_seed(0)
    calib, heldout = torch.randint(4, 90, (4, 16), generator=g), torch.randint(4, 90, (2, 16), generator=g)
    wb = ppf.Workbench.of(model, tok, parse_params({"pruning": {"unit_importance": "activation"}}), calib, heldout)
    plan = wb.planner.plan(ppf.Policy.parse("lod:0.2"), 0.4)
    assert isinstance(plan, ppf.PruningPlan) and abs(plan.block_ratio - 0.4) <= 0.005
    pruned = ppf.prune_model(wb.copy(), plan)
    assert pruned.get_input_embeddings().weight is model.get_input_embeddings().weight  # shared, not copied
    assert len(model.model.layers[0].mlp.down_proj.weight[0]) == 96  # the dense model is left alone
    ppf.save_pruned(pruned, tok, tmp_path / "m", base="tiny")
    back, _ = ppf.load_pruned(tmp_path / "m")
    x = heldout[:1]
    assert torch.equal(back(x).logits, pruned(x).logits)
    assert wb.judge(plan)["js"] == pytest.approx(wb.js(wb.pruned(plan)))  # judged as configured (lsq)


def test_unknown_public_name():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ppf.nope  # noqa: B018


def test_component_defaults_equal_the_params_defaults():
    from ppf.agent import AgentConfig
    from ppf.config import AgentParams, PredictorParams
    from ppf.predictor import NetConfig, TrainConfig

    agent = AgentParams()
    for f in dataclasses.fields(AgentConfig):
        want = getattr(agent, f.name)
        assert f.default == (tuple(want) if isinstance(want, list) else want), f.name
    pred = PredictorParams()
    for cls in (NetConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if hasattr(pred, f.name):
                want = getattr(pred, f.name)
                assert f.default == (tuple(want) if isinstance(want, list) else want), f"{cls.__name__}.{f.name}"


def test_the_configured_compensation_is_applied_and_reported_and_the_benchmark_keeps_both():
    from ppf.recipes import benchmark as B

    model, tok = make_llama(4, 2)
    g = torch.Generator().manual_seed(0)
    calib, heldout = torch.randint(4, 90, (8, 16), generator=g), torch.randint(4, 90, (2, 16), generator=g)
    params = parse_params({"pruning": {"unit_importance": "activation", "compensation": "lsq", "tolerance": 0.05},
                           "benchmark": {"llm_pruner_keep": [1, 0]}})
    wb = ppf.Workbench.of(model, tok, params, calib, heldout)
    plan = wb.planner.plan(ppf.Policy("lod", 0.1), 0.4)
    lsq, none = wb.pruned(plan), wb.pruned(plan, "none")
    assert lsq.ppf_compensation["method"] == "lsq" and lsq.ppf_compensation["layers"] == 3
    assert none.ppf_compensation["method"] == "none" and none.model.layers[0].mlp.down_proj.bias is None
    assert wb.judge(plan)["compensation"] == "lsq"
    cells = B.cells(["dense", "owl", "shortgpt"], [0.4], params.pruning)
    assert cells == [("dense", 0.0, "none"), ("owl", 0.4, "lsq"), ("owl", 0.4, "none"), ("shortgpt", 0.4, "mean"),
                     ("shortgpt", 0.4, "none")]
    zero = parse_params({"pruning": {"removed_blocks": "none"}}).pruning
    assert B.cells(["shortgpt"], [0.4], zero) == [("shortgpt", 0.4, "none")]
    _, info = B.build(wb, "llm_pruner", 0.4)
    assert info["compensation"] == "lsq" and info["compensation_s"] > 0
    depth, info = B.build(wb, "shortgpt", 0.4, compensation="mean")
    assert info["compensation"] == "mean" and depth.ppf_compensation["blocks"] > 0
    with pytest.raises(Exception, match="compensation"):
        parse_params({"pruning": {"compensation": "ols"}})
    with pytest.raises(Exception, match="damping"):
        parse_params({"pruning": {"damping": 0}})
