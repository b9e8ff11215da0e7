"""Benchmark: ViZDoom TakeCover steps/s, and rollout collection with 1 vs 2 Ray workers.

    python benchmarks/collect.py [--episodes 8] [--max-steps 300] [--json out.json]

Parallel efficiency = frames/s with 2 workers / frames/s with 1 worker, both measured in this
run on a local Ray (started once; actor start-up is included in each timing, since a user pays it).
The two settings alternate for ``--repeats`` rounds (1, 2, 1, 2, ...) and the speedup reported is
the median of the per-round ratios: on a shared machine one process alone varies by +-20% from one
minute to the next, so a single pair of timings says more about the neighbours than about us.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def doom_steps_per_second(steps: int = 5000) -> float:
    import envs

    env = envs.make("doom_take_cover")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0, n = time.perf_counter(), 0
    while n < steps:
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, (1,)).astype(np.float32))
        n += 1
        if term or trunc:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return n / dt


def collection_rate(task: str, workers: int, episodes: int, max_steps: int, root: Path) -> dict[str, float]:
    from agents.collect import collect

    out = root / f"{task}-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = collect(task, out, episodes, workers=workers, seed=0, progress=False,
                env_kwargs={"max_episode_steps": max_steps})
    dt = time.perf_counter() - t0
    return {"workers": workers, "episodes": m.num_episodes, "frames": m.num_steps, "seconds": dt,
            "frames_per_s": m.num_steps / dt}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="car_racing")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from worldlab.ray_utils import init_ray

    res: dict = {"cpus": os.cpu_count()}
    res["doom_take_cover_steps_per_s"] = doom_steps_per_second()
    init_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        collection_rate(args.task, 2, 2, 50, Path(tmp))  # warm the worker import path
        rounds = []
        for _ in range(args.repeats):
            one = collection_rate(args.task, 1, args.episodes, args.max_steps, Path(tmp))
            two = collection_rate(args.task, 2, args.episodes, args.max_steps, Path(tmp))
            rounds.append({"one_worker": one, "two_workers": two,
                           "speedup": two["frames_per_s"] / one["frames_per_s"]})
            print(f"1 worker {one['frames_per_s']:.0f} frames/s, 2 workers {two['frames_per_s']:.0f} frames/s: "
                  f"{rounds[-1]['speedup']:.2f}x", flush=True)
    mid = sorted(rounds, key=lambda r: r["speedup"])[len(rounds) // 2]
    res.update(task=args.task, rounds=rounds, one_worker=mid["one_worker"], two_workers=mid["two_workers"],
               parallel_speedup=mid["speedup"], speedups=[r["speedup"] for r in rounds])
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
