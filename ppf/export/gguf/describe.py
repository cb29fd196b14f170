"""The exporter's input description: a :class:`GGUFModel` of :class:`LayerWeights`, built from a
transformers Llama-family model (:func:`from_torch`) and checked against what llama.cpp's ``deci``
architecture can hold (:func:`check`).

Why the ``deci`` architecture: llama.cpp's ``llama`` architecture builds every layer from one
head count and one FFN width, but ``deci`` (written for NVIDIA's Nemotron models, which NAS
made non-uniform) reads them per layer from array-valued ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length``, builds each layer at its
own width, and skips the attention of a layer whose head count is 0 (and, for a layer that has
neither, the whole layer). Otherwise it is Llama: RMSNorm, RoPE on pairs of consecutive values
("normal" RoPE), SwiGLU, GQA, optional biases on q/k/v/o and on the MLP projections.

Removed blocks: a :class:`GGUFModel` may have a layer whose attention or MLP is ``None`` (how
such a layer is written: :mod:`ppf.export.gguf.writer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ppf.errors import PPFError

ARCH = "deci"


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
