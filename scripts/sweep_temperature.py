"""Dream score vs real score per temperature tau (Ray Tune, one trial per tau), as in the paper's table.

    python scripts/sweep_temperature.py runs/doom_take_cover --taus 0.5 1.0 1.15 1.3 --generations 30
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder with a trained world model")
    p.add_argument("--taus", type=float, nargs="+", default=[0.5, 1.0, 1.15, 1.3])
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--popsize", type=int, default=16)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--eval-episodes", type=int, default=10, help="real and dream episodes per tau")
    p.add_argument("--dream-steps", type=int, default=None, help="dream episode limit (default: the task's)")
    p.add_argument("--real-steps", type=int, default=None, help="real episode limit (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--address", default=None, help="join a Ray cluster (HOST:PORT)")
    args = p.parse_args(argv)
    try:
        from agents.sweep import temperature_sweep

        rows = temperature_sweep(args.run, args.taus, args.generations, args.popsize, args.rollouts,
                                 args.eval_episodes, args.dream_steps, args.real_steps, args.seed, args.address)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("tau   dream              real")
    for r in rows:
        print(f"{r['temperature']:<5g} {r['dream_mean']:8.1f} ± {r['dream_std']:<7.1f} "
              f"{r['real_mean']:8.1f} ± {r['real_std']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
