"""Exporting ppf models for other runtimes: :mod:`ppf.export.gguf` (llama.cpp's GGUF files) and
:mod:`ppf.export.runtime` (running them in llama.cpp). The transformers remote code written beside
every checkpoint belongs to the checkpoint format: :mod:`ppf.checkpoint.remote_code`."""
