"""params.yaml validation: defaults, unknown keys, bad values, the corpus union."""

from pathlib import Path

import pytest
import yaml

from ppf.config import Params, load_params, parse_params
from ppf.errors import PPFError

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.model.name == "smollm2-135m"
    assert p.data.corpus.source == "enwiki" and p.tasks.names == ["cloze", "continuation", "analogy", "polarity"]
    assert p.eval.seqlen == 512


def test_defaults_fill_an_empty_file():
    assert parse_params({}) == Params()


def test_the_code_defaults_are_the_default_profile(tmp_path):
    """One source of defaults: a params file that leaves a key out gets what the default profile (the
    committed params.yaml) says, so a notebook's ``Params()`` is the configuration the README measures."""
    from ppf import profile

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    profile.apply(path, "default")
    assert load_params(path) == Params()  # the whole file, key for key
    defaults = Params().model_dump(mode="json")
    for dotted, value in profile.read("default").items():
        node = defaults
        for key in dotted.split("."):
            node = node[key]
        assert node == _json(value), f"ppf/config.py's default for {dotted} is {node!r}, the default profile says {value!r}"


def _json(value):
    import json

    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"calibraton": {}}, "unknown key 'calibraton'"),
        ({"calibration": {"n_samples": 0}}, "'calibration.n_samples' = 0"),
        ({"calibration": {"seqlen": "long"}}, "'calibration.seqlen' = 'long'"),
        ({"data": {"valid_fraction": 0.7}}, "'data.valid_fraction' = 0.7"),
        ({"data": {"corpus": {"source": "bigbench", "langauge": "en"}}}, "unknown key 'data.corpus.langauge'"),
        ({"data": {"corpus": {"source": "s3"}}}, "data.corpus"),
        ({"data": {"corpus": {"source": "files", "train": "a.txt"}}}, "missing key 'data.corpus.valid'"),
        ({"tasks": {"names": ["arc_easy"]}}, "unknown task 'arc_easy'"),
        ({"model": {"dtype": "int3"}}, "'model.dtype' = 'int3'"),
        ({"agent": {"choice": {"windows": [32, 16]}}}, "windows [32, 16] must be positive and growing"),
        ({"agent": {"choice": {"windows": [8]}}}, "must start above agent.validation.ppl_windows (8)"),
        ({"agent": {"choice": {"level": 1.5}}}, "'agent.choice.level' = 1.5"),
        ({"agent": {"choice": {"windows": [32], "survivors": [3]}}}, "'agent.choice.survivors' is retired: the final choice"),
        # renamed keys: one clear error naming the new one, never silently ignored
        ({"js": {"n_samples": 8}}, "'js' is retired: the section of held-out tokens is named heldout"),
        ({"collect": {"space": {"split": [0.0, 0.5]}}}, "rename collect.space.split to collect.space.attn"),
        ({"predictor": {"split": "sample"}}, "rename predictor.split to predictor.holdout"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(PPFError) as exc:
        parse_params(raw)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_several_problems_are_reported_together():
    with pytest.raises(PPFError) as exc:
        parse_params({"seed": "x", "eval": {"seqlen": 1}})
    msg = str(exc.value)
    assert "'seed'" in msg and "'eval.seqlen' = 1" in msg


def test_corpus_union_selects_by_source():
    p = parse_params({"data": {"corpus": {"source": "hf", "path": "wikitext", "name": "wikitext-2-raw-v1"}}})
    assert p.data.corpus.path == "wikitext" and p.data.corpus.text_field == "text"


def test_load_params_errors(tmp_path):
    with pytest.raises(PPFError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(PPFError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(PPFError, match="mapping"):
        load_params(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"calibration": {"n_samples": 8}}))
    assert load_params(good).calibration.n_samples == 8
