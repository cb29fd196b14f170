"""K-quants and i-quants (``q4_k_m``, ``q6_k``, ...): llama.cpp's own quantizer
(``llama_cpp.llama_model_quantize``, the ``ppf[gguf]`` extra) run on an f32 intermediate written by
:mod:`ppf.export.gguf.writer`; the result replaces the target only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ppf.errors import PPFError
from ppf.export.gguf.describe import GGUFModel
from ppf.export.gguf.tokenizer import TokenizerFields
from ppf.export.gguf.writer import _write

LLAMA_TYPES = {  # quantized by llama.cpp (llama_model_quantize); value: LLAMA_FTYPE_MOSTLY_*
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
}

INSTALL_HINT = "pip install 'ppf[gguf]'"


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
