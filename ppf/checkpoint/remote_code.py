"""Self-contained transformers "remote code" written beside every ppf checkpoint.

A ppf checkpoint's ``config.json`` has ``model_type: ppf_<base>``, which transformers does not know.
``import ppf`` registers ppf's classes (:func:`ppf.checkpoint.register_with_transformers`); for
everyone else — a machine without ppf, ``lm_eval --model hf --model_args
pretrained=DIR,trust_remote_code=True``, a serving stack — the checkpoint carries its own classes,
in the transformers convention: ``configuration_ppf.py`` and ``modeling_ppf.py`` beside the
weights and an ``auto_map`` in ``config.json``, so that

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

builds the exact per-layer architecture. The two files depend on torch and transformers only.
With ``import ppf`` and no ``trust_remote_code``, transformers keeps using ppf's registered
classes (a registered model type wins over remote code), so nothing changes for ppf users.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "configuration_ppf.py"
MODELING_FILE = "modeling_ppf.py"
_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}

_CONFIGURATION = '''\
"""The config of a ppf pruned {Name} checkpoint (written by ppf; needs torch + transformers only).

The dense {Name} config plus ``ppf_layers``: per decoder layer ``{{n_heads, n_kv_heads,
intermediate}}`` (and optional ``o_bias`` / ``down_bias`` flags), the shapes the pruned layers
really have.
"""

from transformers import {Name}Config


class PPF{Name}Config({Name}Config):
    model_type = "ppf_{base}"
    ppf_layers: "list | None" = None
    ppf_base_model_type: "str | None" = "{base}"
'''

_MODELING = '''\
"""A ppf pruned {Name} checkpoint as a transformers model (written by ppf; needs torch + transformers only).

Load it with ``AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)``. Every
decoder layer is built with the heads, KV heads and MLP channels listed in ``config.ppf_layers``
(a physically pruned model has different widths per layer, which the stock {Name} classes cannot
build); the weights are then loaded as usual.
"""

import torch
from torch import nn
from transformers import {Name}ForCausalLM

from .configuration_ppf import PPF{Name}Config


def _linear(old, in_features, out_features, bias):
    if (old.in_features, old.out_features, old.bias is not None) == (in_features, out_features, bias):
        return old
    return nn.Linear(in_features, out_features, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


class _Removed(nn.Module):
    """A removed block (0 heads / 0 channels): zero-width projections; it adds its output bias, or 0."""

    def _out(self, hidden_states, bias):
        if bias is None:
            return torch.zeros_like(hidden_states)
        return bias.to(hidden_states.dtype).expand_as(hidden_states).clone()


class NoAttention(_Removed):
    def __init__(self, layer_idx, head_dim, hidden, bias, like):
        super().__init__()
        self.layer_idx, self.head_dim, self.num_key_value_groups = layer_idx, head_dim, 0
        kw = {{"device": like.device, "dtype": like.dtype}}
        self.q_proj = nn.Linear(hidden, 0, bias=False, **kw)
        self.k_proj = nn.Linear(hidden, 0, bias=False, **kw)
        self.v_proj = nn.Linear(hidden, 0, bias=False, **kw)
        self.o_proj = nn.Linear(0, hidden, bias=bias, **kw)

    def forward(self, hidden_states, past_key_values=None, **kwargs):
        if past_key_values is not None:  # an empty cache entry keeps generation's bookkeeping right
            b, t, _ = hidden_states.shape
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        return self._out(hidden_states, self.o_proj.bias), None


class NoMLP(_Removed):
    def __init__(self, hidden, bias, like):
        super().__init__()
        kw = {{"device": like.device, "dtype": like.dtype}}
        self.gate_proj = nn.Linear(hidden, 0, bias=False, **kw)
        self.up_proj = nn.Linear(hidden, 0, bias=False, **kw)
        self.down_proj = nn.Linear(0, hidden, bias=bias, **kw)

    def forward(self, hidden_states):
        return self._out(hidden_states, self.down_proj.bias)


def shrink_layers(model, shapes):
    """Resize every decoder layer's linears to ``shapes`` (weights are loaded afterwards)."""
    blocks = model.model.layers
    if len(shapes) != len(blocks):
        raise ValueError(f"config.ppf_layers lists {{len(shapes)}} layers for a {{len(blocks)}}-layer model")
    for i, (block, sh) in enumerate(zip(blocks, shapes)):
        like = block.self_attn.o_proj.weight
        hidden = block.self_attn.o_proj.out_features
        if sh["n_heads"] == 0:  # a removed attention block, and the norm in front of it
            block.self_attn = NoAttention(i, block.self_attn.head_dim, hidden, bool(sh.get("o_bias")), like)
            block.input_layernorm = nn.Identity()
        if sh["intermediate"] == 0:  # a removed MLP block, and its norm
            block.mlp = NoMLP(hidden, bool(sh.get("down_bias")), like)
            block.post_attention_layernorm = nn.Identity()
        if sh["n_heads"] == 0 and sh["intermediate"] == 0:
            continue
        attn, mlp = block.self_attn, block.mlp
        hd = attn.head_dim
        hidden = attn.q_proj.in_features
        q, kv, inter = sh["n_heads"] * hd, sh["n_kv_heads"] * hd, sh["intermediate"]
        qkv_bias = attn.q_proj.bias is not None
        o_bias = bool(sh.get("o_bias", attn.o_proj.bias is not None))
        down_bias = bool(sh.get("down_bias", mlp.down_proj.bias is not None))
        mlp_bias = mlp.gate_proj.bias is not None
        if sh["n_heads"]:
            attn.q_proj = _linear(attn.q_proj, hidden, q, qkv_bias)
            attn.k_proj = _linear(attn.k_proj, hidden, kv, qkv_bias)
            attn.v_proj = _linear(attn.v_proj, hidden, kv, qkv_bias)
            attn.o_proj = _linear(attn.o_proj, q, hidden, o_bias)
            attn.num_key_value_groups = sh["n_heads"] // sh["n_kv_heads"]
            for name, value in (("num_heads", sh["n_heads"]), ("num_attention_heads", sh["n_heads"]),
                                ("num_key_value_heads", sh["n_kv_heads"])):
                if hasattr(attn, name):
                    setattr(attn, name, value)
        if inter:
            mlp.gate_proj = _linear(mlp.gate_proj, hidden, inter, mlp_bias)
            mlp.up_proj = _linear(mlp.up_proj, hidden, inter, mlp_bias)
            mlp.down_proj = _linear(mlp.down_proj, inter, hidden, down_bias)


class PPF{Name}ForCausalLM({Name}ForCausalLM):
    """{Name}ForCausalLM whose layers take the per-layer shapes in ``config.ppf_layers``."""

    config_class = PPF{Name}Config

    def post_init(self):  # runs at the end of {Name}ForCausalLM.__init__, before the weights load
        if getattr(self.config, "ppf_layers", None):
            shrink_layers(self, self.config.ppf_layers)
        super().post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # safetensors hands out tensors at unaligned offsets of the mapped file; CPU matmuls round
        # differently on them, so own aligned copies (logits then match the model that was saved)
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                if t.device.type == "cpu" and t.data.data_ptr() % 64:
                    t.data = t.data.clone()
        return model
'''


def files(base: str) -> dict[str, str]:
    """{file name: source} of the remote code for a checkpoint of base model type ``base``."""
    name = _NAMES[base]
    return {CONFIG_FILE: _CONFIGURATION.format(Name=name, base=base),
            MODELING_FILE: _MODELING.format(Name=name, base=base)}


def auto_map(base: str) -> dict[str, str]:
    """The ``auto_map`` entry of config.json pointing transformers' Auto classes at the files."""
    name = _NAMES[base]
    return {"AutoConfig": f"{CONFIG_FILE[:-3]}.PPF{name}Config",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.PPF{name}ForCausalLM"}


def write(directory: str | Path, base: str) -> None:
    """Write the remote-code files for ``base`` into ``directory`` (a checkpoint being saved)."""
    for fname, source in files(base).items():
        (Path(directory) / fname).write_text(source, encoding="utf-8")
