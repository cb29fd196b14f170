"""Compensation after pruning: give back what the removed heads, channels and blocks contributed.

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

Where the input statistics come from (``inputs``):

``dense`` (default)
    E[x] and E[x xᵀ] of every layer's o_proj and down_proj inputs in the DENSE model, gathered in ONE
    forward pass over the calibration tokens (:func:`dense_statistics`), once per dense model: they
    do not depend on the plan, so each plan costs only its solves (seconds). Memory: one Gram matrix
    per projection (SmolLM2: 0.6 GB in float64; a 7B model: ~35 GB, so use ``sequential`` there).
``sequential`` (SparseGPT / SlimGPT)
    LAYER AFTER LAYER on the inputs the already-pruned and already-compensated earlier layers produce:
    the hidden states enter layer i, the DENSE attention gives the full o_proj input x (a kept head
    computes exactly what it computes in the pruned layer, so x_kept is the pruned layer's own input),
    o_proj is fitted, the compensated attention output gives the MLP input, the dense MLP gives the
    full down_proj input, down_proj is fitted, and the compensated layer's output enters layer i + 1.
    One pass per plan; memory of one layer's statistics.

Measured on SmolLM2 (llm_pruner at 40 %, 32 × 256 calibration tokens, 16 test windows; none 197.6):
lsq 105.6 (dense) vs 106.3 (sequential), bias 161.8 vs 189.0; with 8 × 256 tokens lsq over-fits the
1536-wide down_proj (221.5), so the fit uses all calibration sequences by default.

Removed blocks (depth pruning: ShortGPT layers, BlockPruner's attention / MLP blocks) can be
replaced by their mean output over the calibration tokens (:func:`compensate_blocks`, ``mean``):
the same idea one level up. Statistics are accumulated in float64 with forward hooks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ppf.depth import NoAttention, NoMLP
from ppf.errors import PPFError
from ppf.prune import plan_of

COMPENSATIONS = ("none", "bias", "lsq")
INPUTS = ("dense", "sequential")
BLOCK_COMPENSATIONS = ("none", "mean")


def check(method: str, damping: float, inputs: str = "dense") -> None:
    if method not in COMPENSATIONS:
        raise PPFError(f"unknown compensation {method!r}; use one of {', '.join(COMPENSATIONS)}")
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
        raise PPFError(f"compensation damping {damping!r} must be > 0 (relative to the mean Gram diagonal), e.g. 0.01")
    if inputs not in INPUTS:
        raise PPFError(f"unknown compensation inputs {inputs!r}; use one of {', '.join(INPUTS)}")


class _Moments:
    """Running E[x] and E[x xᵀ] (float64 sums, on the inputs' device) of the rows fed to :meth:`add`."""

    def __init__(self, gram: bool):
        self.n, self.sum, self.xx, self.with_gram = 0, None, None, gram

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            if self.with_gram:
                self.xx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.sum += x.double().sum(0)
        if self.xx is not None:  # one batch's products in float32 (a few thousand terms), the running sum in float64
            x = x.float()
            self.xx += (x.T @ x).double()

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def gram(self) -> torch.Tensor:
        return self.xx / self.n

    def weighted(self, dense: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """(W E[x xᵀ], W E[x]) for ``dense``'s weight W: the lsq right-hand side of every plan, computed
        once per projection (the plan only picks its columns)."""
        key = (dense.weight.data_ptr(), tuple(dense.weight.shape))
        if getattr(self, "_weighted_key", None) != key:
            W, _ = _weights(dense, self.sum.device)
            self._weighted, self._weighted_key = (W @ self.gram(), W @ self.mean()), key
        return self._weighted


def _weights(dense: nn.Linear, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    W = dense.weight.detach().to(dev, torch.float64)  # [out, in]
    b0 = (dense.bias.detach().to(dev, torch.float64) if dense.bias is not None
          else torch.zeros(W.shape[0], dtype=torch.float64, device=dev))
    return W, b0


def _set_bias(linear: nn.Linear, b: torch.Tensor) -> None:
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.empty(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device))
    linear.bias.data.copy_(b.to(linear.bias.dtype))


def _fit(dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, m: _Moments, method: str, damping: float) -> None:
    """Set ``pruned``'s weight (kept columns of ``dense``, re-fitted for lsq) and its new bias."""
    dev = m.sum.device
    W, b0 = _weights(dense, dev)
    mean, kept = m.mean(), kept.to(dev)
    removed = torch.ones(W.shape[1], dtype=torch.bool, device=dev)
    removed[kept] = False
    if method == "bias":
        Wk, b = W[:, kept], b0 + W[:, removed] @ mean[removed]
    else:  # lsq: [W' b] = W E[x zᵀ] (E[z zᵀ] + λ)⁻¹, z = [x_kept; 1]
        S = m.gram()
        k = len(kept)
        A = torch.empty(k + 1, k + 1, dtype=torch.float64, device=dev)
        A[:k, :k] = S[kept][:, kept]
        A[:k, k] = A[k, :k] = mean[kept]
        A[k, k] = 1.0
        lam = damping * float(torch.diagonal(A[:k, :k]).mean())
        A[:k, :k] += lam * torch.eye(k, dtype=torch.float64, device=dev)
        WS, Wm = m.weighted(dense)
        B = torch.cat([WS[:, kept], Wm[:, None]], dim=1)  # W E[x zᵀ], [out, k + 1]
        L, info = torch.linalg.cholesky_ex(A)  # A is symmetric positive definite (damped)
        X = torch.cholesky_solve(B.T, L).T if int(info) == 0 else torch.linalg.solve(A, B.T).T
        Wk, b = X[:, :k], b0 + X[:, k]
    with torch.no_grad():
        pruned.weight.copy_(Wk.to(pruned.weight.dtype))
    _set_bias(pruned, b)


def _error(dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, m: _Moments) -> float:
    """E‖W x + b0 − (W' x_kept + b)‖² from the moments (no activations kept); NaN without a Gram."""
    if m.xx is None:
        return float("nan")
    dev = m.sum.device
    W, b0 = _weights(dense, dev)
    P = torch.zeros_like(W)
    P[:, kept.to(dev)] = pruned.weight.detach().to(dev, torch.float64)
    c = b0 - (pruned.bias.detach().to(dev, torch.float64) if pruned.bias is not None else 0)
    D = W - P  # residual: D x + c
    S, mu = m.gram(), m.mean()
    return float(torch.einsum("oi,ij,oj->", D, S, D) + 2 * (D @ mu) @ c + c @ c)


def _capture(module: nn.Module, store: _Moments):
    return module.register_forward_pre_hook(lambda mod, args, kwargs: store.add(args[0] if args else kwargs["input"]),
                                            with_kwargs=True)


@dataclass
class DenseStatistics:
    """What the dense model does on the calibration tokens, gathered in one forward pass: the moments
    of every layer's o_proj and down_proj inputs, and the mean output of every attention and MLP block."""

    o_proj: list[_Moments]
    down_proj: list[_Moments]
    attention_out: list[torch.Tensor]
    mlp_out: list[torch.Tensor]
    tokens: int
    seconds: float
    peak_mb: float

    @property
    def has_gram(self) -> bool:
        return all(m.xx is not None for m in (*self.o_proj, *self.down_proj))


def _out_mean(store: _Moments):
    def hook(module, args, output):
        store.add(output[0] if isinstance(output, tuple) else output)
    return hook


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB → MiB (the process's peak)


@torch.no_grad()
def dense_statistics(dense: nn.Module, calib: torch.Tensor, batch_size: int = 4, gram: bool = True) -> DenseStatistics:
    """One forward pass of the dense model over ``calib`` with hooks on every o_proj, down_proj,
    attention and MLP block (``gram``: also E[x xᵀ] of the projection inputs, which ``lsq`` needs)."""
    t = time.perf_counter()
    layers = dense.model.layers
    o, down = [_Moments(gram) for _ in layers], [_Moments(gram) for _ in layers]
    attn, mlp = [_Moments(False) for _ in layers], [_Moments(False) for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        handles += [_capture(layer.self_attn.o_proj, o[i]), _capture(layer.mlp.down_proj, down[i]),
                    layer.self_attn.register_forward_hook(_out_mean(attn[i])),
                    layer.mlp.register_forward_hook(_out_mean(mlp[i]))]
    device = next(dense.parameters()).device
    was = dense.training
    dense.eval()
    try:
        for start in range(0, calib.shape[0], batch_size):
            dense(calib[start:start + batch_size].long().to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        dense.train(was)
    return DenseStatistics(o, down, [m.mean() for m in attn], [m.mean() for m in mlp], int(calib.numel()),
                           time.perf_counter() - t, _peak_mb(device))


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


def _cuts(plan: Any, layer: nn.Module, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The kept o_proj input columns and kept down_proj input columns of layer ``i``, None where nothing was cut."""
    lp, hd = plan.layers[i], plan.shape.head_dim
    heads = None
    if len(lp.heads) < plan.shape.n_heads and not isinstance(layer.self_attn, NoAttention):
        heads = torch.tensor([h * hd + d for h in lp.heads for d in range(hd)], dtype=torch.long)
    channels = None
    if len(lp.channels) < plan.shape.intermediate and not isinstance(layer.mlp, NoMLP):
        channels = torch.tensor(list(lp.channels), dtype=torch.long)
    return heads, channels


def _fitted(i: int, proj: str, dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, m: _Moments,
            method: str, damping: float, errors: bool) -> dict[str, Any]:
    """Fit one projection; with ``errors`` also its calibration output error before and after (each a
    [out, in] x [in, in] product: for SmolLM2 they cost more than the fit itself, so off by default)."""
    before = _error(dense, pruned, kept, m) if errors else float("nan")
    _fit(dense, pruned, kept, m, method, damping)
    return {"layer": i, "proj": proj, "error_none": before, "error": _error(dense, pruned, kept, m) if errors else float("nan")}


def _from_dense(dense: nn.Module, pruned: nn.Module, plan: Any, st: DenseStatistics, method: str,
                damping: float, errors: bool) -> tuple[int, list[dict]]:
    fits, layers = [], 0
    for i, (dl, pl) in enumerate(zip(dense.model.layers, pruned.model.layers, strict=True)):
        heads, channels = _cuts(plan, pl, i)
        if heads is not None:
            fits.append(_fitted(i, "o_proj", dl.self_attn.o_proj, pl.self_attn.o_proj, heads, st.o_proj[i], method,
                                damping, errors))
        if channels is not None:
            fits.append(_fitted(i, "down_proj", dl.mlp.down_proj, pl.mlp.down_proj, channels, st.down_proj[i], method,
                                damping, errors))
        layers += int(heads is not None or channels is not None)
    return layers, fits


def _sequential(dense: nn.Module, pruned: nn.Module, plan: Any, calib: torch.Tensor, method: str, damping: float,
                batch_size: int, errors: bool) -> tuple[int, list[dict]]:
    batches = _layer_inputs(pruned, calib.long(), batch_size)
    fits, layers = [], 0
    for i, (dl, pl) in enumerate(zip(dense.model.layers, pruned.model.layers, strict=True)):
        heads, channels = _cuts(plan, pl, i)
        if heads is not None:  # the dense o_proj input on THIS layer's (compensated-so-far) input
            m = _Moments(gram=True)
            handle = _capture(dl.self_attn.o_proj, m)
            for h, kw in batches:
                _attn(dl, dl.self_attn, h, kw)
            handle.remove()
            fits.append(_fitted(i, "o_proj", dl.self_attn.o_proj, pl.self_attn.o_proj, heads, m, method, damping, errors))
        mids = [h + _attn(pl, pl.self_attn, h, kw) for h, kw in batches]  # the MLP's input, attention compensated
        if channels is not None:
            m = _Moments(gram=method == "lsq")
            handle = _capture(dl.mlp.down_proj, m)
            for h2 in mids:
                dl.mlp(pl.post_attention_layernorm(h2))
            handle.remove()
            fits.append(_fitted(i, "down_proj", dl.mlp.down_proj, pl.mlp.down_proj, channels, m, method, damping, errors))
        layers += int(heads is not None or channels is not None)
        batches = [(h2 + pl.mlp(pl.post_attention_layernorm(h2)), kw) for h2, (_, kw) in zip(mids, batches, strict=True)]
    return layers, fits


@torch.no_grad()
def compensate(dense: nn.Module, pruned: nn.Module, calib: torch.Tensor, method: str, damping: float = 0.01,
               batch_size: int = 4, inputs: str = "dense", statistics: DenseStatistics | None = None,
               errors: bool = False) -> dict[str, Any]:
    """Compensate ``pruned`` (a width-pruned copy of ``dense``, carrying its plan) in place.

    ``inputs`` says where the statistics come from (module doc); for ``dense``, ``statistics`` (from
    :func:`dense_statistics` on the same ``calib``) are reused if given, else gathered here. Returns
    {method, inputs, seconds (of this plan; the shared statistics' own in ``statistics_s``), layers
    compensated, calibration tokens, peak memory, per projection its calibration output error before /
    after (``error_none`` / ``error``; computed only with ``errors``, NaN otherwise)}. ``none`` changes nothing.
    """
    check(method, damping, inputs)
    stats: dict[str, Any] = {"method": method, "inputs": inputs, "seconds": 0.0, "statistics_s": 0.0, "layers": 0,
                             "tokens": int(calib.numel())}
    plan = plan_of(pruned)
    if method == "none":
        return stats
    if plan is None:
        raise PPFError("this model carries no pruning plan; compensate a model pruned with ppf.prune_model")
    t = time.perf_counter()
    was = pruned.training, dense.training
    pruned.eval(), dense.eval()
    try:
        if inputs == "dense":
            if statistics is None or (method == "lsq" and not statistics.has_gram):
                statistics = dense_statistics(dense, calib, batch_size, gram=method == "lsq")
                stats["statistics_s"] = statistics.seconds
            stats["layers"], fits = _from_dense(dense, pruned, plan, statistics, method, damping, errors)
        else:
            stats["layers"], fits = _sequential(dense, pruned, plan, calib, method, damping, batch_size, errors)
    finally:
        pruned.train(was[0]), dense.train(was[1])
    stats |= {"seconds": time.perf_counter() - t, "peak_mb": _peak_mb(next(pruned.parameters()).device),
              "projections": fits}
    return stats


@torch.no_grad()
def compensate_blocks(pruned: nn.Module, statistics: DenseStatistics, method: str = "mean") -> dict[str, Any]:
    """Replace the removed blocks of a pruned model (a plan's removed attention / MLP blocks, or
    :func:`ppf.prune.drop_blocks`) by their dense mean output over the calibration tokens, in place.

    A removed block's stand-in then adds that constant (its output projection's bias) to the residual
    stream where the block stood — also in a layer removed whole. ``none`` changes nothing.
    """
    if method not in BLOCK_COMPENSATIONS:
        raise PPFError(f"unknown block compensation {method!r}; use one of {', '.join(BLOCK_COMPENSATIONS)}")
    out: dict[str, Any] = {"method": method, "seconds": 0.0, "blocks": 0, "tokens": statistics.tokens}
    if method == "none":
        return out
    t = time.perf_counter()
    for i, layer in enumerate(pruned.model.layers):
        if isinstance(layer.self_attn, NoAttention):
            layer.self_attn.set_shift(statistics.attention_out[i])
            out["blocks"] += 1
        if isinstance(layer.mlp, NoMLP):
            layer.mlp.set_shift(statistics.mlp_out[i])
            out["blocks"] += 1
    out["seconds"] = time.perf_counter() - t
    return out


def compensate_plan(dense: nn.Module, pruned: nn.Module, calib: torch.Tensor, settings: Any, batch_size: int,
                    statistics: Callable[[], tuple[DenseStatistics, bool]], compensation: str | None = None,
                    blocks: str | None = None) -> dict[str, Any]:
    """Everything a freshly pruned copy of ``dense`` gets, in place: its width compensation (``settings``
    = ``params.pruning``: ``compensation`` unless the argument says otherwise, from ``compensation_inputs``)
    and its removed blocks' stand-ins (``removed_blocks`` unless ``blocks`` says otherwise;
    ``compensation="none"`` alone means none for them too: the uncompensated model).

    ``statistics()`` gives the SHARED dense statistics and whether this call gathered them (their
    one-time cost is then reported in ``statistics_s``, once). Returns :func:`compensate`'s record with
    ``removed_blocks`` / ``blocks`` where the plan removes any."""
    method = compensation or settings.compensation
    blocks = blocks or ("none" if compensation == "none" else settings.removed_blocks)
    shared, fresh = None, False
    if method != "none" and settings.compensation_inputs == "dense":
        st, fresh = statistics()
        shared = st if method == "bias" or st.has_gram else None
    record = compensate(dense, pruned, calib, method, settings.damping, batch_size, settings.compensation_inputs, shared)
    if fresh and shared is not None:
        record["statistics_s"] = shared.seconds
    plan = plan_of(pruned)
    if plan is not None and (plan.removed_attention or plan.removed_mlp):
        if blocks == "none":
            done: dict[str, Any] = {"method": "none", "seconds": 0.0, "blocks": 0}
        else:
            st, fresh = statistics()
            done = compensate_blocks(pruned, st, blocks)
            if fresh:
                record["statistics_s"] = st.seconds
        record |= {"removed_blocks": done["method"], "blocks": done["blocks"]}
        record["seconds"] += done["seconds"]
    return record
