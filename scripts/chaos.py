"""Damage copies of a finished run folder in every way of the corruption matrix (truncated,
bit-flipped or deleted shards, checkpoints, controller, CMA-ES state; a deleted manifest; an
invalid config; a foreign checkpoint), resume each, and print what was detected or repaired
(agents/chaos.py). The run folder itself is never touched.

With ``--kills K``, also run the run's task in the smoke preset in a temporary folder, SIGKILL it
at a random point inside every stage K times in a row (resuming after each kill), and print where
each kill landed, what the next start said, and whether the finished run is whole (nothing lost,
duplicated or half-written).

    python scripts/chaos.py runs/car_racing
    python scripts/chaos.py runs/car_racing --kills 2 --seed 1
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (copied for each case)")
    p.add_argument("--cases", nargs="+", default=None, help="names of the cases to run (default: all)")
    p.add_argument("--kills", type=int, default=0, metavar="K",
                   help="also SIGKILL a smoke run of the same task K times inside every stage, then resume")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    args = p.parse_args(argv)
    if args.kills < 0:
        print(f"error: --kills must be >= 0, got {args.kills}", file=sys.stderr)
        return 2
    from agents.chaos import CASES, kill_and_resume, kills_table, matrix_table, run_matrix

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
    ok = all(r["ok"] for r in rows)
    if args.kills:
        import json
        import tempfile
        from pathlib import Path

        from worldlab.rundir import RunDir

        task = json.loads(RunDir(args.run).config_json.read_text())["task"]
        with tempfile.TemporaryDirectory(prefix="chaos_kills_") as tmp:
            result = kill_and_resume(task, Path(tmp) / "run", kills_per_stage=args.kills, seed=args.seed,
                                     say=lambda m: print(m, file=sys.stderr, flush=True))
        print()
        print(kills_table(result))
        ok = ok and result["exit"] == 0 and not result["problems"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
