"""What each dream mechanism buys: one controller per dream variant, evolved on a run's world model
with the same seeds, scored in its dream and in the same real episodes (agents/ablation.py).

    python scripts/ablate_dream.py runs/car_racing --variants plain dropout mid dropout+mid
    python scripts/ablate_dream.py runs/car_ens --variants plain ensemble penalty --generations 60

Variants combine plain, dropout, mid, ensemble, step, penalty with '+'. Writes RUN/ablation.md.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder with a trained world model")
    p.add_argument("--variants", nargs="+", default=["plain", "dropout", "mid", "dropout+mid"])
    p.add_argument("--generations", type=int, default=40)
    p.add_argument("--popsize", type=int, default=16)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--eval-episodes", type=int, default=30, help="dream and real episodes per variant")
    p.add_argument("--temperature", type=float, default=None, help="dream tau (default: the run's)")
    p.add_argument("--dream-steps", type=int, default=None, help="dream episode limit (default: the run's)")
    p.add_argument("--real-steps", type=int, default=None, help="real episode limit (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="real-game workers")
    p.add_argument("--backend", choices=("ray", "processes"), default="processes")
    p.add_argument("--address", default=None, help="join a Ray cluster (HOST:PORT; with --backend ray)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from worldlab.interrupt import interruptible

    with interruptible() as stop:
        try:
            import torch

            from agents.ablation import ablate
            from agents.world_models.stages import say

            if args.threads:
                torch.set_num_threads(args.threads)
            rows = ablate(args.run, args.variants, args.generations, args.popsize, args.rollouts,
                          args.eval_episodes, args.temperature, args.dream_steps, args.real_steps, args.seed,
                          args.workers, args.backend, args.address, progress=not args.no_progress, say=say)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if stop.signum:
        return stop.exit(f"finished variants are kept in {args.run}/ablation; the same command goes on")
    for r in rows:
        print(f"{r['variant']:<16} dream {r['dream_mean']:8.1f} ± {r['dream_std']:<7.1f} real {r['real_mean']:8.1f} "
              f"± {r['real_std']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
