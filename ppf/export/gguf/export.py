"""The entry points: :func:`write_gguf` (a :class:`~ppf.export.gguf.describe.GGUFModel` to a GGUF
file of any of :data:`TYPES`) and :func:`export_gguf` (a ppf checkpoint, an embedded base model name
or a transformers directory to a GGUF file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ppf.errors import PPFError
from ppf.export.gguf.describe import GGUFModel, check, from_torch
from ppf.export.gguf.quantize import LLAMA_TYPES, _write_llama_quantized, require_llama_cpp
from ppf.export.gguf.tokenizer import TokenizerFields, _none_fields, tokenizer_fields
from ppf.export.gguf.writer import BLOCK_TYPES, FLOAT_TYPES, _write

TYPES = (*FLOAT_TYPES, *BLOCK_TYPES, *LLAMA_TYPES)


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

    ``edit`` may change the :class:`~ppf.export.gguf.describe.GGUFModel` before it is written (e.g. remove a block).
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
