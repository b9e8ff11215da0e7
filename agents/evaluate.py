"""Scoring a controller in the real game: episodes on seeds no training generation used, spread
over a pool of real-game workers (Ray actors, or local processes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.controller import ControllerConfig
from agents.fitness import EVAL_GENERATION, RealPool, generation_seeds
from worldlab.world_model import WorldModel


def summarize_returns(task: str, returns: list[float]) -> dict[str, Any]:
    """``{"task", "episodes", "mean", "std", "min", "max", "returns"}`` of a list of returns."""
    r = np.asarray(returns, dtype=np.float64)
    return {"task": task, "episodes": int(r.size), "mean": float(r.mean()), "std": float(r.std()),
            "min": float(r.min()), "max": float(r.max()), "returns": [float(x) for x in r]}


def episode_limit(task: str, max_steps: int | None = None) -> int | None:
    """The step limit of a real episode of ``task``: ``max_steps`` when given, else the task's own
    (``envs.TASKS``, or the Gymnasium id's registered limit; None when it has none)."""
    if max_steps:
        return int(max_steps)
    import envs

    if task in envs.TASKS:
        return envs.TASKS[task].max_episode_steps
    import gymnasium as gym

    try:
        return gym.spec(task).max_episode_steps
    except gym.error.Error:
        return None


def episode_seeds(seed: int, episodes: int, seeds: list[int] | None = None) -> list[int]:
    """The evaluation episodes' seeds: ``seeds`` when given (e.g. another evaluation's, to pair
    with it), else ``episodes`` seeds of :data:`EVAL_GENERATION` from ``seed``."""
    return [int(s) for s in seeds] if seeds is not None else generation_seeds(seed, EVAL_GENERATION, episodes)


def evaluate(task: str, wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, episodes: int = 100,
             workers: int = 2, seed: int = 12345, max_steps: int | None = None, address: str | None = None,
             backend: str = "ray", progress: bool = False, seeds: list[int] | None = None) -> dict[str, Any]:
    """Play ``episodes`` real episodes of ``task`` with the controller ``params`` acting on [z, h]
    through ``wm`` (or the episodes ``seeds``, whatever ``episodes`` and ``seed`` say: e.g. another
    evaluation's, to pair with it); returns :func:`summarize_returns` plus the seeds and episode lengths.
    ``progress``: a bar counts the finished episodes."""
    env_kwargs = {"max_episode_steps": max_steps} if max_steps else {}
    pool = RealPool(task, wm, ccfg, workers, env_kwargs, address, backend=backend)
    try:
        seeds = episode_seeds(seed, episodes, seeds)
        res = pool.play([(params, s) for s in seeds], progress="evaluate" if progress else None)
    finally:
        pool.close()
    return {**summarize_returns(task, [r["return"] for r in res]), "seeds": seeds,
            "lengths": [r["length"] for r in res]}
