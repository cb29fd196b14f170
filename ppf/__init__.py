"""ppf — the Predictive Pruning Framework.

A plain library: models, data, importance, policy, pruning, masks, metrics, checkpoints,
predictor, agent, baselines and evaluation. Orchestration (Prefect) lives in ``flows/``,
experiment tracking (MLflow) in :mod:`ppf.tracking` only.

The public API, five lines from a model to a pruned checkpoint and back::

    import ppf
    wb = ppf.Workbench(".", ppf.load_params("params.yaml"))        # the dense model of a project
    plan = wb.planner.plan(ppf.Policy.parse("lod:0.2"), 0.4)         # a PruningPlan: no weight touched
    ppf.save_pruned(ppf.prune_model(wb.copy(), plan), wb.tokenizer, "pruned/lod-40", base=wb.name)
    model, tokenizer = ppf.load_pruned("pruned/lod-40")

Names are imported on first use (``import ppf`` stays light, e.g. for ``ppf --help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ppf.checkpoint import register_on_import as _register_on_import

__version__ = "0.1.0"

# name -> module: the small public API (PEP 562 lazy attributes)
_API = {
    "Policy": "ppf.policy", "Planner": "ppf.policy", "plan_for": "ppf.policy",
    "PruningPlan": "ppf.plan", "DenseShape": "ppf.plan",
    "prune_model": "ppf.prune", "drop_blocks": "ppf.prune",
    "save_pruned": "ppf.checkpoint", "load_pruned": "ppf.checkpoint",
    "Workbench": "ppf.workbench", "load_params": "ppf.config",
    "METHODS": "ppf.baselines",
}
__all__ = sorted(_API)

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs (the `x as x` form marks a re-export)
    from ppf.baselines import METHODS as METHODS
    from ppf.checkpoint import load_pruned as load_pruned, save_pruned as save_pruned
    from ppf.config import load_params as load_params
    from ppf.plan import DenseShape as DenseShape, PruningPlan as PruningPlan
    from ppf.policy import Planner as Planner, Policy as Policy, plan_for as plan_for
    from ppf.prune import drop_blocks as drop_blocks, prune_model as prune_model
    from ppf.workbench import Workbench as Workbench


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ppf' has no attribute {name!r}")


# `import ppf` makes pruned checkpoints loadable with AutoModelForCausalLM.from_pretrained: the
# ppf config/model classes are registered with transformers as soon as transformers is imported
# (not eagerly, so that `ppf --help` does not pay for importing transformers).
_register_on_import()
