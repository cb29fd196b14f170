"""Stage `prepare`: the base model, the text corpus splits, the zero-shot tasks, calibration tokens.

Outputs (DVC outs of the stage):
  data/corpus/{train,valid,test}.txt   text split BY ARTICLE with a fixed seed
  data/tasks/<task>.{jsonl,yaml}       lm-eval multiple-choice tasks, runnable offline
  data/calibration/tokens.safetensors  N x L calibration tokens from the train split
  metrics/prepare.json                 token counts per split, examples per task

Run: ``python -m flows.prepare [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, run_main
from ppf import tracking
from ppf.config import Params, load_params
from ppf.io import write_json_atomic, write_tensors_atomic


@task(cache_policy=CACHE, persist_result=True)
def corpus_splits(corpus: dict, sources: dict, valid_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """The corpus as {train, valid, test} texts (a value, so Prefect can cache it across runs)."""
    import bz2

    from ppf.data import corpus as C
    from ppf.data.bigbench import read_task_jsons
    from ppf.data.gensim_wheel import WIKI_DUMP, read_members

    source = corpus["source"]
    if source == "files":
        return C.read_text_files(corpus["train"], corpus["valid"], corpus["test"])
    if source == "hf":
        return C.load_hf_corpus(corpus["path"], corpus["name"], corpus["text_field"])
    if source == "enwiki":
        dump = bz2.decompress(read_members(Path(sources["gensim"]), [WIKI_DUMP])[WIKI_DUMP])
        articles = C.wikipedia_dump_articles(dump, corpus["min_chars"])
    else:
        task = read_task_jsons(Path(sources["bigbench"]), ["paragraph_segmentation"])["paragraph_segmentation"]
        articles = C.wikipedia_articles(task, corpus["language"])
    splits = C.split_articles(articles, valid_fraction, test_fraction, seed)
    return {name: "\n\n".join(arts) for name, arts in splits.items()}


@task
def write_corpus(splits: dict[str, str], out_dir: Path) -> dict[str, int]:
    """Write the splits atomically; return characters per split."""
    from ppf.io import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in splits.items():
        write_text_atomic(out_dir / f"{name}.txt", text)
    return {name: len(text) for name, text in splits.items()}


@task
def build_tasks(sources: dict, names: list[str], limit: int | None, seed: int, out_dir: Path) -> dict[str, int]:
    """lm-eval task files from their sources (the gensim wheel, a bigbench sdist), whatever the corpus."""
    from ppf.data.bigbench import read_task_jsons
    from ppf.data.gensim_wheel import read_members
    from ppf.data.tasks import build_tasks as build, sources as wanted

    data = {}
    if wanted(names, "bigbench"):
        data |= read_task_jsons(Path(sources["bigbench"]), wanted(names, "bigbench"))
    if wanted(names, "gensim"):
        data |= read_members(Path(sources["gensim"]), wanted(names, "gensim"))
    return build(data, names, limit, seed, out_dir)


@task
def fetch_sources(data: dict, corpus_source: str, names: list[str], root: str) -> dict[str, str]:
    """The downloads the corpus and the tasks need, each once into the ppf cache (or a user's copy):
    ``gensim`` (the wheel) and / or ``bigbench`` (the sdist)."""
    from ppf.data.bigbench import fetch_sdist
    from ppf.data.gensim_wheel import fetch_wheel
    from ppf.data.tasks import sources

    out = {}
    local = lambda p: Path(root) / p if p else None  # noqa: E731  (relative to the project)
    if corpus_source == "enwiki" or sources(names, "gensim"):
        out["gensim"] = str(fetch_wheel(data["gensim"]["version"], local(data["gensim"]["wheel"])))
    if corpus_source == "bigbench" or sources(names, "bigbench"):
        out["bigbench"] = str(fetch_sdist(data["bigbench"]["version"], local(data["bigbench"]["sdist"])))
    return out


def _absolute(corpus: dict, root: Path) -> dict:
    """Relative file paths in params are relative to the project root, not the cwd.

    A user's files also get a fingerprint (size, mtime), so an edited file misses the cache.
    """
    if corpus["source"] == "files":
        paths = {k: root / corpus[k] for k in ("train", "valid", "test")}
        stamp = {k: [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None for k, p in paths.items()}
        corpus = {**corpus, **{k: str(p) for k, p in paths.items()}, "fingerprint": stamp}
    return corpus


@task
def resolve_model(name: str) -> str:
    """Convert the embedded model once (cached under ~/.cache/ppf) or check a local directory."""
    from ppf.models import resolve

    return str(resolve(name))


@task(cache_policy=CACHE, persist_result=True)
def tokenize(model_dir: str, splits: dict[str, str], calibration: dict, js: dict):
    """Token counts per split, the calibration batch (train) and the held-out JS batch (valid)."""
    from transformers import AutoTokenizer

    from ppf.data.corpus import calibration_batch, tokenize_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens = {name: tokenize_text(tok, text) for name, text in splits.items()}
    calib = calibration_batch(tokens["train"], calibration["n_samples"], calibration["seqlen"], calibration["seed"])
    heldout = calibration_batch(tokens["valid"], js["n_samples"], js["seqlen"], js["seed"])
    return {name: int(t.numel()) for name, t in tokens.items()}, calib, heldout


@flow(name="prepare")
def prepare(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """Run the whole stage in project ``root``; return the metrics written to metrics/prepare.json."""
    root = Path(root or ROOT)
    params: Params = load_params(root / params_path)
    data, corpus = params.data, _absolute(params.data.corpus.model_dump(mode="json"), root)
    sources = fetch_sources(data.model_dump(mode="json"), corpus["source"], list(params.tasks.names), str(root))
    splits = corpus_splits(corpus, sources, data.valid_fraction, data.test_fraction, data.split_seed)
    chars = write_corpus(splits, root / "data" / "corpus")
    tasks = build_tasks(sources, list(params.tasks.names), params.tasks.limit, params.tasks.seed,
                        root / "data" / "tasks")
    model_dir = resolve_model(params.model.name)
    cal, js = params.calibration, params.js
    token_counts, calib, heldout = tokenize(model_dir, splits, cal.model_dump(), js.model_dump())
    write_tensors_atomic(root / "data" / "calibration" / "tokens.safetensors",
                         {"calibration": calib, "heldout": heldout},
                         {"model": params.model.name, "calibration": cal.model_dump(), "js": js.model_dump()})
    metrics = {"tokens": token_counts, "chars": chars, "task_examples": tasks,
               "calibration_tokens": calib.numel(), "heldout_tokens": heldout.numel()}
    write_json_atomic(root / "metrics" / "prepare.json", metrics)
    with tracking.run(root, params.tracking.experiment, "prepare", params.model_dump(mode="json")):
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(prepare, __doc__))
