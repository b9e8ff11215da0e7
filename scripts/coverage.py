"""Print the coverage of collected data: speed percentiles, tiles reached, steps off the road and
steps that earn a tile, and the return (CarRacing; other tasks: episodes and return only).

    python scripts/coverage.py runs/cr            # a run folder: one row per collected round
    python scripts/coverage.py /tmp/scripted      # a folder of rollout shards (scripts/collect.py --out)
"""

from __future__ import annotations

import argparse
import sys

from agents.world_models.report import coverage_report
from worldlab.storage import CorruptShardError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a run folder or a folder of rollout shards")
    args = p.parse_args(argv)
    try:
        print(coverage_report(args.path))
    except (FileNotFoundError, CorruptShardError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
