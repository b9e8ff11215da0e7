"""Stable-Baselines3 adapter: a :class:`DreamVectorEnv` as an SB3 ``VecEnv``.

SB3 cannot take a Gymnasium ``VectorEnv``: it wants the ended sub-environments reset within the
same step, with the last observation in ``infos[i]["terminal_observation"]`` and time-limit
ends flagged as ``infos[i]["TimeLimit.truncated"]``. This adapter drives the dream in
``SAME_STEP`` autoreset mode through its torch API and builds those infos.

    from stable_baselines3 import PPO
    from envs.sb3 import DreamSB3VecEnv
    venv = DreamSB3VecEnv(num_envs=64, run_dir="runs/car")
    PPO("MlpPolicy", venv).learn(100_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from envs.dream import DreamVectorEnv


class DreamSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over a batched dream.

    Args:
        venv: a :class:`DreamVectorEnv` built with ``autoreset_mode=AutoresetMode.SAME_STEP``;
            or leave it out and pass the :class:`DreamVectorEnv` arguments (``num_envs``,
            ``run_dir`` or ``world_model``, ``temperature``, ``obs_mode`` ...) as keywords.
    """

    def __init__(self, venv: DreamVectorEnv | None = None, **dream_kwargs: Any) -> None:
        if venv is None:
            venv = DreamVectorEnv(autoreset_mode=AutoresetMode.SAME_STEP, **dream_kwargs)
        elif dream_kwargs:
            raise ValueError("pass either a DreamVectorEnv or its keyword arguments, not both")
        if venv.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError("DreamSB3VecEnv needs a DreamVectorEnv with autoreset_mode=AutoresetMode.SAME_STEP")
        self.venv = venv
        self._actions: torch.Tensor | None = None
        self.render_mode = venv.render_mode
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> VecEnvObs:
        seeds = [s for s in self._seeds]
        seed: list[int] | None = None
        if any(s is not None for s in seeds):
            base = next(s for s in seeds if s is not None)
            seed = [int(s) if s is not None else base + i for i, s in enumerate(seeds)]
        obs = self.venv.reset_torch(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = torch.as_tensor(np.asarray(actions))

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called before step_async()")
        obs_t, rew_t, term_t, trunc_t = self.venv.step_torch(self._actions)
        self._actions = None
        obs = obs_t.cpu().numpy()
        rewards = rew_t.float().cpu().numpy()
        terminated = term_t.cpu().numpy()
        truncated = trunc_t.cpu().numpy()
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final = self.venv.final_obs.cpu().numpy() if self.venv.final_obs is not None else obs
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.venv.render_mode != "rgb_array":
            return [None for _ in range(self.num_envs)]
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs
