"""RLlib adapter: the dream as an env creator registered with ``ray.tune.register_env``.

Gymnasium's registry is not shared with Ray's worker processes, so RLlib looks environments up
in its own registry. Pass the dream's arguments as ``env_config`` (a run folder travels better
than a model object: each worker loads the world model from disk)::

    from ray.rllib.algorithms.ppo import PPOConfig
    from envs.rllib import register_rllib_env
    name = register_rllib_env()
    config = PPOConfig().environment(name, env_config={"run_dir": "runs/car", "temperature": 1.15})
    algo = config.build_algo()
    algo.train()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.dream import DreamEnv

RLLIB_ENV_NAME = "worldlab_dream"
_DREAM_KEYS = ("run_dir", "world_model", "temperature", "obs_mode", "device", "deterministic", "render_mode",
               "renderer", "max_episode_steps")


def dream_env_creator(env_config: Mapping[str, Any]) -> DreamEnv:
    """Build a :class:`DreamEnv` from an RLlib ``env_config`` (an ``EnvContext`` or a dict)."""
    unknown = sorted(k for k in env_config if k not in _DREAM_KEYS)
    if unknown:
        raise ValueError(f"unknown dream env_config keys {unknown}; known: {list(_DREAM_KEYS)}")
    return DreamEnv(**{k: env_config[k] for k in _DREAM_KEYS if k in env_config})


def register_rllib_env(name: str = RLLIB_ENV_NAME) -> str:
    """Register the dream with Ray Tune / RLlib under ``name`` (idempotent) and return the name."""
    from ray.tune.registry import register_env

    register_env(name, dream_env_creator)
    return name
