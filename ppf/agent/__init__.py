"""PPF's agent: a DDPG policy network that, given a target ratio, picks (importance method, a_eta).

Public API: :class:`PruningEnv` / :func:`sampling_window` / :func:`decode` (the environment),
:class:`AgentConfig` / :func:`train_agent` (DDPG via stable-baselines3), :func:`save_agents` /
:class:`Agents` (trained actors on disk and the decision ratio → policy).
"""

from ppf.agent.ddpg import AgentConfig, History, act, build_actor, train_agent
from ppf.agent.env import AGENT_METHODS, PruningEnv, decode, encode, sampling_window
from ppf.agent.store import Agents, save_agents

__all__ = ["AGENT_METHODS", "AgentConfig", "Agents", "History", "PruningEnv", "act", "build_actor", "decode",
           "encode", "sampling_window", "save_agents", "train_agent"]
