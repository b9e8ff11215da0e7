"""Fitness back-ends of CMA-ES: a generation of controllers scored in the dream or in the real game.

Both are callables ``fitness(params (P, D), generation) -> mean return (P,)`` and average
``rollouts`` episodes per candidate. Rollout ``r`` of every candidate starts from the same seed
(common random numbers), which makes candidates comparable within a generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.controller import BatchedController, ControllerConfig
from agents.pool import WorkerPool, fetch_if_new
from worldlab.sequence_m import put_rows, state_h, take_rows
from worldlab.world_model import WorldModel

SHRINK_MIN = 8
"""The smallest batch ``DreamFitness`` shrinks a population's dreams to (the dream step's ``min_rows``)."""

GAP_GENERATION = 2 * 10**6
"""The generation numbers ``GAP_GENERATION + g`` seed the real episodes that measure generation
g's dream-vs-real gap: disjoint from training and evaluation seeds."""
SELECT_GENERATION = 3 * 10**6
"""The generation whose seeds the rounds' controllers play when the final one is picked among
them (``eval.select_episodes``): apart from training, gap and evaluation seeds."""
PICK_GENERATION = 4 * 10**6
"""The generation whose seeds each CMA-ES search's final mean plays when a round's searches are
picked by real episodes (``cma.pick="real"``): apart from every other use."""
EVAL_GENERATION = 10**6
"""The generation number whose seeds evaluations play: past any training generation, so a
controller is never scored on the episodes it was evolved on."""


def generation_seeds(seed: int, generation: int, rollouts: int) -> list[int]:
    """Seeds of the ``rollouts`` episodes every candidate of ``generation`` plays (evaluations:
    generation :data:`EVAL_GENERATION`)."""
    ss = np.random.SeedSequence([int(seed), int(generation), 0xC0FFEE])
    return [int(s) for s in ss.generate_state(rollouts)]


class DreamFitness:
    """Every candidate x rollout as one sub-env of a single :class:`envs.dream.DreamVectorEnv`.

    Population 64 x 16 rollouts = 1,024 dreams stepped together; the controllers run as one
    batched matmul. An episode's return stops accumulating once it terminates or truncates.

    Args:
        world_model: the trained V + M.
        cfg: controller shape; ``rollouts``: episodes per candidate; ``temperature``: tau.
        max_steps: dream episode limit (default: the task's).
        device: "cpu" or "cuda".
        seed: base seed of the dream starts and sampling.
        reward_term: a learned reward term over the dream's latents, ``z (B, Z) -> (B,)``, added to
            M's reward at every step as ``term_scale * reward_term(z_{t+1})``: e.g.
            :func:`generators.reward.novelty_penalty` of a flow trained on real latents, which
            penalises dream states unlike the real data (the reward-synthesizer role).
        compile: fuse the dream step with inductor (see ``DreamVectorEnv``; eager if that fails).
        members, member_mode, dropout, disagreement_penalty, done_mode: the dream's ensemble of Ms,
            how it drives the dreams, per-dream dropout, the disagreement penalty, which is part of
            the dream's reward, and whose done probability ends a dream (see ``DreamVectorEnv``; a
            single M without dropout: the plain dream).
        start: ``"first"`` (real first frames) or ``"mid"`` (real mid-episode states).
        precision: the dream step's number format, "fp32" or "bf16" (a Transformer or Mamba M).
        done_bias: added to every M's done logit in these dreams (``dream.done_bias``;
            :meth:`WorldModel.with_done_bias`, a copy): ``ln k`` multiplies the odds of an end by k.
        shrink: when half the dreams still running have ended, go on with the rest in a batch half
            as large or smaller (``DreamVectorEnv.shrink_torch``, for the MDN-RNN and its ensembles): a
            generation then costs about the dreams' summed lengths instead of the longest dream's
            length times the population (Doom's dreams end at very different times). The same
            returns in deterministic dreams (up to float rounding); a stochastic dream draws its
            noise for the rows left, so other draws than without (the same for the same seed).
    """

    def __init__(self, world_model: WorldModel, cfg: ControllerConfig, popsize: int, rollouts: int,
                 temperature: float = 1.0, max_steps: int | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, reward_term: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 term_scale: float = 1.0, compile: bool = False, members: int | None = None,
                 member_mode: str = "episode", dropout: float = 0.0, disagreement_penalty: float = 0.0,
                 start: str = "first", precision: str = "fp32", done_mode: str = "member",
                 done_bias: float = 0.0, shrink: bool = True) -> None:
        from envs.dream import DreamVectorEnv

        self.cfg, self.popsize, self.rollouts, self.seed = cfg, popsize, rollouts, seed
        self.device = torch.device(device)
        self.world_model = world_model
        self._env_kw = dict(num_envs=popsize * rollouts, temperature=temperature, device=self.device,
                            max_episode_steps=max_steps, compile=compile, members=members, member_mode=member_mode,
                            dropout=dropout, disagreement_penalty=disagreement_penalty, start=start,
                            precision=precision, done_mode=done_mode)
        self.done_bias = float(done_bias)
        self.shrink = bool(shrink)
        self.env = DreamVectorEnv(world_model=world_model.with_done_bias(done_bias).to(self.device), **self._env_kw)
        self.max_steps = self.env.max_episode_steps
        self.reward_term, self.term_scale = reward_term, float(term_scale)
        self.z_size = world_model.z_size
        self.last_base_returns: torch.Tensor | None = None
        """(P, R) returns of M's reward alone in the last call (equal to the fitness without a term)."""
        self.last_lengths: torch.Tensor | None = None
        """(P, R) int64: each dream's length in steps in the last call (shrunk or not)."""

    def set_done_bias(self, bias: float) -> None:
        """Dream from now on with ``bias`` added to every M's done logit (instead of the bias so
        far; the calibration, :mod:`agents.calibrate`): the dream is built again (and compiled
        again when it was). The same bias: nothing changes."""
        from envs.dream import DreamVectorEnv

        if float(bias) == self.done_bias:
            return
        self.env.close()
        self.done_bias = float(bias)
        self.env = DreamVectorEnv(world_model=self.world_model.with_done_bias(bias).to(self.device), **self._env_kw)

    @torch.inference_mode()
    def returns(self, params: np.ndarray, generation: int) -> torch.Tensor:
        """(P, R) returns of every candidate's rollouts."""
        P, R = params.shape[0], self.rollouts
        if P != self.popsize:
            raise ValueError(f"DreamFitness was built for {self.popsize} candidates, got {P}")
        each = BatchedController(self.cfg, params).to(self.device)  # one per candidate
        ctrl = each.repeat_interleave(R)
        seeds = generation_seeds(self.seed, generation, R)
        env = self.env
        obs = env.reset_torch(seed=[seeds[i % R] for i in range(P * R)])
        total = torch.zeros(P * R, device=self.device)
        base = total.clone() if self.reward_term is not None else total
        alive = torch.ones(P * R, dtype=torch.bool, device=self.device)  # per sub-env: a dream still counted
        length = torch.zeros(P * R, dtype=torch.int64, device=self.device)  # per dream of the population
        dream = torch.arange(P * R, device=self.device)  # per sub-env: the population's dream it holds
        shrink = self.shrink and env.can_shrink
        for _ in range(self.max_steps):
            obs, reward, terminated, truncated = env.step_torch(ctrl.act(obs))
            if self.reward_term is not None:
                base.index_add_(0, dream, reward * alive)
                term = self.reward_term(obs[:, :self.z_size]).reshape(-1).to(reward)
                reward = reward + self.term_scale * term
            total.index_add_(0, dream, reward * alive)
            length.index_add_(0, dream, alive.long())
            alive &= ~(terminated | truncated)
            left = int(alive.sum())
            if not left:
                break
            if shrink and left <= env.num_envs // 2 and env.num_envs > SHRINK_MIN:
                # the ended dreams stop costing a row: go on with the rest in a batch of N / 2^k
                # (sizes from a short ladder, so each smaller step is built once), padded with copies
                size = P * R
                while size // 2 >= max(left, SHRINK_MIN):
                    size //= 2
                if size >= env.num_envs:
                    continue
                keep = alive.nonzero().flatten()
                rows = torch.cat([keep, keep[torch.arange(size - left, device=self.device) % left]])
                obs = env.shrink_torch(rows)
                dream = dream.index_select(0, rows)
                ctrl = each.select(torch.div(dream, R, rounding_mode="floor"))  # each row's candidate
                alive = torch.arange(size, device=self.device) < left  # the copies are not counted
        self.last_base_returns = base.view(P, R)
        self.last_lengths = length.view(P, R)
        return total.view(P, R)

    def __call__(self, params: np.ndarray, generation: int) -> np.ndarray:
        return self.returns(params, generation).mean(dim=1).cpu().double().numpy()


def evolve_in_dream(wm: WorldModel, ccfg: ControllerConfig, cma_cfg: Any, tau: float, dream_steps: int | None,
                    state_path: Any, controller_path: Any, eval_dreams: int, *, progress: bool = False,
                    desc: str = "evolve", precision: str = "fp32", **dream_options: Any) -> tuple[Any, np.ndarray]:
    """Evolve C with CMA-ES in ``wm``'s dream (``dream_options``: the :class:`DreamFitness` variant:
    start, members, dropout, ...), save its final mean as ``controller_path`` (with the temperature),
    and score it in ``eval_dreams`` fresh dreams of the same kind (seed ``cma_cfg.seed + 7``).
    ``precision``: the dream step's number format (the run's ``dream.precision``). Returns the CMA-ES
    state and the dream returns. The search the ablation and the temperature sweep share;
    ``state_path`` makes it resumable."""
    from agents.cmaes import evolve
    from agents.controller import save_controller

    fit = DreamFitness(wm, ccfg, cma_cfg.popsize, cma_cfg.rollouts, tau, dream_steps, seed=cma_cfg.seed,
                       precision=precision, **dream_options)
    state = evolve(fit, ccfg.num_params, cma_cfg, state_path, progress=progress, desc=desc)
    extra = {"variant": desc} if dream_options else {}
    save_controller(controller_path, ccfg, state.mean_params, temperature=tau, **extra)
    dream = DreamFitness(wm, ccfg, 1, eval_dreams, tau, dream_steps, seed=cma_cfg.seed + 7, precision=precision,
                         **dream_options)
    with torch.inference_mode():
        returns = dream.returns(state.mean_params[None], EVAL_GENERATION)[0].cpu().numpy()
    return state, returns


class RealEvalWorker:
    """Keeps one real env and the world model alive; plays batches of (params, seed) episodes.

    The world model comes with the constructor, or (on a :class:`agents.pool.WorkerPool`) with
    ``play`` as ``WorkerPool.put(world_model)``: fetched once and kept, and fetched again by an actor
    that Ray restarted, so the actor's constructor holds no object-store reference."""

    def __init__(self, task: str, world_model: WorldModel | None, cfg: ControllerConfig,
                 env_kwargs: dict[str, Any] | None = None, threads: int = 1) -> None:
        import envs

        torch.set_num_threads(threads)
        self.task, self.env_kwargs = task, dict(env_kwargs or {})
        self.env = envs.make(task, **self.env_kwargs)
        self.envs = [self.env]
        """the envs :meth:`play_lockstep` steps together (grown to its largest batch)."""
        self.wm = world_model.cpu().eval() if world_model is not None else None
        self.cfg, self._wm_key = cfg, None

    def _world_model(self, world_model_ref: list[Any] | None) -> WorldModel:
        """The world model: the one given now (fetched when new), else the one held."""
        fetched = fetch_if_new(world_model_ref, self._wm_key)
        if fetched is not None:
            wm, self._wm_key = fetched
            self.wm = wm.cpu().eval()
        if self.wm is None:
            raise RuntimeError("RealEvalWorker has no world model: pass one to the constructor or to play()")
        return self.wm

    def play(self, jobs: list[tuple[np.ndarray, int]], record: bool = False,
             world_model_ref: list[Any] | None = None, trace: bool = False) -> list[dict[str, Any]]:
        """Each (params, seed) episode: ``return``, ``length``, ``seed``, ``terminated`` (the game
        ended it); ``frames`` with ``record``; ``done_logits`` (K, T) with ``trace``: every M's
        done logit along the episode (:class:`agents.policies.ControllerPolicy`'s ``trace``)."""
        from agents.policies import ControllerPolicy
        from agents.rollout import run_episode

        wm = self._world_model(world_model_ref)
        out = []
        for params, seed in jobs:
            policy = ControllerPolicy(wm, self.cfg, params, trace=trace)
            ep = run_episode(self.env, policy, int(seed), record=record)
            out.append({"return": ep["return"], "length": ep["length"], "seed": ep["seed"], "terminated": ep["terminated"],
                        **({"frames": ep["arrays"]["obs"]} if record else {}),
                        **({"done_logits": policy.done_logits} if trace else {})})
        return out

    @torch.inference_mode()
    def play_lockstep(self, jobs: list[tuple[np.ndarray, int]], stall_steps: int | None = None,
                      world_model_ref: list[Any] | None = None) -> list[dict[str, Any]]:
        """Play every job at once, one env each, stepped in lockstep: V encodes the frames of all
        running episodes in one batch, the controllers act as one batched matmul and M's LSTM
        steps them together (the per-frame V call dominates a real step played one at a time).

        ``stall_steps``: end an episode early (truncated) after that many steps in a row without a
        positive reward (CarRacing pays only for new tiles: a car off the track or spinning stops
        earning). Returns what :meth:`play` returns, without frames. The same episodes as
        :meth:`play` up to float rounding (batched convolutions sum in another order).
        """
        import envs

        wm = self._world_model(world_model_ref)
        if not jobs:
            return []
        while len(self.envs) < len(jobs):
            self.envs.append(envs.make(self.task, **self.env_kwargs))
        B = len(jobs)
        ctrl = BatchedController(self.cfg, np.stack([p for p, _ in jobs]))
        frames = [self.envs[i].reset(seed=int(s))[0] for i, (_, s) in enumerate(jobs)]
        state = wm.mdrnn.initial_state(B)
        total, length, stalled = np.zeros(B), np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
        alive = np.ones(B, dtype=bool)
        while alive.any():
            rows = np.flatnonzero(alive)
            z, _ = wm.encode(torch.from_numpy(np.stack([frames[i] for i in rows])))  # (b, Z) posterior means
            idx = torch.from_numpy(rows)
            mine = take_rows(wm.mdrnn, state, idx)
            a = ctrl.select(idx).act(torch.cat([z, state_h(mine)], dim=1))  # (b, A)
            put_rows(wm.mdrnn, state, idx, wm.mdrnn.step(z, a, mine)[1])
            for j, i in enumerate(rows):
                frames[i], r, term, trunc, _ = self.envs[i].step(a[j].numpy().astype(np.float32))
                total[i] += float(r)
                length[i] += 1
                stalled[i] = 0 if r > 0 else stalled[i] + 1
                if term or trunc or (stall_steps is not None and stalled[i] >= stall_steps):
                    alive[i] = False
        return [{"return": float(total[i]), "length": int(length[i]), "seed": int(s)}
                for i, (_, s) in enumerate(jobs)]

    def pid(self) -> int:
        import os

        return os.getpid()


class RealPool:
    """:class:`RealEvalWorker` on a :class:`agents.pool.WorkerPool` of ``max(1, workers)`` workers.

    On Ray (``backend="ray"``) a killed actor is restarted and its batch retried, so a generation
    still completes; ``backend="processes"``: local processes instead of Ray actors (no restarts).
    The world model travels with each call (``WorkerPool.put``: fetched once per worker, and again
    by a restarted actor), not as a constructor argument held in Ray's object store."""

    def __init__(self, task: str, world_model: WorldModel, cfg: ControllerConfig, workers: int,
                 env_kwargs: dict[str, Any] | None = None, address: str | None = None,
                 backend: str = "ray") -> None:
        self.workers = WorkerPool(RealEvalWorker, (task, None, cfg, env_kwargs), workers=max(1, workers),
                                  backend=backend, address=address,
                                  ray_options={"num_cpus": 1, "max_restarts": -1, "max_task_retries": -1})
        self.wm_ref = self.workers.put(world_model.cpu())

    def play(self, jobs: list[tuple[np.ndarray, int]], record: bool = False,
             progress: str | None = None, trace: bool = False) -> list[dict[str, Any]]:
        """Play every job, in batches of a few episodes (~8 per worker) that each worker takes as
        it finishes the last (:meth:`agents.pool.WorkerPool.imap`: episodes of uneven length do
        not leave a worker idle at the end); the results in the order of ``jobs``
        (:meth:`RealEvalWorker.play`'s, ``done_logits`` with ``trace``). ``progress``: a bar of
        that name counts the finished episodes."""
        if not jobs:
            return []
        per = max(1, math.ceil(len(jobs) / (self.workers.size * 8)))
        batches = [jobs[i:i + per] for i in range(0, len(jobs), per)]
        done: dict[int, list[dict[str, Any]]] = {}
        calls = [(b, record, self.wm_ref, trace) for b in batches]
        if not progress:
            done.update(self.workers.imap("play", calls))
        else:
            from tqdm.auto import tqdm

            with tqdm(total=len(jobs), desc=progress, unit="ep", dynamic_ncols=True) as bar:
                for i, res in self.workers.imap("play", calls):
                    done[i] = res
                    returns = [r["return"] for batch in done.values() for r in batch]
                    bar.set_postfix(mean=f"{np.mean(returns):.1f}", refresh=False)
                    bar.update(len(res))
        return [r for i in range(len(batches)) for r in done[i]]

    def play_lockstep(self, jobs: list[tuple[np.ndarray, int]], stall_steps: int | None = None
                      ) -> list[dict[str, Any]]:
        """Every job, one batch per worker stepped in lockstep (:meth:`RealEvalWorker.play_lockstep`)."""
        if not jobs:
            return []
        per = math.ceil(len(jobs) / self.workers.size)
        batches = [jobs[i:i + per] for i in range(0, len(jobs), per)]
        return [r for batch in self.workers.map("play_lockstep", batches, stall_steps, self.wm_ref) for r in batch]

    def close(self) -> None:
        self.workers.close()


class RealFitness:
    """CMA-ES fitness in the real environment, on a :class:`RealPool`.

    ``lockstep``: each worker plays its candidates' episodes together, V encoding their frames in
    one batch (:meth:`RealPool.play_lockstep`), with episodes ended after ``stall_steps`` steps
    without a positive reward; otherwise one episode at a time, to the end (:meth:`RealPool.play`).
    """

    def __init__(self, pool: RealPool, rollouts: int, seed: int = 0, lockstep: bool = False,
                 stall_steps: int | None = None) -> None:
        self.pool, self.rollouts, self.seed = pool, rollouts, seed
        self.lockstep, self.stall_steps = lockstep, stall_steps

    def __call__(self, params: np.ndarray, generation: int) -> np.ndarray:
        seeds = generation_seeds(self.seed, generation, self.rollouts)
        jobs = [(p, s) for p in params for s in seeds]
        res = self.pool.play_lockstep(jobs, self.stall_steps) if self.lockstep else self.pool.play(jobs)
        return np.array([r["return"] for r in res], dtype=np.float64).reshape(len(params), self.rollouts).mean(1)
