"""Zero-shot multiple-choice tasks, built from real data into lm-eval task files.

Each task becomes ``<name>.jsonl`` (a seeded, stratified subsample: :func:`balanced_order`) and
``<name>.yaml`` (an lm-eval task named ``ppf_<name>``): a ``multiple_choice`` task over records
``{"query", "choices", "gold"}`` (lm-eval scores ``query + " " + choice`` for each choice), or a
``loglikelihood`` task over ``{"context", "target"}`` (the cloze: is the greedy continuation the
target, and its perplexity). The prompt format lives here, in the records; the YAML names fields,
never Jinja templates, so braces in the data are harmless. Each task names the one accuracy it is
read by (``metric``: ``acc`` or ``acc_norm``) and its chance level, in the YAML's metadata.

The records are written in a seeded order that is balanced over the task's strata (an analogy's
14 categories, a label, a gold position): lm-eval's ``limit`` takes the FIRST examples, so every
prefix must be a fair sample, never the file's first block (polarity's file holds 100 negative
reviews, then 100 positive ones).

The YAML's ``data_files`` is relative to the YAML itself, so the task directory is a relocatable
DVC output (``dvc exp run --temp`` runs in a copy elsewhere). lm-eval (through ``datasets``)
resolves relative paths against the cwd, so :func:`lm_eval_include_dir` renders absolute copies
just before an evaluation.

Tasks, with formats chosen so that SmolLM2-135M scores clearly above chance (so pruning damage
is measurable). Two are built from the corpus's TEST split (:mod:`ppf.data.text_tasks`; text that no
stage calibrates, collects, recovers or chooses on):

- ``cloze``: LAMBADA-style, the last word of a passage that needs the passage (``acc``: greedy, and
  the target's perplexity);
- ``continuation``: HellaSwag-style, a paragraph's first sentences and four candidate next sentences
  matched in length (``acc_norm``; chance 0.25).

Two come from the gensim wheel's test data (:mod:`ppf.data.gensim_wheel`):

- ``analogy``: the Google word-analogy set, ``A is to B as C is to`` + `` <choice>``, the answer
  among 4 answers of the same category (the other 3 drawn with a seed per question; chance 0.25);
- ``polarity``: Pang & Lee's movie-review sentences, ``Review: <text>\nSentiment:`` + ``
  negative`` / `` positive`` (chance 0.5).

The three earlier defaults come from the bigbench 1.0.0 sdist (a local copy now: PyPI no longer
serves it); figures are acc / acc_norm on a 200-example subsample (seed 0):

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
from typing import Any

import yaml

from ppf.data import text_tasks
from ppf.errors import PPFError
from ppf.io import write_text_atomic as atomic_write_text

Record = dict  # {"query": str, "choices": list[str], "gold": int} or {"context": str, "target": str}


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


def _analogy(files: dict[str, bytes]) -> list[Record]:
    """``A is to B as C is to`` + `` <choice>``: the answer and 3 other answers of its category, in a
    seeded order (one seed per question, so a subsample does not change the others)."""
    records, category, answers = [], None, {}
    questions = []
    for line in files["questions-words.txt"].decode("utf-8").splitlines():
        if line.startswith(":"):
            category = line[1:].strip()
        elif line.strip():
            words = line.split()
            if len(words) != 4 or category is None:
                raise PPFError(f"analogy line {line!r} is not 'A B C D' under a ': category' line; use the gensim "
                               "4.4.0 wheel's questions-words.txt")
            questions.append((category, words))
            answers.setdefault(category, []).append(words[3])
    for i, (category, (a, b, c, d)) in enumerate(questions):
        rng = random.Random(f"analogy:{i}")
        pool = sorted({w for w in answers[category] if w not in (a, b, c, d)})
        if not pool:  # a category with one answer: nothing to choose from
            continue
        choices = rng.sample(pool, min(3, len(pool))) + [d]
        rng.shuffle(choices)
        records.append({"query": f"{a} is to {b} as {c} is to", "choices": choices, "gold": choices.index(d),
                        "category": category})
    return records


def _polarity(files: dict[str, bytes]) -> list[Record]:
    """``Review: <sentence>\nSentiment:`` + `` negative`` / `` positive``."""
    records = []
    for line in files["pang_lee_polarity.cor"].decode("cp1252", errors="replace").splitlines():  # not UTF-8
        label, _, text = line.strip().partition(" ")
        if not text:
            continue
        if label not in ("__label__neg", "__label__pos"):
            raise PPFError(f"polarity line {line[:60]!r} does not start with __label__neg / __label__pos")
        records.append({"query": f"Review: {text.strip()}\nSentiment:", "choices": ["negative", "positive"],
                        "gold": int(label == "__label__pos")})
    return records


def _test_text(data: dict) -> str:
    text = data[CORPUS_TEST]
    text_tasks.check_text(text, "cloze / continuation")
    return text


def _cloze(data: dict, seed: int) -> list[Record]:
    return text_tasks.cloze_records(_test_text(data))


def _continuation(data: dict, seed: int) -> list[Record]:
    return text_tasks.continuation_records(_test_text(data), seed)


CORPUS_TEST = "corpus:test"  # the key under which the recipe hands the corpus's test split to the builders


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives and how to turn it into records: ``origin`` ``bigbench`` (``sources``
    are task.json paths in the sdist, read as parsed JSON), ``gensim`` (test-data files in the gensim
    wheel, read as bytes) or ``corpus`` (the corpus's test split, as text under :data:`CORPUS_TEST`).
    ``to_records(data, seed)``; ``metric``: the accuracy the task is read by; ``output_type``: lm-eval's."""

    sources: list[str]
    to_records: Callable[[dict, int], list[Record]]
    origin: str = "bigbench"
    metric: str = "acc"
    output_type: str = "multiple_choice"


def _seedless(fn: Callable[[dict], list[Record]]) -> Callable[[dict, int], list[Record]]:
    return lambda data, seed: fn(data)


TASKS: dict[str, TaskSpec] = {
    "cloze": TaskSpec([CORPUS_TEST], _cloze, "corpus", "acc", "loglikelihood"),
    "continuation": TaskSpec([CORPUS_TEST], _continuation, "corpus", "acc_norm"),
    "analogy": TaskSpec(["questions-words.txt"], _seedless(_analogy), "gensim"),
    "polarity": TaskSpec(["pang_lee_polarity.cor"], _seedless(_polarity), "gensim"),
    "goal_step_wikihow": TaskSpec(["goal_step_wikihow/goal_inference",
                                   "goal_step_wikihow/step_inference"], _seedless(_goal_step_wikihow)),
    "social_iqa": TaskSpec(["social_iqa"], _seedless(_social_iqa)),
    "hyperbaton": TaskSpec(["hyperbaton"], _seedless(_hyperbaton)),
}
TASK_SOURCES: dict[str, list[str]] = {name: spec.sources for name, spec in TASKS.items()}


def check_names(names: list[str]) -> None:
    """PPFError for an unknown task name, listing the known ones."""
    for name in names:
        if name not in TASKS:
            raise PPFError(f"unknown task {name!r} in tasks.names; use some of "
                           f"{', '.join(sorted(TASKS))}")


def chance(records: list[Record]) -> float:
    """The accuracy of a random guess: the mean of 1 / choices (0 for a cloze: a word out of a vocabulary)."""
    if not records or "choices" not in records[0]:
        return 0.0
    return sum(1.0 / len(r["choices"]) for r in records) / len(records)


def _task_yaml(name: str, data_file: str, spec: TaskSpec, chance_level: float) -> str:
    """An lm-eval task over one local JSONL file: multiple_choice (acc, acc_norm) or loglikelihood
    (acc = greedy; ``perplexity`` is lm-eval's per-example log-likelihood of the target, averaged
    with ``mean`` so that its standard error is closed-form: lm-eval's ``perplexity`` aggregation
    bootstraps, in worker processes; :func:`ppf.evaluate.zero_shot` reports exp(−mean) from the samples)."""
    config: dict[str, Any] = {
        "task": f"ppf_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": spec.output_type,
    }
    if spec.output_type == "loglikelihood":
        config |= {"doc_to_text": "context", "doc_to_target": "target",
                   "metric_list": [{"metric": "perplexity", "aggregation": "mean", "higher_is_better": True},
                                   {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    else:
        config |= {"doc_to_text": "query", "doc_to_choice": "choices", "doc_to_target": "gold",
                   "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                   for m in ("acc", "acc_norm")]}
    config["metadata"] = {"version": 2.0, "ppf_metric": spec.metric, "ppf_chance": round(chance_level, 6)}
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _stratum(record: Record) -> str:
    """What a fair sample of the task balances: an analogy's category, else the gold answer (a label,
    a position); a cloze has one stratum."""
    return str(record.get("category", record.get("gold", "")))


def balanced_order(records: list[Record], seed: int) -> list[Record]:
    """``records`` in a seeded order in which every prefix is balanced over the strata.

    Each stratum is shuffled with the seed; then the order takes one record of each stratum in turn
    (the strata in a seeded order too), so the first ``k · n_strata`` records hold ``k`` of every
    stratum that has that many. A stratum that runs out drops out of the rotation."""
    rng = random.Random(seed)
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(_stratum(r), []).append(r)
    keys = sorted(groups)
    rng.shuffle(keys)
    for k in keys:
        rng.shuffle(groups[k])
    out: list[Record] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        out += [groups[k][i] for k in keys if i < len(groups[k])]
    return out


def sources(names: list[str], origin: str) -> list[str]:
    """The ``origin`` sources (bigbench task paths, gensim file names) the tasks ``names`` read."""
    return sorted({p for n in names if TASKS[n].origin == origin for p in TASKS[n].sources})


def build_tasks(task_jsons: dict[str, Any], names: list[str], limit: int | None, seed: int,
                out_dir: Path) -> dict[str, int]:
    """Write ``<name>.jsonl`` + ``<name>.yaml`` per task; return the number of examples of each.

    The records are put in :func:`balanced_order` with ``seed`` and the first ``limit`` kept, so the
    subsample is reproducible, balanced in every prefix, and the same seed gives the same examples
    whatever ``names`` holds.
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
            raise PPFError(f"task {name!r} needs {TASKS[name].origin} source {missing[0]!r}, which was not "
                           f"read; read TASK_SOURCES[{name!r}] first")
        records = balanced_order(TASKS[name].to_records(task_jsons, seed), seed)[:limit]
        if not records:
            raise PPFError(f"task {name!r} has no examples in its {TASKS[name].origin} source; check the source "
                           "or take the task out of tasks.names")
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(out_dir / f"{name}.jsonl", lines)
        atomic_write_text(out_dir / f"{name}.yaml", _task_yaml(name, f"{name}.jsonl", TASKS[name], chance(records)))
        counts[name] = len(records)
    return counts


def read_records(tasks_dir: Path, name: str) -> list[Record]:
    """The records of one built task, checked: one PPFError naming the file (and line) when it is
    missing, empty or malformed."""
    path = Path(tasks_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise PPFError(f"task file {str(path)!r} does not exist; build the tasks first "
                       f"(the data stage) or fix tasks.names")
    fix = "rebuild it with `dvc repro prepare` (or delete it and run the prepare stage)"
    records = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PPFError(f"task file {str(path)!r} line {i} is not JSON ({exc.msg}); {fix}") from None
            if not _well_formed(r):
                raise PPFError(f"task file {str(path)!r} line {i} is not a task record (want query, choices and "
                               f"a gold index among them, or context and target); {fix}")
            records.append(r)
    if not records:
        raise PPFError(f"task file {str(path)!r} is empty; {fix}")
    return records


def _well_formed(r: Any) -> bool:
    if not isinstance(r, dict):
        return False
    if "context" in r:
        return isinstance(r["context"], str) and isinstance(r.get("target"), str) and bool(r["target"].strip())
    choices = r.get("choices")
    return (isinstance(r.get("query"), str) and isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) for c in choices) and isinstance(r.get("gold"), int)
            and 0 <= r["gold"] < len(choices))


def task_meta(tasks_dir: Path, name: str) -> dict[str, Any]:
    """A built task's metadata: the accuracy it is read by (``ppf_metric``) and its chance level."""
    path = Path(tasks_dir) / f"{name}.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        meta = config["metadata"]
        return {"metric": str(meta.get("ppf_metric", "acc")), "chance": float(meta.get("ppf_chance", float("nan")))}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        raise PPFError(f"task file {str(path)!r} is missing or not an lm-eval task YAML with metadata; rebuild it "
                       "with `dvc repro prepare`") from None


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
