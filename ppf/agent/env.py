"""The agent's world (paper, "The Pruning Framework"): ratios in, policies out, −PPR back.

State: the target ratio r (rescaled onto [−1, 1] over the trained range, :func:`observe`).
Action: a point of the box [−1, 1]^d that :func:`decode` reads as a policy — the first three
coordinates are scores of the importance methods (lod, esd, bi; the highest wins, the usual
continuous relaxation of a discrete choice for an actor-critic agent), the fourth is a_eta mapped
linearly from [−1, 1] onto [0, 0.5]; beyond the paper, one coordinate per extended part the
:class:`ActionSpace` has on (normalisation, protected edge layers, depth, attention share), the
discrete ones rounded. Reward (Eq. 6): −JS / r_act, JS from the predictor (or the signal it
learned, ``predictor.signal``), r_act the plan's ACTUAL ratio.

An episode is one sampling window (Eqs 1–3): [α, β] cut into k equal sub-intervals, one ratio
drawn uniformly in each, visited in order; a new window every episode. Static mode is α = β.
The next ratio never depends on the action, so the return beyond one step carries no signal
about it — the agent is trained with a small discount (``gamma``, 0 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from ppf.errors import PPFError
from ppf.plan import DenseShape
from ppf.policy import A_ETA_MAX, Policy, check_ratio, feasible

AGENT_METHODS = ("lod", "esd", "bi")
ACTION_DIM = len(AGENT_METHODS) + 1

# (policy, ratio) -> (score, actual ratio): the predictor's signal (JS by default) in training, anything cheap in tests
Scorer = Callable[[Policy, float], tuple[float, float]]


def _unit(x: float) -> float:
    """[−1, 1] → [0, 1]."""
    return float(np.clip((x + 1.0) / 2.0, 0.0, 1.0))


@dataclass(frozen=True)
class ActionSpace:
    """Which parts of the extended policy the agent's action sets (the space collection sampled,
    ``collect.space``): the paper's 4 numbers, then one per part that is on — the normalisation
    (``> 0``: the second of ``norms``), protected first and last layers (0..keep each), whole
    layers removed (0..depth, never more than the ratio allows) — or, with two ``orders``, one more
    coordinate picking the order, ``blocks`` removing 0..block_depth blocks of the stored BlockPruner
    ``block_order`` — and the attention share (over the ``attn`` range). The discrete parts are
    relaxed like the method choice: rounded; at a ratio the decoded policy is made
    :func:`~ppf.policy.feasible` for the model's ``shape``, so every action plans."""

    shape: DenseShape | None = None
    norms: tuple[str, ...] = ("minmax",)
    keep: int = 0
    depth: int = 0
    attn: tuple[float, float] | None = None
    max_layer_ratio: float = 0.9
    groups: bool = False  # one more coordinate: > 0 takes LLM-Pruner's attn=groups
    orders: tuple[str, ...] = ("layers",)  # depth orders; two: one more coordinate, > 0 takes the second
    block_depth: int = 0  # the most blocks blocks=N removes (0..block_depth)
    block_order: tuple[tuple[str, int], ...] | None = None  # BlockPruner's stored order, for blocks=N

    @property
    def n_layers(self) -> int:
        return self.shape.n_layers if self.shape is not None else 0

    @classmethod
    def of(cls, space: Any, shape: DenseShape, max_layer_ratio: float = 0.9,
           block_order: tuple[tuple[str, int], ...] | None = None) -> "ActionSpace":
        """From ``collect.space`` (its ``fraction: 0`` is the paper's space); ``block_order`` is
        BlockPruner's stored order, needed when ``space.orders`` has ``blocks``."""
        if space is None or space.fraction <= 0:
            return cls(shape, max_layer_ratio=max_layer_ratio)
        orders = tuple(space.orders)
        if "blocks" in orders and block_order is None:
            raise PPFError("collect.space.orders has blocks but no BlockPruner block order is stored for this model; "
                           "run `dvc repro importance` (benchmark.blockpruner.order_ratio > 0) or drop blocks")
        return cls(shape, tuple(space.norms), space.keep, space.depth,
                   None if space.attn is None else (float(space.attn[0]), float(space.attn[1])), max_layer_ratio,
                   space.groups > 0, orders, space.block_depth if "blocks" in orders else 0,
                   tuple(block_order) if "blocks" in orders else None)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ActionSpace":
        if not d:
            return cls()
        order = d.get("block_order")
        return cls(DenseShape(**d["shape"]) if d.get("shape") else None, tuple(d["norms"]), int(d["keep"]),
                   int(d["depth"]), None if d.get("attn") is None else tuple(d["attn"]), float(d["max_layer_ratio"]),
                   bool(d.get("groups", False)), tuple(d.get("orders", ("layers",))), int(d.get("block_depth", 0)),
                   None if order is None else tuple((str(k), int(i)) for k, i in order))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def dim(self) -> int:
        return ACTION_DIM + (len(self.norms) > 1) + 2 * (self.keep > 0) + self._deep + (len(self.orders) > 1) \
            + (self.attn is not None) + self.groups

    @property
    def _deep(self) -> bool:
        """Whether the action has a depth coordinate (some order may remove blocks)."""
        return self.depth > 0 if self.orders == ("layers",) else (self.depth > 0 or self.block_depth > 0)

    def decode(self, action: np.ndarray, ratio: float | None = None) -> Policy:
        a = np.clip(np.asarray(action, dtype=np.float64).ravel(), -1.0, 1.0)
        if a.size != self.dim:
            raise PPFError(f"an action has {self.dim} numbers (3 method scores + a_eta + one per extended part), got {a.size}")
        a_eta = float(np.clip(_unit(a[3]) * A_ETA_MAX, 0.0, A_ETA_MAX))
        kw: dict[str, Any] = {}
        i = ACTION_DIM
        if len(self.norms) > 1:
            kw["norm"] = self.norms[1] if a[i] > 0 else self.norms[0]
            i += 1
        first = last = 0
        if self.keep > 0:
            first, last = (int(round(_unit(a[i + j]) * self.keep)) for j in (0, 1))
            while first + last >= self.n_layers:
                first, last = first // 2, last // 2
            kw |= {"first": first, "last": last}
            i += 2
        order = self.orders[0]
        if len(self.orders) > 1:
            order = self.orders[1] if a[i] > 0 else self.orders[0]
            i += 1
        if self._deep:
            if order == "layers":
                room = self.n_layers - first - last - 1
                if ratio is not None:
                    room = min(room, int(ratio * self.n_layers + 1e-9))
                kw["depth"] = max(0, min(int(round(_unit(a[i]) * self.depth)), room))
            else:  # feasible() trims it to the ratio and the stored order
                kw["depth"] = int(round(_unit(a[i]) * self.block_depth))
            kw["order"] = order
            i += 1
        if self.attn is not None:
            lo, hi = self.attn
            kw["attn"] = round(lo + _unit(a[i]) * (hi - lo), 3)
            i += 1
        if self.groups and a[i] > 0:
            kw["attn"] = "groups"
        policy = Policy(AGENT_METHODS[int(np.argmax(a[:3]))], round(a_eta, 6), **kw)
        if ratio is not None and self.shape is not None and not policy.is_paper:
            policy = feasible(policy, ratio, self.shape, self.max_layer_ratio, block_order=self.block_order)
        return policy

    def encode(self, policy: Policy) -> np.ndarray:
        """The canonical action of a policy (the inverse of :meth:`decode` on its image)."""
        a = -np.ones(self.dim, dtype=np.float32)
        method = "lod" if policy.method == "uniform" else policy.method
        a[AGENT_METHODS.index(method)] = 1.0
        a[3] = 2.0 * policy.a_eta / A_ETA_MAX - 1.0
        i = ACTION_DIM
        if len(self.norms) > 1:
            a[i] = 1.0 if policy.norm == self.norms[1] else -1.0
            i += 1
        if self.keep > 0:
            a[i], a[i + 1] = 2.0 * policy.first / self.keep - 1.0, 2.0 * policy.last / self.keep - 1.0
            i += 2
        if len(self.orders) > 1:
            a[i] = 1.0 if policy.depth and policy.order == self.orders[1] else -1.0
            i += 1
        if self._deep:
            most = self.depth if policy.order == "layers" else self.block_depth
            a[i] = 2.0 * policy.depth / most - 1.0 if most else -1.0
            i += 1
        if self.attn is not None:
            lo, hi = self.attn
            s = lo if policy.attn in (None, "groups") else policy.attn
            a[i] = 2.0 * (s - lo) / (hi - lo) - 1.0 if hi > lo else -1.0
            i += 1
        if self.groups:
            a[i] = 1.0 if policy.attn == "groups" else -1.0
        return np.clip(a, -1.0, 1.0)


PAPER_SPACE = ActionSpace()


def decode(action: np.ndarray, space: ActionSpace = PAPER_SPACE, ratio: float | None = None) -> Policy:
    """An action in [−1, 1]^dim → a policy: method = argmax of the first three, a_eta from the fourth,
    then the extended parts ``space`` has on (:class:`ActionSpace`)."""
    return space.decode(action, ratio)


def encode(policy: Policy, space: ActionSpace = PAPER_SPACE) -> np.ndarray:
    """The canonical action of a policy (the inverse of :func:`decode` on its image)."""
    return space.encode(policy)


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

    def __init__(self, scorer: Scorer, alpha: float, beta: float, window: int = 5, seed: int = 0,
                 space: ActionSpace = PAPER_SPACE):
        super().__init__()
        self.scorer, self.alpha, self.beta, self.window, self.space = scorer, alpha, beta, window, space
        sampling_window(alpha, beta, window, np.random.default_rng(0))  # validates the window
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(space.dim,), dtype=np.float32)
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
        policy = self.space.decode(action, ratio)
        score, actual = self.scorer(policy, ratio)
        reward = -score / actual
        self._i += 1
        done = self._i >= self.window
        info = {"ratio": ratio, "policy": str(policy), "score": score, "actual_ratio": actual}
        return self._obs(), float(reward), done, False, info
