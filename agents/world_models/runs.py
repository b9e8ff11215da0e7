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
                 sb3_algo: str = "auto", sound: bool = False, progress: bool = False,
                 episodes_of: str | Path | None = None) -> dict[str, Any]:
    """Score a run's controller in ``episodes`` real episodes (see :func:`agents.evaluate.evaluate`),
    or in the episodes of ``episodes_of`` (an evaluation's JSON, ``selection.json`` or
    ``rounds.json``: the same seeds and episode limit, so the two pair episode by episode),
    or, with ``sb3``, a Stable-Baselines3 policy trained in its dream on ``[z, h]`` (saved zip of
    algorithm ``sb3_algo``; see :func:`agents.sb3_policy.evaluate_sb3`). The result also holds
    ``max_steps``, the episode limit used. ``progress``: a bar counts the controller's finished episodes."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
    seeds = None
    if episodes_of is not None:
        seeds, limit = episodes_of_json(episodes_of)
        if max_steps is not None and max_steps != limit:
            raise ValueError(f"--max-steps {max_steps} differs from the episodes' limit in {episodes_of} ({limit}); "
                             f"leave --max-steps out to play them as they were played")
        max_steps = limit
    if sb3 is not None:
        if controller is not None:
            raise ValueError("pass --controller or --sb3, not both")
        from agents.sb3_policy import evaluate_sb3

        cfg, wm = load_world_model(run_dir)
        res = evaluate_sb3(cfg.task, wm, sb3, sb3_algo, episodes, workers, seed, max_steps, address, backend,
                           seeds=seeds)
    else:
        cfg, wm, ccfg, params = load_run(run_dir, controller)
        res = evaluate(cfg.task, wm, ccfg, params, episodes, workers, seed, max_steps, address, backend,
                       progress=progress, seeds=seeds)
    return {**res, "max_steps": episode_limit(cfg.task, max_steps)}


def episodes_of_json(path: str | Path) -> tuple[list[int], int | None]:
    """The episode seeds and the episode limit (``max_steps``, None: the task's) an evaluation JSON
    (``scripts/evaluate.py --json``, a run's ``eval.json``), ``selection.json`` or ``rounds.json``
    played, with a one-line error for a file that holds none."""
    import json

    from worldlab.io import read_json

    path = Path(path)
    try:
        d = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--episodes-of {path}: cannot read it as JSON ({type(e).__name__})") from None
    seeds = d.get("seeds") if isinstance(d, dict) else None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"--episodes-of {path}: no list of episode seeds in it; give an eval.json, selection.json "
                         f"or rounds.json, or a file written by scripts/evaluate.py --json")
    limit = d.get("max_steps")
    return seeds, (int(limit) if limit is not None else None)


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
