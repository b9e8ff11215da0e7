"""The one real-environment rollout loop of the lab (collection and evaluation both use it)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from agents.policies import Policy

SIGNALS: dict[str, type] = {"speed": np.float32, "off_road": np.bool_, "tiles": np.int32}
"""per-step signals a recorded episode keeps, with their dtype, when every step's ``info`` has them
(CarRacing's, from ``envs.car_racing.CarRacingSignals``): each becomes a ``(T,)`` array of the
shard. A task whose info lacks them records exactly the arrays it always did."""


def run_episode(env: gym.Env, policy: Policy, seed: int, record: bool = True,
                max_steps: int | None = None) -> dict[str, Any]:
    """Play one episode from ``env.reset(seed=seed)`` with ``policy`` (reset with the same seed).

    Returns a shard dict (see ``worldlab.storage``) when ``record`` is set, else only the
    summary: ``{"return", "length", "seed", "terminated"}`` (evaluation does not keep frames;
    ``terminated``: the game ended the episode, not a time limit). A recorded
    episode also keeps the :data:`SIGNALS` found in every step's ``info``. A policy with a
    ``bind(env)`` method (one that reads the env's state, like the scripted driver) is bound to
    ``env`` first.
    """
    bind = getattr(policy, "bind", None)
    if bind is not None:
        bind(env)
    policy.reset(seed)
    obs, _ = env.reset(seed=seed)
    frames, actions, rewards, terms, truncs = [obs] if record else None, [], [], [], []
    signals: dict[str, list[Any]] = {k: [] for k in SIGNALS}
    total, t = 0.0, 0
    while True:
        action = policy.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        t += 1
        if record:
            frames.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            for k, v in signals.items():
                if k in info:
                    v.append(info[k])
        if max_steps is not None and t >= max_steps and not (terminated or truncated):
            truncated = True
            if record:
                truncs[-1] = True
        if terminated or truncated:
            break
    out: dict[str, Any] = {"return": total, "length": t, "seed": seed, "terminated": bool(terminated)}
    if record:
        out["arrays"] = {
            "obs": np.stack(frames).astype(np.uint8),
            "actions": np.asarray(actions, dtype=np.int64 if np.ndim(actions[0]) == 0 else np.float32),
            "rewards": np.asarray(rewards, dtype=np.float32),
            "terminated": np.asarray(terms, dtype=bool),
            "truncated": np.asarray(truncs, dtype=bool),
            "seed": np.int64(seed),
        }
        out["arrays"].update({k: np.asarray(v, dtype=SIGNALS[k]) for k, v in signals.items() if len(v) == t})
    return out
