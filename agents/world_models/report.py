"""The run report: loss curves, the CMA-ES curve and links to videos, as ``RUN/report.md``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agents.coverage import PRIVILEGED_NOTE, coverage, coverage_table
from agents.evaluate import episode_limit, summarize_returns
from agents.probes import controller_table, probe_table
from agents.world_models.config import CollectConfig, RunConfig
from agents.world_models.plan import stage_times
from worldlab.io import atomic_savefig, atomic_write_text, read_json
from worldlab.logging import read_metrics
from worldlab.rundir import MANIFEST, RunDir
from worldlab.sequence_m import describe_m_config

LOSS_PANELS = (("vae/loss", "V: loss (reconstruction + KL)", "loss per frame"),
               ("vae/recon", "V: reconstruction", "squared error per frame"), ("vae/kl", "V: KL", "KL (nats)"),
               ("mdrnn/nll", "M: next z, GMM negative log-likelihood", "NLL per latent dim"),
               ("mdrnn/reward_mse", "M: reward", "mean squared error"),
               ("mdrnn/done_bce", "M: done", "binary cross-entropy"))
"""The losses ``losses.png`` shows, one panel each: V's three and M's three (every ensemble member of M
is a line of its own)."""


def _last_per_step(recs: list[dict]) -> tuple[list[int], list[float]]:
    """Steps and values, the last value logged at each step (a resumed stage logs some steps twice)."""
    by = {r["step"]: r["value"] for r in recs}
    steps = sorted(by)
    return steps, [by[k] for k in steps]


def _readable_ylim(ax: Any, values: list[float]) -> None:
    """Linear y limits that show the curve, not the first steps' spike: the 1st-99th percentile
    of the values after the first 5%, with a margin."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 4:
        return
    tail = v[len(v) // 20:]
    lo, hi = np.percentile(tail, [1, 99])
    if hi > lo:
        pad = 0.08 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)


def _save(plt: Any, fig: Any, out: Path) -> Path:
    """Lay out, write and close a report figure; returns its path."""
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=100)
    plt.close(fig)
    return out


def plot_losses(run_dir: RunDir, out: Path) -> Path | None:
    """V's and M's losses against the training step, one panel per loss with linear, labelled axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = read_metrics(run_dir)
    stage_of = {"vae": lambda st: st == "vae", "mdrnn": lambda st: st == "mdrnn" or st.startswith("mdrnn_m")}
    panels = []
    for name, title, ylabel in LOSS_PANELS:
        model, loss = name.split("/")
        lines = {}
        for r in recs:
            if r["name"].split("/")[-1] == loss and r["name"].split("/")[0] == model and stage_of[model](r["stage"]):
                lines.setdefault(r["stage"], []).append(r)
        if lines:
            panels.append((title, ylabel, lines))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, ylabel, lines) in zip(axes.flat, panels, strict=False):
        values: list[float] = []
        for stage in sorted(lines, key=lambda st: (len(st), st)):
            steps, vals = _last_per_step(lines[stage])
            label = "M" if stage == "mdrnn" and len(lines) > 1 else stage.replace("mdrnn_m", "member ")
            ax.plot(steps, vals, label=label if len(lines) > 1 else None, lw=1.2)
            values += vals
        _readable_ylim(ax, values)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    return _save(plt, fig, out)


def plot_cma(run_dir: RunDir, out: Path, train_in: str = "dream") -> Path | None:
    """Best / mean / worst dream return per generation (1-based), for every evolution stage in the
    run, with the real score of the best candidate where the gap was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = read_metrics(run_dir)
    stages = sorted({r["stage"] for r in recs if r["name"].endswith("/best")}, key=_stage_order)
    if not stages:
        return None
    gap = gap_rows(run_dir)
    fig, axes = _panels(plt, len(stages), 5, 3.6)
    for ax, stage in zip(axes, stages, strict=False):
        for k in ("best", "mean", "worst"):
            steps, vals = _last_per_step([r for r in recs if r["stage"] == stage and r["name"].endswith(f"/{k}")])
            if steps:
                ax.plot([g + 1 for g in steps], vals, label=k if stage == "finetune_real" or train_in == "real"
                        else f"{k} (dream)")
        real = [r for r in gap if r["stage"] == stage]
        if real:
            ax.plot([r["generation"] + 1 for r in real], [r["real"] for r in real], "ks", ms=5,
                    label="best, in the real game")
            means = [r for r in real if "real_mean" in r]
            if means:
                ax.plot([r["generation"] + 1 for r in means], [r["real_mean"] for r in means], "rD", ms=5,
                        label="the search's mean, in the real game")
        real_game = stage == "finetune_real" or train_in == "real"
        ax.set_title(f"{stage}: CMA-ES in the {'real game' if real_game else 'dream'}", fontsize=10)
        ax.set_xlabel("generation")
        ax.set_ylabel("return")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, out)


def _stage_order(stage: str) -> tuple[int, str]:
    """evolve_r2 before evolve_r10 (and finetune_real after the rounds)."""
    return len(stage), stage


PANELS_PER_ROW = 4


def _panels(plt: Any, n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels, at most :data:`PANELS_PER_ROW` a row (a 10-round run stays
    readable), unused panels hidden; the panels in reading order."""
    cols = min(PANELS_PER_ROW, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def plot_rounds(run_dir: RunDir, out: Path) -> Path | None:
    """Each round's controller's mean (± s.e.) over the selection's real episodes: through the
    final M (``selection.json``) and, with the rounds' patience, through its own round's M as soon
    as it was evolved (``rounds.json``); the kept round marked."""
    series = []
    for path, label in ((run_dir.selection_json, "through the final M (the selection)"),
                        (run_dir.rounds_json, "through its own round's M (the rounds' patience)")):
        try:
            d = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            d = None
        if d and d.get("rounds"):
            series.append((label, d))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (label, d), marker in zip(series, ("o-", "s--"), strict=False):
        rows = d["rounds"]
        ax.errorbar([r["round"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r.get("se") or 0.0 for r in rows], fmt=marker, capsize=3, label=label)
        if d.get("picked") is not None:
            kept = rows[int(d["picked"])]
            ax.plot([kept["round"]], [kept["mean"]], "r*", ms=14, label=f"kept: round {kept['round']}")
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean return over {series[0][1]['episodes']} real episodes")
    ax.set_title("each round's controller in the real game")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, out)


def _under(run_dir: RunDir, path: str) -> str:
    """``path`` relative to the run folder when it is inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(run_dir.root.resolve()).as_posix()
    except ValueError:
        return path


def calibration_table(run_dir: RunDir) -> str:
    """The calibrated done biases of every round's searches (``checkpoints/done_bias_r*.json``) as a
    markdown table; "" when the run did not calibrate."""
    import re

    files = sorted(run_dir.checkpoints.glob("done_bias_r*.json"),
                   key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.stem))) \
        if run_dir.checkpoints.exists() else []
    if not files:
        return ""
    rows = ["| round | search | measured on | real ends / episodes | M expected | the dream expected | done bias |",
            "|---|---|---|---|---|---|---|"]
    for path in files:
        nums = [int(x) for x in re.findall(r"\d+", path.stem)]
        k, j = nums[0], (nums[1] if len(nums) > 1 else 0)
        cal = json.loads(path.read_text())
        for e in cal["entries"]:
            on = "its starting controller" if e["generation"] < 0 else f"generation {e['generation'] + 1}'s best"
            bias = f"{e['bias_before']:+.2f}" + (f" -> **{e['bias']:+.2f}**" if e["bias"] != e["bias_before"] else "")
            rows.append(f"| {k} | {j + 1} | {on} | {e['ended']} / {e['episodes']} | {e['expected_m']:.2f} | "
                        f"{e['expected_before']:.2f} | {bias}{' (capped)' if e['capped'] else ''} |")
    return "\n".join(rows)


def gap_rows(run_dir: RunDir) -> list[dict[str, Any]]:
    """The dream-vs-real gap measurements of every evolution stage: stage, generation, dream, real
    (the generation's best candidate) and, where it was measured, real_mean (the search's mean on
    the same episodes)."""
    recs = read_metrics(run_dir)
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in recs:
        if r["name"] in ("gap/dream", "gap/real", "gap/real_mean"):  # a resumed stage may log a generation twice: keep the last
            by.setdefault((r["stage"], r["step"]), {"stage": r["stage"], "generation": r["step"]})[
                r["name"].split("/")[1]] = r["value"]
    return [v for _, v in sorted(by.items()) if "dream" in v and "real" in v]


def plot_gap(run_dir: RunDir, out: Path) -> Path | None:
    """Dream score vs real score of the best candidate, and the search's mean in the real game,
    per measured generation and evolution stage."""
    rows = gap_rows(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = sorted({r["stage"] for r in rows}, key=_stage_order)
    fig, axes = _panels(plt, len(stages), 5, 3.5)
    for ax, stage in zip(axes, stages, strict=False):
        rs = [r for r in rows if r["stage"] == stage]
        gens = [r["generation"] + 1 for r in rs]
        ax.plot(gens, [r["dream"] for r in rs], "o-", label="in the dream")
        ax.plot(gens, [r["real"] for r in rs], "s-", label="in the real game")
        means = [(g, r["real_mean"]) for g, r in zip(gens, rs, strict=True) if "real_mean" in r]
        if means:
            ax.plot(*zip(*means, strict=True), "D--", label="the search's mean, in the real game")
        ax.set_title(f"{stage}: the best candidate" + (" and the mean" if means else ""))
        ax.set_xlabel("generation")
        ax.set_ylabel("return")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return _save(plt, fig, out)


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
        policy = c.policy if k == 0 else c.later_policy(k)
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


def environment_lines() -> list[str]:
    """The machine, the versions that matter and the code's commit, as report lines."""
    import platform
    import subprocess
    import sys
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " with local changes" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (no git)"
    return [f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
            f"- Python {sys.version.split()[0]}; " + ", ".join(
                f"{p} {version(p)}" for p in ("torch", "gymnasium", "ray", "cma", "vizdoom", "numpy")),
            f"- worldlab commit {commit}"]


def world_model_line(config: dict[str, Any]) -> str:
    """One line on the world model the controller was evolved in: V's and M's architectures and the dream's starts."""
    cfg = RunConfig.from_dict(config)
    dream = cfg.dream
    starts = "real first frames" if dream.start == "first" else "real mid-episode states"
    limit = dream.steps
    extra = []
    if cfg.ensemble.members > 1:
        extra.append(f"an ensemble of {cfg.ensemble.members} Ms ({cfg.ensemble.member_mode}"
                     + ("; a dream ends with the members' largest done probability)" if cfg.ensemble.done_mode == "max"
                        else ")"))
    if cfg.ensemble.dropout > 0:
        extra.append(f"dropout {cfg.ensemble.dropout:g} per dream")
    if dream.done_bias_text():
        extra.append(dream.done_bias_text())
    return (f"World model: V (ConvVAE z={cfg.vae.z_size}) and M ({describe_m_config(cfg.m_family, cfg.m_config())}, "
            f"{cfg.mdrnn.gaussians} Gaussians){''.join(', ' + e for e in extra)}; dreams of "
            f"{'up to ' + str(limit) + ' steps' if limit else 'the task episode limit'} from {starts}, tau "
            f"{dream.temperature:g}.")


def restart_rows(run_dir: RunDir, rounds: int) -> list[dict[str, Any]]:
    """With ``cma.restarts``: each round's searches (CMA-ES seed, mean over fresh dreams, kept or not),
    as the round's controller file records them."""
    from agents.cmaes import RESTART_DREAMS
    from agents.controller import load_controller

    rows = []
    for k in range(rounds):
        path = run_dir.controller(k)
        if not path.exists():
            continue
        info = load_controller(path)[2].get("restarts")
        if info:
            real = info.get("real_means") or [None] * len(info["seeds"])
            rows += [{"round": k, "search": j + 1, "seed": seed, "dream_mean": mean, "real_mean": r,
                      "real_episodes": info.get("episodes"), "kept": j == info["picked"], "dreams": RESTART_DREAMS}
                     for j, (seed, mean, r) in enumerate(zip(info["seeds"], info["dream_means"], real, strict=True))]
    return rows


def _mean_se(row: dict[str, Any]) -> str:
    """A round's mean over the selection's episodes, with its standard error when there is one."""
    return f"{row['mean']:.1f}" + (f" ± {row['se']:.1f}" if row.get("se") is not None else "")


def selection_lines(run_dir: RunDir, e: dict[str, Any]) -> list[str]:
    """The report's lines on a final controller picked among the rounds by real episodes
    (``eval.select_episodes``): which round, every round's mean, and the last round's controller
    (the dream-only result) on the evaluation's episodes. None when the last round's was kept as is."""
    sel = e.get("selected")
    if not sel or not run_dir.selection_json.exists():
        return []
    rows = json.loads(run_dir.selection_json.read_text())["rounds"]
    out = [f"**A selection by real returns, not a dream-only result:** every round's controller (each evolved in "
           f"the dream) played the same {sel['episodes']} real episodes (seeds apart from the evaluation's), and "
           f"round {sel['round']}'s became the final controller (the last round's unless another beat it by more "
           f"than `eval.select_margin` standard errors of the paired difference).", "",
           "| round | mean over the selection's episodes | kept |", "|---|---|---|"]
    out += [f"| {r['round']} | {_mean_se(r)} | {'yes' if r['round'] == sel['round'] else ''} |" for r in rows]
    out.append("")
    if sel["round"] == len(rows) - 1:
        out += ["That is the last round's controller: the figure above is also the dream-only result.", ""]
    elif run_dir.eval_last_json.exists():
        last = json.loads(run_dir.eval_last_json.read_text())
        out += [f"The last round's controller (round {len(rows) - 1}, the dream-only result) on the evaluation's "
                f"{last['episodes']} episodes: **{last['mean']:.1f} ± {last['std']:.1f}**.", ""]
    return out


def average_lines(run_dir: RunDir, e: dict[str, Any]) -> list[str]:
    """The report's lines on a final controller that is the last rounds' controllers averaged
    (``average_rounds``): which rounds, and the last round's controller on the same episodes with
    the paired difference. None when the final controller is one round's."""
    avg = e.get("averaged")
    if not avg:
        return []
    rounds = avg["rounds"]
    out = [f"**The rounds' average:** the final controller is the parameter mean of rounds {rounds[0]}-{rounds[-1]}'s "
           f"controllers (`average_rounds` {len(rounds)}; each evolved in the dream, no real episode chose it: a "
           f"dream-only result).", ""]
    if run_dir.eval_last_json.exists():
        import numpy as np

        last = json.loads(run_dir.eval_last_json.read_text())
        line = (f"The last round's controller (round {avg['of_rounds'] - 1}) on the same {last['episodes']} episodes: "
                f"**{last['mean']:.1f} ± {last['std']:.1f}**")
        a, b = np.asarray(e.get("returns", []), float), np.asarray(last.get("returns", []), float)
        if last.get("seeds") == e.get("seeds") and len(a) == len(b) > 1:
            d = a - b
            line += f"; the average minus it, episode by episode: {d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f}"
        out += [line + ".", ""]
    return out


def patience_lines(run_dir: RunDir, config: dict[str, Any]) -> list[str]:
    """The report's lines on the rounds' patience (``rounds_patience``): each round's controller on
    the selection's real episodes as soon as it was evolved, through its own round's M
    (``rounds.json``), and where the rounds stopped. None when the patience is off."""
    patience = int(config.get("rounds_patience", 0) or 0)
    if not patience or not run_dir.rounds_json.exists():
        return []
    try:
        rows = json.loads(run_dir.rounds_json.read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return []
    from agents.world_models.stages import rounds_stop

    most = int(config.get("rounds", 1))
    means = [r["mean"] for r in rows]
    best = means.index(max(means)) if means else 0
    least = int(config.get("rounds_min", 1) or 1)
    stopped = bool(rows) and rounds_stop(means, patience, least)
    out = ["## The rounds' patience (`rounds_patience`)", "",
           f"Each round's controller played the selection's {len(rows[0]['returns']) if rows else 0} real episodes "
           f"as soon as it was evolved (through its own round's M); the rounds stop once {patience} rounds in a row "
           f"have not beaten the best mean before them, "
           + (f"at least {least} and " if least > 1 else "") + f"at most {most} rounds."
           + (f" They stopped after round {len(rows) - 1}: none of the last {patience} beat round {best}'s "
              f"{means[best]:.1f}." if stopped and rows else ""), "",
           "| round | mean over the selection's episodes (its own M) |", "|---|---|"]
    out += [f"| {r['round']} | {_mean_se(r)} |" for r in rows]
    return [*out, ""]


def write_report(run_dir: str | Path | RunDir, config: dict[str, Any]) -> Path:
    """Write ``RUN/report.md`` (and its plots) from what the run folder holds."""
    run_dir = RunDir(run_dir)
    figs = run_dir.figures
    figs.mkdir(exist_ok=True)
    lines = [f"# worldlab run: {config.get('task', '?')}", ""]
    ev = run_dir.eval_json
    if ev.exists():
        e = json.loads(ev.read_text())
        limit = episode_limit(config.get("task", ""), e.get("max_steps", config.get("eval", {}).get("max_steps")))
        lines += ["## Score in the real environment", "",
                  f"**{e['mean']:.1f} ± {e['std']:.1f}** over {e['episodes']} episodes of up to {limit} steps "
                  f"(min {e['min']:.1f}, max {e['max']:.1f}); controller trained in the "
                  f"{e.get('train_in', config.get('train_in', 'dream'))}"
                  + (" (**a selection by real returns, not a dream-only result**)" if e.get("searches_picked") else "")
                  + ".", ""]
        lines += selection_lines(run_dir, e)
        lines += average_lines(run_dir, e)
        lines += patience_lines(run_dir, config)
        if (e.get("selected") or run_dir.rounds_json.exists()) and plot_rounds(run_dir, figs / "rounds.png"):
            lines += [f"![each round's controller in the real game]({figs.name}/rounds.png)", ""]
        lines += [world_model_line(config), ""]
    if run_dir.eval_finetuned_json.exists():
        e = json.loads(run_dir.eval_finetuned_json.read_text())
        ft = config.get("finetune", {})
        lines += ["## Fine-tuned in the real game (not a dream-only result)", "",
                  f"**{e['mean']:.1f} ± {e['std']:.1f}** over {e['episodes']} episodes (min {e['min']:.1f}, max "
                  f"{e['max']:.1f}) after CMA-ES continued in the real game from the controller above for "
                  f"{ft.get('generations')} generations of {ft.get('popsize')} x {ft.get('rollouts')} episodes.", ""]
    searches = restart_rows(run_dir, int(config.get("rounds", 1)))
    if searches:
        n_real = next((r["real_episodes"] for r in searches if r["real_mean"] is not None), None)
        by = (f"and the same {n_real} real episodes; the best of them in the real game became the round's controller "
              "(**a selection by real returns**)" if n_real else "and the best of them became the round's controller")
        lines += ["## CMA-ES searches (`cma.restarts`)", "",
                  f"A round with several searches ran each on its own seed; each final mean played "
                  f"{searches[0]['dreams']} fresh dreams {by}.", "",
                  "| round | search | CMA-ES seed | mean over fresh dreams | mean over real episodes | kept |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['search']} | {r['seed']} | {r['dream_mean']:.1f} | "
                  f"{'' if r['real_mean'] is None else format(r['real_mean'], '.1f')} | "
                  f"{'**yes**' if r['kept'] else ''} |" for r in searches]
        lines += [""]
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
    cma_plot = plot_cma(run_dir, figs / "cma.png", config.get("train_in", "dream"))
    if losses:
        lines += ["## Training losses", "", "V's and M's losses per training step (`metrics.jsonl`; TensorBoard: "
                  f"`tensorboard --logdir {run_dir.tb()}`).", "", f"![losses]({figs.name}/losses.png)", ""]
    grids = [p for p in (run_dir.samples / "vae_recon.png", run_dir.samples / "vae_samples.png") if p.exists()]
    if grids:
        lines += ["## What V sees", "", "Held-out real frames (top row) and V's reconstructions of them (bottom "
                  "row); then V's samples from the prior, decoded.", ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir.root).as_posix()})" for p in grids] + [""]
    if cma_plot:
        lines += ["## CMA-ES", "", "Return of the best, mean and worst candidate per generation; where the gap was "
                  "measured, the best candidate's score in the real game beside it.", "",
                  f"![cma]({figs.name}/cma.png)", ""]
    if run_dir.fidelity_probes_json.exists():
        probes = json.loads(run_dir.fidelity_probes_json.read_text())
        lines += ["## Probe episodes: does the dream tell the truth?", "",
                  f"Scripted real episodes ({probes['steps']} steps, seeds {probes['seeds']}) and what M says of "
                  f"them: M's return teacher-forced on the real frames, its reward error on and off the road, and "
                  f"open-loop dreams of {probes['horizon']} steps from real states at steps {probes['starts']} "
                  f"(`fidelity_probes.json`; `agents/probes.py`).", "", probe_table(probes), ""]
    if run_dir.fidelity_controllers_json.exists():
        probed = json.loads(run_dir.fidelity_controllers_json.read_text())
        rows = {_under(run_dir, path): row for path, row in probed["controllers"].items()}
        lines += ["## The controller's own episodes: does M expect the ends the game deals?", "",
                  f"Each controller in {len(probed['seeds'])} real episode(s) (seeds {probed['seeds'][0]} on) and M "
                  f"teacher-forced over them: its return, and the episode ends it expects (its done probabilities "
                  f"summed) against the game's. Fewer expected ends than real ones is a dream that ends C's "
                  f"episodes more rarely than the game does where C goes, so it overpays C "
                  f"(`fidelity_controllers.json`; `scripts/fidelity.py RUN --controllers C.npz`).", "",
                  controller_table({**probed, "controllers": rows}), ""]
    gap = gap_rows(run_dir)
    if gap and plot_gap(run_dir, figs / "gap.png"):
        lines += ["## Dream vs real", "", "Every few generations the best candidate (selected on its dream score) "
                  "also played a few real episodes: where the dream score runs ahead of the real one, the controller "
                  "is learning M's mistakes. The search's mean after that generation (what the round keeps if it "
                  "ends there) played the same episodes.", "", f"![gap]({figs.name}/gap.png)", "",
                  "| stage | generation | best, dream | best, real | dream - real | the mean, real |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['generation'] + 1} | {r['dream']:.1f} | {r['real']:.1f} | "
                  f"{r['dream'] - r['real']:.1f} | {format(r['real_mean'], '.1f') if 'real_mean' in r else ''} |"
                  for r in gap]
        lines += [""]
    calib = calibration_table(run_dir)
    if calib:
        lines += ["## The dream's ends, calibrated on C's own episodes (`dream.done_calibrate`)", "",
                  "Before each round's search (its starting controller) and at every gap measurement (the best "
                  "candidate), the real episodes were played with M stepping along: the ends the game dealt, the "
                  "ends M expected (its done probabilities summed), and those the dream expected at the bias in "
                  "force; the bias then rose to where the dream expects the target number of ends per real end "
                  "(`checkpoints/done_bias_r*.json`; `agents/calibrate.py`).", "", calib, ""]
    videos = sorted(p.relative_to(run_dir.root) for p in run_dir.videos.glob("*.mp4")) \
        if run_dir.videos.exists() else []
    if videos:
        lines += ["## Videos", ""] + [f"- [{v.name}]({v.as_posix()})" for v in videos] + [""]
    times = stage_times(run_dir)
    if times:
        total = sum(t["seconds"] for t in times)
        lines += ["## Wall time per stage", "", "Summed over every process that worked on the run (`stages.json`).",
                  "", "| stage | minutes |", "|---|---|"]
        lines += [f"| {t['title']} | {t['seconds'] / 60:.1f} |" for t in times]
        lines += [f"| **total** | **{total / 60:.1f}** |", ""]
    lines += ["## Environment", "", *environment_lines(), ""]
    lines += ["## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    return atomic_write_text(run_dir.report, "\n".join(lines))
