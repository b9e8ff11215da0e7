"""VQ-GAN on CarRacing frames: reconstruction sharpness, codebook perplexity, reconstruction FD in
V's latent space, and the GPT prior's samples; writes the ``vqgan`` section of docs/GENERATORS.md.

    python scripts/vqgan_report.py                    # ~15 min on 2 cores: collects, trains V, VQ-GAN, prior
    python scripts/vqgan_report.py --steps 100 --prior-steps 50 --doc /tmp/G.md --out /tmp/vq   # a quick look

The frames and the V are the ones scripts/generator_report.py uses (16 brownian CarRacing episodes
of 150 steps, seed 0; one fifth held out; V = the ``vae`` family's ``small`` preset, 300 steps of
32), so the Fréchet distances read beside that report's. Everything is trained here, offline.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import generators  # noqa: E402
from generators import images  # noqa: E402
from generators.train import FitConfig  # noqa: E402
from generators.vqgan import measure  # noqa: E402
from worldlab.io import atomic_write_text, write_doc_section  # noqa: E402
from worldlab.rundir import RunDir  # noqa: E402

N_EVAL = 500


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/vqgan_report", help="work folder (frames, V, models)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "GENERATORS.md"))
    p.add_argument("--steps", type=int, default=700, help="autoencoder steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prior-steps", type=int, default=400, help="GPT prior steps over the code grids")
    p.add_argument("--samples", type=int, default=500, help="prior samples for their Fréchet distance")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.steps, args.batch, args.prior_steps) < 1:
        p.error("--steps, --batch and --prior-steps must be >= 1")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    out = Path(args.out)
    run = RunDir(out / "car_racing")
    if not run.data_manifest.exists():
        from agents.collect import collect

        log("collecting 16 CarRacing episodes of 150 steps (brownian, seed 0)")
        run.root.mkdir(parents=True, exist_ok=True)
        collect("car_racing", run.data, 16, workers=0, policy="brownian", seed=0,
                env_kwargs={"max_episode_steps": 150}, progress=False)
    frames = generators.data.load(f"car_racing:{run.root}", image_size=64)
    train, test = frames.split(min(N_EVAL, len(frames) // 5), seed=0)
    log(f"{len(train)} training frames, {len(test)} held out")
    v_path = RunDir(out / "v").generator_final
    if not v_path.exists():  # as scripts/generator_report.py trains V
        torch.manual_seed(0)
        v = generators.model_for("vae", train, preset="small")
        generators.fit(v, train, FitConfig(steps=300, batch_size=32, seed=0), progress=False, tensorboard=False)
        v.save(v_path)
    v = generators.load(v_path)

    torch.manual_seed(0)
    model = generators.model_for("vqgan", train, preset="small", vae=str(v_path))
    log(f"VQ-GAN: {args.steps} steps of {args.batch}")
    t0 = time.time()
    generators.fit(model, train, FitConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, seed=0, log_every=25,
                                           checkpoint_every=200, sample_every=0, samples=16),
                   out=out / "vqgan", progress=True, tensorboard=False)
    ae_s = time.time() - t0
    log(f"GPT prior over the code grids: {args.prior_steps} steps")
    t0 = time.time()
    model.fit_prior(train, FitConfig(steps=args.prior_steps, seed=0, log_every=25), out=out / "vqgan" / "prior",
                    progress=True)
    prior_s = time.time() - t0
    model.save(out / "vqgan" / "vqgan.pt")
    res = measure(model, v, test, batch_size=args.batch, samples=args.samples)
    res.update(ae_seconds=ae_s, prior_seconds=prior_s, steps=args.steps, batch=args.batch, lr=args.lr,
               prior_steps=args.prior_steps, params=sum(q.numel() for n, q in model.named_parameters()
                                                        if n.split(".")[0] in ("encoder", "decoder", "quantizer")))
    fig = Path(args.doc).parent / "generators"
    fig.mkdir(parents=True, exist_ok=True)
    k = torch.linspace(0, len(test) - 1, 8).long()
    x = test.tensor(k)
    images.save_png(fig / "vqgan_recon.png", images.grid(torch.cat([x, model.reconstruct(x)]), nrow=8))
    images.save_png(fig / "vqgan_samples.png", images.grid(model.sample(16, generator=0), nrow=8))
    atomic_write_text(fig / "vqgan_report.json", json.dumps(res, indent=1, default=str))
    c = model.config
    wall = (time.time() - t_start) / 60
    lines = [
        "## VQ-GAN on CarRacing frames",
        "",
        f"`vqgan` (`generators/vqgan.py`), the `small` preset: encoder widths {'/'.join(map(str, c.widths))} to a "
        f"16x16 grid of codes from a codebook of {c.codebook_size} x {c.code_dim} (EMA updates, restarts of dead "
        f"codes), commitment beta {c.beta}, a perceptual loss from V's encoder features, the renderer's patch "
        f"discriminator entering the loss at step {c.disc_start}; {res['params'] / 1e6:.2f} M autoencoder "
        f"parameters, {args.steps} steps of {args.batch} ({ae_s / 60:.1f} min), then a GPT prior over the "
        f"code grids for {args.prior_steps} steps ({prior_s / 60:.1f} min). The same frames and V as the table "
        f"above; {res['frames']} held-out frames. {wall:.1f} min in all on {platform.machine()} "
        f"({torch.get_num_threads()} torch threads), torch {torch.__version__}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| reconstruction sharpness / real frames' | {res['sharpness_vs_real']:.2f} | >= 0.7 |",
        f"| codebook perplexity (batches of {args.batch}; all held-out frames) | {res['perplexity']:.0f}; "
        f"{res['perplexity_all']:.0f} | >= 128 |",
        f"| codes used (per batch; overall) | {100 * res['code_use']:.0f}%; {100 * res['code_use_all']:.0f}% | |",
        f"| reconstruction FD in V's latent space | {res['frechet_v_latent']:.3f} | <= 0.2 |",
        f"| L1 / MSE per pixel (0-1) | {res['l1']:.4f} / {res['mse']:.5f} | |",
        f"| FD of {args.samples} prior samples | {res.get('samples_frechet_v_latent', float('nan')):.2f} | |",
        "",
        "Held-out frames (top) and their reconstructions (bottom); then samples of the GPT prior:",
        "",
        "![VQ-GAN reconstructions](generators/vqgan_recon.png)",
        "",
        "![VQ-GAN prior samples](generators/vqgan_samples.png)",
        "",
        "A sharpness ratio above 1 partly reflects a faint adversarial texture on the grass, not only detail.",
        "",
    ]
    write_doc_section(args.doc, "vqgan", lines, command="python scripts/vqgan_report.py")
    log(f"wrote the vqgan section of {args.doc} ({wall:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
