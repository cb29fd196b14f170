"""Pruned checkpoints: save a physically pruned model, load it back with its exact architecture.

transformers cannot ``from_pretrained`` a model whose layers have different shapes (its classes
build every layer from the one ``num_attention_heads`` / ``intermediate_size``), so a ppf
checkpoint carries the per-layer shapes and ppf supplies the classes that honour them.

A checkpoint directory holds:

``model.safetensors``
    The weights (safetensors only, never pickle). Tied weights (``lm_head`` tied to
    ``embed_tokens``) are stored once and re-tied on load.
``config.json``
    The DENSE config with ``model_type`` changed to ``ppf_<base>`` (``ppf_llama``, ``ppf_mistral``,
    ``ppf_qwen2``), ``ppf_base_model_type`` the base type and ``ppf_layers`` the per-layer shapes
    ``{n_heads, n_kv_heads, intermediate}``, and an ``auto_map`` to the remote code below.
``configuration_ppf.py``, ``modeling_ppf.py``
    Self-contained classes (torch + transformers only, :mod:`ppf.export.remote_code`), so that
    ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads the checkpoint
    without ppf. With ``import ppf`` (which registers ppf's classes,
    :func:`register_with_transformers`) no ``trust_remote_code`` is needed.
``ppf_layers.json``
    ``{"format": 1, "layers": [per-layer shapes], "plan": PruningPlan.to_dict()}`` - the kept dense
    indices, so the plan (and the masks derived from it) can be read back (:func:`read_plan`).
``ppf.json``
    ``{"format": 1, "base": ..., "ppf_version": ..., "policy": plan.meta, "extra": {...}, ...}``.
tokenizer files and ``generation_config.json``
    As transformers writes them.

:func:`load_pruned` builds the dense skeleton on the meta device, shrinks each layer to the stored
shapes, and assigns the stored tensors (bit-identical logits to the model that was saved).
``AutoModelForCausalLM.from_pretrained(dir)`` works too once :func:`register_with_transformers` ran.

transformers is imported lazily (only when a checkpoint is saved or loaded, or the classes are
registered); the ppf classes are created on first use and reachable as module attributes, e.g.
``ppf.checkpoint.PPFLlamaForCausalLM``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ppf.errors import PPFError
from ppf.export import remote_code
from ppf.io import atomic_dir, write_json_atomic, write_text_atomic
from ppf.models import load
from ppf.plan import DenseShape, PruningPlan
from ppf.prune import PLAN_ATTR, plan_of, set_attention_bookkeeping

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
    for sh, layer in zip(layer_shapes(plan), model.model.layers):
        for key, (block, proj) in BIAS_KEYS.items():
            linear = getattr(getattr(layer, block), proj, None)
            if getattr(linear, "bias", None) is not None and not dense_bias[key]:
                sh[key] = True
        out.append(sh)
    return out


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A fresh Linear of the new size, on the old one's device and dtype (meta stays meta)."""
    if (old.in_features, old.out_features) == (in_features, out_features):
        return old
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def shrink_layers(model: nn.Module, shapes: list[dict[str, int]]) -> None:
    """Resize every decoder layer's linears to ``shapes`` (fresh, uninitialised weights).

    Used to build the skeleton a pruned checkpoint's weights are loaded into; the weights must be
    loaded afterwards.
    """
    blocks = model.model.layers
    if len(shapes) != len(blocks):
        raise PPFError(f"the checkpoint lists {len(shapes)} layer shapes for a {len(blocks)}-layer model")
    from ppf.depth import remove_blocks

    for i, (block, sh) in enumerate(zip(blocks, shapes)):
        if sh["n_heads"] == 0 or sh["intermediate"] == 0:  # removed blocks: zero-width stand-ins
            remove_blocks(block, i, sh["n_heads"] == 0, sh["intermediate"] == 0,  # (+ a mean output: compensation)
                          bool(sh.get("o_bias")), bool(sh.get("down_bias")))
        attn, mlp = block.self_attn, block.mlp
        hd = attn.head_dim
        hidden = attn.q_proj.in_features
        q, kv, inter = sh["n_heads"] * hd, sh["n_kv_heads"] * hd, sh["intermediate"]
        if sh["n_heads"]:
            attn.q_proj = _linear_like(attn.q_proj, hidden, q)
            attn.k_proj = _linear_like(attn.k_proj, hidden, kv)
            attn.v_proj = _linear_like(attn.v_proj, hidden, kv)
            attn.o_proj = _linear_like(attn.o_proj, q, hidden)
            set_attention_bookkeeping(attn, sh["n_heads"], sh["n_kv_heads"])
        if inter:
            mlp.gate_proj = _linear_like(mlp.gate_proj, hidden, inter)
            mlp.up_proj = _linear_like(mlp.up_proj, hidden, inter)
            mlp.down_proj = _linear_like(mlp.down_proj, inter, hidden)
        for key, (part, proj) in BIAS_KEYS.items():  # an output bias added by compensation
            old = getattr(getattr(block, part), proj)
            if sh.get(key) and old.bias is None:
                setattr(getattr(block, part), proj, nn.Linear(old.in_features, old.out_features, bias=True,
                                                              device=old.weight.device, dtype=old.weight.dtype))


# ---- the transformers classes ----------------------------------------------------------------------
_CLASSES: dict[str, tuple[type, type]] = {}  # base model type -> (config class, model class)


def _make_classes(base: str) -> tuple[type, type]:
    import transformers

    name = _CLASS_NAMES[base]
    base_cfg = getattr(transformers, f"{name}Config")
    base_model = getattr(transformers, f"{name}ForCausalLM")

    cfg_cls = type(f"PPF{name}Config", (base_cfg,), {
        "__module__": __name__,
        "__doc__": f"A {name} config for a physically pruned model: the dense sizes plus "
                   "``ppf_layers``, the per-layer {n_heads, n_kv_heads, intermediate}.",
        "__annotations__": {"ppf_layers": "list | None", "ppf_base_model_type": "str | None"},
        "model_type": PREFIX + base,
        "ppf_layers": None,
        "ppf_base_model_type": base,
    })

    def post_init(self):  # runs at the end of <Base>ForCausalLM.__init__, before weight init
        if getattr(self.config, "ppf_layers", None):
            shrink_layers(self, self.config.ppf_layers)
        base_model.post_init(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super(model_cls, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        _own_aligned_memory(model)
        local = Path(str(pretrained_model_name_or_path))
        if (local / LAYERS).is_file():  # a local checkpoint: record its plan like load_pruned does
            setattr(model, PLAN_ATTR, _read_layers(local)[1])
            _restore_buffer_dtypes(model, local)
        return model

    model_cls = type(f"PPF{name}ForCausalLM", (base_model,), {
        "__module__": __name__,
        "__doc__": f"{name}ForCausalLM whose layers take the per-layer shapes in ``config.ppf_layers``.",
        "config_class": cfg_cls,
        "post_init": post_init,
        "from_pretrained": from_pretrained,
    })
    return cfg_cls, model_cls


def classes(base: str) -> tuple[type, type]:
    """(config class, model class) of the ppf wrapper around base model type ``base``."""
    if base not in BASES:
        raise PPFError(f"ppf checkpoints support model types {', '.join(BASES)}, not '{base}'")
    if base not in _CLASSES:
        _CLASSES[base] = _make_classes(base)
    return _CLASSES[base]


def __getattr__(name: str) -> Any:  # PEP 562: ppf.checkpoint.PPFLlamaConfig etc., created lazily
    for base, cname in _CLASS_NAMES.items():
        if name == f"PPF{cname}Config":
            return classes(base)[0]
        if name == f"PPF{cname}ForCausalLM":
            return classes(base)[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_with_transformers() -> None:
    """Register the ppf config and model classes with AutoConfig / AutoModelForCausalLM (idempotent).

    Afterwards ``AutoConfig.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)``
    load a ppf checkpoint. Imports transformers.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    for base in BASES:
        cfg_cls, model_cls = classes(base)
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)


def _ppf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ppf")


class _RegisterOnImport:
    """A meta-path finder that lets transformers import normally, then registers the ppf classes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "transformers":
            return None
        import importlib.util

        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            try:
                register_with_transformers()
            except Exception as exc:  # never break the user's `import transformers`
                warnings.warn(f"ppf could not register its checkpoint classes with transformers: {exc}",
                              RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def register_on_import() -> None:
    """:func:`register_with_transformers` now if transformers is imported, else right after it is.

    For ``ppf/__init__``: registering eagerly means importing transformers and three model
    classes (~3-4 s of CPU), which ``import ppf`` (and ``ppf --help``) should not pay when
    transformers is never used. Either way, ``import ppf; AutoModelForCausalLM.from_pretrained(dir)``
    works for a ppf checkpoint.
    """
    if "transformers" in sys.modules:
        register_with_transformers()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


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

    for view, sh in zip(layers(model), layer_shapes(plan)):
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
    ``ppf.json``. Atomic: everything is written to a temporary sibling that replaces ``out_dir``
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
        write_json_atomic(tmp / META, {
            "format": FORMAT, "base": base, "base_model_type": config.ppf_base_model_type,
            "ppf_version": _ppf_version(), "policy": plan.meta, "extra": dict(extra or {}),
            "block_ratio": plan.block_ratio, "kept_block_params": plan.kept_block_params,
            "dense_block_params": plan.dense_block_params, "tied": tied,
            # non-persistent buffers (RoPE inv_freq) are recomputed on load, in float32; a model
            # cast with .to(bfloat16) had them in bfloat16, and its logits depend on that
            "buffer_dtypes": {name: str(b.dtype).removeprefix("torch.")
                              for name, b in _non_persistent_buffers(model)},
        })
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # mkdtemp / mkstemp make things private; a checkpoint is meant to be readable like any other
        for f in (f for f in tmp.iterdir() if f.is_file()):
            f.chmod(0o644)
        tmp.chmod(0o755)
    return out


# ---- load --------------------------------------------------------------------------------------------
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


def read_plan(path: str | os.PathLike) -> PruningPlan:
    """The plan stored in a ppf checkpoint (kept dense indices per layer), without loading weights."""
    path = Path(path)
    _check_dir(path)
    return _read_layers(path)[1]


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied into a fresh (64-byte aligned) allocation if it is not aligned.

    Tensors handed out by safetensors point into the memory-mapped file at offsets that are
    rarely 64-byte aligned, and CPU matmul kernels round differently on misaligned inputs
    (logits differ by ~1e-7). A fresh copy makes a loaded model compute bit-identically to the
    model that was saved.
    """
    return t.clone() if t.device.type == "cpu" and t.data_ptr() % 64 else t


def _own_aligned_memory(model: nn.Module) -> None:
    """Re-home misaligned parameters and buffers (see :func:`_aligned`); shared weights stay shared."""
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            fresh = _aligned(t.data)
            if fresh is not t.data:
                t.data = fresh


def _non_persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for mod_name, module in model.named_modules():
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            buf = module._buffers.get(name)
            if buf is not None:
                out.append((f"{mod_name}.{name}" if mod_name else name, buf))
    return out


def _restore_buffer_dtypes(model: nn.Module, path: Path) -> None:
    """Cast recomputed non-persistent buffers to the dtypes they had in the saved model."""
    try:
        wanted = json.loads((path / META).read_text(encoding="utf-8")).get("buffer_dtypes") or {}
    except (OSError, ValueError, AttributeError):
        return  # an old or damaged ppf.json: keep transformers' defaults
    for name, buf in _non_persistent_buffers(model):
        dtype = getattr(torch, str(wanted.get(name, "")), None)
        if isinstance(dtype, torch.dtype) and buf.dtype != dtype:
            mod_name, _, attr = name.rpartition(".")
            model.get_submodule(mod_name)._buffers[attr] = buf.to(dtype)


def _restore_rotary(model: nn.Module) -> None:
    """Rebuild modules whose non-persistent buffers (RoPE inv_freq) are still on the meta device."""
    for name, module in list(model.named_modules()):
        if "RotaryEmbedding" in type(module).__name__ and any(b.is_meta for b in module.buffers(recurse=False)):
            fresh = type(module)(config=module.config)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], fresh)


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
