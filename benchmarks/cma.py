"""Benchmark: one CMA-ES generation of 64 x 16 controllers, in the dream vs in the real game.

    python benchmarks/cma.py [--steps 1000] [--real-episodes 8] [--json out.json]

Dream: a CarRacing-sized world model (z 32, LSTM 256, 5 Gaussians) and the paper's linear
controller (867 parameters); all 1,024 rollouts run as one DreamVectorEnv for ``--steps`` steps.
The done head's bias is set so no dream ends early: the timing is the worst case of every rollout
running the full 1,000 steps. Weights are untrained (the cost of a step does not depend on them).
The dream step is compiled by inductor, as the pipeline's CMA-ES runs it (config
``dream.compile``); the compilation is timed apart (``--eager``: the uncompiled step).

Real: the same controller through V and M in the real CarRacing on 2 Ray workers; the rate is
measured on ``--real-episodes`` full episodes and the 1,024-episode generation time projected
from it (running it whole would take about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--popsize", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--real-episodes", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eager", action="store_true", help="step the dream uncompiled (dream.compile=false)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from agents.controller import ControllerConfig
    from agents.fitness import DreamFitness, RealPool
    from worldlab.world_model import WorldModel

    torch.set_num_threads(os.cpu_count() or 1)
    wm = WorldModel.untrained(max_episode_steps=args.steps)
    with torch.no_grad():
        wm.mdrnn.head.bias[-1] = -30.0  # no early ends: every dream runs all steps
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
    X = np.random.default_rng(0).standard_normal((args.popsize, cfg.num_params)) * 0.1
    fit = DreamFitness(wm, cfg, args.popsize, args.rollouts, temperature=1.0, seed=0, compile=not args.eager)
    t0 = time.perf_counter()
    with torch.inference_mode():  # one step compiles the graph (once per temperature)
        fit.env.reset_torch(seed=0)
        fit.env.step_torch(torch.zeros(fit.env.num_envs, cfg.action_dim))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit(X, 1)
    dream_s = time.perf_counter() - t0
    n = args.popsize * args.rollouts
    res: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "popsize": args.popsize,
                 "rollouts": args.rollouts, "steps": args.steps, "dream_compiled": fit.env.compiled,
                 "dream_compile_s": compile_s, "dream_generation_s": dream_s,
                 "dream_steps_per_s": n * args.steps / dream_s}
    pool = RealPool("car_racing", wm, cfg, args.workers)
    try:
        jobs = [(X[i % args.popsize], i) for i in range(args.real_episodes)]
        pool.play(jobs[: args.workers])  # warm the workers
        t0 = time.perf_counter()
        out = pool.play(jobs)
        real_s = time.perf_counter() - t0
    finally:
        pool.close()
    steps = sum(r["length"] for r in out)
    rate = steps / real_s
    res.update(real_workers=args.workers, real_episodes=args.real_episodes, real_steps=steps,
               real_steps_per_s=rate, real_generation_s_projected=n * args.steps / rate,
               ratio_real_over_dream=(n * args.steps / rate) / dream_s)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
