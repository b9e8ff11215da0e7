"""Benchmark: a CMA-ES generation in the dream with and without shrinking the batch as dreams end.

    python benchmarks/dream_shrink.py                          # untrained Doom-size M, geometric ends
    python benchmarks/dream_shrink.py --run runs/doom_take_cover --members 3 --done-mode max
    python benchmarks/dream_shrink.py --json benchmarks/results/dream_shrink.json

``DreamFitness`` steps a population's dreams as one batch. Without shrinking, the batch runs at its
full size until the last dream ends, so a generation costs the longest dream's length times the
population; with it (``DreamFitness(shrink=True)``, the default), the dreams still running move to a
batch half as large or smaller each time half of them have ended, and a generation costs about the
dreams' summed lengths. Doom's dreams end at very different times (the best survive the whole
2,100 steps, most die in a few hundred), which is where this pays.

Both variants evaluate the same population (``--popsize`` x ``--rollouts`` dreams of at most
``--steps`` steps, eager, one generation seed per round) in the same process, interleaved round by
round (the machines are shared: only same-sitting ratios mean anything); the median round of each
and the median of the per-round ratios are reported, with the dreams' mean length and the longest.

World model: ``--run`` (a trained one: its dreams end where its M says) or, by default, a freshly
initialised Doom-size M (z 64, LSTM 512, 5 Gaussians, one action in [-1, 1]) whose done head ends a
dream with probability about ``--done-prob`` per step (geometric lengths, mean about 1 / p).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a run folder's world model (default: untrained, Doom sizes)")
    p.add_argument("--popsize", type=int, default=32)
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--steps", type=int, default=2100, help="the dreams' step limit")
    p.add_argument("--rounds", type=int, default=3, help="generations timed per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--members", type=int, default=None, help="Ms to dream with (default: all the run has)")
    p.add_argument("--done-mode", default="member", choices=("member", "max"))
    p.add_argument("--done-prob", type=float, default=0.003, help="untrained M: the chance of an end per step")
    p.add_argument("--sigma", type=float, default=0.1, help="the population's spread around zero parameters")
    p.add_argument("--temperature", type=float, default=1.15)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    if a.popsize < 1 or a.rollouts < 1 or a.steps < 1 or a.rounds < 1:
        p.error("--popsize, --rollouts, --steps and --rounds must be >= 1")
    if not 0 < a.done_prob < 1:
        p.error(f"--done-prob must be in (0, 1), got {a.done_prob}")
    torch.set_num_threads(a.threads)

    from agents.controller import ControllerConfig
    from agents.fitness import DreamFitness
    from worldlab.world_model import WorldModel

    if a.run:
        wm = WorldModel.load(a.run)
    else:
        wm = WorldModel.untrained(task="doom_take_cover", action_space={"type": "box", "shape": [1], "low": [-1.0], "high": [1.0]},
                                  max_episode_steps=a.steps, z_size=64, hidden=512, seed=0)
        with torch.no_grad():  # the done logit's bias: an end with probability about p per step
            wm.mdrnn.head.bias[-1] = math.log(a.done_prob / (1 - a.done_prob))
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    kw = {"members": a.members, "done_mode": a.done_mode} if wm.num_members > 1 or a.members else {}
    fits = {name: DreamFitness(wm, cfg, a.popsize, a.rollouts, a.temperature, a.steps, seed=0, shrink=shrink, **kw)
            for name, shrink in (("full batch", False), ("shrink", True))}
    params = np.random.default_rng(0).standard_normal((a.popsize, cfg.num_params)) * a.sigma
    seconds: dict[str, list[float]] = {k: [] for k in fits}
    lengths: list[float] = []
    longest = 0
    for r in range(a.rounds):
        for name, fit in fits.items():
            t = time.perf_counter()
            fit.returns(params, r)
            seconds[name].append(time.perf_counter() - t)
        # the dreams' lengths this round, as the full batch dreamt them
        lens = fits["full batch"].last_lengths.cpu().numpy()
        lengths.append(float(lens.mean()))
        longest = max(longest, int(lens.max()))
    ratios = [f / s for f, s in zip(seconds["full batch"], seconds["shrink"], strict=True)]
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {a.threads} threads",
        "world_model": a.run or f"untrained Doom sizes, done probability {a.done_prob} per step",
        "dreams": a.popsize * a.rollouts, "step_limit": a.steps, "members": (a.members or wm.num_members) if kw else 1,
        "done_mode": a.done_mode, "mean_dream_length": statistics.mean(lengths), "longest_dream": longest,
        "seconds_full_batch": statistics.median(seconds["full batch"]),
        "seconds_shrink": statistics.median(seconds["shrink"]),
        "speedup": statistics.median(ratios), "speedup_rounds": ratios,
    }
    print(f"{out['dreams']} dreams of at most {a.steps} steps (mean length {out['mean_dream_length']:.0f}, "
          f"longest {longest}); {out['world_model']}; members {out['members']}, done {a.done_mode}")
    print(f"one generation: full batch {out['seconds_full_batch']:.2f} s, shrinking {out['seconds_shrink']:.2f} s: "
          f"**{out['speedup']:.2f}x** (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    if a.json:
        from worldlab.io import atomic_write_json

        atomic_write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
