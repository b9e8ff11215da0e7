"""CLIP in the lab, measured: writes docs/MULTIMODAL.md and its pictures (docs/multimodal/).

    python scripts/multimodal_report.py                       # everything (see the doc for the wall time)
    python scripts/multimodal_report.py --quick --out /tmp/mm --doc /tmp/mm/MULTIMODAL.md   # a smoke run

Every figure in the document is computed here (outputs under ``--out``; each stage is reused
when its result file exists, so a killed run resumes stage by stage):

1. **digits** (scikit-learn's 8x8, 80/20 split): a CLIP (CNN image tower, GPT text tower) on
   captions such as "the digit seven" / "a handwritten 7"; zero-shot classification of the held-out
   images by caption; a latent prior over the 64 pixels conditioned on CLIP text embeddings, its
   samples per prompt judged by a separately trained digit classifier;
2. **car** (CarRacing, collected here with the scripted driver, captions from the privileged
   per-step signals: ``agents.captions``): a CLIP over the latents ``z`` of the pretrained V,
   frame-caption retrieval among 10, the text reward's AUROC for on-road vs off-road frames, the
   latent prior over ``z`` conditioned on text (frames per prompt, drawn by V), prompt-chosen dream starts;
3. **controllers**: C evolved by CMA-ES in the pretrained world model's dream with and without
   ``scale * text_reward(clip, "stay on the road")`` (same CMA-ES seed and settings), each then
   played on the same real episodes; the share of real steps off the road (no wheel on a road tile).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
from agents.captions import ATTRIBUTES, PHRASES, canonical, caption_set, shard_frames  # noqa: E402
from generators import images  # noqa: E402
from generators.clip import (  # noqa: E402
    CLIP,
    DIGIT_TEMPLATES,
    DIGIT_WORDS,
    CaptionData,
    CLIPConfig,
    auroc,
    digit_captions,
    digit_texts,
    fit_clip,
    fit_text_prior,
    recall_at_1,
    sample_text,
    text_reward,
    zero_shot,
)
from worldlab.io import atomic_savez, atomic_write_json, read_json, write_doc_section  # noqa: E402
from worldlab.rundir import RunDir  # noqa: E402
from worldlab.training import TrainConfig  # noqa: E402
from worldlab.world_model import WorldModel  # noqa: E402

REWARD_PROMPT = "stay on the road"
DIGIT_UNSEEN = "a photo of the number {}"
"""a phrasing of the digits no training caption uses."""
CAR_PROMPTS = ("stay on the road", "on the grass", "fast, going straight", "a sharp left turn", "a right bend",
               "stopped")
"""what the retrieval, generation and dream-start pictures show (prompt -> the attributes it asks for)."""
PROMPT_ATTRS = {"stay on the road": {"road": 0}, "on the grass": {"road": 1},
                "fast, going straight": {"speed": 2, "turn": 0}, "a sharp left turn": {"turn": 1},
                "a right bend": {"turn": 2}, "stopped": {"speed": 0}}


@dataclasses.dataclass
class Settings:
    """The sizes of every stage (``--quick``: a smoke run of a few minutes)."""

    digit_clip_steps: int = 400
    digit_prior_steps: int = 3000
    judge_steps: int = 1500
    """steps of the digit classifier that judges text-to-digit samples."""
    episodes: int = 40
    """CarRacing episodes collected with the scripted driver."""
    max_steps: int = 1000
    every: int = 2
    """caption every ``every``-th frame."""
    car_clip_steps: int = 1500
    car_prior_steps: int = 3000
    generations: int = 30
    popsize: int = 32
    rollouts: int = 8
    dream_steps: int = 1000
    eval_episodes: int = 20
    eval_steps: int = 1000
    scale: float = 1.0
    """reward per unit of cosine similarity for the text reward in the dream."""
    quantile: float = 0.5
    """the text reward in the dream is a penalty only: ``min(0, s - q)``, ``q`` this quantile of ``s`` over
    real training latents (posterior samples, as the dream's ``z`` are drawn)."""


QUICK = Settings(digit_clip_steps=60, digit_prior_steps=200, judge_steps=300, episodes=5, max_steps=300, every=1, car_clip_steps=60,
                 car_prior_steps=200, generations=2, popsize=8, rollouts=2, dream_steps=100, eval_episodes=2,
                 eval_steps=150)


def timed(path: Path, fn: Any) -> dict[str, Any]:
    """``fn()``'s result dict, cached as JSON at ``path`` with its wall time (``seconds``)."""
    if path.exists():
        return read_json(path)
    t0 = time.time()
    res = fn()
    res["seconds"] = time.time() - t0
    atomic_write_json(path, res)
    return res


# --- 1. digits ------------------------------------------------------------------------------------


def digits_stage(out: Path, pics: Path, s: Settings, progress: bool) -> dict[str, Any]:
    d = generators.data.load("digits")
    train, test = d.split(0.2, seed=0)
    data = digit_captions(train.tensor(), train.y)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(shape=(1, 8, 8), context=32))
    hist = fit_clip(clip, data, TrainConfig(steps=s.digit_clip_steps, lr=1e-3, weight_decay=0.1, log_every=50, seed=0),
                    batch_size=128, out=out / "clip_run", progress=progress)  # resumable
    clip.save(out / "clip.pt", meta={"source": "digits"})
    x, y = test.tensor(), test.y
    acc = {"ensemble": float((zero_shot(clip, x, [digit_texts(k) for k in range(10)]) == y).float().mean())}
    for t in DIGIT_TEMPLATES:
        for form, word in (("word", DIGIT_WORDS), ("numeral", [str(k) for k in range(10)])):
            acc[f"{t.format('{' + form + '}')}"] = float((zero_shot(clip, x, [t.format(word[k]) for k in range(10)]) == y)
                                                         .float().mean())
    acc["unseen: " + DIGIT_UNSEEN.format("{word}")] = float(
        (zero_shot(clip, x, [DIGIT_UNSEEN.format(DIGIT_WORDS[k]) for k in range(10)]) == y).float().mean())

    from generators.metrics import accuracy, train_classifier

    judge = train_classifier(train, steps=s.judge_steps)
    judge_acc = accuracy(judge, x, y)
    torch.manual_seed(0)
    prior = fit_text_prior(clip, data, TrainConfig(steps=s.digit_prior_steps, lr=1e-3, log_every=100, seed=0),
                           progress=progress, width=256, blocks=3, steps=16)
    prior.save(out / "prior.pt")
    gen: dict[str, float] = {}
    rows = []
    n = 100
    for name, template in (("the digit {word}", "the digit {}"), ("a handwritten {numeral}", "a handwritten {}"),
                           ("unseen: " + DIGIT_UNSEEN.format("{word}"), DIGIT_UNSEEN)):
        for w in (1.0, 2.0):
            xs, ys = [], []
            for k in range(10):
                word = str(k) if "numeral" in name else DIGIT_WORDS[k]
                xs.append(sample_text(prior, clip, template.format(word), n, generator=1000 + k, guidance=w))
                ys.append(torch.full((n,), k))
                if name == "the digit {word}" and w == 2.0:
                    rows.append(xs[-1][:10])
            gen[f"{name}, guidance {w:g}"] = accuracy(judge, torch.cat(xs), torch.cat(ys))
    images.save_png(pics / "digits_from_text.png", images.grid(torch.cat(rows), nrow=10, upscale=6))
    return {"zero_shot": acc, "judge_accuracy": judge_acc, "text_to_digit": gen, "train": len(train),
            "held_out": len(test), "captions": len(data.texts), "clip_loss": hist["loss"][-1],
            "clip_params": sum(p.numel() for p in clip.parameters()), "samples_per_digit": n}


# --- 2. car ---------------------------------------------------------------------------------------


def car_latents(out: Path, wm: WorldModel, s: Settings, workers: int, progress: bool) -> dict[str, np.ndarray]:
    path = out / "latents.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from agents.collect import collect

    collect("car_racing", out / "data", s.episodes, workers=workers, policy="scripted", seed=0,
            env_kwargs={"max_episode_steps": s.max_steps}, progress=progress, backend="processes")
    f = shard_frames(out / "data", every=s.every)
    frames = torch.from_numpy(f.pop("frames"))
    enc = [wm.encode(frames[i:i + 1024]) for i in range(0, len(frames), 1024)]
    res = {**f, "z": torch.cat([mu for mu, _ in enc]).numpy(), "logvar": torch.cat([lv for _, lv in enc]).numpy()}
    atomic_savez(path, **res)
    return res


def probe_accuracy(z: np.ndarray, attrs: np.ndarray, held: np.ndarray) -> list[Any]:
    """A logistic-regression probe per attribute on the training latents (privileged labels): how the
    generated frames are judged."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    probes = []
    for a in range(attrs.shape[1]):
        y = attrs[~held, a]
        model = LogisticRegression(max_iter=2000) if len(np.unique(y)) > 1 else DummyClassifier()  # a smoke run's data
        probes.append(model.fit(z[~held], y))
    return probes


def car_stage(out: Path, pics: Path, wm: WorldModel, s: Settings, workers: int, progress: bool) -> dict[str, Any]:
    lat = car_latents(out, wm, s, workers, progress)
    z, attrs, ep = torch.from_numpy(lat["z"]).float(), torch.from_numpy(lat["attrs"]).long(), lat["episode"]
    held = ep % 5 == 0  # every fifth episode held out
    texts, said = caption_set()
    train = CaptionData("car_racing", z[~held], attrs[~held], texts, said)
    test = CaptionData("car_racing held out", z[held], attrs[held], texts, said)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(shape=(wm.z_size,), embed_dim=64, image_width=256, image_layers=3, context=64))
    hist = fit_clip(clip, train, TrainConfig(steps=s.car_clip_steps, lr=1e-3, weight_decay=0.1, log_every=50, seed=0),
                    batch_size=128, out=out / "clip_run", progress=progress)  # resumable
    clip.save(out / "clip.pt", meta={"source": "car_racing", "vae_id": wm.vae.meta.get("id")})
    keys = list(itertools.product(*(range(len(PHRASES[name])) for name in ATTRIBUTES)))  # every fact combination
    cands = [canonical(k) for k in keys]
    key_t = torch.tensor(keys)
    sim = clip.similarity(test.x, cands)  # (N, K)
    fits = (test.attrs[:, None, :] == key_t[None]).all(-1)  # (N, K): exactly its own
    r_f2c = recall_at_1(sim, fits, k=10, seed=0)
    r_c2f = recall_at_1(sim.T, fits.T, k=10, seed=0, trials=5000)
    per_attr = {}
    emb = clip.encode_image(test.x)
    for a, name in enumerate(ATTRIBUTES):
        pred = zero_shot(clip, test.x, [list(v) for v in PHRASES[name]])
        per_attr[name] = float((pred == test.attrs[:, a]).float().mean())
    base = {name: np.bincount(attrs[:, a].numpy(), minlength=len(PHRASES[name])).tolist()
            for a, name in enumerate(ATTRIBUTES)}
    on_road = (test.attrs[:, 0] == 0).numpy()
    reward = text_reward(clip, REWARD_PROMPT)(test.x).numpy()
    both = 0 < on_road.sum() < len(on_road)  # (a smoke run's few held-out frames may all be on the road)
    reward_auc = auroc(reward, on_road) if both else float("nan")
    reward_stats = {"on_road_mean": float(reward[on_road].mean()) if on_road.any() else float("nan"),
                    "off_road_mean": float(reward[~on_road].mean()) if not on_road.all() else float("nan")}

    # retrieval examples: the 8 held-out frames most similar to each prompt (frames drawn by V from z)
    rows = []
    for p in CAR_PROMPTS:
        top = (emb @ clip.encode_text([p])[0]).topk(8).indices
        rows.append(torch.from_numpy(wm.decode_frames(test.x[top])))
    images.save_png(pics / "car_retrieval.png", images.grid(images.from_uint8(torch.cat(rows)), nrow=8, upscale=1))
    g = torch.Generator().manual_seed(1)
    pick = torch.randperm(len(test), generator=g)[:6]
    examples = []
    for i in pick.tolist():
        order = sim[i].argsort(descending=True)[:3].tolist()
        examples.append({"truth": canonical(tuple(test.attrs[i].tolist())),
                         "top3": [(cands[j], float(sim[i, j])) for j in order]})
    images.save_png(pics / "car_frames_captioned.png",
                    images.grid(images.from_uint8(torch.from_numpy(wm.decode_frames(test.x[pick]))), nrow=6, upscale=1))

    # text -> frames: the latent prior over z conditioned on CLIP text embeddings
    torch.manual_seed(0)
    prior = fit_text_prior(clip, train, TrainConfig(steps=s.car_prior_steps, lr=1e-3, log_every=100, seed=0),
                           progress=progress, width=256, blocks=3, steps=16)
    prior.save(out / "prior.pt")
    probes = probe_accuracy(z.numpy(), attrs.numpy(), held)
    probe_acc = {name: float((probes[a].predict(z[held].numpy()) == attrs[held, a].numpy()).mean())
                 for a, name in enumerate(ATTRIBUTES)}
    gen_rows, gen = [], {}
    for p in CAR_PROMPTS:
        zs = sample_text(prior, clip, p, 200, generator=7, guidance=2.0)
        gen_rows.append(torch.from_numpy(wm.decode_frames(zs[:8])))
        want = PROMPT_ATTRS[p]
        ok = np.ones(len(zs), bool)
        for name, v in want.items():
            ok &= probes[ATTRIBUTES.index(name)].predict(zs.numpy()) == v
        real_rate = np.ones(len(attrs), bool)
        for name, v in want.items():
            real_rate &= attrs[:, ATTRIBUTES.index(name)].numpy() == v
        gen[p] = {"judged_fitting": float(ok.mean()), "real_base_rate": float(real_rate.mean())}
    images.save_png(pics / "car_from_text.png", images.grid(images.from_uint8(torch.cat(gen_rows)), nrow=8, upscale=1))

    # prompt-chosen dream starts among the held-out real latents
    from envs.dream import DreamEnv
    from generators.clip_env import PromptStarts

    cand = torch.randperm(len(test), generator=torch.Generator().manual_seed(2))[:2000]
    env = PromptStarts(DreamEnv(world_model=wm, max_episode_steps=50), clip, states=test.x[cand],
                      top_k=min(16, len(cand)))
    starts, start_rows = {}, []
    for p in CAR_PROMPTS:
        idx = []
        for k in range(8):
            _, info = env.reset(seed=k, options={"prompt": p})
            idx.append(info["start_index"])
        a = test.attrs[cand][torch.tensor(idx)]
        ok = torch.ones(len(idx), dtype=torch.bool)
        for name, v in PROMPT_ATTRS[p].items():
            ok &= a[:, ATTRIBUTES.index(name)] == v
        best = test.attrs[cand][env.ranked(p)]
        ok16 = torch.ones(len(best), dtype=torch.bool)
        for name, v in PROMPT_ATTRS[p].items():
            ok16 &= best[:, ATTRIBUTES.index(name)] == v
        starts[p] = {"chosen_fitting": float(ok.float().mean()), "top16_fitting": float(ok16.float().mean())}
        start_rows.append(torch.from_numpy(wm.decode_frames(env.states[torch.tensor(idx)])))
    images.save_png(pics / "dream_starts.png", images.grid(images.from_uint8(torch.cat(start_rows)), nrow=8, upscale=1))
    return {"frames": len(z), "train_frames": int((~held).sum()), "held_out_frames": int(held.sum()),
            "episodes": int(len(np.unique(ep))), "captions": len(texts), "keys": len(keys),
            "attribute_counts": base, "off_road_share": float(attrs[:, 0].float().mean()),
            "clip_loss": hist["loss"][-1], "clip_params": sum(p.numel() for p in clip.parameters()),
            "recall_frame_to_caption": r_f2c, "recall_caption_to_frame": r_c2f, "attribute_zero_shot": per_attr,
            "reward_auroc": reward_auc, "reward": reward_stats, "examples": examples, "text_to_frame": gen,
            "probe_accuracy": probe_acc, "dream_starts": starts, "start_candidates": len(cand)}


# --- 3. controllers -------------------------------------------------------------------------------


def controller_stage(out: Path, wm: WorldModel, clip: CLIP, reference: torch.Tensor, s: Settings, workers: int,
                     progress: bool) -> dict[str, Any]:
    from agents.cmaes import CMAConfig, evolve
    from agents.collect import collect
    from agents.controller import ControllerConfig, save_controller
    from agents.coverage import coverage
    from agents.fitness import DreamFitness
    from agents.policies import PolicySpec, policy_kwargs

    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
    cma = CMAConfig(popsize=s.popsize, rollouts=s.rollouts, sigma0=0.1, generations=s.generations, seed=0)
    penalty = text_reward(clip, REWARD_PROMPT, reference=reference, quantile=s.quantile)
    res: dict[str, Any] = {"cma": dataclasses.asdict(cma), "prompt": REWARD_PROMPT, "scale": s.scale,
                           "quantile": s.quantile, "threshold": penalty.threshold}  # type: ignore[attr-defined]
    for arm in ("without", "with"):
        d = out / arm
        t0 = time.time()
        term = penalty if arm == "with" else None
        fit = DreamFitness(wm, ccfg, cma.popsize, cma.rollouts, 1.0, s.dream_steps, seed=cma.seed, reward_term=term,
                           term_scale=s.scale)
        state = evolve(fit, ccfg.num_params, cma, d / "cma.npz", progress=progress, desc=f"evolve ({arm} text reward)")
        c_path = RunDir(d).controller()
        c_path.parent.mkdir(parents=True, exist_ok=True)
        save_controller(c_path, ccfg, state.mean_params, text_reward=arm == "with", scale=s.scale)
        evolve_s = time.time() - t0
        t0 = time.time()
        spec = PolicySpec("controller", policy_kwargs(wm, ccfg, state.mean_params))
        collect("car_racing", d / "real", s.eval_episodes, workers=workers, policy=spec, seed=12345,
                env_kwargs={"max_episode_steps": s.eval_steps}, progress=progress, backend="processes")
        cov = coverage(d / "real")
        res[arm] = {"off_road": cov["off_road"], "return_mean": cov["return_mean"], "return_std": cov["return_std"],
                    "tiles_mean": cov["tiles_mean"], "speed_p50": cov["speed_p50"], "steps": cov["steps"],
                    "dream_best": float(np.max(state.fitness[-1])), "evolve_seconds": evolve_s,
                    "real_seconds": time.time() - t0}
    return res


# --- the document -----------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(r: dict[str, Any], s: Settings, command: str) -> list[str]:
    dg, car, ctl = r["digits"], r["car"], r.get("controllers")
    zs = dg["zero_shot"]
    t2d = dg["text_to_digit"]
    times = ", ".join(f"{k} {r[k]['seconds'] / 60:.1f} min" for k in ("digits", "car", "controllers") if k in r)
    lines = [
        f"Produced by `{command}` on {r['machine']}. Every number here is measured by that command. Its stages resume "
        "(the outputs under `--out` are reused; a killed stage goes on from its last checkpoint), so a stage's time "
        f"is that of the invocation that finished it: {times}.", "",
        "## Acceptance figures", "",
        "| check | target | measured |", "|---|---|---|",
        f"| zero-shot digit classification by caption (held-out 8x8 digits, prompt ensemble) | >= 0.90 | "
        f"**{zs['ensemble']:.3f}** |",
        f"| frame -> caption retrieval R@1 among 10 (held-out CarRacing frames) | >= 0.5 | "
        f"**{car['recall_frame_to_caption']:.3f}** (caption -> frame: {car['recall_caption_to_frame']:.3f}) |",
        f"| text-to-digit generation classified correctly (\"the digit zero\" ... \"the digit nine\", guidance 2) | >= 0.80 | "
        f"**{t2d['the digit {word}, guidance 2']:.3f}** |",
        f"| text reward \"{REWARD_PROMPT}\": AUROC on-road vs off-road frames | >= 0.9 | **{car['reward_auroc']:.3f}** |",
    ]
    if ctl is not None:
        w, wo = ctl["with"], ctl["without"]
        lines.append(f"| share of real steps off the road: C evolved with / without the text reward "
                     f"({ctl['episodes']} episodes, same seeds) | with < without | **{pct(w['off_road'])}** / "
                     f"**{pct(wo['off_road'])}** |")
    lines += [
        "", "## The model", "",
        "`generators/clip.py`: CLIP (Radford et al. 2021) at the lab's size. The image tower is a small CNN over "
        "images or an MLP over V's latents `z`; the text tower is the lab's GPT (`generators/gpt.py`, causal "
        "blocks with RoPE) over characters, whose hidden state at the caption's end token is projected into the "
        "shared space. Loss: the symmetric InfoNCE over cosine similarities times a learned scale. Captions built "
        "from a few facts repeat within a batch, so each batch carries a match matrix and a row's target is "
        "spread over every caption that fits it (plain CLIP when only the pair itself fits).", "",
        "## Digits", "",
        f"{dg['train']:,} training and {dg['held_out']} held-out 8x8 digits; {dg['captions']} captions "
        f"(templates {', '.join(repr(t) for t in DIGIT_TEMPLATES)}, each with the numeral and the word); CLIP "
        f"{dg['clip_params']:,} parameters, {s.digit_clip_steps} steps of 128 ({dg['seconds']:.0f} s for this "
        "whole stage). Zero-shot accuracy on the held-out images, per prompt wording:", "",
        "| prompts | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in zs.items()]
    lines += [
        "", "**Text to digit.** A latent prior (`generators/latent_prior.py`: v-prediction diffusion, DDIM "
        "16 steps) over the 64 pixels of a digit, conditioned on the CLIP text embedding of a caption drawn per "
        "digit and step (dropped 10% of the time for classifier-free guidance). "
        f"{dg['samples_per_digit']} samples per digit and prompt, judged by a separately trained digit classifier "
        f"(held-out accuracy {dg['judge_accuracy']:.3f}):", "",
        "| prompts | judged correct |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in t2d.items()]
    lines += ["", "Rows: \"the digit zero\" ... \"the digit nine\", guidance 2.", "",
              "![digits from text](multimodal/digits_from_text.png)", ""]
    counts = car["attribute_counts"]
    lines += [
        "## CarRacing frames", "",
        f"{car['episodes']} episodes of up to {s.max_steps} steps played by the scripted driver (excursions onto the "
        f"grass included), one frame in {s.every} kept: {car['frames']:,} frames, every fifth episode held out "
        f"({car['held_out_frames']:,} frames). The image tower reads the pretrained V's posterior mean `z` "
        "(`pretrained/car_racing`), so the same CLIP scores dream states.", "",
        "**Captions come from privileged signals** (`agents/captions.py`): the simulator's per-step `off_road` "
        "(no wheel on a road tile) and `speed`, recorded by collection, and the steering of the next 10 actions "
        "(the driver steers for the track ahead, which the frame shows). Three facts per frame - road (on / off), "
        "speed (stopped < 4 / slow < 30 / fast), turn (straight / left / right) - said in several phrasings and "
        f"orders, naming one, two or all three facts: {car['captions']:,} captions. Frames per value: "
        + "; ".join(f"{name}: {', '.join(f'{PHRASES[name][v][0]} {c:,}' for v, c in enumerate(counts[name]))}"
                    for name in ATTRIBUTES) + ".", "",
        f"CLIP {car['clip_params']:,} parameters, {s.car_clip_steps} steps of 128 ({car['seconds']:.0f} s for this "
        "whole stage, collection and encoding included).", "",
        "**Retrieval among 10.** Each held-out frame against its canonical caption (e.g. \""
        f"{canonical((0, 2, 0))}\") and 9 canonical captions of other fact combinations, drawn at random "
        f"(of all {car['keys']} combinations): R@1 **{car['recall_frame_to_caption']:.3f}**; each caption against "
        f"one fitting frame and 9 that do not: R@1 **{car['recall_caption_to_frame']:.3f}** (chance 0.1). "
        "Zero-shot accuracy per fact (the phrasings of each value averaged): "
        + ", ".join(f"{k} {v:.3f}" for k, v in car["attribute_zero_shot"].items()) + ".", "",
        "Six held-out frames (drawn by V from their `z`), their true caption and CLIP's top 3:", "",
        "![frames](multimodal/car_frames_captioned.png)", "",
        "| frame | truth | CLIP's top 3 (cosine) |", "|---|---|---|"]
    for i, e in enumerate(car["examples"]):
        lines.append(f"| {i + 1} | {e['truth']} | " + "; ".join(f"{t} ({c:.2f})" for t, c in e["top3"]) + " |")
    lines += [
        "", "The 8 held-out frames closest to each prompt (rows: "
        + ", ".join(f'"{p}"' for p in CAR_PROMPTS) + "):", "",
        "![retrieval](multimodal/car_retrieval.png)", "",
        "## Text in the lab", "",
        f"**Text reward.** `text_reward(clip, \"{REWARD_PROMPT}\")` is the cosine between a state's embedding and "
        "the prompt's (no training caption says \"stay on the road\"; \"stays on the road\" is one). On the held-out "
        f"frames it averages {car['reward']['on_road_mean']:.3f} on the road and {car['reward']['off_road_mean']:.3f} "
        f"off it: AUROC **{car['reward_auroc']:.3f}**. It is a `DreamFitness(reward_term=...)` term over the dream's "
        "`z`, and a Gymnasium wrapper on any env (`generators.clip_env.TextReward`; a real env's frames go through V).", "",
        "**Text to frames.** The latent prior over `z` conditioned on CLIP text embeddings (guidance 2, 16 DDIM "
        "steps), drawn by V; rows as above. Judged by logistic-regression probes of each fact on real `z` "
        "(privileged labels; held-out accuracy "
        + ", ".join(f"{k} {v:.3f}" for k, v in car["probe_accuracy"].items()) + "):", "",
        "![frames from text](multimodal/car_from_text.png)", "",
        "| prompt | generated frames judged to fit | real frames that fit |", "|---|---|---|"]
    lines += [f"| {p} | {pct(v['judged_fitting'])} | {pct(v['real_base_rate'])} |" for p, v in car["text_to_frame"].items()]
    lines += [
        "", "**Text-chosen dream starts.** `PromptStarts(DreamEnv(...), clip, states=..., top_k=16)` and "
        "`reset(options={\"prompt\": \"a sharp left turn\"})`: the dream starts at one of the 16 candidate states "
        f"CLIP ranks closest to the prompt (here {car['start_candidates']:,} held-out real latents), drawn with the "
        "reset's seed. Share "
        "of starts whose true (privileged) facts fit the prompt, 8 resets and the whole top 16:", "",
        "| prompt | 8 chosen starts fit | top 16 fit |", "|---|---|---|"]
    lines += [f"| {p} | {pct(v['chosen_fitting'])} | {pct(v['top16_fitting'])} |" for p, v in car["dream_starts"].items()]
    lines += ["", "![dream starts](multimodal/dream_starts.png)", ""]
    if ctl is not None:
        c = ctl["cma"]
        w, wo = ctl["with"], ctl["without"]
        lines += [
            "## A controller evolved with the text reward", "",
            f"C (linear `[z, h] -> action`) evolved by CMA-ES in the pretrained world model's dream, twice with the "
            f"same settings and seed ({c['popsize']} candidates x {c['rollouts']} dreams, {c['generations']} "
            f"generations, dreams of up to {ctl['dream_steps']} steps, temperature 1): once on M's reward, once on "
            f"M's reward + {ctl['scale']:g} x `text_reward(clip, \"{REWARD_PROMPT}\", reference=z, "
            f"quantile={ctl['quantile']:g})` per step: `min(0, s - q)`, a penalty for dream states less road-like "
            f"than the {ctl['quantile']:.0%} quantile `q` = {ctl['threshold']:.3f} of the similarity `s` over real "
            "training latents (no constant per step, so standing still on the road earns nothing). Both then played "
            f"the same {ctl['episodes']} real episodes (seeds of collection seed 12345, up to {ctl['eval_steps']} "
            "steps); off road = no wheel on a road tile (the simulator's signal):", "",
            "| C evolved | real steps off the road | real return | tiles reached | median speed | best dream fitness, "
            "last generation |", "|---|---|---|---|---|---|"]
        for name, a in (("without the text reward", wo), ("with the text reward", w)):
            lines.append(f"| {name} | **{pct(a['off_road'])}** | {a['return_mean']:.1f} ± {a['return_std']:.1f} | "
                         f"{a['tiles_mean']:.1f} | {a['speed_p50']:.1f} | {a['dream_best']:.1f} |")
        smaller = w["off_road"] < wo["off_road"]
        lines += ["", f"With the text reward C spent {'a smaller' if smaller else 'no smaller'} share of its real steps "
                  f"off the road ({pct(w['off_road'])} against {pct(wo['off_road'])}), reached "
                  f"{w['tiles_mean']:.0f} tiles against {wo['tiles_mean']:.0f}, at a median speed of "
                  f"{w['speed_p50']:.1f} against {wo['speed_p50']:.1f}. One evolution per arm and one seed: the "
                  "difference carries the noise of a single CMA-ES run"
                  + (f", and neither controller drives well (the world model's own C scores {r['own_controller']:.0f} "
                     "on average in its run's evaluation)" if r.get("own_controller") is not None else "") + ".", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/multimodal", help="where models, data and results go (resumable)")
    p.add_argument("--doc", default="docs/MULTIMODAL.md")
    p.add_argument("--world-model", default="pretrained/car_racing", help="a run folder with V and M (CarRacing)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--no-controllers", dest="controllers", action="store_false",
                   help="skip the controller comparison (the dearest stage)")
    p.add_argument("--workers", type=int, default=2, help="processes for collection and real episodes (0: this one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    for f in dataclasses.fields(Settings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = p.parse_args(argv)
    s = dataclasses.replace(QUICK if args.quick else Settings(),
                            **{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                               if getattr(args, f.name) is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    doc = Path(args.doc)
    pics = doc.parent / "multimodal"
    for d in (out / "digits", out / "car", out / "controllers", pics):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wm = WorldModel.load(args.world_model)
    res: dict[str, Any] = {"settings": dataclasses.asdict(s)}
    res["digits"] = timed(out / "digits" / "result.json", lambda: digits_stage(out / "digits", pics, s, args.progress))
    print(json.dumps({k: res["digits"][k] for k in ("zero_shot", "text_to_digit")}, indent=1), flush=True)
    res["car"] = timed(out / "car" / "result.json", lambda: car_stage(out / "car", pics, wm, s, args.workers,
                                                                       args.progress))
    print(json.dumps({k: res["car"][k] for k in ("recall_frame_to_caption", "recall_caption_to_frame",
                                                 "reward_auroc", "attribute_zero_shot")}, indent=1), flush=True)
    if args.controllers:
        clip = CLIP.load(out / "car" / "clip.pt")
        with np.load(out / "car" / "latents.npz") as f:  # posterior samples of the training frames' z
            train = f["episode"] % 5 != 0
            mu, logvar = torch.from_numpy(f["z"][train]), torch.from_numpy(f["logvar"][train])
        reference = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
        res["controllers"] = timed(out / "controllers" / "result.json",
                                   lambda: {**controller_stage(out / "controllers", wm, clip, reference, s, args.workers,
                                                               args.progress),
                                            "episodes": s.eval_episodes, "eval_steps": s.eval_steps,
                                            "dream_steps": s.dream_steps})
        print(json.dumps({k: res["controllers"][k] for k in ("with", "without")}, indent=1), flush=True)
    import platform

    own = RunDir(args.world_model).eval_json
    res["own_controller"] = read_json(own)["mean"] if own.exists() else None
    res["minutes"] = sum(res[k]["seconds"] for k in ("digits", "car", "controllers") if k in res) / 60
    res["machine"] = f"{torch.get_num_threads()} torch threads, {platform.machine()}"
    command = "python scripts/multimodal_report.py" + ("".join(f" {a}" for a in (argv if argv is not None else
                                                                                  sys.argv[1:])))
    atomic_write_json(out / "report.json", res)
    write_doc_section(doc, "multimodal", render(res, s, command), command=command,
                      head="# Multimodal: CLIP, text rewards and text-chosen dream starts\n")
    print(f"wrote {doc} ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
