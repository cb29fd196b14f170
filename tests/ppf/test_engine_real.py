"""The engine on the REAL SmolLM2 (slow): exact ratios, masks read back off the weights, reload."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from ppf.models import load

    model, tok = load("smollm2-135m")
    text = Path("/usr/share/common-licenses/GPL-3").read_text() if Path("/usr/share/common-licenses/GPL-3").is_file() \
        else "The history of the city begins in the early years of the century. " * 400
    ids = torch.tensor(tok(text)["input_ids"][: 4 * 128]).view(4, 128)
    return model, tok, ids


def test_policies_hit_the_ratio_and_masks_match_the_pruned_weights(smollm2, tmp_path):
    from ppf.checkpoint import load_pruned, save_pruned
    from ppf.importance import layer_importance, unit_importance
    from ppf.masks import compress, plan_from_model
    from ppf.plan import DenseShape
    from ppf.policy import plan_for
    from ppf.prune import prune_model

    model, tok, calib = smollm2
    H = layer_importance(model, calib, batch_size=2)
    units = unit_importance(model, calib, kind="activation", batch_size=2)
    shape = DenseShape.of(model)
    for ratio, policy in [(0.2, "lod:0.2"), (0.5, "bi:0.2")]:
        plan = plan_for(policy, ratio, H[policy.split(":")[0]], units, shape)
        assert abs(plan.block_ratio - ratio) <= 0.005
        assert compress(plan).shape == (1, 30, 9)
        pruned = prune_model(copy.deepcopy(model), plan)
        read_back = plan_from_model(pruned, model)
        assert (compress(read_back) == compress(plan)).all()
        assert [lp.channels for lp in read_back.layers] == [lp.channels for lp in plan.layers]
        assert sum(p.numel() for p in pruned.parameters()) == plan.kept_block_params + (
            sum(p.numel() for p in model.parameters()) - plan.dense_block_params)
        save_pruned(pruned, tok, tmp_path / policy, base="smollm2-135m")
        back, _ = load_pruned(tmp_path / policy)
        x = calib[:1, :32]
        assert torch.equal(pruned(x).logits, back(x).logits)
        out = back.generate(x[:, :8], max_new_tokens=4, do_sample=False)
        assert out.shape[1] == 12
