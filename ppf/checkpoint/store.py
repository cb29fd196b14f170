"""Saving and loading ppf checkpoints (the layout: :mod:`ppf.checkpoint.layout`).

:func:`load_pruned` builds the dense skeleton on the meta device, shrinks each layer to the stored
shapes, and assigns the stored tensors (bit-identical logits to the model that was saved).
``AutoModelForCausalLM.from_pretrained(dir)`` works too once
:func:`ppf.checkpoint.hf_classes.register_with_transformers` ran.

transformers is imported lazily (only when a checkpoint is saved or loaded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ppf.checkpoint import remote_code
from ppf.checkpoint.card import CARD, model_card
from ppf.checkpoint.hf_classes import classes, register_with_transformers
from ppf.checkpoint.layout import (BASES, CONFIG, FORMAT, LAYERS, META, PREFIX, WEIGHTS, _check_dir, _read_json,
                                   _read_layers, layer_shapes, model_shapes)
from ppf.checkpoint.skeleton import _aligned, _non_persistent_buffers, _restore_buffer_dtypes, _restore_rotary
from ppf.errors import PPFError
from ppf.io import atomic_dir, write_json_atomic, write_text_atomic
from ppf.models import load
from ppf.plan import DenseShape, PruningPlan
from ppf.prune import PLAN_ATTR, plan_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _ppf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ppf")


# ---- save --------------------------------------------------------------------------------------------
def _base_type(config: Any) -> str:
    return getattr(config, "ppf_base_model_type", None) or config.model_type


def _ppf_config(model: nn.Module, plan: PruningPlan) -> Any:
    """The model's dense config re-expressed as the ppf config class, carrying the layer shapes."""
    base = _base_type(model.config)
    cfg_cls, model_cls = classes(base)
    d = model.config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map",
                "ppf_layers", "ppf_base_model_type", "quantization_config"):
        d.pop(key, None)
    cfg = cfg_cls.from_dict(d)
    cfg.ppf_layers = model_shapes(model, plan)
    cfg.ppf_base_model_type = base
    cfg.architectures = [model_cls.__name__]
    cfg.auto_map = remote_code.auto_map(base)  # loadable without ppf (trust_remote_code=True)
    return cfg


def _check_matches(model: nn.Module, plan: PruningPlan) -> None:
    from ppf.arch import layers

    for view, sh in zip(layers(model), layer_shapes(plan), strict=False):
        got = {"n_heads": view.n_heads, "n_kv_heads": view.n_kv_heads, "intermediate": view.intermediate}
        if got != sh:
            raise PPFError(f"layer {view.index} of the model has {got}, its ppf plan says {sh}; "
                           "the model was changed after pruning")


def _state_dict_untied(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict with each shared tensor stored once (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    dropped = []
    for name, t in model.state_dict().items():
        # zero-size tensors (a removed block's projections) share no storage, whatever data_ptr says
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) \
            if t.device.type != "meta" and t.numel() else None
        if key is not None and key in seen:
            dropped.append(name)
            continue
        if key is not None:
            seen[key] = name
        out[name] = t.detach().cpu().contiguous()
    return out, dropped


def save_pruned(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | os.PathLike,
                base: str, extra: dict | None = None) -> Path:
    """Write ``model`` (pruned by :func:`ppf.prune.prune_model`, or dense) as a ppf checkpoint.

    ``base`` names the dense model it came from (e.g. ``smollm2-135m``); ``extra`` is stored in
    ``ppf.json`` (and read by the model card, README.md: its ``policy``, ``target``, ``compensation``,
    ``recovery`` and ``perplexity``). Atomic: everything is written to a temporary sibling that replaces ``out_dir``
    only when complete. ``out_dir`` may be an existing ppf checkpoint (replaced) or an empty
    directory; anything else is refused rather than deleted. Returns ``out_dir``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not (out / LAYERS).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise PPFError(f"'{out}' exists and is not a ppf checkpoint; refusing to replace it "
                       "(choose a new directory or remove it)")
    plan = plan_of(model)
    if plan is None:  # an unpruned model is a valid (identity-plan) checkpoint
        plan = PruningPlan.dense(DenseShape.of(model))
    _check_matches(model, plan)
    config = _ppf_config(model, plan)
    tensors, tied = _state_dict_untied(model)
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        remote_code.write(tmp, config.ppf_base_model_type)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        # compact: the plan lists every kept channel index (hundreds of KB pretty-printed)
        write_text_atomic(tmp / LAYERS, json.dumps(
            {"format": FORMAT, "layers": config.ppf_layers, "plan": plan.to_dict()}, separators=(",", ":"),
            default=str) + "\n")
        meta = {
            "format": FORMAT, "base": base, "base_model_type": config.ppf_base_model_type,
            "ppf_version": _ppf_version(), "policy": plan.meta, "extra": dict(extra or {}),
            "block_ratio": plan.block_ratio, "kept_block_params": plan.kept_block_params,
            "dense_block_params": plan.dense_block_params, "tied": tied,
            # non-persistent buffers (RoPE inv_freq) are recomputed on load, in float32; a model
            # cast with .to(bfloat16) had them in bfloat16, and its logits depend on that
            "buffer_dtypes": {name: str(b.dtype).removeprefix("torch.")
                              for name, b in _non_persistent_buffers(model)},
        }
        write_json_atomic(tmp / META, meta)
        write_text_atomic(tmp / CARD, model_card(meta, out.name))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # mkdtemp / mkstemp make things private; a checkpoint is meant to be readable like any other
        for f in (f for f in tmp.iterdir() if f.is_file()):
            f.chmod(0o644)
        tmp.chmod(0o755)
    return out


# ---- load --------------------------------------------------------------------------------------------
def read_plan(path: str | os.PathLike) -> PruningPlan:
    """The plan stored in a ppf checkpoint (kept dense indices per layer), without loading weights."""
    path = Path(path)
    _check_dir(path)
    return _read_layers(path)[1]


def load_pruned(path: str | os.PathLike, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """(model, tokenizer) from a ppf checkpoint, in eval mode, with the exact saved architecture.

    The model is an instance of the ppf class (a subclass of the base ``<X>ForCausalLM``) with
    ``model.ppf_plan`` set; its tensors are the stored ones, bit for bit, in the stored dtype. The
    tokenizer is None when the checkpoint has none. A directory that is not a ppf checkpoint raises
    a one-line PPFError naming the path and what is missing.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GenerationConfig

    register_with_transformers()  # so that AutoTokenizer can read the ppf config.json quietly
    path = Path(path)
    _check_dir(path)
    shapes, plan = _read_layers(path)
    cfg_dict = _read_json(path / CONFIG, "the model config")
    mtype = cfg_dict.get("model_type", "") if isinstance(cfg_dict, dict) else ""
    if not mtype.startswith(PREFIX):
        raise PPFError(f"'{path}' is not a ppf checkpoint: config.json has model_type '{mtype}', "
                       f"expected one of {', '.join(PREFIX + b for b in BASES)}")
    cfg_cls, model_cls = classes(mtype[len(PREFIX):])
    try:
        config = cfg_cls.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: config.json is invalid ({exc})") from None
    if list(config.ppf_layers or []) != shapes:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: config.json and {LAYERS} disagree on the layer shapes")
    if not (path / WEIGHTS).is_file():
        raise PPFError(f"'{path}' is not a ppf checkpoint: it has no {WEIGHTS}")
    try:
        tensors = {k: _aligned(v) for k, v in load_file(str(path / WEIGHTS)).items()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {WEIGHTS} is corrupt ({exc})") from None

    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    config.dtype = dtype
    with torch.device("meta"):
        model = model_cls(config)
    want = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    bad = [(k, tuple(v.shape), tuple(want[k].shape)) for k, v in tensors.items() if k in want and v.shape != want[k].shape]
    if bad:
        k, got, exp = bad[0]
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {k} has shape {got} in {WEIGHTS}, but its "
                       f"layer shapes in {LAYERS} need {exp}; re-save the pruned model")
    result = model.load_state_dict(tensors, strict=False, assign=True)
    tied_targets = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = set(result.missing_keys) - tied_targets
    if missing or result.unexpected_keys:
        what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(result.unexpected_keys)[:3]}"
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: {WEIGHTS} does not match its config ({what})")
    model.tie_weights()
    _restore_rotary(model)
    _restore_buffer_dtypes(model, path)
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:
        raise PPFError(f"'{path}' is not a readable ppf checkpoint: no weights for {still_meta[:3]}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    setattr(model, PLAN_ATTR, plan)
    model.to(device).eval()

    tokenizer = None
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def is_checkpoint(ref: str | os.PathLike) -> bool:
    """True for a ppf (pruned) checkpoint directory."""
    return Path(ref).is_dir() and (Path(ref) / LAYERS).is_file()


def load_model(ref: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) for a base model name/path OR a ppf checkpoint directory."""
    if is_checkpoint(ref):
        return load_pruned(ref, device)
    return load(str(ref), dtype, device)
