"""The pruning engine's recipes: calibration → importance (cached) → policy → plan → pruned model.

Thin glue over the components (:mod:`ppf.importance`, :mod:`ppf.policy`, :mod:`ppf.prune`,
:mod:`ppf.checkpoint`) shared by the CLI, the flows and the benchmarks, so that each of them
prunes the same way. The expensive, policy-independent part — scoring the dense model on
calibration data — is computed once per (model, calibration tokens, settings) and cached under
``data/importance/``; evaluating a policy afterwards never runs the model.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppf.config import Params
from ppf.errors import PPFError
from ppf.io import read_tensors
from ppf.plan import DenseShape, PruningPlan


@dataclass(frozen=True)
class Importance:
    """Layer scores per method and unit scores (head / kv / channel) of one dense model."""

    layer: dict[str, list[float]]
    units: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _slug(model_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(model_ref)).name or str(model_ref)).strip("_") or "model"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]


def _importance_code() -> str:
    """A hash of the importance sources: a change in how scores are computed invalidates the cache."""
    import ppf.importance

    h = hashlib.sha256()
    for f in sorted(Path(ppf.importance.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def token_batches(root: Path, model_ref: str, tokenizer: Any, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration [N, L] from train, held-out [n, l] from valid) token batches for this model.

    The prepared file is used when it was made for this model; another model (another tokenizer)
    gets batches drawn the same way from the prepared corpus text.
    """
    path = root / "data" / "calibration" / "tokens.safetensors"
    if path.is_file():
        tensors, meta = read_tensors(path)
        if meta.get("model") == str(model_ref) and meta.get("calibration") == params.calibration.model_dump() \
                and meta.get("js") == params.js.model_dump():
            return tensors["calibration"], tensors["heldout"]
    corpus = root / "data" / "corpus"
    if not (corpus / "train.txt").is_file() or not (corpus / "valid.txt").is_file():
        raise PPFError(f"no prepared corpus in '{corpus}'; run `dvc repro prepare` in the project first")
    from ppf.data.corpus import calibration_batch, tokenize_text

    cal, js = params.calibration, params.js
    train = tokenize_text(tokenizer, (corpus / "train.txt").read_text(encoding="utf-8"))
    valid = tokenize_text(tokenizer, (corpus / "valid.txt").read_text(encoding="utf-8"))
    return (calibration_batch(train, cal.n_samples, cal.seqlen, cal.seed),
            calibration_batch(valid, js.n_samples, js.seqlen, js.seed))


def importance(model: torch.nn.Module | None, model_ref: str, calib: torch.Tensor, params: Params,
               cache_dir: Path | None, also_look_in: tuple[Path, ...] = ()) -> Importance:
    """Layer scores for every method + unit scores; computed once, then read from the cache.

    The cache key is (model, calibration tokens, unit kind, OWL's M); a hit in ``cache_dir`` or
    any of ``also_look_in`` (e.g. the `importance` stage's ``data/importance``) skips the model.
    ``model=None`` reads the cache only (a miss is a PPFError).
    """
    from ppf.importance import layer_importance, load_importance, save_importance, unit_importance

    pp = params.pruning
    meta = {"model": str(model_ref), "calibration": _digest(calib), "unit_importance": pp.unit_importance,
            "outlier_m": pp.outlier_m, "code": _importance_code()}
    name = f"{_slug(model_ref)}-{hashlib.sha256(repr(sorted(meta.items())).encode()).hexdigest()[:10]}"
    for folder in (*also_look_in, *([cache_dir] if cache_dir else [])):
        if Path(folder, f"{name}.json").is_file():
            layer, units, stored = load_importance(Path(folder) / name)
            if {k: stored.get(k) for k in meta} == meta:
                return Importance(layer, units, stored)
    if model is None:  # a caller that only plans (predictor, agent) must not silently load a model
        raise PPFError(f"no importance scores for {model_ref} with these calibration tokens and pruning "
                       "settings; run `dvc repro importance` (or `ppf prune` once) first")
    prefix = Path(cache_dir) / name if cache_dir else None
    timings: dict[str, float] = {}
    t = time.perf_counter()
    layer = layer_importance(model, calib, outlier_m=pp.outlier_m)
    timings["layer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    units = unit_importance(model, calib, kind=pp.unit_importance)
    timings["units_s"] = time.perf_counter() - t
    if prefix is not None:  # timings stay out of the file: same inputs -> same bytes (DVC hashes)
        save_importance(prefix, layer, units, meta)
    return Importance(layer, units, meta | {"timings": timings})


def make_plan(shape: DenseShape, imp: Importance, policy: str, ratio: float, params: Params) -> PruningPlan:
    """A policy ("lod:0.2", "uniform", …) at a target block ratio → the plan (no weights touched)."""
    from ppf.policy import Policy, check_ratio, plan_for

    check_ratio(ratio)
    pol = Policy.parse(policy)
    H = imp.layer.get(pol.method)
    if H is None:
        raise PPFError(f"no '{pol.method}' layer scores in the importance cache; known: {', '.join(imp.layer)}")
    return plan_for(pol, ratio, H, imp.units, shape, max_layer_ratio=params.pruning.max_layer_ratio,
                    tol=params.pruning.tolerance)


def is_checkpoint(ref: str | Path) -> bool:
    """True for a ppf (pruned) checkpoint directory."""
    from ppf.checkpoint import LAYERS

    return Path(ref).is_dir() and (Path(ref) / LAYERS).is_file()


def load_model(ref: str | Path, dtype: str = "float32"):
    """(model, tokenizer) for a base model name/path OR a ppf checkpoint directory."""
    if is_checkpoint(ref):
        from ppf.checkpoint import load_pruned

        return load_pruned(ref)
    from ppf.models import load

    return load(str(ref), dtype=dtype)


def prune(model_ref: str, ratio: float, policy: str, out: Path | None, params: Params, root: Path,
          progress=lambda msg: None) -> dict[str, Any]:
    """Prune a base model with a policy to a target block ratio; save it to ``out`` if given.

    Returns a report: actual block and whole-model ratios, parameters before/after, seconds per step.
    Inputs are validated before anything is loaded, and the checkpoint is written atomically.
    """
    from ppf.arch import describe
    from ppf.policy import Policy, check_ratio
    from ppf.prune import prune_model

    check_ratio(ratio)
    Policy.parse(policy)
    if out is not None:
        from ppf.checkpoint import LAYERS

        out = Path(out)
        if out.exists() and not (out / LAYERS).is_file() and (not out.is_dir() or any(out.iterdir())):
            raise PPFError(f"--out '{out}' exists and is not a ppf checkpoint; choose a new directory")
    if is_checkpoint(model_ref):
        raise PPFError(f"'{model_ref}' is already a pruned checkpoint; prune its base model instead")
    times: dict[str, float] = {}
    t = time.perf_counter()
    progress(f"loading {model_ref}")
    model, tokenizer = load_model(model_ref, params.model.dtype)
    before = describe(model)
    times["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress("calibration tokens + importance scores (cached after the first run)")
    calib, _ = token_batches(root, model_ref, tokenizer, params)
    from ppf.paths import cache_dir

    imp = importance(model, model_ref, calib, params, cache_dir() / "importance",
                     also_look_in=(root / "data" / "importance",))
    times["importance_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = make_plan(DenseShape.of(model), imp, policy, ratio, params)
    times["plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    progress("pruning")
    prune_model(model, plan)
    after = describe(model)
    times["prune_s"] = time.perf_counter() - t
    if out is not None:
        t = time.perf_counter()
        progress(f"saving to {out}")
        from ppf.checkpoint import save_pruned

        save_pruned(model, tokenizer, out, base=str(model_ref), extra={"policy": policy, "target": ratio})
        times["save_s"] = time.perf_counter() - t
    return {
        "model": str(model_ref), "policy": policy, "target_ratio": ratio,
        "actual_block_ratio": plan.block_ratio,
        "actual_model_ratio": 1 - after.total_params / before.total_params,
        "params_before": before.total_params, "params_after": after.total_params,
        "block_params_before": before.block_params, "block_params_after": after.block_params,
        "layer_ratios": plan.layer_ratios(), "out": str(out) if out else None, "seconds": times,
        "_model": model, "_tokenizer": tokenizer, "_plan": plan,
    }
