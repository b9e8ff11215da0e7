"""Does the dream rank its controllers? The CMA-ES seed table of one or more world models.

    python scripts/seed_table.py runs/doom_sal4_s1 runs/doom_sal4 --json docs/results/doom_cma_seeds.json

Reads ``RUN/seeds/seedS/ablation/<variant>/result.json`` (one ``scripts/ablate_dream.py`` run per
CMA-ES seed S, its ``RUN/ablation*`` moved to ``RUN/seeds/seedS/`` before the next; see
docs/RESULTS.md) and prints, per world model, the seeds' dream and real means, the Pearson and
Spearman correlations between them with a permutation p-value (100,000 shuffles, seed 0), and the
real score of the controller with the best dream mean: what ``--set cma.restarts=K`` would keep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worldlab.io import atomic_write_json  # noqa: E402
from worldlab.rundir import RunDir  # noqa: E402


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as Spearman's coefficient takes them)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def correlations(dream: np.ndarray, real: np.ndarray, shuffles: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman between ``dream`` and ``real``, and the one-sided permutation p-value of
    Spearman's (the share of shuffles of ``real`` that correlate at least as well)."""
    pearson = float(np.corrcoef(dream, real)[0, 1])
    rd, rr = ranks(dream), ranks(real)
    spearman = float(np.corrcoef(rd, rr)[0, 1])
    g = np.random.default_rng(seed)
    perms = np.argsort(g.random((shuffles, len(rr))), axis=1)  # each row a random permutation
    shuffled = rr[perms]
    sc = ((shuffled - rr.mean()) * (rd - rd.mean())).sum(1) / (len(rd) * rd.std() * rr.std())
    p = float((np.sum(sc >= spearman - 1e-12) + 1) / (shuffles + 1))
    return {"pearson": pearson, "spearman": spearman, "spearman_p_permutation": p}


def seed_rows(run: Path, variant: str) -> list[dict[str, Any]]:
    rows = []
    seeds = sorted(int(d.name[4:]) for d in (run / "seeds").glob("seed*") if d.name[4:].isdigit())
    for seed in seeds:
        f = RunDir(run / "seeds" / f"seed{seed}").ablation_result(variant)
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        rows.append({"cma_seed": seed, "dream_mean": r["dream_mean"], "dream_std": r["dream_std"],
                     "real_mean": r["real_mean"], "real_std": r["real_std"], "settings": r["settings"],
                     "real_returns": r["real_returns"]})
    return rows


def table(run: Path, variant: str) -> dict[str, Any]:
    rows = seed_rows(run, variant)
    if len(rows) < 3:
        raise ValueError(f"{run}/seeds holds {len(rows)} scored seeds of variant {variant!r}; run "
                         "scripts/ablate_dream.py once per seed first (docs/RESULTS.md), at least 3")
    bad = [r["cma_seed"] for r in rows if r["settings"].get("seed") != r["cma_seed"]]
    if bad:
        raise ValueError(f"{run}/seeds/seed{bad[0]} holds a controller evolved with another seed; move each seed's "
                         "RUN/ablation* into its own folder")
    settings = [{k: v for k, v in r["settings"].items() if k != "seed"} for r in rows]
    kinds = len({json.dumps(x, sort_keys=True) for x in settings})
    if kinds > 1:
        raise ValueError(f"{run}: the seeds were scored with different settings ({kinds} kinds); rescore them alike")
    dream, real = np.array([r["dream_mean"] for r in rows]), np.array([r["real_mean"] for r in rows])
    pick = int(np.argmax(dream))
    return {"run": str(run), "variant": variant, "settings": settings[0], "rows": rows,
            **correlations(dream, real), "real_mean_over_seeds": float(real.mean()),
            "real_std_over_seeds": float(real.std()), "best_by_dream": rows[pick]["cma_seed"],
            "best_by_dream_real": float(real[pick]), "best_real": float(real.max())}


def markdown(t: dict[str, Any]) -> list[str]:
    rows = t["rows"]
    pick = t["best_by_dream"]

    def cell(r: dict[str, Any], k: str) -> str:
        return f"**{r[k]:.1f}**" if r["cma_seed"] == pick else f"{r[k]:.1f}"

    return [f"`{t['run']}` ({t['variant']} dream; {len(rows)} seeds):", "",
            "| CMA-ES seed | " + " | ".join(str(r["cma_seed"]) for r in rows) + " |",
            "|---|" + "---|" * len(rows),
            "| dream mean | " + " | ".join(cell(r, "dream_mean") for r in rows) + " |",
            "| real mean | " + " | ".join(cell(r, "real_mean") for r in rows) + " |", "",
            f"Real means {min(r['real_mean'] for r in rows):.1f}-{t['best_real']:.1f} "
            f"({t['real_mean_over_seeds']:.1f} ± {t['real_std_over_seeds']:.1f}); dream vs real: Pearson "
            f"{t['pearson']:.2f}, Spearman {t['spearman']:.2f} (permutation p {t['spearman_p_permutation']:.4f}); "
            f"the best dream mean (seed {pick}) scores **{t['best_by_dream_real']:.1f}** in the game.", ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders with RUN/seeds/seedS/ablation/<variant>/result.json")
    p.add_argument("--variant", default="plain")
    p.add_argument("--json", default=None, help="write the tables here")
    args = p.parse_args(argv)
    try:
        tables = [table(Path(r), args.variant) for r in args.runs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for t in tables:
        print("\n".join(markdown(t)))
    if args.json:
        atomic_write_json(args.json, {"command": "python scripts/seed_table.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "tables": tables})
    return 0


if __name__ == "__main__":
    sys.exit(main())
