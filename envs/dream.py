"""The dream: Gymnasium environments that run entirely inside a learned :class:`WorldModel`.

## Description

Reset draws a starting latent from the world model's bank of real first frames (seeded);
each step feeds ``[z_t, a_t]`` to M, samples ``z_{t+1}`` from its mixture at temperature
``tau``, takes the reward from M's reward head and ``terminated`` from its done head
(a Bernoulli draw; ``logit > 0`` in deterministic mode), and truncates at the task's episode
limit. ``DreamEnv`` is one dream; ``DreamVectorEnv`` runs N of them as one batched torch
computation (N in the thousands, CPU or CUDA), and offers :meth:`DreamVectorEnv.step_torch`
for callers that stay in torch (CMA-ES evaluates whole populations through it). The batched
step itself, M advancing N dreams at once, is :class:`envs.dream_step.DreamStep`; the envs
reach it only through that interface.

## Action Space

The real task's: ``Box(low, high, shape)`` (actions are clipped to it) or ``Discrete(n)``.

## Observation Space

``obs_mode="latent"``: ``[z, h]`` float32 of size ``z_size + hidden`` (the paper's controller
input). ``obs_mode="pixels"``: the current z decoded by V (or by ``renderer``), uint8 (64, 64, 3).

## Rewards and episode end

Predicted by M. ``truncated`` is set at ``max_episode_steps`` (the task's limit by default).

## Arguments

``run_dir`` (a run folder with ``checkpoints/vae.pt`` and ``mdrnn.pt``) or ``world_model``;
``temperature`` (tau; the paper's Doom agent used 1.15); ``obs_mode``; ``device``;
``deterministic`` (no sampling: the most likely component's mean, the done logit's sign);
``render_mode`` ``"rgb_array"`` or ``"human"`` (a pygame window, upscaled); ``renderer``: drawn
with in place of V's decoder, for rendering and pixel observations: a trained
:mod:`generators.renderer` (the model, or the path of its ``generator.pt``; checked against this
world model's V), or any callable mapping latents ``(B, Z)`` to frames (uint8 ``(B, H, W, 3)``
or floats in [0, 1] ``(B, 3, H, W)``);
``max_episode_steps`` (override the task's limit);
``members`` (how many of the world model's ensemble of Ms to dream with, member 0 first; None: all
of them; a single-M world model has one), ``member_mode`` (``"episode"``: each dream is one
member's, drawn at reset; ``"step"``: a fresh member each step), ``dropout`` (a fresh dropout mask
on M's head input per dream, fixed for its episode), ``disagreement_penalty`` (subtracted from the
reward times the members' disagreement on the next latent), ``done_mode`` (``"member"``: the
dream's member says when it ends; ``"max"``: the members' largest done probability, a pessimistic
dream) (see
:class:`envs.dream_step.EnsembleDreamStep`; all off by default, and a single M without dropout
dreams exactly as before); ``start`` (``"first"``: dreams start at banked real first frames with
an empty past; ``"mid"``: at real mid-episode states, ``z`` and every member's LSTM state, from
the world model's mid-episode bank). ``DreamVectorEnv`` also takes ``num_envs``,
``autoreset_mode`` (``NEXT_STEP`` or ``SAME_STEP``) and ``compile`` (fuse the step's
element-wise work with inductor, the compiler of ``torch.compile``).

Tensors returned by the torch API are created under ``torch.inference_mode``: use them as
controller inputs, not in autograd graphs.

## Seeding

Each sub-environment draws its starting latents (and, in an ensemble, its member and dropout mask)
from its own ``numpy`` generator (``reset(seed=s)`` seeds sub-env ``i`` with ``s + i``, or pass a
list of seeds), so sub-env ``i`` of a vector env starts where ``DreamEnv`` reset with the same seed
starts. The transition noise
of a vector env comes from one torch generator for the whole batch, seeded by the first seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.dream_step import DreamStep, make_dream_step
from worldlab.mdrnn import MDRNN
from worldlab.sequence_m import state_keys
from worldlab.world_model import WorldModel

DREAM_ID = "worldlab/Dream-v0"
Renderer = Callable[[torch.Tensor], Any]
OBS_MODES = ("latent", "pixels")
STARTS = ("first", "mid")
"""Where dreams start: banked real first frames, or real mid-episode states."""


def build_dream_step(wm: WorldModel, num_envs: int, device: torch.device, compile: bool = False,
                     members: int | None = None, member_mode: str = "episode", dropout: float = 0.0,
                     disagreement_penalty: float = 0.0, precision: str = "fp32", done_mode: str = "member"
                     ) -> DreamStep:
    """The dream step of ``wm``'s first ``members`` Ms (None: all) with the ensemble options, in
    ``precision`` ("fp32", or "bf16" for a Transformer or Mamba M)."""
    k = wm.num_members if members is None else members
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= wm.num_members:
        raise ValueError(f"members must be an integer in 1..{wm.num_members} (the world model's ensemble of Ms), "
                         f"got {members!r}")
    return make_dream_step(wm.mdrnn, num_envs, device, compile=compile, members=wm.ensemble[1:k],
                           member_mode=member_mode, dropout=dropout, disagreement_penalty=disagreement_penalty,
                           precision=precision, done_mode=done_mode)


def register_envs() -> None:
    """Register ``worldlab/Dream-v0`` (single and vector entry points); idempotent."""
    if DREAM_ID not in gym.envs.registry:
        gym.register(id=DREAM_ID, entry_point="envs.dream:DreamEnv", vector_entry_point="envs.dream:DreamVectorEnv",
                     disable_env_checker=False)


def action_space_from(desc: dict[str, Any]) -> spaces.Space:
    """The Gymnasium space of an action-space dict from a manifest or checkpoint."""
    if desc["type"] == "box":
        return spaces.Box(np.asarray(desc["low"], np.float32), np.asarray(desc["high"], np.float32),
                          shape=tuple(desc["shape"]), dtype=np.float32)
    if desc["type"] == "discrete":
        return spaces.Discrete(int(desc["n"]))
    raise ValueError(f"unsupported action space {desc!r}")


def frames_uint8(frames: Any) -> np.ndarray:
    """A renderer's output -> uint8 (B, H, W, 3): accepts uint8 HWC, or floats in [0, 1] CHW/HWC."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach()
        if x.dtype != torch.uint8:
            x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        if x.dim() == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.cpu().numpy())
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(arr)


def _load_world_model(run_dir: str | os.PathLike | None, world_model: WorldModel | None,
                      device: torch.device) -> WorldModel:
    if (run_dir is None) == (world_model is None):
        raise ValueError("pass exactly one of run_dir (a run folder with checkpoints/) or world_model")
    if world_model is None:
        world_model = WorldModel.load(run_dir, device=device)  # type: ignore[arg-type]
    return world_model.to(device).eval()


def resolve_renderer(renderer: Any, world_model: WorldModel, device: torch.device) -> Renderer | None:
    """``renderer`` as given to the dream envs -> a callable ``z (B, Z) -> frames``, or None.

    A path loads a generators checkpoint (``generators.load``); a model with ``render`` (the
    :mod:`generators.renderer` family) is moved to ``device``, checked against the world model's V
    and drawn with through ``render``; any other callable is used as it is.
    """
    if renderer is None:
        return None
    if isinstance(renderer, (str, os.PathLike)):
        import generators

        renderer = generators.load(renderer)
    if hasattr(renderer, "check_world_model"):
        renderer.check_world_model(world_model)
    if isinstance(renderer, torch.nn.Module):
        renderer = renderer.to(device).eval()
    fn = getattr(renderer, "render", renderer)
    if not callable(fn):
        raise TypeError(f"renderer must be a generators renderer, its checkpoint path, or a callable z -> frames; "
                        f"got {type(renderer).__name__}")
    return fn


class _DreamCore:
    """Seeding, starts, time limits and drawing of N dreams around their batched step (the
    :class:`envs.dream_step.DreamStep` M runs, built by the env); shared by :class:`DreamEnv` (N=1)
    and :class:`DreamVectorEnv`."""

    def __init__(self, wm: WorldModel, dream_step: DreamStep, temperature: float, deterministic: bool,
                 device: torch.device, max_episode_steps: int | None, start: str = "first") -> None:
        if not deterministic and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature} (use deterministic=True for no sampling)")
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        bank = wm.mid_bank
        if start == "mid" and bank is None:
            raise ValueError("start='mid' needs the world model's bank of mid-episode states, and this one has none; "
                             "train M with dream.start=mid (it banks them after training)")
        self.wm, self.n, self.device = wm, int(dream_step.num_envs), device
        self.temperature, self.deterministic = float(temperature), bool(deterministic)
        self.limit = int(max_episode_steps or wm.max_episode_steps)
        self.dream_step = dream_step
        self.gen = torch.Generator(device=device)
        self.rngs: list[np.random.Generator] = [np.random.default_rng(i) for i in range(self.n)]
        self.t = torch.zeros(self.n, dtype=torch.int64, device=device)
        self.bank_mu = wm.start_mu.detach().to(device)                              # (M, Z)
        self.bank_std = torch.exp(0.5 * wm.start_logvar.detach().to(device))      # (M, Z)
        self.start = start
        if start == "mid":  # (B, Z) latents; each member's M state there: (members, B, ...) per state tensor
            assert bank is not None
            self.bank_mu = bank["mu"].detach().to(device)
            self.bank_std = torch.exp(0.5 * bank["logvar"].detach().to(device))
            k = dream_step.num_members
            self.bank_state = {key: bank[key][:k].detach().to(device) for key in state_keys(wm.mdrnn)}
        self.seeded = False

    def seed(self, seeds: Sequence[int]) -> None:
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        self.gen.manual_seed(int(seeds[0]) & 0x7FFF_FFFF_FFFF_FFFF)
        self.seeded = True

    def draw_starts(self, rows: Sequence[int]) -> tuple[torch.Tensor, Any]:
        """Starting latents (len(rows), Z) from each row's own generator, and the recurrent state
        there (``start="mid"``: each member's ``(h, c)``, (members, len(rows), H) each, for the
        MDN-RNN; a sequence M's state tensors by name, (1, len(rows), ...) each; else None)."""
        m, z = self.bank_mu.shape
        idx = np.array([self.rngs[r].integers(m) for r in rows], dtype=np.int64)
        at = torch.from_numpy(idx).to(self.device)
        start = self.bank_mu[at]
        if not self.deterministic:
            noise = np.stack([self.rngs[r].standard_normal(z) for r in rows]).astype(np.float32)
            std = self.bank_std[at]
            start = start + std * torch.from_numpy(noise).to(self.device)  # z0 ~ N(mu, sigma^2) of a real frame
        if self.start == "mid":
            if isinstance(self.wm.mdrnn, MDRNN):
                return start, (self.bank_state["h"][:, at], self.bank_state["c"][:, at])
            return start, {key: v[:, at] for key, v in self.bank_state.items()}
        return start, None

    def reset_rows(self, rows: Sequence[int], z0: torch.Tensor | None = None) -> None:
        """Start dreams ``rows`` at drawn starts, or at latents ``z0`` with an empty past."""
        rows = list(rows)
        if not rows:
            return
        state0 = None
        if z0 is None:
            z0, state0 = self.draw_starts(rows)
        z0 = torch.as_tensor(z0, dtype=torch.float32, device=self.device).reshape(len(rows), -1)
        if z0.shape[1] != self.wm.z_size:
            raise ValueError(f"start latents must have {self.wm.z_size} dims, got {tuple(z0.shape)}")
        idx = torch.as_tensor(rows, device=self.device)
        self.dream_step.reset_rows(idx, z0, state0, rngs=[self.rngs[r] for r in rows])
        self.t[idx] = 0

    def adopt(self, step: DreamStep, rows: torch.Tensor) -> None:
        """Go on with dreams ``rows`` only, in ``step`` (``len(rows)`` rollouts, built like the current
        one): their state, generators and time moved there, in the order of ``rows``."""
        step.copy_rows_from(self.dream_step, rows)
        at = rows.tolist()
        self.rngs = [self.rngs[r] for r in at]
        self.t = self.t.index_select(0, rows.to(self.device))
        self.dream_step, self.n = step, len(at)

    def restore(self, step: DreamStep, rngs: list[np.random.Generator]) -> None:
        """Go back to ``step``'s whole batch (the one :meth:`adopt` left) with its generators, the
        time of every dream at 0: all of them restart next."""
        self.dream_step, self.n, self.rngs = step, int(step.num_envs), rngs
        self.t = torch.zeros(self.n, dtype=torch.int64, device=self.device)

    def step(self, actions: torch.Tensor, clip: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of every dream: (reward (N,), terminated (N,), truncated (N,)) as torch tensors.

        ``actions``: (N, A) floats, clamped into ``clip = (low, high)`` when given, or (N,) indices.
        """
        self.dream_step.set_actions(actions, *(clip or ()))
        reward, done = self.dream_step.step(self.temperature, self.deterministic, self.gen)
        self.t += 1
        truncated = (self.t >= self.limit) & ~done
        return reward, done, truncated

    def frames(self, renderer: Renderer | None, rows: slice | torch.Tensor = slice(None)) -> np.ndarray:
        """Current latents of ``rows`` drawn as uint8 (B, H, W, 3) frames."""
        z = self.dream_step.z[rows]
        with torch.inference_mode():
            if renderer is not None:
                return frames_uint8(renderer(z.clone()))
            return self.wm.decode_frames(z)


def _clip_tensor(space: spaces.Space, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(space, spaces.Box):
        return (torch.as_tensor(space.low, device=device).reshape(-1),
                torch.as_tensor(space.high, device=device).reshape(-1))
    return None


class DreamEnv(gym.Env):
    """One dream inside a :class:`WorldModel` (see the module docstring for the full contract)."""

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 50}

    def __init__(self, run_dir: str | os.PathLike | None = None, world_model: WorldModel | None = None, *,
                 temperature: float = 1.0, obs_mode: str = "latent", device: str | torch.device = "cpu",
                 deterministic: bool = False, render_mode: str | None = None, renderer: Renderer | str | os.PathLike | None = None,
                 max_episode_steps: int | None = None, window_scale: int = 4, members: int | None = None,
                 member_mode: str = "episode", dropout: float = 0.0, disagreement_penalty: float = 0.0,
                 start: str = "first", done_mode: str = "member") -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}")
        self.device = torch.device(device)
        self.world_model = _load_world_model(run_dir, world_model, self.device)
        self.obs_mode, self.render_mode = obs_mode, render_mode
        self.renderer = renderer = resolve_renderer(renderer, self.world_model, self.device)
        step = build_dream_step(self.world_model, 1, self.device, members=members, member_mode=member_mode,
                                dropout=dropout, disagreement_penalty=disagreement_penalty, done_mode=done_mode)
        self._core = _DreamCore(self.world_model, step, temperature, deterministic, self.device, max_episode_steps,
                                start)
        self.action_space = action_space_from(self.world_model.action_space)
        self.observation_space = _obs_space(self.world_model, obs_mode, renderer)
        self._clip = _clip_tensor(self.action_space, self.device)
        self._window: Any = None
        self._window_scale = int(window_scale)

    @property
    def temperature(self) -> float:
        return self._core.temperature

    @property
    def max_episode_steps(self) -> int:
        return self._core.limit

    def latents(self) -> torch.Tensor:
        """The dream's current latent z as a (1, Z) batch of one (a new tensor), e.g. for V's decoder."""
        return self._core.dream_step.z.clone()

    def _obs(self) -> np.ndarray:
        if self.obs_mode == "latent":
            return self._core.dream_step.obs[0].detach().cpu().numpy().copy()
        return self._core.frames(self.renderer)[0]

    @torch.inference_mode()
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a dream from a banked real state (``options={"z0": latent}`` starts from ``z0``, empty past)."""
        super().reset(seed=seed)
        if seed is not None:
            self._core.seed([seed])
        elif not self._core.seeded:
            self._core.seed([int(self.np_random.integers(2**63 - 1))])
        z0 = None if not options or options.get("z0") is None else torch.as_tensor(options["z0"]).reshape(1, -1)
        self._core.reset_rows([0], z0)
        if self.render_mode == "human":
            self.render()
        return self._obs(), {}

    @torch.inference_mode()
    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = torch.as_tensor(np.asarray(action), device=self.device)
        if self._clip is not None:
            a = a.float().reshape(1, -1).clamp(self._clip[0], self._clip[1])
        else:
            a = a.long().reshape(1)
        reward, terminated, truncated = self._core.step(a)
        obs = self._obs()
        if self.render_mode == "human":
            self.render()
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("DreamEnv.render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        frame = self._core.frames(self.renderer)[0]  # (H, W, 3)
        if self.render_mode == "rgb_array":
            return frame
        self._window = _show(self._window, frame, self._window_scale, "worldlab dream", self.metadata["render_fps"])
        return None

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None


def _obs_space(wm: WorldModel, obs_mode: str, renderer: Renderer | None) -> spaces.Box:
    if obs_mode == "latent":
        return spaces.Box(-np.inf, np.inf, shape=(wm.obs_size,), dtype=np.float32)
    if renderer is not None:
        probe = frames_uint8(renderer(wm.start_mu[:1].clone()))
        shape = probe.shape[1:]
    else:
        shape = (64, 64, 3)
    return spaces.Box(0, 255, shape=shape, dtype=np.uint8)


def _show(window: Any, frame: np.ndarray, scale: int, caption: str, fps: int) -> Any:
    """Blit a uint8 (H, W, 3) frame, upscaled, into a pygame window (created on first use)."""
    import pygame

    h, w = frame.shape[:2]
    size = (w * scale, h * scale)
    if window is None:
        pygame.display.init()  # not pygame.init(): no mixer, so no ALSA lines where there is no sound card
        pygame.font.init()
        pygame.display.set_caption(caption)
        window = {"screen": pygame.display.set_mode(size), "clock": pygame.time.Clock()}
    surf = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
    window["screen"].blit(pygame.transform.scale(surf, size), (0, 0))
    pygame.event.pump()
    pygame.display.flip()
    window["clock"].tick(fps)
    return window


class DreamVectorEnv(VectorEnv):
    """N dreams stepped as one batched torch computation (see the module docstring).

    Autoreset follows Gymnasium 1.x ``NEXT_STEP`` by default: the step after an episode ends
    resets that sub-env (its action is ignored; reward 0, not done). ``autoreset_mode=SAME_STEP``
    resets in the same step and puts the last observation in ``info["final_obs"]``.
    ``compile=True`` fuses the step's element-wise work with inductor (seconds of
    compilation on first use; faster for large N). ``precision="bf16"`` runs a Transformer or
    Mamba M in bfloat16 (:class:`envs.dream_step.SequenceMDreamStep`).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 50, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, run_dir: str | os.PathLike | None = None,
                 world_model: WorldModel | None = None, *, temperature: float = 1.0, obs_mode: str = "latent",
                 device: str | torch.device = "cpu", deterministic: bool = False, render_mode: str | None = None,
                 renderer: Renderer | str | os.PathLike | None = None, max_episode_steps: int | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, window_scale: int = 4,
                 compile: bool = False, members: int | None = None, member_mode: str = "episode",
                 dropout: float = 0.0, disagreement_penalty: float = 0.0, start: str = "first",
                 precision: str = "fp32", done_mode: str = "member") -> None:
        self._window: Any = None  # first: close() (from VectorEnv.__del__) reads it when a check below refuses
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, "rgb_array", "human"):
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        if self.autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {self.autoreset_mode}")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.device = torch.device(device)
        self.world_model = _load_world_model(run_dir, world_model, self.device)
        self.num_envs = int(num_envs)
        self.obs_mode, self.render_mode = obs_mode, render_mode
        self.renderer = renderer = resolve_renderer(renderer, self.world_model, self.device)
        self._step_options = dict(members=members, member_mode=member_mode, dropout=dropout,
                                  disagreement_penalty=disagreement_penalty, precision=precision, done_mode=done_mode)
        step = build_dream_step(self.world_model, self.num_envs, self.device, compile=compile, **self._step_options)
        self._full: tuple[int, DreamStep, list[np.random.Generator]] | None = None  # while shrunk: what to restore
        self._shrunk_steps: dict[int, DreamStep] = {}  # eager steps by size, built on first use
        self._core = _DreamCore(self.world_model, step, temperature, deterministic, self.device, max_episode_steps,
                                start)
        self.single_action_space = action_space_from(self.world_model.action_space)
        self.single_observation_space = _obs_space(self.world_model, obs_mode, renderer)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._clip = _clip_tensor(self.single_action_space, self.device)
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._zero_reward = torch.zeros((), device=self.device)
        self.final_obs: torch.Tensor | None = None
        """SAME_STEP mode: the last observations of the sub-envs that just ended (torch, latent mode)."""
        self._window_scale = int(window_scale)
        self._np_random_seed: int | None = None

    @property
    def temperature(self) -> float:
        return self._core.temperature

    @property
    def max_episode_steps(self) -> int:
        return self._core.limit

    @property
    def compiled(self) -> bool:
        """Whether the dream step runs compiled (False with ``compile=False``, and after a fallback to eager)."""
        return bool(self._core.dream_step.compiled)

    # -- torch API -----------------------------------------------------------------------------

    def latents(self) -> torch.Tensor:
        """The sub-envs' current latents z (N, Z) as a new tensor."""
        return self._core.dream_step.z.clone()

    def observe_torch(self) -> torch.Tensor:
        """Current observations as a new torch tensor: (N, Z + H) float32 or (N, 64, 64, 3) uint8."""
        if self.obs_mode == "latent":
            return self._core.dream_step.take_obs()
        return torch.from_numpy(self._core.frames(self.renderer)).to(self.device)

    @torch.inference_mode()
    def reset_torch(self, seed: int | Sequence[int] | None = None, z0: torch.Tensor | None = None,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
        """Reset all sub-envs (or the bool mask ``rows``) and return the observations (torch)."""
        if rows is None and self._full is not None:  # every sub-env again: the full batch back
            n, step, rngs = self._full
            self._full = None
            self._core.restore(step, rngs)
            self._set_size(n)
        if seed is not None:
            seeds = [int(seed) + i for i in range(self.num_envs)] if np.isscalar(seed) else [int(s) for s in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} sub-environments")
            self._core.seed(seeds)
            self._np_random_seed = seeds[0]
        elif not self._core.seeded:
            self._core.seed(list(np.random.SeedSequence().generate_state(self.num_envs, dtype=np.uint32)))
        if rows is None:
            idx = list(range(self.num_envs))
        else:
            idx = torch.as_tensor(rows, dtype=torch.bool).nonzero().flatten().tolist()
        if z0 is not None:
            z0 = torch.as_tensor(z0, dtype=torch.float32)
            if rows is not None and z0.shape[0] == self.num_envs:
                z0 = z0[torch.as_tensor(idx, dtype=torch.long)]
        self._core.reset_rows(idx, z0)
        self._needs_reset[torch.as_tensor(idx, dtype=torch.long, device=self.device)] = False
        return self.observe_torch()

    @property
    def can_shrink(self) -> bool:
        """Whether :meth:`shrink_torch` works with this env's M (the MDN-RNN and its ensembles)."""
        return bool(self._core.dream_step.can_copy_rows)

    @torch.inference_mode()
    def shrink_torch(self, rows: torch.Tensor) -> torch.Tensor:
        """Go on with sub-envs ``rows`` only (a 1-D int tensor, repeats allowed), renumbered
        ``0..len(rows)-1`` in that order, and return their observations: each keeps its whole state
        (latent, M's state, an ensemble's member and dropout mask, its time limit, its generator),
        so a population whose dreams have mostly ended steps only the rest (``DreamFitness``).
        ``num_envs`` and the spaces follow; a reset of all sub-envs (``reset_torch`` without
        ``rows``) brings back the full batch. The smaller steps run eagerly (one per size, built
        on first use and kept). The per-step noise is drawn for the rows there are, so a stochastic
        dream continues with other draws than the full batch would have made (the same ones for the
        same seed and the same shrinks)."""
        core = self._core
        if not self.can_shrink:
            raise ValueError(f"this dream's M ({type(core.dream_step).__name__}) cannot shrink its batch")
        rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).to(self.device)
        n = int(rows.numel())
        if n < 1 or bool(((rows < 0) | (rows >= self.num_envs)).any()):
            raise ValueError(f"rows must be 1 or more sub-env indices in [0, {self.num_envs}), got {rows.tolist()}")
        if self._full is None:
            self._full = (self.num_envs, core.dream_step, core.rngs)
        step = self._shrunk_steps.get(n)
        if step is None or step is core.dream_step:
            step = build_dream_step(self.world_model, n, self.device, compile=False, **self._step_options)
            self._shrunk_steps.setdefault(n, step)
        core.adopt(step, rows)
        self._needs_reset = self._needs_reset.index_select(0, rows)
        self._set_size(n)
        return self.observe_torch()

    def _set_size(self, n: int) -> None:
        self.num_envs = n
        self.action_space = batch_space(self.single_action_space, n)
        self.observation_space = batch_space(self.single_observation_space, n)
        if self._needs_reset.numel() != n:
            self._needs_reset = torch.zeros(n, dtype=torch.bool, device=self.device)

    @torch.inference_mode()
    def step_torch(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step all sub-envs with torch actions ((N, A) float or (N,) int) on the env's device.

        Returns ``(obs, reward, terminated, truncated)`` as torch tensors (obs is a new tensor).
        Autoreset as configured (``NEXT_STEP``: sub-envs that ended on the previous call restart
        now, their reward 0 and flags False; ``SAME_STEP``: ended sub-envs restart at once and
        their last observations are in ``self.final_obs``).
        """
        core = self._core
        if self._clip is not None:  # clamped where the step keeps its actions: no copy of its own
            actions = actions.reshape(self.num_envs, -1).to(self.device, torch.float32)
            reward, terminated, truncated = core.step(actions, self._clip)
        else:
            reward, terminated, truncated = core.step(actions.to(self.device).reshape(self.num_envs))
        reward = reward.clone()
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = self._needs_reset
            if bool(resetting.any()):
                rows = resetting.nonzero().flatten()
                core.reset_rows(rows.tolist())
                reward[rows] = 0.0
                terminated[rows] = False
                truncated[rows] = False
            self._needs_reset = terminated | truncated
            return self.observe_torch(), reward, terminated, truncated
        ended = terminated | truncated
        self.final_obs = None
        if bool(ended.any()):
            self.final_obs = self.observe_torch()
            core.reset_rows(ended.nonzero().flatten().tolist())
        return self.observe_torch(), reward, terminated, truncated

    # -- Gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset; ``options``: ``"z0"`` (N, Z) start latents, ``"reset_mask"`` (N,) bool partial reset."""
        options = options or {}
        mask = options.get("reset_mask")
        obs = self.reset_torch(seed=seed, z0=options.get("z0"),
                               rows=None if mask is None else torch.as_tensor(np.asarray(mask)))
        if self.render_mode == "human":
            self.render()
        return obs.cpu().numpy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = torch.as_tensor(np.asarray(actions))
        obs, reward, terminated, truncated = self.step_torch(a)
        infos: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and self.final_obs is not None:
            ended = (terminated | truncated).cpu().numpy()
            final = self.final_obs.cpu().numpy()
            infos = {"final_obs": np.array([final[i] if ended[i] else None for i in range(self.num_envs)],
                                           dtype=object),
                     "_final_obs": ended,
                     "final_info": {}, "_final_info": ended}
        if self.render_mode == "human":
            self.render()
        return (obs.cpu().numpy(), reward.cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(),
                infos)

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            gym.logger.warn("DreamVectorEnv.render() called without a render_mode")
            return None
        if self.render_mode == "rgb_array":
            return tuple(self._core.frames(self.renderer))
        k = min(self.num_envs, 16)
        frames = self._core.frames(self.renderer, slice(0, k))  # (k, H, W, 3)
        cols = math.ceil(math.sqrt(k))
        rows = math.ceil(k / cols)
        h, w = frames.shape[1:3]
        tile = np.zeros((rows * h, cols * w, 3), np.uint8)
        for i, f in enumerate(frames):
            r, c = divmod(i, cols)
            tile[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
        self._window = _show(self._window, tile, self._window_scale, "worldlab dreams", self.metadata["render_fps"])
        return None

    def close_extras(self, **kwargs: Any) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None
