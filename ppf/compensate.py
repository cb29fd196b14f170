"""Compensation after width pruning: give back what the removed heads and channels contributed.

Every projection that writes into the residual stream loses input columns when its layer is
pruned: o_proj the removed heads' dims, down_proj the removed MLP channels. Two retraining-free
repairs, both from calibration activations, for EVERY pruned layer (a layer that keeps everything
is left exactly as it is):

``bias`` (FLAP)
    The removed columns' mean contribution becomes an output bias: b = W[:, removed] · E[x_removed].
``lsq`` (SlimGPT / LLM-Surgeon style, closed form)
    The kept columns and a bias are re-fitted by damped least squares so that the pruned projection
    reproduces the DENSE projection's output on the same inputs:
    min E‖W x − W' x_kept − b‖² + λ‖W'‖², λ = ``damping`` · mean diag E[x_kept x_keptᵀ].

Both run LAYER AFTER LAYER on the inputs the already-pruned and already-compensated earlier layers
produce (as SparseGPT does), in one pass over the calibration batch per layer: the hidden states
enter layer i, the DENSE attention gives the full o_proj input x (a kept head computes exactly what
it computes in the pruned layer, so x_kept is the pruned layer's own input), o_proj is fitted, the
compensated attention output gives the MLP input, the dense MLP gives the full down_proj input,
down_proj is fitted, and the compensated layer's output enters layer i + 1. Statistics are
accumulated in float64 with forward hooks; nothing else runs the model.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ppf.depth import NoAttention, NoMLP
from ppf.errors import PPFError
from ppf.prune import plan_of

COMPENSATIONS = ("none", "bias", "lsq")


def check(method: str, damping: float) -> None:
    if method not in COMPENSATIONS:
        raise PPFError(f"unknown compensation {method!r}; use one of {', '.join(COMPENSATIONS)}")
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
        raise PPFError(f"compensation damping {damping!r} must be > 0 (relative to the mean Gram diagonal), e.g. 0.01")


class _Moments:
    """Running E[x] and E[x xᵀ] (float64) of the rows fed to :meth:`add`."""

    def __init__(self, dim: int, gram: bool):
        self.n, self.sum = 0, torch.zeros(dim, dtype=torch.float64)
        self.xx = torch.zeros(dim, dim, dtype=torch.float64) if gram else None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double().cpu()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        if self.xx is not None:
            self.xx += x.T @ x

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def gram(self) -> torch.Tensor:
        return self.xx / self.n


def _fit(dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, m: _Moments, method: str, damping: float) -> dict:
    """Set ``pruned``'s weight (kept columns of ``dense``, re-fitted for lsq) and its new bias."""
    W = dense.weight.detach().double().cpu()  # [out, in]
    b0 = dense.bias.detach().double().cpu() if dense.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    mean = m.mean()
    removed = torch.ones(W.shape[1], dtype=torch.bool)
    removed[kept] = False
    if method == "bias":
        Wk, b = W[:, kept], b0 + W[:, removed] @ mean[removed]
    else:  # lsq: [W' b] = W E[x zᵀ] (E[z zᵀ] + λ)⁻¹, z = [x_kept; 1]
        S = m.gram()
        k = len(kept)
        A = torch.empty(k + 1, k + 1, dtype=torch.float64)
        A[:k, :k] = S[kept][:, kept]
        A[:k, k] = A[k, :k] = mean[kept]
        A[k, k] = 1.0
        lam = damping * float(torch.diagonal(A[:k, :k]).mean())
        A[:k, :k] += lam * torch.eye(k, dtype=torch.float64)
        B = torch.cat([W @ S[:, kept], (W @ mean)[:, None]], dim=1)  # W E[x zᵀ], [out, k + 1]
        X = torch.linalg.solve(A, B.T).T  # A is symmetric
        Wk, b = X[:, :k], b0 + X[:, k]
    with torch.no_grad():
        pruned.weight.copy_(Wk.to(pruned.weight.dtype))
        if pruned.bias is None:
            pruned.bias = nn.Parameter(torch.empty(W.shape[0], dtype=pruned.weight.dtype, device=pruned.weight.device))
        pruned.bias.copy_(b.to(pruned.bias.dtype))
    return {"removed_columns": int(removed.sum())}


def _error(dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, m: _Moments) -> float:
    """E‖W x + b0 − (W' x_kept + b)‖² from the moments (no activations kept)."""
    W = dense.weight.detach().double().cpu()
    b0 = dense.bias.detach().double().cpu() if dense.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    P = torch.zeros_like(W)
    P[:, kept] = pruned.weight.detach().double().cpu()
    c = b0 - (pruned.bias.detach().double().cpu() if pruned.bias is not None else 0)
    D = W - P  # residual: D x + c
    S, mu = m.gram(), m.mean()
    return float(torch.einsum("oi,ij,oj->", D, S, D) + 2 * (D @ mu) @ c + c @ c)


def _capture(module: nn.Module, store: _Moments):
    return module.register_forward_pre_hook(lambda mod, args, kwargs: store.add(args[0] if args else kwargs["input"]),
                                            with_kwargs=True)


class _Stop(Exception):
    pass


def _layer_inputs(model: nn.Module, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """(hidden states entering layer 0, the layer kwargs) per calibration batch."""
    out: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        out.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for start in range(0, calib.shape[0], batch_size):
            try:
                model(calib[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return out


def _attn(layer: nn.Module, attn: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = attn(hidden_states=layer.input_layernorm(hidden), **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def compensate(dense: nn.Module, pruned: nn.Module, calib: torch.Tensor, method: str, damping: float = 0.01,
               batch_size: int = 4) -> dict[str, Any]:
    """Compensate ``pruned`` (a width-pruned copy of ``dense``, carrying its plan) in place.

    Returns {method, seconds, layers compensated, calibration tokens, per-projection calibration
    output error before / after (``error_none`` / ``error``)}. ``none`` changes nothing.
    """
    check(method, damping)
    stats: dict[str, Any] = {"method": method, "seconds": 0.0, "layers": 0, "tokens": int(calib.numel())}
    plan = plan_of(pruned)
    if method == "none":
        return stats
    if plan is None:
        raise PPFError("this model carries no pruning plan; compensate a model pruned with ppf.prune_model")
    t = time.perf_counter()
    was = pruned.training, dense.training
    pruned.eval(), dense.eval()
    batches = _layer_inputs(pruned, calib.long(), batch_size)
    hd = dense.model.layers[0].self_attn.head_dim
    errors = []
    for i, (dl, pl) in enumerate(zip(dense.model.layers, pruned.model.layers)):
        lp = plan.layers[i]
        heads_cut = len(lp.heads) < plan.shape.n_heads and not isinstance(pl.self_attn, NoAttention)
        mlp_cut = len(lp.channels) < plan.shape.intermediate and not isinstance(pl.mlp, NoMLP)
        # attention: the dense o_proj input on THIS layer's (compensated-so-far) input
        if heads_cut:
            kept = torch.tensor([h * hd + d for h in lp.heads for d in range(hd)])
            m = _Moments(dl.self_attn.o_proj.in_features, gram=True)
            handle = _capture(dl.self_attn.o_proj, m)
            for h, kw in batches:
                _attn(dl, dl.self_attn, h, kw)
            handle.remove()
            before = _error(dl.self_attn.o_proj, pl.self_attn.o_proj, kept, m)
            _fit(dl.self_attn.o_proj, pl.self_attn.o_proj, kept, m, method, damping)
            errors.append({"layer": i, "proj": "o_proj", "error_none": before,
                           "error": _error(dl.self_attn.o_proj, pl.self_attn.o_proj, kept, m)})
        mids = [h + _attn(pl, pl.self_attn, h, kw) for h, kw in batches]  # the MLP's input, attention compensated
        if mlp_cut:
            kept = torch.tensor(list(lp.channels))
            m = _Moments(dl.mlp.down_proj.in_features, gram=method == "lsq")
            handle = _capture(dl.mlp.down_proj, m)
            for h2 in mids:
                dl.mlp(pl.post_attention_layernorm(h2))
            handle.remove()
            before = _error(dl.mlp.down_proj, pl.mlp.down_proj, kept, m) if method == "lsq" else float("nan")
            _fit(dl.mlp.down_proj, pl.mlp.down_proj, kept, m, method, damping)
            after = _error(dl.mlp.down_proj, pl.mlp.down_proj, kept, m) if method == "lsq" else float("nan")
            errors.append({"layer": i, "proj": "down_proj", "error_none": before, "error": after})
        stats["layers"] += int(heads_cut or mlp_cut)
        batches = [(h2 + pl.mlp(pl.post_attention_layernorm(h2)), kw) for h2, (_, kw) in zip(mids, batches)]
    pruned.train(was[0]), dense.train(was[1])
    stats |= {"seconds": time.perf_counter() - t, "projections": errors}
    return stats
