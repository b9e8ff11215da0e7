"""Score a run's controller in the real game on Ray workers, or a Stable-Baselines3 policy trained
in its dream (it plays on [z, h]: V encodes each frame, M's LSTM carries h).

    python scripts/evaluate.py runs/car_racing --episodes 100 --workers 2
    python scripts/evaluate.py runs/car_racing --sb3 ppo_dream.zip          # algorithm read from the zip
    python scripts/evaluate.py RUN --controller C.npz --episodes-of RUN/selection.json --json C.json
        # the episodes another file played (its seeds and limit): compare_evals.py pairs the two
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from agents.pool import BACKENDS
    from agents.sb3_policy import add_sb3_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder written by scripts/dream_train.py")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--backend", choices=BACKENDS, default="ray",
                   help="ray (default) or processes: local processes, for a machine without Ray")
    p.add_argument("--address", default=None, help="join a Ray cluster (HOST:PORT)")
    p.add_argument("--controller", default=None,
                   help="score this controller file instead of RUN/checkpoints/controller.npz "
                        "(e.g. RUN/tau_sweep/tau_1.3/controller.npz)")
    p.add_argument("--episodes-of", default=None, metavar="JSON",
                   help="play the episodes this evaluation JSON, selection.json or rounds.json played (its seeds and "
                        "episode limit; --episodes and --seed are then ignored)")
    add_sb3_arguments(p, "score")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    args = p.parse_args(argv)
    from worldlab.interrupt import interruptible

    with interruptible() as stop:
        try:
            from agents.world_models.runs import evaluate_run

            res = evaluate_run(args.run, args.episodes, args.workers, seed=args.seed, max_steps=args.max_steps,
                               address=args.address, backend=args.backend,
                               controller=args.controller, sb3=args.sb3, sb3_algo=args.sb3_algo,
                               progress=not args.no_progress, episodes_of=args.episodes_of)
        except (ValueError, FileNotFoundError, ConnectionError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if stop.signum:
        return stop.exit("the evaluation was not finished and nothing was written; run the command again")
    if args.json:
        from worldlab.io import atomic_write_json

        atomic_write_json(args.json, res)
    print(json.dumps({k: v for k, v in res.items() if k != "returns"}))
    limit = f" of at most {res['max_steps']} steps" if res.get("max_steps") else ""
    lo, hi = min(res["lengths"]), max(res["lengths"])
    lasted = f"all {lo} steps" if lo == hi else f"{lo}-{hi} steps, mean {sum(res['lengths']) / len(res['lengths']):.1f}"
    print(f"{res['task']}: {res['mean']:.1f} ± {res['std']:.1f} over {res['episodes']} episodes{limit} ({lasted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
