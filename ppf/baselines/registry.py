"""The registry of pruning methods: a name → what the method builds from the dense model.

A :class:`Method` is data: its kind (``dense``, ``width``: a :class:`~ppf.plan.PruningPlan` of
heads and channels, ``depth``: whole blocks removed), a one-line summary (CLI help, README), how
it deviates from its original, and the functions that build it. Width methods only PLAN
(``plan(workbench, ratio) → (description, plan)``) and share one way to prune; depth methods build
the model (``build(workbench, ratio, state) → (model, info)``). A method whose choice needs an
expensive search first (BlockPruner's greedy order) has ``prepare(workbench, max_ratio) → state``,
a JSON-able value the caller caches and hands back to ``build``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppf.errors import PPFError

KINDS = ("dense", "width", "depth")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    summary: str
    deviation: str = "none"
    plan: Callable[[Any, float], tuple[str, Any]] | None = None
    build: Callable[[Any, float, Any], tuple[Any, dict[str, Any]]] | None = None
    prepare: Callable[[Any, float], Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "width") != (self.plan is not None) or (self.kind == "depth") != (self.build is not None):
            raise ValueError(f"method {self.name!r}: width methods give `plan`, depth methods `build`")


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
