"""Stage `prepare`: the base model, the text corpus splits, the zero-shot tasks, calibration tokens.

Outputs (DVC outs of the stage):
  data/corpus/{train,valid,test}.txt   text split BY ARTICLE with a fixed seed
  data/tasks/<task>.{jsonl,yaml}       lm-eval tasks (cloze, continuation from the test split), offline
  data/calibration/tokens.safetensors  N x L calibration tokens from the train split
  metrics/prepare.json                 token counts per split, examples per task

Run: ``python -m flows.prepare [--params params.yaml]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.common import CACHE, ROOT, Params, load_params, run_main
from ppf.recipes import prepare as R


@task(cache_policy=CACHE, persist_result=True)
def corpus_splits(corpus: dict, sources: dict, valid_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """The corpus as {train, valid, test} texts (a value, so Prefect can cache it across runs)."""
    return R.corpus_splits(corpus, sources, valid_fraction, test_fraction, seed)


@task
def write_corpus(splits: dict[str, str], out_dir: Path) -> dict[str, int]:
    return R.write_corpus(splits, out_dir)


@task
def build_tasks(sources: dict, names: list[str], limit: int | None, seed: int, out_dir: Path, test_text: str) -> dict[str, int]:
    return R.build_tasks(sources, names, limit, seed, out_dir, test_text)


@task
def fetch_sources(data: dict, corpus_source: str, names: list[str], root: str) -> dict[str, str]:
    return R.sources(data, corpus_source, names, root)


@task
def resolve_model(name: str) -> str:
    return R.resolve_model(name)


@task(cache_policy=CACHE, persist_result=True)
def tokenize(model_dir: str, splits: dict[str, str], calibration: dict, heldout: dict):
    return R.tokenize(model_dir, splits, calibration, heldout)


@flow(name="prepare")
def prepare(params_path: str = "params.yaml", root: str | None = None) -> dict:
    """Run the whole stage in project ``root``; return the metrics written to metrics/prepare.json."""
    root = Path(root or ROOT)
    params: Params = load_params(root / params_path)
    data, corpus = params.data, R.absolute(params.data.corpus.model_dump(mode="json"), root)
    sources = fetch_sources(data.model_dump(mode="json"), corpus["source"], list(params.tasks.names), str(root))
    splits = corpus_splits(corpus, sources, data.valid_fraction, data.test_fraction, data.split_seed)
    chars = write_corpus(splits, root / "data" / "corpus")
    tasks = build_tasks(sources, list(params.tasks.names), params.tasks.limit, params.tasks.seed,
                        root / "data" / "tasks", splits["test"])
    model_dir = resolve_model(params.model.name)
    token_counts, calib, heldout = tokenize(model_dir, splits, params.calibration.model_dump(), params.heldout.model_dump())
    return R.publish(root, params, token_counts, calib, heldout, chars, tasks)


if __name__ == "__main__":
    sys.exit(run_main(prepare, __doc__))
