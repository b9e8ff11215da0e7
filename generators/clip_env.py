"""CLIP in Gymnasium environments: a text-specified reward and text-chosen dream starts.

- :class:`TextReward`: ``reward' = reward + scale * cos(image(obs), text(prompt))`` (a
  :class:`generators.reward.GeneratorReward` whose term is :func:`generators.clip.text_reward`),
  on a real env (frames; a latent CLIP reads them through V: ``encode=``) or on a dream env
  (its ``[z, h]`` observation: the first ``Z`` entries are read).
- :class:`PromptStarts` / :class:`PromptStartsVector`: ``reset(options={"prompt": "a sharp left
  turn"})`` starts a dream (:class:`envs.dream.DreamEnv` / ``DreamVectorEnv``) at one of the
  ``top_k`` candidate states CLIP finds closest to the prompt (default candidates: the world
  model's bank of real starts; pass ``states`` for others, e.g. latents of real mid-episode
  frames). The start goes to the dream as ``options["z0"]`` (an empty past, like any ``z0`` start).

Imports gymnasium (so :mod:`generators` does not load it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper

from generators.clip import CLIP, best_matches, text_reward
from generators.images import from_uint8, resize
from generators.reward import GeneratorReward


def clip_input(clip: CLIP) -> Callable[[Any], torch.Tensor]:
    """Observation -> one CLIP input ``(1, *shape)``: a frame ``(H, W, 3)`` uint8 converted and resized
    for an image CLIP; the first ``D`` entries of a vector observation (a dream's ``[z, h]``) for a latent one."""
    shape = clip.config.shape

    def encode(obs: Any) -> torch.Tensor:
        a = np.asarray(obs)
        if clip.kind == "image":
            if a.ndim != 3:
                raise ValueError(f"an image CLIP scores frames (H, W, 3), got an observation of shape {a.shape}")
            x = resize(from_uint8(a), shape[-1])  # (1, 3, S, S) in [-1, 1]
            return x.mean(1, keepdim=True) if shape[0] == 1 else x
        if a.ndim != 1 or a.shape[0] < shape[0]:
            raise ValueError(f"a latent CLIP scores vectors of {shape[0]} (V's z), got an observation of shape "
                             f"{a.shape}; pass encode= (e.g. frames through V: lambda o: wm.encode(o[None])[0])")
        return torch.as_tensor(a[:shape[0]], dtype=torch.float32)[None]

    return encode


class TextReward(GeneratorReward):
    """Adds ``scale * text_reward(clip, prompt, baseline)(encode(next_obs))`` to every reward.

    Args:
        env: any Gymnasium env.
        clip: a trained :class:`generators.clip.CLIP`.
        prompt: what to reward ("stay on the road"); ``baseline``: a prompt whose similarity is
            subtracted (optional); ``reference``, ``quantile``: a penalty only (see
            :func:`generators.clip.text_reward`).
        scale: reward per unit of cosine similarity.
        encode: observation -> CLIP input ``(1, *shape)`` (default :func:`clip_input`; a latent CLIP
            on a real env needs V: ``lambda o: wm.encode(torch.from_numpy(o)[None])[0]``).

    ``info["generator_term"]`` holds the unscaled similarity, ``info["base_reward"]`` the env's reward.
    """

    def __init__(self, env: gym.Env, clip: CLIP, prompt: str, scale: float = 1.0, baseline: str | None = None,
                 encode: Callable[[Any], torch.Tensor] | None = None, reference: torch.Tensor | None = None,
                 quantile: float = 0.5) -> None:
        super().__init__(env, text_reward(clip, prompt, baseline, reference, quantile), scale=scale,
                         encode=encode or clip_input(clip))
        self.prompt = prompt


def _candidates(env: Any, states: torch.Tensor | None) -> torch.Tensor:
    if states is not None:
        return torch.as_tensor(states, dtype=torch.float32)
    wm = getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "world_model", None)
    if wm is None:
        raise ValueError("PromptStarts needs candidate start states: wrap a dream env (it has a world model) "
                         "or pass states=latents (N, Z)")
    return wm.start_mu.detach().cpu()


def _scored_inputs(clip: CLIP, env: Any, states: torch.Tensor) -> torch.Tensor:
    """What CLIP scores for candidate latents: the latents (a latent CLIP) or V's frames of them."""
    if clip.kind != "image":
        return states
    wm = env.unwrapped.world_model
    frames = torch.from_numpy(wm.decode_frames(states))  # (N, 64, 64, 3) uint8
    x = resize(from_uint8(frames), clip.config.shape[-1])
    return x.mean(1, keepdim=True) if clip.config.shape[0] == 1 else x


class _Prompted:
    """The shared part: candidate states, their ranking per prompt (cached), the seeded choice."""

    def _setup(self, env: Any, clip: CLIP, states: torch.Tensor | None, top_k: int) -> None:
        self.clip, self.top_k = clip, int(top_k)
        self.states = _candidates(env, states)  # (M, Z)
        if self.top_k < 1 or self.top_k > len(self.states):
            raise ValueError(f"top_k must be in 1..{len(self.states)} (the candidate states), got {top_k}")
        self._inputs = _scored_inputs(clip, env, self.states)
        self._ranked: dict[str, torch.Tensor] = {}
        self._rng = np.random.default_rng()

    def ranked(self, prompt: str) -> torch.Tensor:
        """Indices ``(top_k,)`` of the candidates best matching ``prompt``, best first."""
        if prompt not in self._ranked:
            self._ranked[prompt] = best_matches(self.clip, self._inputs, prompt, self.top_k)
        return self._ranked[prompt]

    def _choose(self, prompt: str, n: int, seed: int | None) -> torch.Tensor:
        if seed is not None:
            self._rng = np.random.default_rng([int(seed), 0x7E87])
        best = self.ranked(prompt)
        return best[torch.from_numpy(self._rng.integers(len(best), size=n))]

    def _options(self, options: dict[str, Any] | None, n: int, seed: int | None) -> tuple[dict[str, Any] | None, Any]:
        if not options or options.get("prompt") is None:
            return options, None
        if options.get("z0") is not None:
            raise ValueError("give reset either a prompt or z0, not both")
        rest = {k: v for k, v in options.items() if k != "prompt"}
        idx = self._choose(str(options["prompt"]), n, seed)
        return {**rest, "z0": self.states[idx]}, idx


class PromptStarts(gym.Wrapper, _Prompted):
    """``reset(options={"prompt": text})`` starts the dream at one of the ``top_k`` candidate states
    closest to ``text`` (drawn with the reset's seed); ``info["start_index"]`` names it. Without a
    prompt, reset is the wrapped env's."""

    def __init__(self, env: gym.Env, clip: CLIP, states: torch.Tensor | None = None, top_k: int = 1) -> None:
        gym.Wrapper.__init__(self, env)
        self._setup(env, clip, states, top_k)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        options, idx = self._options(options, 1, seed)
        obs, info = self.env.reset(seed=seed, options=options)
        if idx is not None:
            info = {**info, "start_index": int(idx[0])}
        return obs, info


class PromptStartsVector(VectorWrapper, _Prompted):
    """:class:`PromptStarts` for a vector of dreams: each sub-env starts at one of the ``top_k``
    closest candidates, drawn independently; ``info["start_index"]`` ``(N,)``."""

    def __init__(self, env: VectorEnv, clip: CLIP, states: torch.Tensor | None = None, top_k: int = 1) -> None:
        VectorWrapper.__init__(self, env)
        self._setup(env, clip, states, top_k)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        first = seed[0] if isinstance(seed, list) else seed
        options, idx = self._options(options, self.num_envs, first)
        obs, info = self.env.reset(seed=seed, options=options)
        if idx is not None:
            info = {**info, "start_index": idx.numpy()}
        return obs, info
