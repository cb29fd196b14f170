"""The tensor layout of a ``deci`` GGUF and its writing with the ``gguf`` package (:func:`_write`).

The conversion does what llama.cpp's ``convert_hf_to_gguf.py`` does for a Llama: q and k rows are
permuted per head from transformers' rotate-half order into llama.cpp's interleaved order (per
layer, with that layer's head counts), 1-D tensors stay f32, and the tokenizer and chat template
are stored as ``tokenizer.*`` fields (:mod:`ppf.export.gguf.tokenizer`).

Removed blocks: a :class:`~ppf.export.gguf.describe.GGUFModel` (the exporter's input description)
may have a layer whose attention or MLP is ``None``. A removed attention is written as
``n_head = 0`` (no attention tensors). A removed MLP next to a kept attention cannot be written as
``n_ff = 0``: llama.cpp 0.3.36's ``deci`` graph then skips the rest of the layer, *including the
attention's residual update*, so the exporter writes an all-zero FFN of :data:`ZERO_FFN` channels
instead (``silu(0) * 0 = 0``: exactly no contribution). A layer with neither is written as
``n_head = n_ff = 0`` (an identity layer).

Types: ``f32``, ``f16``, ``bf16`` and the block-32 types ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``,
``q5_1`` are written directly with the ``gguf`` package (as ``convert_hf_to_gguf.py --outtype
q8_0`` does); a tensor whose rows do not split into blocks is kept f16. For the quantized types
the MLP is padded with all-zero channels up to a multiple of 32 so that ``ffn_down`` (whose rows
are ``n_ff`` long) quantizes too. K-quants and i-quants go through llama.cpp
(:mod:`ppf.export.gguf.quantize`) from an f32 file written here.

Everything is written to a temporary file beside the target that replaces it only when complete.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppf.export.gguf.describe import ARCH, GGUFModel
from ppf.export.gguf.tokenizer import TokenizerFields

ZERO_FFN = 32  # channels of the all-zero FFN standing in for a removed MLP next to a kept attention
PAD_TO = 32  # quantized exports pad n_ff to a multiple of this (the legacy quant block size)

FLOAT_TYPES = ("f32", "f16", "bf16")
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # quantized here, with gguf-py


# ---- writing ----------------------------------------------------------------------------------------
def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' rotate-half q/k rows -> llama.cpp's interleaved RoPE order (convert_hf_to_gguf's permute)."""
    if n_head == 0:
        return w
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(theta: float, dim: int, s: dict) -> np.ndarray:
    """``rope_freqs.weight`` for Llama-3 RoPE scaling, as convert_hf_to_gguf computes it."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old = float(s.get("original_max_position_embeddings", 8192))
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])])


def _pad_cols(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[1] == n else torch.cat([t, t.new_zeros(t.shape[0], n - t.shape[1])], dim=1)


def _zero_mlp(hidden: int, ff: int) -> dict[str, torch.Tensor]:
    return {"norm": torch.ones(hidden), "gate": torch.zeros(ff, hidden), "up": torch.zeros(ff, hidden),
            "down": torch.zeros(hidden, ff)}


def _layout(m: GGUFModel, quantized: bool) -> tuple[list[int], list[int], list[int], list[dict | None]]:
    """Per layer (n_head, n_head_kv, n_ff as written, the MLP tensors as written)."""
    heads, kv, ffs, mlps = [], [], [], []
    for i, lw in enumerate(m.layers):
        heads.append(m.n_heads(i))
        kv.append(m.n_kv_heads(i))
        mlp = lw.mlp
        if mlp is None and lw.attn is not None:
            mlp = _zero_mlp(m.hidden, ZERO_FFN)
        if mlp is not None and quantized and mlp["gate"].shape[0] % PAD_TO:
            n = -(-mlp["gate"].shape[0] // PAD_TO) * PAD_TO
            mlp = {k: (_pad_cols(v, n) if k == "down" else _pad_rows(v, n) if k in ("gate", "up", "gate_bias", "up_bias")
                       else v) for k, v in mlp.items()}
        ffs.append(0 if mlp is None else int(mlp["gate"].shape[0]))
        mlps.append(mlp)
    return heads, kv, ffs, mlps


def _encode(arr: np.ndarray, qtype: str, fallback: list[str], name: str) -> tuple[np.ndarray, Any]:
    """(data, raw GGML type or None) of one tensor in the export type; 1-D tensors stay f32."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim == 1 or qtype == "f32":
        return arr, None
    if qtype == "f16":
        return arr.astype(np.float16), None
    if qtype == "bf16":
        return quants.quantize(arr, Q.BF16), Q.BF16
    q = getattr(Q, qtype.upper())
    try:
        return quants.quantize(arr, q), q
    except quants.QuantError:
        fallback.append(name)
        return arr.astype(np.float16), None


def _file_type(qtype: str) -> int:
    from gguf import LlamaFileType as F

    return int({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
                "q4_0": F.MOSTLY_Q4_0, "q4_1": F.MOSTLY_Q4_1, "q5_0": F.MOSTLY_Q5_0, "q5_1": F.MOSTLY_Q5_1}[qtype])


def _write(m: GGUFModel, out: Path, qtype: str, tokenizer: TokenizerFields, pad: bool) -> dict[str, Any]:
    import gguf

    heads, kv, ffs, mlps = _layout(m, pad)
    fallback: list[str] = []
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_name(m.name)
        w.add_block_count(len(m.layers))
        w.add_context_length(m.context_length)
        w.add_embedding_length(m.hidden)
        w.add_feed_forward_length(ffs)
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
        w.add_key_length(m.head_dim)
        w.add_value_length(m.head_dim)
        w.add_rope_dimension_count(m.head_dim)
        w.add_rope_freq_base(m.rope_theta)
        w.add_layer_norm_rms_eps(m.rms_eps)
        w.add_vocab_size(m.vocab)
        w.add_file_type(_file_type(qtype))
        if m.rope_scaling and m.rope_scaling["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(m.rope_scaling["factor"]))
        for key, value, vtype, sub in tokenizer.fields:
            w.add_key_value(key, value, vtype, sub_type=sub)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        def put(name: str, t: torch.Tensor | np.ndarray) -> None:
            data, raw = _encode(t.numpy() if isinstance(t, torch.Tensor) else t, qtype, fallback, name)
            w.add_tensor(name, data, raw_dtype=raw)

        put("token_embd.weight", m.embed)
        put("output_norm.weight", m.norm)
        if m.lm_head is not None:
            put("output.weight", m.lm_head)
        if m.rope_scaling and m.rope_scaling["rope_type"] == "llama3":
            w.add_tensor("rope_freqs.weight", _llama3_rope_factors(m.rope_theta, m.head_dim, m.rope_scaling))
        for i, lw in enumerate(m.layers):
            if lw.attn is not None:
                a = lw.attn
                put(f"blk.{i}.attn_norm.weight", a["norm"])
                put(f"blk.{i}.attn_q.weight", _permute(a["q"].numpy(), heads[i]))
                put(f"blk.{i}.attn_k.weight", _permute(a["k"].numpy(), kv[i]))
                put(f"blk.{i}.attn_v.weight", a["v"])
                put(f"blk.{i}.attn_output.weight", a["o"])
                if "q_bias" in a:
                    put(f"blk.{i}.attn_q.bias", _permute(a["q_bias"].numpy(), heads[i]))
                    put(f"blk.{i}.attn_k.bias", _permute(a["k_bias"].numpy(), kv[i]))
                    put(f"blk.{i}.attn_v.bias", a["v_bias"])
                if "o_bias" in a:
                    put(f"blk.{i}.attn_output.bias", a["o_bias"])
            mlp = mlps[i]
            if mlp is not None:
                put(f"blk.{i}.ffn_norm.weight", mlp["norm"])
                for short, gname in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
                    put(f"blk.{i}.{gname}.weight", mlp[short])
                    if f"{short}_bias" in mlp:
                        put(f"blk.{i}.{gname}.bias", mlp[f"{short}_bias"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.chmod(0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "type": qtype, "bytes": out.stat().st_size, "arch": ARCH,
            "layers": len(m.layers), "heads": heads, "kv_heads": kv, "ffn": ffs,
            "kept_ffn": [m.n_ff(i) for i in range(len(m.layers))],
            "f16_fallback": fallback, "tokenizer": tokenizer.source, "notes": list(m.notes)}
