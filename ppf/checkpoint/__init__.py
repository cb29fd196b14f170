"""Pruned checkpoints: save a physically pruned model, load it back with its exact architecture.

transformers cannot ``from_pretrained`` a model whose layers have different shapes (its classes
build every layer from the one ``num_attention_heads`` / ``intermediate_size``), so a ppf
checkpoint carries the per-layer shapes and ppf supplies the classes that honour them.

The modules, each importing only those above it:

:mod:`~ppf.checkpoint.remote_code`
    The self-contained ``configuration_ppf.py`` / ``modeling_ppf.py`` written into every
    checkpoint (``trust_remote_code=True`` loads it without ppf); imports nothing of ppf.
:mod:`~ppf.checkpoint.layout`
    The on-disk format: file names, per-layer shapes, reading ``ppf_layers.json`` and ``config.json``.
:mod:`~ppf.checkpoint.skeleton`
    The surgery: shrinking a dense model to the stored shapes before the weights are assigned, and
    the fixes after (aligned memory, RoPE buffers).
:mod:`~ppf.checkpoint.hf_classes`
    The transformers classes of pruned architectures (created lazily), their registration with the
    Auto classes, and the import hook behind :func:`register_on_import`.
:mod:`~ppf.checkpoint.store`
    :func:`save_pruned`, :func:`load_pruned`, :func:`read_plan`, :func:`is_checkpoint`, :func:`load_model`.

Everything is importable from here; the ppf classes are reachable as attributes, e.g.
``ppf.checkpoint.PPFLlamaForCausalLM`` (created on first use).
"""

from __future__ import annotations

from typing import Any

from ppf.checkpoint.layout import (BASES, BIAS_KEYS, CONFIG, FORMAT, LAYERS, META, PREFIX, SHAPE_KEYS, WEIGHTS,
                                   _CLASS_NAMES, layer_shapes, model_shapes)
from ppf.checkpoint.skeleton import shrink_layers
from ppf.checkpoint.hf_classes import classes, register_on_import, register_with_transformers
from ppf.checkpoint.store import is_checkpoint, load_model, load_pruned, read_plan, save_pruned

__all__ = [
    "BASES", "BIAS_KEYS", "CONFIG", "FORMAT", "LAYERS", "META", "PREFIX", "SHAPE_KEYS", "WEIGHTS",
    "layer_shapes", "model_shapes", "shrink_layers",
    "classes", "register_on_import", "register_with_transformers",
    "is_checkpoint", "load_model", "load_pruned", "read_plan", "save_pruned",
]


def __getattr__(name: str) -> Any:  # PEP 562: ppf.checkpoint.PPFLlamaConfig etc., created lazily
    for base, cname in _CLASS_NAMES.items():
        if name == f"PPF{cname}Config":
            return classes(base)[0]
        if name == f"PPF{cname}ForCausalLM":
            return classes(base)[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
