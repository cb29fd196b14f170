"""The on-disk layout of a ppf checkpoint: file names, per-layer shapes, and reading the small files.

A checkpoint directory holds:

``model.safetensors``
    The weights (safetensors only, never pickle). Tied weights (``lm_head`` tied to
    ``embed_tokens``) are stored once and re-tied on load.
``config.json``
    The DENSE config with ``model_type`` changed to ``ppf_<base>`` (``ppf_llama``, ``ppf_mistral``,
    ``ppf_qwen2``), ``ppf_base_model_type`` the base type and ``ppf_layers`` the per-layer shapes
    ``{n_heads, n_kv_heads, intermediate}``, and an ``auto_map`` to the remote code below.
``configuration_ppf.py``, ``modeling_ppf.py``
    Self-contained classes (torch + transformers only, :mod:`ppf.checkpoint.remote_code`), so that
    ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads the checkpoint
    without ppf. With ``import ppf`` (which registers ppf's classes,
    :func:`ppf.checkpoint.hf_classes.register_with_transformers`) no ``trust_remote_code`` is needed.
``ppf_layers.json``
    ``{"format": 1, "layers": [per-layer shapes], "plan": PruningPlan.to_dict()}`` - the kept dense
    indices, so the plan (and the masks derived from it) can be read back
    (:func:`ppf.checkpoint.store.read_plan`).
``ppf.json``
    ``{"format": 1, "base": ..., "ppf_version": ..., "policy": plan.meta, "extra": {...}, ...}``.
tokenizer files and ``generation_config.json``
    As transformers writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ppf.errors import PPFError
from ppf.plan import PruningPlan

FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LAYERS = "ppf_layers.json"
META = "ppf.json"
PREFIX = "ppf_"
BASES = ("llama", "mistral", "qwen2")  # base model types a ppf checkpoint can wrap
_CLASS_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


# ---- per-layer shapes ------------------------------------------------------------------------------
SHAPE_KEYS = ("n_heads", "n_kv_heads", "intermediate")
BIAS_KEYS = {"o_bias": ("self_attn", "o_proj"), "down_bias": ("mlp", "down_proj")}  # added by compensation


def layer_shapes(plan: PruningPlan) -> list[dict[str, int]]:
    """``[{n_heads, n_kv_heads, intermediate}, ...]``, one per layer, as the plan keeps them."""
    return [{"n_heads": len(lp.heads), "n_kv_heads": len(lp.kv_heads), "intermediate": len(lp.channels)}
            for lp in plan.layers]


def model_shapes(model: nn.Module, plan: PruningPlan) -> list[dict[str, Any]]:
    """:func:`layer_shapes` plus ``o_bias`` / ``down_bias: true`` where the model has an output bias its
    dense config does not (a compensated o_proj / down_proj; :mod:`ppf.compensate`)."""
    dense_bias = {"o_bias": bool(getattr(model.config, "attention_bias", False)),
                  "down_bias": bool(getattr(model.config, "mlp_bias", False))}
    out = []
    for sh, layer in zip(layer_shapes(plan), model.model.layers, strict=False):
        for key, (block, proj) in BIAS_KEYS.items():
            linear = getattr(getattr(layer, block), proj, None)
            if getattr(linear, "bias", None) is not None and not dense_bias[key]:
                sh[key] = True
        out.append(sh)
    return out


# ---- reading the small files -------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PPFError(f"'{path.parent}' is not a ppf checkpoint: it has no {path.name} ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PPFError(f"'{path.parent}' is not a readable ppf checkpoint: {path.name} is corrupt ({first})") from None


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise PPFError(f"'{path}' is not a ppf checkpoint: the directory does not exist")
    if not (path / LAYERS).is_file():
        hint = " (a plain transformers model directory: load it with ppf.models.load)" \
            if (path / CONFIG).is_file() else ""
        raise PPFError(f"'{path}' is not a ppf checkpoint: it has no {LAYERS}{hint}")


def _read_layers(path: Path) -> tuple[list[dict[str, int]], PruningPlan]:
    d = _read_json(path / LAYERS, "the per-layer shapes")
    try:
        shapes = [{k: int(sh[k]) for k in SHAPE_KEYS} | {k: True for k in BIAS_KEYS if sh.get(k) is True}
                  for sh in d["layers"]]
        plan = PruningPlan.from_dict(d["plan"])
    except PPFError as exc:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {LAYERS} holds an invalid plan ({exc})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {LAYERS} is malformed "
                       f"({type(exc).__name__}: {exc})") from None
    if [{k: sh[k] for k in SHAPE_KEYS} for sh in shapes] != layer_shapes(plan):
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {LAYERS} lists shapes that disagree with its plan")
    return shapes, plan
