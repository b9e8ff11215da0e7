"""Train a diffusion prior over a run's latents and measure it against V's own N(0, I) prior; writes
the latent-prior section of docs/GENERATORS.md and a sample grid.

    python scripts/latent_prior_report.py runs/car_racing
    python scripts/latent_prior_report.py runs/car_racing --steps 200 --doc /tmp/G.md --n-eval 500   # smoke

Every sampler's latents are decoded by the run's V and the frames encoded again by V: the
Fréchet distance of those features to V's features of real held-out frames is the table's measure
(as GENERATORS.md measures frame models), beside the floor of two real sets. The prior trains
through generators.train into RUN/latent_prior (resumable); a distilled copy (progressive
distillation, 8 -> 2 steps by default) is saved beside it. Timings: 1,024 dream starts, median
of 7, with the given torch threads.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder with a trained V and encoded latents")
    p.add_argument("--steps", type=int, default=4000, help="training steps of the prior (default 4000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--teacher-steps", type=int, default=8, help="DDIM steps of the distillation's first teacher")
    p.add_argument("--distill-rounds", type=int, default=2, help="halvings (default 2: 8 -> 2 steps)")
    p.add_argument("--distill-steps", type=int, default=1500, help="training steps per halving")
    p.add_argument("--n-eval", type=int, default=2000, help="samples and real frames per Fréchet distance")
    p.add_argument("--doc", default="docs/GENERATORS.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "teacher_steps", "distill_steps", "n_eval", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    import generators
    from generators import images
    from generators.metrics import frechet_distance
    from generators.train import FitConfig, train_generator
    from worldlab.io import atomic_write_json, read_json, write_doc_section
    from worldlab.rundir import RunDir
    from worldlab.vae import ConvVAE

    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    if not run.vae.exists():
        print(f"latent_prior_report.py: error: {run.vae} is missing; train the run's V first "
              f"(python scripts/dream_train.py TASK --out {run.root})", file=sys.stderr)
        return 2
    try:
        frames = generators.data.load(f"frames:{run.root}", max_items=2 * args.n_eval, seed=args.seed + 1)
    except (ValueError, FileNotFoundError) as e:
        print(f"latent_prior_report.py: error: {e}", file=sys.stderr)
        return 2
    v = ConvVAE.load(run.vae).eval()
    out = RunDir(run.root / "latent_prior")
    t0 = time.time()
    prior, _ = train_generator("latent_prior", f"latents:{run.root}", FitConfig(steps=args.steps,
                               batch_size=args.batch_size, seed=args.seed), out=out.root, progress=False)
    train_s = time.time() - t0
    timing = read_json(out.timing_json) if out.timing_json.exists() else {}
    if timing.get("steps") == args.steps:
        train_s = float(timing["seconds"])  # trained by an earlier run of this command: its own time
    else:
        atomic_write_json(out.timing_json, {"steps": args.steps, "seconds": train_s})
    log(f"prior trained ({args.steps} steps, {train_s:.0f} s)")

    def features(x: torch.Tensor) -> np.ndarray:  # frames uint8 or [0, 1] floats -> V's posterior means
        return v.encode_mean(x, chunk=250).numpy()

    @torch.no_grad()
    def decoded(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([v.decode(z[i:i + 250]) for i in range(0, len(z), 250)])

    n = min(args.n_eval, len(frames) // 2)
    real_a, real_b = features(frames.x[:n]), features(frames.x[n:2 * n])
    floor = frechet_distance(real_b, real_a)

    def timing(fn) -> float:
        fn()
        ts = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts)

    noise = torch.randn(n, prior.shape[0], generator=torch.Generator().manual_seed(args.seed + 7))
    rows = [{"sampler": "V's prior N(0, I)", "evals": 0, "z": noise,
             "ms": timing(lambda: torch.randn(1024, prior.shape[0]))}]
    for s in (1, 2, 4, 8, 16):
        rows.append({"sampler": f"DDIM, {s} step{'s' if s > 1 else ''}", "evals": s,
                     "z": prior.sample(n, steps=s, noise=noise),
                     "ms": timing(lambda s=s: prior.sample(1024, steps=s, generator=0))})
    student_path = out.root / "distilled.pt"
    if student_path.exists():
        student = generators.load(student_path)
        distill_s = float(read_json(out.timing_json).get("distill_seconds", float("nan")))
    else:
        student = copy.deepcopy(prior)
        t0 = time.time()
        student.distill(generators.data.load(f"latents:{run.root}", seed=args.seed), args.teacher_steps,
                        args.distill_rounds, steps_per_round=args.distill_steps, seed=args.seed)
        distill_s = time.time() - t0
        student.save(student_path)
        atomic_write_json(out.timing_json, {**read_json(out.timing_json), "distill_seconds": distill_s})
    ks = student.config.steps
    rows.append({"sampler": f"distilled {args.teacher_steps} -> {ks} step{'s' if ks > 1 else ''}", "evals": ks,
                 "z": student.sample(n, noise=noise), "ms": timing(lambda: student.sample(1024, generator=0))})
    for r in rows:
        r["fd"] = frechet_distance(features(decoded(r["z"])), real_a)
        log(f"{r['sampler']}: FD {r['fd']:.3f}, 1,024 starts in {r['ms']:.1f} ms")

    figures = Path(args.doc).parent / "generators"
    figures.mkdir(parents=True, exist_ok=True)
    best = rows[-1]
    grid = torch.cat([frames.x[:8].float() / 255.0, decoded(rows[0]["z"][:8]), decoded(best["z"][:8])])
    images.save_png(figures / "latent_prior_samples.png", images.grid(grid * 2 - 1, nrow=8))
    c = prior.config
    lines = [
        "## Latent prior: dream starts and V samples from a diffusion model over V's latents", "",
        f"Run `{run.root}` (its V, {len(generators.data.load(f'latents:{run.root}')):,} encoded frames); the prior: "
        f"v-prediction MLP {c.width} x {c.blocks} blocks, {args.steps:,} steps of batch {args.batch_size} "
        f"({train_s:.0f} s); distillation {args.distill_rounds} halvings of {args.distill_steps:,} steps "
        + (f"({distill_s:.0f} s)." if np.isfinite(distill_s) else "(reused).")
        + f" Fréchet distance of V's features of V-decoded samples to {n:,} real held-out frames "
        f"(two real sets: {floor:.2f}). Times: 1,024 starts, {args.threads} torch threads, median of 7, load "
        f"average {os.getloadavg()[0]:.1f} at the end (above the CPU count: other jobs shared the machine); "
        f"Python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs.", "",
        "| sampler | network evaluations | FD (V latent) | 1,024 starts |", "|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['evals']} | {r['fd']:.2f} | {r['ms']:.1f} ms |" for r in rows]
    lines += ["", "Real frames (top), V's N(0, I) samples (middle), the distilled prior's (bottom):", "",
              "![latent prior samples](generators/latent_prior_samples.png)", "",
              "The dream starts from them with `DreamVectorEnv.reset(options={\"z0\": prior.sample(n)})`.", ""]
    doc = write_doc_section(args.doc, "latent-prior", lines, "python scripts/latent_prior_report.py " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    log(f"wrote the latent-prior section of {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
