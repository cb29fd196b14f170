"""The `recover` recipe (``ppf recover CKPT --out DIR``): a pruned checkpoint distilled from its dense
base model on the train split, measured, and saved as a new checkpoint with its model card.

Inputs are checked before anything is loaded or written: the checkpoint must be a ppf checkpoint
pruned from the project's model (the teacher), ``--out`` new or a ppf checkpoint. The teacher's
targets are cached under ``cache/recover/`` (keyed by teacher, windows, temperature and k), so
every model recovered with the same params reads them once; the resumable state lives beside the
output (``DIR.recover-state/``) until the run completes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ppf.checkpoint import is_checkpoint, load_pruned, save_pruned
from ppf.checkpoint.layout import META, _read_json
from ppf.config import RecoverParams
from ppf.errors import PPFError
from ppf.metrics import perplexity_of, window_nll, windows
from ppf.recover import TeacherTargets, distill, train_windows
from ppf.stats import ppl_interval
from ppf.workbench import Workbench

CACHE = Path("cache") / "recover"


def state_dir(out: Path) -> Path:
    """Where a run's resumable state is kept until it completes."""
    return out.with_name(out.name + ".recover-state")


def check(wb: Workbench, checkpoint: Path, out: Path) -> dict[str, Any]:
    """The checkpoint's ppf.json, once it is known to be a ppf checkpoint of the teacher; else one error."""
    if not is_checkpoint(checkpoint):
        raise PPFError(f"'{checkpoint}' is not a ppf checkpoint (no ppf_layers.json); pass a directory written by "
                       "`ppf prune --out` or the benchmark (models/pruned/ppf-<ratio>)")
    meta = _read_json(Path(checkpoint) / META, "the checkpoint's ppf.json")
    base = meta.get("base") if isinstance(meta, dict) else None
    if base != wb.params.model.name:
        raise PPFError(f"'{checkpoint}' was pruned from '{base}', but the teacher (model.name in params.yaml) is "
                       f"'{wb.params.model.name}'; recover it in the project of its base model or set model.name: {base}")
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise PPFError(f"--out '{out}' is the checkpoint itself; write the recovered model to a new directory")
    if out.exists() and not is_checkpoint(out) and (not out.is_dir() or any(out.iterdir())):
        raise PPFError(f"--out '{out}' exists and is not a ppf checkpoint; choose a new directory")
    return meta


def test_perplexity(wb: Workbench, model: torch.nn.Module) -> dict[str, Any]:
    """Test perplexity on the benchmark's windows with its bootstrap interval (reported, never used to decide)."""
    b, ev = wb.params.benchmark, wb.params.eval
    with wb.forwards():
        nll = window_nll(model, wb.split_tokens("test"), ev.seqlen, ev.batch_size, b.max_windows)
    lo, hi = ppl_interval(nll.tolist(), ev.seqlen - 1, b.bootstrap, wb.params.seed)
    return {"split": "test", "value": perplexity_of(nll, ev.seqlen), "ci_lo": lo, "ci_hi": hi,
            "windows": len(nll), "seqlen": ev.seqlen, "nll_windows": [float(x) for x in nll]}


def recover(wb: Workbench, checkpoint: Path, out: Path | None, rp: RecoverParams | None = None,
            on_step: Callable[[dict[str, Any]], None] | None = None,
            progress: Callable[[str], None] = lambda msg: None, measure: bool = True) -> dict[str, Any]:
    """`ppf recover`: distil ``checkpoint`` from the project's dense model; save to ``out`` if given.

    Returns the report: the recovery record (curve of valid perplexity, losses, best step, tokens,
    seconds, tokens/s), test perplexity before and after (``measure``), where it was saved."""
    rp = rp or wb.params.recover
    checkpoint = Path(checkpoint)
    meta = check(wb, checkpoint, out if out is not None else checkpoint.with_name(checkpoint.name + ".recovered"))
    t = time.perf_counter()
    progress(f"loading {checkpoint}")
    student, tokenizer = load_pruned(checkpoint, wb.params.model.device)
    dtype = next(student.parameters()).dtype
    student = student.float()  # trained in float32 (bf16 autocast inside); saved in the checkpoint's dtype
    before = test_perplexity(wb, student) if measure else None
    progress("the teacher's targets (computed once per teacher, windows, temperature and k)")
    train = train_windows(wb.split_tokens("train"), rp)
    t_teacher = time.perf_counter()
    with wb.forwards():
        targets, cached = TeacherTargets.cached(wb.model, wb.params.model.name, train, rp, wb.root / CACHE)
    teacher_s = time.perf_counter() - t_teacher
    valid = windows(wb.split_tokens("valid"), wb.params.eval.seqlen, rp.valid_windows)
    progress("distilling")
    weights = checkpoint / "model.safetensors"
    sid = f"{checkpoint.resolve()}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}"  # a state resumes only its own student
    state = state_dir(out) if out is not None else None
    model, rec = distill(student, targets, train, valid, rp, state, sid, on_step)
    after = test_perplexity(wb, model) if measure else None
    rec |= {"lr": rp.lr, "temperature": rp.temperature, "seed": rp.seed, "budget_tokens": rp.tokens,
            "teacher_s": teacher_s, "teacher_cached": cached,
            "tok_s": rec["tokens"] / max(1e-9, rec["seconds"])}
    saved = None
    if out is not None:
        progress(f"saving to {out}")
        extra = dict(meta.get("extra") or {})
        extra["recovery"] = {k: rec[k] for k in ("tokens", "trained", "lr", "temperature", "seed", "best_step",
                                                 "steps_run", "stopped", "best_ppl_valid", "budget_tokens")}
        extra["recovered_from"] = str(checkpoint)
        for key, ppl in (("perplexity", after), ("perplexity_before", before)):
            if ppl is not None:
                extra[key] = {k: v for k, v in ppl.items() if k != "nll_windows"}
        saved = save_pruned(model.to(dtype), tokenizer, out,  # type: ignore[arg-type]
                            base=meta["base"], extra=extra)
        assert state is not None
        shutil.rmtree(state, ignore_errors=True)  # only now: a run killed while saving resumes from its last state
    return {"checkpoint": str(checkpoint), "out": str(saved) if saved else None, "recovery": rec,
            "ppl_before": before, "ppl_after": after, "seconds": time.perf_counter() - t}
