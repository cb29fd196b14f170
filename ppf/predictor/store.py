"""A trained predictor on disk, and the object that answers "how good is this policy?".

A predictor file (``predictor.safetensors``) holds the weights and, as metadata, everything needed
to use it correctly: the architecture, the input kind, the image shape it was trained on, the
base model and pruning settings of its dataset, and its held-out scores. :class:`Predictor` pairs
it with a :class:`~ppf.policy.Planner` and refuses a mismatched pair (another model,
another mask shape) instead of predicting nonsense.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppf.errors import PPFError
from ppf.io import read_artifact, write_tensors_atomic
from ppf.policy import Planner, Policy
from ppf.predictor.features import image, image_of_masks, image_shape
from ppf.predictor.net import NetConfig, PredictorNet

FILE = "predictor.safetensors"


def save_predictor(net: PredictorNet, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights + metadata atomically (``path`` is a directory or a .safetensors file)."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    for key in ("input", "image_shape", "model"):
        if key not in meta:
            raise ValueError(f"predictor metadata needs {key!r}")
    return write_tensors_atomic(file, net.state_dict(), {**meta, "net": net.config.to_dict()})


def load_predictor(path: str | Path) -> tuple[PredictorNet, dict[str, Any]]:
    """(network in eval mode, metadata); a clear PPFError for a missing or foreign file."""
    file, tensors, meta = read_artifact(path, FILE, "predictor", "train_predictor")
    try:
        net = PredictorNet(NetConfig.from_dict(meta["net"]))
        net.load_state_dict(tensors)
    except Exception as exc:
        raise PPFError(f"'{file}' is not a ppf predictor ({type(exc).__name__}: {str(exc)[:120]}); "
                       "retrain it with `dvc repro train_predictor`") from None
    return net.eval(), meta


@dataclass
class Predictor:
    """A trained network + the planner of its model: (policy, ratio) → the predicted :attr:`signal` in ~1 ms."""

    net: PredictorNet
    meta: dict[str, Any]
    planner: Planner

    def __post_init__(self) -> None:
        if self.meta["model"] != self.planner.model:
            raise PPFError(f"the predictor was trained for {self.meta['model']}, not {self.planner.model}; "
                           "train one for this model (`dvc repro collect train_predictor` with its name in params.yaml)")
        want = tuple(self.meta["image_shape"])
        got = image_shape(self.planner.shape, self.meta["input"])
        if want != got:
            raise PPFError(f"mask shape {got} of {self.planner.model} does not match the predictor's input {want} "
                           f"(trained for {self.meta['model']}); train a predictor for this model "
                           "(`dvc repro collect train_predictor` with its name in params.yaml)")

    @classmethod
    def load(cls, path: str | Path, planner: Planner) -> "Predictor":
        net, meta = load_predictor(path)
        return cls(net, meta, planner)

    @property
    def signal(self) -> str:
        """What it predicts (``predictor.signal`` when it was trained; predictors from before: js)."""
        return str(self.meta.get("signal", "js"))

    def check_image(self, img: np.ndarray) -> torch.Tensor:
        want = tuple(self.meta["image_shape"])
        if tuple(img.shape[-3:]) != want:
            raise PPFError(f"mask shape {tuple(img.shape[-3:])} does not match the predictor's input {want} "
                           f"(trained for {self.meta['model']}); use a predictor trained for this model")
        return torch.as_tensor(img, dtype=torch.float32).reshape(-1, *want)

    @torch.no_grad()
    def predict_images(self, images: np.ndarray) -> np.ndarray:
        return self.net(self.check_image(images)).numpy().astype(float)

    def predict_plan(self, plan: Any) -> float:
        return float(self.predict_images(image(plan, self.meta["input"]))[0])

    def predict_batch(self, items: list[tuple[Policy, float]]) -> np.ndarray:
        """Predicted :attr:`signal` of many (policy, ratio) pairs: every plan's masks made (no index lists), then ONE
        forward over all images."""
        kind, shape = self.meta["input"], self.planner.shape
        return self.predict_images(np.stack([image_of_masks(shape, *self.planner.masks(p, r)[:3], kind)
                                             for p, r in items]))

    def predict(self, policy: Policy, ratio: float) -> dict[str, Any]:
        """The predicted :attr:`signal` (``score``) of ``policy`` at ``ratio`` with the plan it scored and
        the time it took."""
        t = time.perf_counter()
        plan = self.planner.plan(policy, ratio)
        score = self.predict_plan(plan)
        return {"score": score, "signal": self.signal, "plan": plan, "actual_ratio": plan.block_ratio,
                "ms": (time.perf_counter() - t) * 1e3}
