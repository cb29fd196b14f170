"""Zero-shot multiple-choice tasks, built from BIG-bench JSON into lm-eval task files.

Each task becomes ``<name>.jsonl`` (records ``{"query", "choices", "gold"}``, a seeded subsample)
and ``<name>.yaml`` (an lm-eval ``multiple_choice`` task named ``ppf_<name>``). The prompt format
lives here, in the records, so lm-eval's job is only to score ``query + " " + choice`` for each
choice; the YAML names fields, never Jinja templates, so braces in the data are harmless.

The YAML's ``data_files`` is relative to the YAML itself, so the task directory is a relocatable
DVC output (``dvc exp run --temp`` runs in a copy elsewhere). lm-eval (through ``datasets``)
resolves relative paths against the cwd, so :func:`lm_eval_include_dir` renders absolute copies
just before an evaluation.

Tasks, with formats chosen so that SmolLM2-135M scores clearly above chance (so pruning damage
is measurable); figures are acc / acc_norm on a 200-example subsample (seed 0):

- ``goal_step_wikihow``: the ``goal_inference`` and ``step_inference`` subtasks (4-way, chance
  0.25): 0.485 / 0.380. The third subtask, ``step_ordering`` (2-way "which step first?"), is
  left out: the model is at chance on it (0.565 / 0.540 vs 0.5), so it would only add noise.
- ``social_iqa`` as ``Question: ... Answer: <choice>`` (3-way, chance 0.333): 0.385 / 0.435.
- ``hyperbaton`` (chance 0.5): the choices are the two adjective orders themselves, scored as
  ``Here is the <phrase>``: 0.865. Answering with the letters "a"/"b" is at chance (0.48), and
  scoring the bare phrases without a context gets only 0.65.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ppf.io import write_text_atomic as atomic_write_text
from ppf.errors import PPFError

Record = dict  # {"query": str, "choices": list[str], "gold": int}


def _mc_records(examples: list[dict], query: Callable[[str], str]) -> list[Record]:
    """BIG-bench ``target_scores`` examples as records, choices in the file's order."""
    records = []
    for ex in examples:
        choices = list(ex["target_scores"])
        gold = max(range(len(choices)), key=lambda i: ex["target_scores"][choices[i]])
        records.append({"query": query(ex["input"]), "choices": choices, "gold": gold})
    return records


def _goal_step_wikihow(jsons: dict[str, dict]) -> list[Record]:
    """``The most reasonable goal/step of 'X' is`` + `` <choice>``."""
    records = []
    for sub in ("goal_inference", "step_inference"):
        records += _mc_records(jsons[f"goal_step_wikihow/{sub}"]["examples"], str.strip)
    return records


def _social_iqa(jsons: dict[str, dict]) -> list[Record]:
    """``Question: <context + question>\\nAnswer:`` + `` <choice>``."""
    return _mc_records(jsons["social_iqa"]["examples"],
                       lambda text: f"Question: {text.strip()}\nAnswer:")


HYPERBATON = re.compile(r'a " (?P<a>.+?) " b " (?P<b>.+?) " \?\s*$')


def _hyperbaton(jsons: dict[str, dict]) -> list[Record]:
    """The two quoted phrases as the choices, each read as ``Here is the <phrase>``.

    Both phrases hold the same words, so acc and acc_norm agree; the short noun-phrase context
    is what lets the model judge the first adjective (no context: 0.65 instead of 0.865).
    """
    records = []
    for ex in jsons["hyperbaton"]["examples"]:
        m = HYPERBATON.search(ex["input"])
        if m is None:
            raise PPFError(f"hyperbaton example {ex['input'][:60]!r} is not in the expected "
                           f"'a \" ... \" b \" ... \" ?' format; use the bigbench 1.0.0 sdist")
        gold = 0 if ex["target_scores"]["a"] >= ex["target_scores"]["b"] else 1
        records.append({"query": "Here is the", "choices": [m["a"], m["b"]], "gold": gold})
    return records


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives in bigbench and how to turn it into records."""

    sources: list[str]
    to_records: Callable[[dict[str, dict]], list[Record]]


TASKS: dict[str, TaskSpec] = {
    "goal_step_wikihow": TaskSpec(["goal_step_wikihow/goal_inference",
                                   "goal_step_wikihow/step_inference"], _goal_step_wikihow),
    "social_iqa": TaskSpec(["social_iqa"], _social_iqa),
    "hyperbaton": TaskSpec(["hyperbaton"], _hyperbaton),
}
TASK_SOURCES: dict[str, list[str]] = {name: spec.sources for name, spec in TASKS.items()}


def check_names(names: list[str]) -> None:
    """PPFError for an unknown task name, listing the known ones."""
    for name in names:
        if name not in TASKS:
            raise PPFError(f"unknown task {name!r} in tasks.names; use some of "
                           f"{', '.join(sorted(TASKS))}")


def _task_yaml(name: str, data_file: str) -> str:
    """An lm-eval multiple_choice task over one local JSONL file."""
    config = {
        "task": f"ppf_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def build_tasks(task_jsons: dict[str, dict], names: list[str], limit: int | None, seed: int,
                out_dir: Path) -> dict[str, int]:
    """Write ``<name>.jsonl`` + ``<name>.yaml`` per task; return the number of examples of each.

    ``limit`` examples are drawn with ``random.Random(seed)`` and kept in file order, so the
    subsample is reproducible and the same seed gives the same examples whatever ``names`` holds.
    """
    check_names(names)
    if limit is not None and limit < 1:
        raise PPFError(f"tasks.limit = {limit!r} must be a positive number of examples (or null "
                       f"for all)")
    out_dir = Path(out_dir)
    counts = {}
    for name in names:
        missing = [s for s in TASKS[name].sources if s not in task_jsons]
        if missing:
            raise PPFError(f"task {name!r} needs bigbench task {missing[0]!r}, which was not "
                           f"read; read TASK_SOURCES[{name!r}] from the sdist")
        records = TASKS[name].to_records(task_jsons)
        if limit is not None and limit < len(records):
            keep = sorted(random.Random(seed).sample(range(len(records)), limit))
            records = [records[i] for i in keep]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(out_dir / f"{name}.jsonl", lines)
        atomic_write_text(out_dir / f"{name}.yaml", _task_yaml(name, f"{name}.jsonl"))
        counts[name] = len(records)
    return counts


def read_records(tasks_dir: Path, name: str) -> list[Record]:
    """The records of one built task (PPFError if it was not built)."""
    path = Path(tasks_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise PPFError(f"task file {str(path)!r} does not exist; build the tasks first "
                       f"(the data stage) or fix tasks.names")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def lm_eval_include_dir(tasks_dir: Path, work_dir: Path) -> Path:
    """Render the task YAMLs of ``tasks_dir`` into ``work_dir`` with absolute JSONL paths.

    lm-eval hands ``data_files`` to ``datasets``, which resolves relative paths against the cwd,
    not the YAML. The rendered copies also send the ``datasets`` cache into ``work_dir``, so an
    evaluation leaves nothing behind in the user's Hugging Face cache.
    """
    tasks_dir, work_dir = Path(tasks_dir).resolve(), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    found = False
    for src in sorted(tasks_dir.glob("*.yaml")):
        config = yaml.safe_load(src.read_text(encoding="utf-8"))
        kwargs = config.setdefault("dataset_kwargs", {})
        kwargs["data_files"] = {split: str((tasks_dir / rel).resolve())
                                for split, rel in kwargs.get("data_files", {}).items()}
        kwargs["cache_dir"] = str((work_dir / "datasets-cache").resolve())
        atomic_write_text(work_dir / src.name,
                          yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        found = True
    if not found:
        raise PPFError(f"no task YAMLs in {str(tasks_dir)!r}; build the tasks first (the data "
                       f"stage) or fix the tasks directory")
    return work_dir
