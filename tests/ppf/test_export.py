"""Edge export: remote code (a checkpoint loads without ppf) and GGUF for llama.cpp.

The GGUF round trips run the tiny models in llama.cpp (``llama_cpp``, the ``ppf[gguf]`` extra)
and skip with a reason where it is not installed; writing and refusing GGUF files needs only the
``gguf`` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ppf.checkpoint import load_pruned, save_pruned
from ppf.plan import PruningPlan
from ppf.prune import prune_model
from tiny import make_llama, make_text, random_plan


def _plan(model, seed: int = 0) -> PruningPlan:
    return random_plan(model, seed, None)


def _pruned(n_heads: int = 4, n_kv: int = 2, model_type: str = "llama", seed: int = 0):
    model, tok = make_llama(n_heads, n_kv, model_type=model_type)
    return prune_model(model, _plan(model, seed)), tok


def _ids(tok, n: int = 30) -> list[int]:
    return tok(make_text(n, seed=3))["input_ids"]


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


# ---- A: remote code -------------------------------------------------------------------------------
_WITHOUT_PPF = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoPPF(importlib.abc.MetaPathFinder):  # ppf is installed (editable): make it unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ppf", "flows"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoPPF())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ck, ids = sys.argv[1], json.loads(sys.argv[2])
    try:
        AutoModelForCausalLM.from_pretrained(ck, trust_remote_code=False)  # what ppf's classes gave
        plain = "loaded"
    except Exception as exc:
        plain = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    model = AutoModelForCausalLM.from_pretrained(ck, trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ck, trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    assert not any(m.split(".")[0] == "ppf" for m in sys.modules), "ppf got imported"
    assert not any(type(f).__name__ == "_RegisterOnImport" for f in sys.meta_path)
    print(json.dumps({"plain": plain, "class": type(model).__name__, "module": type(model).__module__,
                      "tokens": tok(sys.argv[3])["input_ids"], "logits": logits.tolist()}))
""")


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_checkpoint_loads_without_ppf_through_remote_code(tmp_path: Path, model_type):
    model, tok = _pruned(4, 2, model_type)
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_ppf.")
    assert (ck / "modeling_ppf.py").is_file() and (ck / "configuration_ppf.py").is_file()
    ids = _ids(tok)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONNOUSERSITE="1",
               OMP_NUM_THREADS="1")
    text = make_text(8, seed=5)
    proc = subprocess.run([sys.executable, "-I", "-c", _WITHOUT_PPF, str(ck), json.dumps(ids), text],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["plain"] != "loaded" and "custom code" in out["plain"], out["plain"]
    assert out["class"] == f"PPF{ {'llama': 'Llama', 'qwen2': 'Qwen2'}[model_type] }ForCausalLM"
    assert "modeling_ppf" in out["module"]
    assert out["tokens"] == tok(text)["input_ids"]
    mine, _ = load_pruned(ck)
    ref = _torch_logits(mine, ids)
    np.testing.assert_allclose(np.asarray(out["logits"]), ref, atol=1e-5, rtol=0)


def test_with_ppf_plain_from_pretrained_still_uses_ppf_classes(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    import ppf.checkpoint as ck_mod

    model, tok = _pruned()
    ck = save_pruned(model, tok, tmp_path / "ck", base="tiny")
    ck_mod.register_with_transformers()
    auto = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
    assert type(auto) is ck_mod.classes("llama")[1]
    ids = _ids(tok)
    assert np.array_equal(_torch_logits(auto, ids), _torch_logits(load_pruned(ck)[0], ids))
    # re-saving a loaded checkpoint keeps the remote code
    again = save_pruned(load_pruned(ck)[0], tok, tmp_path / "again", base="tiny")
    assert json.loads((again / "config.json").read_text())["auto_map"] == json.loads((ck / "config.json").read_text())["auto_map"]
