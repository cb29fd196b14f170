"""DDPG on the pruning environment, with stable-baselines3.

SB3's DDPG fits as is: a continuous Box action (see :mod:`ppf.agent.env` for how the discrete
method rides in it), a replay buffer, one update phase after every episode (``train_freq`` = one
episode, as the paper updates after each sampling window). Two callbacks add what the paper
specifies and SB3 does not: the Gaussian action noise decays by ``noise_decay`` after every
episode, and every step's (ratio, policy, JS, reward) is recorded for the reward curves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ppf.agent.env import PAPER_SPACE, ActionSpace, PruningEnv, Scorer


@dataclass(frozen=True)
class AgentConfig:
    episodes: int = 150
    window: int = 5
    noise: float = 0.5
    noise_decay: float = 0.95
    gamma: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 64
    buffer_size: int = 10_000
    learning_starts: int = 25
    gradient_steps: int = 20
    tau: float = 0.05
    net_arch: tuple[int, ...] = (64, 64)
    seed: int = 0


@dataclass
class History:
    """Per step and per episode records of one training run."""

    steps: list[dict] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)


def _callbacks(history: History, decay: float, on_episode: Callable[[dict], None]):
    from stable_baselines3.common.callbacks import BaseCallback

    class Record(BaseCallback):
        """Logs every step; at an episode's end logs its reward and decays the action noise."""

        def __init__(self):
            super().__init__()
            self._current: list[dict] = []

        def _on_step(self) -> bool:
            info, reward, done = self.locals["infos"][0], float(self.locals["rewards"][0]), bool(self.locals["dones"][0])
            noise = self.model.action_noise
            step = {**{k: info[k] for k in ("ratio", "policy", "score", "actual_ratio")}, "reward": reward,
                    "episode": len(history.episodes) + 1, "noise": float(noise._sigma.mean()) if noise else 0.0}
            history.steps.append(step)
            self._current.append(step)
            if done:
                rewards = [s["reward"] for s in self._current]
                best = max([e["best_reward"] for e in history.episodes] + [max(rewards)])
                ep = {"episode": len(history.episodes) + 1, "mean_reward": float(np.mean(rewards)),
                      "best_reward": best, "noise": step["noise"]}
                history.episodes.append(ep)
                on_episode(ep)
                self._current = []
                if noise is not None:
                    noise._sigma = noise._sigma * decay
            return True

    return Record()


def train_agent(scorer: Scorer, alpha: float, beta: float, config: AgentConfig,
                on_episode: Callable[[dict], None] = lambda ep: None,
                space: ActionSpace = PAPER_SPACE) -> tuple[nn.Sequential, History]:
    """Train DDPG on ratios in [α, β]; return the deterministic actor (ratio → action) and the history."""
    from stable_baselines3 import DDPG
    from stable_baselines3.common.noise import NormalActionNoise

    env = PruningEnv(scorer, alpha, beta, config.window, seed=config.seed, space=space)
    noise = NormalActionNoise(np.zeros(space.dim), config.noise * np.ones(space.dim))
    model = DDPG("MlpPolicy", env, learning_rate=config.learning_rate, buffer_size=config.buffer_size,
                 learning_starts=config.learning_starts, batch_size=config.batch_size, tau=config.tau,
                 gamma=config.gamma, train_freq=(1, "episode"), gradient_steps=config.gradient_steps,
                 action_noise=noise, policy_kwargs={"net_arch": list(config.net_arch)},
                 seed=config.seed, device="cpu", verbose=0)
    history = History()
    model.learn(total_timesteps=config.episodes * config.window,
                callback=_callbacks(history, config.noise_decay, on_episode))
    actor = model.actor.mu.cpu().eval()
    return actor, history


def build_actor(net_arch: tuple[int, ...], action_dim: int = PAPER_SPACE.dim) -> nn.Sequential:
    """An empty actor of the same layout as SB3's (its ``state_dict`` keys match)."""
    from stable_baselines3.common.torch_layers import create_mlp

    return nn.Sequential(*create_mlp(1, action_dim, list(net_arch), squash_output=True)).eval()


@torch.no_grad()
def act(actor: nn.Module, state: float) -> np.ndarray:
    """The deterministic action for a state (see :func:`ppf.agent.env.observe`)."""
    return actor(torch.tensor([[state]], dtype=torch.float32))[0].numpy()
