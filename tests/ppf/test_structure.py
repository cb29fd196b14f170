"""The house rules, checked: no import circle in ppf/ and flows/ (imports inside functions count),
and every flow function short (thin flows over the library)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file, `from a import b` as a.b if a module)."""
    files = {_module(p): p for d in ("ppf", "flows") for p in (REPO / d).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the module pkg.sub; `from mod import name`, the module mod
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            for n in names:
                if n in files and n != mod:
                    graph[mod].add(n)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["ppf.workbench"]  # the graph was read
    assert circles(graph) == []


def test_a_circle_is_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted((REPO / "flows").glob("*.py")), ids=lambda p: p.name)
def test_flow_functions_are_short(path):
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 40]
    assert long == []


def _external(path: Path) -> set[str]:
    """The top-level packages a file imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", sorted((REPO / "ppf").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_imports_prefect_or_a_flow(path):
    assert not _external(path) & {"prefect", "prefect_dask", "flows"}


def test_flows_import_only_flows_common_and_the_recipes():
    """A flow adds Prefect to a recipe: it imports flows.common and ppf.recipes.*, nothing else of the
    project. flows/pipeline.py chains the stage flows into one (the scheduled deployments' run): it is
    the one flow that imports flows, and nothing of ppf."""
    graph = import_graph()
    for mod in (m for m in graph if m.startswith("flows.") and m not in ("flows.common", "flows.__init__")):
        own = {d for d in graph[mod] if d.startswith(("ppf", "flows"))}
        if mod == "flows.pipeline":
            assert own <= {m for m in graph if m.startswith("flows.")} and "flows.pipeline" not in own, own
            continue
        assert own <= {"flows.common"} | {m for m in graph if m.startswith("ppf.recipes.")}, (mod, own)


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 + the highest floor it imports (no circles, so this ends)."""
    floor: dict[str, int] = {}

    def of(m: str) -> int:
        if m not in floor:
            floor[m] = 1 + max((of(d) for d in graph[m]), default=0)
        return floor[m]

    for m in graph:
        of(m)
    return floor


def test_the_recipes_floor_sits_between_the_components_and_the_front_doors():
    """Recipes import components, never a flow, the CLI or another stage's flow; no component imports a
    recipe, the CLI or a flow (the old upward imports — workbench → agent, tracking → predictor and
    agent, predictor → registry, checkpoint → export — are gone)."""
    graph = import_graph()
    recipes = {m for m in graph if m.startswith("ppf.recipes")}
    front = {"ppf.cli"} | {m for m in graph if m.startswith("flows")}
    for mod in recipes:
        assert not graph[mod] & front, mod
    for mod in set(graph) - recipes - front - {"ppf"}:  # ppf/__init__: the public API re-exports
        assert not graph[mod] & (recipes | front), (mod, graph[mod] & (recipes | front))
    assert "ppf.tracking" in graph and not {d for d in graph["ppf.tracking"] if d != "ppf.errors"}  # MLflow only
    assert not {d for d in graph["ppf.workbench"] if d.startswith("ppf.agent")}
    assert not graph["ppf.checkpoint.store"] & {m for m in graph if m.startswith("ppf.export")}
    floors = _floors(graph)
    assert all(floors[r] > floors["ppf.workbench"] for r in recipes if graph[r] & {"ppf.workbench"})
