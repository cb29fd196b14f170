"""Profiles: named budgets (``tiny`` | ``default`` | ``paper``) written into params.yaml.

params.yaml stays the one config DVC tracks; a profile only rewrites some of its values. Each
profile (``ppf/profiles/<name>.yaml``) is a flat map of dotted paths (``collect.n_samples``) to
values; applying it replaces the node at each path and keeps every other key and every comment
(ruamel round-trip), so ``git diff params.yaml`` shows exactly what a profile changed and
``dvc repro`` reruns exactly the stages that depend on it. The result is validated before anything
is written, and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ppf.errors import PPFError

PROFILES = Path(__file__).parent / "profiles"


def names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def read(name: str) -> dict[str, Any]:
    """The profile's {dotted path: value} map."""
    import yaml

    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise PPFError(f"unknown profile '{name}'; use one of {', '.join(names())}")
    return yaml.safe_load(path.read_text()) or {}


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: comments, key order and quoting survive
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def _assign(parent: Any, key: str, value: Any) -> None:
    """parent[key] = value, touching as little as possible (equal values and inner comments stay)."""
    from ruamel.yaml.comments import CommentedMap

    old = parent.get(key)
    if isinstance(value, dict) and isinstance(old, CommentedMap):
        for k in [k for k in old if k not in value]:
            del old[k]
        for k, v in value.items():
            _assign(old, k, v)
    elif old != value or isinstance(old, bool) != isinstance(value, bool):  # True == 1, but not in YAML
        parent[key] = _round_trip_value(value)


def _round_trip_value(value: Any) -> Any:
    """Lists in flow style ([a, b, c]) as params.yaml writes them; mappings in flow style too."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list):
        seq = CommentedSeq(_round_trip_value(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        m = CommentedMap((k, _round_trip_value(v)) for k, v in value.items())
        m.fa.set_flow_style()
        return m
    return value


def render(params_text: str, name: str) -> str:
    """params.yaml's text with the profile's values written in (nothing else changed)."""
    from ruamel.yaml.comments import CommentedMap

    from ppf.config import parse_params

    doc = _yaml().load(params_text) or CommentedMap()
    for dotted, value in read(name).items():
        *parents, leaf = dotted.split(".")
        node = doc
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = CommentedMap()
            node = node[key]
        _assign(node, leaf, value)
    out = io.StringIO()
    _yaml().dump(doc, out)
    import yaml

    parse_params(yaml.safe_load(out.getvalue()), source=f"params.yaml with profile '{name}'")
    return out.getvalue()


def apply(params_path: Path, name: str) -> list[str]:
    """Write profile ``name`` into ``params_path``; return the dotted paths whose value changed."""
    import yaml

    from ppf.io import write_text_atomic

    if not params_path.is_file():
        raise PPFError(f"'{params_path}' does not exist; run from the project root or pass --params")
    before = yaml.safe_load(params_path.read_text()) or {}
    text = render(params_path.read_text(), name)
    after = yaml.safe_load(text)
    changed = [k for k in read(name) if _get(before, k) != _get(after, k)]
    write_text_atomic(params_path, text)
    return changed


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
