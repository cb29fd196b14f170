"""Importance scores on tiny random models: shapes, orientation (higher = more important), caching."""

from __future__ import annotations

import math

import pytest
import torch

from tiny import make_llama, make_text, make_tokenizer
from ppf.arch import layers
from ppf.errors import PPFError
from ppf.importance import (LAYER_SCORES, UNIT_KINDS, hill_alpha, layer_importance, load_importance, matrix_alpha,
                            save_importance, unit_importance)


@pytest.fixture(scope="module")
def calib() -> torch.LongTensor:
    ids = make_tokenizer()(make_text(4 * 32 + 16), return_tensors="pt").input_ids[0]
    return ids[: 4 * 32].view(4, 32)


# ---- layer importance -----------------------------------------------------------------------------
def test_layer_importance_shapes_and_determinism(tiny_llama, calib):
    model, _ = tiny_llama
    a = layer_importance(model, calib, batch_size=3)  # a ragged last micro-batch on purpose
    b = layer_importance(model, calib, batch_size=4)
    assert list(a) == list(LAYER_SCORES) == ["lod", "esd", "bi", "uniform"]
    for name, h in a.items():
        assert len(h) == 3 and all(isinstance(x, float) and math.isfinite(x) for x in h)
        assert h == pytest.approx(b[name], rel=1e-4, abs=1e-6)
    assert a["uniform"] == [0.0, 0.0, 0.0]
    assert all(0 <= x <= 1 for x in a["lod"]) and all(x < 0 for x in a["esd"])


def test_unknown_method_and_missing_calib_are_user_errors(tiny_gqa, calib):
    model, _ = tiny_gqa
    with pytest.raises(PPFError, match="'owl'.*lod, esd, bi, uniform"):
        layer_importance(model, calib, methods=("lod", "owl"))
    with pytest.raises(PPFError, match="calib"):
        layer_importance(model, None, methods=("bi",))
    with pytest.raises(PPFError, match="LongTensor"):
        layer_importance(model, calib.float(), methods=("bi",))
    with pytest.raises(PPFError, match="'fisher'.*taylor, activation"):
        unit_importance(model, calib, kind="fisher")
    assert layer_importance(model, None, methods="esd")["esd"]  # esd needs no data


def test_bi_is_lowest_for_an_identity_layer(tiny_mha, calib):
    model, _ = tiny_mha
    v = layers(model)[1]
    with torch.no_grad():  # both residual branches write zeros: h_out == h_in
        v.o_proj.weight.zero_()
        v.down_proj.weight.zero_()
    bi = layer_importance(model, calib, methods=("bi",))["bi"]
    assert bi[1] == pytest.approx(0.0, abs=1e-5)
    assert bi[1] < min(bi[0], bi[2]) - 1e-3


def test_lod_sees_injected_outliers(tiny_llama, calib):
    model, _ = tiny_llama
    before = layer_importance(model, calib, methods=("lod",))["lod"]
    with torch.no_grad():  # 300 weights of layer 2 (1% of the layer) made 10x larger = outlier Wanda scores
        w = layers(model)[2].q_proj.weight
        w.view(-1)[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))[:300]] *= 10
    after = layer_importance(model, calib, methods=("lod",))["lod"]
    # LOD is relative to the layer mean, which the outliers raise too, so the gain is < 300 scores
    assert after[2] > 1.4 * before[2] and after[2] == max(after)
    assert after[:2] == pytest.approx(before[:2])


# ---- esd: the Hill estimator and its orientation --------------------------------------------------
@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_alpha_recovers_pareto_exponent(alpha):
    g = torch.Generator().manual_seed(1)
    u = torch.rand(4000, generator=g, dtype=torch.float64)
    pareto = 0.7 * u ** (-1 / (alpha - 1))  # density ~ lambda^-alpha above 0.7
    assert hill_alpha(pareto) == pytest.approx(alpha, abs=0.15)
    bulk = torch.rand(2000, generator=g, dtype=torch.float64) * 0.7  # a non-power-law bulk below the tail
    for rule in ("peak", "all"):
        assert hill_alpha(torch.cat([bulk, pareto]), xmin=rule) == pytest.approx(alpha, abs=0.25)


def test_hill_alpha_survives_a_cluster_of_top_eigenvalues_and_checks_its_rule():
    g = torch.Generator().manual_seed(4)
    pareto = 1.0 * torch.rand(3000, generator=g, dtype=torch.float64) ** (-1 / 2.0)  # alpha = 3
    cliff = pareto.max() * (1 + 0.01 * torch.arange(1, 11, dtype=torch.float64))  # 10 tightly packed giants
    eigs = torch.cat([pareto, cliff])
    assert hill_alpha(eigs, xmin="peak") == pytest.approx(3.0, abs=0.3)
    with pytest.raises(PPFError, match="'middle'.*peak, all"):
        hill_alpha(eigs, xmin="middle")


def test_heavy_tailed_weights_get_lower_alpha_and_higher_esd_importance(tiny_mha):
    model, _ = tiny_mha
    g = torch.Generator().manual_seed(2)
    heavy = torch.distributions.StudentT(torch.tensor(1.5))
    torch.manual_seed(3)
    with torch.no_grad():
        for i, v in enumerate(layers(model)):
            for lin in (v.q_proj, v.k_proj, v.v_proj, v.o_proj, v.gate_proj, v.up_proj, v.down_proj):
                w = heavy.sample(lin.weight.shape) if i == 1 else torch.randn(lin.weight.shape, generator=g)
                lin.weight.copy_(0.02 * w)
    assert matrix_alpha(layers(model)[1].gate_proj.weight) < matrix_alpha(layers(model)[0].gate_proj.weight)
    h = layer_importance(model, None, methods=("esd",))["esd"]  # H = -mean alpha
    assert h[1] == max(h) and h[1] > max(h[0], h[2]) + 0.5


# ---- unit importance ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(UNIT_KINDS))
def test_unit_importance_shapes_and_determinism(tiny_llama, calib, kind):
    model, _ = tiny_llama
    n_kv = layers(model)[0].n_kv_heads
    flags = [p.requires_grad for p in model.parameters()]
    a = unit_importance(model, calib, kind=kind, batch_size=3)
    b = unit_importance(model, calib, kind=kind, batch_size=4)
    assert {k: tuple(t.shape) for k, t in a.items()} == {"head": (3, 4), "kv": (3, n_kv), "channel": (3, 96)}
    for k in a:
        assert a[k].dtype == torch.float32 and (a[k] >= 0).all() and (a[k] > 0).any()
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-7)
    # KV score includes its group's query heads
    assert (a["kv"] >= a["head"].view(3, n_kv, -1).sum(-1) - 1e-6).all()
    # state restored: no grads kept, requires_grad and eval mode as before
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_taylor_head_with_zeroed_output_is_least_important(tiny_gqa, calib):
    model, _ = tiny_gqa
    v = layers(model)[1]
    with torch.no_grad():  # head 2 writes nothing: its q rows get no gradient, its o columns are 0
        v.o_proj.weight[:, 2 * v.head_dim:3 * v.head_dim] = 0
    units = unit_importance(model, calib, kind="taylor")
    assert units["head"][1, 2] < 1e-6 * units["head"][1].max()
    assert units["head"][1].argmin() == 2


def test_taylor_includes_qkv_bias(calib):
    model, _ = make_llama(4, 2, layers=2, model_type="qwen2")
    units = unit_importance(model, calib, kind="taylor")
    assert units["head"].shape == (2, 4) and (units["head"] > 0).all()


def test_unit_importance_refuses_a_pruned_model(tiny_mha, calib):
    model, _ = tiny_mha
    mlp = model.model.layers[0].mlp
    with torch.no_grad():  # layer 0 keeps 48 of 96 channels
        mlp.gate_proj = torch.nn.Linear(64, 48, bias=False)
        mlp.up_proj = torch.nn.Linear(64, 48, bias=False)
        mlp.down_proj = torch.nn.Linear(48, 64, bias=False)
    with pytest.raises(PPFError, match="dense"):
        unit_importance(model, calib, kind="activation")


# ---- cache ----------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, tiny_gqa, calib):
    model, _ = tiny_gqa
    layer = layer_importance(model, calib, methods=("bi", "uniform"))
    units = unit_importance(model, calib, kind="activation")
    meta = {"model": "tiny", "kind": "activation", "calib_shape": [4, 32], "outlier_m": 5.0}
    prefix = tmp_path / "cache" / "tiny.calib-v1"  # the dot must survive
    js, st = save_importance(prefix, layer, units, meta)
    assert js.name == "tiny.calib-v1.json" and st.name == "tiny.calib-v1.safetensors"
    layer2, units2, meta2 = load_importance(prefix)
    assert layer2 == layer and meta2 == meta
    assert units2.keys() == units.keys() and all(torch.equal(units[k], units2[k]) for k in units)


def test_load_reports_missing_corrupt_and_mismatched(tmp_path):
    prefix = tmp_path / "imp"
    with pytest.raises(PPFError, match="missing"):
        load_importance(prefix)
    save_importance(prefix, {"bi": [0.1, 0.2]}, {"head": torch.ones(2, 4)}, {"a": 1})
    js = tmp_path / "imp.json"
    good = js.read_text()
    js.write_text(good.replace("0.2", "0.3"))  # edited by hand / paired with other tensors
    with pytest.raises(PPFError, match="do not match"):
        load_importance(prefix)
    js.write_text(good[:20])
    with pytest.raises(PPFError, match="corrupt"):
        load_importance(prefix)
    js.write_text(good)
    (tmp_path / "imp.safetensors").write_bytes(b"garbage")
    with pytest.raises(PPFError, match="corrupt"):
        load_importance(prefix)
