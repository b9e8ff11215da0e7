"""Policies that play the real game. Each is built inside a rollout worker from a picklable spec,
``reset(seed)`` before every episode (so an episode depends only on its seed) and maps an
observation to an action: a brownian random walk, and a controller acting on [z, h] through a
world model (V encodes each frame, M's LSTM carries h forward with the chosen action)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces

from agents.controller import BatchedController, ControllerConfig, init_params
from worldlab.world_model import WorldModel


class Policy(Protocol):
    def reset(self, seed: int) -> None: ...

    def act(self, obs: np.ndarray) -> Any: ...


@dataclass
class PolicySpec:
    """Which policy a worker builds: ``name`` plus its keyword arguments (all picklable)."""

    name: str = "brownian"
    kwargs: dict[str, Any] = field(default_factory=dict)


POLICIES = ("brownian", "random_controller", "controller")


class BrownianPolicy:
    """Random actions that drift: a_{t+1} = clip(a_t + sqrt(dt) * sigma * N(0, 1)) per dimension.

    Smoother than i.i.d. uniform actions, so the car actually drives and turns (a common
    alternative to the paper's random controller). Box spaces only; for a Discrete space the
    continuous walk on [-1, 1] picks an action by equal-width bins.

    Args:
        action_space: the env's action space.
        dt: time step of the walk (1/50 by default: about one second to cross the range).
        sigma: scale of the walk, in units of each dimension's range.
    """

    def __init__(self, action_space: spaces.Space, dt: float = 1.0 / 50.0, sigma: float = 4.0) -> None:
        self.space = action_space
        if isinstance(action_space, spaces.Box):
            self.low = np.asarray(action_space.low, dtype=np.float64)
            self.high = np.asarray(action_space.high, dtype=np.float64)
        elif isinstance(action_space, spaces.Discrete):
            self.low, self.high = np.array([-1.0]), np.array([1.0])
        else:
            raise ValueError(f"brownian policy needs a Box or Discrete action space, got {action_space}")
        self.scale = sigma * np.sqrt(dt) * (self.high - self.low) / 2.0
        self.rng = np.random.default_rng(0)
        self.a = (self.low + self.high) / 2.0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.a = self.rng.uniform(self.low, self.high)

    def act(self, obs: np.ndarray) -> Any:
        self.a = np.clip(self.a + self.scale * self.rng.standard_normal(self.a.shape), self.low, self.high)
        if isinstance(self.space, spaces.Discrete):
            k = int(np.clip((self.a[0] + 1.0) / 2.0 * self.space.n, 0, self.space.n - 1))
            return k
        return self.a.astype(self.space.dtype)


class ControllerPolicy:
    """Policy ``a = C([z, h])`` on real frames.

    Args:
        world_model: V and M (their weights; the start bank is not used here).
        cfg: the controller's shape.
        params: flat parameters (num_params,), or None to draw fresh random ones at every
            ``reset`` (the paper's randomly initialised controller for data collection).
        noise_std: std of Gaussian exploration noise added to each action (clipped to bounds);
            iterative training collects with the evolved controller plus this noise.
    """

    def __init__(self, world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray | None,
                 noise_std: float = 0.0) -> None:
        self.wm = world_model.eval()
        self.cfg, self.noise_std = cfg, float(noise_std)
        self.random = params is None
        self.ctrl = None if params is None else BatchedController(cfg, params)
        self.low, self.high = np.asarray(cfg.action_low), np.asarray(cfg.action_high)
        self.rng = np.random.default_rng(0)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_spec(cls, spec: PolicySpec, action_space: spaces.Space, task: str) -> ControllerPolicy:
        """``random_controller``: untrained V and M of the task's paper sizes, random C per episode
        (kwargs: ``z_size``, ``hidden``, ``seed``). ``controller``: kwargs ``world_model`` (a
        WorldModel) and ``params``, ``controller_config`` (a dict), ``noise_std``."""
        kw = dict(spec.kwargs)
        if spec.name == "random_controller":
            from envs import TASKS, action_space_dict

            t = TASKS.get(task)
            wm = WorldModel.untrained(task=task, action_space=action_space_dict(action_space),
                                      z_size=int(kw.get("z_size", t.z_size if t else 32)),
                                      hidden=int(kw.get("hidden", t.rnn_hidden if t else 256)),
                                      seed=int(kw.get("seed", 0)))
            cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, task)
            return cls(wm, cfg, None)
        wm = kw["world_model"]
        cfg = ControllerConfig(**kw["controller_config"])
        return cls(wm, cfg, np.asarray(kw["params"]), noise_std=float(kw.get("noise_std", 0.0)))

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        if self.random:
            self.ctrl = BatchedController(self.cfg, init_params(self.cfg, self.rng))
        self.state = self.wm.mdrnn.initial_state(1, self.wm.device)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.ctrl is not None and self.state is not None, "call reset(seed) first"
        z, _ = self.wm.encode(torch.from_numpy(np.ascontiguousarray(obs))[None])  # (1, Z): the posterior mean
        x = torch.cat([z, self.state[0]], dim=1)  # (1, Z + H)
        a = self.ctrl.act(x)[0].numpy().astype(np.float64)
        if self.noise_std > 0:
            a = np.clip(a + self.noise_std * self.rng.standard_normal(a.shape), self.low, self.high)
        _, self.state = self.wm.mdrnn.step(z, torch.as_tensor(a, dtype=torch.float32)[None], self.state)
        return a.astype(np.float32)


def policy_kwargs(world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray, noise_std: float = 0.0
                  ) -> dict[str, Any]:
    """The kwargs of a ``PolicySpec("controller", ...)``: a controller plus exploration noise."""
    return {"world_model": world_model.cpu(), "controller_config": asdict(cfg),
            "params": np.asarray(params, dtype=np.float64), "noise_std": noise_std}


def make_policy(spec: PolicySpec, action_space: spaces.Space, task: str) -> Policy:
    """Build a policy from its spec inside a worker."""
    if spec.name == "brownian":
        return BrownianPolicy(action_space, **spec.kwargs)
    if spec.name in ("random_controller", "controller"):
        return ControllerPolicy.from_spec(spec, action_space, task)
    raise ValueError(f"unknown policy {spec.name!r}; choose one of {', '.join(POLICIES)}")
