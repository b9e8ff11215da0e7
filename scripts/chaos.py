"""Damage copies of a finished run folder in every way of the corruption matrix (truncated,
bit-flipped or deleted shards, checkpoints, controller, CMA-ES state; a deleted manifest; an
invalid config; a foreign checkpoint), resume each, and print what was detected or repaired
(agents/chaos.py). The run folder itself is never touched.

    python scripts/chaos.py runs/car_racing
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (copied for each case)")
    p.add_argument("--cases", nargs="+", default=None, help="names of the cases to run (default: all)")
    args = p.parse_args(argv)
    from agents.chaos import CASES, matrix_table, run_matrix

    cases = CASES
    if args.cases:
        known = {c.name: c for c in CASES}
        unknown = [c for c in args.cases if c not in known]
        if unknown:
            print(f"error: unknown case(s) {unknown}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
        cases = [known[c] for c in args.cases]
    try:
        rows = run_matrix(args.run, cases, say=lambda m: print(m, file=sys.stderr, flush=True))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(matrix_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
