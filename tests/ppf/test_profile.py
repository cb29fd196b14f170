"""Profiles rewrite params.yaml values in place: validated, reversible, comments kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from tiny import run_cli

from ppf import profile
from ppf.config import parse_params
from ppf.errors import PPFError

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    return Path(shutil.copy(PARAMS, tmp_path / "params.yaml"))


def test_the_committed_params_are_the_default_profile():
    assert profile.render(PARAMS.read_text(), "default") == PARAMS.read_text()


def test_default_covers_every_key_another_profile_sets():
    default = set(profile.read("default"))
    for name in profile.names():
        assert set(profile.read(name)) <= default, name


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_a_profile_validates_changes_only_its_keys_and_goes_back(params_copy, name):
    before = yaml.safe_load(params_copy.read_text())
    changed = profile.apply(params_copy, name)
    after = yaml.safe_load(params_copy.read_text())
    parse_params(after)
    assert changed and set(changed) <= set(profile.read(name))
    for dotted, value in profile.read(name).items():
        assert profile._get(after, dotted) == value
    # keys outside the profile are untouched, comments kept
    assert after["seed"] == before["seed"] and after["tracking"] == before["tracking"]
    assert "# the DDPG agent" in params_copy.read_text()
    profile.apply(params_copy, "default")
    assert params_copy.read_text() == PARAMS.read_text()


def test_tiny_points_at_the_embedded_four_layer_model(params_copy):
    profile.apply(params_copy, "tiny")
    p = parse_params(yaml.safe_load(params_copy.read_text()))
    assert p.model.name == "smollm2-135m-4l" and p.collect.n_samples < 50 and p.agent.episodes < 10


def test_an_unknown_profile_is_one_clear_error(params_copy):
    with pytest.raises(PPFError, match="unknown profile 'tinny'; use one of default, paper, tiny"):
        profile.apply(params_copy, "tinny")
    assert params_copy.read_text() == PARAMS.read_text()


def test_a_profile_giving_invalid_params_writes_nothing(params_copy, tmp_path, monkeypatch):
    shutil.copytree(profile.PROFILES, tmp_path / "profiles")
    (tmp_path / "profiles" / "broken.yaml").write_text("collect.n_samples: -3\n")
    monkeypatch.setattr(profile, "PROFILES", tmp_path / "profiles")
    with pytest.raises(PPFError, match="n_samples"):
        profile.apply(params_copy, "broken")
    assert params_copy.read_text() == PARAMS.read_text()


def test_cli_profile_reports_what_changed(params_copy, capsys):
    code, out, _ = run_cli(["profile", "tiny", "--params", str(params_copy)], capsys)
    assert code == 0 and "profile 'tiny'" in out and "collect.n_samples" in out
    code, out, _ = run_cli(["profile", "tiny", "--params", str(params_copy)], capsys)
    assert code == 0 and "0 value(s) changed" in out
    code, _, err = run_cli(["profile", "huge", "--params", str(params_copy)], capsys)
    assert code == 2 and "unknown profile 'huge'" in err
