"""Paired bootstrap on synthetic per-window NLLs: it recovers a known difference, and says when it cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppf.errors import PPFError
from ppf.stats import paired_ppl_difference, ppl_interval

T = 511  # predictions per window


def _windows(n: int, seed: int) -> np.ndarray:
    """Summed NLLs of n windows whose difficulty varies a lot (mean NLL 3 ± 0.5 per token)."""
    return T * (3.0 + 0.5 * np.random.default_rng(seed).standard_normal(n))


def test_paired_bootstrap_recovers_a_known_difference():
    base = _windows(64, 0)
    better = base - T * math.log(1.10)  # exactly 10 % lower perplexity on every window
    noise = T * 0.01 * np.random.default_rng(1).standard_normal(64)
    r = paired_ppl_difference(better + noise, base, T, n_boot=2000, seed=0)
    truth = 100 * (1 / 1.10 - 1)  # -9.09 %
    assert r["ci_lo"] < truth < r["ci_hi"] and r["excludes_0"] and r["ci_hi"] < 0
    assert r["diff_pct"] == pytest.approx(truth, abs=0.5)
    # unpaired thinking would drown it: the per-model intervals overlap heavily
    lo_a, hi_a = ppl_interval(better, T)
    lo_b, hi_b = ppl_interval(base, T)
    assert lo_b < hi_a


def test_no_difference_is_not_called_a_win():
    base = _windows(32, 2)
    other = base + T * 0.02 * np.random.default_rng(3).standard_normal(32)
    r = paired_ppl_difference(other, base, T, seed=0)
    assert not r["excludes_0"] and r["ci_lo"] < 0 < r["ci_hi"]


def test_same_seed_same_interval_and_bad_input():
    a, b = _windows(16, 4), _windows(16, 5)
    assert paired_ppl_difference(a, b, T, seed=7) == paired_ppl_difference(a, b, T, seed=7)
    with pytest.raises(PPFError, match="same windows"):
        paired_ppl_difference(a, b[:8], T)
    with pytest.raises(PPFError, match="n_boot"):
        paired_ppl_difference(a, b, T, n_boot=10)
    with pytest.raises(PPFError, match="at least 2"):
        ppl_interval([1.0], T)

def test_paired_accuracy_difference_finds_a_known_gap_and_calls_equal_models_a_tie():
    import numpy as np

    from ppf.stats import paired_accuracy_difference

    rng = np.random.default_rng(0)
    hard = {t: rng.random(400) < 0.5 for t in ("a", "b")}  # shared difficulty: what pairing cancels
    better = {t: (x | (rng.random(400) < 0.3)).astype(float).tolist() for t, x in hard.items()}
    worse = {t: x.astype(float).tolist() for t, x in hard.items()}
    d = paired_accuracy_difference(better, worse, 2000, 0)
    truth = np.mean([np.mean(better[t]) - np.mean(worse[t]) for t in better])
    assert d["diff"] == pytest.approx(truth) and d["ci_lo"] > 0 and d["excludes_0"]
    assert paired_accuracy_difference(worse, better, 2000, 0)["ci_hi"] < 0
    same = paired_accuracy_difference(worse, worse, 2000, 0)
    assert same["diff"] == 0 and not same["excludes_0"]
    with pytest.raises(PPFError, match="same tasks"):
        paired_accuracy_difference(better, {"a": better["a"]})
    with pytest.raises(PPFError, match="same examples"):
        paired_accuracy_difference({"a": [1.0, 0.0]}, {"a": [1.0, 0.0, 1.0]})
