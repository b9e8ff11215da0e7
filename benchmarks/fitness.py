"""Benchmark: one CMA-ES generation of ``DreamFitness`` (64 x 16 short dreams, eager), the median
of a few, to compare two versions of the code on the same machine in one sitting:

    PYTHONPATH=/path/to/old python benchmarks/fitness.py --label old
    PYTHONPATH=.            python benchmarks/fitness.py --label new

(alternate them: the machines are shared, and only same-sitting ratios mean anything).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from agents.controller import ControllerConfig, init_params
from agents.fitness import DreamFitness
from worldlab.world_model import WorldModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="this code")
    p.add_argument("--steps", type=int, default=60, help="dream steps per generation")
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    wm = WorldModel.untrained()
    with torch.no_grad():
        wm.mdrnn.head.bias[-1] = -30.0  # no early ends: every dream runs all steps
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
    fit = DreamFitness(wm, cfg, 64, 16, max_steps=a.steps, compile=False)
    rng = np.random.default_rng(0)
    params = np.stack([init_params(cfg, rng, 0.1) for _ in range(64)])
    fit(params, 0)  # warm-up
    times = []
    for g in range(a.generations):
        t0 = time.perf_counter()
        fit(params, g + 1)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(f"{a.label}: median {med:.3f} s per generation of 64 x 16 dreams x {a.steps} steps "
          f"({64 * 16 * a.steps / med:,.0f} dream steps/s)")


if __name__ == "__main__":
    main()
