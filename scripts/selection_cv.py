"""How much picking the final controller among the rounds by real episodes buys, cross-validated.

Each world model needs two independent sets of real episodes for every round's controller: a
``selection.json`` (``eval.select_episodes``) and one ``evaluate.py --json`` file per round, the
same seeds for every round. Name them as ``SELECTION=EVALS`` (``{k}`` in EVALS is the round), or
give a run folder for ``RUN/selection.json=RUN/eval_r{k}.json``. For each selection margin the
pick (``agents.world_models.stages.pick_round``) is made on one set and scored on the other, both
ways, against the last round's controller on that set::

    python scripts/selection_cv.py docs/results/doom_sel_s{2,3,4}_selection.json ...   # see docs/RESULTS.md
    python scripts/selection_cv.py runs/my_run --margins 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="SELECTION_JSON=EVALS_WITH_{k}, or a run folder")
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                   help="eval.select_margin values to compare (paired standard errors)")
    args = p.parse_args(argv)
    from agents.world_models.stages import pick_round

    sets = []
    for spec in args.models:
        sel_path, evals_pattern = spec.split("=", 1) if "=" in spec else (f"{spec}/selection.json",
                                                                          f"{spec}/eval_r{{k}}.json")
        try:
            sel = json.loads(Path(sel_path).read_text())
            a = np.asarray([r["returns"] for r in sel["rounds"]], dtype=np.float64)
            evals = [json.loads(Path(evals_pattern.format(k=k)).read_text()) for k in range(len(a))]
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"error: {spec}: {e}; run the selection (--set eval.select_episodes=N) and evaluate.py --json on "
                  f"every round's controller first", file=sys.stderr)
            return 2
        if any(e["seeds"] != evals[0]["seeds"] for e in evals):
            print(f"error: {spec}: the rounds' evaluations were played on different seeds; score every round "
                  f"with the same evaluate.py --seed", file=sys.stderr)
            return 2
        sets.append((a, np.asarray([e["returns"] for e in evals], dtype=np.float64)))
    for m in args.margins:
        gains = []
        for a, b in sets:
            for pick_on, score_on in ((a, b), (b, a)):
                k = pick_round(pick_on, m)
                gains.append(score_on[k].mean() - score_on[-1].mean())
        print(f"margin {m:g}: {np.mean(gains):+.1f} over the last round on average "
              f"({len(gains)} picks, worst {min(gains):+.1f}): " + " ".join(f"{g:+.0f}" for g in gains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
