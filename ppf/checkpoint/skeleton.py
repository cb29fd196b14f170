"""The model surgery around loading a ppf checkpoint: shrink a dense skeleton to the stored per-layer
shapes before the weights are assigned (:func:`shrink_layers`), and the fixes after (aligned memory,
RoPE buffers rebuilt and cast back to their saved dtypes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ppf.checkpoint.layout import BIAS_KEYS, META
from ppf.errors import PPFError
from ppf.prune import set_attention_bookkeeping


# ---- before the weights: the pruned shapes -----------------------------------------------------------
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

    for i, (block, sh) in enumerate(zip(blocks, shapes, strict=False)):
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


# ---- after the weights: memory and buffers -----------------------------------------------------------
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
