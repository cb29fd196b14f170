"""Collection building blocks: the policy grid, seeded sampling, one real evaluation per sample."""

from __future__ import annotations

import copy

import pytest
import torch

from ppf.samples import Sample, evaluate, policy_grid, sample_policies
from ppf.config import parse_params
from ppf.errors import PPFError
from ppf.policy import Policy
from ppf.workbench import Workbench
from tiny import make_llama


def test_paper_grid_and_seeded_sampling():
    grid = policy_grid()
    assert len(grid) == 25 * 11 * 3  # ratios 0.1..0.7/0.025, a_eta 0..0.5/0.05, lod/esd/bi
    assert {s.ratio for s in grid} >= {0.1, 0.7} and {s.a_eta for s in grid} >= {0.0, 0.5}
    a, b = sample_policies(grid, 400, seed=0), sample_policies(grid, 400, seed=0)
    assert a == b and len(set(a)) == 400 and sample_policies(grid, 400, seed=1) != a
    assert sample_policies(grid, None, 0) == sorted(grid)
    with pytest.raises(PPFError, match="only 825"):
        sample_policies(grid, 900, 0)
    with pytest.raises(PPFError):
        policy_grid(methods=("lod", "magic"))
    with pytest.raises(PPFError):
        policy_grid(ratios=(0.5, 1.2, 0.1))
    assert Sample("lod", 0.2, 0.35).key == "lod:0.2000@0.3500" and Sample("bi", 0.25, 0.3).policy == Policy("bi", 0.25)
    assert Sample("bi", 0.25, 0.3).label == "bi:0.25"


@pytest.mark.parametrize("kv", [4, 2])
def test_evaluator_matches_a_physical_prune_and_leaves_the_dense_model_alone(kv):
    from ppf.compensate import compensate
    from ppf.metrics import js_divergence
    from ppf.prune import prune_model

    model, tok = make_llama(4, kv)
    g = torch.Generator().manual_seed(0)
    calib, heldout = torch.randint(4, 90, (4, 16), generator=g), torch.randint(4, 90, (2, 16), generator=g)
    # exact fp32 matmuls on both sides: with bf16 (the default) a CPU with AMX rounds differently
    params = parse_params({"pruning": {"unit_importance": "activation"}, "eval": {"matmul_precision": "ieee"}})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wb = Workbench.of(model, tok, params, calib, heldout)
    row = evaluate(wb, Sample("bi", 0.3, 0.4))
    assert abs(row["actual_ratio"] - 0.4) <= 0.005 and row["mask_shape"] == [1, 3, 4]
    assert len(row["mask"]) == 12 and set(row["mask"]) <= {0, 1} and len(row["layer_ratios"]) == 3
    assert row["js"] > 0 and row["ppr"] == pytest.approx(row["js"] / row["actual_ratio"])
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    physical = prune_model(copy.deepcopy(model), wb.planner.plan(Policy("bi", 0.3), 0.4))
    # the configured default
    compensate(model, physical, calib, "lsq", params.pruning.damping, params.pruning.compensation_batch_size)
    assert row["js"] == pytest.approx(js_divergence(model, physical, heldout), rel=1e-5) and row["compensation"] == "lsq"
    assert evaluate(wb, Sample("bi", 0.3, 0.4))["js"] == row["js"]
