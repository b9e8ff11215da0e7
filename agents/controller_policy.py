"""A controller acting in the real environment through the world model: each frame is encoded by
V, the controller sees [z, h], and M's LSTM carries h forward with the chosen action."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from agents.controller import BatchedController, ControllerConfig, init_params
from agents.policies import PolicySpec
from worldlab.world_model import WorldModel


class ControllerPolicy:
    """Policy ``a = C([z, h])`` on real frames.

    Args:
        world_model: V and M (their weights; the start bank is not used here).
        cfg: the controller's shape.
        params: flat parameters (num_params,), or None to draw fresh random ones at every
            ``reset`` (the paper's randomly initialised controller for data collection).
        noise_std: std of Gaussian exploration noise added to each action (clipped to bounds);
            iterative training collects with the evolved controller plus this noise.
        sample_z: feed a sample z ~ N(mu, sigma) instead of mu (the paper's code sampled).
    """

    def __init__(self, world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray | None,
                 noise_std: float = 0.0, sample_z: bool = False) -> None:
        self.wm = world_model.eval()
        self.cfg, self.noise_std, self.sample_z = cfg, float(noise_std), sample_z
        self.random = params is None
        self.ctrl = None if params is None else BatchedController(cfg, params)
        self.low, self.high = np.asarray(cfg.action_low), np.asarray(cfg.action_high)
        self.rng = np.random.default_rng(0)
        self.gen = torch.Generator().manual_seed(0)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_spec(cls, spec: PolicySpec, action_space: spaces.Space, task: str) -> ControllerPolicy:
        """``random_controller``: untrained V and M of the task's paper sizes, random C per episode
        (kwargs: ``z_size``, ``hidden``, ``seed``). ``controller``: kwargs ``world_model`` (a
        WorldModel) and ``params``, ``controller_config`` (a dict), ``noise_std``."""
        kw = dict(spec.kwargs)
        if spec.name == "random_controller":
            import envs
            from envs.tasks import TASKS

            t = TASKS.get(task)
            wm = WorldModel.untrained(task=task, action_space=envs.task_of_space(action_space),
                                      z_size=int(kw.get("z_size", t.z_size if t else 32)),
                                      hidden=int(kw.get("hidden", t.rnn_hidden if t else 256)),
                                      seed=int(kw.get("seed", 0)))
            cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, task)
            return cls(wm, cfg, None)
        wm = kw["world_model"]
        cfg = ControllerConfig(**kw["controller_config"])
        return cls(wm, cfg, np.asarray(kw["params"]), noise_std=float(kw.get("noise_std", 0.0)),
                   sample_z=bool(kw.get("sample_z", False)))

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.gen.manual_seed(int(seed))
        if self.random:
            self.ctrl = BatchedController(self.cfg, init_params(self.cfg, self.rng))
        self.state = self.wm.mdrnn.initial_state(1, self.wm.device)

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.ctrl is not None and self.state is not None, "call reset(seed) first"
        mu, logvar = self.wm.encode(torch.from_numpy(np.ascontiguousarray(obs))[None])  # (1, Z)
        z = mu
        if self.sample_z:
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=self.gen)
        x = torch.cat([z, self.state[0]], dim=1)  # (1, Z + H)
        a = self.ctrl.act(x)[0].numpy().astype(np.float64)
        if self.noise_std > 0:
            a = np.clip(a + self.noise_std * self.rng.standard_normal(a.shape), self.low, self.high)
        _, self.state = self.wm.mdrnn.step(z, torch.as_tensor(a, dtype=torch.float32)[None], self.state)
        return a.astype(np.float32)


def policy_kwargs(world_model: WorldModel, cfg: ControllerConfig, params: np.ndarray, noise_std: float = 0.0
                  ) -> dict[str, Any]:
    from dataclasses import asdict

    return {"world_model": world_model.cpu(), "controller_config": asdict(cfg),
            "params": np.asarray(params, dtype=np.float64), "noise_std": noise_std}
