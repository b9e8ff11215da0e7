"""Which M makes the better dream? The MDN-RNN, a Transformer M and a Mamba M on one run's latents.

    python scripts/m_compare.py runs/car_racing                 # writes docs/WORLD_MODELS.md
    python scripts/m_compare.py runs/doom_take_cover --families mdrnn mamba

The run (a finished one-round ``dream_train`` run with the MDN-RNN, the default) gives the data,
V and the latents. For every other family a sub-run ``RUN/m_compare/<family>`` is made from them
(hard links, no copies) with the run's own config but ``m.family`` set, and the pipeline trains
that M, evolves C in its dream and scores C in the real game on the same seeds
(``dream_train.py --resume`` on the sub-run: a killed comparison resumes where it stopped); the
MDN-RNN's row is the run itself. On 2 cores the sub-runs go one after another (each uses both).

Equal CPU time: before training, each family's training step on the run's batches is timed in
this process (alternating, median of ``--probe-steps``), and each M trains for the MDN-RNN's
steps x (its step time / theirs), so every M gets the MDN-RNN's training time (``--equal-steps``:
the same steps instead).

Then, for each M: held-out teacher-forced NLL per latent dimension, reward MSE and done accuracy
and the open-loop latent error at steps 1 / 10 / 30 on the run's held-out episodes
(:func:`worldlab.fidelity.m_heldout_figures`), dream steps per second at ``--dreams`` dreams
(eager, compiled for the Ms whose dream step compiles: the MDN-RNN's and the Mamba M's, and on a CPU
with native bf16 the sequence Ms' bf16 step, ``dream.precision=bf16``, with its held-out figures
beside the fp32 ones), training time, C's best dream fitness
and its real score. The table goes into docs/WORLD_MODELS.md (a section per task), every
figure into ``docs/results/m_compare_<task>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("mdrnn", "gpt", "mamba")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def link_tree(src: Path, dst: Path, only: str | None = None) -> None:
    """``dst`` as hard links of ``src``'s files (``only``: that one file; a copy where the file
    system cannot link). Files already in ``dst`` are kept."""

    def link(a: str, b: str) -> None:
        if os.path.exists(b):
            return
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if only is not None:
        dst.mkdir(parents=True, exist_ok=True)
        link(str(src / only), str(dst / only))
        return
    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def step_seconds(models: dict[str, Any], batches: Any, lr: float, steps: int) -> dict[str, float]:
    """Median seconds of one training step (loss, backward, AdamW) per model, alternating on the same batches."""
    import torch

    opts = {k: torch.optim.AdamW(m.parameters(), lr=lr) for k, m in models.items()}
    data = [next(batches) for _ in range(steps + 1)]
    times: dict[str, list[float]] = {k: [] for k in models}
    for i, batch in enumerate(data):
        for k, m in models.items():
            t0 = time.perf_counter()
            opts[k].zero_grad(set_to_none=True)
            m.loss(batch)["loss"].backward()
            opts[k].step()
            if i:  # the first step warms up
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished one-round dream_train run folder (its M: the MDN-RNN)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--equal-steps", action="store_true", help="train every M for the MDN-RNN's steps (not its time)")
    p.add_argument("--probe-steps", type=int, default=8, help="timed training steps per family (equal time)")
    p.add_argument("--dreams", type=int, default=1024, help="dreams at once for the steps/s column")
    p.add_argument("--dream-steps", type=int, default=50, help="timed dream steps per repeat")
    p.add_argument("--heldout-horizon", type=int, default=30)
    p.add_argument("--doc", default=str(ROOT / "docs" / "WORLD_MODELS.md"))
    p.add_argument("--json", default=None, help="figures (default docs/results/m_compare_<task>.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the sub-runs (e.g. m.window=32)")
    args = p.parse_args(argv)
    for name in ("probe_steps", "dreams", "dream_steps", "heldout_horizon"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.heldout_horizon < 30:
        p.error("--heldout-horizon must be >= 30 (the table reports the open-loop error at step 30)")

    import torch

    from agents.world_models.config import RunConfig, override
    from agents.world_models.report import environment_lines
    from agents.world_models.stages import HOLDOUT, mdrnn_batches
    from benchmarks.sequence import BF16_FAMILIES, COMPILED_FAMILIES, dream_rates
    from worldlab.fidelity import m_heldout_figures
    from worldlab.io import atomic_write_json, read_json, write_doc_section
    from worldlab.logging import read_metrics
    from worldlab.rundir import RunDir
    from worldlab.sequence_m import M_CLASSES, describe_m, load_m
    from worldlab.storage import Manifest, split_episodes
    from worldlab.training import native_bf16

    run = RunDir(args.run)
    if not run.config_json.is_file() or not run.eval_json.is_file():
        p.error(f"{run} is not a finished dream_train run (no config.json / eval.json); finish it first "
                f"(python scripts/dream_train.py TASK --resume --out {run})")
    cfg = RunConfig.load(run)
    if cfg.rounds != 1 or cfg.m.family != "mdrnn" or cfg.ensemble.members != 1 or cfg.ensemble.dropout:
        p.error(f"{run} must be a one-round run of a single MDN-RNN without dropout (rounds={cfg.rounds}, "
                f"m.family={cfg.m.family}, members={cfg.ensemble.members}, dropout={cfg.ensemble.dropout}): "
                f"the other Ms are trained on its data alone and dream as it did")
    try:
        base = override(cfg, args.set)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lat = Manifest.open(run.latents)
    train_eps, held = split_episodes(lat, HOLDOUT, cfg.seed)
    run.m_compare.mkdir(exist_ok=True)
    bf16 = native_bf16(torch.device("cpu"))  # the bf16 dream is measured where it can pay (else far slower)
    plan_path = run.m_compare / "plan.json"
    others = [f for f in args.families if f != "mdrnn"]

    # -- equal CPU time: each family's training step, timed here on the run's own batches
    plan = read_json(plan_path) if plan_path.exists() else {}
    want = {"equal_steps": args.equal_steps, "sets": args.set, "families": others}
    if {k: plan.get(k) for k in want} != want:
        cfgs = {f: override(base, [f"m.family={f}"]) for f in ("mdrnn", *others)}
        torch.manual_seed(cfg.seed)
        models = {f: M_CLASSES[c.m_family](c.m_config()) for f, c in cfgs.items()}
        if args.equal_steps:
            secs = {f: float("nan") for f in models}
            steps = {f: cfg.mdrnn_train.steps for f in models}
        else:
            log(f"timing one training step of each M ({args.probe_steps} steps of {cfg.mdrnn_batch} x {cfg.seq_len})")
            def batches_forever() -> Any:  # the stream ends after a pass over the episodes: start it again
                while True:
                    yield from mdrnn_batches(run.latents, train_eps, cfg.mdrnn_batch, cfg.seq_len, cfg.seed)

            batches = batches_forever()
            secs = step_seconds(models, batches, cfg.mdrnn_train.lr, args.probe_steps)
            steps = {f: max(1, round(cfg.mdrnn_train.steps * secs["mdrnn"] / secs[f])) for f in models}
        plan = {**want, "step_seconds": secs, "steps": steps}
        atomic_write_json(plan_path, plan)
    for f in others:
        log(f"{f}: {plan['steps'][f]} training steps ({plan['step_seconds'][f] * 1e3:.0f} ms each; the MDN-RNN: "
            f"{cfg.mdrnn_train.steps} of {plan['step_seconds']['mdrnn'] * 1e3:.0f} ms)")

    # -- the sub-runs: the run's data, V and config; another M; the pipeline from M on
    dirs = {"mdrnn": run}
    for f in others:
        sub, sub_log = RunDir(run.m_compare_run(f)), run.m_compare_log(f)
        dirs[f] = sub
        if not sub.config_json.exists():
            sub.checkpoints.mkdir(parents=True, exist_ok=True)
            link_tree(run.data, sub.data)
            link_tree(run.latents, sub.latents)
            link_tree(run.vae.parent, sub.vae.parent, only=run.vae.name)
            sub_cfg = override(base, [f"m.family={f}", f"mdrnn_train.steps={plan['steps'][f]}", "eval.videos=false"])
            sub_cfg.save(sub)
        if sub.eval_json.exists() and sub.stages_json.exists():
            log(f"{f}: finished in {sub}")
            continue
        log(f"{f}: training M, evolving C in its dream and scoring C in the real game ({sub}; log {sub_log})")
        with open(sub_log, "a") as out:
            r = subprocess.run([sys.executable, str(ROOT / "scripts" / "dream_train.py"), cfg.task, "--resume",
                                "--out", str(sub.root), "--no-progress"], stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            print(f"error: the {f} sub-run failed (exit {r.returncode}); see {sub_log}, then run this again "
                  f"to resume it", file=sys.stderr)
            return 1

    # -- the figures
    rows: dict[str, dict[str, Any]] = {}
    ms: dict[str, Any] = {}
    for f in args.families:
        d = dirs[f]
        m = load_m(d.mdrnn)
        ms[f] = m
        cache = d.m_heldout_json
        figs = read_json(cache) if cache.exists() else {}
        episodes = m.meta.get("heldout") or held
        if figs.get("m_id") != m.meta.get("id") or figs.get("horizon") != args.heldout_horizon:
            log(f"{f}: held-out figures on {len(held)} episodes")
            figs = {"m_id": m.meta.get("id"), "horizon": args.heldout_horizon,
                    **m_heldout_figures(m, lat, episodes, horizon=args.heldout_horizon)}
            atomic_write_json(cache, figs)
        if f in BF16_FAMILIES and bf16 and "bf16" not in figs:  # the same M stepped in bf16 (dream.precision=bf16)
            log(f"{f}: held-out figures of the bf16 step on {len(held)} episodes")
            half = m_heldout_figures(copy.deepcopy(m).to(torch.bfloat16), lat, episodes, horizon=args.heldout_horizon)
            figs["bf16"] = {k: v for k, v in half.items() if k != "nll_per_episode"}
            atomic_write_json(cache, figs)
        ev = read_json(d.eval_json)
        stages = {s["key"]: s for s in read_json(d.stages_json)["stages"]}
        best = [r["value"] for r in read_metrics(d, name="evolve/best")]
        rows[f] = {"m": describe_m(m), "parameters": sum(x.numel() for x in m.parameters()),
                   "train_steps": int(m.meta.get("steps", 0)), "train_s": stages.get("memory_r0", {}).get("seconds"),
                   "heldout": {k: v for k, v in figs.items() if k not in ("m_id", "nll_per_episode", "bf16")},
                   **({"heldout_bf16": figs["bf16"]} if "bf16" in figs else {}),
                   "dream_best": best[-1] if best else None,
                   "real": {k: ev[k] for k in ("mean", "std", "min", "max", "episodes")}, "folder": str(d.root)}
    log(f"dream steps per second at {args.dreams} dreams")
    rates = dream_rates(ms, args.dreams, args.dream_steps, 3)
    fused = {f: m for f, m in ms.items() if f in COMPILED_FAMILIES}
    if fused and cfg.dream.compile:  # the runs dreamed compiled where the dream step compiles
        for f, rate in dream_rates(fused, args.dreams, args.dream_steps, 3, frozenset(fused)).items():
            rows[f]["dream_steps_s_compiled"] = rate
    for f in rows:
        rows[f]["dream_steps_s"] = rates[f]
    half = {f: m for f, m in ms.items() if f in BF16_FAMILIES} if bf16 else {}
    if half:  # dream.precision=bf16, compiled where the run's dream compiles
        comp = frozenset(f for f in half if f in COMPILED_FAMILIES and cfg.dream.compile)
        for f, rate in dream_rates(half, args.dreams, args.dream_steps, 3, comp, frozenset(half)).items():
            rows[f]["dream_steps_s_bf16"] = rate

    env = environment_lines()  # before this command's own files change the checkout
    result = {"run": str(run.root), "task": cfg.task, "seed": cfg.seed, "plan": plan, "rows": rows, "dreams": args.dreams,
              "command": "python scripts/m_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out_json = Path(args.json or ROOT / "docs" / "results" / f"m_compare_{cfg.task}.json")
    atomic_write_json(out_json, result)
    doc_path = write_doc_section(args.doc, f"m-compare-{cfg.task}", section(result, cfg, out_json, env).splitlines(),
                                 head=WORLD_MODELS_HEAD)
    for f, r in rows.items():
        log(f"{f}: held-out NLL {r['heldout']['nll_per_dim']:.3f}/dim, real {r['real']['mean']:.1f} ± "
            f"{r['real']['std']:.1f}, dream {r['dream_steps_s']:,.0f} steps/s")
    log(f"wrote {doc_path} and {out_json}")
    return 0


WORLD_MODELS_HEAD = """# Which M makes the better dream?

World Models' M predicts the next latent of V from the latent and the action; the controller
evolves in the dream M makes. The lab has three: the paper's MDN-RNN (an LSTM), a Transformer M
(causal attention in a sliding window, a ring key/value cache in the dream; as IRIS and STORM
replaced the LSTM) and a Mamba M (a selective state-space scan), chosen with
`--set m.family=mdrnn|gpt|mamba` (`worldlab/sequence_m.py`). All three end in the same mixture
head, are trained on the same loss and hand the controller their last hidden state as h.

Each section below comes from one command, `scripts/m_compare.py RUN`: the three Ms on the same
run's data and V, at equal training time, each with a controller evolved in its own dream on the
same seeds and scored in the real game.
"""


def section(result: dict[str, Any], cfg: Any, out_json: Path, env: list[str]) -> str:
    rows, plan = result["rows"], result["plan"]
    eq = "the same number of steps" if plan["equal_steps"] else "the MDN-RNN's training time (steps scaled by the " \
        "step times measured in the same process)"
    lines = [f"## {cfg.task}", "",
             f"Run `{result['run']}` ({cfg.collect.episodes} {cfg.collect.policy} episodes, V z={cfg.vae.z_size}); "
             f"each M trained in batches of {cfg.mdrnn_batch} x {cfg.seq_len} steps for {eq}; C evolved "
             f"{cfg.cma.popsize} x {cfg.cma.rollouts} for {cfg.cma.generations} generations in dreams from "
             f"{'real mid-episode states' if cfg.dream.start == 'mid' else 'real first frames'}"
             f"{f' of {cfg.dream.horizon} steps' if cfg.dream.horizon else ''}, tau {cfg.dream.temperature:g}, seed "
             f"{result['seed']}; real score over the same {next(iter(rows.values()))['real']['episodes']} episodes. "
             f"Held-out: teacher-forced on the run's held-out episodes (next-latent NLL per dimension of the next "
             f"frame's mean, nats), open loop: deterministic dreams on the real actions from a start every 100 steps.",
             "", "```bash", result["command"], "```", "",
             "| M | parameters | training | held-out NLL / dim | reward MSE | done accuracy | open-loop latent MSE "
             f"at 1 / 10 / 30 | dream steps/s ({result['dreams']:,}) | C's best dream fitness | real score |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        h = r["heldout"]
        ol = " / ".join(f"{h['open_loop_latent_mse_at'][s]:.3f}" for s in ("1", "10", "30")) \
            if "open_loop_latent_mse_at" in h else "-"
        rate = f"{r['dream_steps_s']:,.0f}"
        more = [f"{r['dream_steps_s_compiled']:,.0f} compiled"] if "dream_steps_s_compiled" in r else []
        if "dream_steps_s_bf16" in r:
            more.append(f"{r['dream_steps_s_bf16']:,.0f} {'compiled ' if 'dream_steps_s_compiled' in r else ''}bf16")
        if more:
            rate += f" ({'; '.join(more)})"
        t = f"{r['train_steps']} steps, {r['train_s'] / 60:.1f} min" if r["train_s"] else f"{r['train_steps']} steps"
        dream = f"{r['dream_best']:.1f}" if r["dream_best"] is not None else "-"
        lines.append(f"| {r['m']} | {r['parameters']:,} | {t} | {h['nll_per_dim']:.3f} | {h['reward_mse']:.3f} | "
                     f"{h['done_accuracy']:.4f} | {ol} | {rate} | {dream} | **{r['real']['mean']:.1f} ± "
                     f"{r['real']['std']:.1f}** |")
    if "mdrnn" in rows:
        ref = rows["mdrnn"]["heldout"]["nll_per_dim"]
        lines.append("")
        for f, r in rows.items():
            if f != "mdrnn":
                d = r["heldout"]["nll_per_dim"] - ref
                where = f"{-d:.3f} below" if d <= 0 else f"{d:.3f} above (misses by {d:.3f})"
                lines.append(f"- {r['m']}: held-out NLL {where} the MDN-RNN's at equal "
                             f"{'steps' if plan['equal_steps'] else 'training time'}.")
        for r in rows.values():
            if "heldout_bf16" in r:
                h32, h16 = r["heldout"], r["heldout_bf16"]
                lines.append(f"- {r['m']} stepped in bf16 (`--set dream.precision=bf16`): held-out NLL "
                             f"{h16['nll_per_dim']:.3f} (fp32 {h32['nll_per_dim']:.3f}), open-loop latent MSE at 30 "
                             f"{h16['open_loop_latent_mse_at']['30']:.3f} (fp32 {h32['open_loop_latent_mse_at']['30']:.3f}), "
                             f"reward MSE {h16['reward_mse']:.3f}; {r['dream_steps_s_bf16']:,.0f} dream steps/s.")
    lines += ["", f"Training time: the run's `memory` stage (M's training and its mid-episode bank); dream steps/s: "
                  f"eager unless marked, median of 3, in one process. Every figure: "
                  f"[{out_json.name}](results/{out_json.name}).", "", *env]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
