"""The registry of pruning methods: a name → what the method builds from the dense model.

A :class:`Method` is data: its kind (``dense``, ``width``: a :class:`~ppf.plan.PruningPlan` of
heads and channels, ``depth``: a plan that removes whole blocks), a one-line summary (CLI help,
README), how it deviates from its original, and the functions that build it. Pruning methods only
PLAN (``plan(workbench, ratio, state=None) → (description, plan)``) and share one way to prune and
compensate (:meth:`ppf.workbench.Workbench.pruned`); the dense model is built
(``build(workbench, ratio, state) → (model, info)``). A method whose choice needs an expensive
search first (BlockPruner's greedy order) has ``prepare(workbench, max_ratio) → state``, a JSON-able
value the caller caches and hands back to ``plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppf.errors import PPFError

METHOD_KINDS = ("dense", "width", "depth")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    summary: str
    deviation: str = "none"
    plan: Callable[..., tuple[str, Any]] | None = None
    build: Callable[[Any, float, Any], tuple[Any, dict[str, Any]]] | None = None
    prepare: Callable[[Any, float], Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"method kind {self.kind!r} is not one of {METHOD_KINDS}")
        if (self.kind == "dense") != (self.build is not None) or (self.kind == "dense") == (self.plan is not None):
            raise ValueError(f"method {self.name!r}: width and depth methods give `plan`, the dense model `build`")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise PPFError(f"unknown method {name!r}; use some of {', '.join(METHODS)}")
    return METHODS[name]


def check_methods(names: list[str]) -> list[str]:
    """``names`` if every one is registered, else a PPFError naming the first unknown one."""
    for n in names:
        get(n)
    return list(names)
