"""Gymnasium environments of the lab: real tasks with the paper's preprocessing, a fast
CarRacing, and the dream environments over a learned WorldModel.

``envs.make(task)`` builds a real task by its short name (see ``envs.TASKS``) or any registered
Gymnasium id with image observations or ``rgb_array`` renders (``pixels=True``). Importing this
package registers ``worldlab/CarRacing-v3`` and ``worldlab/Dream-v0`` with Gymnasium; an installed
worldlab registers them at ``import gymnasium`` already (``worldlab_gymnasium.py``), and
``gym.make("envs:worldlab/CarRacing-v3")`` works from a plain checkout too.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.tasks import TASKS, TaskSpec, get_task
from envs.wrappers import LatentObservation, PreprocessFrame, ThresholdAction

__all__ = ["TASKS", "TaskSpec", "get_task", "make", "action_space_dict", "PreprocessFrame", "ThresholdAction",
           "LatentObservation", "register_envs"]


def register_envs() -> None:
    """Register the lab's Gymnasium ids (idempotent)."""
    from envs import car_racing, dream

    car_racing.register_envs()
    dream.register_envs()


def make(task: str, *, size: int = 64, pixels: bool = False, render_mode: str | None = None,
         fast: bool = True, max_episode_steps: int | None = None, signals: bool = True, **kwargs: Any) -> gym.Env:
    """Make a real task with the paper's preprocessing: ``size x size x 3`` uint8 observations.

    Args:
        task: ``"car_racing"``, ``"doom_take_cover"`` (see ``envs.TASKS``), or any registered
            Gymnasium id.
        size: side of the square frames (64 in the paper).
        pixels: for a Gymnasium id whose observations are not images, use its ``rgb_array``
            render as the observation.
        render_mode: ``None``, ``"rgb_array"`` or ``"human"`` (a pygame window).
        fast: car_racing only: use the lab's bit-identical fast CarRacing (else gymnasium's).
        max_episode_steps: override the task's time limit (e.g. short episodes for tests).
        signals: car_racing only: add the car's ``speed``, ``off_road`` and the ``tiles`` reached to
            ``step``'s info (``envs.car_racing.CarRacingSignals``; frames and rewards unchanged).
            Collection records them in each shard; ``signals=False`` collects shards without them.
        kwargs: passed to the underlying environment; ``doom_take_cover`` also takes
            ``paper_actions`` (default True: one continuous output mapped to left/stay/right).
    """
    if task in TASKS:
        spec = TASKS[task]
        kw = {**spec.make_kwargs, **kwargs}
        limit = spec.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
        if limit < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {limit}")
        if task == "car_racing":
            gym_id = spec.gym_id if fast else "CarRacing-v3"
            env = gym.make(gym_id, render_mode=render_mode, max_episode_steps=limit, **kw)
            if signals:
                from envs.car_racing import CarRacingSignals

                env = CarRacingSignals(env)
            return PreprocessFrame(env, size=size, crop_rows=84)
        if task == "doom_take_cover":
            return _make_doom(spec, size, render_mode, limit, **kw)
        raise AssertionError(f"task {task} has no builder")
    if task not in gym.envs.registry:
        get_task(task)  # raises the one-line error listing the known tasks
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if pixels:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"pixels=True renders with rgb_array; render_mode={render_mode!r} is not supported")
        return PreprocessFrame(gym.make(task, render_mode="rgb_array", **kwargs), size=size, from_render=True)
    else:
        env = gym.make(task, render_mode=render_mode, **kwargs)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3):
            env.close()
            raise ValueError(f"{task} observations are {space}, not images; pass pixels=True to use its renders")
    return PreprocessFrame(env, size=size)


def _make_doom(spec: TaskSpec, size: int, render_mode: str | None, limit: int, paper_actions: bool = True,
               **kwargs: Any) -> gym.Env:
    import vizdoom.gymnasium_wrapper  # noqa: F401  (registers the Vizdoom* ids)

    env = gym.make(spec.gym_id, render_mode=render_mode, max_episode_steps=limit, **kwargs)
    env = PreprocessFrame(env, size=size, key="screen")
    if paper_actions:
        # VizdoomTakeCover-v1's Discrete(3) button map: 0 = none, 1 = MOVE_RIGHT, 2 = MOVE_LEFT.
        env = ThresholdAction(env, left=2, stay=0, right=1)
    return env


def action_space_dict(space: spaces.Space) -> dict[str, Any]:
    """A JSON-able description of an action space, as manifests and checkpoints store it
    (``{"type": "box", "shape", "low", "high"}`` or ``{"type": "discrete", "n"}``; the inverse is
    :func:`envs.dream.action_space_from`)."""
    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": list(space.shape), "low": np.asarray(space.low).tolist(),
                "high": np.asarray(space.high).tolist()}
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    raise ValueError(f"unsupported action space {space}")


register_envs()
