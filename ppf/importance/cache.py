"""Importance scores on disk: ``<prefix>.json`` (layer H + meta) and ``<prefix>.safetensors`` (units).

Scoring the base model is the only step that runs the model over calibration data, and every policy
the agent tries reuses it, so it is computed once and cached. The two files are written atomically
and tied together by a digest of the JSON payload stored in the safetensors metadata: a pair left
mismatched by a crash between the two writes, or a hand-edited file, is reported, not silently used.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppf.errors import PPFError
from ppf.importance.layer import layer_importance
from ppf.importance.units import unit_importance
from ppf.io import read_tensors, write_json_atomic, write_tensors_atomic


def _paths(prefix: str | Path) -> tuple[Path, Path]:
    # append, don't use with_suffix: a prefix like "smollm2-135m.c4" must keep its dot
    return Path(f"{prefix}.json"), Path(f"{prefix}.safetensors")


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_importance(path_prefix: str | Path, layer: dict[str, list[float]], units: dict[str, torch.Tensor],
                    meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write both files (units first, so a present JSON always comes with its tensors)."""
    js, st = _paths(path_prefix)
    payload = json.loads(json.dumps({"layer": {k: [float(x) for x in v] for k, v in layer.items()},
                                     "meta": dict(meta or {})}, default=str))
    digest = _digest(payload)
    write_tensors_atomic(st, {k: v.detach().float().cpu() for k, v in units.items()},
                         {"meta": payload["meta"], "digest": digest})
    write_json_atomic(js, payload | {"digest": digest})
    return js, st


def load_importance(path_prefix: str | Path) -> tuple[dict[str, list[float]], dict[str, torch.Tensor], dict[str, Any]]:
    """(layer, units, meta) as saved; PPFError when a file is missing, unreadable or mismatched."""
    js, st = _paths(path_prefix)
    fix = "delete both files and recompute the importance scores"
    for p in (js, st):
        if not p.is_file():
            raise PPFError(f"importance cache file {p} is missing; recompute the importance scores")
    try:
        data = json.loads(js.read_text())
        layer, meta, digest = data["layer"], data["meta"], data["digest"]
        units, tensor_meta = read_tensors(st)
        stored = tensor_meta.get("digest")
    except Exception as exc:  # any parse error means the same thing to the user
        raise PPFError(f"importance cache {path_prefix} is corrupt ({type(exc).__name__}); {fix}") from exc
    if stored != digest or _digest({"layer": layer, "meta": meta}) != digest:
        raise PPFError(f"importance cache {js} and {st.name} do not match each other; {fix}")
    return layer, units, meta


# ---- computed once per (model, calibration tokens, settings), then read back ---------------------
@dataclass(frozen=True)
class Importance:
    """Layer scores per method and unit scores (head / kv / channel) of one dense model."""

    layer: dict[str, list[float]]
    units: dict[str, torch.Tensor]
    meta: dict[str, Any]


def slug(model_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(model_ref)).name or str(model_ref)).strip("_") or "model"


def _code_version() -> str:
    """A hash of the importance sources: a change in how scores are computed invalidates the cache."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cached_importance(model: torch.nn.Module | None, model_ref: str, calib: torch.Tensor, unit_kind: str,
                      outlier_m: float, folders: tuple[Path, ...], save_to: Path | None) -> Importance:
    """Layer scores for every method + unit scores: read from the first of ``folders`` that has them
    for (model, calibration tokens, unit kind, OWL's M, code), else computed and saved to ``save_to``.

    ``model=None`` only reads (a miss is a PPFError): callers that only plan never load a model.
    """
    digest = hashlib.sha256(calib.contiguous().numpy().tobytes()).hexdigest()[:12]
    meta = {"model": str(model_ref), "calibration": digest, "unit_importance": unit_kind,
            "outlier_m": outlier_m, "code": _code_version()}
    name = f"{slug(model_ref)}-{hashlib.sha256(repr(sorted(meta.items())).encode()).hexdigest()[:10]}"
    for folder in folders:
        if Path(folder, f"{name}.json").is_file():
            layer, units, stored = load_importance(Path(folder) / name)
            if {k: stored.get(k) for k in meta} == meta:
                return Importance(layer, units, stored)
    if model is None:
        raise PPFError(f"no importance scores for {model_ref} with these calibration tokens and pruning "
                       "settings; run `dvc repro importance` (or `ppf prune` once) first")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    layer = layer_importance(model, calib, outlier_m=outlier_m)
    timings["layer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    units = unit_importance(model, calib, kind=unit_kind)
    timings["units_s"] = time.perf_counter() - t
    if save_to is not None:  # timings stay out of the file: same inputs -> same bytes (DVC hashes)
        save_importance(Path(save_to) / name, layer, units, meta)
    return Importance(layer, units, meta | {"timings": timings})
