"""Using a finished (or resumed) run folder: load its config, world model and controller, score
the controller (or a Stable-Baselines3 policy trained in its dream) in the real game, watch it
drive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.controller import ControllerConfig, load_controller
from agents.evaluate import episode_limit, evaluate
from agents.watch import watch
from agents.world_models.config import RunConfig
from worldlab.rundir import RunDir
from worldlab.world_model import WorldModel


def load_world_model(run_dir: str | Path | RunDir) -> tuple[RunConfig, WorldModel]:
    """The run's config and world model, with one-line errors when absent."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; train one with "
                                f"python scripts/dream_train.py TASK --out {run}")
    cfg = RunConfig.load(run)
    return cfg, WorldModel.load(run, task=cfg.task)


def load_run(run_dir: str | Path | RunDir, controller: str | Path | None = None
             ) -> tuple[RunConfig, WorldModel, ControllerConfig, np.ndarray]:
    """The run's config, world model and final controller (or the ``controller`` file given, e.g.
    one of ``RUN/tau_sweep/tau_*/controller.npz``), with one-line errors when absent."""
    run = RunDir(run_dir)
    cfg, wm = load_world_model(run)
    path = Path(controller) if controller is not None else run.controller()
    if not path.is_file():
        raise FileNotFoundError(f"controller {path} does not exist; evolve one with scripts/dream_train.py "
                                f"(or scripts/sweep_temperature.py), or pass another --controller")
    ccfg, params, _ = load_controller(path)
    if ccfg.input_size != wm.obs_size:
        raise ValueError(f"the controller takes inputs of size {ccfg.input_size} but the world model gives "
                         f"{wm.obs_size}: it belongs to another world model; evolve it again")
    return cfg, wm, ccfg, params


def evaluate_run(run_dir: str | Path | RunDir, episodes: int = 100, workers: int = 2, seed: int = 12345,
                 max_steps: int | None = None, address: str | None = None, backend: str = "ray",
                 controller: str | Path | None = None, sb3: str | Path | None = None,
                 sb3_algo: str = "auto", sound: bool = False, progress: bool = False) -> dict[str, Any]:
    """Score a run's controller in ``episodes`` real episodes (see :func:`agents.evaluate.evaluate`),
    or, with ``sb3``, a Stable-Baselines3 policy trained in its dream on ``[z, h]`` (saved zip of
    algorithm ``sb3_algo``; see :func:`agents.sb3_policy.evaluate_sb3`). The result also holds
    ``max_steps``, the episode limit used. ``progress``: a bar counts the controller's finished episodes."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
    if sb3 is not None:
        if controller is not None:
            raise ValueError("pass --controller or --sb3, not both")
        from agents.sb3_policy import evaluate_sb3

        cfg, wm = load_world_model(run_dir)
        res = evaluate_sb3(cfg.task, wm, sb3, sb3_algo, episodes, workers, seed, max_steps, address, backend)
    else:
        cfg, wm, ccfg, params = load_run(run_dir, controller)
        res = evaluate(cfg.task, wm, ccfg, params, episodes, workers, seed, max_steps, address, backend,
                       progress=progress)
    return {**res, "max_steps": episode_limit(cfg.task, max_steps)}


def watch_run(run_dir: str | Path | RunDir, mode: str = "both", episodes: int = 1, seed: int = 0,
              record: str | None = None, fps: int = 50, max_steps: int | None = None,
              renderer: str | Path | None = None, sb3: str | Path | None = None,
              sb3_algo: str = "auto", sound: bool = False, controller: str | Path | None = None) -> dict[str, Any]:
    """Watch a run's controller (see :func:`agents.watch.watch`; ``controller``: another controller
    file of this world model, e.g. ``RUN/checkpoints/controller_finetuned.npz``), or with ``sb3`` a
    Stable-Baselines3 policy trained in its dream, at the run's dream temperature. Returns each pane's returns
    (``"real"``, ``"dream"``) and ``"max_steps"``: each pane's episode limit."""
    if mode not in ("real", "dream", "both"):
        raise ValueError(f"mode must be real, dream or both, got {mode!r}")
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
    act = None
    if sb3 is not None:
        if controller is not None:
            raise ValueError("pass --controller or --sb3, not both")
        from agents.sb3_policy import check_fits, load_sb3, sb3_act

        cfg, wm = load_world_model(run_dir)
        model = load_sb3(sb3, sb3_algo)
        check_fits(model, wm, str(sb3))
        ccfg, params, act = None, None, sb3_act(model)
    else:
        cfg, wm, ccfg, params = load_run(run_dir, controller)
    if renderer is not None and not Path(renderer).is_file():
        raise FileNotFoundError(f"no renderer checkpoint at {renderer}; train one with "
                                f"python scripts/renderer_report.py {run_dir}")
    returns = watch(cfg.task, wm, ccfg, params, cfg.dream.temperature, mode=mode, episodes=episodes, seed=seed,
                    record=record, fps=fps, max_steps=max_steps, renderer=renderer, act=act, sound=sound)
    limits = {"real": episode_limit(cfg.task, max_steps), "dream": int(max_steps or wm.max_episode_steps)}
    return {**returns, "max_steps": limits}
