"""Average controllers' parameters into one controller: e.g. the last rounds' controllers of a run,
whose CMA-ES means wander round to round around one plateau (a parameter average, as Polyak's, of
the searches' endpoints; each is a linear map of the same world model's [z, h], so their average is
one too).

    python scripts/average_controllers.py RUN/checkpoints/controller_r{4,5,6}.npz --out RUN/controller_avg456.npz
    python scripts/evaluate.py RUN --controller RUN/controller_avg456.npz --json RUN/eval_avg456.json

Controllers of other shapes or actions (another config) are refused. Every M a run fine-tunes
keeps the meaning of h only approximately: score the average in the real game before trusting it
(the command above, then ``scripts/compare_evals.py`` against the last round on the same episodes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agents.controller import ControllerConfig, average_controllers, save_controller


def average(paths: list[Path], weights: list[float] | None = None) -> tuple[ControllerConfig, np.ndarray, str]:
    """The config the controllers share, their (weighted) parameter average and where they were
    trained (``train_in`` of their files: one place, or "mixed")."""
    cfg, params, extras = average_controllers(paths, weights)
    places = {extra.get("train_in", "dream") for extra in extras}
    return cfg, params, places.pop() if len(places) == 1 else "mixed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("controllers", nargs="+", type=Path, help="controller .npz files of one run")
    ap.add_argument("--out", type=Path, required=True, help="where to write the averaged controller (.npz)")
    ap.add_argument("--weights", type=float, nargs="+", help="one weight per controller (default: equal)")
    args = ap.parse_args(argv)
    try:
        cfg, params, train_in = average(args.controllers, args.weights)
    except (ValueError, FileNotFoundError) as e:
        print(f"average_controllers.py: error: {e}", file=sys.stderr)
        return 2
    save_controller(args.out, cfg, params, averaged=[str(p) for p in args.controllers],
                    weights=args.weights or [1.0] * len(args.controllers), train_in=train_in)
    print(f"wrote {args.out}: the average of {len(args.controllers)} controllers ({cfg.num_params} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
