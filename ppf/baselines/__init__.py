"""The methods ppf compares, one module each, registered by name (:mod:`ppf.baselines.registry`).

``dense`` (the unpruned reference), the re-run baselines ``llm_pruner``, ``owl``, ``alpha``,
``shortgpt``, ``blockpruner``, and ``ppf`` (the trained agent's policy). The benchmark, the CLI
help and the config validation read the names from :data:`METHODS`, in this order.
"""

from ppf.baselines import alpha, blockpruner, dense, llm_pruner, owl, ppf_agent, shortgpt  # noqa: F401  (register)
from ppf.baselines.registry import METHODS, Method, check_methods, get, register

# the benchmark's order: reference, width baselines, depth baselines, PPF
ORDER = ("dense", "llm_pruner", "owl", "alpha", "shortgpt", "blockpruner", "ppf")
METHODS.update({name: METHODS.pop(name) for name in ORDER})

__all__ = ["METHODS", "Method", "check_methods", "get", "register"]
