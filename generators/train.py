"""Training a generator on a data source through the lab's one loop (:func:`worldlab.training.train`).

A run folder ``OUT`` (its file names: :class:`worldlab.rundir.RunDir`) holds:

- ``.config_json``: family, data source, model config, training config;
- ``.generator``: the resumable training checkpoint (model, EMA, optimizers, step, RNG), which
  carries the family and config too, so ``generators.load`` reads it;
- ``.generator_final``: the final model (EMA weights where used), ``generators.load``-able;
- ``.sample_grid(step)``: sample grids (scatter plots for points) during training, and
  ``.sample_grid()`` the final one;
- ``.metrics`` and ``.tb()``: the logged scalars (TensorBoard).

Rerunning with the same ``OUT`` resumes from the checkpoint (up to the new ``steps``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generators import images
from generators.base import Generator, ema_warmup_warning
from generators.data import GenData, channels_first_hint, describe
from generators.data import load as load_data
from generators.registry import family, from_state, make
from generators.text import TokenData
from worldlab.io import atomic_write_json, atomic_write_text, read_json, torch_load
from worldlab.logging import RunLogger
from worldlab.rundir import RunDir
from worldlab.training import TrainConfig
from worldlab.training import train as train_loop


@dataclass
class FitConfig:
    """How to train one generator (defaults: the family's book settings)."""

    steps: int = 1000
    """optimizer steps (generator steps for GANs)."""
    batch_size: int | None = None
    """batch size (None = the family's book default)."""
    lr: float | None = None
    """learning rate (None = the family's book default)."""
    ema: float | None = None
    """EMA decay of the weights (None = family default: 0.999 for ddpm, else off)."""
    grad_clip: float | None = None
    """clip the gradient norm to this, 0 = off (None = family default: off for realnvp as in the book, else 1)."""
    sample_every: int = 0
    """steps between sample grids (0 = only at the end)."""
    samples: int = 64
    """samples per grid."""
    checkpoint_every: int = 200
    """steps between resumable checkpoints."""
    log_every: int = 10
    """steps between logged scalars."""
    seed: int = 0
    """seed of the run (model init, batches, training noise)."""
    amp: str = "none"
    """"bf16" autocast or "none"."""


def model_for(name: str, data: GenData | TokenData, preset: str | None = None, **overrides: Any) -> Generator:
    """A fresh model of family ``name`` shaped for ``data`` (shape, classes, data levels)."""
    fam = family(name)
    fields = {f.name for f in dataclasses.fields(fam.config)}
    cfg: dict[str, Any] = {"shape": data.shape}
    from generators.music import MusicData, RollData

    if isinstance(data, RollData) != ("roll" in fam.kinds):
        raise ValueError(f"{name} models {' and '.join(fam.kinds)}, not {data.kind} data ({data.name}); "
                         f"{'use musegan for piano rolls' if isinstance(data, RollData) else 'give it chorale_rolls'}")
    if isinstance(data, RollData):
        return make(name, preset=preset, **{"shape": data.shape, **overrides})
    if isinstance(data, MusicData) != ("music" in fam.kinds):
        raise ValueError(f"{name} models {' and '.join(fam.kinds)}, not {data.kind} data ({data.name}); "
                         f"{'use music_transformer for chorales' if isinstance(data, MusicData) else 'give it chorales'}")
    if isinstance(data, MusicData):
        return make(name, preset=preset, **{"shape": data.shape, **overrides})
    if isinstance(data, TokenData) != ("tokens" in fam.kinds):
        what = "text" if isinstance(data, TokenData) else f"{data.kind} data"
        raise ValueError(f"{name} models {' and '.join(fam.kinds)}, not {what} ({data.name}); "
                         f"{'use lstm, gpt or mamba for text' if isinstance(data, TokenData) else 'give it a text source (pydoc, python_docs, text:PATH)'}")
    if isinstance(data, TokenData):
        cfg["vocab"] = data.vocab
    if fam.conditional or ("num_classes" in overrides and overrides["num_classes"]):
        cfg["num_classes"] = data.num_classes
        if data.num_classes == 0:
            raise ValueError(f"{name} is conditional but {data.name} has no labels; use digits, mnist or moons")
    if "data_levels" in fields and data.kind == "image":
        cfg["data_levels"] = data.levels
    cfg.update(overrides)
    return make(name, preset=preset, **cfg)


def train_config(name: str, fit: FitConfig) -> tuple[TrainConfig, int]:
    """The loop's TrainConfig and the batch size for family ``name`` under ``fit``."""
    d = family(name).train
    ema = fit.ema if fit.ema is not None else d.get("ema", 0.0)
    clip = fit.grad_clip if fit.grad_clip is not None else d.get("grad_clip", 1.0)
    tc = TrainConfig(steps=fit.steps, lr=fit.lr if fit.lr is not None else d.get("lr", 1e-3), grad_clip=clip,
                     weight_decay=d.get("weight_decay", 0.0), ema=ema, amp=fit.amp, log_every=fit.log_every,
                     sample_every=fit.sample_every, checkpoint_every=fit.checkpoint_every, seed=fit.seed)
    return tc, fit.batch_size or d.get("batch_size", 128)


def fit(model: Generator, data: GenData | TokenData, settings: FitConfig | None = None, out: str | os.PathLike | None = None,
        device: str | torch.device = "cpu", progress: bool = True, tensorboard: bool = True) -> dict[str, list[float]]:
    """Train ``model`` on ``data``; with ``out``, log, draw sample grids and checkpoint there (resumable).

    Returns the logged history ``{name: [values]}`` of this call. After it, ``model`` holds the
    final weights (the EMA average where EMA is on).
    """
    settings = settings or FitConfig()
    check_gen_data(data, model)
    if data.kind != model.kind or data.shape != model.shape:
        raise ValueError(f"{model.family} was built for {model.kind} {model.shape}, the data are "
                         f"{data.kind} {data.shape}; rebuild it with generators.train.model_for")
    tc, batch_size = train_config(model.family, settings)
    warmup = ema_warmup_warning(model.family, tc.ema, tc.steps)
    if warmup is not None:
        warnings.warn(warmup, UserWarning, stacklevel=2)
    batches = data.batches(batch_size, seed=settings.seed, labels=model.config.num_classes > 0)
    logger = RunLogger(out, stage="generator", tensorboard=tensorboard) if out is not None else None
    run = RunDir(out) if out is not None else None
    n_grid = settings.samples
    cond = (torch.arange(n_grid) % model.config.num_classes) if model.config.num_classes else None
    reference = data.tensor(torch.arange(min(len(data), 1000))) if data.kind == "points" else None

    def on_sample(m: torch.nn.Module, step: int) -> None:
        if run is None:
            return
        assert isinstance(m, Generator)
        if getattr(data, "kind", None) == "roll":
            from generators.musegan import binarize
            from generators.music import notes_to_midi, segments_to_notes

            rolls = binarize(m.sample(4, generator=settings.seed + 12345).cpu())  # (4, tracks, bars, 16, 84)
            run.samples.mkdir(parents=True, exist_ok=True)
            notes_to_midi(segments_to_notes(rolls), run.sample_midi(step))  # one after another
            return
        if getattr(data, "kind", None) == "music":
            from generators.music import tokens_to_midi

            parts = m.sample_tokens(4, length=data.block_size, temperature=1.0, generator=settings.seed + 12345)
            run.samples.mkdir(parents=True, exist_ok=True)
            tokens_to_midi(parts, run.sample_midi(step))  # four sampled streams, played as the four voices
            if logger is not None:
                logger.text("generator/samples", "\n".join(" ".join(f"{n}/{d}" for n, d in zip(*p, strict=True))
                                                            for p in parts), step)
            return
        if isinstance(data, TokenData):
            text = text_samples(m, settings.seed + 12345)
            run.samples.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.sample_text(step), text)
            if logger is not None:
                logger.text("generator/samples", text, step)
            return
        x = m.sample(n_grid, cond=cond, generator=settings.seed + 12345)  # same noise every grid
        pic = images.picture(x.cpu(), reference, nrow=model.config.num_classes or None)
        images.save_png(run.sample_grid(step), pic)
        if logger is not None:
            logger.image("generator/samples", pic, step)

    try:
        history = train_loop(model, batches, tc, checkpoint_path=run.generator if run is not None else None,
                             logger=logger, device=device, on_sample=on_sample if run is not None else None,
                             extra_state=model.checkpoint_header, desc=model.family, progress=progress)
    finally:
        if logger is not None:
            logger.close()
    if tc.ema > 0:  # the model now holds EMA weights: what they averaged travels with its checkpoint
        model.meta["ema"] = {"decay": tc.ema, "steps": tc.steps}
    return history


TEXT_SETTINGS = ((1.0, None, None), (0.7, None, 0.9))
"""(temperature, top_k, top_p) of the text samples written during training."""


def text_samples(model: Generator, seed: int, count: int = 2, length: int = 240) -> str:
    """``count`` samples of ``length`` characters per sampling setting, each under a header line."""
    from generators.sequence import SequenceModel

    assert isinstance(model, SequenceModel)
    blocks = []
    for temperature, top_k, top_p in TEXT_SETTINGS:
        ids = model.sample(count, generator=seed, length=length, temperature=temperature, top_k=top_k, top_p=top_p)
        what = f"temperature {temperature:g}" + (f", top-k {top_k}" if top_k else "") + (f", top-p {top_p:g}" if top_p else "")
        for i, text in enumerate(model.decode(ids) if model.config.vocab else [str(r.tolist()) for r in ids]):
            blocks.append(f"=== {what}, sample {i + 1} ===\n{text}")
    return "\n\n".join(blocks) + "\n"


def save_attention(model: Generator, data: TokenData, path: str | os.PathLike) -> None:
    """A GPT's attention maps (rows: layers, columns: heads) on the first window of ``data``, as a PNG."""
    import numpy as np

    maps = model.attention_maps(data.tokens[:data.block_size]).cpu().numpy()  # (L, H, T, T)
    layers, heads, t, _ = maps.shape
    scale = max(1, 128 // t)
    pad = 2
    canvas = np.full((layers * (t * scale + pad) + pad, heads * (t * scale + pad) + pad), 255, np.uint8)
    for i in range(layers):
        for j in range(heads):
            m = maps[i, j] / max(float(maps[i, j].max()), 1e-9)
            tile = (255 * (1.0 - m)).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)  # dark = attended
            y, x = pad + i * (t * scale + pad), pad + j * (t * scale + pad)
            canvas[y:y + t * scale, x:x + t * scale] = tile
    images.save_png(path, np.repeat(canvas[..., None], 3, axis=2))


def check_gen_data(data: Any, model: Generator) -> None:
    """Refuse, in one line saying what was given, what is expected and the fix, training data that
    are not a :class:`GenData` holding what ``model`` learns from: images as integer levels
    ``(N, C, H, W)`` (``0 .. levels - 1``), points as floats ``(N, D)``."""
    from generators.music import MusicData, RollData

    for kind, cls, what, source in (("roll", RollData, "a piano roll", "chorale_rolls"),
                                    ("music", MusicData, "music", "chorales"),
                                    ("tokens", TokenData, "text", "python_docs")):
        if model.kind == kind or isinstance(data, cls):
            if not isinstance(data, cls) or model.kind != kind:
                raise ValueError(f"{model.family} models {model.kind}; {describe(getattr(data, 'x', data))} is not "
                                 f"{what if model.kind == kind else model.kind}: load a source that matches "
                                 f"(generators.data.load('{source}') for {what})")
            break
    else:
        kind = ""
    if kind in ("roll", "music"):
        return
    if kind == "tokens":
        vocab = getattr(model.config, "vocab", "")
        if vocab and vocab != data.vocab:
            raise ValueError(f"{model.family} was built for another vocabulary ({len(vocab)} characters) than "
                             f"{data.name}'s ({data.vocab_size}); rebuild it with generators.train.model_for")
        return
    wanted = (f"a generators.data.GenData with integer levels (N, {', '.join(map(str, model.shape))}) "
              f"(uint8, 0..levels-1)" if model.kind == "image" else
              f"a generators.data.GenData with float32 points (N, {model.shape[0]})")
    if not isinstance(data, GenData):
        x = data.x if hasattr(data, "x") else data
        fix = ("wrap them: GenData('mine', x, levels=256) with x uint8 (N, C, H, W)" + channels_first_hint(x)
               if model.kind == "image" else "wrap them: GenData('mine', torch.as_tensor(x, dtype=torch.float32))")
        raise ValueError(f"{model.family} trains on {wanted}; got {describe(x)}: {fix}")
    x = data.x
    if data.kind == "image":
        if x.dtype.is_floating_point:
            raise ValueError(f"{model.family} trains on {wanted}; got {describe(x)}: GenData keeps images as "
                             f"integer levels and scales them to [-1, 1] per batch; store "
                             f"((x + 1) * 127.5).round().to(torch.uint8) (from [-1, 1]; from [0, 1]: x * 255) "
                             f"with levels=256")
        if data.levels < 2 or int(x.max()) >= data.levels or int(x.min()) < 0:
            raise ValueError(f"{model.family} trains on {wanted}; got {describe(x)} with levels={data.levels}: "
                             f"set levels to the number of intensity levels (256 for 0..255)")
        hint = channels_first_hint(x)
        if hint and tuple(x.shape[1:]) != tuple(model.shape):
            raise ValueError(f"{model.family} trains on {wanted}; got {describe(x)}: the images are channels-last; "
                             f"store x.permute(0, 3, 1, 2) (channels first)")
    elif not x.dtype.is_floating_point:
        raise ValueError(f"{model.family} trains on {wanted}; got {describe(x)}: convert them with x.float()")


def train_generator(name: str, source: str, settings: FitConfig | None = None, out: str | os.PathLike | None = None,
                    image_size: int | None = None, max_items: int | None = None, preset: str | None = None,
                    device: str | torch.device = "cpu", progress: bool = True, block_size: int | None = None,
                    **overrides: Any) -> tuple[Generator, dict[str, list[float]]]:
    """Load ``source``, build (or resume) family ``name``, train it, write ``OUT`` (see module doc)."""
    settings = settings or FitConfig()
    family(name)  # unknown family: fail before loading data
    data = load_data(source, image_size=image_size, max_items=max_items, seed=settings.seed, block_size=block_size)
    if isinstance(data, TokenData):
        data = data.split()[0]  # the held-out tail stays unseen (generators.text.HOLDOUT)
    run = RunDir(out) if out is not None else None
    prev: dict[str, Any] = {}
    if run is not None and run.generator.exists():  # resume: the model is rebuilt from the checkpoint's config
        state = torch_load(run.generator)
        if state.get("family") != name:
            raise ValueError(f"{out} holds a {state.get('family')} run, not {name}; use another --out")
        model = from_state(state, run.generator)
        prev = read_json(run.config_json) if run.config_json.exists() else {}
        if prev.get("data", source) != source:
            raise ValueError(f"{out} was trained on {prev['data']}, not {source}; use another --out")
        if model.shape != data.shape:
            raise ValueError(f"{out} holds a model of {model.shape} data, these are {data.shape}; "
                             f"use the run's --image-size or another --out")
    else:
        data_defaults = family(name).data_defaults
        if data_defaults is not None:  # what the family takes from its source where no value is given
            for key, value in data_defaults(source).items():
                if not overrides.get(key):
                    overrides[key] = value
        model = model_for(name, data, preset=preset, **overrides)
    if run is not None:
        tc, bs = train_config(name, settings)
        atomic_write_json(run.config_json, {
            "family": name, "data": source, "image_size": prev.get("image_size", image_size),
            "block_size": prev.get("block_size", block_size),
            "max_items": max_items, "preset": prev.get("preset", preset), "model": dataclasses.asdict(model.config),
            "train": dataclasses.asdict(tc), "batch_size": bs, "num_examples": len(data)})
    history = fit(model, data, settings, out, device, progress)
    if run is not None:
        model.save(run.generator_final)
        if isinstance(data, TokenData):
            texts = sorted(run.samples.glob("step_*.txt"))
            if texts:
                atomic_write_text(run.sample_text(), texts[-1].read_text(encoding="utf-8"))
            if hasattr(model, "attention_maps"):
                save_attention(model, data, run.attention_png)
            return model, history
        grids = run.sample_grids()
        if grids:
            images.save_png(run.sample_grid(), _read_png(grids[-1]))
    return model, history


def _read_png(path: Path) -> Any:
    import imageio.v3 as iio

    return iio.imread(path)


def continued_from(report: dict[str, Any], checkpoint: str | os.PathLike, steps: int) -> int | None:
    """The steps an earlier invocation trained, when this one continues its run to ``steps``: its
    ``report`` (a script's JSON with ``steps``) stopped short of them and its resumable ``checkpoint``
    is there (:func:`fit` then goes on from it). None for a fresh run or one already that long."""
    earlier = int(report.get("steps", 0) or 0)
    return earlier if 0 < earlier < steps and Path(checkpoint).is_file() else None


def suggested_threads(max_threads: int = 2) -> int:
    """Torch CPU threads for a training process: up to ``max_threads`` on an idle machine, 1 when busy.

    With other jobs on the cores, a multi-threaded op waits for its slowest (descheduled) thread,
    so on a loaded machine one thread is faster than several for the small nets trained here.
    """
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(max_threads, cpus, int(cpus - load + 0.5)))
