"""The paper's temperature table, with Ray Tune: evolve C in the dream at several temperatures
tau and score each controller both in the dream and in the real game.

Ha & Schmidhuber (2018), DoomTakeCover: a low tau gives a dream that is easy to exploit (high
dream score, low real score); tau around 1.15 transferred best.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from worldlab.io import atomic_write_json, atomic_write_text
from worldlab.rundir import RunDir


def tau_trial(config: dict[str, Any]) -> None:
    """One Tune trial: evolve at ``config["temperature"]``, report dream and real scores."""
    import torch
    from ray import tune

    from agents.cmaes import CMAConfig
    from agents.controller import ControllerConfig
    from agents.fitness import EVAL_GENERATION, RealEvalWorker, evolve_in_dream, generation_seeds
    from agents.world_models.config import RunConfig
    from worldlab.world_model import WorldModel

    torch.set_num_threads(1)
    run, tau = RunDir(config["run_dir"]), float(config["temperature"])
    wm = WorldModel.load(run)
    cfg = RunConfig.load(run)  # the run's controller and dream step, as its own evolve stage used them
    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task, hidden=cfg.controller_hidden)
    cma_cfg = CMAConfig(popsize=config["popsize"], rollouts=config["rollouts"], generations=config["generations"],
                        seed=config["seed"])
    # the final controller's dream score: fresh dreams at the same tau
    state, dream_returns = evolve_in_dream(wm, ccfg, cma_cfg, tau, config.get("dream_steps"), run.tau_cma_state(tau),
                                           run.tau_controller(tau), config["eval_episodes"],
                                           precision=cfg.dream.precision)
    env_kwargs = {"max_episode_steps": config["real_steps"]} if config.get("real_steps") else {}
    worker = RealEvalWorker(wm.task, wm, ccfg, env_kwargs)
    seeds = generation_seeds(config["seed"], EVAL_GENERATION, config["eval_episodes"])
    real = [r["return"] for r in worker.play([(state.mean_params, s) for s in seeds])]
    tune.report({"temperature": tau, "dream_mean": float(np.mean(dream_returns)),
                 "dream_std": float(np.std(dream_returns)), "real_mean": float(np.mean(real)),
                 "real_std": float(np.std(real)), "real_returns": [float(r) for r in real]})


def temperature_sweep(run_dir: str | Path, taus: list[float], generations: int = 20, popsize: int = 16,
                      rollouts: int = 4, eval_episodes: int = 10, dream_steps: int | None = None,
                      real_steps: int | None = None, seed: int = 0, address: str | None = None,
                      cpus_per_trial: float = 1.0) -> list[dict[str, Any]]:
    """Run one Tune trial per tau (in parallel over the cluster); write ``RUN/tau_sweep.json`` and ``.md``."""
    from ray import tune

    from worldlab.ray_utils import init_ray

    run = RunDir(Path(run_dir).resolve())
    if not run.has_world_model():
        raise FileNotFoundError(f"{run} holds no trained world model; run scripts/dream_train.py first")
    if not taus or any(t <= 0 for t in taus):
        raise ValueError(f"temperatures must be > 0, got {taus}")
    init_ray(address)
    space = {"run_dir": str(run), "temperature": tune.grid_search([float(t) for t in taus]),
             "generations": generations, "popsize": popsize, "rollouts": rollouts, "eval_episodes": eval_episodes,
             "dream_steps": dream_steps, "real_steps": real_steps, "seed": seed}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(tune.with_resources(tau_trial, {"cpu": cpus_per_trial}), param_space=space,
                       run_config=tune.RunConfig(name="tau_sweep", storage_path=str(run.tune), verbose=0))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} temperature trial(s) failed: {errors[0]}")
    rows = sorted(({k: r.metrics[k] for k in ("temperature", "dream_mean", "dream_std", "real_mean", "real_std",
                                                "real_returns")} for r in results), key=lambda d: d["temperature"])
    atomic_write_json(run.tau_sweep_json, {"rows": rows, "generations": generations, "popsize": popsize,
                                                   "rollouts": rollouts, "eval_episodes": eval_episodes})
    lines = ["| tau | dream score | real score |", "|---|---|---|"]
    lines += [f"| {r['temperature']:g} | {r['dream_mean']:.1f} ± {r['dream_std']:.1f} | "
              f"{r['real_mean']:.1f} ± {r['real_std']:.1f} |" for r in rows]
    atomic_write_text(run.tau_sweep_md, "\n".join(lines) + "\n")
    return rows
