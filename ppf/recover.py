"""Recovery after pruning: distil the pruned model from its dense base on train-split windows.

Read top to bottom: the windows a run trains on (:func:`train_windows`), the teacher's targets
computed once and shared by every model recovered from the same teacher (:class:`TeacherTargets`),
what trains (:func:`trainable`), the loss (:func:`distill_loss`), and the loop (:func:`distill`) with
its learning-rate schedule, valid-perplexity checks, early stopping and resumable state.

The teacher's next-token distribution at temperature T is kept as its top-k log-probabilities plus
one bucket holding the rest of the mass; the KL is taken over those k + 1 outcomes, a lower bound of
the full-vocabulary KL (grouping outcomes never increases a divergence) that is exact when the rest
is small, and costs neither a teacher forward per step nor a vocabulary-sized tensor on disk.

Determinism: the windows' order is a function of (seed, step), the learning rate a function of the
step, and the state saved every ``checkpoint_every`` steps holds the trainable tensors, the optimizer,
the curve and the best tensors so far: a run killed and resumed ends with the same weights as one
that never stopped (same threads, same machine). No Prefect, no MLflow here.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppf.config import RecoverParams
from ppf.errors import PPFError
from ppf.metrics import perplexity_of, window_nll

STATE = "state.pt"


# ---- the windows --------------------------------------------------------------------------------
def steps_for(rp: RecoverParams) -> int:
    """Optimizer steps of the token budget (each step: batch_size x accumulation windows of seqlen)."""
    return max(1, math.ceil(rp.tokens / (rp.batch_size * rp.accumulation * rp.seqlen)))


def train_windows(tokens: torch.Tensor, rp: RecoverParams) -> torch.Tensor:
    """The train split's non-overlapping ``seqlen`` windows in a seeded order, as many as the budget
    reads (a budget larger than the split goes round again, each pass in its own order)."""
    n = tokens.numel() // rp.seqlen
    if n == 0:
        raise PPFError(f"the train split has {tokens.numel()} tokens, fewer than one recover.seqlen window "
                       f"({rp.seqlen}); lower recover.seqlen or use a larger corpus")
    need = steps_for(rp) * rp.batch_size * rp.accumulation
    rng = np.random.default_rng(rp.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
    return tokens[: n * rp.seqlen].view(n, rp.seqlen)[torch.as_tensor(order)]


# ---- the teacher's targets, once -----------------------------------------------------------------
@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's top-k next-token log-probabilities at ``temperature`` for every window position."""

    index: torch.Tensor     # [n, seqlen, k] int64 token ids
    logp: torch.Tensor      # [n, seqlen, k] float32 log-probabilities at the temperature
    digest: str

    @staticmethod
    def key(teacher_name: str, windows: torch.Tensor, rp: RecoverParams) -> str:
        h = hashlib.sha256()
        h.update(f"{teacher_name}|T={rp.temperature}|k={rp.top_k}|{tuple(windows.shape)}".encode())
        h.update(windows.to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]

    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: nn.Module, windows: torch.Tensor, rp: RecoverParams, digest: str,
                batch_size: int = 4) -> TeacherTargets:
        teacher.eval()
        idx, lp = [], []
        with _autocast(rp):
            for i in range(0, len(windows), batch_size):
                z = teacher(windows[i:i + batch_size]).logits.float() / rp.temperature
                top = torch.log_softmax(z, dim=-1).topk(min(rp.top_k, z.shape[-1]), dim=-1)
                idx.append(top.indices.to(torch.int32))
                lp.append(top.values.to(torch.float16))
        return cls(torch.cat(idx).long(), torch.cat(lp).float(), digest)

    @classmethod
    def cached(cls, teacher: nn.Module, teacher_name: str, windows: torch.Tensor, rp: RecoverParams,
               cache_dir: Path | None) -> tuple[TeacherTargets, bool]:
        """(the targets, whether they came from ``cache_dir``): computed once per teacher, windows,
        temperature and k, and shared by every model recovered with them."""
        from safetensors.torch import load_file, save_file

        digest = cls.key(teacher_name, windows, rp)
        path = None if cache_dir is None else Path(cache_dir) / f"teacher-{digest}.safetensors"
        if path is not None and path.is_file():
            t = load_file(str(path))
            return cls(t["index"].long(), t["logp"].float(), digest), True
        out = cls.compute(teacher, windows, rp, digest)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"index": out.index.to(torch.int32).contiguous(), "logp": out.logp.to(torch.float16).contiguous()},
                      str(tmp))
            os.replace(tmp, path)
        return out, False


# ---- what trains ----------------------------------------------------------------------------------
def _frozen_names(model: Any) -> set[str]:
    """Embeddings, the (tied) head and the final norm: shared with the dense model, never trained."""
    frozen: set[str] = set()
    keep = [model.get_input_embeddings(), model.get_output_embeddings(), model.model.norm]
    ids = {id(p) for m in keep if m is not None for p in m.parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in ids:
            frozen.add(name)
    return frozen


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def trainable(model: nn.Module, rp: RecoverParams) -> nn.Module:
    """Mark what trains: every decoder-layer parameter (``blocks``: weights, norms, compensation
    biases), or LoRA adapters on the layers' projections (``lora``, through peft; merged back by
    :func:`merge`). Returns the model to train (peft wraps it for ``lora``)."""
    frozen = _frozen_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(rp.train == "blocks" and name not in frozen and p.numel() > 0)
    if rp.train == "blocks":
        return model
    from peft import LoraConfig, get_peft_model

    # a removed block's projections have a zero dimension: no adapter there
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in LORA_TARGETS
               and ".layers." in f".{n}" and m.in_features > 0 and m.out_features > 0]
    config = LoraConfig(r=rp.lora_rank, lora_alpha=rp.lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    torch.manual_seed(rp.seed)  # the adapters' initialisation
    return get_peft_model(model, config)


def merge(model: Any) -> nn.Module:
    """The plain model again (LoRA adapters merged into their weights; ``blocks``: itself)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---- the loss ---------------------------------------------------------------------------------------
def distill_loss(logits: torch.Tensor, x: torch.Tensor, index: torch.Tensor, logp: torch.Tensor,
                 rp: RecoverParams) -> tuple[torch.Tensor, dict[str, float]]:
    """kl_weight x T^2 x KL(teacher_T || student_T) over the teacher's top-k + rest, + lm_weight x the
    next-token cross-entropy on the window's own tokens."""
    logits = logits.float()
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    logq = torch.log_softmax(logits / rp.temperature, dim=-1).gather(-1, index)
    eps = 1e-6
    p_rest = (1 - logp.exp().sum(-1)).clamp_min(eps)
    q_rest = (1 - logq.exp().sum(-1)).clamp_min(eps)
    kl = (logp.exp() * (logp - logq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
    kl = kl.mean() * rp.temperature ** 2
    loss = rp.kl_weight * kl + rp.lm_weight * lm
    return loss, {"loss": float(loss.detach()), "kl": float(kl.detach()), "lm": float(lm.detach())}


def _autocast(rp: RecoverParams, device: str = "cpu") -> Any:
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=rp.autocast == "bfloat16")


def learning_rate(step: int, steps: int, rp: RecoverParams) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine from lr down to lr x lr_final."""
    warm = max(1, round(rp.warmup * steps)) if rp.warmup > 0 else 0
    if step < warm:
        return rp.lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm - 1)
    return rp.lr * (rp.lr_final + (1 - rp.lr_final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def valid_perplexity(model: nn.Module, valid: torch.Tensor, batch_size: int = 4) -> float:
    """Perplexity over ``valid`` windows [n, L], in float32 as every ppf evaluation (:func:`ppf.metrics.window_nll`)."""
    return perplexity_of(window_nll(model, valid.reshape(-1), valid.shape[1], batch_size), valid.shape[1])


def _device(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# ---- the loop -----------------------------------------------------------------------------------------
def config_digest(rp: RecoverParams, student_id: str, targets: TeacherTargets) -> str:
    """What a saved state must match to be resumed: the params, the student and the teacher's targets."""
    return hashlib.sha256(f"{rp.model_dump_json()}|{student_id}|{targets.digest}".encode()).hexdigest()[:16]


def _save_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f"{STATE}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, state_dir / STATE)  # a kill mid-write leaves the previous state whole


def distill(student: nn.Module, targets: TeacherTargets, windows: torch.Tensor, valid: torch.Tensor,
            rp: RecoverParams, state_dir: Path | None = None, student_id: str = "",
            on_step: Callable[[dict[str, Any]], None] | None = None,
            probe: Callable[[nn.Module], dict[str, Any]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``student`` on ``windows`` [n, seqlen] against ``targets``; returns (the model with the
    best valid-perplexity weights, merged if LoRA; the record: curve, best step, tokens, seconds).

    ``state_dir``: where the resumable state is kept every ``checkpoint_every`` steps (and read back
    when it matches this run's params, student and targets); the caller removes it once the result is saved.
    ``probe``: measured on the current model at step 0 and at every valid check and stored in that curve
    point (e.g. test perplexity for a curve; it never decides anything, and a resumed run keeps it)."""
    steps = steps_for(rp)
    per_step = rp.batch_size * rp.accumulation
    if len(windows) < steps * per_step or len(targets.index) < steps * per_step:
        raise PPFError(f"{len(windows)} windows for {steps} steps of {per_step}; build them with train_windows()")
    model = trainable(student, rp)
    params = _named_trainable(model)
    if not params:
        raise PPFError(f"recover.train = {rp.train}: nothing of the model would train")
    opt = torch.optim.AdamW(list(params.values()), lr=rp.lr, weight_decay=rp.weight_decay)
    digest = config_digest(rp, student_id, targets)
    device = _device(model)
    path = None if state_dir is None else Path(state_dir) / STATE
    st = torch.load(path, weights_only=False) if path is not None and path.is_file() else None
    if st is not None and st.get("digest") == digest:  # resume: the step-0 measurements are in its record
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(st["params"][n])
        opt.load_state_dict(st["optimizer"])
        best = st["best"]
        rec, start, checks_since_best, seconds = st["record"], st["step"], st["checks_since_best"], st["seconds"]
        rec["resumed_from"] = start
    else:
        v0 = valid_perplexity(model, valid)
        point0 = {"step": 0, "tokens": 0, "ppl_valid": v0} | (probe(model) if probe else {})
        rec = {"curve": [point0], "losses": [], "best_step": 0, "best_ppl_valid": v0, "resumed_from": None,
               "stopped": "budget"}
        best = {n: p.detach().clone() for n, p in params.items()}
        start, checks_since_best, seconds = 0, 0, 0.0
    model.train()
    t0 = time.perf_counter() - seconds
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, steps, rp)
        parts = []
        for a in range(rp.accumulation):
            lo = (step * rp.accumulation + a) * rp.batch_size
            x = windows[lo:lo + rp.batch_size].to(device)
            with _autocast(rp, device):
                logits = model(x).logits
            loss, info = distill_loss(logits, x, targets.index[lo:lo + rp.batch_size].to(device),
                                      targets.logp[lo:lo + rp.batch_size].to(device), rp)
            (loss / rp.accumulation).backward()
            parts.append(info)
        if rp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), rp.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        info = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        rec["losses"].append({"step": done, **info})
        elapsed = time.perf_counter() - t0
        event: dict[str, Any] = {"step": done, "steps": steps, "tokens": done * per_step * rp.seqlen, **info,
                                 "tok_s": (done - start) * per_step * rp.seqlen / max(1e-9, elapsed - seconds),
                                 "lr": learning_rate(step, steps, rp)}
        event["eta_s"] = (steps - done) * per_step * rp.seqlen / max(1e-9, event["tok_s"])
        stop = None
        if done % rp.eval_every == 0 or done == steps:
            v = valid_perplexity(model, valid)
            rec["curve"].append({"step": done, "tokens": event["tokens"], "ppl_valid": v} | (probe(model) if probe else {}))
            event["ppl_valid"] = v
            if v < rec["best_ppl_valid"]:
                rec["best_ppl_valid"], rec["best_step"], checks_since_best = v, done, 0
                best = {n: p.detach().clone() for n, p in params.items()}
            else:
                checks_since_best += 1
                if rp.patience and checks_since_best >= rp.patience:
                    stop = "early"
        if rp.minutes is not None and elapsed > 60 * rp.minutes:
            stop = "minutes"
        if on_step is not None:
            on_step(event)
        if path is not None and (done % rp.checkpoint_every == 0) and done < steps and stop is None:
            now = {n: p.detach().clone() for n, p in params.items()}
            _save_state(path.parent, {"digest": digest, "step": done, "params": now, "optimizer": opt.state_dict(),
                                      "best": best, "record": rec, "checks_since_best": checks_since_best,
                                      "seconds": time.perf_counter() - t0})
        if stop is not None:
            rec["stopped"] = stop
            break
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(best[n])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    rec.update(steps=steps, steps_run=rec["losses"][-1]["step"] if rec["losses"] else start,
               seconds=time.perf_counter() - t0, trained=rp.train,
               trainable_params=int(sum(p.numel() for p in params.values())))
    rec["tokens"] = rec["steps_run"] * per_step * rp.seqlen
    return merge(model), rec
