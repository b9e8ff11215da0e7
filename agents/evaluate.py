"""Evaluate a run's final controller in the real environment, on Ray workers (or local processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.fitness import RealPool, generation_seeds
from agents.report import summarize_returns
from agents.watch import load_run


def evaluate_run(run_dir: str | Path, episodes: int = 100, workers: int = 2, seed: int = 12345,
                 max_steps: int | None = None, address: str | None = None,
                 backend: str = "ray", controller: str | Path | None = None) -> dict[str, Any]:
    cfg, wm, ccfg, params = load_run(run_dir, controller)
    env_kwargs = {"max_episode_steps": max_steps} if max_steps else {}
    pool = RealPool(cfg.task, wm, ccfg, workers, env_kwargs, address, backend=backend)
    try:
        seeds = generation_seeds(seed, 10**6, episodes)
        res = pool.play([(params, s) for s in seeds])
    finally:
        pool.close()
    return {**summarize_returns(cfg.task, [r["return"] for r in res]), "seeds": seeds,
            "lengths": [r["length"] for r in res]}
