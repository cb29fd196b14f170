"""Uncertainty of the reported numbers: bootstrap intervals over evaluation windows (and task examples).

Perplexity is exp(mean NLL) over windows, and two models evaluated on the SAME windows are
compared PAIRED: each bootstrap draw resamples window indices once and recomputes both
perplexities on that draw, so window-to-window variation in difficulty (shared by both models)
cancels out of the difference. :func:`paired_ppl_difference` gives the relative difference
ppl_a / ppl_b − 1 (in %) with a percentile interval; it EXCLUDES 0 when the interval's bounds have
the same sign — the only case the benchmark calls a win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ppf.errors import PPFError


def _check(nll: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(nll, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.isfinite(x).all():
        raise PPFError(f"{name}: need at least 2 finite per-window NLLs, got {x.shape}; evaluate more windows")
    return x


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    if n_boot < 100:
        raise PPFError(f"n_boot {n_boot} is too small for a 95 % interval; use at least 100 (e.g. 2000)")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def ppl_interval(nll: Sequence[float], tokens_per_window: int, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """A bootstrap percentile interval of one model's perplexity (``nll``: summed NLL per window)."""
    x = _check(nll, "ppl_interval")
    ppl = np.exp(x[_draws(x.size, n_boot, seed)].mean(axis=1) / tokens_per_window)
    a = (1 - level) / 2
    return float(np.quantile(ppl, a)), float(np.quantile(ppl, 1 - a))


def paired_ppl_difference(nll_a: Sequence[float] | np.ndarray, nll_b: Sequence[float] | np.ndarray, tokens_per_window: int,
                          n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """ppl_a / ppl_b − 1 in % (negative: a is better) with its paired bootstrap interval."""
    a, b = _check(nll_a, "model a"), _check(nll_b, "model b")
    if a.size != b.size:
        raise PPFError(f"paired comparison needs the same windows: {a.size} vs {b.size}; evaluate both on the same split")
    idx = _draws(a.size, n_boot, seed)
    diff = 100 * (np.exp((a[idx].mean(axis=1) - b[idx].mean(axis=1)) / tokens_per_window) - 1)
    q = (1 - level) / 2
    point = 100 * (np.exp((a.mean() - b.mean()) / tokens_per_window) - 1)
    lo, hi = float(np.quantile(diff, q)), float(np.quantile(diff, 1 - q))
    return {"diff_pct": float(point), "ci_lo": lo, "ci_hi": hi, "excludes_0": bool(lo > 0 or hi < 0)}


def paired_accuracy_difference(correct_a: Mapping[str, Sequence[float]], correct_b: Mapping[str, Sequence[float]],
                               n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """The mean over tasks of acc_a − acc_b (accuracy points in [−1, 1]; positive: a is better) with a
    PAIRED bootstrap interval: each draw resamples every task's examples once, the same examples for
    both models (``correct_*``: per task, each example's 0/1 in one order)."""
    tasks = sorted(correct_a)
    if not tasks or sorted(correct_b) != tasks:
        raise PPFError(f"paired accuracy needs the same tasks: {sorted(correct_a)} vs {sorted(correct_b)}; evaluate "
                       "both models on the same task files")
    rng = np.random.default_rng(seed)
    draws, point = np.zeros(n_boot), 0.0
    if n_boot < 100:
        raise PPFError(f"n_boot {n_boot} is too small for a 95 % interval; use at least 100 (e.g. 2000)")
    for t in tasks:
        a, b = np.asarray(correct_a[t], dtype=np.float64), np.asarray(correct_b[t], dtype=np.float64)
        if a.size != b.size or a.size < 2:
            raise PPFError(f"task {t!r}: paired accuracy needs the same examples (at least 2): {a.size} vs {b.size}; "
                           "evaluate both with the same zero_shot_limit")
        d = a - b
        point += d.mean() / len(tasks)
        draws += d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1) / len(tasks)
    q = (1 - level) / 2
    lo, hi = float(np.quantile(draws, q)), float(np.quantile(draws, 1 - q))
    return {"diff": float(point), "ci_lo": lo, "ci_hi": hi, "excludes_0": bool(lo > 0 or hi < 0)}
