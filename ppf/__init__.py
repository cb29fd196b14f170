"""ppf — the Predictive Pruning Framework.

A plain library: models, data, importance, policy, pruning, masks, metrics, checkpoints,
predictor, agent, baselines and evaluation. Orchestration (Prefect) lives in ``flows/``,
experiment tracking (MLflow) in :mod:`ppf.tracking` only.
"""

__version__ = "0.1.0"
