"""Generators as data augmenters: a Dataset mixer and a Gymnasium observation wrapper.

Both work outside the lab with any :class:`generators.Generator`.

Mix generated digits into a training set (30% of the examples generated)::

    import generators
    from generators.augment import MixedDataset
    from worldlab.rundir import RunDir
    real = generators.data.load("digits")
    cgan = generators.load(RunDir("runs/generators/cgan-digits").generator_final)  # train_generator.py's
    ds = MixedDataset(real, cgan, ratio=0.3, seed=0)    # items: (x (1, 8, 8), label)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)

Show an SB3 agent generated frames 10% of the time (observation augmentation)::

    import gymnasium as gym
    from stable_baselines3 import PPO
    from generators.augment import GeneratedObservations
    env = gym.wrappers.ResizeObservation(gym.make("CarRacing-v3"), (64, 64))
    gen = generators.load(RunDir(RUN).vae)   # the lab's V, or any image generator
    env = GeneratedObservations(env, gen, p=0.1, mode="replace", seed=0)
    PPO("CnnPolicy", env, n_steps=256).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.utils.data import Dataset

from generators.base import Generator
from generators.data import GenData, describe, is_channels_last
from generators.images import resize


class MixedDataset(Dataset):
    """Real examples followed by generated ones, so a fraction ``ratio`` of all items is generated.

    Args:
        real: a :class:`generators.data.GenData`, a tensor of examples, or any map-style Dataset
            whose items are ``x`` or ``(x, label)``, in the generator's model space.
        model: the generator. With labelled real data it must be conditional; generated items then
            get balanced labels ``i % num_classes``.
        ratio: fraction of generated items in ``[0, 1)``; ``len = len(real) / (1 - ratio)``.
        batch_size: samples drawn per ``model.sample`` call; batch ``b`` uses seed ``seed + b``,
            so an item's value depends only on (seed, index), whatever the access order.
        transform: applied to each generated batch (e.g. to convert to the real data's format).
        cache: keep generated batches in memory (default) or redraw them on every access.
    """

    def __init__(self, real: GenData | torch.Tensor | Dataset, model: Generator, ratio: float, batch_size: int = 256,
                 seed: int = 0, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cache: bool = True) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio is the generated fraction and must be in [0, 1), got {ratio}")
        self.real: Any = _GenDataItems(real) if isinstance(real, GenData) else real
        self.n_real = len(self.real)
        self.n_gen = int(round(self.n_real * ratio / (1.0 - ratio)))
        first = self.real[0] if self.n_real else None
        self.labels = isinstance(first, (tuple, list))
        k = model.config.num_classes
        if self.labels and k == 0:
            raise ValueError("the real data carry labels but the generator is unconditional; "
                             "use a conditional one (cgan) or drop the labels")
        self.model, self.ratio, self.batch_size, self.seed = model, ratio, batch_size, seed
        self.transform, self.cache = transform, cache
        self._batches: dict[int, torch.Tensor] = {}
        self._first_real = (first[0] if self.labels else first) if self.n_real else None
        if self.n_real and transform is None:  # else the first transformed batch is checked against the real items
            if isinstance(real, GenData):
                _check_model_space(torch.zeros(real.shape), model, shape_only=True)
            elif isinstance(real, torch.Tensor | np.ndarray):
                _check_model_space(real, model, batch=True)
            else:
                _check_model_space(self._first_real, model)

    def __len__(self) -> int:
        return self.n_real + self.n_gen

    def is_generated(self, index: int) -> bool:
        return index >= self.n_real

    def _label(self, j: int) -> int:
        return j % self.model.config.num_classes

    def _batch(self, b: int) -> torch.Tensor:
        if b in self._batches:
            return self._batches[b]
        start = b * self.batch_size
        n = min(self.batch_size, self.n_gen - start)
        cond = None
        if self.model.config.num_classes:
            cond = torch.tensor([self._label(j) for j in range(start, start + n)])
        x = self.model.sample(n, cond=cond, generator=self.seed + b).cpu()  # (n, *shape)
        if self.transform is not None:
            x = self.transform(x)
            real = self._first_real
            if real is not None and (tuple(x.shape[1:]) != tuple(real.shape) or _dtype(x) != _dtype(real)):
                raise ValueError(f"MixedDataset: transform turns the generated batches into items of "
                                 f"{describe(x[0])} but the real items are {describe(real)} (the first one); "
                                 f"make transform return the real items' shape and dtype")
        if self.cache:
            self._batches[b] = x
        return x

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self.n_real:
            return self.real[index]
        j = index - self.n_real
        x = self._batch(j // self.batch_size)[j % self.batch_size]
        return (x, torch.tensor(self._label(j))) if self.labels else x


def _dtype(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__)).replace("torch.", "")


def _check_model_space(x: Any, model: Generator, batch: bool = False, shape_only: bool = False) -> None:
    """Refuse, in one line with the conversion, real examples that are not in the generator's model
    space: float ``model.shape`` items, images in [-1, 1] (``batch``: ``x`` holds all of them)."""
    shape = tuple(getattr(x, "shape", ()))
    item = shape[1:] if batch else shape
    wanted = tuple(model.shape)
    is_float = (x.dtype.is_floating_point if isinstance(x, torch.Tensor) else
                isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating))
    if shape_only:
        if item == wanted:
            return
    elif is_float and item == wanted and (model.kind == "points" or -1.001 <= float(x.min()) <= float(x.max()) <= 1.001):
        return
    what = "the real data" if batch or shape_only else "the real items (the first one)"
    given = f"of shape {item}" if shape_only else describe(x)
    expected = (f"float32 {wanted} images in [-1, 1] (generators.images)" if model.kind == "image"
                else f"float32 points {wanted}")
    expr = "x"
    if model.kind == "image" and not shape_only and isinstance(x, torch.Tensor | np.ndarray):
        if is_channels_last(shape):
            expr += ".permute(0, 3, 1, 2)" if batch else ".permute(2, 0, 1)"
            if not isinstance(x, torch.Tensor):
                expr = "torch.as_tensor(" + expr.replace(".permute", ").permute", 1)
        if not is_float or float(x.max()) > 1.5:
            expr += ".float() / 127.5 - 1"
        elif float(x.min()) >= 0:
            expr += " * 2 - 1"
    elif model.kind == "points" and not is_float and not shape_only:
        expr = "x.float()"
    fixes = [f"convert them with {expr}"] if expr != "x" else []
    if shape_only or len(shape) < 3 or model.kind != "image":
        if item != wanted:
            fixes.append(f"give items of shape {wanted}")
    else:
        last = is_channels_last(shape)
        channels, side = (shape[-1:], shape[-3:-1]) if last else (shape[-3:-2], shape[-2:])
        if tuple(channels) + tuple(side) != wanted:
            fixes.append(f"make them {wanted} (generators.images.resize for the size)")
    fix = " and ".join(fixes) or f"give {expected}"
    raise ValueError(f"MixedDataset: {what} are {given} but {model.family} generates {expected}; {fix}, "
                     f"or pass transform= to turn the generated batches into the real format")


class _GenDataItems:
    def __init__(self, data: GenData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        x = self.data.tensor(torch.tensor([i]))[0]
        return (x, self.data.y[i]) if self.data.y is not None else x


def to_observation(x: torch.Tensor, space: gym.spaces.Box) -> np.ndarray:
    """Model-space samples ``(n, C, h, w)`` in [-1, 1] -> observations of an image ``space``.

    Handles channel-last ``(H, W, C)`` and channel-first ``(C, H, W)`` spaces, 1 <-> 3 channels,
    resizing, and the space's dtype and bounds (uint8 0..255, or floats mapped to [low, high]).
    """
    shape = space.shape
    if len(shape) != 3:
        raise ValueError(f"GeneratedObservations needs an image observation space, got shape {shape}")
    last = shape[-1] in (1, 3, 4) or shape[0] not in (1, 3, 4)
    c_obs, h, w = (shape[2], shape[0], shape[1]) if last else shape
    if h != w:
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    else:
        x = resize(x, h)
    if x.shape[1] != c_obs:
        x = x.mean(1, keepdim=True).expand(-1, c_obs, -1, -1) if c_obs in (1, 3, 4) else x
    v = (x.clamp(-1, 1) + 1.0) / 2.0  # (n, C, H, W) in [0, 1]
    if np.issubdtype(space.dtype, np.integer):
        lo, hi = float(np.min(space.low)), float(np.max(space.high))
        arr = (lo + v * (hi - lo)).round().numpy()
    else:
        lo_t = torch.as_tensor(np.broadcast_to(space.low, shape).astype(np.float32))
        hi_t = torch.as_tensor(np.broadcast_to(space.high, shape).astype(np.float32))
        if last:
            lo_t, hi_t = lo_t.permute(2, 0, 1), hi_t.permute(2, 0, 1)
        lo_t = torch.where(torch.isfinite(lo_t), lo_t, torch.zeros(()))
        hi_t = torch.where(torch.isfinite(hi_t), hi_t, torch.ones(()))
        arr = (lo_t + v * (hi_t - lo_t)).numpy()
    if last:
        arr = arr.transpose(0, 2, 3, 1)  # (n, H, W, C)
    return arr.astype(space.dtype)


class GeneratedObservations(gym.ObservationWrapper):
    """With probability ``p`` per step, show the agent a generated image instead of (or blended with) the real one.

    Args:
        env: any env with an image ``Box`` observation space (``(H, W, C)`` or ``(C, H, W)``).
        model: an image generator; its samples are resized and converted to the space's format.
        p: probability that an observation is augmented.
        mode: ``"replace"`` (the generated image) or ``"blend"`` (``(1 - alpha) * real + alpha * generated``).
        alpha: blend weight of the generated image.
        pool: samples drawn per ``model.sample`` call (refilled when used up).
        cond: fixed class label(s) for a conditional generator (None = random labels).
        seed: seed of the wrapper's own RNG; ``reset(seed=s)`` reseeds it from ``s``.

    ``augmented`` counts the observations changed so far.
    """

    def __init__(self, env: gym.Env, model: Generator, p: float = 0.1, mode: str = "replace", alpha: float = 0.5,
                 pool: int = 64, cond: int | None = None, seed: int | None = None) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 3:
            raise ValueError("GeneratedObservations needs an image Box observation space "
                             f"(H, W, C), got {env.observation_space}")
        if model.kind != "image":
            raise ValueError(f"GeneratedObservations needs an image generator, got a {model.kind} model")
        if mode not in ("replace", "blend") or not 0.0 <= p <= 1.0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need mode 'replace'/'blend', p and alpha in [0, 1]; got {mode!r}, {p}, {alpha}")
        self.model, self.p, self.mode, self.alpha, self.pool_size, self.cond = model, p, mode, alpha, pool, cond
        self._rng = np.random.default_rng(seed)
        self._pool: np.ndarray | None = None
        self._next = 0
        self.augmented = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng([seed, 0x6E6])
            self._pool, self._next = None, 0
        return super().reset(seed=seed, options=options)

    def _draw(self) -> np.ndarray:
        if self._pool is None or self._next >= len(self._pool):
            n = self.pool_size
            cond = None if self.cond is None else torch.full((n,), int(self.cond))
            x = self.model.sample(n, cond=cond, generator=int(self._rng.integers(2**31))).cpu()
            self._pool, self._next = to_observation(x, self.observation_space), 0
        obs = self._pool[self._next]
        self._next += 1
        return obs

    def observation(self, observation: Any) -> Any:
        if self.p <= 0 or self._rng.random() >= self.p:
            return observation
        self.augmented += 1
        gen = self._draw()
        if self.mode == "replace":
            return gen
        mixed = (1.0 - self.alpha) * np.asarray(observation, dtype=np.float32) + self.alpha * gen.astype(np.float32)
        if np.issubdtype(self.observation_space.dtype, np.integer):
            mixed = mixed.round()
        return mixed.astype(self.observation_space.dtype)
