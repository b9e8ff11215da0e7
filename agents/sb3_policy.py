"""Stable-Baselines3 policies trained in the dream, played in the real game.

A policy trained on the dream's ``[z, h]`` observations (``envs.sb3.DreamSB3VecEnv``,
``worldlab/Dream-v0``) sees the real game through :class:`envs.wrappers.LatentObservation`: V
encodes each frame, M's LSTM carries ``h`` forward with the chosen action, exactly as the CMA-ES
controller's real-game path does. :func:`evaluate_sb3` scores such a policy on the evaluation
seeds the controller is scored on (:func:`agents.evaluate.evaluate`), spread over a worker pool;
:func:`sb3_act` turns it into the ``[z, h] -> action`` callable :func:`agents.watch.watch` shows.

    python scripts/evaluate.py runs/car_racing --sb3 ppo_dream.zip
    python scripts/watch.py runs/car_racing --sb3 ppo_dream.zip --sb3-algo PPO
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluate import episode_seeds, summarize_returns
from agents.pool import WorkerPool, fetch_if_new
from worldlab.world_model import WorldModel

SB3_ALGOS = ("PPO", "A2C", "SAC", "TD3", "DDPG", "DQN")
"""the algorithms of stable_baselines3 whose saved zips ``--sb3-algo`` names (``auto``: read from the zip)."""
_POLICY_MODULES = {"stable_baselines3.sac.policies": "SAC", "stable_baselines3.td3.policies": "TD3",
                   "stable_baselines3.dqn.policies": "DQN"}


def add_sb3_arguments(parser: Any, verb: str) -> None:
    """The ``--sb3 ZIP`` and ``--sb3-algo`` options of the scripts that take an SB3 policy."""
    parser.add_argument("--sb3", default=None, metavar="ZIP",
                        help=f"{verb} this Stable-Baselines3 policy (model.save zip), trained in the run's dream on "
                             f"[z, h], instead of the controller")
    parser.add_argument("--sb3-algo", default="auto", metavar="ALGO",
                        help="the SB3 algorithm that saved --sb3: PPO, A2C, SAC, TD3, DDPG, DQN "
                             "(default auto: read from the zip)")


def detect_algo(data: bytes, name: str = "the policy") -> str:
    """The SB3 algorithm that saved a zip, from its ``data`` entry (the policy class's module, and
    PPO's own ``clip_range`` to tell PPO from A2C, which share the actor-critic policy)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            meta = json.loads(z.read("data"))
        module = meta["policy_class"]["__module__"]
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError):
        raise ValueError(f"{name} is not a zip saved by Stable-Baselines3 (model.save(path)); "
                         f"train one in the dream: docs/SB3_RLLIB.md") from None
    if module in _POLICY_MODULES:
        return _POLICY_MODULES[module]
    if module == "stable_baselines3.common.policies":
        return "PPO" if "clip_range" in meta else "A2C"
    raise ValueError(f"{name} was saved with a policy from {module}, not one of stable_baselines3's "
                     f"{', '.join(SB3_ALGOS)}; pass the algorithm with --sb3-algo")


def load_sb3(policy: str | Path | bytes, algo: str = "auto", name: str | None = None) -> Any:
    """Load an SB3 model (any algorithm's ``model.save`` zip: a path or its bytes) on the CPU.

    ``algo``: one of :data:`SB3_ALGOS`, or ``"auto"`` to read it from the zip.
    """
    if isinstance(policy, bytes):
        data, name = policy, name or "the policy"
    else:
        path = Path(policy)
        if not path.is_file():
            raise FileNotFoundError(f"no SB3 policy at {path}; save one with model.save(path) after training "
                                    f"in the dream (docs/SB3_RLLIB.md)")
        data, name = path.read_bytes(), name or str(path)
    if algo != "auto" and algo not in SB3_ALGOS:
        raise ValueError(f"unknown --sb3-algo {algo!r}; choose auto or one of {', '.join(SB3_ALGOS)}")
    found = detect_algo(data, name)
    if algo == "auto":
        algo = found
    elif algo != found and {algo, found} != {"TD3", "DDPG"}:
        raise ValueError(f"{name} was saved by {found}, not {algo}; pass --sb3-algo {found} (or auto)")
    import stable_baselines3

    return getattr(stable_baselines3, algo).load(io.BytesIO(data), device="cpu")


def check_fits(model: Any, wm: WorldModel, name: str = "the policy") -> None:
    """Refuse, in one line, a policy whose observations are not this world model's ``[z, h]``."""
    shape = tuple(getattr(model.observation_space, "shape", None) or ())
    if shape != (wm.obs_size,):
        raise ValueError(f"{name} takes observations of shape {shape}, but this run's [z, h] has "
                         f"({wm.obs_size},) (z {wm.z_size} + h {wm.hidden_size}): it was trained in another "
                         f"run's dream (or on pixels); train it in this run's dream")


def sb3_act(model: Any, deterministic: bool = True) -> Callable[[np.ndarray], Any]:
    """``[z, h] -> action`` with the model's ``predict`` (its most likely action by default)."""

    def act(obs: np.ndarray) -> Any:
        return model.predict(obs, deterministic=deterministic)[0]

    return act


class _SB3Policy:
    """The :class:`agents.policies.Policy` protocol over an SB3 model acting on ``[z, h]``."""

    def __init__(self, model: Any) -> None:
        self.act = sb3_act(model)

    def reset(self, seed: int) -> None:
        pass


class SB3EvalWorker:
    """Keeps a real env seen through :class:`envs.wrappers.LatentObservation` and plays seeds with
    an SB3 model; the world model and the model's zip come with each call from
    :meth:`agents.pool.WorkerPool.put` (fetched once per worker)."""

    def __init__(self, task: str, env_kwargs: dict[str, Any] | None = None, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.task, self.env_kwargs = task, dict(env_kwargs or {})
        self.env: Any = None
        self.model: Any = None
        self._wm_key: str | None = None
        self._policy_key: str | None = None

    def play(self, seeds: list[int], world_model_ref: list[Any], policy_ref: list[Any]) -> list[dict[str, Any]]:
        import envs
        from agents.rollout import run_episode

        fetched = fetch_if_new(world_model_ref, self._wm_key)
        if fetched is not None:
            wm, self._wm_key = fetched
            if self.env is not None:
                self.env.close()
            self.env = envs.LatentObservation(envs.make(self.task, **self.env_kwargs), wm.cpu())
        fetched = fetch_if_new(policy_ref, self._policy_key)
        if fetched is not None:
            (algo, data, name), self._policy_key = fetched
            self.model = load_sb3(data, algo, name)
        policy = _SB3Policy(self.model)
        return [{k: ep[k] for k in ("return", "length", "seed")}
                for ep in (run_episode(self.env, policy, int(s), record=False) for s in seeds)]

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def evaluate_sb3(task: str, wm: WorldModel, policy: str | Path, algo: str = "auto", episodes: int = 100,
                 workers: int = 2, seed: int = 12345, max_steps: int | None = None, address: str | None = None,
                 backend: str = "ray", seeds: list[int] | None = None) -> dict[str, Any]:
    """Play ``episodes`` real episodes of ``task`` with the SB3 policy saved at ``policy``, acting on
    ``[z, h]`` through ``wm``, on the seeds :func:`agents.evaluate.evaluate` scores a controller on
    (or the episodes ``seeds``, whatever ``episodes`` and ``seed`` say);
    ``workers=0`` plays them in this process. Returns :func:`summarize_returns` plus the seeds,
    episode lengths, the policy's path and its algorithm."""
    model = load_sb3(policy, algo)
    check_fits(model, wm, str(policy))
    algo = type(model).__name__
    env_kwargs = {"max_episode_steps": max_steps} if max_steps else {}
    seeds = episode_seeds(seed, episodes, seeds)
    with WorkerPool(SB3EvalWorker, (task, env_kwargs), workers=workers, backend=backend, address=address,
                    ray_options={"num_cpus": 1, "max_restarts": -1, "max_task_retries": -1}) as pool:
        wm_ref = pool.put(wm.cpu())
        policy_ref = pool.put((algo, Path(policy).read_bytes(), str(policy)))
        per = max(1, -(-len(seeds) // (2 * pool.size)))  # ~2 batches per worker balances the load
        batches = [seeds[i:i + per] for i in range(0, len(seeds), per)]
        res = [r for batch in pool.map("play", batches, wm_ref, policy_ref) for r in batch]
    return {**summarize_returns(task, [r["return"] for r in res]), "seeds": seeds,
            "lengths": [r["length"] for r in res], "policy": str(policy), "algo": algo}
