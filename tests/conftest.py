"""Shared fixtures over :mod:`tiny` (tiny random Llama models and tokenizer).

Test modules import the builders with ``from tiny import make_llama`` (not from conftest: every
test folder may have a conftest of its own, and they would shadow each other).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny import make_llama


@pytest.fixture(params=["mha", "gqa"])
def tiny_llama(request):
    """(model, tokenizer) for MHA (4 heads / 4 KV) and GQA (4 heads / 2 KV)."""
    n_kv = 4 if request.param == "mha" else 2
    return make_llama(4, n_kv)


@pytest.fixture
def tiny_gqa():
    return make_llama(4, 2)


@pytest.fixture
def tiny_mha():
    return make_llama(4, 4)


@pytest.fixture
def tiny_model_dir(tmp_path: Path):
    """A tiny GQA Llama saved as a transformers directory (config, safetensors, tokenizer)."""
    model, tok = make_llama(4, 2)
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Keep every unit test's ppf cache out of the user's ~/.cache/ppf (slow tests use the real one)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("PPF_CACHE_DIR", str(tmp_path_factory.mktemp("ppf-cache")))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: two OpenMP threads on a 2-core box are ~100x slower than one (thread handoffs)."""
    torch.set_num_threads(1)
