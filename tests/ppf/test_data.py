"""ppf.data: the bigbench sdist reader, the Wikipedia corpus and the lm-eval task files.

A small synthetic sdist stands in for the real 358 MB one: same member paths, a few articles in
four languages, a handful of multiple-choice examples per task.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from tiny import make_text, make_tokenizer
from ppf.io import write_text_atomic as atomic_write_text
from ppf.data.bigbench import fetch_sdist, read_task_jsons
from ppf.data.corpus import (calibration_batch, detect_language, load_hf_corpus, read_text_files,
                             split_articles, tokenize_text, wikipedia_articles)
from ppf.data.tasks import TASK_SOURCES, build_tasks, lm_eval_include_dir, read_records, sources
from ppf.errors import PPFError

EN = ["The cat was on the mat.\nIt is a cat of the house.\nThe house is in the city.\n",
      "The university was founded in 1900.\nIt has two schools.\n"
      "The first school is for the arts.\n",
      "This is the third article.\nIt was written by the editors.\n"]
EN_TARGETS = ["0 1 1", "1 0 1", "0 1"]
DE = "Die Katze ist auf der Matte.\nSie ist nicht mit dem Hund und der Maus.\n"
RU = "Кошка сидит на коврике.\nОна живёт в доме и не выходит.\n"
FR = "Le chat est sur le tapis.\nIl est dans la maison avec les enfants.\n"


def paragraph_task(n_en: int = 3) -> dict:
    """A paragraph_segmentation-like task: blocks per language, English in the middle."""
    examples = [{"input": DE, "target": "0 1"}]
    examples += [{"input": EN[i % 3], "target": EN_TARGETS[i % 3]} for i in range(n_en)]
    examples += [{"input": FR, "target": "1 1"}, {"input": RU, "target": "0 1"}]
    return {"name": "paragraph_segmentation", "examples": examples}


def mc_task(n: int, k: int, prefix: str) -> dict:
    examples = []
    for i in range(n):
        scores = {f"{prefix} choice {i} {j}": int(j == i % k) for j in range(k)}
        examples.append({"input": f"{prefix} question {i}? ", "target_scores": scores})
    return {"examples": examples}


def hyperbaton_task(n: int) -> dict:
    examples = []
    for i in range(n):
        good, bad = f"big old red car {i}", f"red old big car {i}"
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        examples.append({"input": f'Which sentence has the correct adjective order: a " {a} " '
                                  f'b " {b} " ?',
                         "target_scores": {"a": int(i % 2 == 0), "b": int(i % 2 == 1)}})
    return {"examples": examples}


def task_jsons() -> dict[str, dict]:
    return {
        "paragraph_segmentation": paragraph_task(),
        "goal_step_wikihow/goal_inference": mc_task(7, 4, "goal"),
        "goal_step_wikihow/step_inference": mc_task(5, 4, "step"),
        "goal_step_wikihow/step_ordering": mc_task(4, 2, "order"),
        "social_iqa": mc_task(9, 3, "social"),
        "hyperbaton": hyperbaton_task(10),
    }


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    """A bigbench-1.0.0.tar.gz with the real member layout (and some unrelated members)."""
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"bigbench-1.0.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("setup.py", b"# not a task\n")
        add("bigbench/benchmark_tasks/other_task/task.json", b"{}")
        for task, content in task_jsons().items():
            add(f"bigbench/benchmark_tasks/{task}/task.json", json.dumps(content).encode())
    return path


# --- bigbench -------------------------------------------------------------------------------


def test_read_task_jsons_reads_several_tasks_in_one_pass(sdist):
    wanted = ["paragraph_segmentation", "goal_step_wikihow/goal_inference", "social_iqa"]
    got = read_task_jsons(sdist, wanted)
    assert list(got) == wanted
    assert got["social_iqa"] == task_jsons()["social_iqa"]


def test_read_task_jsons_names_a_missing_task(sdist):
    with pytest.raises(PPFError, match="no_such_task"):
        read_task_jsons(sdist, ["social_iqa", "no_such_task"])


def test_read_task_jsons_rejects_a_corrupt_sdist(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(PPFError, match="cannot read"):
        read_task_jsons(bad, ["social_iqa"])


def test_fetch_sdist_prefers_the_user_path_and_rejects_a_missing_one(sdist, tmp_path):
    assert fetch_sdist(sdist=sdist) == sdist
    with pytest.raises(PPFError, match="corpus.sdist"):
        fetch_sdist(sdist=tmp_path / "nope.tar.gz")


def test_fetch_sdist_downloads_once_into_the_cache(monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-d") + 1])
        (out / "bigbench-9.9.tar.gz").write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = fetch_sdist("9.9")
    assert path.read_bytes() == b"sdist" and path.name == "bigbench-9.9.tar.gz"
    assert "bigbench==9.9" in calls[0] and "--no-deps" in calls[0]
    assert fetch_sdist("9.9") == path and len(calls) == 1  # cached: no second download
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dir left behind


def test_fetch_sdist_explains_a_pip_failure(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Distributions from PyPI cannot declare direct URL dependencies\n"))
    with pytest.raises(PPFError, match=r"pip<=26\.2\.1.*corpus\.sdist"):
        fetch_sdist("9.8")


# --- corpus ---------------------------------------------------------------------------------


def test_detect_language_reads_the_content():
    assert detect_language(EN[0]) == "en"
    assert detect_language(DE) == "de"
    assert detect_language(FR) == "fr"
    assert detect_language(RU) == "ru"
    # Russian text full of English names is still Russian.
    assert detect_language("Rock am Ring — один из крупнейших рок-фестивалей в Германии.\n"
                           "The Prodigy, The Hives, Rage Against the Machine\n") == "ru"
    assert detect_language("12 34 | ../..") is None


def test_wikipedia_articles_selects_english_and_rebuilds_paragraphs():
    articles = wikipedia_articles(paragraph_task(n_en=3))
    assert len(articles) == 3
    assert articles[0] == ("The cat was on the mat. It is a cat of the house.\n"
                           "The house is in the city.")
    assert articles[1] == ("The university was founded in 1900.\nIt has two schools. "
                           "The first school is for the arts.")
    assert wikipedia_articles(paragraph_task(), "de") == ["Die Katze ist auf der Matte. Sie ist "
                                                          "nicht mit dem Hund und der Maus."]


def test_wikipedia_articles_keeps_sentences_after_the_last_label():
    task = {"examples": [{"input": EN[0], "target": "1 0 0"}]}
    assert wikipedia_articles(task) == ["The cat was on the mat.\nIt is a cat of the house. "
                                        "The house is in the city."]


def test_wikipedia_articles_rejects_an_unknown_language():
    with pytest.raises(PPFError, match="'xx'"):
        wikipedia_articles(paragraph_task(), "xx")


ARTICLES = [f"article {i}" for i in range(200)]


def test_split_articles_is_deterministic_and_disjoint():
    a = split_articles(ARTICLES, 0.1, 0.05, seed=0)
    assert a == split_articles(ARTICLES, 0.1, 0.05, seed=0)
    assert a != split_articles(ARTICLES, 0.1, 0.05, seed=1)
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (170, 20, 10)
    joined = a["train"] + a["valid"] + a["test"]
    assert sorted(joined) == sorted(ARTICLES) and len(set(joined)) == len(ARTICLES)
    assert a["valid"] == sorted(a["valid"], key=ARTICLES.index)  # file order kept inside splits


@pytest.mark.parametrize("valid, test", [(0, 0.1), (0.1, 1.0), (-0.1, 0.1), (0.6, 0.5)])
def test_split_articles_rejects_bad_fractions(valid, test):
    with pytest.raises(PPFError, match="fraction"):
        split_articles(ARTICLES, valid, test, seed=0)


def test_split_articles_rejects_too_few_articles():
    with pytest.raises(PPFError, match="only 2 articles"):
        split_articles(ARTICLES[:2], 0.1, 0.1, seed=0)


def test_read_text_files(tmp_path):
    splits = split_articles(ARTICLES[:20], 0.1, 0.1, seed=0)
    paths = {}
    for name, articles in splits.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n\n".join(articles) + "\n", encoding="utf-8")
    texts = read_text_files(paths["train"], paths["valid"], paths["test"])
    assert texts["valid"] == "\n\n".join(splits["valid"]) + "\n"
    assert texts["train"].split("\n\n")[0] == splits["train"][0]


def test_read_text_files_names_the_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(PPFError, match="valid file .*missing.txt"):
        read_text_files(tmp_path / "a.txt", tmp_path / "missing.txt", tmp_path / "a.txt")


def test_atomic_write_text_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_load_hf_corpus_maps_splits(monkeypatch):
    import datasets

    fake = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [f"{s} a", f"{s} b"]})
                                 for s in ("train", "validation", "test")})
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None: fake)
    texts = load_hf_corpus("wikitext", "wikitext-2-raw-v1")
    assert texts == {"train": "train a\n\ntrain b", "valid": "validation a\n\nvalidation b",
                     "test": "test a\n\ntest b"}
    with pytest.raises(PPFError, match="no column 'body'"):
        load_hf_corpus("wikitext", text_field="body")


def test_load_hf_corpus_offline_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PPFError, match="cannot load Hugging Face dataset 'wikitext'.*reach") as e:
        load_hf_corpus("wikitext", "wikitext-2-raw-v1")
    assert "\n" not in str(e.value)


def test_tokenize_text_in_chunks_equals_tokenizing_whole():
    tok = make_tokenizer()
    text = "\n\n".join(make_text(300, seed=i).replace("the ", "the\n", 5) for i in range(6))
    whole = tok(text, add_special_tokens=False)["input_ids"]
    chunked = tokenize_text(tok, text, max_chars=200)
    assert chunked.dtype == torch.long and chunked.dim() == 1
    assert chunked.tolist() == whole
    assert tokenize_text(tok, "").numel() == 0


def test_calibration_batch_is_seeded_windows_of_the_stream():
    tokens = torch.arange(1000)
    a = calibration_batch(tokens, n=8, seqlen=32, seed=0)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, calibration_batch(tokens, 8, 32, seed=0))
    assert not torch.equal(a, calibration_batch(tokens, 8, 32, seed=1))
    assert torch.equal(a - a[:, :1], torch.arange(32).expand(8, 32))  # contiguous windows
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(a, calibration_batch(tokens, 8, 32, seed=0))


def test_calibration_batch_rejects_a_short_stream():
    with pytest.raises(PPFError, match="seqlen"):
        calibration_batch(torch.arange(32), n=2, seqlen=32, seed=0)


# --- tasks ----------------------------------------------------------------------------------


def test_task_sources_are_in_the_sdist(sdist):
    paths = sources(list(TASK_SOURCES), "bigbench")
    assert set(read_task_jsons(sdist, paths)) == set(paths)


# --- the gensim wheel (the default data) ------------------------------------------------------

ANALOGIES = b""": capital
Athens Greece Baghdad Iraq
Athens Greece Bangkok Thailand
Athens Greece Beijing China
Athens Greece Berlin Germany
Athens Greece Bern Switzerland
Athens Greece Cairo Egypt
: one-answer
big bigger small smaller
"""


def _wheel(tmp_path, members):
    import zipfile

    from ppf.data.gensim_wheel import TEST_DATA

    path = tmp_path / "gensim-4.4.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(TEST_DATA + name, data)
    return path


def test_the_analogy_task_asks_for_the_fourth_word_among_its_category(tmp_path):
    from ppf.data.gensim_wheel import read_members

    files = read_members(_wheel(tmp_path, {"questions-words.txt": ANALOGIES}), ["questions-words.txt"])
    counts = build_tasks(files, ["analogy"], limit=None, seed=0, out_dir=tmp_path / "t")
    records = read_records(tmp_path / "t", "analogy")
    assert counts == {"analogy": 6} and len(records) == 6  # the one-answer category has no distractor: skipped
    first = next(r for r in records if r["query"] == "Athens is to Greece as Baghdad is to")
    assert first["choices"][first["gold"]] == "Iraq" and first["category"] == "capital"
    assert len(first["choices"]) == 4 and len(set(first["choices"])) == 4
    assert set(first["choices"]) <= {"Iraq", "Thailand", "China", "Germany", "Switzerland", "Egypt"}
    build_tasks(files, ["analogy"], limit=None, seed=0, out_dir=tmp_path / "again")
    assert read_records(tmp_path / "again", "analogy") == records  # seeded per question


def test_the_polarity_task_reads_labelled_cp1252_sentences(tmp_path):
    from ppf.data.gensim_wheel import read_members

    text = "__label__neg dull \u2014 tedious .\n__label__pos a delight .\n\n".encode("cp1252")
    files = read_members(_wheel(tmp_path, {"pang_lee_polarity.cor": text}), ["pang_lee_polarity.cor"])
    build_tasks(files, ["polarity"], limit=None, seed=0, out_dir=tmp_path)
    assert read_records(tmp_path, "polarity") == [
        {"query": "Review: dull \u2014 tedious .\nSentiment:", "choices": ["negative", "positive"], "gold": 0},
        {"query": "Review: a delight .\nSentiment:", "choices": ["negative", "positive"], "gold": 1}]
    bad = read_members(_wheel(tmp_path, {"pang_lee_polarity.cor": b"__label__meh odd .\n"}), ["pang_lee_polarity.cor"])
    with pytest.raises(PPFError, match="__label__neg"):
        build_tasks(bad, ["polarity"], limit=None, seed=0, out_dir=tmp_path / "bad")


def test_a_wheel_without_the_member_or_a_broken_one_is_one_clear_error(tmp_path):
    from ppf.data.gensim_wheel import fetch_wheel, read_members

    with pytest.raises(PPFError, match="questions-words.txt"):
        read_members(_wheel(tmp_path, {"other.txt": b"x"}), ["questions-words.txt"])
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(PPFError, match="cannot read the gensim wheel"):
        read_members(broken, ["questions-words.txt"])
    with pytest.raises(PPFError, match="data.gensim.wheel"):
        fetch_wheel(wheel=tmp_path / "nope.whl")


def test_fetch_wheel_downloads_the_wheel_once(monkeypatch):
    from ppf.data.gensim_wheel import fetch_wheel

    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / "gensim-9.9-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = fetch_wheel("9.9")
    assert path.read_bytes() == b"wheel" and "gensim==9.9" in calls[0] and "--only-binary" in calls[0]
    assert fetch_wheel("9.9") == path and len(calls) == 1
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no such version\n"))
    with pytest.raises(PPFError, match=r"gensim==9\.8 failed \(no such version\).*data\.gensim\.wheel"):
        fetch_wheel("9.8")


def test_wikipedia_dump_articles_keep_prose_and_drop_markup_redirects_and_stubs():
    from ppf.data.corpus import wikipedia_dump_articles

    body = ("'''Albedo''' is the [[reflection|reflectivity]] of a surface.&lt;ref&gt;cite&lt;/ref&gt; {{Infobox|x=1}}\n"
            "thumb|A caption that is markup residue\n[[Category:Physics]]\n\n\n\nIt is measured from 0 to 1. ") * 3
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           f"<page><title>Albedo</title><ns>0</ns><revision><text>{body}</text></revision></page>"
           '<page><title>Old</title><ns>0</ns><redirect title="Albedo"/><revision><text>#REDIRECT [[Albedo]]'
           + "x" * 300 + "</text></revision></page>"
           "<page><title>Talk:Albedo</title><ns>1</ns><revision><text>" + "talk " * 100 + "</text></revision></page>"
           "<page><title>Stub</title><ns>0</ns><revision><text>short</text></revision></page></mediawiki>").encode()
    articles = wikipedia_dump_articles(xml, min_chars=100)
    assert len(articles) == 1
    text = articles[0]
    assert text.startswith("Albedo is the reflectivity of a surface.") and "It is measured from 0 to 1." in text
    assert not any(x in text for x in ("[[", "<ref>", "{{", "thumb|", "Category", "\n\n\n"))
    with pytest.raises(PPFError, match="no article"):
        wikipedia_dump_articles(xml, min_chars=10_000)
    with pytest.raises(PPFError, match="not valid MediaWiki XML"):
        wikipedia_dump_articles(b"<mediawiki><page>")


def test_build_tasks_writes_jsonl_and_relocatable_yaml(tmp_path):
    counts = build_tasks(task_jsons(), ["goal_step_wikihow", "social_iqa", "hyperbaton"],
                         limit=None, seed=0, out_dir=tmp_path)
    assert counts == {"goal_step_wikihow": 12, "social_iqa": 9, "hyperbaton": 10}
    config = yaml.safe_load((tmp_path / "social_iqa.yaml").read_text())
    assert config["task"] == "ppf_social_iqa"
    assert config["dataset_kwargs"]["data_files"] == {"test": "social_iqa.jsonl"}
    assert config["output_type"] == "multiple_choice"
    social = read_records(tmp_path, "social_iqa")
    assert {"query": "Question: social question 0?\nAnswer:",
            "choices": ["social choice 0 0", "social choice 0 1", "social choice 0 2"], "gold": 0} in social
    hyper = read_records(tmp_path, "hyperbaton")
    assert ["big old red car 0", "red old big car 0"] in [r["choices"] for r in hyper]
    assert [r["choices"][r["gold"]].startswith("big") for r in hyper] == [True] * 10
    assert {len(r["choices"]) for r in read_records(tmp_path, "goal_step_wikihow")} == {4}


def test_build_tasks_subsample_is_seeded(tmp_path):
    jsons = task_jsons()
    build_tasks(jsons, ["social_iqa"], limit=4, seed=0, out_dir=tmp_path / "a")
    build_tasks(jsons, ["social_iqa", "hyperbaton"], limit=4, seed=0, out_dir=tmp_path / "b")
    build_tasks(jsons, ["social_iqa"], limit=4, seed=1, out_dir=tmp_path / "c")
    a, b, c = (read_records(tmp_path / d, "social_iqa") for d in "abc")
    assert len(a) == 4 and a == b and a != c
    full = build_tasks(jsons, ["social_iqa"], limit=None, seed=0, out_dir=tmp_path / "full")
    assert all(r in read_records(tmp_path / "full", "social_iqa") for r in a)
    assert full == {"social_iqa": 9}


def test_build_tasks_rejects_bad_input(tmp_path):
    with pytest.raises(PPFError, match="'nope'"):
        build_tasks(task_jsons(), ["nope"], None, 0, tmp_path)
    with pytest.raises(PPFError, match="social_iqa"):
        build_tasks({}, ["social_iqa"], None, 0, tmp_path)
    with pytest.raises(PPFError, match="limit"):
        build_tasks(task_jsons(), ["social_iqa"], 0, 0, tmp_path)
    with pytest.raises(PPFError, match="does not exist"):
        read_records(tmp_path, "social_iqa")


def test_lm_eval_include_dir_uses_absolute_paths_after_a_move(tmp_path):
    build_tasks(task_jsons(), ["social_iqa"], None, 0, tmp_path / "built")
    moved = tmp_path / "moved"
    (tmp_path / "built").rename(moved)  # as `dvc exp run --temp` sees it: another directory
    include = lm_eval_include_dir(moved, tmp_path / "work")
    config = yaml.safe_load((include / "social_iqa.yaml").read_text())
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == (moved / "social_iqa.jsonl").resolve()
    assert config["dataset_kwargs"]["cache_dir"].startswith(str((tmp_path / "work").resolve()))
    with pytest.raises(PPFError, match="no task YAMLs"):
        lm_eval_include_dir(tmp_path / "work" / "empty", tmp_path / "work2")
