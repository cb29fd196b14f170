"""Export a ppf checkpoint (or a dense base model) to a GGUF file that llama.cpp runs.

The modules, each importing only the ones above it:

- :mod:`~ppf.export.gguf.describe`: the exporter's input description (:class:`GGUFModel`,
  :class:`LayerWeights`), built from a transformers Llama-family model (:func:`from_torch`) and
  checked against what llama.cpp's ``deci`` architecture can hold (:func:`check`);
- :mod:`~ppf.export.gguf.tokenizer`: the ``tokenizer.*`` fields (:func:`tokenizer_fields`), copied
  from a GGUF, converted from a transformers BPE tokenizer, or none;
- :mod:`~ppf.export.gguf.writer`: the tensor layout (q/k permutation, MLP padding, the all-zero FFN
  of a removed MLP, RoPE factors) and the writing with the ``gguf`` package (float and block-32 types);
- :mod:`~ppf.export.gguf.quantize`: K-quants and i-quants through llama.cpp's own quantizer
  (:func:`require_llama_cpp`, the ``ppf[gguf]`` extra);
- :mod:`~ppf.export.gguf.export`: the entry points, :func:`write_gguf` (a :class:`GGUFModel` to a
  file of any of :data:`TYPES`) and :func:`export_gguf` (a model reference to a file).
"""

from __future__ import annotations

from ppf.export.gguf.describe import ARCH, GGUFModel, LayerWeights, check, from_torch
from ppf.export.gguf.export import TYPES, export_gguf, load_for_export, write_gguf
from ppf.export.gguf.quantize import INSTALL_HINT, LLAMA_TYPES, require_llama_cpp
from ppf.export.gguf.tokenizer import TokenizerFields, tokenizer_fields
from ppf.export.gguf.writer import BLOCK_TYPES, FLOAT_TYPES, PAD_TO, ZERO_FFN

__all__ = [
    "ARCH", "BLOCK_TYPES", "FLOAT_TYPES", "INSTALL_HINT", "LLAMA_TYPES", "PAD_TO", "TYPES", "ZERO_FFN",
    "GGUFModel", "LayerWeights", "TokenizerFields",
    "check", "export_gguf", "from_torch", "load_for_export", "require_llama_cpp", "tokenizer_fields", "write_gguf",
]
