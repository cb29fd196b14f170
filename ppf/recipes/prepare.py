"""The `prepare` recipe: the base model, the text corpus splits, the zero-shot tasks, calibration tokens.

- :func:`sources` — the downloads the corpus and the tasks need, each once into the ppf cache;
- :func:`corpus_splits` / :func:`write_corpus` — the corpus split BY ARTICLE with a fixed seed;
- :func:`build_tasks` — lm-eval tasks from their sources (the corpus's TEST split for cloze and
  continuation), runnable offline;
- :func:`resolve_model` / :func:`tokenize` — the embedded model converted once, the token batches;
- :func:`publish` — data/calibration/tokens.safetensors, metrics/prepare.json and the MLflow run.
"""

from __future__ import annotations

import bz2
from pathlib import Path
from typing import Any

import torch

from ppf import tracking
from ppf.config import Params
from ppf.data import corpus as C
from ppf.data.bigbench import fetch_sdist, read_task_jsons
from ppf.data.gensim_wheel import WIKI_DUMP, fetch_wheel, read_members
from ppf.data.tasks import CORPUS_TEST, build_tasks as build, sources as wanted
from ppf.io import write_json_atomic, write_tensors_atomic, write_text_atomic


def sources(data: dict[str, Any], corpus_source: str, names: list[str], root: str) -> dict[str, str]:
    """The downloads the corpus and the tasks need, each once into the ppf cache (or a user's copy):
    ``gensim`` (the wheel) and / or ``bigbench`` (the sdist)."""
    out = {}

    def local(p: str | None) -> Path | None:  # relative to the project
        return Path(root) / p if p else None

    if corpus_source == "enwiki" or wanted(names, "gensim"):
        out["gensim"] = str(fetch_wheel(data["gensim"]["version"], local(data["gensim"]["wheel"])))
    if corpus_source == "bigbench" or wanted(names, "bigbench"):
        out["bigbench"] = str(fetch_sdist(data["bigbench"]["version"], local(data["bigbench"]["sdist"])))
    return out


def absolute(corpus: dict[str, Any], root: Path) -> dict[str, Any]:
    """Relative file paths in params are relative to the project root, not the cwd.

    A user's files also get a fingerprint (size, mtime), so an edited file misses the cache.
    """
    if corpus["source"] == "files":
        paths = {k: Path(root) / corpus[k] for k in ("train", "valid", "test")}
        stamp = {k: [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None for k, p in paths.items()}
        corpus = {**corpus, **{k: str(p) for k, p in paths.items()}, "fingerprint": stamp}
    return corpus


def corpus_splits(corpus: dict[str, Any], found: dict[str, str], valid_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, str]:
    """The corpus as {train, valid, test} texts (a value, so Prefect can cache it across runs)."""
    source = corpus["source"]
    if source == "files":
        return C.read_text_files(corpus["train"], corpus["valid"], corpus["test"])
    if source == "hf":
        return C.load_hf_corpus(corpus["path"], corpus["name"], corpus["text_field"])
    if source == "enwiki":
        dump = bz2.decompress(read_members(Path(found["gensim"]), [WIKI_DUMP])[WIKI_DUMP])
        articles = C.wikipedia_dump_articles(dump, corpus["min_chars"])
    else:
        task = read_task_jsons(Path(found["bigbench"]), ["paragraph_segmentation"])["paragraph_segmentation"]
        articles = C.wikipedia_articles(task, corpus["language"])
    splits = C.split_articles(articles, valid_fraction, test_fraction, seed)
    return {name: "\n\n".join(arts) for name, arts in splits.items()}


def write_corpus(splits: dict[str, str], out_dir: Path) -> dict[str, int]:
    """Write the splits atomically; return characters per split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in splits.items():
        write_text_atomic(out_dir / f"{name}.txt", text)
    return {name: len(text) for name, text in splits.items()}


def build_tasks(found: dict[str, str], names: list[str], limit: int | None, seed: int, out_dir: Path,
                test_text: str = "") -> dict[str, int]:
    """lm-eval task files from their sources (the gensim wheel, a bigbench sdist, ``test_text``: the
    corpus's test split, never a text any other stage reads)."""
    data: dict[str, Any] = {CORPUS_TEST: test_text} if wanted(names, "corpus") else {}
    if wanted(names, "bigbench"):
        data |= read_task_jsons(Path(found["bigbench"]), wanted(names, "bigbench"))
    if wanted(names, "gensim"):
        data |= read_members(Path(found["gensim"]), wanted(names, "gensim"))
    return build(data, names, limit, seed, out_dir)


def resolve_model(name: str) -> str:
    """Convert the embedded model once (cached under ~/.cache/ppf) or check a local directory."""
    from ppf.models import resolve

    return str(resolve(name))


def tokenize(model_dir: str, splits: dict[str, str], calibration: dict[str, Any], heldout: dict[str, Any]
             ) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """Token counts per split, the calibration batch (train) and the held-out batch (valid) the signals
    are measured on."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens = {name: C.tokenize_text(tok, text) for name, text in splits.items()}
    calib = C.calibration_batch(tokens["train"], calibration["n_samples"], calibration["seqlen"], calibration["seed"])
    held = C.calibration_batch(tokens["valid"], heldout["n_samples"], heldout["seqlen"], heldout["seed"])
    return {name: int(t.numel()) for name, t in tokens.items()}, calib, held


def publish(root: Path, params: Params, token_counts: dict[str, int], calib: torch.Tensor, heldout: torch.Tensor,
            chars: dict[str, int], tasks: dict[str, int]) -> dict[str, Any]:
    """data/calibration/tokens.safetensors, metrics/prepare.json and the MLflow run; the metrics."""
    root = Path(root)
    cal, held = params.calibration, params.heldout
    write_tensors_atomic(root / "data" / "calibration" / "tokens.safetensors", {"calibration": calib, "heldout": heldout},
                         {"model": params.model.name, "calibration": cal.model_dump(), "heldout": held.model_dump()})
    metrics = {"tokens": token_counts, "chars": chars, "task_examples": tasks,
               "calibration_tokens": calib.numel(), "heldout_tokens": heldout.numel()}
    write_json_atomic(root / "metrics" / "prepare.json", metrics)
    with tracking.run(root, params.tracking.experiment, "prepare", params.model_dump(mode="json")):
        tracking.log_metrics(metrics)
    return metrics
