"""Steps/s of Gymnasium's CarRacing-v3 vs worldlab's FastCarRacing, on one core.

Both environments run in this one process, pinned to one CPU with one BLAS /
OpenMP thread, over the same seeds and the same brownian-noise action
sequence. Episodes are interleaved (gymnasium seed 0, ours seed 0, gymnasium
seed 1, ...) so that drifts in machine load hit both alike, and the median
over repeats is reported. Steps/s are given per wall-clock second and per
second of this process's CPU time (the two agree on an idle machine; on a
shared one the CPU figure leaves out the time other processes held the
core). Every episode's trajectory (observation, reward, terminated,
truncated, info at every step) is checked to be bit-identical.

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
    gymnasium_steps_per_cpu_s: float
    fast_steps_per_cpu_s: float
    cpu_ratio: float
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


@dataclass
class Timing:
    """Time spent in ``step()`` and steps taken, summed over episodes."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    steps: int = 0

    def add(self, wall_s: float, cpu_s: float, steps: int) -> None:
        """Account for one more episode."""
        self.wall_s += wall_s
        self.cpu_s += cpu_s
        self.steps += steps


def run_episode(env: gym.Env, seed: int, actions: list[np.ndarray], timing: Timing) -> Trajectory:
    """Reset with ``seed``, step through ``actions`` until the episode ends; time the steps."""
    obs, info = env.reset(seed=seed)
    trajectory: Trajectory = [(obs, info)]
    step = env.step
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        result = step(action)
        trajectory.append(result)
        if result[2] or result[3]:
            break
    timing.add(time.perf_counter() - wall, time.process_time() - cpu, len(trajectory) - 1)
    return trajectory


def identical(a: Trajectory, b: Trajectory) -> bool:
    """Whether two episodes produced the same observations, rewards, flags and infos."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
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

    ref_env, fast_env = gym.make(REFERENCE_ID), gym.make(ENV_ID)
    # Warm up both (imports, fonts, first surfaces) outside the measurement.
    for env in (ref_env, fast_env):
        run_episode(env, args.seeds[0], actions[args.seeds[0]][:20], Timing())

    ref_runs: list[Timing] = []
    fast_runs: list[Timing] = []
    same = True
    for repeat in range(args.repeats):
        ref, fast = Timing(), Timing()
        for seed in args.seeds:
            ref_traj = run_episode(ref_env, seed, actions[seed], ref)
            fast_traj = run_episode(fast_env, seed, actions[seed], fast)
            same = same and identical(ref_traj, fast_traj)
            del ref_traj, fast_traj
        ref_runs.append(ref)
        fast_runs.append(fast)
        print(
            f"repeat {repeat}: gymnasium {ref.steps / ref.wall_s:7.1f} steps/s "
            f"({ref.steps / ref.cpu_s:7.1f} per CPU s), fast {fast.steps / fast.wall_s:7.1f} "
            f"steps/s ({fast.steps / fast.cpu_s:7.1f} per CPU s), identical={same}",
            flush=True,
        )
    ref_env.close()
    fast_env.close()

    def median(runs: list[Timing], cpu: bool) -> float:
        return statistics.median(r.steps / (r.cpu_s if cpu else r.wall_s) for r in runs)

    result = Result(
        steps_per_episode=args.steps,
        seeds=list(args.seeds),
        repeats=args.repeats,
        gymnasium_steps_per_s=round(median(ref_runs, False), 1),
        fast_steps_per_s=round(median(fast_runs, False), 1),
        ratio=round(median(fast_runs, False) / median(ref_runs, False), 2),
        gymnasium_steps_per_cpu_s=round(median(ref_runs, True), 1),
        fast_steps_per_cpu_s=round(median(fast_runs, True), 1),
        cpu_ratio=round(median(fast_runs, True) / median(ref_runs, True), 2),
        identical=same,
        steps_per_repeat=fast_runs[-1].steps,
        gymnasium_runs_steps_per_s=[round(r.steps / r.wall_s, 1) for r in ref_runs],
        fast_runs_steps_per_s=[round(r.steps / r.wall_s, 1) for r in fast_runs],
    )
    print(
        f"median over {args.repeats} repeats of {result.steps_per_repeat} steps: "
        f"gymnasium {result.gymnasium_steps_per_s} steps/s, fast {result.fast_steps_per_s} "
        f"steps/s, ratio {result.ratio}x (per CPU second: {result.gymnasium_steps_per_cpu_s} "
        f"vs {result.fast_steps_per_cpu_s}, {result.cpu_ratio}x); bit-identical: {same}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if not same:
        raise SystemExit("FastCarRacing diverged from gymnasium's CarRacing-v3")
    return result


if __name__ == "__main__":
    main()
