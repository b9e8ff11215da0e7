"""The World Models algorithm (Ha & Schmidhuber 2018), SB3-style: built from a task and a config,
then ``learn()``.

Stages, each skipped when its output in the run folder is complete, so a killed run resumes where
it stopped::

    for round k in 0 .. rounds-1:
        collect   real rollouts (round 0: brownian / random controller; later: the evolved C + noise)
        vae       train V on all frames so far            -> checkpoints/vae.pt
        encode    frames -> latents                       -> latents/
        mdrnn     train M on all latents                  -> checkpoints/mdrnn.pt
        evolve    CMA-ES on C in the dream (or the real env) -> checkpoints/cma_r{k}.npz, controller_r{k}.npz
    evaluate      the final C in the real env, Ray workers -> eval.json
    report        plots, videos                           -> report.md
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.cmaes import evolve
from agents.controller import ControllerConfig, load_controller, save_controller
from agents.fitness import DreamFitness, RealFitness, RealPool, generation_seeds
from agents.policies import PolicySpec
from agents.report import summarize_returns, write_report
from worldlab.config import RunConfig
from worldlab.io import atomic_write_json, read_json
from worldlab.logging import RunLogger
from worldlab.storage import Manifest
from worldlab.training import TrainConfig
from worldlab.world_model import WorldModel


def _say(msg: str) -> None:
    print(f"[worldlab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class WorldModels:
    """Collect -> V -> M -> evolve C in the dream -> evaluate in the real environment.

    Args:
        config: the resolved run config (``worldlab.config.preset`` + overrides).
        run_dir: the run folder; its ``config.json`` must match ``config`` when it exists.
        address: Ray cluster address (None: a local Ray).
        progress: show progress bars.
        threads: torch threads of this process (default: every core; on a machine shared with
            other jobs, 1 avoids OpenMP threads spinning against each other).
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, address: str | None = None,
                 progress: bool = True, threads: int | None = None) -> None:
        import envs
        from agents.processes import check_backend

        check_backend(config.backend, address)  # before any work, not at the first rollout
        self.cfg, self.run_dir, self.address, self.progress = config, Path(run_dir), address, progress
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.spec = envs.get_task(config.task)
        self.ckpt = self.run_dir / "checkpoints"
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.json"
        if cfg_path.exists():
            # the saved config as this version reads it (fields added since take their defaults)
            saved = json.loads(json.dumps(RunConfig.from_dict(read_json(cfg_path)).to_dict()))  # tuples -> lists
            now = json.loads(json.dumps(config.to_dict()))
            diff = [k for k in _diff(saved, now) if k not in RESUMABLE_CHANGES]
            if diff:
                raise ValueError(f"{self.run_dir} was started with another config (differs in {', '.join(diff[:6])}); "
                                 f"resume it without changing settings (--rounds, --generations, --workers, "
                                 f"--train-workers, --backend, --device, loader_workers and dream.compile may "
                                 f"change), "
                                 f"or choose another --out")
            if saved != now:  # more or fewer rounds, other workers: every finished stage is kept
                config.save(self.run_dir)
        else:
            config.save(self.run_dir)
        self._pool: RealPool | None = None

    # -- stages -------------------------------------------------------------------------------

    def collect(self, k: int) -> Manifest:
        from agents.collect import collect
        from agents.controller_policy import policy_kwargs

        c = self.cfg.collect
        env_kwargs = {"max_episode_steps": c.max_steps} if c.max_steps else {}
        eps = c.round_episodes(k)
        start, n = eps.start, len(eps)
        if k == 0:
            spec = PolicySpec(c.policy, {"seed": self.cfg.seed} if c.policy == "random_controller" else {})
        else:
            wm = WorldModel.load(self.run_dir)
            ccfg, params, _ = load_controller(self.ckpt / f"controller_r{k - 1}.npz")
            spec = PolicySpec("controller", policy_kwargs(wm, ccfg, params, c.noise_std))
        data = self.run_dir / "data"
        m = Manifest(data) if (data / "manifest.json").exists() else None
        if m is not None and all(i in m.episodes for i in eps):
            return m
        _say(f"round {k}: collecting {n} real episodes ({spec.name}) with {self.cfg.workers} workers")
        return collect(self.cfg.task, data, n, workers=self.cfg.workers, policy=spec, seed=self.cfg.seed,
                       address=self.address, env_kwargs=env_kwargs, progress=self.progress, start_index=start,
                       backend=self.cfg.backend)

    def world_model(self, k: int) -> WorldModel:
        from worldlab import stages

        c = self.cfg
        vae_train = TrainConfig(**{**asdict(c.vae_train), "steps": c.vae_train.steps * (k + 1)})
        on = f" on {c.train_workers} Ray Train workers" if c.train_workers > 1 else ""
        if c.train_workers > 1 and self._pool is not None:  # its actors hold the CPUs the training workers need
            self._pool.close()
            self._pool = None
        _say(f"round {k}: V (ConvVAE z={c.vae.z_size}) to {vae_train.steps} steps{on}")
        stages.train_vae(self.run_dir, c.vae, vae_train, batch_size=c.vae_batch, device=self.device,
                         progress=self.progress, split_seed=c.seed, train_workers=c.train_workers,
                         address=self.address, num_workers=c.loader_workers)
        _say(f"round {k}: encoding frames to latents")
        stages.encode(self.run_dir, device=self.device, progress=self.progress)
        _say(f"round {k}: M (MDN-RNN LSTM {c.mdrnn.hidden}, {c.mdrnn.gaussians} Gaussians) to "
             f"{c.mdrnn_train.steps} steps{on}")
        stages.train_mdrnn(self.run_dir, c.mdrnn, c.mdrnn_train, batch_size=c.mdrnn_batch, seq_len=c.seq_len,
                           device=self.device, progress=self.progress, split_seed=c.seed,
                           train_workers=c.train_workers, address=self.address, num_workers=c.loader_workers)
        return WorldModel.load(self.run_dir, device=self.device, task=c.task)

    def controller_config(self, wm: WorldModel) -> ControllerConfig:
        return ControllerConfig.for_task(wm.action_space, wm.obs_size, self.cfg.task, hidden=self.cfg.controller_hidden)

    def pool(self, wm: WorldModel) -> RealPool:
        if self._pool is not None:
            self._pool.close()
        env_kwargs = {"max_episode_steps": self.cfg.eval.max_steps} if self.cfg.eval.max_steps else {}
        self._pool = RealPool(self.cfg.task, wm, self.controller_config(wm), self.cfg.workers, env_kwargs,
                              self.address, backend=self.cfg.backend)
        return self._pool

    def evolve(self, k: int, wm: WorldModel) -> np.ndarray:
        c = self.cfg
        out = self.ckpt / f"controller_r{k}.npz"
        ccfg = self.controller_config(wm)
        if out.exists():
            saved_cfg, params, extra = load_controller(out)
            # a round that later rounds built on is final: its controller played their data
            later = (self.ckpt / f"cma_r{k + 1}.npz").exists() or (self.ckpt / f"controller_r{k + 1}.npz").exists()
            if saved_cfg == ccfg and (extra.get("generations") == c.cma.generations or k < c.rounds - 1 or later):
                return params
        x0 = None
        if k > 0:
            _, x0, _ = load_controller(self.ckpt / f"controller_r{k - 1}.npz")
        cma_cfg = c.cma.__class__(**{**asdict(c.cma), "seed": c.cma.seed + 1000 * k})
        if c.train_in == "dream":
            # compiled on the CPU only: the inductor graph is not exercised on CUDA by the tests
            fitness: Any = DreamFitness(wm, ccfg, cma_cfg.popsize, cma_cfg.rollouts, c.dream.temperature,
                                        c.dream.max_steps, self.device, seed=cma_cfg.seed,
                                        compile=c.dream.compile and self.device.type == "cpu")
            where = f"the dream (tau={c.dream.temperature}, {cma_cfg.popsize * cma_cfg.rollouts} dreams at once)"
        else:
            fitness = RealFitness(self.pool(wm.cpu()), cma_cfg.rollouts, seed=cma_cfg.seed)
            where = f"the real {c.task} ({c.workers} Ray workers)"
        _say(f"round {k}: evolving C ({ccfg.num_params} parameters) in {where}, "
             f"{cma_cfg.generations} generations of {cma_cfg.popsize} x {cma_cfg.rollouts}")
        with RunLogger(self.run_dir, f"evolve_r{k}") as logger:
            state = evolve(fitness, ccfg.num_params, cma_cfg, self.ckpt / f"cma_r{k}.npz", logger=logger,
                           progress=self.progress, desc="evolve", x0=x0)
        save_controller(out, ccfg, state.mean_params, generations=cma_cfg.generations, round=k,
                        best_fitness=state.best_fitness, train_in=c.train_in)
        return state.mean_params

    def evaluate(self, wm: WorldModel, params: np.ndarray, final: Path) -> dict[str, Any]:
        ev = self.run_dir / "eval.json"
        digest = file_digest(final)
        if ev.exists():
            old = read_json(ev)
            if old.get("controller") == digest and old.get("episodes") == self.cfg.eval.episodes:
                return old
        n = self.cfg.eval.episodes
        _say(f"evaluating the controller in the real {self.cfg.task}: {n} episodes on {self.cfg.workers} workers")
        seeds = generation_seeds(self.cfg.seed, 10**6, n)  # disjoint from every training generation
        res = self.pool(wm.cpu()).play([(params, s) for s in seeds])
        out = {**summarize_returns(self.cfg.task, [r["return"] for r in res]), "controller": digest,
               "train_in": self.cfg.train_in, "seeds": seeds, "lengths": [r["length"] for r in res]}
        atomic_write_json(ev, out)
        return out

    def videos(self, wm: WorldModel, ccfg: ControllerConfig, params: np.ndarray) -> None:
        from agents.watch import dream_frames, real_frames
        from worldlab.fidelity import save_video

        vid = self.run_dir / "videos"
        limit = self.cfg.eval.max_steps or self.spec.max_episode_steps
        if not (vid / "real.mp4").exists():
            frames = real_frames(self.cfg.task, wm, ccfg, params, seed=self.cfg.seed, max_steps=limit)
            save_video(vid / "real.mp4", frames, fps=30)
        if not (vid / "dream.mp4").exists():
            frames = dream_frames(wm, ccfg, params, seed=self.cfg.seed, temperature=self.cfg.dream.temperature,
                                  max_steps=limit)
            save_video(vid / "dream.mp4", frames, fps=30)

    # -- the whole job ------------------------------------------------------------------------

    def learn(self) -> dict[str, Any]:
        c = self.cfg
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        wm: WorldModel | None = None
        params: np.ndarray | None = None
        try:
            for k in range(c.rounds):
                self.collect(k)
                wm = self.world_model(k)
                params = self.evolve(k, wm)
            assert wm is not None and params is not None
            final = self.ckpt / "controller.npz"
            last = self.ckpt / f"controller_r{c.rounds - 1}.npz"
            if not final.exists() or file_digest(final) != file_digest(last):
                _copy_atomic(last, final)
            result = self.evaluate(wm, params, final)
            if c.eval.videos:
                self.videos(wm.cpu(), self.controller_config(wm), params)
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        write_report(self.run_dir, c.to_dict())
        result = {**result, "wall_s": time.perf_counter() - t0}
        return result


RESUMABLE_CHANGES = ("rounds", "workers", "train_workers", "backend", "loader_workers", "cma.generations", "device",
                     "dream.compile")
"""Settings a resumed run may change: each round's stages are keyed by the round, so a run can go on
for more rounds (or stop after fewer: its last finished round's controller becomes the final one)
or more generations (the last round's evolution continues from its saved CMA state; an earlier
round's controller, which later rounds' data was played with, is kept); collection does not
depend on the number of workers or on where they run; V's and M's resumable checkpoints are the
same whatever the number or kind of workers that wrote them (a run trained on a GPU box goes on,
or is evaluated and reported, on a laptop with --device cpu); ``dream.compile`` only changes how
the same dream step is computed (runs started before the setting existed read it as on)."""


def _copy_atomic(src: Path, dst: Path) -> None:
    from worldlab.io import atomic_write_bytes

    atomic_write_bytes(dst, src.read_bytes())


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
