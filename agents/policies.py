"""Data-collection policies. Each is built inside a rollout worker from a picklable spec,
``reset(seed)`` before every episode (so an episode depends only on its seed) and maps an
observation to an action."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces


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


def make_policy(spec: PolicySpec, action_space: spaces.Space, task: str) -> Policy:
    """Build a policy from its spec inside a worker."""
    if spec.name == "brownian":
        return BrownianPolicy(action_space, **spec.kwargs)
    if spec.name in ("random_controller", "controller"):
        from agents.controller_policy import ControllerPolicy

        return ControllerPolicy.from_spec(spec, action_space, task)
    raise ValueError(f"unknown policy {spec.name!r}; choose one of {', '.join(POLICIES)}")
