"""Trained agents on disk (safetensors, no pickle) and the decision ``ratio → policy``.

One agent file holds the actor of every trained mode — the dynamic one (a ratio range) and the
static ones (one ratio each) — with the range each was trained on. :meth:`Agents.decide` picks
the mode for a ratio: a static agent trained at exactly that ratio, else the dynamic agent.
:meth:`Agents.answer` is PPF's answer: at a static ratio the final choice train_agent stored in the
file (the race of the contenders on growing valid budgets, :mod:`ppf.agent.choice`), elsewhere the decision.
A ratio outside every trained range is ANSWERED, with a warning: any action decodes to a valid
policy and the plan meets the ratio exactly, but the agent never saw such ratios, so the policy
may be poor — the warning says so and names the trained range (refusing would break a deployment
whose budget drifts slightly; a hard limit belongs to the caller).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppf.agent.ddpg import act, build_actor
from ppf.agent.env import ActionSpace, observe
from ppf.errors import PPFError
from ppf.policy import Policy, check_ratio

FILE = "agent.safetensors"


def save_agents(actors: dict[str, torch.nn.Module], modes: dict[str, tuple[float, float]], path: str | Path,
                meta: dict[str, Any]) -> Path:
    """Write every mode's actor + metadata atomically (``path``: a directory or a .safetensors file)."""
    from ppf.io import write_tensors_atomic

    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{mode}/{k}": v for mode, actor in actors.items() for k, v in actor.state_dict().items()}
    return write_tensors_atomic(file, tensors, {**meta, "modes": {m: list(r) for m, r in modes.items()}})


@dataclass
class Agents:
    actors: dict[str, torch.nn.Module]
    modes: dict[str, tuple[float, float]]
    meta: dict[str, Any]

    @property
    def space(self) -> ActionSpace:
        """The policy space the actions decode into (the paper's for agents saved without one)."""
        return ActionSpace.from_dict(self.meta.get("action_space"))

    @classmethod
    def load(cls, path: str | Path) -> "Agents":
        from ppf.io import read_artifact

        file, tensors, meta = read_artifact(path, FILE, "agent", "train_agent")
        try:
            actors = {}
            space = ActionSpace.from_dict(meta.get("action_space"))
            for mode in meta["modes"]:
                actor = build_actor(tuple(meta["net_arch"]), space.dim)
                actor.load_state_dict({k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == mode})
                actors[mode] = actor
        except Exception as exc:
            raise PPFError(f"'{file}' is not a ppf agent ({type(exc).__name__}: {str(exc)[:120]}); "
                           "retrain it with `dvc repro train_agent`") from None
        return cls(actors, {m: (float(a), float(b)) for m, (a, b) in meta["modes"].items()}, meta)

    def mode_for(self, ratio: float) -> tuple[str, str | None]:
        """(mode, warning or None) for a ratio."""
        for mode, (a, b) in self.modes.items():
            if a == b and abs(ratio - a) < 1e-9:
                return mode, None
        ranges = {m: r for m, r in self.modes.items() if r[0] < r[1]}
        for mode, (a, b) in ranges.items():
            if a - 1e-9 <= ratio <= b + 1e-9:
                return mode, None
        trained = ", ".join(f"{m} [{a:g}, {b:g}]" for m, (a, b) in self.modes.items())
        mode = next(iter(ranges), next(iter(self.modes)))
        return mode, (f"ratio {ratio:g} is outside every trained range ({trained}); answering with the "
                      f"'{mode}' agent, whose policy for it is an extrapolation: verify it (ppf predict --verify) "
                      "or train a static agent at this ratio (agent.static in params.yaml)")

    def with_choices(self, choices: dict[str, dict[str, Any]], path: str | Path) -> Path:
        """Rewrite the agent file with the final choices of train_agent (``{ratio: {policy, ...}}``)."""
        return save_agents(self.actors, self.modes, path, {**self.meta, "choices": choices})

    def choice(self, ratio: float) -> dict[str, Any] | None:
        """The final choice at a static ratio (:func:`ppf.agent.choice.choose`), if any."""
        for r, c in (self.meta.get("choices") or {}).items():
            if abs(float(r) - ratio) < 1e-9:
                return c
        return None

    def policy_for(self, ratio: float) -> dict[str, Any]:
        """PPF's policy for ``ratio`` — the one name for it: the final choice (:meth:`choice`) where
        train_agent made one (static ratios), else the actor's decision (:meth:`decide`); ``mode`` says
        which, ``chosen`` the choice's record."""
        t = time.perf_counter()
        c = self.choice(check_ratio(ratio))
        if c is None:
            return self.decide(ratio) | {"chosen": None}
        policy = Policy.parse(c["policy"])
        return {"policy": policy, "mode": f"chosen ({c['contender']})", "warning": None,
                "decision_ms": (time.perf_counter() - t) * 1e3, "chosen": c}

    def decide(self, ratio: float, mode: str | None = None) -> dict[str, Any]:
        """The policy for ``ratio``: {policy, mode, warning, decision_ms} (``mode`` forces one actor)."""
        ratio = check_ratio(ratio)
        t = time.perf_counter()
        if mode is not None and mode not in self.actors:
            raise PPFError(f"no '{mode}' agent; trained: {', '.join(self.actors)}")
        mode, warning = (mode, None) if mode is not None else self.mode_for(ratio)
        policy: Policy = self.space.decode(act(self.actors[mode], observe(ratio, *self.modes[mode])), ratio)
        return {"policy": policy, "mode": mode, "warning": warning, "decision_ms": (time.perf_counter() - t) * 1e3}
