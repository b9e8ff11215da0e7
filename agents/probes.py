"""Probe episodes: does the dream tell the truth where the controller will go?

The pipeline plays a few scripted, open-loop action sequences in the real game (for CarRacing:
straight at full speed, hard turns off the road, spinning, braking; for any other Box task:
holding each action bound, and a slow sweep), then asks the world model about the very same
episodes:

- **return**: the real return against the sum of M's reward head, teacher-forced on the real
  latents and actions (M sees every real frame: the best case for M);
- **reward error on and off the road** (CarRacing: a step is off the road when no wheel touches a
  track tile): where M was trained on little off-road data, it tends to pay for the grass;
- **done timing**: the first step M's done head fires (logit > 0) against the real episode end;
- **open-loop drift**: from real mid-episode states (M's state after ``t0`` real steps), the dream
  is run on the real actions alone (deterministic mode) for ``horizon`` steps: latent error at
  steps 1, 10 and 30, and the dream's return over the window against the real one.

``probe_fidelity(run)`` writes ``RUN/fidelity_probes.json``; ``scripts/fidelity.py RUN --probes``
prints the table.

**Controller probes** ask the same of an evolved controller's own real episodes, the states the
dream's score is about: :func:`controller_probes` plays each controller in real episodes, runs M
teacher-forced over them, and compares what M says (the return its reward head pays, the episode
ends its done head expects, the done probability in the last steps before a real end) with what
happened. Where M reads the real trajectory right and the dream still overrates the controller,
the lie is the dream's open-loop drift; where M already misreads the real trajectory (it pays it
more, or expects no end where the game ended it), the lie is in M's heads on those states.
``scripts/fidelity.py RUN --controllers C [C ...]`` writes ``RUN/fidelity_controllers.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.calibrate import expected_ends
from worldlab.io import atomic_write_json, read_json
from worldlab.rundir import RunDir
from worldlab.world_model import WorldModel

Script = Callable[[int], list[float]]
"""step t -> the action played at t."""


def _after(warmup: int, first: list[float], then: list[float]) -> Script:
    return lambda t: first if t < warmup else then


def probe_scripts(task: str, action_space: dict[str, Any]) -> dict[str, Script]:
    """The probe episodes of a task: name -> open-loop action script."""
    if task == "car_racing":
        gas = [0.0, 1.0, 0.0]
        return {
            "straight_full_gas": lambda t: gas,
            "hard_left_off_road": _after(40, gas, [-1.0, 0.5, 0.0]),
            "hard_right_off_road": _after(40, gas, [1.0, 0.5, 0.0]),
            "spin": _after(40, gas, [1.0, 1.0, 0.0]),
            "gas_then_brake": _after(60, gas, [0.0, 0.0, 1.0]),
        }
    held = held_actions(action_space, "probe episodes")
    low, mid, high = held["low"], held["middle"], held["high"]
    return {
        "hold_low": lambda t: low.tolist(),
        "hold_high": lambda t: high.tolist(),
        "hold_middle": lambda t: mid.tolist(),
        "sweep": lambda t: (mid + (high - low) / 2 * np.sin(t / 20.0)).tolist(),
    }


def held_actions(action_space: dict[str, Any], what: str = "held actions") -> dict[str, np.ndarray]:
    """A Box action space's bounds and middle: "low", "middle", "high" (``what`` names the caller
    in the one-line refusal of any other space)."""
    if action_space.get("type") != "box":
        raise ValueError(f"{what} need a Box action space, got {action_space}")
    low, high = (np.asarray(action_space[k], np.float64) for k in ("low", "high"))
    return {"low": low, "middle": (low + high) / 2, "high": high}


def off_road(env: Any) -> bool | None:
    """CarRacing: no wheel touches a track tile; None for an env without a car on tiles."""
    car = getattr(env.unwrapped, "car", None)
    wheels = getattr(car, "wheels", None)
    if not wheels or not all(hasattr(w, "tiles") for w in wheels):
        return None
    return not any(w.tiles for w in wheels)


def play_probe(task: str, script: Script, seed: int, steps: int) -> dict[str, np.ndarray]:
    """One real episode of ``script`` (at most ``steps`` steps): frames (T+1, 64, 64, 3) uint8,
    actions (T, A), rewards (T,), terminated (T,), off_road (T,) (all False when unknown)."""
    import envs

    env = envs.make(task, max_episode_steps=steps)
    try:
        obs, _ = env.reset(seed=seed)
        frames, actions, rewards, terms, offs = [obs], [], [], [], []
        for t in range(steps):
            a = np.asarray(script(t), dtype=np.float32)
            obs, r, term, trunc, _ = env.step(a)
            frames.append(obs)
            actions.append(a)
            rewards.append(r)
            terms.append(term)
            offs.append(bool(off_road(env)))
            if term or trunc:
                break
    finally:
        env.close()
    return {"obs": np.stack(frames).astype(np.uint8), "actions": np.stack(actions),
            "rewards": np.asarray(rewards, np.float32), "terminated": np.asarray(terms, bool),
            "off_road": np.asarray(offs, bool)}


@torch.inference_mode()
def probe_figures(wm: WorldModel, ep: dict[str, np.ndarray], starts: tuple[int, ...], horizon: int
                  ) -> dict[str, Any]:
    """What M says about one real probe episode (see the module docstring)."""
    T = int(ep["rewards"].shape[0])
    mu, actions, pred = wm.teacher_forced(ep)
    pred = type(pred)(*(v.cpu() for v in pred))                                            # figures on the CPU
    rewards = torch.from_numpy(ep["rewards"]).float()
    err = (pred.reward[0] - rewards).abs().numpy()                                        # (T,)
    off = ep["off_road"]
    fired = np.flatnonzero((pred.done_logit[0] > 0).numpy())
    real_end = np.flatnonzero(ep["terminated"])
    out: dict[str, Any] = {
        "steps": T,
        "real_return": float(rewards.sum()),
        "predicted_return": float(pred.reward[0].sum()),
        "off_road_fraction": float(off.mean()) if T else 0.0,
        "reward_mae_on_road": float(err[~off].mean()) if (~off).any() else None,
        "reward_mae_off_road": float(err[off].mean()) if off.any() else None,
        "predicted_reward_off_road": float(pred.reward[0].numpy()[off].mean()) if off.any() else None,
        "real_reward_off_road": float(ep["rewards"][off].mean()) if off.any() else None,
        "done_predicted_at": int(fired[0]) + 1 if fired.size else None,
        "done_real_at": int(real_end[0]) + 1 if real_end.size else None,
        "open_loop": [],
    }
    for t0 in starts:
        k = min(horizon, T - t0)
        if t0 < 1 or k < 1:
            continue
        zs, rs = wm.open_loop(mu, actions, t0, k)
        drift = (zs - mu[t0 + 1:t0 + 1 + k]).pow(2).mean(1).cpu().numpy()  # (k,)
        out["open_loop"].append({
            "start": t0, "horizon": k,
            "latent_mse_at": {str(s): float(drift[s - 1]) for s in (1, 10, 30) if s <= k},
            "dream_return": float(rs.sum()), "real_return": float(ep["rewards"][t0:t0 + k].sum()),
        })
    return out


def probe_fidelity(run_dir: str | os.PathLike, *, seeds: tuple[int, ...] = (0, 1), steps: int = 300,
                   starts: tuple[int, ...] = (50, 150), horizon: int = 50, device: str = "cpu") -> dict[str, Any]:
    """Play every probe of the run's task on ``seeds`` and write ``RUN/fidelity_probes.json``:
    per probe and seed the figures of :func:`probe_figures`, and per probe their means. Skipped
    when the file already holds the same probes of the same M."""
    run = RunDir(run_dir)
    wm = WorldModel.load(run, device=device).cpu()
    settings = {"seeds": list(seeds), "steps": steps, "starts": list(starts), "horizon": horizon,
                "mdrnn_id": wm.mdrnn.meta.get("id")}
    if run.fidelity_probes_json.exists():
        old = read_json(run.fidelity_probes_json)
        if {k: old.get(k) for k in settings} == settings:  # the same probes of the same M
            return old
    rows: dict[str, Any] = {}
    for name, script in probe_scripts(wm.task, wm.action_space).items():
        per_seed = [probe_figures(wm, play_probe(wm.task, script, s, steps), starts, horizon) for s in seeds]
        mean = {k: _mean([p[k] for p in per_seed]) for k in ("real_return", "predicted_return", "off_road_fraction",
                                                               "reward_mae_on_road", "reward_mae_off_road",
                                                               "predicted_reward_off_road", "real_reward_off_road")}
        drift = [o for p in per_seed for o in p["open_loop"]]
        mean["open_loop_dream_return"] = _mean([o["dream_return"] for o in drift])
        mean["open_loop_real_return"] = _mean([o["real_return"] for o in drift])
        for s in ("1", "10", "30"):
            mean[f"open_loop_latent_mse_at_{s}"] = _mean([o["latent_mse_at"].get(s) for o in drift])
        rows[name] = {"mean": mean, "seeds": dict(zip(map(str, seeds), per_seed, strict=True))}
    report = {"task": wm.task, **settings, "probes": rows}
    atomic_write_json(run.fidelity_probes_json, report)
    return report


@torch.inference_mode()
def held_dreams(run_dir: str | os.PathLike, *, dreams: int = 100, real_episodes: int = 8, temperature: float | None = None,
                max_steps: int | None = None, seed: int = 7, device: str = "cpu") -> dict[str, Any]:
    """Each bound and the middle of a Box action space held on every step, in ``dreams`` dreams
    (temperature and length: the run's, unless given) and in ``real_episodes`` real episodes of
    the same length limit: the return the dream pays a constant controller against the game's. A
    dream that pays a held action far more than the game does offers C its simplest exploit (Doom,
    session 30: a constant right strafe, paid ~1,480 in one dream and ~145 in the game). Writes
    ``RUN/fidelity_held.json``."""
    import envs
    from agents.rollout import run_episode
    from agents.world_models.config import RunConfig
    from envs.dream import DreamVectorEnv

    if dreams < 2:
        raise ValueError(f"--held-dreams must be >= 2, got {dreams}")
    run = RunDir(run_dir)
    cfg = RunConfig.load(run) if run.config_json.exists() else None
    tau = temperature if temperature is not None else (cfg.dream.temperature if cfg else 1.0)
    steps = max_steps if max_steps is not None else (cfg.dream.steps if cfg else None)
    wm = WorldModel.load(run, device=device)
    held = held_actions(wm.action_space)
    env = DreamVectorEnv(num_envs=len(held) * dreams, world_model=wm, temperature=tau, device=device,
                         max_episode_steps=steps)
    env.reset_torch(seed=[seed + i for i in range(dreams)] * len(held))
    actions = torch.as_tensor(np.repeat(np.stack(list(held.values())), dreams, axis=0), dtype=torch.float32,
                              device=env.device)
    total = torch.zeros(actions.shape[0], dtype=torch.float64, device=env.device)
    alive = torch.ones(actions.shape[0], dtype=torch.bool, device=env.device)
    while bool(alive.any()):
        _, reward, terminated, truncated = env.step_torch(actions)
        total += reward.double() * alive
        alive &= ~(terminated | truncated)
    env.close()
    dream = total.view(len(held), dreams).cpu().numpy()
    real_env = envs.make(wm.task, **({"max_episode_steps": steps} if steps else {})) if real_episodes else None
    rows: dict[str, Any] = {}
    for i, (name, a) in enumerate(held.items()):
        real = [float(run_episode(real_env, _Held(a), 50_000 + j, record=False)["return"]) for j in range(real_episodes)]
        rows[name] = {"action": a.tolist(), "dream_mean": float(dream[i].mean()),
                      "dream_se": float(dream[i].std(ddof=1) / np.sqrt(dreams)), "dream_returns": dream[i].tolist(),
                      "real_mean": float(np.mean(real)) if real else None, "real_returns": real}
    if real_env is not None:
        real_env.close()
    report = {"task": wm.task, "mdrnn_id": wm.mdrnn.meta.get("id"), "dreams": dreams, "temperature": tau,
              "max_steps": steps, "real_episodes": real_episodes, "held": rows}
    atomic_write_json(run.root / "fidelity_held.json", report)
    return report


class _Held:
    """A policy that presses one action on every step."""

    def __init__(self, action: np.ndarray) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self, seed: int) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.action


def held_table(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`held_dreams`."""
    lines = [f"Held actions ({report['task']}, tau {report['temperature']:g}, {report['dreams']} dreams each):", "",
             "| action held | dream return | real return |", "|---|---|---|"]
    for name, r in report["held"].items():
        real = "-" if r["real_mean"] is None else f"{r['real_mean']:.1f} ({len(r['real_returns'])} episodes)"
        lines.append(f"| {name} {r['action']} | {r['dream_mean']:.1f} ± {r['dream_se']:.1f} | {real} |")
    return "\n".join(lines)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def probe_table(report: dict[str, Any]) -> str:
    """The probes as a Markdown table."""
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    lines = ["| probe | real return | M's return | off road | reward MAE on / off road | M pays off road (real) | "
             "open loop: dream / real return | latent MSE at 1 / 10 / 30 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in report["probes"].items():
        m = row["mean"]
        lines.append(f"| {name} | {f(m['real_return'])} | {f(m['predicted_return'])} | "
                     f"{f(m['off_road_fraction'])} | {f(m['reward_mae_on_road'])} / {f(m['reward_mae_off_road'])} | "
                     f"{f(m['predicted_reward_off_road'])} ({f(m['real_reward_off_road'])}) | "
                     f"{f(m['open_loop_dream_return'])} / {f(m['open_loop_real_return'])} | "
                     f"{f(m['open_loop_latent_mse_at_1'])} / {f(m['open_loop_latent_mse_at_10'])} / "
                     f"{f(m['open_loop_latent_mse_at_30'])} |")
    return "\n".join(lines)


END_WINDOW = 10
"""steps before a real episode end whose done probabilities :func:`controller_probe` averages."""


@torch.inference_mode()
def controller_probe(wm: WorldModel, params: np.ndarray, cfg: Any, seeds: list[int], max_steps: int | None = None,
                     done_bias: float = 0.0) -> dict[str, Any]:
    """Play a controller (``cfg``, flat ``params``) in one real episode per seed and run M (member 0)
    teacher-forced over each: per episode the real return and length, M's return (its reward head
    summed), ``ends_expected`` (its done probabilities summed: the episode ends M expects on this
    trajectory) against ``ended`` (1 when the game ended it, 0 when truncated), and the mean done
    probability over the last :data:`END_WINDOW` steps of an episode the game ended and over the
    steps before them; then their means over the episodes. An ensemble's world model adds
    ``ends_expected_members`` (each member's, member 0 first) and ``ends_expected_max`` (the
    members' largest done probability each step, summed: the ends a ``done_mode="max"`` dream
    expects). ``done_bias`` b != 0 (``dream.done_bias``) adds ``ends_expected_biased`` (member 0's
    done logits + b: the ends the run's dream expects) and, for an ensemble, ``ends_expected_max_biased``."""
    import envs
    from agents.policies import ControllerPolicy
    from agents.rollout import run_episode

    env = envs.make(wm.task, **({"max_episode_steps": max_steps} if max_steps else {}))
    policy = ControllerPolicy(wm, cfg, params)
    episodes = []
    try:
        for seed in seeds:
            arrays = run_episode(env, policy, seed)["arrays"]
            T = int(arrays["rewards"].shape[0])
            mu, actions, pred = wm.teacher_forced(arrays)
            logit = pred.done_logit[0].double()                                                   # (T,)
            p_end = torch.sigmoid(logit).cpu().numpy()
            ens = {}
            if done_bias:
                ens["ends_expected_biased"] = expected_ends([logit.cpu().numpy()], done_bias)
            if wm.num_members > 1:  # every member over the same real latents: (K, T) done logits
                logits = torch.stack([logit] + [m(mu[None, :-1], actions[None])[0].done_logit[0].double()
                                                for m in wm.ensemble[1:]]).cpu().numpy()
                ens |= {"ends_expected_members": [expected_ends([row], 0.0) for row in logits],
                        "ends_expected_max": expected_ends([logits], 0.0, "max")}
                if done_bias:
                    ens["ends_expected_max_biased"] = expected_ends([logits], done_bias, "max")
            ended = bool(arrays["terminated"].any())
            acts = np.asarray(arrays["actions"], dtype=np.float64).reshape(T, -1)
            episodes.append({
                "seed": int(seed), "steps": T, "real_return": float(arrays["rewards"].sum(dtype=np.float64)),
                "predicted_return": float(pred.reward[0].sum()), "ended": int(ended),
                "ends_expected": float(p_end.sum()),
                "p_end_last": float(p_end[-END_WINDOW:].mean()) if ended else None,
                "p_end_before": float(p_end[:-END_WINDOW].mean()) if T > END_WINDOW else None,
                "action_mean": acts.mean(axis=0).tolist(), "action_std": acts.std(axis=0).tolist(), **ens,
            })
    finally:
        env.close()
    keys = ("steps", "real_return", "predicted_return", "ended", "ends_expected", "p_end_last", "p_end_before")
    mean = {k: _mean([e[k] for e in episodes]) for k in keys}
    for k in ("action_mean", "action_std"):  # per action dimension, the episodes' mean
        mean[k] = np.mean([e[k] for e in episodes], axis=0).tolist() if episodes else None
    for k in ("ends_expected_max", "ends_expected_biased", "ends_expected_max_biased"):
        if episodes and k in episodes[0]:
            mean[k] = _mean([e[k] for e in episodes])
    if episodes and "ends_expected_members" in episodes[0]:
        mean["ends_expected_members"] = np.mean([e["ends_expected_members"] for e in episodes], axis=0).tolist()
    return {"mean": mean, "episodes": episodes}


def load_controllers(run: RunDir, controllers: list[str | os.PathLike]) -> dict[str, Any]:
    """Each controller file as ``load_controller`` reads it, keyed by its path as given; a missing
    file is refused (one line) before any is read."""
    from agents.controller import load_controller

    for path in controllers:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no controller at {path}; pass a controller.npz (e.g. {run.controller(0)})")
    return {str(path): load_controller(path) for path in controllers}


def probed_settings(controllers: list[str | os.PathLike], mdrnn_id: Any, seeds: list[int],
                    max_steps: int | None, done_bias: float = 0.0) -> dict[str, Any]:
    """What ``fidelity_controllers.json`` was played for: each controller file's content hash (in the
    order given; not its path, which a relative ``--out`` spells otherwise on a resume), M's id (an
    ensemble's: every member's), the seeds and the episode limit (and the dream's done bias when
    not 0)."""
    from agents.world_models.stages import file_digest

    return {"digests": [file_digest(Path(p)) for p in controllers], "mdrnn_id": mdrnn_id,
            "seeds": list(seeds), "max_steps": max_steps, **({"done_bias": float(done_bias)} if done_bias else {})}


def controllers_probed(run: RunDir, controllers: list[str | os.PathLike], mdrnn_id: Any, episodes: int,
                       seed: int = 50_000, max_steps: int | None = None, done_bias: float = 0.0
                       ) -> dict[str, Any] | None:
    """The run's ``fidelity_controllers.json`` when it holds these controllers' probes (the same files,
    M, seeds and limit), else None."""
    if not run.fidelity_controllers_json.exists() or not all(Path(p).is_file() for p in controllers):
        return None
    try:
        old = read_json(run.fidelity_controllers_json)
    except (OSError, ValueError):
        return None
    want = probed_settings(controllers, mdrnn_id, list(range(seed, seed + episodes)), max_steps, done_bias)
    return old if isinstance(old, dict) and {k: old.get(k) for k in want} == want and \
        old.get("done_bias", 0.0) == want.get("done_bias", 0.0) else None


def ensemble_id(meta: dict[str, Any]) -> Any:
    """M's id, or the list of an ensemble's members' ids (member 0 first), from member 0's meta
    (``mdrnn.pt`` lists the other members' ids)."""
    return [meta.get("id"), *meta["members"]] if meta.get("members") else meta.get("id")


def controller_probes(run_dir: str | os.PathLike, controllers: list[str | os.PathLike], *, episodes: int = 12,
                      seed: int = 50_000, max_steps: int | None = None, device: str = "cpu",
                      done_bias: float = 0.0) -> dict[str, Any]:
    """:func:`controller_probe` for each controller file (``episodes`` real episodes each, seeds
    ``seed``, ``seed + 1``, ...; the same for every controller) on the run's world model; writes
    ``RUN/fidelity_controllers.json`` (keyed by each controller's path as given) and returns it.
    Skipped when the file already holds the probes of the same controller files on the same M, seeds
    and episode limit; an earlier file of other probes is kept beside it (:func:`keep_aside`)."""
    if episodes < 1:
        raise ValueError(f"--controller-episodes must be >= 1, got {episodes}")
    run = RunDir(run_dir)
    loaded = load_controllers(run, controllers)
    wm = WorldModel.load(run, device=device).cpu()
    for path, (cfg, _, _) in loaded.items():  # every controller checked before any episode is played
        if cfg.input_size != wm.obs_size:
            raise ValueError(f"{path} reads {cfg.input_size} inputs, this world model gives {wm.obs_size}; "
                             f"pass a controller evolved on {run}")
    old = controllers_probed(run, controllers, ensemble_id(wm.mdrnn.meta), episodes, seed, max_steps, done_bias)
    if old is not None:
        return old
    seeds = list(range(seed, seed + episodes))
    rows = {path: controller_probe(wm, params, cfg, seeds, max_steps, done_bias)
            for path, (cfg, params, _) in loaded.items()}
    report = {"task": wm.task, **probed_settings(controllers, ensemble_id(wm.mdrnn.meta), seeds, max_steps, done_bias),
              "end_window": END_WINDOW, "controllers": rows}
    kept = keep_aside(run.fidelity_controllers_json)
    if kept is not None:
        print(f"kept the earlier probes of other controllers (or another M, seeds or limit) as {kept}", flush=True)
    atomic_write_json(run.fidelity_controllers_json, report)
    return report


def keep_aside(path: Path) -> Path | None:
    """Moves an existing ``path`` (``NAME.json``) to ``NAME.<first 8 hex digits of its sha256>.json``
    beside it and returns the new path (None when there was none): the pipeline's probes stage and a
    user's ``fidelity.py --controllers`` write one file, and neither drops the other's probes."""
    import hashlib

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    dest = path.with_name(f"{path.stem}.{hashlib.sha256(data).hexdigest()[:8]}{path.suffix}")
    os.replace(path, dest)
    return dest


def controller_table(report: dict[str, Any]) -> str:
    """The controller probes as a Markdown table."""
    def f(x: float | None, fmt: str = ".3g") -> str:
        return "-" if x is None else format(x, fmt)

    def ens_ends(m: dict[str, Any]) -> str:  # an ensemble: each member's expected ends, then their largest
        if m.get("ends_expected_max") is None:
            return ""
        each = ", ".join(f(x, ".2f") for x in m["ends_expected_members"])
        return f" (members {each}; their most likely end {f(m['ends_expected_max'], '.2f')})"

    def biased(m: dict[str, Any]) -> str:  # dream.done_bias: the ends the run's dream expects
        if m.get("ends_expected_biased") is None:
            return ""
        mx = m.get("ends_expected_max_biased")
        return (f"; the dream, done logit {report.get('done_bias', 0.0):+g}: {f(m['ends_expected_biased'], '.2f')}"
                + (f", their most likely end {f(mx, '.2f')}" if mx is not None else ""))

    lines = [f"| controller | steps | real return | M's return (teacher-forced) | ends: real / M expects | "
             f"M's done probability: last {report['end_window']} steps / before | action: mean ± std within an "
             f"episode |", "|---|---|---|---|---|---|---|"]
    for path, row in report["controllers"].items():
        m = row["mean"]
        acts = ", ".join(f"{a:.2f} ± {sd:.2f}" for a, sd in zip(m.get("action_mean") or [], m.get("action_std") or [],
                                                                  strict=True)) or "-"
        lines.append(f"| {path} | {f(m['steps'], '.0f')} | {f(m['real_return'], '.1f')} | "
                     f"{f(m['predicted_return'], '.1f')} | {f(m['ended'], '.2f')} / {f(m['ends_expected'], '.2f')}"
                     f"{ens_ends(m)}{biased(m)} | "
                     f"{f(m['p_end_last'], '.4f')} / {f(m['p_end_before'], '.4f')} | {acts} |")
    return "\n".join(lines)
