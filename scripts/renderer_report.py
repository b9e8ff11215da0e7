"""Train a dream renderer on a run's frames and measure it against V's decoder.

    python scripts/renderer_report.py RUN [--steps 1500] [--out RUN/renderer] [--doc docs/RENDERER.md]
    python scripts/renderer_report.py RUN --family diffusion_renderer --steps 2000 --distill-rounds 2 \
        --doc docs/RENDERER.md

``--family renderer`` (default) is the pix2pix renderer; ``--family diffusion_renderer`` trains the
diffusion renderer with ``--teacher-steps`` DDIM steps, then distils it ``--distill-rounds`` times
(halving the steps each round; ``OUT/distilled.pt``) and measures both, with the frames per second
each draws on one core (one frame at a time, as a watched dream draws).

``RUN`` is a `dream_train.py` run folder (``RUN/data`` rollout shards, ``RUN/checkpoints/vae.pt``).
Episodes are split by index: every tenth episode is held out, the renderer trains on the rest
(through ``generators.fit``, resumable in ``OUT``). On the held-out frames ``x`` it then measures,
for V's decoder and for the renderer, each drawing ``z = mu(x)`` (V's posterior mean):

- L1 and MSE to the real frame (per pixel, images in [0, 1]);
- sharpness: the mean squared Laplacian of the frames, against the real frames' (1.0 = as sharp
  as real frames; a squared-error decoder draws blur, well below 1);
- Fréchet distance in V's latent space (``mu`` of the drawn frames vs ``mu`` of the real ones).

It writes a comparison grid (real / V / renderer), a dream strip (one dream rollout drawn by V
and by the renderer) and, with ``--doc``, the figures as Markdown.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import generators  # noqa: E402
from generators import images, metrics  # noqa: E402
from generators.data import GenData  # noqa: E402
from generators.diffusion_renderer import DiffusionRenderer  # noqa: E402
from generators.renderer import VRenderer, sharpness, vae_checkpoint_path  # noqa: E402
from generators.train import FitConfig, continued_from, suggested_threads  # noqa: E402
from worldlab.io import atomic_write_json, write_doc_section  # noqa: E402
from worldlab.rundir import RunDir  # noqa: E402
from worldlab.storage import Manifest, load_shard  # noqa: E402
from worldlab.vae import ConvVAE  # noqa: E402


def episode_frames(data_dir: Path, held_out: bool, max_frames: int, every: int = 10) -> GenData:
    """Frames of the episodes whose index % every == 0 (held out) or != 0 (training), in order."""
    m = Manifest.open(data_dir)
    chosen = [i for i in sorted(m.episodes) if (i % every == 0) == held_out]
    if not chosen:
        raise ValueError(f"{data_dir} has too few episodes to hold out every {every}th; collect more")
    out, n = [], 0
    for i in chosen:
        info = m.episodes[i]
        obs = load_shard(data_dir / info["file"], info.get("sha256"))["obs"]  # (T+1, 64, 64, 3)
        out.append(torch.from_numpy(obs).permute(0, 3, 1, 2))
        n += len(obs)
        if n >= max_frames:
            break
    x = torch.cat(out)[:max_frames].contiguous()
    return GenData(m.meta.get("task", "frames"), x, None, 256, 0)


def family_overrides(name: str, pairs: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` pairs as the family's config values, typed by each field's default
    (true/false for a flag); an unknown field or a value of the wrong type is refused with one line."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(generators.family(name).config)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {pair}: give FIELD=VALUE with a field of {name}'s config "
                             f"({', '.join(sorted(fields))})")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError
                out[key] = text.lower() == "true"
            elif isinstance(default, int | float | str):
                out[key] = type(default)(text)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--set {pair}: {key} takes a value of type {type(default).__name__} "
                             f"(its default: {default!r})") from None
    return out


def draw_all(fn: Any, z: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """z (N, Z) -> frames (N, 3, 64, 64) in [0, 1], in chunks."""
    with torch.no_grad():
        return torch.cat([fn(z[i:i + chunk]).float().cpu() for i in range(0, len(z), chunk)])


UNSHARP_TARGET = 0.8
"""The sharpness (against the real frames') V's frame is unsharp-masked to for the baseline row:
issue 17's sharpness line."""


def unsharp(frames: torch.Tensor, amount: float) -> torch.Tensor:
    """An unsharp mask: ``frames + amount * (frames - blur(frames))`` clamped to [0, 1], with a 5x5
    binomial blur; frames (B, 3, H, W) in [0, 1]."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    b, c, h, w = frames.shape
    flat = frames.reshape(b * c, 1, h, w)
    blur = F.conv2d(F.pad(flat, (2, 2, 2, 2), mode="replicate"), k[None, None].to(frames)).reshape(frames.shape)
    return (frames + amount * (frames - blur)).clamp(0, 1)


def unsharp_amount(frames: torch.Tensor, target: float) -> float:
    """The unsharp mask's amount that gives ``frames`` the sharpness ``target`` (absolute, the mean
    squared Laplacian), by bisection (the sharpness rises with the amount)."""
    lo, hi = 0.0, 1.0
    while sharpness(unsharp(frames, hi)) < target and hi < 1e3:
        hi *= 2
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sharpness(unsharp(frames, mid)) < target else (lo, mid)
    return 0.5 * (lo + hi)


def measure(renderers: dict[str, Any], vae: ConvVAE, test: GenData, judge: ConvVAE | None = None
            ) -> tuple[dict[str, Any], torch.Tensor, dict[str, torch.Tensor]]:
    """Each of ``renderers`` (name -> z (B, Z) -> frames in [0, 1]), V's decoder and the baseline
    ``unsharp_v`` (V's frame through an unsharp mask, its amount set so that it is as sharp as
    ``UNSHARP_TARGET`` of the real frames: what a fixed filter does) on ``test``'s posterior means:
    L1, MSE, sharpness against the real frames', Fréchet distance in V's latents, the per-frame
    figures (:func:`per_frame`); with ``judge`` (another V), the Fréchet distance in its latents too
    (``frechet_judge``): a yardstick that does not move with the V being drawn for."""
    x01 = test.x.float() / 255.0  # (N, 3, 64, 64) in [0, 1]
    mu = vae.encode_mean(test.x)
    v_frames = draw_all(vae.decode, mu)
    real_sharp = sharpness(x01)
    amount = unsharp_amount(v_frames, UNSHARP_TARGET * real_sharp)
    drawn = {"v_decoder": v_frames, "unsharp_v": unsharp(v_frames, amount),
             **{k: draw_all(fn, mu) for k, fn in renderers.items()}}

    def feats(v: ConvVAE, x01_: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return metrics.batched(lambda b: v.encode(b)[0], x01_, 256).numpy()

    f_real = feats(vae, x01)
    j_real = feats(judge, x01) if judge is not None else None
    res: dict[str, Any] = {"frames": len(test), "real_sharpness": real_sharp}
    for name, y in drawn.items():
        f_y = feats(vae, y)
        res[name] = {"l1": float((y - x01).abs().mean()), "mse": float((y - x01).pow(2).mean()),
                     "sharpness_vs_real": sharpness(y) / real_sharp,
                     "frechet_v_latent": metrics.frechet_distance(f_y, f_real),
                     **per_frame(y, x01, None if name == "v_decoder" else drawn["v_decoder"], f_y, f_real)}
        if judge is not None:
            res[name]["frechet_judge"] = metrics.frechet_distance(feats(judge, y), j_real)
    res["unsharp_v"]["amount"] = amount
    return res, x01, drawn


def per_frame(y: torch.Tensor, x01: torch.Tensor, base: torch.Tensor | None, mu_y: np.ndarray,
              mu_x: np.ndarray, block: int = 4) -> dict[str, float]:
    """What the distribution-level figures cannot see: whether each drawn frame is its own frame.

    - ``latent_error``: V's encoding of each drawn frame against its real frame's, as a fraction of
      the distance between two real frames from different places in the held-out episodes (frame i
      against frame i + N/2): 0 = every drawn frame encodes as its own real frame, 1 = as far off as
      another frame.
    - ``detail_own`` / ``detail_other`` (renderers, over V's decoder frame ``base``): the cosine, in
      ``block`` x ``block`` averages (the size of Doom's monsters), between what the renderer adds to
      V's frame and what V's frame lacks, each with its mean over all the frames removed, so that
      only what belongs to one frame counts; against the frame's own real frame and against another
      one (i + N/2, near 0 by construction). Detail that follows ``z`` correlates with its own
      frame's; the same blobs drawn in every frame are removed with the mean, and noise correlates
      with nothing. 1 would be V's missing detail drawn exactly.
    """
    shift = max(1, len(x01) // 2)
    mx, my = torch.as_tensor(mu_x, dtype=torch.float64), torch.as_tensor(mu_y, dtype=torch.float64)
    apart = (mx - mx.roll(shift, 0)).pow(2).sum(1).mean()
    out = {"latent_error": float((my - mx).pow(2).sum(1).mean() / apart.clamp_min(1e-12))}
    if base is not None:
        def specific(r: torch.Tensor) -> torch.Tensor:
            r = F.avg_pool2d(r, block) if block > 1 else r
            return (r - r.mean(0, keepdim=True)).flatten(1)

        added, lacked = specific(y - base), specific(x01 - base)
        out["detail_own"] = float(F.cosine_similarity(added, lacked, dim=1).mean())
        out["detail_other"] = float(F.cosine_similarity(added, lacked.roll(shift, 0), dim=1).mean())
    return out


TEMPERATURE_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(21))
"""The start-noise scales ``--target-sharpness`` tries, smallest first: 0.5 to 1.5 (the config's range)."""


def pick_temperature(model: DiffusionRenderer, vae: ConvVAE, frames: GenData, target: float,
                     grid: tuple[float, ...] = TEMPERATURE_GRID) -> tuple[float, dict[str, float]]:
    """The smallest start-noise scale in ``grid`` at which ``model`` draws ``frames``' posterior means
    at ``target`` x their real frames' sharpness or more (the largest scale if none does), and the
    sharpness ratio at each scale tried. Picked on training frames, so that the held-out figures judge
    the pick without having chosen it. The model's own temperature is left as it was."""
    x01 = frames.x.float() / 255.0
    real = sharpness(x01)
    mu = vae.encode_mean(frames.x)
    old, curve = model.config.temperature, {}
    try:
        for t in grid:
            model.config.temperature = t
            curve[f"{t:g}"] = sharpness(draw_all(model.render, mu)) / real
            if curve[f"{t:g}"] >= target:
                return t, curve
    finally:
        model.config.temperature = old
    return grid[-1], curve


SPEED_LATENTS = 30
"""held-out latents each drawer renders for its frames/s (``--speed-latents``; reports before it used 30)."""


def frames_per_s(fns: dict[str, Any], z: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Frames per second of each of ``fns`` drawing the latents ``z`` (N, Z) one at a time on one
    torch thread (as a watched dream draws), alternating in ``repeats`` rounds, median per drawer."""
    import statistics

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {k: [] for k in fns}
    try:
        with torch.no_grad():
            for fn in fns.values():
                fn(z[:1])  # warm-up
            for _ in range(repeats):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    for i in range(len(z)):
                        fn(z[i:i + 1])
                    rates[k].append(len(z) / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return {k: statistics.median(v) for k, v in rates.items()}


def dream_strip(run: RunDir, renderer: VRenderer, steps: int, seed: int = 0) -> np.ndarray:
    """One dream rollout (random actions), drawn by V (top row) and by the renderer (bottom row)."""
    from envs.dream import DreamEnv

    env = DreamEnv(run_dir=run, render_mode="rgb_array", temperature=1.0)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    zs = [env.latents()]
    for _ in range(steps - 1):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            break
        zs.append(env.latents())
    z = torch.cat(zs)[:: max(1, len(zs) // 8)][:8]
    top = env.world_model.vae.decode(z) * 2 - 1
    bottom = renderer.render(z) * 2 - 1
    return images.grid(torch.cat([top, bottom]), nrow=len(z), upscale=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a dream_train.py run folder (RUN/data, RUN/checkpoints/vae.pt)")
    p.add_argument("--family", choices=("renderer", "stylegan_renderer", "diffusion_renderer"), default="renderer",
                   help="the pix2pix renderer (default), the z-conditioned StyleGAN renderer or the distilled "
                        "diffusion renderer")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-frames", type=int, default=20_000, help="training frames (held-out: 2,000)")
    p.add_argument("--preset", default=None, help="the family's preset (tiny, small)")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="overrides",
                   help="the family's config fields, e.g. --set spatial=true d_lr_mul=0.25 (stylegan_renderer)")
    p.add_argument("--teacher-steps", type=int, default=8, help="diffusion_renderer: DDIM steps before distillation")
    p.add_argument("--distill-rounds", type=int, default=2, help="diffusion_renderer: halvings of the steps")
    p.add_argument("--distill-steps", type=int, default=400, help="diffusion_renderer: training steps per halving")
    p.add_argument("--sharpen-steps", type=int, default=0,
                   help="diffusion_renderer: then fine-tune the distilled sampler this many steps with a patch "
                        "discriminator and L1 to the real frame (OUT/sharpened.pt, the renderer the dream draws with)")
    p.add_argument("--sharpen-adv-weight", type=float, default=1.0, metavar="W",
                   help="diffusion_renderer: the discriminator's weight in the fine-tune (0: L1 to the real frame only, "
                        "the ablation)")
    p.add_argument("--sharpen-seed", type=int, default=0, help="diffusion_renderer: the fine-tune's seed (D, batches)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="diffusion_renderer: the start noise's scale the distilled renderer is saved with and the "
                        "dream draws with (default 1; below 1: less grain)")
    p.add_argument("--target-sharpness", type=float, default=None, metavar="S",
                   help="diffusion_renderer: instead of --temperature, save the distilled renderer with the "
                        "smallest start-noise scale (0.5, 0.55, ... 1.5) at which it draws S x the real frames' "
                        "sharpness on 1,000 training frames (e.g. 0.85: issue 17's 0.8 line with a margin)")
    p.add_argument("--temperatures", type=float, nargs="*", default=[],
                   help="diffusion_renderer: more start-noise scales to measure the distilled renderer at (rows of "
                        "the table only)")
    p.add_argument("--out", default=None, help="renderer run folder (default RUN/renderer, or RUN/diffusion_renderer "
                                               "for the diffusion renderer; RUN/renderer/stylegan for StyleGAN's)")
    p.add_argument("--doc", default=None, help="write the figures as Markdown here (e.g. docs/RENDERER.md)")
    p.add_argument("--judge-vae", default=None, metavar="V",
                   help="also measure the Fréchet distance in another V's latents (a vae.pt or a run folder): "
                        "a yardstick that does not change with the V the renderer draws for")
    p.add_argument("--speed-latents", type=int, default=SPEED_LATENTS, metavar="N",
                   help="held-out latents each drawer renders one at a time (three rounds) for its frames per "
                        "second on one core (fewer: a quicker, noisier figure)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.speed_latents < 1:
        print(f"error: --speed-latents must be >= 1, got {args.speed_latents}", file=sys.stderr)
        return 2
    run = RunDir(args.run)
    if not run.vae.exists() or not run.data_manifest.exists():
        print(f"error: {run} is not a run folder with data/ and checkpoints/vae.pt; "
              f"run python scripts/dream_train.py TASK --out {run} first", file=sys.stderr)
        return 2
    diffusion = args.family == "diffusion_renderer"
    if diffusion and (args.distill_rounds < 0 or args.teacher_steps < 1
                      or args.teacher_steps % (2 ** args.distill_rounds)):
        print(f"error: --teacher-steps {args.teacher_steps} must be >= 1 and divisible by 2**--distill-rounds "
              f"({2 ** max(args.distill_rounds, 0)}); e.g. --teacher-steps 8 --distill-rounds 2", file=sys.stderr)
        return 2
    if args.sharpen_steps < 0 or (args.sharpen_steps and not diffusion):
        print("error: --sharpen-steps must be >= 0 and needs --family diffusion_renderer", file=sys.stderr)
        return 2
    if args.sharpen_adv_weight < 0 or ((args.sharpen_adv_weight != 1.0 or args.sharpen_seed) and not args.sharpen_steps):
        print("error: --sharpen-adv-weight (>= 0) and --sharpen-seed set the fine-tune: they need --sharpen-steps N",
              file=sys.stderr)
        return 2
    if diffusion and not all(0.0 <= t <= 1.5 for t in (args.temperature, *args.temperatures)):
        print("error: --temperature and --temperatures must be in [0, 1.5] (the start noise's scale)", file=sys.stderr)
        return 2
    if args.target_sharpness is not None and (not diffusion or not args.distill_rounds
                                              or not 0.0 < args.target_sharpness <= 3.0
                                              or args.temperature != 1.0):
        print("error: --target-sharpness S picks the distilled diffusion renderer's start noise: it needs "
              "--family diffusion_renderer, --distill-rounds >= 1, 0 < S <= 3 and no --temperature", file=sys.stderr)
        return 2
    judge = None
    if args.judge_vae:
        try:
            judge = ConvVAE.load(vae_checkpoint_path(args.judge_vae)).eval()
        except (OSError, ValueError) as e:
            print(f"error: --judge-vae {args.judge_vae}: {e}", file=sys.stderr)
            return 2
    try:
        overrides = family_overrides(args.family, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or suggested_threads())
    out = RunDir(args.out or (run.diffusion_renderer if diffusion else
                              run.renderer / "stylegan" if args.family == "stylegan_renderer" else run.renderer))
    t0 = time.time()
    prev_path = out.root / "report.json"
    prev = json.loads(prev_path.read_text()) if prev_path.exists() else {}
    resumed = out.generator_final.exists() and prev.get("steps") == args.steps  # trained by an earlier invocation
    # a longer --steps continues an earlier invocation's training: its time counts, its distillation does not
    extended = continued_from(prev, out.generator, args.steps)
    earlier_s = prev.get("train_seconds", 0.0) if extended else 0.0
    same_distill = resumed and (prev.get("distill_rounds"), prev.get("distill_steps")) == (args.distill_rounds,
                                                                                          args.distill_steps)
    train = episode_frames(run.data, held_out=False, max_frames=args.max_frames)
    test = episode_frames(run.data, held_out=True, max_frames=2000)
    torch.manual_seed(0)
    kw: dict[str, Any] = {"steps": args.teacher_steps} if diffusion else {}
    model = generators.model_for(args.family, train, preset=args.preset, vae=str(run), **kw, **overrides)
    assert isinstance(model, VRenderer)
    generators.fit(model, train, FitConfig(steps=args.steps, batch_size=args.batch_size, seed=0,
                                           sample_every=max(100, args.steps // 5), checkpoint_every=200),
                   out=out.root, progress=args.progress)
    model.save(out.generator_final)
    train_s = prev.get("train_seconds", 0.0) if resumed else earlier_s + time.time() - t0
    model.eval()
    renderers: dict[str, VRenderer] = {"renderer": model}
    vae = ConvVAE.load(run.vae)
    temperature, pick = args.temperature, None
    distill_s = 0.0
    if diffusion and args.distill_rounds:
        assert isinstance(model, DiffusionRenderer)
        if out.distilled.exists() and same_distill:  # a rerun keeps the distilled model (and the time it took)
            student = generators.load(out.distilled)
            distill_s = prev.get("distill_seconds", 0.0)
        else:
            t1 = time.time()
            student = copy.deepcopy(model)
            student.distill(train, args.distill_rounds, args.distill_steps, args.batch_size, seed=0,
                            progress=(lambda r, i, loss: print(f"distill round {r + 1}: step {i}, loss {loss:.4f}",
                                                               flush=True)) if args.progress else None)
            student.save(out.distilled)
            distill_s = time.time() - t1
        if args.target_sharpness is not None:  # the start noise, picked on training frames
            sample = GenData(train.name, train.x[:: max(1, len(train) // 1000)][:1000].contiguous(), None, 256, 0)
            temperature, curve = pick_temperature(student, vae, sample, args.target_sharpness)
            pick = {"target": args.target_sharpness, "frames": len(sample), "sharpness": curve,
                    "picked": temperature}
        if student.config.temperature != temperature:  # the renderer the dream draws with
            student.config.temperature = temperature
            student.save(out.distilled)
        renderers = {"teacher": model, "distilled": student.eval()}
        for t in args.temperatures:
            other = copy.deepcopy(student)
            other.config.temperature = t
            renderers[f"distilled_t{t:g}"] = other
    sharpen_s = 0.0
    if args.sharpen_steps:
        base_name = "distilled" if "distilled" in renderers else "renderer"
        same_sharpen = (same_distill or not args.distill_rounds) and prev.get("sharpen_steps") == args.sharpen_steps \
            and (prev.get("sharpen_adv_weight", 1.0), prev.get("sharpen_seed", 0)) == (args.sharpen_adv_weight,
                                                                                     args.sharpen_seed) \
            and prev.get("temperatures", {}).get(base_name) == temperature
        if out.sharpened.exists() and same_sharpen:  # a rerun keeps the sharpened model (and the time it took)
            sharp = generators.load(out.sharpened)
            sharpen_s = prev.get("sharpen_seconds", 0.0)
        else:
            t1 = time.time()
            sharp = copy.deepcopy(renderers[base_name])
            assert isinstance(sharp, DiffusionRenderer)
            sharp.config.temperature = temperature
            sharp.sharpen(train, args.sharpen_steps, args.batch_size, adv_weight=args.sharpen_adv_weight,
                          seed=args.sharpen_seed,
                          progress=(lambda i, l1, d: print(f"sharpen: step {i}, L1 {l1:.4f}, D loss {d:.3f}",
                                                           flush=True)) if args.progress else None)
            sharp.save(out.sharpened)
            sharpen_s = time.time() - t1
        renderers["sharpened"] = sharp.eval()
    t_measure = time.time()
    res, x01, drawn = measure({k: m.render for k, m in renderers.items()}, vae, test, judge)
    zs = torch.cat([vae.encode(test.x[i:i + 1])[0]
                    for i in range(0, len(test), max(1, len(test) // args.speed_latents))])[:args.speed_latents]
    amount = res["unsharp_v"]["amount"]
    fps = frames_per_s({"v_decoder": vae.decode, "unsharp_v": lambda z: unsharp(vae.decode(z), amount),
                        **{k: m.render for k, m in renderers.items()}}, zs)
    for k, v in fps.items():
        res[k]["frames_per_s_1_core"] = v
    for k, m in renderers.items():
        res[k]["sampling_steps"] = int(getattr(m.config, "steps", 1))
    final_name = next((n for n in ("sharpened", "distilled") if n in renderers), next(iter(renderers)))
    final = renderers[final_name]
    k = torch.linspace(0, len(test) - 1, 8).long()
    shown = [n for n in renderers if not n.startswith("distilled_t")]
    rows = [x01[k], drawn["v_decoder"][k], *[drawn[n][k] for n in shown]]
    pic = images.grid(torch.cat(rows) * 2 - 1, nrow=8, upscale=2)
    images.save_png(out.root / "compare.png", pic)
    strip = dream_strip(run, final, 200)
    images.save_png(out.root / "dream_strip.png", strip)
    cmd = f"python scripts/renderer_report.py {run} --steps {args.steps}"
    if diffusion:
        cmd += (f" --family diffusion_renderer --teacher-steps {args.teacher_steps} --distill-rounds "
                f"{args.distill_rounds} --distill-steps {args.distill_steps}")
        if args.sharpen_steps:
            cmd += f" --sharpen-steps {args.sharpen_steps}"
            if args.sharpen_adv_weight != 1.0:
                cmd += f" --sharpen-adv-weight {args.sharpen_adv_weight:g}"
            if args.sharpen_seed:
                cmd += f" --sharpen-seed {args.sharpen_seed}"
        if args.target_sharpness is not None:
            cmd += f" --target-sharpness {args.target_sharpness:g}"
        elif args.temperature != 1.0:
            cmd += f" --temperature {args.temperature:g}"
        if args.temperatures:
            cmd += " --temperatures " + " ".join(f"{t:g}" for t in args.temperatures)
    elif args.family != "renderer":
        cmd += f" --family {args.family}"
    if args.preset:
        cmd += f" --preset {args.preset}"
    if args.overrides:
        cmd += " --set " + " ".join(args.overrides)
    if args.judge_vae:
        cmd += f" --judge-vae {args.judge_vae}"
    if args.speed_latents != SPEED_LATENTS:
        cmd += f" --speed-latents {args.speed_latents}"
    if args.out:
        cmd += f" --out {args.out}"
    res.update(run=str(run), task=train.name, family=args.family, train_frames=len(train), steps=args.steps,
               batch_size=args.batch_size, train_seconds=train_s, measure_seconds=time.time() - t_measure,
               seconds=(train_s + distill_s + sharpen_s + time.time() - t_measure) if resumed
               else earlier_s + time.time() - t0,
               resumed=resumed, extended_from=extended,
               distill_rounds=args.distill_rounds, distill_steps=args.distill_steps,
               distill_seconds=distill_s, sharpen_steps=args.sharpen_steps, sharpen_seconds=sharpen_s,
               sharpen_adv_weight=args.sharpen_adv_weight, sharpen_seed=args.sharpen_seed,
               drawers=list(renderers), shown=shown, final=final_name, temperature_pick=pick,
               temperatures={k: float(getattr(m.config, "temperature", 1.0)) for k, m in renderers.items()},
               machine=f"{platform.processor() or platform.machine()}, torch {torch.__version__}", command=cmd,
               judge_vae=args.judge_vae, speed_latents=len(zs))
    atomic_write_json(out.root / "report.json", res)
    print(json.dumps({k_: v for k_, v in res.items() if k_ in ("v_decoder", "unsharp_v", *renderers, "real_sharpness")},
                     indent=2))
    if args.doc:
        doc = Path(args.doc)
        figs = doc.parent / "renderer"
        figs.mkdir(parents=True, exist_ok=True)
        tag = train.name + {"renderer": "", "stylegan_renderer": "_stylegan", "diffusion_renderer": "_diffusion"}[
            args.family]
        images.save_png(figs / f"{tag}_compare.png", pic)
        images.save_png(figs / f"{tag}_dream_strip.png", strip)
        if diffusion:
            write_doc_section(doc, "diffusion-renderer", diffusion_doc(res, tag, doc), head=DOC_HEAD)
        else:
            write_doc_section(doc, args.family.replace("_", "-"), render_doc(res, tag, doc, args.family),
                              head=DOC_HEAD)
    return 0


DOC_HEAD = "# The dream renderers (`generators.renderer`, `generators.diffusion_renderer`)\n"


RENDER_INTRO = {
    "renderer": [
        "## The pix2pix renderer (`generators.renderer`)", "",
        "A generator conditioned on the dream's latent `z` that `DreamEnv` draws with in place of V's "
        "decoder (`DreamEnv(..., renderer=PATH)`, `watch.py RUN --dream --renderer PATH`). It is a "
        "pix2pix-style conditional GAN: `G(z)` has V's decoder architecture and starts from V's decoder "
        "weights; it trains with an L1 term to the real frame (weight 100) plus a patch discriminator "
        "`D(x, z)` that sees the frame and its latent. V's decoder, trained on a squared error, draws the "
        "mean of the frames a latent could stand for; the renderer is pushed to draw one sharp frame.", ""],
    "stylegan_renderer": [
        "## The StyleGAN renderer (`generators.stylegan_renderer`)", "",
        "StyleGAN's synthesis network driven by the dream's latent: `z` goes through the mapping network to "
        "`w`, every style layer's modulated convolution reads `w`, and the noise inputs are fixed images saved "
        "with the model, so the same `z` always draws the same frame. It draws the detail over V's frozen "
        "decoder frame (`G(z) = tanh(V_logits(z) / 2 + S(map(z)))`, its to-RGB layers starting at zero, so "
        "it starts as V's frame) and trains by the pix2pix renderer's recipe (L1 to the real frame, weight 100, "
        "plus the patch discriminator `D(x, z)`).", ""],
}


def unsharp_name(u: dict[str, Any]) -> str:
    return f"V's decoder + unsharp mask (amount {u['amount']:.2f}; a fixed filter, the baseline)"


PER_FRAME_WORDS = (
    "V's latent error and the detail columns are per frame, where the others judge the frames as a crowd: V's latent error is "
    "`|mu(drawn) - mu(real)|^2` of each frame as a fraction of that between two different real frames; the "
    "detail columns correlate, in 4 x 4 blocks, what the renderer adds to V's frame with what the real frame "
    "has that V's frame lacks, each frame's own part only (the mean over all frames removed), against its own "
    "frame and against another (`per_frame` in `scripts/renderer_report.py`): detail placed by `z` scores "
    "above 0 on its own frame, the same blobs in every frame and grain score ~0 on both. The baseline row "
    f"sharpens V's own frame with an unsharp mask to {UNSHARP_TARGET:g} of the real frames' sharpness: a "
    "renderer that learns anything must place its detail better than that filter does.")


def _fig(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.2f}" if key in m else "n/a"


def render_doc(r: dict[str, Any], tag: str, doc: Path, family: str = "renderer") -> list[str]:
    v, g, u = r["v_decoder"], r["renderer"], r.get("unsharp_v")
    return [
        *RENDER_INTRO[family],
        f"Produced by `{r['command']} --doc {doc}` ({r['seconds'] / 60:.1f} min on {r['machine']}). "
        f"Run: `{r['run']}` ({r['task']}); trained on {r['train_frames']:,} frames of 9 in 10 episodes, "
        f"{r['steps']} steps of batch {r['batch_size']}; measured on {r['frames']:,} frames of the held-out "
        f"episodes (every tenth), each drawn from its posterior mean `z = mu(x)`.", "",
        "| drawn by | L1 to the real frame | MSE | sharpness / real frames' | Fréchet distance in V's latent space "
        "| V's latent error per frame | detail, own frame / another |",
        "|---|---|---|---|---|---|---|",
        f"| V's decoder | {v['l1']:.4f} | {v['mse']:.4f} | {v['sharpness_vs_real']:.2f} | {v['frechet_v_latent']:.2f} "
        f"| {_fig(v, 'latent_error')} | |",
        *([f"| {unsharp_name(u)} | {u['l1']:.4f} | {u['mse']:.4f} | {u['sharpness_vs_real']:.2f} | "
           f"{u['frechet_v_latent']:.2f} | {_fig(u, 'latent_error')} | {_fig(u, 'detail_own')} / "
           f"{_fig(u, 'detail_other')} |"] if u else []),
        f"| renderer | {g['l1']:.4f} | {g['mse']:.4f} | {g['sharpness_vs_real']:.2f} | {g['frechet_v_latent']:.2f} "
        f"| {_fig(g, 'latent_error')} | {_fig(g, 'detail_own')} / {_fig(g, 'detail_other')} |",
        "", "Sharpness is the mean squared Laplacian of the frames divided by the real frames' "
        f"({r['real_sharpness']:.5f}): 1.0 is as much fine detail as a real frame. The Fréchet distance "
        "compares V's encodings `mu` of the drawn frames with those of the real ones (lower is closer); "
        "L1/MSE reward the blurred mean, so a sharper renderer need not win them. " + PER_FRAME_WORDS, "",
        what_it_shows(g, v, r["steps"], u), "",
        "Held-out frames (top), V's decoder (middle), the renderer (bottom):", "",
        f"![compare](renderer/{tag}_compare.png)", "",
        "One dream (random actions, temperature 1): V's decoder (top), the renderer (bottom), same latents:", "",
        f"![dream](renderer/{tag}_dream_strip.png)", ""]


FD_FAIL = 1.5
"""A renderer whose Fréchet distance is above this multiple of V's decoder's draws frames unlike the
real ones, however sharp (the residual StyleGAN renderer: 0.775 against V's 0.155)."""
def detail_words(g: dict[str, float]) -> str:
    """The per-frame figures in words ('' for a row measured before they existed)."""
    if "detail_own" not in g:
        return ""
    return (f"The detail it adds to V's frame correlates {g['detail_own']:.2f} with the detail its own real frame "
            f"has and V's frame lacks, {g['detail_other']:.2f} with another frame's (in 4 x 4 blocks, each "
            "frame's own part only; 1 = V's missing detail drawn exactly, 0 = unrelated).")


def what_it_shows(g: dict[str, float], v: dict[str, float], steps: int, u: dict[str, float] | None = None) -> str:
    """The reading of a renderer's row against V's decoder's (and the unsharp-mask baseline ``u``),
    from the figures: one no sharper than V's decoder has failed; one sharper but far off the real
    frames' distribution (Fréchet distance above ``FD_FAIL`` x V's) has failed too; one whose detail
    follows its frame no better than the baseline's (``detail_own``) is sharper, not truer;
    otherwise a sharper drawer."""
    sharp = f"The renderer draws {g['sharpness_vs_real']:.0%} of the real frames' fine detail where V's decoder " \
            f"draws {v['sharpness_vs_real']:.0%}"
    fd = f"{g['frechet_v_latent']:.2f} against V's {v['frechet_v_latent']:.2f}"
    detail = detail_words(g)
    if g["sharpness_vs_real"] <= v["sharpness_vs_real"]:
        return (f"**What it shows.** {sharp}, and its Fréchet distance is {fd}: after {steps} steps it has not "
                "learned to draw the frames (the pictures below). It is no better a drawer of the dream than V's "
                "decoder; do not draw with it.")
    if g["frechet_v_latent"] > FD_FAIL * v["frechet_v_latent"]:
        return (f"**What it shows.** {sharp}, but its Fréchet distance is {fd}, more than {FD_FAIL:g} times V's: "
                f"its detail is not the frames' (the pictures below). {detail} It has failed as a drawer of the "
                "dream; do not draw with it.".replace("  ", " "))
    if u and "detail_own" in g and "detail_own" in u and g["detail_own"] <= u["detail_own"]:
        return (f"**What it shows.** {sharp}, at a Fréchet distance of {fd}, but its detail follows the frame no "
                f"better than a fixed filter's. {detail} V's frame through an unsharp mask scores "
                f"{u['detail_own']:.2f}. Sharper, not truer: much of what it draws is texture or shapes that `z` "
                "does not place (the pictures below); watch the strips before drawing the dream with it.")
    l1_up, fd_up = g["l1"] > v["l1"], g["frechet_v_latent"] > v["frechet_v_latent"]
    why = {(True, True): "sharp detail in slightly wrong places costs more in these pixel and V-feature distances "
                         "than blur does",
           (True, False): "the pixel distance prefers the blur (sharp detail a little off costs more per pixel than "
                          "blur does), V's features prefer the renderer's frames",
           (False, True): "nearer the frames per pixel, farther in V's features",
           (False, False): "nearer the real frames than V's own decoding, per pixel and in V's features"}[(l1_up, fd_up)]
    return (f"**What it shows.** {sharp}; its L1 to the frame is {'higher' if l1_up else 'lower'} "
            f"({g['l1']:.4f} vs {v['l1']:.4f}) and its Fréchet distance {'higher' if fd_up else 'lower'} "
            f"({g['frechet_v_latent']:.2f} vs {v['frechet_v_latent']:.2f}): {why}. " + (f"{detail} " if detail else "")
            + "Watch the strips: where V smears the small objects of a scene (Doom's monsters and fireballs) into "
            "the wall, a renderer that has learned them draws them as objects; grain over flat floors and ceilings "
            "counts as sharpness too, and no figure above tells the two apart. It "
            "draws only what `z` encodes: an object V's latent lost cannot come back.")


def pick_words(pick: dict[str, Any] | None) -> str:
    """``--target-sharpness``'s pick in words ('' without one)."""
    if not pick:
        return ""
    tried = ", ".join(f"x{t} {v:.2f}" for t, v in pick["sharpness"].items())
    return (f" The distilled renderer's start noise, x{pick['picked']:g}, was picked on {pick['frames']:,} training "
            f"frames, not on the held-out ones: the smallest scale (from x0.5 in steps of 0.05) whose frames reach "
            f"{pick['target']:g} of the real frames' sharpness (tried: {tried}).")


def diffusion_doc(r: dict[str, Any], tag: str, doc: Path) -> list[str]:
    temps = r.get("temperatures", {})
    names = {"v_decoder": "V's decoder", "renderer": "diffusion renderer", "teacher": "diffusion renderer, teacher",
             **{k: "diffusion renderer, distilled" + (f", start noise x{temps[k]:g}" if temps.get(k, 1.0) != 1.0 else "")
                for k in r["drawers"] if k.startswith("distilled")},
             "sharpened": f"diffusion renderer, {'distilled, ' if r.get('distill_rounds') else ''}sharpened "
                          f"({r.get('sharpen_steps', 0):,} steps "
                          + {0.0: "of L1 only, no D)", 1.0: "with D)"}.get(
                              float(r.get("sharpen_adv_weight", 1.0)), f"with D x{r.get('sharpen_adv_weight', 1.0):g})")}
    final_name = r.get("final", r["drawers"][-1])
    names[final_name] += " (saved: the dream draws with it)" if final_name.startswith(("distilled", "sharpened")) else ""
    u = r.get("unsharp_v")
    if u:
        names["unsharp_v"] = unsharp_name(u)
    judged = bool(r.get("judge_vae")) and "frechet_judge" in r["v_decoder"]
    rows = []
    for k in ("v_decoder", *(["unsharp_v"] if u else []), *r["drawers"]):
        m = r[k]
        evals = 1 if k in ("v_decoder", "unsharp_v") else m["sampling_steps"]
        rows.append(f"| {names[k]} | {evals} | {m['l1']:.4f} | {m['mse']:.4f} | {m['sharpness_vs_real']:.2f} | "
                    f"{m['frechet_v_latent']:.3f} | " + (f"{m['frechet_judge']:.3f} | " if judged else "")
                    + f"{_fig(m, 'latent_error')} | "
                    + ("| " if k == "v_decoder" else f"{_fig(m, 'detail_own')} / {_fig(m, 'detail_other')} | ")
                    + f"{m['frames_per_s_1_core']:,.0f} |")
    final = r[final_name]
    checks = [("frames/s on one core >= 15", final["frames_per_s_1_core"] >= 15),
              ("sharpness >= 0.8 of real frames'", final["sharpness_vs_real"] >= 0.8),
              ("Fréchet distance <= 0.15", final["frechet_v_latent"] <= 0.15)]
    if judged:
        checks.append((f"Fréchet distance <= 0.15 in the judge V's latents (`{r['judge_vae']}`)",
                       final["frechet_judge"] <= 0.15))
    return [
        "## The diffusion renderer (`generators.diffusion_renderer`)", "",
        "A z-conditioned diffusion model of the detail V's decoder leaves out: V's frame `V_decoder(z)` is "
        "the base, a small U-Net (the book's, 6 channels in: the noisy residual and the base; `z` projected "
        "beside the noise embedding) learns the residual `x - V_decoder(z)` by v-prediction on a cosine "
        "schedule, and progressive distillation (Salimans & Ho 2022) halves its DDIM steps round after round. "
        "Every frame starts from the same noise, so the same `z` gives the same frame (no flicker)."
        + (" Then (`--sharpen-steps`) the distilled sampler is fine-tuned as it draws, through its steps from "
           "that noise, with the pix2pix renderer's loss (L1 to the real frame, weight 100, plus a patch "
           "discriminator `D(x, z)`), as adversarial diffusion distillation (Sauer et al. 2023) gives a "
           "few-step student a discriminator; the anchor here is the real frame, not the teacher."
           if r.get("sharpen_steps") else "")
        + " Drawn like the pix2pix renderer: `DreamEnv(..., renderer=PATH)`, `watch.py RUN --renderer PATH` "
        "(V's decoder and the renderer side by side).", "",
        f"Produced by `{r['command']} --doc {doc}` ({r['seconds'] / 60:.1f} min on {r['machine']}: training "
        f"{r['train_seconds'] / 60:.1f} min, distillation {r['distill_seconds'] / 60:.1f} min"
        + (f", sharpening {r['sharpen_seconds'] / 60:.1f} min" if r.get("sharpen_steps") else "")
        + (", all in an earlier invocation that this one resumed to measure" if r.get("resumed") else "")
        + (f", training counted from step 0 over two invocations (the second continued the first's "
           f"{r['extended_from']:,} steps)" if r.get("extended_from") else "")
        + f"). Run: `{r['run']}` "
        f"({r['task']}); trained on {r['train_frames']:,} frames of 9 in 10 episodes, {r['steps']} steps of batch "
        f"{r['batch_size']}; measured on {r['frames']:,} frames of the held-out episodes (every tenth), each drawn "
        "from its posterior mean `z = mu(x)`. Frames/s: one frame at a time on one torch thread, median of 3 "
        f"rounds of {r.get('speed_latents', SPEED_LATENTS)} frames, in one process." + pick_words(r.get("temperature_pick")), "",
        "| drawn by | network evaluations | L1 to the real frame | MSE | sharpness / real frames' | Fréchet distance "
        "in V's latent space | " + (f"Fréchet distance in the judge V's (`{r['judge_vae']}`) | " if judged else "")
        + "V's latent error per frame | detail, own frame / another | frames/s, 1 core |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if judged else ""), *rows, "", PER_FRAME_WORDS, "",
        "Issue 17's targets for the renderer as the dream draws it: "
        + "; ".join(f"{what}: **{'met' if ok else 'not met'}**" for what, ok in checks) + "."
        + (f" The lab's own line beside them, since a fixed filter meets the sharpness line and all three can be "
           f"met by detail in the wrong places: its detail follows the frame better than the unsharp mask's "
           f"(detail, own frame {final['detail_own']:.2f} against {u['detail_own']:.2f}): "
           f"**{'met' if final['detail_own'] > u['detail_own'] else 'not met'}**."
           if u and "detail_own" in final else ""),
        "", what_it_shows(final, r["v_decoder"], r["steps"], u).replace("The renderer", f"The {names[final_name]}", 1)
        .replace(" (saved: the dream draws with it)", ""), "",
        "Held-out frames (top), V's decoder, then " + ", ".join(names[k] for k in r.get("shown", r["drawers"])) + ":",
        "",
        f"![compare](renderer/{tag}_compare.png)", "",
        "One dream (random actions, temperature 1): V's decoder (top), the "
        f"{names[final_name]} (bottom), same latents:", "",
        f"![dream](renderer/{tag}_dream_strip.png)", ""]


if __name__ == "__main__":
    sys.exit(main())
