"""Downstream tasks that can see damage: a balanced order in every prefix, the corpus tasks (cloze,
continuation) deterministic per seed and built as their definitions say, task files checked."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from ppf.data import text_tasks
from ppf.data.tasks import CORPUS_TEST, balanced_order, build_tasks, read_records, task_meta
from ppf.errors import PPFError

# a small "test split": paragraphs of real-looking prose, names per paragraph so distractors exist
TOPICS = ["Albania", "Brazil", "Canada", "Denmark", "Egypt", "Finland", "Greece", "Hungary", "Iceland", "Japan",
          "Kenya", "Latvia", "Mexico", "Norway", "Oman", "Peru", "Qatar", "Romania", "Spain", "Turkey", "Uganda",
          "Vietnam", "Wales", "Yemen", "Zambia", "Austria", "Belgium", "Chile", "Cuba", "Estonia"]


def paragraph(i: int, topic: str) -> str:
    words = ["harbour", "railway", "festival", "mountain", "parliament", "library", "orchestra", "vineyard"]
    w = words[i % len(words)]
    return (f"The {w} of {topic} was first described in {1800 + i}. Travellers wrote that the {w} stood near the "
            f"old market of the capital for many years. In {1850 + i} a fire damaged the northern side of the town. "
            f"Local builders restored the walls with stone brought from the coast. Today visitors still come to "
            f"see the famous {w}. Each spring the people of {topic} hold a fair beside the river and sell bread. "
            f"Musicians play until late in the evening while children dance in the square near the {w}.")


TEXT = "\n\n".join(paragraph(i, t) for i, t in enumerate(TOPICS))


def test_every_prefix_of_a_task_is_balanced_over_its_labels_and_categories(tmp_path):
    # polarity's file: 100 negative reviews, then 100 positive ones; analogy: 14 categories in blocks
    polarity = [{"query": f"Review: r{i}\nSentiment:", "choices": ["negative", "positive"], "gold": int(i >= 100)}
                for i in range(200)]
    ordered = balanced_order(polarity, seed=3)
    assert sorted(map(json.dumps, ordered)) == sorted(map(json.dumps, polarity))  # a permutation
    for n in range(2, 201, 2):
        assert Counter(r["gold"] for r in ordered[:n]) == {0: n // 2, 1: n // 2}, n
    analogy = [{"query": f"q{c}-{i}", "choices": ["a", "b", "c", "d"], "gold": i % 4, "category": f"cat{c}"}
               for c in range(14) for i in range(5 + 3 * c)]
    ordered = balanced_order(analogy, seed=0)
    for k in range(1, 6):
        assert set(Counter(r["category"] for r in ordered[:14 * k]).values()) == {k}
    assert balanced_order(analogy, seed=0) == ordered and balanced_order(analogy, seed=1) != ordered


def test_build_tasks_writes_the_balanced_order_and_limit_keeps_a_balanced_prefix(tmp_path):
    from ppf.data.gensim_wheel import read_members  # noqa: F401  (the real builders read bytes like these)

    lines = [f"__label__neg bad film number {i} ." for i in range(60)] + [f"__label__pos good film {i} ." for i in range(60)]
    files = {"pang_lee_polarity.cor": "\n".join(lines).encode("cp1252")}
    build_tasks(files, ["polarity"], limit=20, seed=0, out_dir=tmp_path)
    records = read_records(tmp_path, "polarity")
    assert len(records) == 20 and Counter(r["gold"] for r in records[:10]) == {0: 5, 1: 5}
    assert task_meta(tmp_path, "polarity") == {"metric": "acc", "chance": 0.5}


def test_the_cloze_needs_the_passage_and_is_deterministic():
    records = text_tasks.cloze_records(TEXT)
    assert len(records) >= 10 and records == text_tasks.cloze_records(TEXT)
    paras = text_tasks.paragraphs(TEXT)
    for r in records:
        word = r["target"].strip()
        assert r["target"] == " " + word and len(word) >= 4 and word.lower() not in text_tasks.STOPWORDS
        last = text_tasks.sentences(r["context"])[-1]
        earlier = r["context"][: len(r["context"]) - len(last)]
        assert re.search(rf"\b{word}\b", earlier, re.I) and not re.search(rf"\b{word}\b", last, re.I)
        assert (r["context"] + r["target"]) in paras[r["paragraph"]]  # the passage is the text as it stands


def test_the_continuation_choices_match_in_length_and_come_from_other_paragraphs():
    a = text_tasks.continuation_records(TEXT, seed=0)
    assert len(a) >= 10 and a == text_tasks.continuation_records(TEXT, seed=0)
    assert a != text_tasks.continuation_records(TEXT, seed=1)
    paras = text_tasks.paragraphs(TEXT)
    golds = Counter(r["gold"] for r in a)
    assert set(golds) == {0, 1, 2, 3} and max(golds.values()) - min(golds.values()) <= 1
    for r in a:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        own = paras[r["paragraph"]]
        true = r["choices"][r["gold"]]
        assert own.startswith(r["query"]) and (r["query"] + " " + true) in own
        for j, c in enumerate(r["choices"]):
            if j != r["gold"]:
                assert c not in own and abs(len(c) - len(true)) <= max(len(true), 40)


def test_the_corpus_tasks_are_built_from_the_test_text_and_an_empty_one_is_refused(tmp_path):
    counts = build_tasks({CORPUS_TEST: TEXT}, ["cloze", "continuation"], limit=8, seed=0, out_dir=tmp_path)
    assert counts == {"cloze": 8, "continuation": 8}
    assert task_meta(tmp_path, "cloze") == {"metric": "acc", "chance": 0.0}
    assert task_meta(tmp_path, "continuation") == {"metric": "acc_norm", "chance": 0.25}
    build_tasks({CORPUS_TEST: TEXT}, ["continuation"], limit=8, seed=0, out_dir=tmp_path / "again")
    assert read_records(tmp_path / "again", "continuation") == read_records(tmp_path, "continuation")
    with pytest.raises(PPFError, match="test split, which is empty"):
        build_tasks({CORPUS_TEST: "  "}, ["cloze"], limit=None, seed=0, out_dir=tmp_path / "empty")
    assert not (tmp_path / "empty" / "cloze.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{not json\n', "line 2 is not JSON"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 5}\n', "line 1 is not a task record"),
    ('{"context": "c"}\n', "line 1 is not a task record"),
])
def test_a_malformed_or_empty_task_file_is_one_clear_error_naming_it(tmp_path, content, message):
    path = tmp_path / "broken.jsonl"
    path.write_text(content)
    with pytest.raises(PPFError, match=message) as err:
        read_records(tmp_path, "broken")
    assert str(path) in str(err.value) and "dvc repro prepare" in str(err.value)
