"""The run as a numbered plan of stages: one line per stage with the run's progress and ETA, and,
on a resume, one line saying what an earlier run left and what is still to do.

::

    [worldlab 10:02:11] resuming runs/car_racing: round 0's 200 episodes collected; V trained (4000
        steps); latents encoded; M trained (3000 steps); C at generation 34 of 60; 8 of 12 stages left
    [worldlab 10:02:11] stage 5/12 · round 0: evolve C · run 41% done, about 62 min left (ETA 11:04)
    ...
    [worldlab 10:15:40] stage 5/12 done in 13.5 min

The ETA comes from a rough cost model of each stage (its frames, steps or dream steps at the
rates measured on a 2-core laptop, docs/benchmarks/) scaled by how fast the stages already run
so far went against that model (this process's stages, and on a resume the finished stages that
``stages.json`` recorded): a fresh run's first estimate is a guess, the later ones learn the
machine, and a resumed run's ETA does not start from the guess again. Each finished stage's wall
time is added to ``RUN/stages.json`` (the report's "Wall time per stage" table); the stage
functions themselves stay the judges of what is finished.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from agents.world_models.config import RunConfig
from envs.dream_step import steps_every_member
from envs.tasks import get_task
from worldlab.io import atomic_write_json, read_json, remove_stale_temps
from worldlab.rundir import RunDir

# rates on the 2-core laptop (docs/RESULTS.md, docs/benchmarks/): rough, the ETA rescales them as the run goes
COLLECT_STEPS_S = {"car_racing": 170.0, "doom_take_cover": 600.0}
"""real steps per second per worker with a data policy (frames compressed and written)."""
CONTROLLER_STEPS_S = {"car_racing": 70.0, "doom_take_cover": 300.0}
"""real steps per second per worker with V, M and C in the loop (Doom: 100 evaluation episodes in
~70 s on 2 workers, docs/RESULTS.md)."""
V_FRAMES_S = 400.0
"""V's training frames per second (fp32 ConvVAE)."""
ENCODE_FRAMES_S = 2500.0
M_LATENT_STEPS_S = {"car_racing": 30_000.0, "doom_take_cover": 11_500.0}
"""M's training latent steps (batch x window) per second at the task's LSTM size (CarRacing 256,
Doom 512: 3,000 steps of 32 x 64 in ~9 min, session 36); another size scales it by the square of
the size ratio (an LSTM's and its head's work grow about so), an unknown task is CarRacing's."""
DREAM_STEPS_S = {"car_racing": 70_000.0, "doom_take_cover": 7_000.0}
"""dream steps per second of CMA-ES's batched dream at the task's LSTM size, counted as the
population's dreams times their typical length: for Doom an effective rate (the round-0 search of
the default, 50 generations of 32 x 8, took 12.7 min on the 2 cores in session 36: an LSTM 512, and
dreams that grow far past the data's typical 400 steps as C learns to survive them)."""
CUDA_SPEEDUP = 10.0
"""how much faster training and the dream run on a GPU (the real game does not)."""
MEMBER_STEP_COST = 0.67
"""an ensemble member's share of one M's dream step when it adds only its LSTM cell and done logit
(``done_mode="max"`` or a fresh member each step, no disagreement penalty; benchmarks/dream.py)."""
TYPICAL_LENGTH = {"doom_take_cover": 400}
"""a typical episode's length where it is far below the task's limit (Doom: the agent dies)."""


@dataclass
class Stage:
    key: str
    """a stable name: ``collect_r0``, ``vision_r0``, ``encode_r0``, ``memory_r0``, ``evolve_r0``,
    ``select``, ``evaluate``, ``finetune``, ``evaluate_finetuned``, ``probes``, ``videos``."""
    title: str
    estimate_s: float
    found: str | None = None
    """what an earlier run left of this stage (None: nothing)."""
    done: bool = False
    full_s: float | None = None
    """the whole stage's estimate (``estimate_s`` is what is left of it; None: the same)."""

    @property
    def whole_s(self) -> float:
        return self.estimate_s if self.full_s is None else self.full_s


def _minutes(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


class RunPlan:
    """The stages ``DreamTrainer.learn`` will go through for ``cfg``, with their status in ``run``."""

    def __init__(self, run: RunDir, cfg: RunConfig, say: Any = print) -> None:
        self.run, self.cfg, self.say = run, cfg, say
        self.stages = _stages(run, cfg)
        self.index = {s.key: i for i, s in enumerate(self.stages)}
        self.current: Stage | None = None
        """the stage running now (None between stages)."""
        last_judge = self.index.get(f"judge_r{cfg.rounds - 2}")
        self.if_all: int | None = (cfg.rounds if last_judge is not None and not self.stages[last_judge].done
                                   else None)
        """with ``rounds_patience``, the rounds the estimates count while the rounds may still stop
        early (their lines say "if all N rounds run"); None once that is settled."""
        # seconds of the stages that worked (here, or before a resume, stages.json) and what the model said
        # they would take, per kind of stage (collect, vision, encode, memory, evolve, judge, evaluate, ...):
        # each kind keeps its own pace (a dream 5x slower than the base rate says nothing about M's training)
        self._actual: dict[str, float] = {}
        self._estimated: dict[str, float] = {}
        for t in stage_times(run):  # a resumed run's pace starts from its earlier processes' finished stages
            i = self.index.get(t.get("key"))
            if i is not None and self.stages[i].done and t.get("finished") and float(t["seconds"]) > 5:
                self._learn(self.stages[i].key, float(t["seconds"]), self.stages[i].whole_s)

    def stop_after(self, k: int) -> None:
        """The rounds stopped after round ``k`` (``rounds_patience``): later rounds' stages are dropped."""
        later = {f"{name}_r{j}" for j in range(k + 1, self.cfg.rounds)
                 for name in ("collect", "vision", "encode", "memory", "evolve", "judge")}
        self.stages = [s for s in self.stages if s.key not in later]
        self.index = {s.key: i for i, s in enumerate(self.stages)}
        self.if_all = None

    def _counted(self) -> str:
        """" if all 12 rounds run" while the estimates count rounds that may not run; "" otherwise."""
        return f" if all {self.if_all} rounds run" if self.if_all else ""

    def _left(self, seconds: float) -> str:
        """"about 62 min left (ETA 11:04)", saying so when the count assumes every round runs."""
        return f"about {_minutes(seconds)} left{self._counted()} (ETA {_clock(seconds)})"

    def __len__(self) -> int:
        return len(self.stages)

    def _learn(self, key: str, actual_s: float, estimated_s: float) -> None:
        kind = stage_kind(key)
        self._actual[kind] = self._actual.get(kind, 0.0) + actual_s
        self._estimated[kind] = self._estimated.get(kind, 0.0) + estimated_s

    def pace(self, key: str) -> float:
        """How much longer than the model's estimate stage ``key`` should take: the pace its kind of
        stage has run at (once 30 s of that kind's estimates have run), else the pace of every stage
        so far (once a minute has run), else 1."""
        kind = stage_kind(key)
        if self._estimated.get(kind, 0.0) > 30:
            return self._actual[kind] / self._estimated[kind]
        est = sum(self._estimated.values())
        return sum(self._actual.values()) / est if est > 60 else 1.0

    def remaining_s(self, after: int = -1) -> float:
        """Estimated seconds of the unfinished stages after index ``after``, each scaled by its pace
        (:meth:`pace`)."""
        return sum(self.pace(s.key) * s.estimate_s for s in self.stages[after + 1:] if not s.done)

    def resume_line(self) -> str | None:
        """What an earlier run left, or None for a fresh run folder."""
        found = [s.found for s in self.stages if s.found]
        if not found:
            return None
        left = sum(not s.done for s in self.stages)
        return (f"resuming {self.run}: {'; '.join(found)}; {left} of {len(self)} stages left, "
                f"about {_minutes(self.remaining_s())} of work{self._counted()}")

    def where(self) -> str:
        """The running stage as "stage 3/12 (round 0: encode the frames to latents)", or "between stages"."""
        s = self.current
        return f"stage {self.index[s.key] + 1}/{len(self)} ({s.title})" if s else "between stages"

    def start_line(self) -> str:
        left = self.remaining_s()
        return (f"{len(self)} stages, about {_minutes(left)} of work{self._counted()} (ETA {_clock(left)}); the estimate "
                f"learns the machine as it goes")

    @contextmanager
    def stage(self, key: str) -> Iterator[None]:
        """Time stage ``key`` (announced unless an earlier run finished it); unknown keys pass through."""
        i = self.index.get(key)
        if i is None:
            yield
            return
        s = self.stages[i]
        stale = remove_stale_temps(self.run.root)  # a killed stage's half-written files: no writer runs now
        if stale:
            self.say(f"removed {len(stale)} half-written file{'s' if len(stale) > 1 else ''} a killed run left "
                     f"({sum(n for _, n in stale) / 2**20:.1f} MB: {', '.join(p.name for p, _ in stale[:3])}"
                     f"{' ...' if len(stale) > 3 else ''})")
        total = sum(t.whole_s for t in self.stages)
        done_pct = 100 * (1 - sum(t.estimate_s for t in self.stages[i:] if not t.done) / max(total, 1e-9))
        if not s.done:
            left = self.remaining_s(i - 1)
            self.say(f"stage {i + 1}/{len(self)} · {s.title} · run {done_pct:.0f}% done, {self._left(left)}")
        t0 = time.perf_counter()
        self.current = s
        try:
            yield
        except BaseException:  # an interrupted stage's time still counts in its total
            _record(self.run, s, time.perf_counter() - t0, finished=False)
            raise
        self.current = None
        dt = time.perf_counter() - t0
        if not s.done or dt > 5:  # a stage predicted finished that still worked says so too
            self.say(f"stage {i + 1}/{len(self)} done in {_minutes(dt)}")
            _record(self.run, s, dt)
        if dt > 5:  # the pace learns from stages that worked, not from ones found finished
            self._learn(s.key, dt, s.estimate_s)
        s.done = True


def _size_cost(task: str, hidden: int, task_hidden: int) -> float:
    """How much dearer M's step is at LSTM size ``hidden`` than at the size its rates were measured
    at (the task's own; CarRacing's 256 for a task without rates): the square of the ratio."""
    ref = task_hidden if task in M_LATENT_STEPS_S else 256
    return (hidden / ref) ** 2


def stage_kind(key: str) -> str:
    """A stage key's kind: ``memory_r3`` -> ``memory``; keys without a round are their own kind."""
    head, _, tail = key.rpartition("_r")
    return head if head and tail.isdigit() else key


def _clock(seconds_from_now: float) -> str:
    return time.strftime("%H:%M", time.localtime(time.time() + seconds_from_now))


def _record(run: RunDir, s: Stage, seconds: float, finished: bool = True) -> None:
    """Add a stage's wall time to ``RUN/stages.json`` (summed over resumes; an interrupted stage's
    time counts too, ``finished`` stays unset until a process completes it), in the order the
    stages were first recorded: ``{"stages": [{"key", "title", "seconds", "finished"}, ...]}``."""
    path = run.stages_json
    try:
        d = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        d = {}
    stages = d.get("stages") if isinstance(d.get("stages"), list) else []
    old = next((t for t in stages if t.get("key") == s.key), None)
    row = {"key": s.key, "title": s.title,
           "seconds": round(float(old["seconds"] if old else 0.0) + seconds, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S") if finished else (old or {}).get("finished")}
    d["stages"] = [row if t is old else t for t in stages] if old else [*stages, row]
    atomic_write_json(path, d)


def stage_times(run: RunDir) -> list[dict[str, Any]]:
    """The recorded wall time of each finished stage: key, title, seconds (``RUN/stages.json``)."""
    path = run.stages_json
    if not path.exists():
        return []
    try:
        d = read_json(path)
    except (OSError, ValueError):
        return []
    stages = d.get("stages") if isinstance(d, dict) else None
    return [t for t in stages if isinstance(t, dict) and "seconds" in t] if isinstance(stages, list) else []


# -- the stages and their status --------------------------------------------------------------------


def _stages(run: RunDir, cfg: RunConfig) -> list[Stage]:
    from agents.world_models.stages import memory_steps, vision_steps

    spec = get_task(cfg.task)
    c = cfg.collect
    gpu = CUDA_SPEEDUP if cfg.device.startswith("cuda") else 1.0
    size = _size_cost(cfg.task, cfg.mdrnn.hidden, spec.rnn_hidden)
    m_rate = M_LATENT_STEPS_S.get(cfg.task, M_LATENT_STEPS_S["car_racing"])
    dream_rate = DREAM_STEPS_S.get(cfg.task, DREAM_STEPS_S["car_racing"])
    typical = TYPICAL_LENGTH.get(cfg.task, spec.max_episode_steps)
    collect_len = min(c.max_steps or spec.max_episode_steps, typical)
    eval_len = min(cfg.eval.max_steps or spec.max_episode_steps, typical)
    dream_len = min(cfg.dream.steps or spec.max_episode_steps, typical)
    workers = max(cfg.workers, 1)
    ctrl_rate = CONTROLLER_STEPS_S.get(cfg.task, 70.0)
    manifest = _episodes(run.data_manifest)
    found = _Found(run)
    out: list[Stage] = []
    frames = 0
    from agents.world_models.stages import judged_means, rounds_run

    most = cfg.rounds
    means = judged_means(run, cfg)  # the rounds judged so far (rounds_patience)
    cfg = replace(cfg, rounds=rounds_run(run, cfg, means))  # fewer where the rounds' patience stopped them
    final = rounds_final(run, cfg)
    judged = len(means)
    for k in range(cfg.rounds):
        eps = c.round_episodes(k)
        found_eps = sum(str(i) in manifest for i in eps)
        have = len(eps) if final else found_eps  # a final round does not need its data
        rate = COLLECT_STEPS_S.get(cfg.task, 300.0) if k == 0 else ctrl_rate
        policy = c.policy if k == 0 else c.later_policy(k)
        per_episode = collect_len / (rate * workers)
        out.append(Stage(f"collect_r{k}", f"round {k}: collect {len(eps)} real episodes ({policy})",
                         (len(eps) - have) * per_episode,
                         f"round {k}'s {found_eps} of {len(eps)} episodes collected" if found_eps else None,
                         have == len(eps),
                         len(eps) * per_episode))
        frames += len(eps) * collect_len
        finished = run.controller(k).exists()  # a round whose C was evolved: its V, latents and M were done
        if k == 0 or not cfg.freeze_v:
            steps = vision_steps(cfg, k) - (vision_steps(cfg, k - 1) if k > 0 else 0)
            out.append(_vision(run, found, cfg, k, steps * cfg.vae_batch / V_FRAMES_S * gpu ** -1, finished))
        out.append(Stage(f"encode_r{k}", f"round {k}: encode the frames to latents",
                         frames / ENCODE_FRAMES_S / gpu, None,
                         final or finished or (found_eps == len(eps) and _encoded(found, manifest))))
        m_steps = memory_steps(cfg, k) - (memory_steps(cfg, k - 1) if k > 0 and cfg.finetune_m else 0)
        members = cfg.ensemble.members
        out.append(_memory(run, found, cfg, k, m_steps * cfg.mdrnn_batch * cfg.seq_len * members * size
                           / m_rate / gpu, finished))
        g = cfg.round_generations(k)
        if cfg.train_in == "dream":
            cost = g * cfg.cma.popsize * cfg.cma.rollouts * dream_len * size / dream_rate / gpu
            e = cfg.ensemble
            if steps_every_member(e.members, e.member_mode, e.disagreement_penalty, e.done_mode):
                # every member's whole head only with a penalty; else the others' LSTM cell and done logit
                # (benchmarks/dream.py, Doom sizes, 3 members, done_mode=max: 2.34x one M's step)
                cost *= e.members if e.disagreement_penalty > 0 else 1 + MEMBER_STEP_COST * (e.members - 1)
            if cfg.eval.gap_every:  # the best and the mean, and the calibration's measurement of the
                measures = 2 * (g // cfg.eval.gap_every + 1) + (1 if cfg.dream.done_calibrate else 0)  # start
                cost += measures * cfg.eval.gap_episodes * eval_len / (ctrl_rate * workers)
            searches = cfg.round_restarts(k)
            cost *= searches  # every search costs the same
            if cfg.round_picks_by_real(k):
                cost += searches * cfg.cma.pick_episodes * eval_len / (ctrl_rate * workers)
        else:
            cost = g * cfg.cma.popsize * cfg.cma.rollouts * eval_len / (ctrl_rate * workers)
        out.append(_evolve(run, cfg, k, cost, finished))
        if cfg.rounds_patience and k < most - 1:
            n = cfg.eval.select_episodes
            out.append(Stage(f"judge_r{k}", f"round {k}: play C in the selection's {n} real episodes (rounds_patience "
                             f"{cfg.rounds_patience})", n * eval_len / (ctrl_rate * workers),
                             f"round {k}'s C judged" if k < judged else None, k < judged))
    eval_cost = cfg.eval.episodes * eval_len / (ctrl_rate * workers)
    if cfg.eval.select_episodes and cfg.rounds > 1:
        from agents.world_models.stages import stored_selection

        # this config's episodes, these rounds' controllers, through the M in mdrnn.pt (its meta read once)
        picked = stored_selection(run, cfg, m_id=found.mdrnn.get("id")) is not None
        out.append(Stage("select", f"pick the final C among the {cfg.rounds} rounds' by {cfg.eval.select_episodes} "
                         f"real episodes each", cfg.rounds * cfg.eval.select_episodes * eval_len
                         / (ctrl_rate * workers), "the rounds' selection" if picked else None, picked))
    scored = _scored(run.eval_json, run.controller(), cfg)
    # another round kept by the selection, or the rounds averaged: the last round's C is evaluated too (eval_last.json)
    last = run.controller(cfg.rounds - 1)
    from agents.world_models.stages import average_current

    averaging = bool(cfg.averaged_rounds)
    if averaging and scored:  # the final C must be the average of these rounds' controllers as they are now
        scored = average_current(run, cfg) and _same_file(run.controller(), run.controller_avg)
    last_too = averaging or bool(cfg.eval.select_episodes) and cfg.rounds > 1 and not (
        run.controller().exists() and last.exists() and _same_file(run.controller(), last))
    if last_too and scored:
        scored = _scored(run.eval_last_json, last, cfg)
    out.append(Stage("evaluate", f"evaluate C in {cfg.eval.episodes} real episodes"
                     + (" (and the last round's C, when another round was kept or the rounds averaged)"
                        if last_too else ""),
                     eval_cost * (2 if last_too else 1), "C evaluated" if scored else None, scored))
    f = cfg.finetune
    if f.generations:
        stall = min(eval_len, 300) if f.stall_steps else eval_len
        tuned = _finetune(run, cfg, f.generations * f.popsize * f.rollouts * stall / (2 * ctrl_rate * workers))
        out.append(tuned)
        scored = tuned.done and _scored(run.eval_finetuned_json, run.controller_finetuned, cfg)
        out.append(Stage("evaluate_finetuned", f"evaluate the fine-tuned C in {cfg.eval.episodes} real episodes",
                         eval_cost, None, scored))
    if cfg.eval.probes:
        probed = run.fidelity_probes_json.exists() and (
            not cfg.eval.controller_episodes or _controller_probed(run, found, cfg))
        out.append(Stage("probes", "probe episodes: the dream against the real game", 60.0
                         + cfg.eval.controller_episodes * eval_len / ctrl_rate,
                         "the probe episodes" if probed else None, probed))
    if cfg.eval.videos:
        done = (run.videos / "real.mp4").exists() and (run.videos / "dream.mp4").exists()
        out.append(Stage("videos", "record a real and a dream episode", 2 * eval_len / ctrl_rate,
                         None, done))
    return out


def _same_file(a: Any, b: Any) -> bool:
    from agents.world_models.stages import file_digest

    return file_digest(a) == file_digest(b)


def _controller_probed(run: RunDir, found: _Found, cfg: RunConfig) -> bool:
    """Whether ``fidelity_controllers.json`` holds the final controller's probes on this M (what the
    probes stage checks before playing them)."""
    from agents.probes import controllers_probed, ensemble_id
    from agents.world_models.stages import dream_done_bias

    return controllers_probed(run, [run.controller()], ensemble_id(found.mdrnn), cfg.eval.controller_episodes,
                              max_steps=cfg.eval.max_steps, done_bias=dream_done_bias(run, cfg)) is not None


def _scored(eval_json: Any, controller: Any, cfg: RunConfig) -> bool:
    """Whether ``eval_json`` scores ``controller`` as ``cfg.eval`` asks (what the evaluation stage checks)."""
    if not (eval_json.exists() and controller.exists()):
        return False
    try:
        from agents.world_models.stages import file_digest, scores

        return scores(read_json(eval_json), file_digest(controller), cfg)
    except (OSError, ValueError):
        return False


class _Found:
    """What an earlier run left in the folder, each file read at most once per plan."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    @cached_property
    def vae(self) -> dict[str, Any]:
        """``vae.pt``'s meta ({} when absent or unreadable)."""
        return _checkpoint_meta(self.run.vae) or {}

    @cached_property
    def mdrnn(self) -> dict[str, Any]:
        return _checkpoint_meta(self.run.mdrnn) or {}

    @cached_property
    def latents(self) -> dict[str, Any]:
        """The latents' manifest ({} when absent or unreadable)."""
        try:
            return read_json(self.run.latents_manifest) if self.run.latents_manifest.exists() else {}
        except (OSError, ValueError):
            return {}


def _encoded(found: _Found, data: dict[str, Any]) -> bool:
    """Whether the latents hold every collected episode, encoded by the V now in ``vae.pt``."""
    if not data or set(found.latents.get("episodes", {})) != set(data):
        return False
    vae_id = found.latents.get("meta", {}).get("vae_id")
    return bool(vae_id) and vae_id == found.vae.get("id")


def _episodes(manifest_path: Any) -> dict[str, Any]:
    try:
        return read_json(manifest_path).get("episodes", {}) if manifest_path.exists() else {}
    except (OSError, ValueError):
        return {}


def _checkpoint_meta(path: Any) -> dict[str, Any] | None:
    """A model checkpoint's meta (None when absent or unreadable)."""
    if not path.exists():
        return None
    try:
        from worldlab.io import torch_load

        state = torch_load(path)
        return state.get("meta", {}) if isinstance(state, dict) else None
    except Exception:  # noqa: BLE001 - a status line must not stop the run; the stage itself will say
        return None


def _train_step(path: Any) -> int | None:
    """The step a training state was saved at (None when absent or unreadable)."""
    if not path.exists():
        return None
    try:
        from worldlab.io import torch_load

        return int(torch_load(path)["step"])
    except Exception:  # noqa: BLE001
        return None


def _vision(run: RunDir, found: _Found, cfg: RunConfig, k: int, estimate: float, finished: bool) -> Stage:
    from agents.world_models.stages import vision_steps

    target = vision_steps(cfg, k)
    title = f"round {k}: train V to {target} steps"
    if finished:
        return Stage(f"vision_r{k}", title, estimate, None, True)
    if found.vae.get("steps", 0) >= target:
        return Stage(f"vision_r{k}", title, estimate, f"V trained ({target} steps)", True)
    step = _train_step(run.vae_train)
    if step:
        return Stage(f"vision_r{k}", title, estimate * max(0.0, 1 - step / target),
                     f"V's training at step {step} of {target}", full_s=estimate)
    return Stage(f"vision_r{k}", title, estimate)


def _memory(run: RunDir, found: _Found, cfg: RunConfig, k: int, estimate: float, finished: bool) -> Stage:
    from agents.world_models.stages import memory_steps

    target = memory_steps(cfg, k)
    n = cfg.ensemble.members
    title = f"round {k}: train M{'' if n == 1 else f' ({n} members)'} to {target} steps"
    if finished:
        return Stage(f"memory_r{k}", title, estimate, None, True)
    vae, meta = found.vae, found.mdrnn
    if (vae.get("id") and meta.get("vae_id") == vae.get("id") and meta.get("steps", 0) >= target
            and (cfg.finetune_m or meta.get("data") in (None, _round_data(cfg, k)))):
        return Stage(f"memory_r{k}", title, estimate, f"M trained ({target} steps)", True)
    start = memory_steps(cfg, k - 1) if k > 0 and cfg.finetune_m else 0  # a fine-tuned M goes on from there
    step = _train_step(run.mdrnn_train)
    if step and start < step < target:  # this round's training under way (not the last round's end)
        return Stage(f"memory_r{k}", title, estimate * (target - step) / (target - start),
                     f"M's training at step {step} of {target}", full_s=estimate)
    return Stage(f"memory_r{k}", title, estimate)


def _round_data(cfg: RunConfig, k: int) -> str:
    """:func:`~agents.world_models.stages.episodes_key` of the episodes round ``k``'s M trains on (its
    meta's ``data``): a frozen V keeps its id when the data grows, and without ``finetune_m`` an M of
    fewer episodes is trained again, so its steps alone do not say it is done."""
    from agents.world_models.stages import HOLDOUT, episodes_key, m_training_episodes
    from worldlab.storage import split_indices

    eps = [e for j in range(k + 1) for e in cfg.collect.round_episodes(j)]
    return episodes_key(m_training_episodes(cfg, split_indices(eps, HOLDOUT, cfg.seed)[0], k))


def rounds_final(run: RunDir, cfg: RunConfig) -> bool:
    """Whether every round is finished for good in a folder without rollout data (a published one,
    resumed to fine-tune or evaluate): V, M and each round's controller saved, the last one evolved
    for as many generations as ``cfg`` asks, and no data manifest or shard. Nothing left reads the
    data, so it is not collected or encoded again. A folder that has data goes through the rounds as
    usual, whose collection checks every shard and repairs a damaged one."""
    last = cfg.rounds - 1
    if not (run.vae.is_file() and run.mdrnn.is_file() and all(run.controller(k).is_file() for k in range(cfg.rounds))):
        return False
    if run.data_manifest.exists() or (run.data.is_dir() and any(run.data.glob("ep_*.npz"))):
        return False
    extra = _controller_extra(run.controller(last))
    return extra is not None and extra.get("generations") == cfg.round_generations(last)


def _controller_extra(path: Any) -> dict[str, Any] | None:
    """A controller file's ``extra`` (``load_controller``'s); None when it is damaged (the stage that
    reads it names the fault)."""
    from agents.controller import load_controller

    try:
        return load_controller(path)[2]
    except (OSError, ValueError):
        return None


def _generations_in(state: Any, most: int) -> int:
    """How many generations (at most ``most``) a CMA-ES state file holds; 0 when absent or damaged."""
    if not state.exists():
        return 0
    try:
        import numpy as np

        with np.load(state, allow_pickle=False) as z:
            return min(most, int(z["fitness"].shape[0]))
    except Exception:  # noqa: BLE001  (the evolution names a damaged state when it reads it)
        return 0


def _finetune(run: RunDir, cfg: RunConfig, estimate: float) -> Stage:
    """The real-game fine-tune: done when ``controller_finetuned.npz`` holds ``finetune.generations``
    generations from the current final controller (what ``stages.finetune_real`` checks); a fine-tune
    whose generations grew goes on from its CMA-ES state, at the generation that state reached."""
    g = cfg.finetune.generations
    title = f"fine-tune C in the real game for {g} generations"
    if not run.controller().exists():
        return Stage("finetune", title, estimate)
    from agents.world_models.stages import file_digest

    start = file_digest(run.controller())
    if run.controller_finetuned.exists():
        extra = _controller_extra(run.controller_finetuned) or {}
        if extra.get("start") == start and extra.get("generations") == g:
            return Stage("finetune", title, estimate, "the fine-tuned controller", True)
    done = _generations_in(run.cma_finetune(start), g)
    if done:
        return Stage("finetune", title, estimate * max(0.0, 1 - done / g), f"the fine-tune at generation {done} of {g}",
                     False, estimate)
    return Stage("finetune", title, estimate)


def _evolve(run: RunDir, cfg: RunConfig, k: int, estimate: float, finished: bool) -> Stage:
    g, searches = cfg.round_generations(k), cfg.round_restarts(k)
    title = f"round {k}: evolve C in the {cfg.train_in} for {g} generations of {cfg.cma.popsize} x {cfg.cma.rollouts}"
    title += f", {searches} searches" if searches > 1 else ""
    title += f" (picked by {cfg.cma.pick_episodes} real episodes each)" if cfg.round_picks_by_real(k) else ""
    if finished:
        return Stage(f"evolve_r{k}", title, estimate, f"round {k}'s C evolved", True)
    done = sum(_generations_in(run.cma_state(k, j), g) for j in range(searches))  # over all the searches
    if done:
        where = f"C at generation {done} of {g}" if searches == 1 else f"C at generation {done} of {g * searches} " \
                                                                        f"({searches} searches)"
        return Stage(f"evolve_r{k}", title, estimate * max(0.0, 1 - done / (g * searches)), where,
                     done >= g * searches, estimate)
    return Stage(f"evolve_r{k}", title, estimate)
