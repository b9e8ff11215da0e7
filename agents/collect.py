"""Rollout collection on a :class:`agents.pool.WorkerPool` (Ray actors, local processes, or this
process): each worker keeps its env alive, plays episodes and compresses each into one shard; the
driver writes the shard atomically, records the manifest and shows progress.

Episode ``i`` of a collection with seed ``s`` always uses the reset seed
``episode_seed(s, i)``, so the data set does not depend on the number of workers, and a
killed collection resumes by collecting only the episodes the folder lacks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.policies import PolicySpec, check_policy, make_policy
from agents.pool import WorkerPool, check_backend, fetch_if_new
from agents.rollout import run_episode
from worldlab.io import atomic_write_bytes
from worldlab.storage import Manifest, encode_shard


def episode_seed(seed: int, index: int) -> int:
    """The reset seed of episode ``index`` of a collection seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class RolloutWorker:
    """Plays episodes and compresses each into shard bytes; one per worker of a
    :class:`agents.pool.WorkerPool` (a Ray actor, a local process, or in-process with workers=0).
    The driver writes the bytes, so workers on other nodes need no shared filesystem; it holds one
    episode at a time, never the data set."""

    def __init__(self, task: str, policy: PolicySpec | None, env_kwargs: dict[str, Any] | None = None,
                 threads: int = 1) -> None:
        import cv2
        import torch

        import envs

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)  # a worker holds one CPU: no pool threads fighting the other worker
        self.task = task
        self.env = envs.make(task, **(env_kwargs or {}))
        self.policy = None if policy is None else make_policy(policy, self.env.action_space, task)
        self._policy_key: str | None = None

    def collect(self, index: int, seed: int, policy_ref: list[Any] | None = None) -> tuple[int, bytes, dict[str, Any]]:
        """Play and compress one episode. ``policy_ref``: ``WorkerPool.put(spec)`` of a
        :class:`PolicySpec` (the pool's workers get the policy this way, fetched once per worker and
        again after a restart, rather than as a constructor argument: a controller's spec holds the
        world model)."""
        fetched = fetch_if_new(policy_ref, self._policy_key)
        if fetched is not None:
            spec, self._policy_key = fetched
            self.policy = make_policy(spec, self.env.action_space, self.task)
        if self.policy is None:
            raise RuntimeError("RolloutWorker has no policy: pass one to the constructor or to collect()")
        ep = run_episode(self.env, self.policy, seed, record=True)
        data, info = encode_shard(ep["arrays"], index)
        return index, data, info

    def close(self) -> None:
        self.env.close()


def collection_meta(task: str, policy: PolicySpec, seed: int, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    import envs

    spec = envs.get_task(task) if task in envs.TASKS else None
    env = envs.make(task, **env_kwargs)
    try:
        meta = {
            "task": task,
            "policy": policy.name,
            "policy_kwargs": {k: v for k, v in policy.kwargs.items() if isinstance(v, (bool, int, float, str))},
            "seed": int(seed),
            "env_kwargs": env_kwargs,
            "action_space": envs.action_space_dict(env.action_space),
            "frame_size": int(env.observation_space.shape[0]),
            "max_episode_steps": int(env_kwargs.get("max_episode_steps")
                                     or (spec.max_episode_steps if spec else env.spec.max_episode_steps or 0)),
        }
    finally:
        env.close()
    if spec is not None:
        meta.update(z_size=spec.z_size, rnn_hidden=spec.rnn_hidden)
    return meta


def collect(task: str, out_dir: str | Path, episodes: int, workers: int = 2, policy: str | PolicySpec = "brownian",
            seed: int = 0, address: str | None = None, env_kwargs: dict[str, Any] | None = None,
            progress: bool = True, start_index: int = 0, backend: str = "ray", verify: bool = True) -> Manifest:
    """Collect ``episodes`` episodes (indices ``start_index .. start_index+episodes-1``) into ``out_dir``.

    Resumes: episodes already recorded (or shards left by a killed run) are not collected again;
    a recorded shard that is missing or (``verify``: its checksum no longer matches) damaged is
    dropped and collected again.
    ``workers=0`` runs in this process without Ray; otherwise ``workers`` Ray workers are used, on
    a local Ray or on the cluster at ``address`` (``backend="ray"``), or ``workers`` local
    processes (``backend="processes"``, for a machine without Ray; see :mod:`agents.pool`).
    """
    check_backend(backend, address)  # before any work
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    spec = policy if isinstance(policy, PolicySpec) else PolicySpec(policy)
    check_policy(spec.name, task)
    out_dir = Path(out_dir)
    if not out_dir.parent.exists():
        raise FileNotFoundError(f"the parent of the output folder does not exist: {out_dir.parent} "
                                f"(create it first, or choose another --out)")
    env_kwargs = dict(env_kwargs or {})
    meta = collection_meta(task, spec, seed, env_kwargs)
    out_dir.mkdir(exist_ok=True)
    manifest = Manifest(out_dir, kind="frames")
    if manifest.episodes or manifest.meta:
        for k in ("task", "env_kwargs"):
            if k in manifest.meta and manifest.meta[k] != meta[k]:
                raise ValueError(f"{out_dir} already holds {k}={manifest.meta[k]!r}, not {meta[k]!r}; "
                                 f"use another --out")
    manifest.meta = {**meta, **{k: v for k, v in manifest.meta.items() if k in ("policy", "policy_kwargs", "seed")
                                and manifest.episodes}}
    manifest.adopt_orphans()
    manifest.drop_damaged(range(start_index, start_index + episodes), verify=verify)
    manifest.save()
    todo = [i for i in range(start_index, start_index + episodes) if i not in manifest.episodes]
    done = episodes - len(todo)
    bar = tqdm(total=episodes, initial=done, desc=f"collect {task}", unit="ep", disable=not progress,
               dynamic_ncols=True)
    t0, frames, last_save = time.perf_counter(), 0, time.perf_counter()

    def record(index: int, data: bytes, info: dict[str, Any]) -> None:
        nonlocal frames, last_save
        atomic_write_bytes(out_dir / info["file"], data)
        manifest.add(index, info, save=False)
        if time.perf_counter() - last_save > 2.0:
            manifest.save()
            last_save = time.perf_counter()
        frames += info["length"]
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(ep_s=f"{(bar.n - done) / dt:.2f}", frames_s=f"{frames / dt:.0f}")

    try:
        if todo:
            # Ray: a killed actor is restarted and its episode played again (twice at most)
            with WorkerPool(RolloutWorker, (task, None, env_kwargs), workers=min(workers, len(todo)),
                            backend=backend, address=address,
                            ray_options={"num_cpus": 1, "max_restarts": 2, "max_task_retries": 2}) as pool:
                _feed(pool, pool.put(spec), todo, seed, record)
    finally:
        manifest.save()
        bar.close()
    return manifest


def _feed(pool: WorkerPool, policy_ref: list[Any], todo: list[int], seed: int, record: Any) -> None:
    """Play the episodes ``todo`` on the pool's workers, two in flight per worker (hides the driver's
    round trip), recording each as it finishes."""
    for _, result in pool.imap("collect", [(i, episode_seed(seed, i), policy_ref) for i in todo]):
        record(*result)
