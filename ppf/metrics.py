"""Perplexity, computed the way the pruning literature reports it.

SparseGPT, Wanda and LLM-Pruner all evaluate WikiText-2 the same way: concatenate the test split,
cut it into non-overlapping windows of ``seqlen`` tokens (the incomplete tail is dropped), score
every window independently (no context carried over), and report exp of the mean token NLL. We
follow that convention exactly so ppf numbers are comparable with published tables.

Memory: the logits of one batch ([batch, seqlen, vocab]) are the largest tensor; they are made
once by the model, and the fp32 log-softmax is then taken one window at a time, so the fp32 copy
never exceeds [seqlen, vocab].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from ppf.errors import PPFError


def bf16_matmul_supported() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX / AVX512-BF16), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Inside: fp32 matrix products on the CPU as ``precision`` says (``eval.matmul_precision``).

    ``ieee`` is exact fp32; ``bf16`` lets oneDNN round the factors to bf16 and sum in fp32 (~1.6x
    faster forwards on a CPU with bf16 units; on SmolLM2 dense valid perplexity 23.2571 -> 23.2542 and
    JS(fp32 || bf16) 5e-5 nats), and is ieee on a CPU without them. Attention's own products
    (scaled-dot-product attention) stay fp32 (:func:`_fp32_attention`). Restored on exit."""
    if precision not in ("ieee", "bf16"):
        raise PPFError(f"matmul precision '{precision}' is unknown; use ieee or bf16")
    if precision == "ieee" or not bf16_matmul_supported():
        yield  # torch's default: exact fp32
        return
    _fp32_attention()
    flags = torch.backends.mkldnn.matmul
    before, flags.fp32_precision = flags.fp32_precision, "bf16"
    try:
        yield
    finally:
        flags.fp32_precision = before


@cache
def _fp32_attention() -> None:
    """transformers' ``sdpa`` attention, re-registered (once) to run with exact fp32 products: with
    bf16 products the CPU's scaled-dot-product kernel is ~4x SLOWER (measured: 0.9 -> 3.6 ms on
    4 x 9 heads x 128 positions), so only the linear layers take the bf16 path. Outside
    :func:`matmul_precision` the wrapper changes nothing (the flag is already exact fp32)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa_fp32(*args: object, **kwargs: object) -> object:
        flags = torch.backends.mkldnn.matmul
        before, flags.fp32_precision = flags.fp32_precision, "none"
        try:
            return sdpa_attention_forward(*args, **kwargs)
        finally:
            flags.fp32_precision = before

    AttentionInterface.register("sdpa", sdpa_fp32)


def windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """``tokens`` (1-D) as a [n, seqlen] view of non-overlapping windows, tail dropped."""
    if seqlen < 2:
        raise PPFError(f"seqlen {seqlen} is too small; use seqlen >= 2 (a window needs a next token)")
    if tokens.dim() != 1:
        raise PPFError(f"tokens must be a 1-D tensor of ids, got shape {tuple(tokens.shape)}; flatten it first")
    n = tokens.numel() // seqlen
    if n == 0:
        raise PPFError(f"only {tokens.numel()} tokens for seqlen {seqlen}; use more text or a smaller seqlen")
    if max_windows is not None:
        if max_windows < 1:
            raise PPFError(f"max_windows {max_windows} must be >= 1 (or None for all windows)")
        n = min(n, max_windows)
    return tokens[: n * seqlen].view(n, seqlen)


@torch.no_grad()
def window_nll(model: nn.Module, tokens: torch.Tensor, seqlen: int, batch_size: int = 1,
               max_windows: int | None = None) -> torch.Tensor:
    """The SUMMED next-token NLL of every non-overlapping ``seqlen`` window of ``tokens`` (float64, [n]).

    Each window contributes ``seqlen - 1`` predictions (the first token has no context). The model
    is put in eval mode for the pass and restored afterwards, so a model mid-fine-tuning is
    scored without dropout. Kept per window so that two models can be compared PAIRED on the same
    windows (:mod:`ppf.stats`).
    """
    if batch_size < 1:
        raise PPFError(f"batch_size {batch_size} must be >= 1")
    data = windows(tokens.long(), seqlen, max_windows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(data.shape[0], dtype=torch.float64, device=device)  # on device: no per-window sync
    try:
        for start in range(0, data.shape[0], batch_size):
            batch = data[start:start + batch_size].to(device)
            logits = model(batch, use_cache=False).logits
            for row in range(batch.shape[0]):  # fp32 log-softmax one window at a time
                out[start + row] = F.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="sum").double()
            del logits
    finally:
        model.train(was_training)
    return out.cpu()


def perplexity_of(nll: torch.Tensor, seqlen: int) -> float:
    """exp(mean next-token NLL) from per-window summed NLLs (:func:`window_nll`)."""
    total = torch.zeros((), dtype=torch.float64)
    for x in nll:  # sequential float64 sum, window by window
        total += x
    return math.exp(total.item() / (len(nll) * (seqlen - 1)))


def perplexity(model: nn.Module, tokens: torch.Tensor, seqlen: int, batch_size: int = 1,
               max_windows: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping ``seqlen`` windows of ``tokens``."""
    return perplexity_of(window_nll(model, tokens, seqlen, batch_size, max_windows), seqlen)


# ---- Jensen-Shannon divergence of the next-token distributions -----------------------------------
#
# PPF's reward and the predictor's target. JS(P||Q) = ½ KL(P||M) + ½ KL(Q||M), M = ½(P+Q), in
# NATS (natural log, so 0 <= JS <= ln 2 ≈ 0.693), computed in fp32 on the full vocabulary at every
# position of the held-out tokens, then averaged over all positions (tokens × windows). P is the
# dense model, Q the pruned one. The dense side is the same for every policy, so it is computed
# once (:func:`next_token_logprobs`) and reused; only the pruned model runs per evaluation.

def js_kl_per_token(logp: torch.Tensor, logq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(JS(P || Q), KL(P || Q)) in nats per position from two log-probability tensors [..., vocab].

    Expanded so that each vocabulary-sized pass is one fused op (exp, log, dot products over the
    vocabulary): JS = ½ Σ p log p + ½ Σ q log q − Σ m log m, KL = Σ p log p − Σ p log q. A
    probability that underflows to 0 contributes 0 (m is floored at 1e-30 before its log).
    Positions are taken ``_CHUNK`` at a time, so that every pass reads data still in the CPU's cache
    (about 2.8x faster than whole batches on SmolLM2's vocabulary; the same numbers to the bit).
    """
    shape = logp.shape[:-1]
    logp, logq = logp.float().reshape(-1, logp.shape[-1]), logq.float().reshape(-1, logq.shape[-1])
    parts = [_js_kl_rows(logp[i:i + _CHUNK], logq[i:i + _CHUNK]) for i in range(0, logp.shape[0], _CHUNK)] \
        or [_js_kl_rows(logp, logq)]
    return torch.cat([x[0] for x in parts]).reshape(shape), torch.cat([x[1] for x in parts]).reshape(shape)


_CHUNK = 16  # positions per pass of js_kl_per_token: 16 x 49,152 fp32 = 3 MB per tensor


def _js_kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`js_kl_per_token` of a few positions [rows, vocab] at once."""
    p, q = logp.exp(), logq.exp()
    plogp, qlogq, plogq = (torch.linalg.vecdot(p, logp), torch.linalg.vecdot(q, logq),
                           torch.linalg.vecdot(p, logq))
    m = p.add_(q).mul_(0.5)  # p is not needed any more: M in its place
    mlogm = torch.linalg.vecdot(m, m.clamp_min(1e-30).log_())
    js = (0.5 * (plogp + qlogq) - mlogm).clamp_min(0.0)
    return js, (plogp - plogq).clamp_min(0.0)


def js_per_token(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """JS divergence (nats) per position from two log-probability tensors [..., vocab]."""
    return js_kl_per_token(logp, logq)[0]


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokens: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """fp32 log-softmax of the model's logits for a [n, seqlen] token batch → [n, seqlen, vocab]."""
    if tokens.dim() != 2:
        raise PPFError(f"tokens must be [n, seqlen], got shape {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        logits = model(tokens[start:start + batch_size].to(device), use_cache=False).logits
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


SIGNALS = ("js", "kl", "nll")  # what one pass over the held-out tokens measures (:func:`divergences`)


@torch.no_grad()
def divergences(reference: torch.Tensor | nn.Module, model: nn.Module, tokens: torch.Tensor,
                batch_size: int = 4) -> dict[str, float]:
    """How far ``model`` is from ``reference`` on ``tokens`` [n, L], in one pass (nats):

    - ``js``: mean per-position JS(P || Q) (PPF's reward and the predictor's target);
    - ``kl``: mean per-position KL(P || Q), the dense model's distribution first (EvoPress' fitness);
    - ``nll``: the pruned model's mean next-token NLL minus the dense model's on the same positions,
      i.e. log(ppl_pruned / ppl_dense) on these tokens — what users measure, relative to dense.

    ``reference`` is the dense model, or its precomputed :func:`next_token_logprobs` on the same
    tokens (the fast path when many pruned variants are compared against one base).
    """
    if tokens.dim() != 2:
        raise PPFError(f"tokens must be [n, seqlen], got shape {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    js = kl = nll = 0.0
    count = targets = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        if isinstance(reference, torch.Tensor):
            logp = reference[start:start + batch_size].float()
        else:
            logp = next_token_logprobs(reference, batch, batch_size)
        logq = torch.log_softmax(model(batch.to(device), use_cache=False).logits.float(), dim=-1).cpu()
        per, per_kl = js_kl_per_token(logp, logq)
        js += per.double().sum().item()
        kl += per_kl.double().sum().item()
        nxt = batch[:, 1:].unsqueeze(-1)
        nll += (logp[:, :-1].gather(-1, nxt) - logq[:, :-1].gather(-1, nxt)).double().sum().item()
        count += per.numel()
        targets += nxt.numel()
    return {"js": js / count, "kl": kl / count, "nll": nll / targets}


def js_divergence(reference: torch.Tensor | nn.Module, model: nn.Module, tokens: torch.Tensor,
                  batch_size: int = 4) -> float:
    """Mean per-token JS divergence (nats) between ``reference`` and ``model`` on ``tokens`` [n, L]
    (:func:`divergences`' ``js``)."""
    return divergences(reference, model, tokens, batch_size)["js"]


def ppr(js: float, actual_ratio: float) -> float:
    """PPF's Performance-to-Pruning Ratio (Eq. 6): JS / r_act; the agent's reward is −PPR."""
    if actual_ratio <= 0:
        raise PPFError(f"actual ratio {actual_ratio} must be > 0 to compute PPR")
    return js / actual_ratio
