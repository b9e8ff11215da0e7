"""What each of the dream's mechanisms buys, on one world model and the same seeds.

For every variant of the dream (the plain dream of one M from real first frames; a fresh dropout
mask per dream; mid-episode starts; the ensemble of Ms; the members' disagreement penalty; a
pessimistic dream that ends with the members' largest done probability; one whose M's done logit
is biased up; and their combinations,
``"dropout+mid"``), CMA-ES evolves a controller from the same start with the same seeds, then
the controller is scored in fresh dreams of its variant and in the same real episodes as every
other variant. The world model (V, M and its members, the mid-episode bank)
is the run's, untouched: only the dream the controller learns in differs.

    python scripts/ablate_dream.py runs/car_racing --variants plain dropout mid dropout+mid
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worldlab.io import atomic_write_json, atomic_write_text, read_json
from worldlab.rundir import RunDir

COMPONENTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "dropout": {"dropout": 0.1},
    "mid": {"start": "mid"},
    "ensemble": {"members": None},
    "step": {"members": None, "member_mode": "step"},
    "penalty": {"members": None, "disagreement_penalty": 1.0},
    "pessimistic": {"members": None, "done_mode": "max"},
    "biased": {"done_bias": 1.6},
}
"""The dream's mechanisms, as :class:`agents.fitness.DreamFitness` options: ``dropout`` is
Dropout's Dream Land's 0.1; ``ensemble`` dreams with every member (one per dream), ``step`` a
fresh member each step, ``penalty`` subtracts the members' disagreement (weight 1),
``pessimistic`` ends each dream with the members' largest done probability, ``biased`` adds 1.6
to M's done logit (``dream.done_bias``: 5x the odds of an end, pessimistic everywhere alike)."""


def variant_options(name: str) -> dict[str, Any]:
    """``DreamFitness`` options of a variant name: components joined by ``+`` (``"dropout+mid"``)."""
    opts: dict[str, Any] = {"members": 1, "member_mode": "episode", "dropout": 0.0, "disagreement_penalty": 0.0,
                            "start": "first", "done_mode": "member", "done_bias": 0.0}
    parts = name.split("+")
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not name:
        raise ValueError(f"unknown dream variant {name!r}; combine {', '.join(COMPONENTS)} with '+', "
                         f"e.g. dropout+mid")
    for p in parts:
        opts.update(COMPONENTS[p])
    return opts


def ablate(run_dir: str | Path, variants: list[str], generations: int = 40, popsize: int = 16, rollouts: int = 4,
           eval_episodes: int = 30, temperature: float | None = None, dream_steps: int | None = None,
           real_steps: int | None = None, seed: int = 0, workers: int = 2, backend: str = "processes",
           address: str | None = None, progress: bool = True, say: Any = print) -> list[dict[str, Any]]:
    """Evolve and score one controller per dream variant; writes ``RUN/ablation/<variant>/`` and the
    table ``RUN/ablation.json`` / ``.md``. A variant already scored with the same settings is kept."""
    from agents.cmaes import CMAConfig
    from agents.controller import ControllerConfig
    from agents.fitness import (
        EVAL_GENERATION,
        RealEvalWorker,
        RealPool,
        evolve_in_dream,
        generation_seeds,
    )
    from agents.world_models.config import RunConfig
    from worldlab.world_model import WorldModel

    run = RunDir(run_dir)
    if not run.has_world_model():
        raise FileNotFoundError(f"{run} holds no trained world model; run scripts/dream_train.py first")
    opts = {v: variant_options(v) for v in variants}  # every name checked before any work
    if len(set(variants)) != len(variants) or not variants:
        raise ValueError(f"give each variant once, at least one: {variants}")
    for n, v in (("generations", generations), ("popsize", popsize), ("rollouts", rollouts),
                 ("eval-episodes", eval_episodes)):
        if v < (2 if n == "popsize" else 1):
            raise ValueError(f"--{n} must be >= {2 if n == 'popsize' else 1}, got {v}")
    cfg = RunConfig.load(run)
    tau = cfg.dream.temperature if temperature is None else float(temperature)
    if not tau > 0:
        raise ValueError(f"--temperature must be > 0, got {tau}")
    wm = WorldModel.load(run)
    for v, o in opts.items():
        if o["members"] is None and wm.num_members < 2:
            raise ValueError(f"variant {v!r} needs an ensemble of Ms; this run has one M (train one with "
                             f"--set ensemble.members=5)")
        if o["start"] == "mid" and wm.mid_bank is None:
            raise ValueError(f"variant {v!r} needs the mid-episode bank; this run was trained without it "
                             f"(--set dream.start=mid)")
    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task, hidden=cfg.controller_hidden)
    cma_cfg = CMAConfig(popsize=popsize, rollouts=rollouts, generations=generations, seed=seed)
    settings = {"generations": generations, "popsize": popsize, "rollouts": rollouts, "eval_episodes": eval_episodes,
                "temperature": tau, "dream_steps": dream_steps, "real_steps": real_steps, "seed": seed}
    if cfg.dream.precision != "fp32":  # the run's dream step (fp32 results on disk keep their settings)
        settings["precision"] = cfg.dream.precision
    env_kwargs = {"max_episode_steps": real_steps} if real_steps else {}
    real_seeds = generation_seeds(seed, EVAL_GENERATION, eval_episodes)
    pool: Any = None
    rows = []
    try:
        for v in variants:
            out = run.ablation_result(v)
            if out.exists():
                old = read_json(out)
                if old.get("settings") == settings:
                    rows.append(old)
                    continue
            o = opts[v]
            steps = dream_steps or (cfg.dream.steps if o["start"] == "mid" else None)
            say(f"dream variant {v}: evolving C ({popsize} x {rollouts}, {generations} generations, tau {tau})")
            state, dream_returns = evolve_in_dream(wm, ccfg, cma_cfg, tau, steps, run.ablation_cma_state(v),
                                                   run.ablation_controller(v), eval_episodes, progress=progress,
                                                   desc=v, precision=cfg.dream.precision, **o)
            if pool is None:  # workers=0: in this process
                pool = RealPool(wm.task, wm, ccfg, workers, env_kwargs, address, backend=backend) if workers else \
                    RealEvalWorker(wm.task, wm, ccfg, env_kwargs)
            say(f"dream variant {v}: {eval_episodes} real episodes")
            real = [r["return"] for r in pool.play([(state.mean_params, s) for s in real_seeds])]
            row = {"variant": v, "options": o, "settings": settings,
                   "dream_mean": float(np.mean(dream_returns)), "dream_std": float(np.std(dream_returns)),
                   "real_mean": float(np.mean(real)), "real_std": float(np.std(real)),
                   "real_sem": float(np.std(real) / np.sqrt(len(real))), "real_returns": [float(r) for r in real],
                   "real_seeds": real_seeds}
            atomic_write_json(out, row)
            rows.append(row)
    finally:
        if pool is not None and hasattr(pool, "close"):
            pool.close()
    atomic_write_json(run.ablation_json, {"rows": rows, "settings": settings})
    lines = [f"CMA-ES {popsize} x {rollouts} for {generations} generations at tau {tau}, seed {seed}; each "
             f"controller in {eval_episodes} fresh dreams of its variant and the same {eval_episodes} real episodes.",
             "", "| dream variant | dream score | real score | dream - real |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['dream_mean']:.1f} ± {r['dream_std']:.1f} | {r['real_mean']:.1f} ± "
              f"{r['real_std']:.1f} (s.e. {r['real_sem']:.1f}) | {r['dream_mean'] - r['real_mean']:.1f} |"
              for r in rows]
    atomic_write_text(run.ablation_md, "\n".join(lines) + "\n")
    return rows
