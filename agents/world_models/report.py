"""The run report: loss curves, the CMA-ES curve and links to videos, as ``RUN/report.md``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agents.coverage import PRIVILEGED_NOTE, coverage, coverage_table
from agents.evaluate import summarize_returns
from agents.probes import probe_table
from agents.world_models.config import CollectConfig
from worldlab.io import atomic_write_text, read_json
from worldlab.logging import read_metrics
from worldlab.rundir import MANIFEST, RunDir


def _plot_series(ax: Any, recs: list[dict], label: str) -> None:
    if recs:
        ax.plot([r["step"] for r in recs], [r["value"] for r in recs], label=label)


def plot_losses(run_dir: RunDir, out: Path) -> Path | None:
    """One panel per training stage that logged a ``*/loss`` scalar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    names = sorted({(r["stage"], r["name"]) for r in recs if r["name"].split("/")[-1] in
                    ("loss", "recon", "kl", "nll", "gmm", "reward", "done", "mse", "bce")})
    stages = sorted({s for s, _ in names})
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for s, n in names:
            if s == stage:
                _plot_series(ax, [r for r in recs if r["stage"] == s and r["name"] == n], n)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("symlog")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_cma(run_dir: RunDir, out: Path) -> Path | None:
    """Best / mean / worst return per generation, for every evolution stage in the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    stages = sorted({r["stage"] for r in recs if r["name"].endswith("/best")})
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for k in ("best", "mean", "worst"):
            rs = [r for r in recs if r["stage"] == stage and r["name"].endswith(f"/{k}")]
            # a resumed stage may log a generation twice: keep the last value of each step
            by_step = {r["step"]: r["value"] for r in rs}
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [by_step[s] for s in steps], label=k)
        ax.set_title(stage)
        ax.set_xlabel("generation")
        ax.set_ylabel("return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def gap_rows(run_dir: RunDir) -> list[dict[str, Any]]:
    """The dream-vs-real gap measurements of every evolution stage: stage, generation, dream, real."""
    recs = read_metrics(run_dir)
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in recs:
        if r["name"] in ("gap/dream", "gap/real"):  # a resumed stage may log a generation twice: keep the last
            by.setdefault((r["stage"], r["step"]), {"stage": r["stage"], "generation": r["step"]})[
                r["name"].split("/")[1]] = r["value"]
    return [v for _, v in sorted(by.items()) if "dream" in v and "real" in v]


def plot_gap(run_dir: RunDir, out: Path) -> Path | None:
    """Dream score vs real score of the best candidate, per measured generation and evolution stage."""
    rows = gap_rows(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = sorted({r["stage"] for r in rows})
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        rs = [r for r in rows if r["stage"] == stage]
        gens = [r["generation"] + 1 for r in rs]
        ax.plot(gens, [r["dream"] for r in rs], "o-", label="in the dream")
        ax.plot(gens, [r["real"] for r in rs], "s-", label="in the real game")
        ax.set_title(f"{stage}: the best candidate")
        ax.set_xlabel("generation")
        ax.set_ylabel("return")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def collection_rounds(run_dir: RunDir, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Real returns of each round's collected episodes, from the data manifest.

    Round 0 holds episodes ``[0, collect.episodes)`` played by ``collect.policy``; round k >= 1 the
    next ``collect.episodes_per_round``, played by round k-1's controller with exploration noise
    ``collect.noise_std``. Rounds not (fully) collected are left out.
    """
    path = run_dir.data_manifest
    if not path.exists():
        return []
    eps = json.loads(path.read_text())["episodes"]
    c = CollectConfig(**config.get("collect", {}))
    out = []
    for k in range(int(config.get("rounds", 1))):
        idx = c.round_episodes(k)
        rets = [eps[str(i)].get("return") for i in idx if str(i) in eps]
        if not idx or len(rets) < len(idx) or any(r is None for r in rets):
            break
        policy = c.policy if k == 0 else f"round {k - 1}'s controller + noise {c.noise_std}"
        out.append({"round": k, "policy": policy, "first": idx.start, **summarize_returns("", rets)})
    return out


def coverage_rounds(run_dir: RunDir, config: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`agents.coverage.coverage` of each fully collected round's episodes (see
    :func:`collection_rounds`), with its ``round`` and ``policy``."""
    return [{**coverage(run_dir.data, range(r["first"], r["first"] + r["episodes"])), "round": r["round"],
             "policy": r["policy"]} for r in collection_rounds(run_dir, config)]


def coverage_section(rows: list[dict[str, Any]], scripted: bool) -> list[str]:
    """The report's "Data coverage" section (nothing when no row carries the per-step signals)."""
    if not any(r["signal_episodes"] for r in rows):
        return []
    lines = ["## Data coverage", "", "What each round's data shows the world model (`scripts/coverage.py`): the "
             "car's speed over all steps, tiles reached per episode, the share of steps with no wheel on the road "
             "and of steps that reach a new tile.", "", *coverage_table(rows), ""]
    return lines + ([PRIVILEGED_NOTE, ""] if scripted else [])


def coverage_report(path: str | os.PathLike) -> str:
    """The coverage table of a run folder (one row per collected round) or of a shard folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        rows = [coverage(path)]
    elif RunDir(path).data_manifest.is_file() and RunDir(path).config_json.is_file():
        run = RunDir(path)
        rows = coverage_rounds(run, read_json(run.config_json))
    else:
        raise FileNotFoundError(f"{path} is neither a run folder nor a folder of rollout shards (no {MANIFEST})")
    lines = coverage_table(rows)
    if any(r.get("policy") == "scripted" for r in rows):
        lines += ["", PRIVILEGED_NOTE]
    return "\n".join(lines)


def write_report(run_dir: str | Path | RunDir, config: dict[str, Any]) -> Path:
    """Write ``RUN/report.md`` (and its plots) from what the run folder holds."""
    run_dir = RunDir(run_dir)
    figs = run_dir.figures
    figs.mkdir(exist_ok=True)
    lines = [f"# worldlab run: {config.get('task', '?')}", ""]
    ev = run_dir.eval_json
    if ev.exists():
        e = json.loads(ev.read_text())
        lines += ["## Score in the real environment", "",
                  f"**{e['mean']:.1f} ± {e['std']:.1f}** over {e['episodes']} episodes "
                  f"(min {e['min']:.1f}, max {e['max']:.1f}); controller trained in the "
                  f"{config.get('train_in', 'dream')}.", ""]
    if run_dir.eval_finetuned_json.exists():
        e = json.loads(run_dir.eval_finetuned_json.read_text())
        ft = config.get("finetune", {})
        lines += ["## Fine-tuned in the real game (not a dream-only result)", "",
                  f"**{e['mean']:.1f} ± {e['std']:.1f}** over {e['episodes']} episodes (min {e['min']:.1f}, max "
                  f"{e['max']:.1f}) after CMA-ES continued in the real game from the controller above for "
                  f"{ft.get('generations')} generations of {ft.get('popsize')} x {ft.get('rollouts')} episodes.", ""]
    rounds = collection_rounds(run_dir, config)
    if rounds:
        lines += ["## Data collected per round", "", "Real returns of the episodes each round added to the data "
                  "(`data/manifest.json`).", "",
                  "| round | played by | episodes | real return | min | max |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['policy']} | {r['episodes']} (from {r['first']}) | "
                  f"{r['mean']:.1f} ± {r['std']:.1f} | {r['min']:.1f} | {r['max']:.1f} |" for r in rounds]
        lines += [""]
        lines += coverage_section(coverage_rounds(run_dir, config), any(r["policy"] == "scripted" for r in rounds))
    losses = plot_losses(run_dir, figs / "losses.png")
    cma_plot = plot_cma(run_dir, figs / "cma.png")
    if losses:
        lines += ["## Training losses", "", f"![losses]({figs.name}/losses.png)", ""]
    if cma_plot:
        lines += ["## CMA-ES", "", "Return of the best, mean and worst candidate per generation.", "",
                  f"![cma]({figs.name}/cma.png)", ""]
    if run_dir.fidelity_probes_json.exists():
        probes = json.loads(run_dir.fidelity_probes_json.read_text())
        lines += ["## Probe episodes: does the dream tell the truth?", "",
                  f"Scripted real episodes ({probes['steps']} steps, seeds {probes['seeds']}) and what M says of "
                  f"them: M's return teacher-forced on the real frames, its reward error on and off the road, and "
                  f"open-loop dreams of {probes['horizon']} steps from real states at steps {probes['starts']} "
                  f"(`fidelity_probes.json`; `agents/probes.py`).", "", probe_table(probes), ""]
    gap = gap_rows(run_dir)
    if gap and plot_gap(run_dir, figs / "gap.png"):
        lines += ["## Dream vs real", "", "Every few generations the best candidate (selected on its dream score) "
                  "also played a few real episodes: where the dream score runs ahead of the real one, the controller "
                  "is learning M's mistakes.", "", f"![gap]({figs.name}/gap.png)", "",
                  "| stage | generation | dream | real | dream - real |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['generation'] + 1} | {r['dream']:.1f} | {r['real']:.1f} | "
                  f"{r['dream'] - r['real']:.1f} |" for r in gap]
        lines += [""]
    videos = sorted(p.relative_to(run_dir.root) for p in run_dir.videos.glob("*.mp4")) \
        if run_dir.videos.exists() else []
    if videos:
        lines += ["## Videos", ""] + [f"- [{v.name}]({v.as_posix()})" for v in videos] + [""]
    lines += ["## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    return atomic_write_text(run_dir.report, "\n".join(lines))
