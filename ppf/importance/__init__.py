"""Importance scores, the raw material of every pruning policy.

Two granularities, both oriented HIGHER = MORE IMPORTANT = pruned less:

* :func:`layer_importance` - one float per decoder layer (``LAYER_SCORES``: lod, esd, bi, uniform);
  the policy turns it into per-layer pruning ratios (paper Eqs. 4-5).
* :func:`unit_importance` - per query head, KV head and MLP channel (``UNIT_KINDS``: taylor,
  activation); inside each layer the lowest-scoring units are removed.

Both are computed once on the dense base model and cached with :func:`save_importance`.
"""

from ppf.importance.cache import Importance, cached_importance, load_importance, save_importance
from ppf.importance.layer import LAYER_SCORES, hill_alpha, layer_importance, matrix_alpha
from ppf.importance.units import UNIT_KINDS, unit_importance

__all__ = ["LAYER_SCORES", "Importance", "cached_importance", "UNIT_KINDS", "hill_alpha", "layer_importance", "load_importance",
           "matrix_alpha", "save_importance", "unit_importance"]
