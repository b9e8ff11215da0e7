"""Preprocessing wrappers: the paper's frames and action mappings, applied as wrappers (never by
patching module constants); and :class:`LatentObservation`, the real game seen through a world
model as ``[z, h]``."""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from worldlab.sequence_m import state_h
from worldlab.world_model import WorldModel


class PreprocessFrame(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Crop, then resize an RGB frame to ``size x size x 3`` uint8 (cv2 INTER_AREA).

    Args:
        env: an env whose observations are HxWx3 uint8 images, or a Dict holding one under ``key``.
        size: output side (64 in the paper).
        crop_rows: keep only rows ``[0, crop_rows)`` (CarRacing: 84 drops the dashboard, as the
            paper's preprocessing did); None keeps the whole frame.
        key: take the image from this key of a Dict observation (ViZDoom's ``"screen"``).
        from_render: use ``env.render()`` (``render_mode="rgb_array"``) as the frame, for envs
            whose observations are not images (``envs.make(id, pixels=True)``).
    """

    def __init__(self, env: gym.Env, size: int = 64, crop_rows: int | None = None, key: str | None = None,
                 from_render: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, size=size, crop_rows=crop_rows, key=key,
                                                 from_render=from_render)
        gym.ObservationWrapper.__init__(self, env)
        self.size, self.crop_rows, self.key, self.from_render = int(size), crop_rows, key, from_render
        self.observation_space = spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)
        if from_render:
            if env.render_mode != "rgb_array":
                raise ValueError(f"from_render needs render_mode='rgb_array', got {env.render_mode!r}")
            # the frames are the rgb_array renders, so that is the one render mode this env has
            # (check_env remakes the env in every declared mode)
            self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
            return
        space = env.observation_space
        if key is not None:
            if not isinstance(space, spaces.Dict) or key not in space.spaces:
                raise ValueError(f"observation space {space} has no key {key!r}")
            space = space[key]
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.shape[2] == 3):
            raise ValueError(f"PreprocessFrame needs HxWx3 image observations, got {space}; "
                             f"pass pixels=True to render frames instead")

    def observation(self, observation: Any) -> np.ndarray:
        if self.from_render:
            frame = self.env.render()
        else:
            frame = observation[self.key] if self.key is not None else observation
        if self.crop_rows is not None:
            frame = frame[: self.crop_rows]
        if frame.shape[0] == self.size and frame.shape[1] == self.size:
            return np.ascontiguousarray(frame, dtype=np.uint8)
        return cv2.resize(np.ascontiguousarray(frame), (self.size, self.size), interpolation=cv2.INTER_AREA)


class ThresholdAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """The paper's Doom action mapping: one continuous output in [-1, 1] -> left / stay / right.

    ``a < -1/3`` presses ``left``, ``a > 1/3`` presses ``right``, anything between stays.
    ``left``, ``stay`` and ``right`` are indices of the wrapped Discrete action space.
    """

    def __init__(self, env: gym.Env, left: int, stay: int, right: int, threshold: float = 1.0 / 3.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, left=left, stay=stay, right=right, threshold=threshold)
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"ThresholdAction wraps a Discrete action space, got {env.action_space}")
        self.left, self.stay, self.right, self.threshold = left, stay, right, threshold
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def action(self, action: Any) -> int:
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if a < -self.threshold:
            return self.left
        if a > self.threshold:
            return self.right
        return self.stay


class LatentObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The real game as the dream shows it: observations ``[z, h]``, so that a policy trained in the
    dream (on ``worldlab/Dream-v0``, ``DreamVectorEnv``, ``DreamSB3VecEnv`` or RLlib's dream) plays
    the real game as it is.

    ``reset`` zeroes M's LSTM state; every frame is encoded by V (the posterior mean, as the CMA-ES
    controller's real-game path does, ``agents.policies.ControllerPolicy``), and every step first
    advances M's LSTM by ``(z, action)`` and then steps the game. The observation is
    ``[z_t, h_t]``, float32 of size ``z_size + hidden`` (the dream's ``obs_mode="latent"``). Box
    actions are clipped to the action space, as the dream clips them, before both M and the game
    see them; a Discrete action is M's one-hot input.

    Args:
        env: a real task with V's frames (``envs.make(task)``: uint8 64x64x3) and the world
            model's action space.
        world_model: a :class:`worldlab.world_model.WorldModel` (V and M), or leave it out and
            pass ``run_dir``: a run folder with its checkpoints.
        device: where V and M run.
    """

    def __init__(self, env: gym.Env, world_model: WorldModel | None = None, *, run_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, world_model=world_model, run_dir=run_dir, device=device)
        gym.Wrapper.__init__(self, env)
        if (run_dir is None) == (world_model is None):
            raise ValueError("LatentObservation needs exactly one of world_model (a WorldModel) or run_dir "
                             "(a run folder with checkpoints/)")
        wm = WorldModel.load(run_dir, device=device) if world_model is None else world_model
        self.world_model = wm.to(device).eval()
        size = wm.vae.config.image_size
        frames = env.observation_space
        if not (isinstance(frames, spaces.Box) and frames.shape == (size, size, 3) and frames.dtype == np.uint8):
            raise ValueError(f"LatentObservation needs the {size}x{size}x3 uint8 frames V was trained on, got "
                             f"{frames}; wrap the task with envs.make(task) (or PreprocessFrame)")
        _check_same_actions(env.action_space, wm.action_space)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(wm.obs_size,), dtype=np.float32)
        self._discrete = isinstance(env.action_space, spaces.Discrete)
        self._state: Any = None  # M's step state (the LSTM's (h, c), or a sequence M's dict)
        self._z: torch.Tensor | None = None

    @torch.inference_mode()
    def _observe(self, frame: np.ndarray) -> np.ndarray:
        wm = self.world_model
        self._z, _ = wm.encode(torch.from_numpy(np.ascontiguousarray(frame))[None].to(wm.device))  # (1, Z)
        assert self._state is not None
        return torch.cat([self._z, state_h(self._state)], dim=1)[0].cpu().numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        frame, info = self.env.reset(seed=seed, options=options)
        self._state = self.world_model.mdrnn.initial_state(1, self.world_model.device)
        return self._observe(frame), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._state is None or self._z is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        space = self.env.action_space
        if self._discrete:
            action = int(np.asarray(action).reshape(-1)[0])
            a = torch.tensor([action])
        else:
            action = np.clip(np.asarray(action, dtype=np.float64).reshape(space.shape), space.low, space.high
                             ).astype(space.dtype)
            a = torch.as_tensor(action, dtype=torch.float32)[None]
        with torch.inference_mode():
            _, self._state = self.world_model.mdrnn.step(self._z, a.to(self.world_model.device), self._state)
        frame, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(frame), reward, terminated, truncated, info


def _check_same_actions(space: spaces.Space, desc: dict[str, Any]) -> None:
    """Refuse, in one line, a game whose action space is not the one the world model was trained with."""
    if isinstance(space, spaces.Box) and desc.get("type") == "box" and tuple(space.shape) == tuple(desc["shape"]):
        return
    if isinstance(space, spaces.Discrete) and desc.get("type") == "discrete" and int(space.n) == int(desc["n"]):
        return
    raise ValueError(f"the game's action space {space} is not the world model's {desc}: "
                     f"the world model belongs to another task")
