"""The lab's V (:class:`worldlab.vae.ConvVAE`, World Models' convolutional VAE) as a generator family.

V is reused, not rewritten: :class:`VAE` holds a ``ConvVAE`` and only translates between the
generators' image space (``[-1, 1]``) and V's (``[0, 1]``). It models 64x64 RGB frames
(``frames:RUN``). Both are :class:`worldlab.io.ConfigCheckpoint` modules of family ``"vae"``, and
the wrapper stores V's own config and weights (not its wrapped names), so
``generators.load(RunDir(RUN).vae)`` loads the lab's trained V and ``ConvVAE.load`` reads a
checkpoint saved here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from generators.base import Batch, GenConfig, Generator, unpack
from generators.registry import Family, register
from worldlab.vae import ConvVAE, VAEConfig

_WRAPPED = "vae."
"""prefix of V's weights in the wrapper's state dict (V's checkpoints store them without it)."""


@dataclass
class VAEGenConfig(GenConfig):
    """V's config (see :class:`worldlab.vae.VAEConfig`; the World Models paper's sizes).

    Its fields are ``VAEConfig``'s (``image_size`` is fixed at 64), so ``from_dict`` reads the config
    stored in V's checkpoints.
    """

    shape: tuple[int, ...] = (3, 64, 64)
    """V models 64x64 RGB frames only."""
    z_size: int = 32
    """latent size (the paper: 32 for CarRacing, 64 for Doom)."""
    channels: tuple[int, ...] = (32, 64, 128, 256)
    """filters of the 4 encoder convolutions (kernel 4, stride 2)."""
    dec_channels: tuple[int, ...] = (128, 64, 32)
    """filters of the first 3 decoder transposed convolutions."""
    kl_tolerance: float = 0.5
    """free bits per latent dimension (the paper: 0.5)."""
    kl_weight: float = 1.0
    """weight of the floored KL term."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shape != (3, 64, 64):
            raise ValueError(f"vae is the lab's V for 64x64 RGB frames, not {self.shape}; train it on "
                             f"frames:RUN at --image-size 64")
        self.vae_config()  # validate

    def vae_config(self) -> VAEConfig:
        return VAEConfig(z_size=self.z_size, channels=self.channels, dec_channels=self.dec_channels,
                         kl_tolerance=self.kl_tolerance, kl_weight=self.kl_weight, image_size=64)


class VAE(Generator):
    """The lab's ConvVAE behind the generators API (images in ``[-1, 1]``)."""

    config: VAEGenConfig

    def __init__(self, config: VAEGenConfig) -> None:
        super().__init__(config)
        self.vae = ConvVAE(config.vae_config())
        self.meta = self.vae.meta  # one meta (task, id, ...) whichever loader read the checkpoint

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 3, 64, 64)`` in [-1, 1] -> ``(mu, logvar)``, each ``(B, Z)``."""
        return self.vae.encode((x + 1.0) / 2.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> images ``(B, 3, 64, 64)`` in [-1, 1]."""
        return self.vae.decode(z) * 2.0 - 1.0

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        return self.vae.loss((x + 1.0) / 2.0)  # V's own loss on [0, 1] frames

    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        self.check_cond(n, cond)
        with self.evaluating():
            return self.vae.sample(n, generator=generator) * 2.0 - 1.0

    # --- persistence: V's own checkpoint (ConvVAE.load reads it) ------------------------------------
    def checkpoint_header(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**super().checkpoint_header(meta), "config": dataclasses.asdict(self.config.vae_config())}

    def checkpoint_weights(self) -> dict[str, Any]:
        return self.vae.checkpoint_weights()

    @classmethod
    def from_checkpoint(cls, state: Any, path: str | os.PathLike = "<memory>") -> VAE:
        """From V's checkpoint (a ``ConvVAE`` save, the lab's ``vae.pt``) or a training checkpoint of the
        wrapper (whose weights carry the wrapped names)."""
        if isinstance(state, dict):
            state = {**state, **{k: _wrapped(state[k]) for k in ("model", "ema") if isinstance(state.get(k), dict)}}
        model = super().from_checkpoint(state, path)
        model.vae.meta = model.meta
        return model


def _wrapped(weights: dict[str, Any]) -> dict[str, Any]:
    """V's weights under the wrapper's names (unchanged when they have them already)."""
    if any(k.startswith(_WRAPPED) for k in weights):
        return weights
    return {_WRAPPED + k: v for k, v in weights.items()}


register(Family(
    "vae", VAE, VAEGenConfig, "the lab's V: World Models ConvVAE over 64x64 frames (worldlab.vae)",
    kinds=("image",),
    presets={"tiny": {"z_size": 4, "channels": (4, 8, 8, 8), "dec_channels": (8, 8, 4)},
             "small": {"z_size": 32, "channels": (16, 32, 64, 128), "dec_channels": (64, 32, 16)}},
    train={"lr": 1e-3, "batch_size": 100}, monitor="loss"))
