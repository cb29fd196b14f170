"""ppf — the Predictive Pruning Framework.

A plain library: models, data, importance, policy, pruning, masks, metrics, checkpoints,
predictor, agent, baselines and evaluation. Orchestration (Prefect) lives in ``flows/``,
experiment tracking (MLflow) in :mod:`ppf.tracking` only.
"""

__version__ = "0.1.0"

from ppf.checkpoint import register_on_import as _register_on_import

# `import ppf` makes pruned checkpoints loadable with AutoModelForCausalLM.from_pretrained: the
# ppf config/model classes are registered with transformers as soon as transformers is imported
# (not eagerly, so that `ppf --help` does not pay for importing transformers).
_register_on_import()


def load_pruned(path, device: str = "cpu"):
    """(model, tokenizer) from a ppf checkpoint directory — see :func:`ppf.checkpoint.load_pruned`."""
    from ppf.checkpoint import load_pruned as _load

    return _load(path, device)
