"""The one small API every generative family implements.

A family is a :class:`Generator` (an ``nn.Module``) built from a config dataclass:

- ``loss(batch) -> Tensor | dict[str, Tensor]`` for models trained by gradient descent on one
  objective (the dict holds the total under ``"loss"``), or ``configure_optimizers(lr)`` and
  ``training_step(batch, optimizers, step)`` for adversarial ones (GANs); both plug into the lab's
  one training loop, :func:`worldlab.training.train`.
- ``sample(n, cond=None, generator=seed) -> Tensor``: images ``(n, C, H, W)`` float32 in
  ``[-1, 1]`` (see :mod:`generators.images`) or points ``(n, D)`` float32.
- ``log_prob(x)`` (flows, PixelCNN) or ``energy(x)`` (EBM) where the family has one.
- ``save(path)`` / ``generators.load(path)`` (or ``FamilyClass.load(path)``): a ``weights_only``
  checkpoint that carries the family name and its config, so the model is rebuilt without knowing
  its class. It is the lab's one checkpoint format, :class:`worldlab.io.ConfigCheckpoint`, which
  V and M use too.

A batch is a tensor ``x`` or a pair ``(x, y)`` with integer class labels ``y`` ``(B,)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from worldlab.io import ConfigCheckpoint

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]


@dataclasses.dataclass
class GenConfig:
    """Fields every family's config has (each family's config extends this)."""

    shape: tuple[int, ...] = (1, 32, 32)
    """shape of one sample: ``(C, H, W)`` for images, ``(D,)`` for points (set from the data)."""
    num_classes: int = 0
    """number of class labels the model is conditioned on (0 = unconditional)."""

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) not in (1, 3) or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be (C, H, W) or (D,), got {self.shape}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenConfig:
        """The config stored in a checkpoint; keys this version does not have are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def kind(self) -> str:
        """``"image"`` for ``(C, H, W)`` data, ``"points"`` for ``(D,)``."""
        return "image" if len(self.shape) == 3 else "points"

    def require_image(self, family: str, square_pow2: bool = True, min_size: int = 4) -> None:
        if self.kind != "image":
            raise ValueError(f"{family} models images, not points of shape {self.shape}; "
                             f"train it on an image source (digits, mnist, frames:RUN)")
        _, h, w = self.shape
        if square_pow2 and (h != w or h < min_size or h & (h - 1)):
            raise ValueError(f"{family} needs square images with a power-of-two side >= {min_size}, "
                             f"got {h}x{w}; pass --image-size 8/16/32/64")


def as_generator(generator: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seed becomes a fresh ``torch.Generator``; a Generator or None passes through."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(generator))
    return g


def unpack(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` or ``(x, y)`` -> ``(x, y or None)``."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        return batch[0], None
    return batch, None


class Generator(ConfigCheckpoint, nn.Module):
    """Base class of every family: holds the config, saves and loads with it."""

    family: ClassVar[str] = ""
    """registry name of the family (set by :func:`generators.registry.register`)."""
    FAMILY: ClassVar[str] = ""
    CONFIG: ClassVar[type[GenConfig]] = GenConfig
    """the checkpoint's family tag and config class (:class:`ConfigCheckpoint`; set by ``register``)."""
    WHAT, STAGE = "generators", "the model"

    def __init__(self, config: GenConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}
        """what the checkpoint carried besides weights and config (its ``id``)."""

    # --- the API --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def shape(self) -> tuple[int, ...]:
        return self.config.shape

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples: images ``(n, C, H, W)`` in [-1, 1] or points ``(n, D)``."""
        raise NotImplementedError

    def check_cond(self, n: int, cond: torch.Tensor | int | None,
                   generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Validate/complete the labels of a conditional model (random labels when None)."""
        k = self.config.num_classes
        if k == 0:
            if cond is not None:
                raise ValueError(f"{self.family} is unconditional; call sample(n) without cond")
            return None
        if cond is None:
            return torch.randint(0, k, (n,), generator=generator, device=self.device)
        cond = torch.as_tensor(cond, device=self.device).long()
        if cond.ndim == 0:
            cond = cond.expand(n)
        if cond.shape != (n,):
            raise ValueError(f"cond must hold one label per sample, shape ({n},), got {tuple(cond.shape)}")
        if int(cond.min()) < 0 or int(cond.max()) >= k:
            raise ValueError(f"labels must be in [0, {k}), got {cond.min().item()}..{cond.max().item()}")
        return cond

    # --- persistence: worldlab.io.ConfigCheckpoint ------------------------------------------------
    def checkpoint_header(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Family, config and meta (by default the loaded model's): ``save`` writes it with the weights,
        and the training loop adds it to its checkpoints so they load too."""
        return super().checkpoint_header(self.meta if meta is None else meta)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Generator:
        """Rebuild a model of this family from :meth:`save` output or a training checkpoint.

        ``generators.load(path)`` loads a checkpoint of any family.
        """
        if not cls.FAMILY:
            raise TypeError(f"{cls.__name__}.load needs a family class (e.g. DCGAN.load); "
                            f"use generators.load({os.fspath(path)!r}) for a checkpoint of any family")
        return super().load(path, map_location)

    @classmethod
    def upgrade_checkpoint(cls, state: Any) -> Any:
        """A checkpoint saved by an older version of this family, in today's layout (renamed weights,
        config fields added since). Loading (:meth:`from_checkpoint`) and resuming training
        (``worldlab.training.train``) both go through it; a family whose layout changed overrides it."""
        return state

    @classmethod
    def from_checkpoint(cls, state: Any, path: str | os.PathLike = "<memory>") -> Generator:
        """Rebuild from a checkpoint dict; a training checkpoint with an EMA copy gives the EMA weights
        (those are the ones sampled)."""
        state = cls.upgrade_checkpoint(state)
        name = checkpoint_family(state, path)
        if name != cls.FAMILY:
            raise TypeError(f"{path} holds a {name} model, not {cls.__name__}")
        warmup = None
        if "ema" in state:  # a training checkpoint: its EMA decay and step
            warmup = ema_warmup_warning(name, (state.get("train_config") or {}).get("ema"), state.get("step"))
            state = {**state, "model": state["ema"]}
        elif isinstance(state.get("meta"), dict) and isinstance(state["meta"].get("ema"), dict):  # fit's final model
            ema = state["meta"]["ema"]
            warmup = ema_warmup_warning(name, ema.get("decay"), ema.get("steps"))
        if warmup is not None:
            warnings.warn(f"{path}: {warmup}", UserWarning, stacklevel=2)
        return super().from_checkpoint(state, path)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no grad inside the block; the previous mode is restored after."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was)


def checkpoint_family(state: Any, path: str | os.PathLike = "<memory>") -> str:
    """The family of a generators checkpoint dict (a one-line error naming the fix when it is not one)."""
    if not isinstance(state, dict) or "family" not in state or "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a generators checkpoint (no family/config inside); "
                         f"save models with model.save(path)")
    return str(state["family"])


def ema_warmup_warning(family: str, decay: float | None, steps: int | None) -> str | None:
    """The one-line warning for a model whose EMA weights (the ones it samples with) averaged fewer
    than ~``1 / (1 - decay)`` steps, so they are still mostly the random initial weights (a DDPM
    then samples pure noise); None when the EMA is off or warmed up."""
    if not decay or decay <= 0 or steps is None:
        return None
    horizon = 1.0 / (1.0 - float(decay))
    if steps >= horizon - 1e-6:
        return None
    lower = f"--ema {1.0 - 10.0 / steps:.3g}" if steps >= 20 else "--ema 0"
    return (f"{family}: its EMA weights (decay {decay:g}, averaging ~{horizon:,.0f} steps) have seen only {steps:,} "
            f"steps and are still close to the random initial ones, so its samples look like noise; train at "
            f"least {int(np.ceil(horizon)):,} steps (--steps) or lower the decay ({lower}; 0 turns EMA off)")
