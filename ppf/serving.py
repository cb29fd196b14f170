"""What a registered ppf model does when MLflow serves it (``mlflow.pyfunc.load_model(...).predict``).

One serving object per kind of file, handed to :func:`ppf.tracking.log_and_register` (which wraps
it in MLflow's pyfunc class and knows no ppf type):

- :data:`PREDICTOR` — mask images [N, C, L, W] → the predicted signal [N];
- :data:`AGENT` — target ratios [N] → PPF's policies as text [N] (the final choice at a static ratio);
- :data:`PRUNED` — prompts [N] → greedy continuations [N] (32 tokens) of a pruned checkpoint.

:func:`load_registered_pruned` loads a registered pruned model back in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppf import tracking


class PredictorServing:
    def load(self, path: str) -> tuple[Any, dict[str, Any]]:
        from ppf.predictor import load_predictor

        return load_predictor(path)

    def predict(self, loaded: tuple[Any, dict[str, Any]], model_input: Any) -> np.ndarray:
        net, meta = loaded
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return net(x.reshape(-1, *meta["image_shape"])).numpy()


class AgentServing:
    def load(self, path: str) -> Any:
        from ppf.agent import Agents

        return Agents.load(path)

    def predict(self, agents: Any, model_input: Any) -> list[str]:
        return [str(agents.policy_for(float(r))["policy"]) for r in np.asarray(model_input, dtype=float).ravel()]


class PrunedServing:
    new_tokens = 32

    def load(self, path: str) -> tuple[Any, Any]:
        from ppf.checkpoint import load_pruned

        return load_pruned(path)

    def predict(self, loaded: tuple[Any, Any], model_input: Any) -> list[str]:
        model, tokenizer = loaded
        out = []
        for prompt in list(model_input):
            ids = tokenizer(str(prompt), return_tensors="pt")
            with torch.no_grad():
                gen = model.generate(**ids, max_new_tokens=self.new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return out


PREDICTOR, AGENT, PRUNED = PredictorServing(), AgentServing(), PrunedServing()
SERVING = {"predictor": PREDICTOR, "agent": AGENT, "pruned": PRUNED}


def load_registered_pruned(root: str | Path, name: str, version: str = "latest") -> tuple[Any, Any]:
    """(model, tokenizer) of a registered pruned model, e.g. ``(root, "ppf-pruned-0.4")`` — one call;
    ``version`` is a number, ``latest`` or ``@alias``."""
    return tracking.load_registered(root, name, PRUNED.load, version)
