"""DreamTrainer: the World Models algorithm (Ha & Schmidhuber 2018), SB3-style: built from a
config and a run folder, then ``learn()``.

Stages (:mod:`agents.world_models.stages`), each skipped when its output in the run folder is
complete, so a killed run resumes where it stopped::

    for round k in 0 .. rounds-1:
        collect_rollouts   real rollouts (round 0: brownian / random controller; later: C + noise)
        train_vision       V on every frame so far                -> checkpoints/vae.pt
        encode_latents     frames -> latents                      -> latents/
        train_memory       M on every latent                      -> checkpoints/mdrnn.pt (+ mdrnn_m{k}.pt)
        evolve_controller  CMA-ES on C in the dream (or the game) -> checkpoints/controller_r{k}.npz
    select_round           the last round's C, or (eval.select_episodes) the rounds' best by real
                           episodes                               -> selection.json, checkpoints/controller.npz
    average_rounds         or (average_rounds K) the last K rounds' Cs averaged -> checkpoints/controller_avg.npz
    evaluate_controller    the final C in the real game           -> eval.json (+ eval_last.json)
    record_videos, write_report                                   -> videos/, report.md
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.fitness import RealPool
from agents.pool import check_backend
from agents.probes import controller_probes, probe_fidelity
from agents.world_models import stages
from agents.world_models.config import RunConfig
from agents.world_models.plan import RunPlan, rounds_final
from agents.world_models.report import write_report
from agents.world_models.resume import check_checkpoints, check_resumable
from worldlab.io import atomic_write_bytes
from worldlab.rundir import RunDir
from worldlab.world_model import WorldModel


class DreamTrainer:
    """Collect -> V -> M -> evolve C in the dream -> evaluate in the real environment.

    Args:
        config: the resolved run config (:func:`agents.world_models.preset` + overrides).
        run_dir: the run folder; a ``config.json`` already there must match ``config`` up to the
            settings a resume may change (:data:`agents.world_models.resume.RESUMABLE`).
        address: Ray cluster address (None: a local Ray).
        progress: show progress bars.
        threads: torch threads of this process (default: every core; on a machine shared with
            other jobs, 1 avoids OpenMP threads spinning against each other).
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | RunDir, address: str | None = None,
                 progress: bool = True, threads: int | None = None) -> None:
        check_backend(config.backend, address)  # before any work, not at the first rollout
        self.cfg, self.run, self.address, self.progress = config, RunDir(run_dir), address, progress
        self.threads = threads or max(1, os.cpu_count() or 1)
        if torch.device(config.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.resuming = self.run.is_run()
        if check_resumable(self.run, config):
            config.save(self.run)
        check_checkpoints(self.run, config)
        self._pool: RealPool | None = None
        self._pool_wm: WorldModel | None = None
        self.plan: RunPlan | None = None  # made by learn(): what is left to do is known then

    def pool(self, wm: WorldModel) -> RealPool:
        """The pool of real-game workers playing controllers through ``wm``: kept while the world
        model is the same (the gap measurements during evolution, then the evaluation), replaced
        when it changes."""
        if self._pool is not None and self._pool_wm is wm:
            return self._pool
        self.close_pool()
        env_kwargs = {"max_episode_steps": self.cfg.eval.max_steps} if self.cfg.eval.max_steps else {}
        # the workers get a CPU copy: moving `wm` itself would move the dream's world model too
        self._pool = RealPool(self.cfg.task, copy.deepcopy(wm).cpu(), stages.controller_config(self.cfg, wm),
                              self.cfg.workers, env_kwargs, self.address, backend=self.cfg.backend)
        self._pool_wm = wm
        return self._pool

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool, self._pool_wm = None, None

    def _stage(self, key: str) -> Any:
        return self.plan.stage(key) if self.plan is not None else contextlib.nullcontext()

    def world_model(self, k: int) -> WorldModel:
        """Round ``k``'s V and M (trained, or read back when finished), bundled."""
        c, run = self.cfg, self.run
        if c.train_workers > 1:  # the pool's actors hold the CPUs the training workers need
            self.close_pool()
        with self._stage(f"vision_r{k}"):
            vae = stages.train_vision(run, c, k, address=self.address, progress=self.progress)
        with self._stage(f"encode_r{k}"):
            stages.encode_latents(run, c, vae, progress=self.progress)
        with self._stage(f"memory_r{k}"):
            mdrnn, *members = stages.train_memories(run, c, vae.meta.get("id"), k, address=self.address,
                                                    progress=self.progress)
        return WorldModel.from_models(vae, mdrnn, task=c.task, run=run, members=members).to(c.device)

    def _finished_rounds(self, c: RunConfig) -> tuple[WorldModel, np.ndarray] | None:
        """The world model and the last round's controller when every round is finished for good
        (:func:`~agents.world_models.plan.rounds_final`, and the last controller was evolved for
        this config in this M's dream); None when any round has work left (the rounds run as usual,
        and say what is wrong). ``c.rounds`` is the rounds the run goes to (:func:`stages.rounds_run`)."""
        run = self.run
        if not rounds_final(run, c):
            return None
        from agents.controller import load_controller

        try:
            wm = WorldModel.load(run, device=c.device)
            saved_cfg, params, extra = load_controller(run.controller(c.rounds - 1))
        except (OSError, ValueError):
            return None
        if saved_cfg != stages.controller_config(c, wm) or extra.get("mdrnn_id") not in (None, wm.mdrnn.meta.get("id")):
            return None
        return wm, params

    def _rounds(self, plan: RunPlan) -> tuple[WorldModel, np.ndarray, int]:
        """Every round's collection, V, M and evolution (each skipped where finished), each round
        judged by real episodes with ``rounds_patience`` (the rounds stop when it says so); the last
        round's world model and controller, and how many rounds ran."""
        c, run = self.cfg, self.run
        for k in range(c.rounds):
            self.close_pool()  # its workers hold CPUs that collection's workers need (a Ray of 2 CPUs waits forever)
            with plan.stage(f"collect_r{k}"):
                stages.collect_rollouts(run, c, k, address=self.address, progress=self.progress)
            wm = self.world_model(k)
            with plan.stage(f"evolve_r{k}"):
                params = stages.evolve_controller(run, c, k, wm, partial(self.pool, wm), progress=self.progress)
            if c.rounds_patience and k < c.rounds - 1:
                with plan.stage(f"judge_r{k}"):
                    means = stages.judge_round(run, c, k, partial(self.pool, wm), m_id=wm.mdrnn.meta.get("id"),
                                               progress=self.progress)
                if stages.rounds_stop(means, c.rounds_patience, c.rounds_min):
                    best = int(np.argmax(means))
                    stages.say(f"the rounds stop after round {k}: none of the last {c.rounds_patience} beat round "
                               f"{best}'s {means[best]:.1f} over the selection's {c.eval.select_episodes} real "
                               f"episodes (rounds_patience {c.rounds_patience}; at most {c.rounds} rounds)")
                    plan.stop_after(k)
                    return wm, params, k + 1
        return wm, params, c.rounds

    def learn(self) -> dict[str, Any]:
        """Run every stage that is not finished; returns ``eval.json``'s content plus ``wall_s``."""
        c, run = self.cfg, self.run
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        plan = self.plan = RunPlan(run, c, say=stages.say)
        resumed = plan.resume_line()
        if resumed is None and self.resuming:
            resumed = f"resuming {run}: no stage had finished; {plan.start_line()}"
        stages.say(resumed or plan.start_line())
        try:
            # a run whose rounds are all final skips them: nothing left reads the rollout data
            stopped = replace(c, rounds=stages.rounds_run(run, c))  # fewer rounds where the patience stopped them
            final = self._finished_rounds(stopped)
            wm, params, n = (*final, stopped.rounds) if final else self._rounds(plan)
            c = replace(c, rounds=n)  # the stages after the rounds see the rounds that ran
            with plan.stage("select"):
                k = stages.select_round(run, c, partial(self.pool, wm), m_id=wm.mdrnn.meta.get("id"),
                                        progress=self.progress)
            kept = stages.average_rounds(run, c) or run.controller(k)  # average_rounds: the last rounds' mean
            last_params = params
            not_last = kept != run.controller(c.rounds - 1)
            if not_last:
                from agents.controller import load_controller

                params = load_controller(kept)[1]
            if not run.controller().exists() or stages.file_digest(run.controller()) != stages.file_digest(kept):
                atomic_write_bytes(run.controller(), kept.read_bytes())
            with plan.stage("evaluate"):
                # the last round's controller beside the kept one, on the same episodes; first, so that an
                # eval.json that scored it (the run before a selection or an average) is reused
                last = stages.evaluate_controller(run, c, last_params, partial(self.pool, wm), which="last_round",
                                                  progress=self.progress) if not_last else None
                result = stages.evaluate_controller(run, c, params, partial(self.pool, wm), progress=self.progress)
                if last is not None:
                    result = {**result, "last_round": last}
            with plan.stage("finetune"):
                tuned = stages.finetune_real(run, c, wm, params, partial(self.pool, wm), progress=self.progress)
            if tuned is not None:
                with plan.stage("evaluate_finetuned"):
                    result = {**result, "finetuned": stages.evaluate_controller(run, c, tuned, partial(self.pool, wm),
                                                                                which="finetuned", progress=self.progress)}
            if c.eval.probes:
                with plan.stage("probes"):
                    probe_fidelity(run, steps=c.eval.probe_steps)
                    if c.eval.controller_episodes:  # the final C's own episodes, M teacher-forced over them
                        controller_probes(run, [run.controller()], episodes=c.eval.controller_episodes,
                                          max_steps=c.eval.max_steps, done_bias=stages.dream_done_bias(run, c))
            if c.eval.videos:
                steps = c.eval.max_steps or wm.max_episode_steps
                with plan.stage("videos"):
                    stages.record_videos(run, c, wm.cpu(), params, steps)
        finally:
            self.close_pool()
        write_report(run, c.to_dict())
        return {**result, "wall_s": time.perf_counter() - t0}
