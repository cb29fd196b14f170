"""Flow tests run against a throwaway Prefect server (prefect_test_harness), once per session."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

import flows  # noqa: F401  (pins PREFECT_HOME etc. before prefect is imported)
from tiny import make_text


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _mc(n: int, k: int, prefix: str) -> dict:
    return {"examples": [{"input": f"{prefix} {make_text(6, seed=i)}? ",
                          "target_scores": {f"{prefix} {make_text(3, seed=100 + i * k + j)}": int(j == i % k)
                                            for j in range(k)}} for i in range(n)]}


def build_sdist(path: Path, n_articles: int = 30) -> Path:
    """A small bigbench-like sdist: English articles in the tiny test vocabulary + MC tasks."""
    articles = []
    for a in range(n_articles):
        sentences = [make_text(12, seed=a * 100 + s) + " ." for s in range(20)]
        labels = " ".join("1" if (s + 1) % 5 == 0 else "0" for s in range(20))
        articles.append({"input": "\n".join(sentences), "target": labels})
    hyper = {"examples": [{"input": f'Which sentence has the correct adjective order: a " new old city {i} " '
                                    f'b " old new city {i} " ?', "target_scores": {"a": 1, "b": 0}} for i in range(8)]}
    tasks = {
        "paragraph_segmentation": {"examples": articles},
        "goal_step_wikihow/goal_inference": _mc(6, 4, "goal"),
        "goal_step_wikihow/step_inference": _mc(6, 4, "step"),
        "goal_step_wikihow/step_ordering": _mc(6, 2, "order"),
        "social_iqa": _mc(8, 3, "social"),
        "hyperbaton": hyper,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, content in tasks.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def build_wheel(path: Path, n_articles: int = 30) -> Path:
    """A small gensim-like wheel with the default data's members: a MediaWiki XML dump of English
    articles in the tiny test vocabulary (with markup, a redirect and a talk page to skip), word
    analogies and polarity sentences."""
    import bz2
    import zipfile
    from xml.sax.saxutils import escape

    pages = ['<page><title>Redirect</title><ns>0</ns><redirect title="A0"/><revision><text>#REDIRECT [[A0]]</text>'
             '</revision></page>', '<page><title>Talk:A0</title><ns>1</ns><revision><text>talk</text></revision></page>']
    for a in range(n_articles):
        paragraphs = [" + make_text(2, seed=a) +  [[link|" + make_text(3, seed=a + 7) + "]] "
                      + " ".join("The " + make_text(11, seed=a * 100 + s) + "." for s in range(p * 5, p * 5 + 5))
                      + "<ref>a reference</ref> {{cite|x}}" for p in range(4)]
        pages.append(f"<page><title>A{a}</title><ns>0</ns><revision><text>{escape((chr(10) * 2).join(paragraphs))}</text>"
                     "</revision></page>")
    dump = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">' + "".join(pages) + "</mediawiki>").encode()
    words = make_text(40, seed=5).split()
    analogies = "".join(f": cat{c}\n" + "".join(f"{' '.join(words[(c * 10 + i + j) % 40] for j in range(4))}\n"
                                                for i in range(6)) for c in range(2))
    polarity = "".join(f"__label__{'pos' if i % 2 else 'neg'} {make_text(8, seed=300 + i)} .\n" for i in range(12))
    from ppf.data.gensim_wheel import ANALOGY, POLARITY, TEST_DATA, WIKI_DUMP

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gensim/__init__.py", "")
        z.writestr(TEST_DATA + WIKI_DUMP, bz2.compress(dump))
        z.writestr(TEST_DATA + ANALOGY, analogies.encode())
        z.writestr(TEST_DATA + POLARITY, polarity.encode("cp1252"))
    return path


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A project directory whose params point at a tiny model and a synthetic gensim wheel (the default
    data: the Wikipedia dump corpus, the analogy and polarity tasks)."""
    import yaml

    root = tmp_path / "project"
    root.mkdir()
    wheel = build_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl")
    params = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"gensim": {"wheel": str(wheel)}, "corpus": {"source": "enwiki", "min_chars": 200},
                 "valid_fraction": 0.2, "test_fraction": 0.2},
        "calibration": {"n_samples": 4, "seqlen": 16},
        "heldout": {"n_samples": 2, "seqlen": 16},
        "tasks": {"limit": 5},
        "eval": {"seqlen": 32, "max_windows": 4, "zero_shot_limit": 4, "matmul_precision": "ieee"},
        # the flow tests' own small world: the paper's grid, no within-ratio set, the paper's predictor
        # (the code defaults are the default profile's, sized for SmolLM2)
        "collect": {"space": {"fraction": 0.0}, "within": {"ratios": []}},
        "predictor": {"input": "o_proj", "signal": "js", "log_target": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory) -> Path:
    """A ppf cache shared by the tests that run the `tiny` profile in subprocesses (its model is
    converted from the embedded GGUF once per session, not into the user's ~/.cache/ppf)."""
    return tmp_path_factory.mktemp("ppf-cache-tiny")
