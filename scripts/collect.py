"""Collect rollouts of a real task into compressed shards, on Ray (or local processes).

    python scripts/collect.py car_racing --episodes 100 --workers 2 --out runs/cr/data
"""

from __future__ import annotations

import argparse
import sys

from agents.collect import collect
from agents.policies import POLICIES
from agents.pool import BACKENDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="car_racing, doom_take_cover, or a Gymnasium id (image observations)")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes the folder should hold")
    p.add_argument("--workers", type=int, default=2, help="Ray rollout workers (0 = in this process, no Ray)")
    p.add_argument("--policy", choices=[n for n in POLICIES if n != "controller"], default="brownian",
                   help="data-collection policy: brownian (random walk), holding (the random walk with long holds of one "
                        "action), driving (a walk that drives), scripted "
                        "(CarRacing: follows the track with excursions off it; reads the env's state), "
                        "random_controller (the paper's)")
    p.add_argument("--out", required=True, help="output folder (created; its parent must exist)")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode i uses a seed derived from (seed, i)")
    p.add_argument("--max-steps", type=int, default=None, help="cut episodes at this many steps")
    p.add_argument("--backend", choices=BACKENDS, default="ray",
                   help="ray (default) or processes: local processes, for a machine without Ray")
    p.add_argument("--address", default=None, help="join a running Ray cluster (HOST:PORT) instead of a local Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    env_kwargs = {"max_episode_steps": args.max_steps} if args.max_steps else {}
    from worldlab.interrupt import interruptible

    with interruptible() as stop:
        try:
            m = collect(args.task, args.out, args.episodes, workers=args.workers, policy=args.policy,
                        seed=args.seed, address=args.address, env_kwargs=env_kwargs,
                        progress=not args.no_progress, backend=args.backend)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if stop.signum:
        from worldlab.storage import Manifest

        kept = Manifest(args.out).num_episodes  # an empty index when nothing was written yet
        return stop.exit(f"{kept} finished episodes are kept in {args.out}; the same command collects the rest")
    print(f"{m.num_episodes} episodes, {m.num_steps} steps in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
