"""Exporting ppf models for other runtimes: :mod:`ppf.export.gguf` (llama.cpp) and the
self-contained transformers remote code written beside every checkpoint
(:mod:`ppf.export.remote_code`)."""
