"""The reward-synthesizer role, measured: evolve C in the dream with and without a flow's
novelty penalty, and score both controllers in the real game on the same episodes.

    python scripts/reward_compare.py RUN [--flow-steps 3000] [--scale 0.1] [--episodes 100] [--doc docs/REWARD.md]

``RUN`` is a finished `dream_train.py` run (its V, M, latents, CMA-ES settings and controller).
Steps, each resumable (outputs in ``RUN/reward_compare/``):

1. a RealNVP flow (``generators``, points) on the latents ``z ~ q(z | x)`` of the run's real
   frames, as M saw them (every tenth episode held out, for the held-out NLL);
2. CMA-ES in the dream exactly as the run evolved its controller (same population, rollouts,
   generations, temperature, seed), but with the reward ``r + scale * novelty_penalty(z)``
   (:func:`generators.reward.novelty_penalty`: ``min(0, log p(z) - q)``, ``q`` the 5% quantile of
   ``log p`` over real latents, clipped at -10 nats): dream states rarer than 95% of real ones
   cost the nats they fall short by;
3. both controllers - the run's own (evolved without the penalty) and the penalised one - in the
   real game on the same ``--episodes`` seeds (Ray workers), and in the dream (M's reward only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import generators  # noqa: E402
from agents.cmaes import evolve  # noqa: E402
from agents.controller import ControllerConfig, load_controller, save_controller  # noqa: E402
from agents.evaluate import summarize_returns  # noqa: E402
from agents.fitness import EVAL_GENERATION, DreamFitness, RealPool, generation_seeds  # noqa: E402
from agents.world_models.config import RunConfig  # noqa: E402
from generators.data import GenData  # noqa: E402
from generators.reward import novelty_penalty  # noqa: E402
from generators.train import FitConfig  # noqa: E402
from worldlab.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from worldlab.logging import RunLogger  # noqa: E402
from worldlab.rundir import RunDir  # noqa: E402
from worldlab.storage import Manifest, load_shard  # noqa: E402
from worldlab.world_model import WorldModel  # noqa: E402

FLOW = {"hidden": 128, "mlp_layers": 2}
"""RealNVP over latents: the book's 6 couplings, narrower s/t MLPs than its moons flow (128 x 2):
the penalty is evaluated for every dream at every step, so it must cost less than M's step."""


def latents(run: RunDir, held_out: bool, every: int = 10, seed: int = 0) -> torch.Tensor:
    """Latents ``z ~ q(z | x)`` (N, Z) of the run's real frames: held-out episodes (index % every == 0) or the rest.

    Posterior samples, not means: M was trained on such samples and the dream's z are drawn like
    them, so the flow must know their spread (a flow of the means alone calls most dream states novel).
    """
    d = run.latents
    m = Manifest.open(d)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, e in sorted(m.episodes.items()):
        if (i % every == 0) != held_out:
            continue
        sh = load_shard(d / e["file"], e.get("sha256"))
        mu, logvar = torch.from_numpy(sh["mu"]).float(), torch.from_numpy(sh["logvar"]).float()
        out.append(mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g))
    if not out:
        raise ValueError(f"{d} holds no latent shards; run the encode stage (dream_train.py) first")
    return torch.cat(out)


def train_flow(run: RunDir, out: Path, steps: int, progress: bool) -> tuple[Any, dict[str, float]]:
    train, test = latents(run, False), latents(run, True)
    data = GenData("latents", train)
    model_path = RunDir(out).generator_final
    if model_path.exists() and (out / "steps.json").exists() and read_json(out / "steps.json")["steps"] == steps:
        flow = generators.load(model_path)
    else:
        torch.manual_seed(0)
        flow = generators.model_for("realnvp", data, **FLOW)
        generators.fit(flow, data, FitConfig(steps=steps, lr=1e-4, batch_size=256, seed=0), out=out,
                       progress=progress)
        flow.save(model_path)
        atomic_write_json(out / "steps.json", {"steps": steps})
    flow.eval()
    with torch.no_grad():
        nll = {"train_nll_per_dim": float(-flow.log_prob(train[:5000]).mean() / train.shape[1]),
               "heldout_nll_per_dim": float(-flow.log_prob(test[:5000]).mean() / test.shape[1])}
    return flow, {**nll, "train_latents": len(train), "heldout_latents": len(test)}


def dream_scores(wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, cfg: RunConfig, n: int = 64) -> dict[str, float]:
    """Mean/std of M's reward over ``n`` dream episodes of one controller (no penalty)."""
    fit = DreamFitness(wm, ccfg, 1, n, cfg.dream.temperature, cfg.dream.max_steps, seed=cfg.seed + 777)
    r = fit.returns(params[None], 0)[0].cpu().numpy()
    return {"mean": float(r.mean()), "std": float(r.std())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--flow-steps", type=int, default=3000)
    p.add_argument("--scale", type=float, default=0.1, help="reward per nat of the penalty")
    p.add_argument("--quantile", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=10.0)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--doc", default=None, help="write the result as Markdown here (e.g. docs/REWARD.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    run = RunDir(args.run)
    final = run.controller()
    if not final.exists() or not run.latents.exists():
        print(f"error: {run} is not a finished run (no checkpoints/controller.npz or latents/); "
              f"run python scripts/dream_train.py TASK --out {run} first", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    cfg = RunConfig.load(run)
    out = run.reward_compare
    wm = WorldModel.load(run)
    ccfg, base_params, _ = load_controller(final)

    flow, flow_info = train_flow(run, out / "flow", args.flow_steps, args.progress)
    term = novelty_penalty(flow, latents(run, False, seed=1), quantile=args.quantile, clip=args.clip)
    print(f"flow: held-out NLL {flow_info['heldout_nll_per_dim']:.3f} nats/dim; penalty threshold "
          f"log p = {term.threshold:.1f}", flush=True)

    cma = dataclasses.replace(cfg.cma, seed=cfg.cma.seed + 1000 * (cfg.rounds - 1))  # the run's last round
    fitness = DreamFitness(wm, ccfg, cma.popsize, cma.rollouts, cfg.dream.temperature, cfg.dream.max_steps,
                           seed=cma.seed, reward_term=term, term_scale=args.scale)
    with RunLogger(out, "evolve_penalised") as logger:
        state = evolve(fitness, ccfg.num_params, cma, out / "cma.npz", logger=logger, progress=args.progress,
                       desc="evolve (penalised)")
    pen_path = out / "controller_penalised.npz"
    save_controller(pen_path, ccfg, state.mean_params, generations=cma.generations, scale=args.scale)
    pen_params = state.mean_params

    seeds = generation_seeds(cfg.seed, EVAL_GENERATION, args.episodes)  # dream_train's evaluation seeds
    env_kwargs = {"max_episode_steps": cfg.eval.max_steps} if cfg.eval.max_steps else {}
    pool = RealPool(cfg.task, wm.cpu(), ccfg, args.workers, env_kwargs)
    try:
        real = {name: summarize_returns(cfg.task, [r["return"] for r in pool.play([(prm, s) for s in seeds])])
                for name, prm in (("without", base_params), ("with", pen_params))}
    finally:
        pool.close()
    dream = {"without": dream_scores(wm, ccfg, base_params, cfg), "with": dream_scores(wm, ccfg, pen_params, cfg)}
    res = {"run": str(run), "task": cfg.task, "flow": flow_info, "penalty_threshold_logp": term.threshold,
           "scale": args.scale, "quantile": args.quantile, "clip": args.clip, "episodes": args.episodes,
           "cma": dataclasses.asdict(cma), "flow_config": FLOW, "temperature": cfg.dream.temperature,
           "real": {k: {kk: v[kk] for kk in ("mean", "std", "min", "max")} for k, v in real.items()},
           "real_returns": {k: v["returns"] for k, v in real.items()}, "dream": dream,
           "minutes": (time.time() - t0) / 60,
           "command": f"python scripts/reward_compare.py {run} --flow-steps {args.flow_steps} --scale {args.scale}"}
    atomic_write_json(out / "result.json", res)
    print(json.dumps({k: res[k] for k in ("real", "dream", "flow")}, indent=2))
    if args.doc:
        atomic_write_text(args.doc, render_doc(res, args.doc))
    return 0


def render_doc(r: dict[str, Any], doc: str) -> str:
    w, wo = r["real"]["with"], r["real"]["without"]
    dw, dwo = r["dream"]["with"], r["dream"]["without"]
    c = r["cma"]
    return "\n".join([
        "# The reward synthesizer: a flow's novelty penalty in the dream", "",
        f"Produced by `{r['command']} --doc {doc}` ({r['minutes']:.0f} min). Run: `{r['run']}` ({r['task']}).", "",
        "A controller evolved in the dream learns whatever M rewards, including states M gets wrong. "
        "The penalty asks a RealNVP flow trained on the latents of real frames (`z ~ q(z | x)`, as M "
        "saw them) how likely each dream "
        "state `z` is, and charges `scale * min(0, log p(z) - q)` per step, where `q` is the "
        f"{r['quantile']:.0%} quantile of `log p` over real latents (here {r['penalty_threshold_logp']:.1f}; "
        f"clipped at -{r['clip']:g} nats; scale {r['scale']:g} reward per nat). States as likely as real ones "
        "cost nothing, so the reward for staying alive is unchanged.", "",
        f"Flow: RealNVP, 6 affine couplings with s/t MLPs of {r['flow_config']['mlp_layers']} x "
        f"{r['flow_config']['hidden']}, on {r['flow']['train_latents']:,} latents of 9 in 10 real episodes; held-out NLL "
        f"{r['flow']['heldout_nll_per_dim']:.3f} nats/dim (train {r['flow']['train_nll_per_dim']:.3f}).", "",
        f"Both controllers were evolved with the same CMA-ES settings ({c['popsize']} x {c['rollouts']} rollouts, "
        f"{c['generations']} generations, sigma0 {c['sigma0']}, seed {c['seed']}, temperature {r['temperature']}); "
        f"only the reward differs. Scores over the same {r['episodes']} real episodes (dream_train's "
        "evaluation seeds), and over 64 dreams with M's reward alone:", "",
        "| controller evolved | real score (mean ± std) | real min / max | dream score (M's reward) |",
        "|---|---|---|---|",
        f"| without the penalty (the run's own) | **{wo['mean']:.1f} ± {wo['std']:.1f}** | {wo['min']:.0f} / {wo['max']:.0f} "
        f"| {dwo['mean']:.1f} ± {dwo['std']:.1f} |",
        f"| with the penalty | **{w['mean']:.1f} ± {w['std']:.1f}** | {w['min']:.0f} / {w['max']:.0f} "
        f"| {dw['mean']:.1f} ± {dw['std']:.1f} |", "",
        f"**What it shows.** With the penalty the real score moved from {wo['mean']:.1f} to {w['mean']:.1f} "
        f"({w['mean'] / wo['mean'] - 1:+.0%}) while the dream score moved from {dwo['mean']:.1f} to {dw['mean']:.1f}: "
        f"the gap between what the dream promises and what the real game gives went from "
        f"{dwo['mean'] - wo['mean']:.0f} to {dw['mean'] - w['mean']:.0f} points. One run, one seed per setting; "
        "the penalty narrows what C can exploit but cannot add what the world model lacks (see RESULTS.md on "
        "Doom's V). The machine was shared with other CPU-heavy jobs, which affects the wall time only.", ""])


if __name__ == "__main__":
    sys.exit(main())
