"""PPF's performance predictor: a pruning mask, read as an image, → the pruned model's signal
(``predictor.signal``: NLL above dense by default, or the paper's JS divergence, or KL).

Public API: :class:`NetConfig` / :class:`PredictorNet` (the CNN), :func:`image` (plan → mask image,
no weights), :func:`read_samples`, :func:`holdout`, :func:`build_images` (the collected dataset),
:func:`fit`, :func:`predict`, :func:`scores` (training and held-out metrics), :func:`save_predictor`,
:func:`load_predictor` and :class:`Predictor` (a trained network bound to its model's planner).
"""

from ppf.predictor.dataset import build_images, policy_groups, read_samples, holdout
from ppf.predictor.features import INPUTS, image, image_shape
from ppf.predictor.net import NetConfig, PredictorNet
from ppf.predictor.store import Predictor, load_predictor, save_predictor
from ppf.predictor.train import TrainConfig, fit, predict, scores, timed

__all__ = ["INPUTS", "NetConfig", "Predictor", "PredictorNet", "TrainConfig", "build_images", "fit",
           "image", "image_shape", "load_predictor", "policy_groups", "predict", "read_samples", "save_predictor",
           "scores", "holdout", "timed"]
