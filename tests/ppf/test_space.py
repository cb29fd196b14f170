"""PPF's extended policy space: every baseline's allocation is a point in it, its parts plan, prune,
save and reload, and bad policies are refused with one clear error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import ppf.workbench as W
from ppf.baselines import blockpruner, llm_pruner, owl, alpha, shortgpt  # noqa: F401  (registered)
from ppf.baselines.registry import get
from ppf.checkpoint import load_pruned, save_pruned
from ppf.config import parse_params
from ppf.errors import PPFError
from ppf.plan import DenseShape
from ppf.policy import Policy, _normalised, feasible, reach, requested_ratios
from ppf.recipes.prune import prune
from tiny import make_llama


def _tokens(n, seq=16, seed=0):
    return torch.randint(4, 90, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[(4, 4), (4, 2)], ids=["mha", "gqa"])
def bench(request):
    heads, kv = request.param
    model, tok = make_llama(heads, kv, layers=8)
    params = parse_params({"calibration": {"n_samples": 4, "seqlen": 16}, "pruning": {"compensation": "none"},
                           "benchmark": {"llm_pruner_keep": [2, 1], "blockpruner": {"n_samples": 2, "seqlen": 16}}})
    return W.Workbench.of(model, tok, params, _tokens(4), _tokens(2, seed=3))


# ---- the text form ------------------------------------------------------------------------------
def test_the_paper_form_still_parses_and_the_extended_form_round_trips():
    assert Policy.parse("lod:0.2") == Policy("lod", 0.2) and str(Policy("lod", 0.2)) == "lod:0.2"
    assert Policy.parse("lod:0.2").is_paper
    p = Policy.parse(" LOD:0.2, norm=rank, keep=4:2, blocks=3, attn=0.25 ")
    assert (p.norm, p.first, p.last, p.depth, p.order, p.attn) == ("rank", 4, 2, 3, "blocks", 0.25)
    assert Policy.parse(str(p)) == p and not p.is_paper
    assert Policy.parse("uniform,keep=4:2") == Policy("uniform", first=4, last=2)


@pytest.mark.parametrize("text, match", [
    ("lod:0.2,speed=fast", "unknown part 'speed=fast'"),
    ("lod:0.2,norm=zscore", "norm='zscore'"),
    ("lod:0.2,keep=4", "keep=FIRST:LAST"),
    ("lod:0.2,layers=-1", "layers=N"),
    ("lod:0.2,blocks=x", "blocks=N"),
    ("lod:0.2,layers=1,blocks=2", "both layers= and blocks="),
    ("lod:0.2,order=random,layers=2", "order= is gone; write layers=N or blocks=N"),
    ("lod:0.2,depth=2", "depth= is gone; write layers=N"),
    ("lod:0.2,split=0.1", "split= is gone; write attn=S"),
    ("lod:0.2,attn=1.5", "attn='1.5' is outside"),
    ("lod:0.2,attn=-0.1", "outside"),
    ("lod:0.2,layers=2,layers=3", "twice"),
])
def test_bad_policy_text_is_one_clear_error(text, match):
    with pytest.raises(PPFError, match=match):
        Policy.parse(text)


def test_impossible_policies_for_a_model_are_refused(bench):
    n = bench.shape.n_layers
    with pytest.raises(PPFError, match=f"keep=5:3 protects 8 layers of {n}"):
        bench.planner.plan(Policy.parse("uniform,keep=5:3"), 0.3)
    with pytest.raises(PPFError, match="removes every one of the 8 layers"):
        bench.planner.plan(Policy.parse("uniform,layers=8"), 0.5)
    with pytest.raises(PPFError, match="more than the target"):
        bench.planner.plan(Policy.parse("uniform,layers=4"), 0.2)
    with pytest.raises(PPFError, match="BlockPruner's block order"):
        bench.planner.plan(Policy.parse("uniform,blocks=2"), 0.3)


# ---- robust normalisation -----------------------------------------------------------------------
def test_rank_normalisation_is_invariant_to_one_outlier_score():
    """BI on SmolLM2: layer 0 at 0.994, the rest 0.02-0.07. minmax squeezes the rest into a sliver of the
    spread; ranks do not care how far the outlier is."""
    rng = np.random.default_rng(0)
    h = rng.uniform(0.02, 0.07, 30)
    h[0] = 0.994
    far = h.copy()
    far[0] = 1e6
    near = h.copy()
    near[0] = 0.0701  # just above the others: an ordinary top layer
    r = {k: requested_ratios(_normalised(x, "rank"), 0.4, 0.2) for k, x in (("h", h), ("far", far), ("near", near))}
    np.testing.assert_array_equal(r["h"], r["far"])
    np.testing.assert_array_equal(r["h"], r["near"])
    minmax = requested_ratios(h, 0.4, 0.2)
    assert np.ptp(minmax[1:]) < 0.05 < np.ptp(r["h"][1:])  # the outlier flattens the others under minmax


# ---- every baseline is a point of the space ------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_every_baselines_allocation_is_a_policy_of_the_space(bench, ratio):
    wb, planner = bench, bench.planner
    first, last = wb.params.benchmark.llm_pruner_keep
    uniform = planner.plan(Policy("uniform"), ratio)
    assert uniform == planner.plan_scores([0.0] * wb.shape.n_layers, 0.0, ratio)  # the paper's a_eta = 0
    lp = planner.plan(Policy("uniform", first=first, last=last, attn="groups"), ratio)
    assert lp == get("llm_pruner").plan(wb, ratio)[1]
    # LLM-Pruner's structure: edge layers dense, one requested ratio for the rest
    n = wb.shape.n_layers
    assert all(lp.layer_ratios()[i] == 0 for i in [*range(first), *range(n - last, n)])
    assert len(set(np.round(lp.meta["ratios"][first:n - last], 12))) == 1
    lam, eps = wb.params.agent.validation.owl_lambda, wb.params.agent.validation.alpha_epsilon
    assert planner.plan(Policy("lod", lam), ratio) == get("owl").plan(wb, ratio)[1]
    assert planner.plan(Policy("esd", eps * ratio), ratio) == get("alpha").plan(wb, ratio)[1]
    # depth baselines: their own code picks the blocks; the policy's depth part must pick the same
    short = get("shortgpt").plan(wb, ratio)[1]
    d = len(short.removed_layers)
    assert planner.plan(Policy("uniform", depth=d), short.block_ratio) == short
    steps = get("blockpruner").prepare(wb, ratio + 0.05)
    block = get("blockpruner").plan(wb, ratio, steps)[1]
    k = len(block.removed_attention) + len(block.removed_mlp)
    ordered = replace(planner, block_order=tuple((s["kind"], s["layer"]) for s in steps))
    assert ordered.plan(Policy("uniform", depth=k, order="blocks"), block.block_ratio) == block


# ---- BlockPruner's order: searched once, stored, read by every planner -------------------------
def test_the_block_order_is_searched_once_stored_and_read_by_later_planners(tmp_path):
    from ppf.block_order import cached_removal_order, removal_order

    model, tok = make_llama(4, 2, layers=6)
    params = parse_params({"calibration": {"n_samples": 4, "seqlen": 16}, "pruning": {"compensation": "none"},
                           "benchmark": {"blockpruner": {"n_samples": 2, "seqlen": 16, "order_ratio": 0.3}}})
    wb = W.Workbench.of(model, tok, params, _tokens(4), _tokens(2, seed=3), root=tmp_path)
    assert wb.planner.block_order is None  # nothing stored yet: blocks=N is refused, as above
    policy = Policy.parse("uniform,blocks=3")
    report = prune(wb, policy, 0.35, out=None)  # `ppf prune` searches the missing order once
    assert abs(report["actual_block_ratio"] - 0.35) <= params.pruning.tolerance
    batch = _tokens(4)[:2, :16].long()
    direct = removal_order(model, batch, wb.shape, 0.37)
    order = tuple((s["kind"], s["layer"]) for s in direct)
    # a new planner for the same model and calibration reads the stored order, without any model
    again = W.Workbench.of(model, tok, params, _tokens(4), _tokens(2, seed=3), root=tmp_path)
    assert again.planner.block_order == order
    assert again.planner.plan(policy, 0.35) == wb.planner.plan(policy, 0.35)
    # a shorter ratio reads the stored prefix (the same as searching that far); a longer one is a miss
    folders = (W.cache_dir() / "importance",)
    assert cached_removal_order(None, wb.name, batch, wb.shape, 0.1, folders, None) == removal_order(model, batch, wb.shape, 0.1)
    assert cached_removal_order(None, wb.name, batch, wb.shape, 0.6, folders, None) is None
    # other calibration tokens: another order, never the stored one
    assert cached_removal_order(None, wb.name, _tokens(2, seed=9), wb.shape, 0.1, folders, None) is None
    # the search ignores eval.matmul_precision: a bf16 project reads the same stored order
    fast = params.model_copy(update={"eval": params.eval.model_copy(update={"matmul_precision": "bf16"})})
    assert W.Workbench.of(model, tok, fast, _tokens(4), _tokens(2, seed=3), root=tmp_path).planner.block_order == order


# ---- depth and split plan, prune, save and reload -----------------------------------------------
@pytest.mark.parametrize("text", ["bi:0.2,layers=2", "lod:0.3,norm=rank,keep=1:1,layers=1,attn=0.6",
                                  "esd:0.1,attn=0.0", "uniform,blocks=2"])
def test_an_extended_policy_meets_the_target_and_reloads_with_identical_logits(bench, text, tmp_path):
    wb = bench
    steps = get("blockpruner").prepare(wb, 0.45)
    planner = replace(wb.planner, block_order=tuple((s["kind"], s["layer"]) for s in steps))
    pol = Policy.parse(text)
    plan = planner.plan(pol, 0.4)
    assert abs(plan.block_ratio - 0.4) <= wb.params.pruning.tolerance
    if pol.depth and pol.order == "layers":
        assert len(plan.removed_layers) == pol.depth
    if pol.first:
        assert plan.layer_ratios()[0] == 0 and plan.layer_ratios()[-1] == 0
    model = wb.pruned(plan)
    ck = save_pruned(model, wb.tokenizer, tmp_path / "ck", base="tiny")
    again, _ = load_pruned(ck)
    x = _tokens(2, seed=7)
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert again.ppf_plan == plan


def test_split_moves_the_reduction_between_attention_and_mlp(bench):
    planner, s = bench.planner, bench.shape
    attn_kept = lambda p: sum(len(lp.heads) for lp in p.layers)  # noqa: E731
    mlp_kept = lambda p: sum(len(lp.channels) for lp in p.layers)  # noqa: E731
    none, mlp_only, attn_heavy = (planner.plan(Policy.parse(t), 0.3) for t in ("lod:0.1", "lod:0.1,attn=0", "lod:0.1,attn=0.6"))
    assert attn_kept(mlp_only) == s.n_layers * s.n_heads  # split 0: attention untouched
    assert attn_kept(attn_heavy) < attn_kept(none) and mlp_kept(attn_heavy) > mlp_kept(none)


def test_a_paper_policy_plans_exactly_as_before(bench):
    """The extended planner on a paper policy is the paper's mapping (what plan_for did before the parts)."""
    planner = bench.planner
    for text in ("lod:0.2", "bi:0.5", "esd:0.05", "uniform"):
        pol = Policy.parse(text)
        plan = planner.plan(pol, 0.35)
        H = planner.layer_scores.get(pol.method)
        np.testing.assert_allclose(plan.meta["requested"], requested_ratios(H if H is not None else [0.0] * 8, 0.35, pol.a_eta))
        assert "removed" not in plan.meta


# ---- collection over the space, the predictor's input, the agent's action ----------------------
def test_collection_samples_the_space_reproducibly_and_the_paper_grid_stays_as_it_was():
    from ppf.samples import Sample, policy_grid, sample_policies, sample_space, within_ratio_samples
    from ppf.config import CollectParams, SpaceParams

    grid = policy_grid((0.1, 0.7, 0.025), (0.0, 0.5, 0.05), ("lod", "esd", "bi"))
    paper = sample_policies(grid, 100, 0)
    shape = DenseShape(30, 576, 9, 3, 64, 1536)  # SmolLM2
    assert sample_space(grid, 100, 0, SpaceParams(fraction=0.0), shape) == paper  # fraction 0: the paper's samples
    space = SpaceParams(fraction=0.6, keep=4, depth=6, attn=(0.0, 0.5), groups=0.0)
    drawn = sample_space(grid, 100, 0, space, shape)
    assert drawn == sample_space(grid, 100, 0, space, shape) and len(drawn) == 100
    extended = [s for s in drawn if s.parts]
    assert 40 <= len(extended) <= 80
    for s in extended:
        p = s.policy
        assert p.first <= 4 and p.last <= 4 and p.depth <= min(6, int(s.ratio * 30))
        assert p.attn is None or 0 <= p.attn <= 0.5
        assert reach(p, shape) >= s.ratio  # every drawn policy can meet its ratio
        assert Sample.of(p, s.ratio) == s and p == Policy.parse(str(p))
    assert any(s.policy.depth for s in extended) and any(s.policy.norm == "rank" for s in extended)
    c = CollectParams(space=space, within={"ratios": [0.2, 0.4], "n": 20})
    within = within_ratio_samples(c, shape)
    assert len(within) == 40 and all(s.holdout for s in within) and len({s.key for s in within}) == 40
    assert {s.ratio for s in within} == {0.2, 0.4}
    assert not {s.key for s in within} & {s.key for s in drawn}  # a within-ratio key never collides


def test_the_blocks_image_sees_every_mlp_width_and_the_removed_blocks(bench):
    from ppf.masks import compress
    from ppf.predictor.features import image, image_shape

    planner = bench.planner
    a, b = planner.plan(Policy.parse("lod:0.1"), 0.30), planner.plan(Policy.parse("lod:0.1"), 0.31)
    if [len(lp.heads) for lp in a.layers] == [len(lp.heads) for lp in b.layers]:
        assert np.array_equal(compress(a), compress(b))  # the paper's image cannot tell them apart
    assert not np.array_equal(image(a, "blocks"), image(b, "blocks"))
    deep = planner.plan(Policy.parse("uniform,layers=2"), 0.4)
    img = image(deep, "blocks")
    assert img.shape == image_shape(bench.shape, "blocks")
    for i in deep.removed_layers:
        assert not img[:, i].any()  # a removed layer is an all-zero row in both planes
    for i in set(range(bench.shape.n_layers)) - set(deep.removed_layers):
        assert img[0, i].any() and img[1, i].any()


def test_the_agents_action_covers_the_space_and_round_trips():
    from ppf.agent.env import ActionSpace
    from ppf.config import SpaceParams

    shape = DenseShape(30, 576, 9, 3, 64, 1536)
    paper = ActionSpace.of(SpaceParams(fraction=0.0), shape)
    assert paper.dim == 4 and paper.decode(paper.encode(Policy("bi", 0.25))) == Policy("bi", 0.25)
    space = ActionSpace.of(SpaceParams(fraction=0.5, keep=4, depth=6, attn=(0.0, 0.5), groups=0.0), shape)
    assert space.dim == 4 + 1 + 2 + 1 + 1
    pol = Policy("esd", 0.2, norm="rank", first=2, last=1, depth=3, attn=0.25)
    assert space.decode(space.encode(pol), 0.4) == pol
    assert space.decode(space.encode(pol), 0.05).depth == 1  # never more layers than the ratio allows
    assert ActionSpace.from_dict(space.to_dict()) == space
    with_groups = ActionSpace.of(SpaceParams(fraction=0.5, keep=4, depth=6, attn=(0.0, 0.5), groups=0.3), shape)
    assert with_groups.dim == space.dim + 1
    llmp = Policy("uniform", first=4, last=2, attn="groups")
    assert with_groups.decode(with_groups.encode(llmp), 0.4) == Policy("lod", 0.0, first=4, last=2, attn="groups")
    rng = np.random.default_rng(0)
    for r in (0.1, 0.3, 0.7):  # any action is a policy that plans at its ratio
        for _ in range(30):
            p = space.decode(rng.uniform(-1, 1, space.dim), r)
            assert p.first + p.last < 30 and p.depth <= int(r * 30) and reach(p, shape) >= r
    # what stands in the way goes: keep first, then the attention share
    tight = feasible(Policy("lod", 0.2, first=4, last=4, attn=0.0), 0.7, shape)
    assert reach(tight, shape) >= 0.7 and (tight.first, tight.last) < (4, 4)


def _smol_block_order():
    """A BlockPruner-like order for SmolLM2's shape: attention blocks of the middle first, then MLPs,
    then whole layers' worth mixed (up to about half the block parameters)."""
    order = [("attention", i) for i in (14, 15, 13, 16, 12, 17, 11, 18, 10, 19)]
    order += [("mlp", i) for i in (15, 14, 16, 13, 17, 12)]
    order += [(k, i) for i in (20, 9, 21, 8, 22, 7) for k in ("attention", "mlp")]
    return tuple(order)


def test_the_blocks_order_is_a_dimension_of_collection_and_of_the_action():
    from ppf.agent.env import ActionSpace
    from ppf.samples import Sample, policy_grid, sample_space
    from ppf.config import SpaceParams
    from ppf.policy import depth_ratio, keep_masks, plan_for

    shape, order = DenseShape(30, 576, 9, 3, 64, 1536), _smol_block_order()
    H = np.linspace(0.0, 1.0, 30)
    grid = policy_grid((0.1, 0.7, 0.025), (0.0, 0.5, 0.05), ("lod", "esd", "bi"))
    layers_only = SpaceParams(fraction=0.6, keep=4, depth=6, attn=(0.0, 0.5))
    both = SpaceParams(fraction=0.6, keep=4, depth=6, attn=(0.0, 0.5), orders=["layers", "blocks"], block_depth=20)
    # one order: the draws are exactly those of before the order was a dimension
    assert sample_space(grid, 100, 0, layers_only, shape) == sample_space(grid, 100, 0, layers_only, shape, 0.9, order)
    with pytest.raises(PPFError, match="no BlockPruner block order"):
        sample_space(grid, 100, 0, both, shape)
    drawn = sample_space(grid, 100, 0, both, shape, 0.9, order)
    assert drawn == sample_space(grid, 100, 0, both, shape, 0.9, order)
    blocks = [s for s in drawn if s.policy.order == "blocks"]
    assert len(blocks) >= 10 and any(s.policy.order == "layers" and s.policy.depth for s in drawn)
    for s in blocks:
        p = s.policy
        assert 0 < p.depth <= 20 and depth_ratio(p, shape, order) <= s.ratio
        assert reach(p, shape, 0.9, order) >= s.ratio and Sample.of(p, s.ratio) == s
        plan = plan_for(p, s.ratio, H, None, shape, bi=H, block_order=order)
        assert abs(plan.block_ratio - s.ratio) <= 0.005  # the ACTUAL ratio, as for every policy
        removed = plan.meta["removed"]
        for kind in ("attention", "mlp"):  # the order's first depth blocks (none of them is an edge layer)
            assert set(removed[kind]) == {i for k, i in order[: p.depth] if k == kind}
        assert all(not plan.layers[i].heads for i in removed["attention"])
        assert all(not plan.layers[i].channels for i in removed["mlp"])
    # the action: one coordinate picks the order, the depth coordinate reads blocks for blocks=N
    with pytest.raises(PPFError, match="no BlockPruner block order"):
        ActionSpace.of(both, shape)
    space = ActionSpace.of(both, shape, 0.9, order)
    assert space.dim == ActionSpace.of(layers_only, shape).dim + 1
    assert ActionSpace.from_dict(space.to_dict()) == space
    pol = Policy("lod", 0.2, first=1, last=1, depth=10, order="blocks", attn=0.25)
    assert space.decode(space.encode(pol), 0.4) == pol
    assert space.decode(space.encode(pol), 0.05).depth == 4  # 10 attention blocks are 8.3 %: 4 fit in 0.05 - margin
    rng = np.random.default_rng(0)
    for r in (0.1, 0.3, 0.5):
        for _ in range(30):
            p = space.decode(rng.uniform(-1, 1, space.dim), r)
            assert reach(p, shape, 0.9, order) >= r and depth_ratio(p, shape, order) <= r
            keep_masks(p, r, H, None, shape, bi=H, block_order=order)  # every action plans


@pytest.mark.parametrize("space, bench_order, match", [
    ({"orders": ["layers", "blocks"]}, 0.52, "block_depth is 0"),
    ({"orders": ["blocks", "blocks"], "block_depth": 4}, 0.52, "names an order twice"),
    ({"orders": ["blocks"], "block_depth": 4}, 0.0, "order_ratio is 0"),
    ({"orders": ["depth"], "block_depth": 4}, 0.52, "orders"),
])
def test_a_blocks_order_without_its_settings_is_one_clear_error(space, bench_order, match):
    with pytest.raises(PPFError, match=match):
        parse_params({"collect": {"space": {"fraction": 0.5, **space}},
                      "benchmark": {"blockpruner": {"order_ratio": bench_order}}})


def test_within_ratio_spearman_ranks_inside_each_ratio_only():
    from ppf.recipes.predictor import by_ratio

    ratios = np.array([0.2] * 4 + [0.4] * 4)
    true = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=float)
    # overall the prediction follows the ratio perfectly; inside each ratio it is reversed
    pred = np.array([4, 3, 2, 1, 8, 7, 6, 5], dtype=float)
    groups = by_ratio(ratios, true, pred)
    assert groups == {"0.2": pytest.approx(-1.0), "0.4": pytest.approx(-1.0)}


def test_split_groups_is_llm_prunings_rule():
    """LLM-Pruner's pruner (its llama3.py on a GQA model): one unit ratio r per layer; the KV rows lose
    n·hd − int(n·hd·(1 − r)) in whole heads (with their query heads), the MLP int(I·r)-ish channels. On
    SmolLM2's shape at 40 % (layers 4-27 pruned) that is 6 query / 2 KV heads and ~683 channels."""
    shape = DenseShape(30, 576, 9, 3, 64, 1536)
    pol = Policy.parse("uniform,keep=4:2,attn=groups")
    assert pol.attn == "groups" and Policy.parse(str(pol)) == pol
    from ppf.policy import plan_for

    plan = plan_for(pol, 0.4, None, None, shape)
    assert abs(plan.block_ratio - 0.4) <= 0.005
    for lp in plan.layers[4:28]:
        assert (len(lp.heads), len(lp.kv_heads)) == (6, 2) and abs(len(lp.channels) - 683) <= 2
        assert len(lp.heads) == 3 * len(lp.kv_heads)  # whole groups only: no query head is pruned inside one
    for lp in (*plan.layers[:4], *plan.layers[28:]):
        assert len(lp.channels) == 1536


def test_feasible_gives_up_blocks_that_leave_too_few_layers_to_width_prune():
    # 4 layers, BlockPruner's order taking every layer's attention first: blocks=4 removes 0.2 of the
    # block parameters and touches every layer, leaving none for width pruning: 0.4 is out of reach —
    # the blockpruner contender of a tiny project once failed to plan exactly like this
    from ppf.policy import depth_ratio, keep_masks

    shape = DenseShape(4, 64, 4, 2, 16, 256)  # attention 1/5 of a layer
    order = (("attention", 1), ("attention", 2), ("attention", 3), ("attention", 0), ("mlp", 2))
    deep = Policy("uniform", depth=4, order="blocks")
    assert depth_ratio(deep, shape, order) < 0.4 and reach(deep, shape, 0.9, order) < 0.4
    with pytest.raises(PPFError, match="no layer to width-prune"):
        keep_masks(deep, 0.4, np.ones(4), None, shape, block_order=order)
    p = feasible(deep, 0.4, shape, 0.9, block_order=order)
    assert p.order == "blocks" and 0 < p.depth < 4 and reach(p, shape, 0.9, order) >= 0.4
    keep_masks(p, 0.4, np.ones(4), None, shape, block_order=order)  # it plans
    assert feasible(p, 0.4, shape, 0.9, block_order=order) == p  # and stays as it is
