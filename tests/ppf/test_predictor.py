"""The CNN predictor: any mask size, ablation switches, training that learns, hold-out, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ppf.errors import PPFError
from ppf.plan import DenseShape
from ppf.predictor import (NetConfig, Predictor, PredictorNet, TrainConfig, fit, image, image_shape, load_predictor,
                           holdout, policy_groups, predict, read_samples, save_predictor, scores)


@pytest.mark.parametrize("size", [(30, 9), (32, 32), (3, 4), (1, 1)])
def test_the_network_reads_any_mask_size(size):
    net = PredictorNet(NetConfig()).eval()
    out = net(torch.rand(5, 1, *size).round())
    assert out.shape == (5,) and torch.isfinite(out).all()


@pytest.mark.parametrize("switch", ["attention", "spp", "density"])
def test_each_branch_can_be_switched_off(switch):
    full, ablated = PredictorNet(NetConfig()), PredictorNet(NetConfig(**{switch: False}))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(ablated) < n(full)
    assert ablated(torch.ones(2, 1, 6, 4)).shape == (2,)


def test_config_round_trips_through_a_dict():
    c = NetConfig(in_channels=2, dilations=(1, 3, 5), spp=False)
    assert NetConfig.from_dict(c.to_dict()) == c


def _synthetic(n: int, seed: int = 0, shape=(8, 4)):
    """Masks whose target depends on WHERE units are kept (early layers matter more) and how many."""
    rng = np.random.default_rng(seed)
    keep = rng.uniform(0.2, 1.0, size=(n, 1, 1, 1))
    masks = (rng.random((n, 1, *shape)) < keep).astype(np.float32)
    weights = np.linspace(2.0, 0.5, shape[0])[None, :, None]
    y = 0.7 * (1 - (masks[:, 0] * weights).sum(axis=(1, 2)) / (weights.sum() * shape[1]))
    return masks, y.astype(np.float64)


def test_training_learns_a_mask_to_score_map_it_did_not_see():
    x, y = _synthetic(160)
    net, history = fit(x[:120], y[:120], NetConfig(width=8, hidden=(32, 8)), TrainConfig(epochs=12, lr=0.003))
    assert history[-1] < history[0] / 5
    s = scores(y[120:], predict(net, x[120:]))
    assert s["spearman"] > 0.9 and s["mae"] < 0.1 * (y.max() - y.min())


def test_training_is_reproducible_for_a_seed():
    x, y = _synthetic(30)
    cfg, tc = NetConfig(width=4, hidden=(8, 4)), TrainConfig(epochs=2, seed=3)
    a, _ = fit(x, y, cfg, tc)
    b, _ = fit(x, y, cfg, tc)
    c, _ = fit(x, y, cfg, TrainConfig(epochs=2, seed=4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()  # the key sets first: a missing tensor is never compared away
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_log_target_fits_log_signal_answers_in_signal_units_and_shifts_non_positive_targets(tmp_path):
    x, y = _synthetic(160)
    y = np.exp(6 * y) - 0.9  # a signal spanning ~60x, like the NLL above dense over 10-70 % pruning
    cfg, tc = NetConfig(width=8, hidden=(32, 8), log_target=True), TrainConfig(epochs=12, lr=0.003)
    net, history = fit(x[:120], y[:120], cfg, tc)
    assert history[-1] < history[0] / 5
    pred = predict(net, x[120:])
    assert (pred > 0).all() and scores(y[120:], pred)["spearman"] > 0.9  # exp of the fit: signal units
    assert abs(float(net.target_mean) - float(np.log(y[:120]).mean())) < 1e-4  # standardised in log space
    save_predictor(net, tmp_path / "pred", {"model": "m", "input": "o_proj", "image_shape": [1, 8, 4]})
    loaded, _ = load_predictor(tmp_path / "pred")
    assert loaded.config.log_target and np.allclose(predict(loaded, x[120:]), pred)
    assert float(loaded.target_shift) == 0.0  # every target was positive: log(y) itself
    # targets <= 0 (an NLL above dense can be negative): shifted up before the log, taken off after
    signed = y - 1.0
    assert signed[:120].min() <= 0
    net, _ = fit(x[:120], signed[:120], cfg, tc)
    shift = float(net.target_shift)
    assert shift > -signed[:120].min() and abs(float(net.target_mean) - float(np.log(signed[:120] + shift).mean())) < 1e-4
    assert scores(signed[120:], predict(net, x[120:]))["spearman"] > 0.9


def test_training_refuses_images_of_the_wrong_depth():
    x, y = _synthetic(4)
    with pytest.raises(PPFError, match="2 planes"):
        fit(np.concatenate([x, x], axis=1), y, NetConfig(in_channels=1), TrainConfig(epochs=1))


def test_scores_are_the_textbook_ones():
    s = scores(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0, 3.5]))
    assert s["mae"] == pytest.approx(0.25) and s["max_error"] == pytest.approx(0.5)
    assert s["rmse"] == pytest.approx(np.sqrt(0.125)) and s["r2"] == pytest.approx(1 - 0.5 / 5)
    assert s["spearman"] == pytest.approx(1.0) and s["kendall"] == pytest.approx(1.0)


# ---- the dataset ------------------------------------------------------------------------------
def _frame(n_policies: int = 10, ratios=(0.2, 0.3, 0.4, 0.5), shape=(1, 3, 4)) -> pd.DataFrame:
    rows = []
    for p in range(n_policies):
        method, a = ["lod", "esd", "bi"][p % 3], 0.05 * (p // 3)
        for r in ratios:
            rows.append({"key": f"{method}:{a:.4f}@{r:.4f}", "method": method, "a_eta": a, "ratio": r,
                         "actual_ratio": r, "mask": [1] * int(np.prod(shape)), "mask_shape": list(shape), "js": r / 2})
    return pd.DataFrame(rows)


def test_policy_holdout_never_shows_a_held_out_policy_in_training():
    df = _frame()
    train, test = holdout(df, 0.2, seed=1)
    groups = policy_groups(df)
    assert set(groups[train]).isdisjoint(groups[test])
    assert len(train) + len(test) == len(df) and 0.15 <= len(test) / len(df) <= 0.35
    # a_eta = 0 is the same uniform plan for every method: one policy
    assert (groups[df.a_eta.to_numpy() == 0] == "uniform").all()
    assert np.array_equal(holdout(df, 0.2, seed=1)[1], test) and not np.array_equal(holdout(df, 0.2, seed=2)[1], test)


def test_sample_holdout_holds_out_the_fraction():
    train, test = holdout(_frame(), 0.25, seed=0, by="sample")
    assert len(test) == 10 and len(np.intersect1d(train, test)) == 0


def test_read_samples_refuses_what_is_not_a_mask_dataset(tmp_path):
    good = tmp_path / "good.parquet"
    _frame().to_parquet(good)
    assert len(read_samples(good)) == 40
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PPFError, match="not a readable parquet"):
        read_samples(corrupt)
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"a": [1, 2], "js": [0.1, 0.2]}).to_parquet(foreign)
    with pytest.raises(PPFError, match="not a ppf mask dataset.*mask_shape"):
        read_samples(foreign)
    mixed = tmp_path / "mixed.parquet"
    pd.concat([_frame(2), _frame(2, ratios=(0.6,), shape=(1, 2, 2)).assign(key=lambda d: d.key + "x")]).to_parquet(mixed)
    with pytest.raises(PPFError, match="mixes mask shapes"):
        read_samples(mixed)
    with pytest.raises(PPFError, match="dvc repro collect"):
        read_samples(tmp_path / "absent.parquet")


def test_the_learned_signal_is_a_column_every_row_must_have(tmp_path):
    old = tmp_path / "old.parquet"
    _frame().to_parquet(old)  # collected when only JS was measured
    with pytest.raises(PPFError, match="no nll for every sample.*predictor.signal: js"):
        read_samples(old, "nll")
    with pytest.raises(PPFError, match="unknown predictor signal 'ppl'"):
        read_samples(old, "ppl")
    new = tmp_path / "new.parquet"
    df = _frame().assign(kl=lambda d: d.ratio, nll=lambda d: d.ratio - 0.25)  # NLL above dense may be < 0
    df.to_parquet(new)
    assert read_samples(new, "nll")["nll"].min() < 0 and len(read_samples(new, "kl")) == 40
    df.assign(kl=-df.kl).to_parquet(new)
    with pytest.raises(PPFError, match="kl values must be finite and >= 0"):
        read_samples(new, "kl")


# ---- saved predictors -------------------------------------------------------------------------
class _Planner:
    def __init__(self, model="m", shape=DenseShape(3, 8, 4, 2, 2, 16)):
        self.model, self.shape = model, shape


def _saved(tmp_path, kind="o_proj", model="m"):
    shape = _Planner().shape
    net = PredictorNet(NetConfig(in_channels=image_shape(shape, kind)[0], width=4, hidden=(8, 4))).eval()
    save_predictor(net, tmp_path / "pred", {"model": model, "input": kind, "image_shape": list(image_shape(shape, kind))})
    return net


def test_a_saved_predictor_predicts_the_same(tmp_path):
    net = _saved(tmp_path)
    loaded, meta = load_predictor(tmp_path / "pred")
    x = torch.rand(3, 1, 3, 4)
    assert torch.equal(net(x), loaded(x)) and meta["image_shape"] == [1, 3, 4]


def test_missing_or_corrupt_predictor_files_are_clear_errors(tmp_path):
    with pytest.raises(PPFError, match="no trained predictor.*train_predictor"):
        load_predictor(tmp_path / "nothing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(PPFError, match="not a ppf predictor"):
        load_predictor(bad)


def test_a_predictor_refuses_masks_of_another_shape_or_model(tmp_path):
    _saved(tmp_path)
    net, meta = load_predictor(tmp_path / "pred")
    p = Predictor(net, meta, _Planner())
    assert p.predict_images(np.ones((2, 1, 3, 4), dtype=np.float32)).shape == (2,)
    with pytest.raises(PPFError, match=r"mask shape \(1, 30, 9\) does not match the predictor's input \(1, 3, 4\)"):
        p.predict_images(np.ones((1, 1, 30, 9), dtype=np.float32))
    with pytest.raises(PPFError, match="does not match the predictor's input"):
        Predictor(net, meta, _Planner(shape=DenseShape(30, 576, 9, 3, 64, 1536)))
    with pytest.raises(PPFError, match="trained for m, not other"):
        Predictor(net, meta, _Planner(model="other"))


@pytest.mark.parametrize("kind,planes", [("o_proj", 1), ("attention", 4), ("mlp", 1), ("o_proj+mlp", 2)])
def test_images_of_every_input_kind(kind, planes):
    from ppf.policy import plan_for

    shape = DenseShape(3, 8, 4, 2, 2, 16)
    plan = plan_for("uniform", 0.4, None, None, shape, tol=0.05)
    img = image(plan, kind)
    assert img.shape == image_shape(shape, kind) == (planes, 3, 4) and img.dtype == np.float32
    assert 0 < img.mean() < 1
    with pytest.raises(PPFError, match="unknown predictor input"):
        image(plan, "qkv")


def test_a_batch_of_policies_is_one_forward_with_the_same_answers(tmp_path):
    from ppf.policy import Planner, Policy, UnitRanks

    shape = _Planner().shape
    _saved(tmp_path)
    net, meta = load_predictor(tmp_path / "pred")
    planner = Planner("m", shape, {"lod": [0.0, 1.0, 2.0]}, UnitRanks.of(None, shape), 0.9, 0.05)
    p = Predictor(net, meta, planner)
    items = [(Policy("lod", a), r) for a in (0.0, 0.1, 0.2) for r in (0.3, 0.4)]
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    batch = p.predict_batch(items)
    assert len(calls) == 1 and batch.shape == (6,)
    assert np.allclose(batch, [p.predict(pol, r)["score"] for pol, r in items], atol=1e-6)
