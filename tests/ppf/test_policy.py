"""Policies -> plans: Eqs 4-5, whole-unit rounding, the ratio correction, unit selection, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from ppf.errors import PPFError
from ppf.plan import DenseShape, PruningPlan
from ppf.policy import IMPORTANCE_METHODS, Policy, UnitRanks, check_ratio, plan_for, requested_ratios

MHA = DenseShape(n_layers=3, hidden=64, n_heads=4, n_kv_heads=4, head_dim=16, intermediate=96)  # make_llama(4, 4)
GQA = DenseShape(n_layers=3, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate=96)  # make_llama(4, 2)
GQA8 = DenseShape(n_layers=6, hidden=128, n_heads=8, n_kv_heads=2, head_dim=16, intermediate=256)
SMOL = DenseShape(n_layers=30, hidden=576, n_heads=9, n_kv_heads=3, head_dim=64, intermediate=1536)  # SmolLM2-135M
SHAPES = {"mha": MHA, "gqa": GQA, "gqa8": GQA8, "smollm2": SMOL}


def random_units(shape: DenseShape, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"head": torch.rand(shape.n_layers, shape.n_heads, generator=g),
            "kv": torch.rand(shape.n_layers, shape.n_kv_heads, generator=g),
            "channel": torch.rand(shape.n_layers, shape.intermediate, generator=g)}


# ---- Policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,method,a_eta", [
    ("lod:0.2", "lod", 0.2), ("esd:0.1", "esd", 0.1), ("bi:0.3", "bi", 0.3), (" LOD : 0.5 ", "lod", 0.5),
    ("bi:0", "bi", 0.0), ("uniform", "uniform", 0.0), ("uniform:0.3", "uniform", 0.0),
])
def test_parse(text, method, a_eta):
    p = Policy.parse(text)
    assert (p.method, p.a_eta) == (method, a_eta)
    assert Policy.parse(str(p)) == p


def test_str_round_trips_any_a_eta():
    p = Policy("esd", 0.123456789012345)
    assert str(p) == "esd:0.123456789012345" and Policy.parse(str(p)) == p
    assert str(Policy("uniform")) == "uniform"
    assert Policy("uniform", 0.4) == Policy("uniform")


@pytest.mark.parametrize("text,needle", [
    ("owl:0.2", "lod, esd, bi, uniform"), ("lod", "lod:<a_eta>"), ("lod:", "lod:<a_eta>"),
    ("lod:abc", "not a number"), ("lod:0.6", "outside [0, 0.5]"), ("esd:-0.1", "outside"),
    ("bi:nan", "outside"), ("", "unknown importance method"),
])
def test_parse_errors(text, needle):
    with pytest.raises(PPFError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Policy.parse(text)


def test_policy_constructor_validates():
    assert IMPORTANCE_METHODS == ("lod", "esd", "bi", "uniform")
    with pytest.raises(PPFError, match="unknown importance method"):
        Policy("owl", 0.1)
    with pytest.raises(PPFError, match="a_eta"):
        Policy("lod", 0.51)
    with pytest.raises(PPFError):
        Policy.parse(0.2)  # type: ignore[arg-type]


@pytest.mark.parametrize("r", [0.0, 1.0, -0.1, 1.5, float("nan"), "x", None])
def test_check_ratio_rejects(r):
    with pytest.raises(PPFError, match="ratio"):
        check_ratio(r)


def test_check_ratio_accepts():
    assert check_ratio(0.3) == 0.3 and check_ratio(np.float32(0.5)) == 0.5


# ---- Eqs 4-5 -----------------------------------------------------------------------------------
def test_eqs_4_5_by_hand():
    H = [0.0, 1.0, 2.0, 3.0]  # mean 1.5, span 3
    eta = 2 * 0.2 / 3
    np.testing.assert_allclose(requested_ratios(H, 0.5, 0.2), [0.5 + eta * (1.5 - h) for h in H])
    np.testing.assert_allclose(requested_ratios(H, 0.5, 0.2), [0.7, 0.5 + 0.2 / 3, 0.5 - 0.2 / 3, 0.3])
    S = requested_ratios([4.0, -2.0, 7.0], 0.3, 0.5)  # mean is the target, spread is ±2·a_eta at most
    assert S.mean() == pytest.approx(0.3) and S.max() - S.min() == pytest.approx(1.0)


def test_equal_scores_give_the_target_everywhere():
    np.testing.assert_allclose(requested_ratios([0.0] * 5, 0.4, 0.5), [0.4] * 5)
    np.testing.assert_allclose(requested_ratios([2.5], 0.4, 0.3), [0.4])


def test_requested_ratios_errors():
    with pytest.raises(PPFError, match="NaN"):
        requested_ratios([0.0, float("nan")], 0.4, 0.1)
    with pytest.raises(PPFError, match="1-D"):
        requested_ratios([], 0.4, 0.1)
    with pytest.raises(PPFError, match="a_eta"):
        requested_ratios([0.0, 1.0], 0.4, 0.7)
    with pytest.raises(PPFError, match="target"):
        requested_ratios([0.0, 1.0], 1.2, 0.1)


def test_orientation_more_important_layers_are_pruned_less():
    H = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2]  # higher = more important
    shape = DenseShape(6, 128, 8, 2, 16, 256)
    plan = plan_for(Policy("lod", 0.3), 0.4, H, random_units(shape), shape)
    req = np.array(plan.meta["requested"])
    actual = np.array(plan.meta["layer_ratios"])
    order = np.argsort(H)
    assert (np.diff(req[order]) < 0).all()  # strictly: requested ratio falls as H rises
    assert actual[np.argmax(H)] < actual[np.argmin(H)]
    assert np.corrcoef(H, actual)[0, 1] < -0.9


# ---- plan_for: accuracy and structure ----------------------------------------------------------
def _random_policy(rng: np.random.Generator) -> Policy:
    method = IMPORTANCE_METHODS[rng.integers(len(IMPORTANCE_METHODS))]
    return Policy(method, float(rng.uniform(0, 0.5)))


@pytest.mark.parametrize("name", list(SHAPES))
def test_actual_ratio_meets_target(name):
    """≥ 200 random (policy, target, H) per shape: the ROUNDED plan is within ±0.005 of the target."""
    shape = SHAPES[name]
    rng = np.random.default_rng(1)
    ranks = UnitRanks.of(random_units(shape, seed=2), shape)
    errors = []
    for trial in range(200):
        policy = _random_policy(rng)
        target = float(rng.uniform(0.1, 0.7))
        H = rng.normal(size=shape.n_layers) if trial % 10 else np.full(shape.n_layers, 3.0)
        plan = plan_for(policy, target, H, ranks, shape)
        errors.append(abs(plan.block_ratio - target))
        assert plan.meta["actual"] == plan.block_ratio
        assert max(plan.meta["ratios"]) <= 0.9 and min(plan.meta["ratios"]) >= 0.0
    print(f"{name}: max |actual - target| = {max(errors):.2e}, mean {np.mean(errors):.2e}")
    assert max(errors) <= 0.005


def test_every_plan_obeys_gqa_and_rounding_rules():
    """Per layer: attention is the valid (g, q) nearest (1-s)·dense attention, the layer total is
    nearest (1-s)·dense layer (within half an MLP channel unless the channel count is clipped)."""
    rng = np.random.default_rng(3)
    for shape in (GQA8, SMOL):
        ranks = UnitRanks.of(random_units(shape), shape)
        per_channel = 3 * shape.hidden
        configs = [(g, q) for g in range(1, shape.n_kv_heads + 1) for q in range(1, shape.groups + 1)]
        for _ in range(20):
            plan = plan_for(_random_policy(rng), float(rng.uniform(0.1, 0.7)), rng.normal(size=shape.n_layers),
                            ranks, shape)
            PruningPlan.from_dict(json.loads(plan.to_json()))  # re-validates (GQA rule) and is JSON-clean
            for i, (s, lp) in enumerate(zip(plan.meta["ratios"], plan.layers, strict=True)):
                g, q = len(lp.kv_heads), len(lp.heads) // len(lp.kv_heads)
                want_attn = (1 - s) * shape.attention_params(shape.n_heads, shape.n_kv_heads)
                best = min(abs(shape.attention_params(a * b, a) - want_attn) for a, b in configs)
                assert abs(shape.attention_params(g * q, g) - want_attn) == pytest.approx(best)
                c = len(lp.channels)
                if 1 < c < shape.intermediate:
                    assert abs(plan.layer_params(i) - (1 - s) * shape.dense_layer_params) <= per_channel / 2 + 1e-6


def test_units_select_the_best():
    shape = GQA8  # 8 heads in 2 KV groups of 4
    units = random_units(shape, seed=5)
    plan = plan_for(Policy("bi", 0.2), 0.5, np.arange(shape.n_layers, dtype=float), units, shape)
    for i, lp in enumerate(plan.layers):
        kv = units["kv"][i]
        assert set(lp.kv_heads) == set(torch.argsort(kv, descending=True)[: len(lp.kv_heads)].tolist())
        q = len(lp.heads) // len(lp.kv_heads)
        for grp in lp.kv_heads:
            members = torch.arange(grp * shape.groups, (grp + 1) * shape.groups)
            best = members[torch.argsort(units["head"][i, members], descending=True)[:q]].tolist()
            assert set(best) == {h for h in lp.heads if h // shape.groups == grp}
        ch = units["channel"][i]
        assert set(lp.channels) == set(torch.argsort(ch, descending=True)[: len(lp.channels)].tolist())
        assert min(ch[list(lp.channels)]) >= max(np.delete(ch.numpy(), lp.channels), default=-1)


def test_ties_are_broken_by_index_and_inputs_may_be_numpy_or_torch():
    shape = GQA
    zeros = {"head": np.zeros((3, 4)), "kv": np.zeros((3, 2)), "channel": np.zeros((3, 96))}
    plan = plan_for(Policy("uniform"), 0.5, [0.0] * 3, zeros, shape)
    for lp in plan.layers:
        assert lp.channels == tuple(range(len(lp.channels)))
        assert lp.kv_heads == tuple(range(len(lp.kv_heads)))
    assert plan_for(Policy("uniform"), 0.5, [0.0] * 3, None, shape) == plan
    units = random_units(GQA8, seed=7)
    as_numpy = {k: v.numpy().astype(np.float64) for k, v in units.items()}
    as_bf16 = {k: v.to(torch.bfloat16).float() for k, v in units.items()}
    args = (Policy("esd", 0.25), 0.35, np.linspace(0, 1, 6))
    assert plan_for(*args, units, GQA8) == plan_for(*args, as_numpy, GQA8) == plan_for(*args, UnitRanks.of(units, GQA8), GQA8)
    assert plan_for(*args, as_bf16, GQA8) == plan_for(*args, as_bf16, GQA8)  # deterministic with many ties


def test_uniform_policy_and_meta():
    plan = plan_for(Policy.parse("uniform"), 0.3, [0.0] * 30, random_units(SMOL), SMOL)
    m = plan.meta
    assert (m["method"], m["a_eta"], m["policy"], m["target"]) == ("uniform", 0.0, "uniform", 0.3)
    assert m["requested"] == [0.3] * 30 and abs(m["actual"] - 0.3) <= 0.005
    assert len(m["layer_ratios"]) == 30 and max(m["layer_ratios"]) - min(m["layer_ratios"]) < 0.05
    json.dumps(m)
    assert plan_for("lod:0.1", 0.3, np.arange(30.0), None, SMOL).meta["policy"] == "lod:0.1"
    assert plan_for("uniform", 0.3, None, None, SMOL) == plan_for("uniform", 0.3, [1.0] * 30, None, SMOL)


def test_coarse_attention_on_9_heads_3_kv():
    """SmolLM2 (9 heads / 3 KV heads): attention sizes come in 7 steps, so a uniform 0.1 keeps every
    head (nearest to 90% attention is 100%) and the MLP alone carries the ratio."""
    sizes = {(len(lp.heads), len(lp.kv_heads)) for lp in plan_for("uniform", 0.1, None, None, SMOL).layers}
    assert sizes == {(9, 3)}
    sizes = {(len(lp.heads), len(lp.kv_heads)) for lp in plan_for("uniform", 0.5, None, None, SMOL).layers}
    assert sizes == {(4, 2)}  # 50% attention: 4 heads / 2 KV ties with 3 / 3; more query heads win


# ---- plan_for: errors --------------------------------------------------------------------------
def test_unreachable_target():
    with pytest.raises(PPFError, match="target 0.95 is above what any policy can reach with max_layer_ratio 0.9"):
        plan_for(Policy("lod", 0.2), 0.95, np.arange(30.0), None, SMOL)
    # tiny layers keep at least one head (4096 params) and one channel: ~0.874 is their ceiling
    with pytest.raises(PPFError, match="above what any policy can reach"):
        plan_for(Policy("uniform"), 0.89, [0.0] * 3, None, MHA)
    with pytest.raises(PPFError, match="max_layer_ratio 0.5"):
        plan_for(Policy("uniform"), 0.6, [0.0] * 3, None, MHA, max_layer_ratio=0.5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(H=[0.0, 1.0]), "2 entries, the model has 3 layers"),
    (dict(H=[0.0, float("inf"), 1.0]), "NaN/inf"),
    (dict(target=0.0), "target ratio"),
    (dict(max_layer_ratio=1.0), "max_layer_ratio"),
    (dict(tol=0.0), "tol"),
    (dict(units={"head": np.zeros((3, 4)), "kv": np.zeros((3, 2))}), "lack 'channel'"),
    (dict(units={"head": np.zeros((3, 4)), "kv": np.zeros((3, 4)), "channel": np.zeros((3, 96))}), r"\(3, 2\)"),
    (dict(units={"head": np.zeros((3, 4)), "kv": np.zeros((3, 2)), "channel": np.full((3, 96), np.nan)}), "NaN"),
    (dict(units=[1, 2, 3]), "mapping"),
    (dict(policy="owl:0.1"), "unknown importance method"),
    (dict(H=None), "1-D"),  # only uniform may omit the layer scores
    (dict(tol=1e-7), "cannot be met within"),  # one MLP channel of a tiny layer is 0.0018 of the block
])
def test_bad_inputs(kwargs, needle):
    args = dict(policy=Policy("lod", 0.1), target=0.3, H=[0.0, 1.0, 2.0], units=None, shape=GQA)
    args.update(kwargs)
    with pytest.raises(PPFError, match=needle):
        plan_for(**args)


# ---- speed -------------------------------------------------------------------------------------
def test_plan_for_is_fast_on_smollm2_shape(monkeypatch):
    """The predictor's input path; target < 5 ms for 30 layers (timings reported, not asserted: the work
    is counted instead). With prebuilt :class:`UnitRanks` a plan ranks nothing (ranking is the only
    part that touches every channel), from raw scores it ranks the three unit kinds once; the offset's
    bisection converges in a few rounding passes, far inside its 64-step cap."""
    from ppf.policy import units as U

    rng = np.random.default_rng(0)
    units = random_units(SMOL)
    ranks = UnitRanks.of(units, SMOL)
    H = rng.normal(size=30)
    cases = [(Policy(m, 0.05 * k), 0.1 + 0.05 * k) for k in range(10) for m in ("lod", "esd")]
    counts = {"rankings": 0, "roundings": 0}
    real_ranks, real_round = U._ranks, U._Rounder.__call__

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(U, "_ranks", counted("rankings", real_ranks))
    monkeypatch.setattr(U._Rounder, "__call__", counted("roundings", real_round))
    timings, work = {}, {}
    for name, u in (("ranked", ranks), ("raw", units)):
        plan_for(*cases[0], H, u, SMOL)
        per_plan = []
        t0 = time.perf_counter()
        for policy, target in cases:
            counts.update(rankings=0, roundings=0)
            plan_for(policy, target, H, u, SMOL)
            per_plan.append(dict(counts))
        timings[name] = (time.perf_counter() - t0) / len(cases) * 1e3
        work[name] = per_plan
    print(f"plan_for on SmolLM2 shape: {timings['ranked']:.2f} ms with UnitRanks, {timings['raw']:.2f} ms from raw scores")
    assert all(w["rankings"] == 0 for w in work["ranked"]) and all(w["rankings"] == 3 for w in work["raw"])
    assert [w["roundings"] for w in work["ranked"]] == [w["roundings"] for w in work["raw"]]
    assert max(w["roundings"] for w in work["ranked"]) <= 20
