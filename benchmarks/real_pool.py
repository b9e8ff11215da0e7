"""Benchmark: real episodes of uneven length on a RealPool, the calls split up front vs fed to
each worker as it finishes (``WorkerPool.imap``, what ``RealPool.play`` does).

    python benchmarks/real_pool.py [--task doom_take_cover] [--episodes 40] [--repeats 2] [--json out.json]
    python benchmarks/real_pool.py --run pretrained/doom_take_cover   # a trained controller (or a run's rounds')

The jobs are the same in both: ``--episodes`` seeded episodes of controllers drawn at random
(an untrained world model; on DoomTakeCover they last ~100-250 steps), or, with ``--run``, of
that run's rounds' controllers in turn (its final one for a published run) through its world
model: the shipped Doom controller's episodes last ~100 to 2,100 steps, the uneven case of the
selection and the rounds' judging. "split": the pool before ``imap``, two batches per
worker given out round-robin at once (``WorkerPool.map``); "fed": ``RealPool.play``, batches of
~1/8 of a worker's share, the next sent to whichever worker finished one. The two alternate
``--repeats`` times in one process (the machines are shared: only the ratio means anything), and
the returns are checked equal (the schedule must not change an episode).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="doom_take_cover")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--run", default=None, help="a trained run folder: its world model and rounds' controllers")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    from agents.controller import ControllerConfig, init_params
    from agents.fitness import RealPool
    from envs import get_task
    from worldlab.world_model import WorldModel

    if a.run:
        from agents.controller import load_controller
        from agents.world_models.runs import load_run
        from worldlab.rundir import RunDir

        run_cfg, wm, cfg, _ = load_run(a.run)
        a.task = run_cfg.task
        rounds = [p for p in sorted(RunDir(a.run).checkpoints.glob("controller_r*.npz")) if "_s" not in p.stem]
        ctrls = [load_controller(p)[1] for p in rounds or [RunDir(a.run).controller()]]
        jobs = [(ctrls[i % len(ctrls)], 1000 + i) for i in range(a.episodes)]
    else:
        spec = get_task(a.task)
        wm = WorldModel.untrained(task=a.task, action_space=spec.action_space, z_size=spec.z_size,
                                  hidden=spec.rnn_hidden)
        cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, a.task)
        rng = np.random.default_rng(0)
        jobs = [(init_params(cfg, rng, 1.0), 1000 + i) for i in range(a.episodes)]
    pool = RealPool(a.task, wm, cfg, a.workers)
    try:
        pool.play(jobs[:a.workers])  # warm-up: workers up, the world model fetched

        def split() -> list[dict]:
            per = max(1, math.ceil(len(jobs) / (a.workers * 2)))
            batches = [jobs[i:i + per] for i in range(0, len(jobs), per)]
            return [r for b in pool.workers.map("play", batches, False, pool.wm_ref) for r in b]

        times: dict[str, list[float]] = {"split": [], "fed": []}
        out: dict[str, list] = {}
        for _ in range(a.repeats):
            for name, fn in (("split", split), ("fed", lambda: pool.play(jobs))):
                t0 = time.perf_counter()
                res = fn()
                times[name].append(time.perf_counter() - t0)
                out[name] = [(r["return"], r["length"]) for r in res]
    finally:
        pool.close()
    if out["split"] != out["fed"]:
        raise SystemExit("the schedule changed an episode's return: a bug")
    steps = [s for _, s in out["fed"]]
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"task": a.task, "run": a.run, "episodes": a.episodes, "workers": a.workers, "repeats": a.repeats,
           "episode_steps": {"min": int(min(steps)), "median": float(np.median(steps)), "max": int(max(steps))},
           "seconds": times, "median_s": med, "speedup_fed_over_split": med["split"] / med["fed"]}
    print(f"{a.episodes} {a.task} episodes ({min(steps)}-{max(steps)} steps) on {a.workers} workers: split up front "
          f"{med['split']:.1f} s, fed as they finish {med['fed']:.1f} s (x{res['speedup_fed_over_split']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
