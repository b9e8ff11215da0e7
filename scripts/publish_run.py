"""Publish a finished run for others to watch and evaluate: its checkpoints in half precision,
config, scores and report, without rollout data, under 40 MB (agents/world_models/publish.py).

    python scripts/publish_run.py runs/car_racing pretrained/car_racing
    python scripts/watch.py pretrained/car_racing
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder")
    p.add_argument("out", help="where to publish it (e.g. pretrained/car_racing)")
    p.add_argument("--limit-mb", type=float, default=40.0, help="refuse to publish more than this")
    p.add_argument("--force", action="store_true", help="replace a publication that scored higher")
    p.add_argument("--full-precision", action="store_true", help="keep float32 weights")
    args = p.parse_args(argv)
    try:
        from agents.world_models.publish import describe, publish_run

        manifest = publish_run(args.run, args.out, args.limit_mb, args.force, half=not args.full_precision)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"published {args.run} -> {args.out}: {describe(manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
