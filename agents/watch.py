"""Watching a controller: in the real game, in its dream, or both side by side, in a pygame
window or recorded to a video file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from agents.controller import BatchedController, ControllerConfig
from agents.policies import ControllerPolicy
from worldlab.world_model import WorldModel

PANE = 384  # pixels per side of one pane


def _pane(frame: np.ndarray, label: str, size: int = PANE) -> np.ndarray:
    h, w = frame.shape[:2]
    interp = cv2.INTER_NEAREST if max(h, w) <= 128 else cv2.INTER_AREA
    img = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=interp)
    cv2.putText(img, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(img, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    return img


def _panes(frame: np.ndarray, name: str, status: str, beside: bool = False) -> list[np.ndarray]:
    """One pane per frame; ``beside``: a dream frame with a renderer's to its right gives two."""
    h = frame.shape[0]
    if beside:
        return [_pane(frame[:, :h], f"{name}, V {status}"), _pane(frame[:, h:], f"{name}, renderer {status}")]
    return [_pane(frame, f"{name} {status}")]


def _play(env: Any, obs: Any, act: Any) -> Iterator[tuple[np.ndarray, float, bool]]:
    """Step ``env`` (already reset to ``obs``) with ``act(obs)``; yield (frame, return so far, done)."""
    total = 0.0
    try:
        yield env.render(), total, False
        while True:
            obs, r, term, trunc, _ = env.step(act(obs))
            total += float(r)
            yield env.render(), total, bool(term or trunc)
            if term or trunc:
                return
    finally:
        env.close()


def real_episode(task: str, wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, seed: int,
                 max_steps: int | None = None) -> Iterator[tuple[np.ndarray, float, bool]]:
    """Yield (rendered frame, return so far, done) for one real episode with the controller."""
    import envs

    env = envs.make(task, render_mode="rgb_array", **({"max_episode_steps": max_steps} if max_steps else {}))
    policy = ControllerPolicy(wm, ccfg, params)
    policy.reset(seed)
    obs, _ = env.reset(seed=seed)
    yield from _play(env, obs, policy.act)


def _beside(frames: Iterator[tuple[np.ndarray, float, bool]], env: Any, draw: Any
            ) -> Iterator[tuple[np.ndarray, float, bool]]:
    """``frames`` of a dream env drawn by V, each with ``draw``'s frame of the same latent to its right
    (one (H, 2W, 3) frame: :func:`_panes` splits it into two panes)."""
    from envs.dream import frames_uint8

    for f, total, done in frames:
        g = frames_uint8(draw(env.latents()))[0]
        if g.shape != f.shape:
            g = cv2.resize(g, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_AREA)
        yield np.concatenate([f, g], axis=1), total, done


def _dream(wm: WorldModel, act: Callable[[np.ndarray], Any], seed: int, temperature: float, max_steps: int | None,
           renderer: Any) -> Iterator[tuple[np.ndarray, float, bool]]:
    from envs.dream import DreamEnv, resolve_renderer

    env = DreamEnv(world_model=wm, temperature=temperature, render_mode="rgb_array", max_episode_steps=max_steps)
    draw = resolve_renderer(renderer, env.world_model, env.device) if renderer is not None else None
    obs, _ = env.reset(seed=seed)
    frames = _play(env, obs, act)
    yield from frames if draw is None else _beside(frames, env, draw)


@torch.inference_mode()
def dream_episode(wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, seed: int, temperature: float = 1.0,
                  max_steps: int | None = None, renderer: Any = None) -> Iterator[tuple[np.ndarray, float, bool]]:
    """Yield (dream frame, return so far, done) for one dream episode with the controller; frames are
    V's decodings, or, with ``renderer`` (a :mod:`generators.renderer` or
    :mod:`generators.diffusion_renderer` model, or its path), V's decoding and the renderer's frame
    of the same latent side by side (one frame twice as wide)."""
    ctrl = BatchedController(ccfg, params)
    yield from _dream(wm, lambda o: ctrl.act(torch.as_tensor(o)[None])[0].numpy(), seed, temperature, max_steps,
                      renderer)


def latent_real_episode(task: str, wm: WorldModel, act: Callable[[np.ndarray], Any], seed: int,
                        max_steps: int | None = None) -> Iterator[tuple[np.ndarray, float, bool]]:
    """Yield (rendered frame, return so far, done) for one real episode of a policy ``act`` on
    ``[z, h]`` (one trained in the dream), seeing the game through
    :class:`envs.wrappers.LatentObservation`."""
    import envs

    env = envs.LatentObservation(
        envs.make(task, render_mode="rgb_array", **({"max_episode_steps": max_steps} if max_steps else {})), wm)
    obs, _ = env.reset(seed=seed)
    yield from _play(env, obs, act)


@torch.inference_mode()
def latent_dream_episode(wm: WorldModel, act: Callable[[np.ndarray], Any], seed: int, temperature: float = 1.0,
                         max_steps: int | None = None, renderer: Any = None
                         ) -> Iterator[tuple[np.ndarray, float, bool]]:
    """Yield (dream frame, return so far, done) for one dream episode of a policy ``act`` on ``[z, h]``
    (frames as :func:`dream_episode` draws them)."""
    yield from _dream(wm, act, seed, temperature, max_steps, renderer)


def real_frames(task: str, wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, seed: int,
                max_steps: int | None = None) -> np.ndarray:
    return np.stack([_pane(f, f"real {R:7.1f}") for f, R, _ in real_episode(task, wm, ccfg, params, seed, max_steps)])


def dream_frames(wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray, seed: int, temperature: float = 1.0,
                 max_steps: int | None = None) -> np.ndarray:
    return np.stack([_pane(f, f"dream {R:7.1f}")
                     for f, R, _ in dream_episode(wm, ccfg, params, seed, temperature, max_steps)])


def watch(task: str, wm: WorldModel, ccfg: ControllerConfig | None, params: np.ndarray | None,
          temperature: float = 1.0, mode: str = "both", episodes: int = 1, seed: int = 0, record: str | None = None,
          fps: int = 50, max_steps: int | None = None, renderer: str | Path | None = None,
          act: Callable[[np.ndarray], Any] | None = None, sound: bool = False) -> dict[str, list[float]]:
    """Play ``episodes`` episodes and show them in a pygame window, or write them to ``record``.

    ``mode``: "real", "dream" or "both" (side by side; the dream is an independent rollout of
    the same controller in the world model). ``renderer``: a trained :mod:`generators.renderer` or
    :mod:`generators.diffusion_renderer` checkpoint: the dream is then shown twice side by side,
    drawn by V's decoder and by the renderer from the same latents. ``act``: instead of the
    controller (``ccfg``, ``params``), any policy on ``[z, h]`` (e.g. :func:`agents.sb3_policy.sb3_act`
    of a policy trained in the dream). ``sound`` (with ``record``): the video gets a sound track,
    the dream pane's rollout (the real one's in ``mode="real"``) sonified by
    :func:`generators.music.sonify` from its rewards and V's latents of its frames. Returns the
    returns of each pane's episodes.
    """
    if sound and record is None:
        raise ValueError("sound goes into a recorded video: pass record=FILE.mp4 (--record) with it")
    if act is None and (ccfg is None or params is None):
        raise ValueError("watch needs a controller (ccfg and params) or a policy act on [z, h]")
    if mode not in ("real", "dream", "both"):
        raise ValueError(f"mode must be real, dream or both, got {mode!r}")
    if renderer is not None:
        import generators

        renderer = generators.load(renderer)
    window = None
    if record is None:
        import pygame

        pygame.display.init()  # not pygame.init(): no mixer, so no ALSA lines where there is no sound card
        pygame.font.init()
        width = PANE * ((2 if mode == "both" else 1) + (renderer is not None and mode != "real"))
        window = pygame.display.set_mode((width, PANE))
        pygame.display.set_caption(f"worldlab: {task} ({mode})")
        clock = pygame.time.Clock()
    frames: list[np.ndarray] = []
    returns: dict[str, list[float]] = {"real": [], "dream": []}
    heard = "dream" if mode in ("dream", "both") else "real"
    sonified: list[tuple[np.ndarray, float, int]] = []  # the heard pane's (frame, return so far, episode) per frame
    try:
        for ep in range(episodes):
            s = seed + ep
            streams: dict[str, Iterator[tuple[np.ndarray, float, bool]]] = {}
            if mode in ("real", "both"):
                streams["real"] = (real_episode(task, wm, ccfg, params, s, max_steps) if act is None
                                   else latent_real_episode(task, wm, act, s, max_steps))
            if mode in ("dream", "both"):
                streams["dream"] = (dream_episode(wm, ccfg, params, s, temperature, max_steps, renderer) if act is None
                                    else latent_dream_episode(wm, act, s, temperature, max_steps, renderer))
            last: dict[str, tuple[np.ndarray, float, bool]] = {}
            while streams:
                for name in list(streams):
                    try:
                        last[name] = next(streams[name])
                    except StopIteration:
                        returns[name].append(last[name][1])
                        del streams[name]
                panes = [p for n in ("real", "dream") if n in last
                         for p in _panes(last[n][0], n, f"{last[n][1]:7.1f}{' (done)' if n not in streams else ''}",
                                        beside=n == "dream" and renderer is not None)]
                if sound:  # the heard pane's frame (a dream's V half when a renderer draws beside it)
                    f = last[heard][0]
                    sonified.append((f[:, :f.shape[0]] if heard == "dream" and renderer is not None else f,
                                     last[heard][1], ep))
                img = np.concatenate(panes, axis=1)
                if window is not None:
                    import pygame

                    for event in pygame.event.get():
                        if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                            return returns
                    window.blit(pygame.surfarray.make_surface(img.swapaxes(0, 1)), (0, 0))
                    pygame.display.flip()
                    clock.tick(fps)
                else:
                    frames.append(img)
    finally:
        if window is not None:
            import pygame

            pygame.display.quit()
    if record is not None:
        from worldlab.fidelity import save_video

        video_fps = min(fps, 30)
        save_video(record, np.stack(frames), fps=video_fps)
        if sound:
            _add_sound(record, wm, sonified, video_fps, seed)
    return returns


def _add_sound(record: str | Path, wm: WorldModel, sonified: list[tuple[np.ndarray, float, int]], fps: int,
               seed: int) -> None:
    """The heard pane's rollout as music (:func:`generators.music.sonify`: rewards from the return's
    steps, latents from V's encoding of each shown frame at 64x64), muxed into the video."""
    import tempfile

    from generators.music import mux_audio, notes_to_wav, sonify

    shown = np.stack([cv2.resize(np.ascontiguousarray(f), (64, 64), interpolation=cv2.INTER_AREA)
                      for f, _, _ in sonified])
    with torch.inference_mode():
        z = wm.vae.encode_mean(torch.from_numpy(shown)).cpu()
    returns, eps = np.array([R for _, R, _ in sonified]), np.array([e for _, _, e in sonified])
    rewards = np.diff(returns, prepend=0.0)
    rewards[1:][eps[1:] != eps[:-1]] = returns[1:][eps[1:] != eps[:-1]]  # a new episode pays from 0
    with tempfile.TemporaryDirectory(prefix="worldlab_sound_") as tmp:
        wav = Path(tmp) / "sound.wav"
        notes_to_wav(sonify(rewards, z.numpy(), seed=seed), wav, step_s=1.0 / fps)
        mux_audio(record, wav)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"))
