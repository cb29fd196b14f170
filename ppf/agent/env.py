"""The agent's world (paper, "The Pruning Framework"): ratios in, policies out, −PPR back.

State: the target ratio r (rescaled onto [−1, 1] over the trained range, :func:`observe`). Action: a point of the box [−1, 1]^4 that :func:`decode` reads as a
policy — the first three coordinates are scores of the importance methods (lod, esd, bi; the
highest wins, the usual continuous relaxation of a discrete choice for an actor-critic agent),
the last one is a_eta mapped linearly from [−1, 1] onto [0, 0.5]. Reward (Eq. 6): −JS / r_act,
JS from the predictor, r_act the plan's ACTUAL ratio.

An episode is one sampling window (Eqs 1–3): [α, β] cut into k equal sub-intervals, one ratio
drawn uniformly in each, visited in order; a new window every episode. Static mode is α = β.
The next ratio never depends on the action, so the return beyond one step carries no signal
about it — the agent is trained with a small discount (``gamma``, 0 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from ppf.errors import PPFError
from ppf.policy import A_ETA_MAX, Policy, check_ratio

AGENT_METHODS = ("lod", "esd", "bi")
ACTION_DIM = len(AGENT_METHODS) + 1

# (policy, ratio) -> (JS, actual ratio): the predictor in training, anything cheap in tests
Scorer = Callable[[Policy, float], tuple[float, float]]


def decode(action: np.ndarray) -> Policy:
    """An action in [−1, 1]^4 → (method = argmax of the first three, a_eta from the last)."""
    a = np.clip(np.asarray(action, dtype=np.float64).ravel(), -1.0, 1.0)
    if a.size != ACTION_DIM:
        raise PPFError(f"an action has {ACTION_DIM} numbers (3 method scores + a_eta), got {a.size}")
    a_eta = float(np.clip((a[-1] + 1.0) / 2.0 * A_ETA_MAX, 0.0, A_ETA_MAX))
    return Policy(AGENT_METHODS[int(np.argmax(a[:-1]))], round(a_eta, 6))


def encode(policy: Policy) -> np.ndarray:
    """The canonical action of a policy (the inverse of :func:`decode` on its image)."""
    a = -np.ones(ACTION_DIM, dtype=np.float32)
    method = "lod" if policy.method == "uniform" else policy.method
    a[AGENT_METHODS.index(method)] = 1.0
    a[-1] = 2.0 * policy.a_eta / A_ETA_MAX - 1.0
    return a


def observe(ratio: float, alpha: float, beta: float) -> float:
    """The state the networks see: the ratio rescaled so the trained range [α, β] spans [−1, 1]
    (0 in static mode). Raw ratios in [0.2, 0.4] barely move a network's input, and the actor
    ends up answering one policy for every ratio; outside the range the value simply extends."""
    return 0.0 if beta <= alpha else (2.0 * ratio - alpha - beta) / (beta - alpha)


def sampling_window(alpha: float, beta: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """Eqs 1–3: k ratios, one uniform draw in each of k equal sub-intervals of [α, β] (α = β: static)."""
    alpha, beta = check_ratio(alpha, "window start"), check_ratio(beta, "window end")
    if beta < alpha:
        raise PPFError(f"window [{alpha}, {beta}] is reversed; give the lower ratio first")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise PPFError(f"window size {k!r} must be a positive integer, e.g. 5")
    edges = np.linspace(alpha, beta, k + 1)
    return rng.uniform(edges[:-1], edges[1:])


class PruningEnv(gym.Env):
    """One episode = one sampling window of ratios; one step = one policy for one ratio."""

    metadata = {"render_modes": []}

    def __init__(self, scorer: Scorer, alpha: float, beta: float, window: int = 5, seed: int = 0):
        super().__init__()
        self.scorer, self.alpha, self.beta, self.window = scorer, alpha, beta, window
        sampling_window(alpha, beta, window, np.random.default_rng(0))  # validates the window
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._rng = np.random.default_rng(seed)
        self._ratios = np.zeros(window)
        self._i = 0

    def _obs(self) -> np.ndarray:
        return np.array([observe(self._ratios[min(self._i, self.window - 1)], self.alpha, self.beta)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._ratios = sampling_window(self.alpha, self.beta, self.window, self._rng)
        self._i = 0
        return self._obs(), {}

    def step(self, action: np.ndarray):
        ratio = float(self._ratios[self._i])
        policy = decode(action)
        js, actual = self.scorer(policy, ratio)
        reward = -js / actual
        self._i += 1
        done = self._i >= self.window
        info = {"ratio": ratio, "policy": str(policy), "js": js, "actual_ratio": actual}
        return self._obs(), float(reward), done, False, info
