"""Preprocessing wrappers: the paper's frames and action mappings, applied as wrappers (never by
patching module constants)."""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces


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
