"""Tiny random Llama-family models (MHA and GQA) and a tiny tokenizer, for tests.

Everything is built in-process, offline, in well under a second, so unit tests never touch the
real SmolLM2 (that is what ``-m slow`` tests are for).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

WORDS = (
    "the of and to in is was for on as with by he at from his an were are which this be or "
    "has had it not first one their its new after who they have her she two been other when "
    "there all during into school time may years more most only over city some world would "
    "where later up such used many can state about national out known university united then "
    "made american well also however between both several game under being most part team"
).split()

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def make_tokenizer():
    """A whitespace word-level fast tokenizer over ~120 common English words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def make_text(n_words: int, seed: int = 0) -> str:
    """Deterministic pseudo-text from the tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in idx)


def make_llama(n_heads: int, n_kv_heads: int, *, layers: int = 3, seed: int = 0, bias: bool = False,
               model_type: str = "llama"):
    """A tiny random Llama/Mistral/Qwen2 causal LM (hidden 64, head_dim 16, MLP 96)."""
    import transformers

    torch.manual_seed(seed)
    tok = make_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if model_type == "llama":
        cfg = transformers.LlamaConfig(attention_bias=bias, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif model_type == "mistral":
        cfg = transformers.MistralConfig(**common)
        model = transformers.MistralForCausalLM(cfg)
    elif model_type == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:  # pragma: no cover - a typo in a test
        raise ValueError(model_type)
    # Random init gives near-uniform logits; scale the weights a little so the tiny model has
    # real structure (different heads/layers matter differently), as a trained model would.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model.eval(), tok




# ---- project helpers (flow and CLI tests) ------------------------------------------------------
# A whole pipeline on a tiny model in seconds: few samples, tiny networks, short trainings.
TINY_PIPELINE = {
    "collect": {"n_samples": 12, "ratios": [0.2, 0.5, 0.1], "a_etas": [0.0, 0.5, 0.25]},
    "pruning": {"unit_importance": "activation", "tolerance": 0.02},
    "predictor": {"epochs": 3, "width": 4, "hidden": [8, 4], "speed_samples": 1, "test_fraction": 0.25},
    "agent": {"dynamic": [0.2, 0.4], "static": [0.3], "episodes": 4, "window": 2, "learning_starts": 2,
              "batch_size": 4, "gradient_steps": 2, "net_arch": [8],
              "validation": {"n_ratios": 3, "ppl_windows": 1, "grid_step": 0.25},
              "choice": {"windows": [2, 4], "min_windows": 2},
              "refine": {"generations": 1, "offspring": 2, "proposals": 4}},
    "search": {"budget": 20, "top_k": 2},
    "active": {"rounds": 2, "k": 1, "budget": 30},
}


def edit_params(project, **sections) -> None:
    """Merge ``sections`` into the project's params.yaml (one level deep)."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for k, v in sections.items():
        params[k] = {**params.get(k, {}), **v}
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `ppf argv...` in-process; return (exit code, stdout, stderr)."""
    import sys

    from ppf.cli import main

    old, sys.argv = sys.argv, ["ppf", *argv]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env(**extra: str) -> dict:
    """The environment for `dvc` / `ppf` subprocesses of a test project: this venv on PATH, and none of
    the test process's own Prefect/MLflow locations (the project's flows set their own)."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k not in ("PPF_CACHE_DIR", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.update(extra)
    return env


def git_project(dest: Path, wheel: Path, profile: str = "tiny") -> Path:
    """A fresh git + DVC checkout of this repository's tracked sources at ``dest``, with ``profile``
    applied and the default data taken from the gensim-like ``wheel``; its DVC remote is ``dest``/../remote."""
    import shutil
    import subprocess

    import yaml

    from ppf import profile as profiles

    repo = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, text=True, capture_output=True,
                           check=True).stdout.split()
    generated = ("data/", "models/", "metrics/", "results/", "plots/", "mlruns/", "studies/", "tests/", "dvc.lock")
    for f in files:
        if (not f.startswith(generated) or f.endswith(".gitignore")) and (repo / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dest / f)
    profiles.apply(dest / "params.yaml", profile)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["gensim"]["wheel"] = str(wheel)
    params["data"]["corpus"]["min_chars"] = 200  # the synthetic articles are short
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = subprocess_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)
    subprocess.run(["dvc", "remote", "modify", "--local", "local", "url", str(dest.parent / "remote")],
                   cwd=dest, env=env, check=True)
    return dest


def random_plan(model, seed: int = 0, meta: dict | None = None):
    """A non-uniform plan: layer 0 drops a KV group (when there are several), layer 1 keeps one head
    and 5 channels, the other layers are random."""
    import random

    from ppf.plan import DenseShape, LayerPlan, PruningPlan

    s = DenseShape.of(model)
    rng = random.Random(seed)
    layers = []
    for i in range(s.n_layers):
        kv = list(range(1, s.n_kv_heads)) if i == 0 and s.n_kv_heads > 1 else [rng.randrange(s.n_kv_heads)]
        per = 1 if i == 1 else rng.randint(1, s.groups)
        heads = sorted(h for g in kv for h in rng.sample(range(g * s.groups, (g + 1) * s.groups), per))
        channels = sorted(rng.sample(range(s.intermediate), 5 if i == 1 else rng.randint(10, s.intermediate)))
        layers.append(LayerPlan(tuple(heads), tuple(kv), tuple(channels)))
    return PruningPlan(s, tuple(layers), meta=dict(meta or {"method": "test"}))


# a script that loads a checkpoint through transformers' remote code with ppf made unimportable;
# argv: checkpoint, token ids (JSON), a text to tokenize; prints one JSON line (class, tokens, logits)
WITHOUT_PPF = textwrap.dedent("""
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
