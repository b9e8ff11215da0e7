"""Compare controllers scored on the same real episodes: each one's mean, and its paired difference
to the first (by episode seed), with the standard error of that difference.

    python scripts/compare_evals.py RUN/eval_r0.json RUN/eval_r1.json RUN/eval_r2.json
    python scripts/compare_evals.py A.json B.json --markdown        # a table to paste into the docs
    python scripts/compare_evals.py S0/eval.json S1/eval.json S2/eval.json --across   # one recipe, several world models
    python scripts/compare_evals.py S0/a.json S0/b.json S1/a.json S1/b.json --across-pairs   # b against a, on each

The files are what ``scripts/evaluate.py --json`` and the pipeline write. A paired difference is
only defined over episodes of the same seeds: files whose seeds differ are refused. ``--across``
reads the files as one recipe run on several world models (other run seeds): it prints each
file's mean, then the mean over the files with the standard error across them (the spread of the
recipe from one world model to the next, not the episodes'); their episodes need not match.
``--across-pairs`` reads the files two by two, a baseline and a change on one world model's same
episodes: each pair's paired difference, then their mean with the standard error across world
models (what the change buys from one world model to the next) and how many of them it helped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as an evaluation JSON ({e})") from e
    if not isinstance(d, dict) or "returns" not in d or "seeds" not in d:
        raise ValueError(f"{path}: not an evaluation JSON (no 'returns' and 'seeds'); write one with "
                         "scripts/evaluate.py RUN --json FILE")
    return d


def compare(paths: list[Path]) -> list[dict]:
    """One row per file: mean, std, median, and (after the first) the paired difference to the first."""
    evals = [load(p) for p in paths]
    base = evals[0]
    order = np.argsort(base["seeds"])
    rows = []
    for i, (p, d) in enumerate(zip(paths, evals, strict=True)):
        if sorted(d["seeds"]) != sorted(base["seeds"]):
            raise ValueError(f"{p}: its episodes' seeds differ from {paths[0]}'s; score both with the same "
                             "--episodes and --seed of scripts/evaluate.py")
        r = np.asarray(d["returns"], float)[np.argsort(d["seeds"])]
        row = {"file": str(p), "episodes": len(r), "mean": float(r.mean()), "std": float(r.std()),
               "median": float(np.median(r)), "max": float(r.max())}
        if i > 0:
            diff = r - np.asarray(base["returns"], float)[order]
            row["paired_diff"] = float(diff.mean())
            row["paired_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        rows.append(row)
    return rows


def across(paths: list[Path]) -> dict:
    """The mean over the files' means (one per world model) and its standard error across them."""
    if len(paths) < 2:
        raise ValueError("--across needs the evaluations of at least two world models")
    means = np.array([float(np.mean(load(p)["returns"])) for p in paths])
    return {"files": [str(p) for p in paths], "means": means.tolist(), "mean": float(means.mean()),
            "se": float(means.std(ddof=1) / np.sqrt(len(means))), "min": float(means.min()),
            "max": float(means.max()), "n": len(means)}


def across_pairs(paths: list[Path]) -> dict:
    """Files two by two (a baseline, then a change, on one world model's same episodes): each pair's
    paired difference, and their mean with its standard error across the world models."""
    if len(paths) < 4 or len(paths) % 2:
        raise ValueError(f"--across-pairs needs pairs of files (a baseline, then the change) from at least two "
                         f"world models; got {len(paths)} file(s)")
    pairs = []
    for base, other in zip(paths[::2], paths[1::2], strict=True):
        b, o = compare([base, other])
        pairs.append({"baseline": str(base), "change": str(other), "baseline_mean": b["mean"],
                      "change_mean": o["mean"], "diff": o["paired_diff"], "se": o["paired_se"]})
    diffs = np.array([p["diff"] for p in pairs])
    return {"pairs": pairs, "mean": float(diffs.mean()), "se": float(diffs.std(ddof=1) / np.sqrt(len(diffs))),
            "positive": int((diffs > 0).sum()), "n": len(diffs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", type=Path, help="evaluation JSONs; the first is the baseline")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--across", action="store_true",
                    help="the files are one recipe on several world models: their mean and its standard error across them")
    ap.add_argument("--across-pairs", action="store_true",
                    help="the files are pairs (a baseline, then a change) on several world models: the change's paired "
                         "difference on each, and their mean with its standard error across them")
    args = ap.parse_args(argv)
    if args.across and args.across_pairs:
        print("compare_evals.py: error: --across and --across-pairs read the files differently; pass one of them",
              file=sys.stderr)
        return 2
    try:
        summary = across(args.evals) if args.across else None
        paired = across_pairs(args.evals) if args.across_pairs else None
        rows = compare(args.evals) if not (args.across or args.across_pairs) else []
    except ValueError as e:
        print(f"compare_evals.py: error: {e}", file=sys.stderr)
        return 2
    if paired is not None:
        for p in paired["pairs"]:
            print(f"{p['change']} against {p['baseline']}: {p['change_mean']:.1f} against {p['baseline_mean']:.1f}, "
                  f"paired {p['diff']:+.1f} ± {p['se']:.1f}")
        print(f"over {paired['n']} world models: {paired['mean']:+.1f} ± {paired['se']:.1f} (standard error across "
              f"them); the change scored higher on {paired['positive']} of {paired['n']}")
        return 0
    if summary is not None:
        for f, m in zip(summary["files"], summary["means"], strict=True):
            print(f"{f}: {m:.1f}")
        print(f"over {summary['n']} world models: {summary['mean']:.1f} ± {summary['se']:.1f} (standard error "
              f"across them; min {summary['min']:.1f}, max {summary['max']:.1f})")
        return 0
    if args.markdown:
        print("| controller | real score (mean ± std) | median | max | paired difference to the first (± s.e.) |")
        print("|---|---|---|---|---|")
    for row in rows:
        diff = (f"{row['paired_diff']:+.1f} ± {row['paired_se']:.1f}" if "paired_diff" in row else "")
        if args.markdown:
            print(f"| `{row['file']}` | {row['mean']:.1f} ± {row['std']:.1f} | {row['median']:.1f} | "
                  f"{row['max']:.0f} | {diff} |")
        else:
            print(f"{row['file']}: {row['mean']:.1f} ± {row['std']:.1f} over {row['episodes']} episodes "
                  f"(median {row['median']:.1f}, max {row['max']:.0f})" + (f"; paired {diff}" if diff else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
