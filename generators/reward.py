"""Generators as reward synthesizers: a Gymnasium wrapper adding ``scale * term(obs)`` to the reward.

``term`` scores the observation reached by the step (or a latent of it, via ``encode``):

- :func:`log_density` - a flow's ``log p(x)``: with a positive ``scale`` it rewards familiar
  states and penalises states unlike the training data (in the dream: states the world model
  has never seen, so an evolved controller cannot farm the model's blind spots);
- :func:`neg_energy` - an EBM's ``-E(x)``, the same idea with an unnormalised density;
- :func:`discriminator_logit` - a GAN discriminator's logit, "how real does this look";
- :func:`novelty_penalty` - ``min(0, log p(x) - q)``: a penalty for states rarer than the real
  data's ``q`` quantile, with no constant offset (``scripts/reward_compare.py`` evolves Doom
  controllers in the dream with and without it and scores both in the real game).

Written against observation vectors / latents, so it wraps a dream env whose observation is
``z`` (or ``[z, h]``: pass ``encode=lambda o: o[..., :32]``) as well as any Box env::

    flow = generators.load(RunDir("runs/generators/realnvp-latents").generator_final)  # shape (32,)
    env = GeneratorReward(dream_env, log_density(flow), scale=0.01, clip=10.0,
                          encode=lambda obs: obs[..., :32])

Image observations (``(H, W, C)`` uint8) are converted to the model's image space automatically
when the model is an image model. ``info["generator_term"]`` holds the unscaled term and
``info["base_reward"]`` the env's own reward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from generators.base import Generator
from generators.images import from_uint8, resize

Term = Callable[[torch.Tensor], torch.Tensor]
"""A batch of model inputs ``(B, *shape)`` -> one score per input ``(B,)``."""


def log_density(model: Generator) -> Term:
    """``x -> log p(x)`` (nats) of a model with ``log_prob`` (realnvp, pixelcnn)."""
    if not hasattr(model, "log_prob"):
        raise ValueError(f"{model.family} has no log_prob; use realnvp or pixelcnn")

    def term(x: torch.Tensor) -> torch.Tensor:
        with model.evaluating():
            return model.log_prob(x)  # type: ignore[attr-defined]

    return term


def novelty_penalty(model: Generator, reference: torch.Tensor, quantile: float = 0.05,
                    clip: float = 10.0) -> Term:
    """``x -> min(0, log p(x) - q)``, clipped at ``-clip``: zero for states as likely as real ones.

    ``q`` is the ``quantile`` of ``log p`` over ``reference`` (real data, e.g. the latents of real
    frames): states at least as likely as 95% of real ones (by default) cost nothing, rarer ones
    cost the nats they fall short by. A penalty only: unlike ``log p`` itself it adds no constant
    per step, so it does not change how much a long episode is worth (in Doom, 1 per step alive).
    """
    logp = log_density(model) if hasattr(model, "log_prob") else neg_energy(model)
    with torch.no_grad():
        ref = torch.cat([logp(reference[i:i + 4096].to(model.device)) for i in range(0, len(reference), 4096)])
    q = float(torch.quantile(ref.float().cpu(), quantile))

    def term(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (logp(x.to(model.device)) - q).clamp(min=-clip, max=0.0)

    term.threshold = q  # type: ignore[attr-defined]
    return term


def neg_energy(model: Generator) -> Term:
    """``x -> -E(x)`` of an energy-based model."""
    if not hasattr(model, "energy"):
        raise ValueError(f"{model.family} has no energy; use ebm")

    def term(x: torch.Tensor) -> torch.Tensor:
        with model.evaluating():
            return -model.energy(x)  # type: ignore[attr-defined]

    return term


def discriminator_logit(model: Generator, label: int | None = None) -> Term:
    """``x -> D(x)``: a GAN discriminator's logit / critic value (``label`` for a conditional GAN)."""
    if not hasattr(model, "discriminate"):
        raise ValueError(f"{model.family} has no discriminator; use dcgan, wgan_gp or cgan")

    def term(x: torch.Tensor) -> torch.Tensor:
        y = None if label is None else torch.full((x.shape[0],), int(label), device=x.device)
        with model.evaluating():
            return model.discriminate(x, y)  # type: ignore[attr-defined]

    return term


def term_for(model: Generator) -> Term:
    """The natural term of a model: log-density, negative energy, or discriminator logit."""
    if hasattr(model, "log_prob"):
        return log_density(model)
    if hasattr(model, "energy"):
        return neg_energy(model)
    if hasattr(model, "discriminate"):
        return discriminator_logit(model)
    raise ValueError(f"{model.family} has no density, energy or discriminator to reward with")


def default_encoder(model: Generator) -> Callable[[Any], torch.Tensor]:
    """Observation -> model input batch ``(1, *shape)``: images converted and resized, vectors as float."""
    def encode(obs: Any) -> torch.Tensor:
        a = np.asarray(obs)
        if model.kind == "image" and a.ndim == 3:
            x = from_uint8(a) if a.dtype == np.uint8 else torch.as_tensor(a, dtype=torch.float32).permute(2, 0, 1)[None]
            x = resize(x, model.shape[-1])
            if x.shape[1] != model.shape[0]:
                x = x.mean(1, keepdim=True).expand(-1, model.shape[0], -1, -1)
            return x
        return torch.as_tensor(a, dtype=torch.float32).reshape(1, *model.shape)
    return encode


class GeneratorReward(gym.Wrapper):
    """``reward' = reward + scale * clip(term(encode(next_obs)))`` (see module docstring).

    Args:
        env: any Gymnasium env.
        term: a generator, or a :data:`Term` (see :func:`log_density`, :func:`neg_energy`,
            :func:`discriminator_logit`). A generator uses :func:`term_for`.
        scale: weight of the term (negative to turn a bonus into a penalty).
        clip: if set, the term is clipped to ``[-clip, clip]`` before scaling.
        encode: observation -> model input batch ``(1, *shape)`` (default: :func:`default_encoder`
            of the generator; needed when ``term`` is a plain function over non-vector observations).
    """

    def __init__(self, env: gym.Env, term: Generator | Term, scale: float = 1.0, clip: float | None = None,
                 encode: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__(env)
        if isinstance(term, Generator):
            encode = encode or default_encoder(term)
            term = term_for(term)
        self.term, self.scale, self.clip = term, float(scale), clip
        self.encode = encode or (lambda obs: torch.as_tensor(np.asarray(obs), dtype=torch.float32)[None])

    def score(self, obs: Any) -> float:
        """The unscaled (clipped) term of one observation."""
        with torch.no_grad():
            v = float(self.term(self.encode(obs)).reshape(-1)[0])
        if self.clip is not None:
            v = float(np.clip(v, -self.clip, self.clip))
        return v

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        t = self.score(obs)
        info = dict(info)
        info["base_reward"] = float(reward)
        info["generator_term"] = t
        return obs, float(reward) + self.scale * t, terminated, truncated, info
