"""Layer importance H: one float per decoder layer, HIGHER = MORE IMPORTANT, for every method.

The policy (paper Eqs. 4-5) prunes layer i by S_i = S_tar + eta * (mean(H) - H_i), i.e. less where
H is high, so each method below is oriented to make "high H" mean "keep more here":

  lod      OWL (Yin et al. 2024): fraction of Wanda scores |W_ij| * ||X_j||_2 over the block's
           seven linears that exceed M x their layer mean. Layers with more outlier features
           are the ones OWL keeps denser, so H = LOD.
  esd      AlphaPruning (Lu et al. 2024): the power-law exponent alpha of each weight matrix's
           eigenvalue spectrum (ESD of W^T W), averaged over the block. A heavier tail (LOWER
           alpha) means a better-trained, more important layer, so H = -alpha. Needs no data.
  bi       ShortGPT (Men et al. 2025): Block Influence 1 - mean_t cos(h_in, h_out). A block that
           barely changes its input is redundant, so H = BI.
  uniform  zeros: every layer gets the target ratio.

Everything that needs activations is gathered in one no-grad sweep (:mod:`ppf.importance.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ppf.arch import LayerView, layers
from ppf.errors import PPFError
from ppf.importance.stats import LINEARS, LayerStats, collect


# ---- lod: OWL's layerwise outlier distribution ----------------------------------------------------
def lod(views: list[LayerView], stats: list[LayerStats], outlier_m: float = 5.0, **_: Any) -> list[float]:
    """Per layer: the fraction of Wanda scores above ``outlier_m`` x the layer's mean score."""
    out = []
    for view, st in zip(views, stats, strict=True):
        scores = [getattr(view, n).weight.detach().float().abs() * st.input_norm(n)[None, :] for n in LINEARS]
        numel = sum(s.numel() for s in scores)
        threshold = outlier_m * sum(s.sum() for s in scores) / numel
        out.append(float(sum((s > threshold).sum() for s in scores)) / numel)
    return out


# ---- esd: AlphaPruning's heavy-tail exponent ------------------------------------------------------
XMIN_RULES = ("peak", "all")


def hill_alpha(eigs: torch.Tensor, xmin: str = "peak", max_candidates: int = 256) -> float:
    """Power-law exponent alpha of the tail of ``eigs`` (density ~ lambda^-alpha), WeightWatcher-style.

    For a candidate x_min = lambda_i the Hill / maximum-likelihood estimate over the n eigenvalues
    >= x_min is alpha = 1 + n / sum log(lambda / x_min); the x_min kept is the candidate whose fitted
    CDF 1 - (lambda / x_min)^(1 - alpha) is closest to the empirical tail CDF in Kolmogorov-Smirnov
    distance. Which candidates are tried:

      ``peak`` (default; AlphaPruning's ``alpha_peak``): eigenvalues up to 1.5 x the peak of the
          100-bin log10 histogram of the ESD. Without this bound the KS minimum often lands on the
          top 10-20 eigenvalues, giving alpha > 15 from a "tail" of a few points (seen on SmolLM2).
      ``all``: every eigenvalue but the largest (WeightWatcher / the powerlaw package).

    All candidates are scored at once as a [candidates, N] matrix, at most ``max_candidates`` of
    them (evenly spaced), so a 4096-wide matrix costs about what a 576-wide one does.
    """
    if xmin not in XMIN_RULES:
        raise PPFError(f"unknown x_min rule '{xmin}'; use one of {', '.join(XMIN_RULES)}")
    lam = eigs.detach().double().flatten().sort().values
    lam = lam[lam > lam[-1] * 1e-12] if lam.numel() else lam  # numerically zero eigenvalues carry no tail
    n_eig = lam.numel()
    if n_eig < 3:
        return float("nan")
    log = lam.log()
    last = n_eig - 2  # the tail keeps >= 2 points
    if xmin == "peak":
        counts = torch.histc(log, bins=100, min=float(log[0]), max=float(log[-1]))
        peak = log[0] + (log[-1] - log[0]) * counts.argmax() / 100  # left edge of the fullest bin
        last = min(last, max(0, int(torch.searchsorted(log, peak + math.log(1.5), right=True)) - 1))
    cand = torch.arange(last + 1)
    if cand.numel() > max_candidates:
        cand = torch.linspace(0, last, max_candidates).round().long().unique()
    n = (n_eig - cand).double()
    suffix = log.flip(0).cumsum(0).flip(0)  # suffix[i] = sum_{k >= i} log lambda_k
    denom = suffix[cand] - n * log[cand]
    alpha = 1 + n / denom.clamp_min(1e-300)
    j = torch.arange(n_eig)[None, :] - cand[:, None]  # position inside each candidate's tail
    fitted = 1 - torch.exp((1 - alpha[:, None]) * (log[None, :] - log[cand][:, None]))
    ks = torch.where(j >= 0, (fitted - j / n[:, None]).abs(), 0.0).amax(dim=1)
    ks = torch.where((denom > 0) & (alpha > 1), ks, math.inf)
    return float(alpha[ks.argmin()])


def matrix_alpha(weight: torch.Tensor, xmin: str = "peak") -> float:
    """alpha of one weight matrix, from its ESD: the eigenvalues of W^T W (squared singular values).

    Taken from the smaller Gram matrix with a float64 ``eigvalsh``: the same spectrum as
    ``svdvals(W)**2`` (float64 keeps the squared condition number harmless) at about half the cost.
    """
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return hill_alpha(torch.linalg.eigvalsh(gram), xmin)


def esd(views: list[LayerView], stats: Any = None, **_: Any) -> list[float]:
    """Per layer: minus the mean alpha of its seven matrices (low alpha = heavy tail = important)."""
    return [-sum(matrix_alpha(getattr(v, n).weight) for n in LINEARS) / len(LINEARS) for v in views]


# ---- bi: ShortGPT's block influence, and the uniform baseline -------------------------------------
def bi(views: list[LayerView], stats: list[LayerStats], **_: Any) -> list[float]:
    return [st.bi for st in stats]


def uniform(views: list[LayerView], stats: Any = None, **_: Any) -> list[float]:
    return [0.0 for _ in views]


# ---- registry and entry point ---------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    fn: Callable[..., list[float]]
    norms: bool = False  # needs ||X_j|| of every linear input
    cosine: bool = False  # needs block input/output cosines


LAYER_SCORES: dict[str, Method] = {
    "lod": Method(lod, norms=True),
    "esd": Method(esd),
    "bi": Method(bi, cosine=True),
    "uniform": Method(uniform),
}


def check_methods(methods: Sequence[str] | str) -> list[str]:
    names = [methods] if isinstance(methods, str) else list(methods)
    for name in names:
        if name not in LAYER_SCORES:
            raise PPFError(f"unknown layer-importance method '{name}'; use one of {', '.join(LAYER_SCORES)}")
    return names


def layer_importance(model: nn.Module, calib: torch.Tensor | None = None,
                     methods: Sequence[str] | str = ("lod", "esd", "bi", "uniform"),
                     outlier_m: float = 5.0, batch_size: int = 4) -> dict[str, list[float]]:
    """{method: [H_0, ..., H_{L-1}]}, higher = more important; one calibration sweep for all methods.

    ``calib`` is a LongTensor [N, L] of token ids; it may be None when only ``esd``/``uniform`` are asked.
    """
    names = check_methods(methods)
    if not outlier_m > 0:
        raise PPFError(f"outlier_m must be > 0 (OWL uses 5), got {outlier_m}")
    if batch_size < 1:
        raise PPFError(f"batch_size must be >= 1, got {batch_size}")
    views = layers(model)
    norms = any(LAYER_SCORES[n].norms for n in names)
    cosine = any(LAYER_SCORES[n].cosine for n in names)
    stats = None
    if norms or cosine:
        if calib is None:
            raise PPFError(f"methods {', '.join(n for n in names if LAYER_SCORES[n].norms or LAYER_SCORES[n].cosine)} "
                           "need calibration tokens; pass calib=LongTensor[N, L]")
        stats = collect(model, views, calib, batch_size=batch_size, norms=norms, cosine=cosine)
    return {n: [float(h) for h in LAYER_SCORES[n].fn(views, stats, outlier_m=outlier_m)] for n in names}
