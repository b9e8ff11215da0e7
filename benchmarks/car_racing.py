"""Steps/s of Gymnasium's CarRacing-v3 vs worldlab's FastCarRacing, on one core.

Both environments run in this one process, pinned to one CPU with one BLAS /
OpenMP thread, over the same seeds and the same brownian-noise action
sequence. Repeats are interleaved (gymnasium, ours, gymnasium, ours, ...) so
that drifts in machine load hit both alike, and the median over repeats is
reported. Every repeat's trajectories (observation, reward, terminated,
truncated, info at every step) are checked to be bit-identical.

Usage::

    python benchmarks/car_racing.py [--steps 1000] [--seeds 0 1 2] [--repeats 5]
        [--json PATH]
"""

from __future__ import annotations

import os

# One thread everywhere; must be set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from envs.car_racing import ENV_ID, register_envs  # noqa: E402

REFERENCE_ID = "CarRacing-v3"


@dataclass
class Result:
    """What one benchmark run measured."""

    steps_per_episode: int
    seeds: list[int]
    repeats: int
    gymnasium_steps_per_s: float
    fast_steps_per_s: float
    ratio: float
    identical: bool
    steps_per_repeat: int
    gymnasium_runs_steps_per_s: list[float] = field(default_factory=list)
    fast_runs_steps_per_s: list[float] = field(default_factory=list)
    python: str = platform.python_version()
    machine: str = platform.machine()


def brownian_actions(seed: int, steps: int) -> list[np.ndarray]:
    """A random walk in action space (clipped to the box): the car drives, spins, leaves the road."""
    rng = np.random.default_rng(seed)
    low = np.array([-1.0, 0.0, 0.0])
    high = np.array([1.0, 1.0, 1.0])
    action = np.zeros(3)
    actions = []
    for _ in range(steps):
        action = np.clip(action + rng.normal(0.0, 0.3, size=3), low, high)
        actions.append(action.astype(np.float32))
    return actions


Trajectory = list[tuple[Any, ...]]


def run_episodes(
    env_id: str, seeds: list[int], actions: dict[int, list[np.ndarray]]
) -> tuple[float, int, list[Trajectory]]:
    """Run one episode per seed; return (seconds spent in step(), steps, trajectories)."""
    env = gym.make(env_id)
    elapsed = 0.0
    steps = 0
    trajectories = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            trajectory: Trajectory = [(obs, info)]
            step = env.step
            start = time.perf_counter()
            for action in actions[seed]:
                result = step(action)
                trajectory.append(result)
                if result[2] or result[3]:
                    break
            elapsed += time.perf_counter() - start
            steps += len(trajectory) - 1
            trajectories.append(trajectory)
    finally:
        env.close()
    return elapsed, steps, trajectories


def identical(a: list[Trajectory], b: list[Trajectory]) -> bool:
    """Whether two runs produced the same observations, rewards, flags and infos."""
    if len(a) != len(b):
        return False
    for ta, tb in zip(a, b, strict=True):
        if len(ta) != len(tb):
            return False
        for ra, rb in zip(ta, tb, strict=True):
            if not np.array_equal(ra[0], rb[0]) or ra[1:] != rb[1:]:
                return False
    return True


def main(argv: list[str] | None = None) -> Result:
    """Parse arguments, run the interleaved benchmark, print and optionally save the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per episode (max 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    args = parser.parse_args(argv)

    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    register_envs()
    actions = {seed: brownian_actions(seed, args.steps) for seed in args.seeds}

    # Warm up both (imports, fonts, first surfaces) outside the measurement.
    for env_id in (REFERENCE_ID, ENV_ID):
        run_episodes(env_id, args.seeds[:1], {args.seeds[0]: actions[args.seeds[0]][:20]})

    ref_rates: list[float] = []
    fast_rates: list[float] = []
    same = True
    steps = 0
    for repeat in range(args.repeats):
        ref_time, ref_steps, ref_traj = run_episodes(REFERENCE_ID, args.seeds, actions)
        fast_time, steps, fast_traj = run_episodes(ENV_ID, args.seeds, actions)
        same = same and ref_steps == steps and identical(ref_traj, fast_traj)
        ref_rates.append(ref_steps / ref_time)
        fast_rates.append(steps / fast_time)
        print(
            f"repeat {repeat}: gymnasium {ref_rates[-1]:7.1f} steps/s, "
            f"fast {fast_rates[-1]:7.1f} steps/s, identical={same}",
            flush=True,
        )
        del ref_traj, fast_traj

    ref_median = statistics.median(ref_rates)
    fast_median = statistics.median(fast_rates)
    result = Result(
        steps_per_episode=args.steps,
        seeds=list(args.seeds),
        repeats=args.repeats,
        gymnasium_steps_per_s=round(ref_median, 1),
        fast_steps_per_s=round(fast_median, 1),
        ratio=round(fast_median / ref_median, 2),
        identical=same,
        steps_per_repeat=steps,
        gymnasium_runs_steps_per_s=[round(r, 1) for r in ref_rates],
        fast_runs_steps_per_s=[round(r, 1) for r in fast_rates],
    )
    print(
        f"median over {args.repeats} repeats of {steps} steps: gymnasium "
        f"{result.gymnasium_steps_per_s} steps/s, fast {result.fast_steps_per_s} steps/s, "
        f"ratio {result.ratio}x, bit-identical: {result.identical}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if not same:
        raise SystemExit("FastCarRacing diverged from gymnasium's CarRacing-v3")
    return result


if __name__ == "__main__":
    main()
