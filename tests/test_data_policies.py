"""Data policies (issue 13 item 2): the driving walk and the scripted CarRacing driver are seeded
and within bounds, drive more than the brownian, the scripted one leaves the road and comes back;
the coverage of a data set agrees with its shards; the shards of the existing policies are the
very bytes the code before them wrote; a scripted driver is refused anywhere but CarRacing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

import envs
from agents.collect import collect, episode_seed
from agents.coverage import coverage
from agents.policies import (
    BrownianPolicy,
    DrivingPolicy,
    HoldingPolicy,
    PolicySpec,
    ScriptedDriver,
    check_policy,
    make_policy,
)
from agents.rollout import SIGNALS, run_episode
from agents.world_models.config import CollectConfig, RunConfig
from agents.world_models.report import coverage_report, write_report
from worldlab.rundir import RunDir
from worldlab.storage import Manifest, encode_shard, load_shard

ROOT = Path(__file__).resolve().parents[1]
OLD_DATA = ROOT / "tests" / "fixtures" / "old_run" / "data"
CAR = spaces.Box(np.array([-1.0, 0.0, 0.0], dtype=np.float32), np.array([1.0, 1.0, 1.0], dtype=np.float32))
DOOM = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
SHARD_KEYS = ("obs", "actions", "rewards", "terminated", "truncated", "seed")
"""the arrays a shard held before the per-step signals."""
GYM_PIXELS = "MountainCarContinuous-v0"
"""a Gymnasium id that is not CarRacing (rendered to pixels)."""


def _actions(policy: object, seed: int, n: int, obs: np.ndarray) -> np.ndarray:
    policy.reset(seed)
    return np.stack([np.asarray(policy.act(obs), dtype=np.float64) for _ in range(n)])


def _longest_run(labels: np.ndarray) -> int:
    """The longest stretch of equal consecutive values."""
    cuts = np.flatnonzero(np.diff(labels) != 0)
    return int(np.diff(np.concatenate([[-1], cuts, [len(labels) - 1]])).max())


def test_holding_policy_holds_doom_actions_the_brownian_never_holds() -> None:
    """On Doom's one output (left / stay / right at -1/3 and 1/3): the brownian's pressed button
    never stays for 60 steps; the holding walk is seeded, in bounds, and holds one action for
    30-300 steps, about 40% of the time; a Discrete space gets held bins too; bad holds are refused."""
    obs = np.zeros((64, 64, 3), np.uint8)
    buttons = lambda a: np.digitize(a[:, 0], [-1 / 3, 1 / 3])  # noqa: E731
    p = HoldingPolicy(DOOM)
    a, b, c = _actions(p, 3, 3000, obs), _actions(p, 3, 3000, obs), _actions(p, 4, 3000, obs)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a >= -1).all() and (a <= 1).all() and p.act(obs).dtype == DOOM.dtype
    brown = np.concatenate([_actions(BrownianPolicy(DOOM), s, 3000, obs) for s in range(3)])
    hold = np.concatenate([_actions(p, s, 3000, obs) for s in range(3)])
    assert _longest_run(buttons(brown)) < 60 and _longest_run(buttons(hold)) >= 150
    held = np.abs(np.diff(hold[:, 0])) == 0  # a held step repeats the last action exactly
    assert 0.25 < held.mean() < 0.6
    d = HoldingPolicy(spaces.Discrete(3))
    k = np.concatenate([_actions(d, s, 3000, obs) for s in range(3)])
    assert set(np.unique(k)) <= {0, 1, 2} and _longest_run(k) >= 30
    with pytest.raises(ValueError, match="hold_min <= hold_max"):
        HoldingPolicy(DOOM, hold_min=40, hold_max=20)
    assert isinstance(make_policy(PolicySpec("holding"), DOOM, "doom_take_cover"), HoldingPolicy)


@pytest.mark.parametrize("space", [CAR, DOOM], ids=["car_racing", "doom"])
def test_driving_policy_is_seeded_and_within_bounds(space: spaces.Box) -> None:
    obs = np.zeros((64, 64, 3), np.uint8)
    p = DrivingPolicy(space)
    a, b, c = _actions(p, 3, 500, obs), _actions(p, 3, 500, obs), _actions(p, 4, 500, obs)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a >= space.low).all() and (a <= space.high).all()
    assert p.act(obs).dtype == space.dtype
    # a smooth walk: consecutive actions are close (the brownian moves several times as far)
    step = np.abs(np.diff(a[:, 0])).mean()
    assert step < 0.5 * np.abs(np.diff(_actions(BrownianPolicy(space), 3, 500, obs)[:, 0])).mean()
    assert a[:, 0].std() > 0.1  # ... and still wanders


def test_driving_policy_keeps_the_gas_on_and_brakes_rarely() -> None:
    obs = np.zeros((64, 64, 3), np.uint8)
    drive = np.concatenate([_actions(DrivingPolicy(CAR), s, 1000, obs) for s in range(3)])
    brown = np.concatenate([_actions(BrownianPolicy(CAR), s, 1000, obs) for s in range(3)])
    # the brownian's gas averages 0.5 as well, but its brake as much: it creeps. Net of the brake
    # the driving walk has its foot down; its brake is rare
    net = lambda a: float((a[:, 1] - a[:, 2]).mean())  # noqa: E731
    assert net(drive) > 0.3 and net(drive) > net(brown) + 0.25
    assert (drive[:, 2] > 0).mean() < 0.1 < 0.5 < (brown[:, 2] > 0).mean()
    assert (drive[:, 1] > 0.2).mean() > 0.75
    assert (drive[:, 1] * drive[:, 2] == 0).all()  # gas released while braking


def test_driving_policy_refuses_discrete_spaces() -> None:
    with pytest.raises(ValueError, match="needs a Box action space"):
        DrivingPolicy(spaces.Discrete(3))


def _episode(name: str, seed: int, steps: int, **kwargs: object) -> dict[str, np.ndarray]:
    env = envs.make("car_racing", max_episode_steps=steps)
    try:
        return run_episode(env, make_policy(PolicySpec(name, dict(kwargs)), env.action_space, "car_racing"),
                           seed)["arrays"]
    finally:
        env.close()


def test_scripted_driver_is_seeded_and_within_bounds() -> None:
    seed = episode_seed(0, 1)
    a, b = _episode("scripted", seed, 120), _episode("scripted", seed, 120)
    assert np.array_equal(a["actions"], b["actions"]) and np.array_equal(a["obs"], b["obs"])
    assert not np.array_equal(a["actions"], _episode("scripted", episode_seed(0, 2), 120)["actions"])
    assert (a["actions"] >= CAR.low).all() and (a["actions"] <= CAR.high).all()


def test_scripted_driver_drives_further_than_brownian_and_leaves_the_road() -> None:
    seed = episode_seed(0, 0)
    brown = _episode("brownian", seed, 300)
    driven = _episode("scripted", seed, 300, excursion_prob=0.0)
    assert driven["tiles"][-1] > brown["tiles"][-1] + 30
    assert np.median(driven["speed"]) > 3 * np.median(brown["speed"])
    assert not driven["off_road"].any()  # without excursions it keeps to the road
    # with excursions (frequent here, onto the grass): off the road, then back on it
    wild = _episode("scripted", seed, 300, excursion_prob=0.03, excursions="grass")
    off = np.flatnonzero(wild["off_road"])
    assert off.size and not wild["off_road"][off[0]:].all(), "no excursion off the road, or no way back"
    assert wild["tiles"][-1] > brown["tiles"][-1]


def test_scripted_driver_only_drives_car_racing(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    with pytest.raises(ValueError, match="drives CarRacing only"):
        make_policy(PolicySpec("scripted"), DOOM, "doom_take_cover")
    with pytest.raises(ValueError, match="drives CarRacing only"):
        check_policy("scripted", GYM_PIXELS)
    with pytest.raises(ValueError, match="drives CarRacing only"):
        RunConfig(task="doom_take_cover", collect=CollectConfig(policy="scripted"))
    with pytest.raises(ValueError, match="continuous actions"):
        ScriptedDriver(DOOM)
    env = envs.make(GYM_PIXELS, pixels=True)
    try:
        with pytest.raises(ValueError, match="drives CarRacing only"):
            ScriptedDriver(CAR).bind(env)
    finally:
        env.close()
    r = cli("collect.py", GYM_PIXELS, "--episodes", "1", "--policy", "scripted", "--workers", "0",
            "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "drives CarRacing only" in r.stderr and not (tmp_path / "x").exists()


def test_collect_policy_names_are_checked() -> None:
    for name in ("driving", "scripted", "brownian", "random_controller"):
        assert CollectConfig(policy=name).policy == name
    for name in ("controller", "drive"):
        with pytest.raises(ValueError, match="collect.policy must be one of"):
            CollectConfig(policy=name)


def test_existing_policies_write_the_same_shards_as_before(tmp_path: Path) -> None:
    """tests/fixtures/old_run/data (brownian, seed 0, 25-step episodes) was collected by the code
    before the signals; random_controller's digests below were collected by the code of b15ec57."""
    old = json.loads((OLD_DATA / "manifest.json").read_text())["episodes"]
    env_kwargs = {"max_episode_steps": 25}
    bare = collect("car_racing", tmp_path / "bare", 2, workers=0, seed=0, env_kwargs={**env_kwargs, "signals": False},
                   progress=False)
    assert [bare.episodes[i]["sha256"] for i in range(2)] == [old[str(i)]["sha256"] for i in range(2)]
    rc = collect("car_racing", tmp_path / "rc", 2, workers=0, seed=0, env_kwargs={**env_kwargs, "signals": False},
                 policy=PolicySpec("random_controller", {"seed": 0}), progress=False)
    assert [rc.episodes[i]["sha256"] for i in range(2)] == [
        "4d08bdd54fce94900f377e990898eb7a371d3eadd315a125f63ce69fc4aa34f3",
        "25d992f6cb625cf3e962f06feb0ea63ef7d58300433a3a9e5cf6c354b9613ff3"]
    # with the signals (the default) the shards add three arrays; the others are the old bytes
    new = collect("car_racing", tmp_path / "new", 2, workers=0, seed=0, env_kwargs=env_kwargs, progress=False)
    for i in range(2):
        ep = load_shard(new.dir / new.episodes[i]["file"], new.episodes[i]["sha256"])
        assert set(ep) == set(SHARD_KEYS) | set(SIGNALS)
        assert encode_shard({k: ep[k] for k in SHARD_KEYS}, i)[1]["sha256"] == old[str(i)]["sha256"]
        assert new.episodes[i]["return"] == old[str(i)]["return"]
        assert all(ep[k].shape == (25,) and ep[k].dtype == dtype for k, dtype in SIGNALS.items())


@pytest.fixture(scope="module")
def scripted_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scripted") / "data"
    collect("car_racing", out, 3, workers=0, seed=5, policy=PolicySpec("scripted", {"excursion_prob": 0.03}),
            env_kwargs={"max_episode_steps": 150}, progress=False)
    return out


def test_coverage_agrees_with_the_shards(scripted_data: Path) -> None:
    m = Manifest.open(scripted_data)
    eps = [load_shard(p, s) for p, s in m.files()]
    cov = coverage(scripted_data)
    assert cov["policy"] == "scripted" and cov["task"] == "car_racing"
    assert cov["episodes"] == 3 == cov["signal_episodes"] and cov["steps"] == m.num_steps
    returns = [m.episodes[i]["return"] for i in sorted(m.episodes)]
    assert cov["return_mean"] == pytest.approx(np.mean(returns), abs=1e-9)
    assert cov["return_min"] == min(returns) and cov["return_max"] == max(returns)
    speed = np.concatenate([e["speed"] for e in eps])
    assert cov["speed_p50"] == pytest.approx(np.median(speed)) and cov["speed_p90"] > cov["speed_p50"] > 5
    tiles = [int(e["tiles"][-1]) for e in eps]
    assert cov["tiles_mean"] == pytest.approx(np.mean(tiles)) and cov["tiles_max"] == max(tiles)
    assert cov["off_road"] == pytest.approx(np.concatenate([e["off_road"] for e in eps]).mean())
    from agents.coverage import held_steps

    assert cov["held"] == pytest.approx(sum(held_steps(e["actions"]) for e in eps) / cov["steps"])
    # a step earns a tile when the count grows; the tiles reached add up to the steps that earned them
    # (a step may reach two tiles at once, so at least as many tiles as earning steps)
    earned = cov["tile_steps"] * cov["steps"]
    assert 0 < earned <= sum(tiles)
    one = coverage(scripted_data, [1])
    assert one["episodes"] == 1 and one["return_mean"] == m.episodes[1]["return"] and one["tiles_max"] == tiles[1]
    with pytest.raises(ValueError, match="not in"):
        coverage(scripted_data, [7])


def test_held_steps_count_the_stretches_of_one_action() -> None:
    from agents.coverage import held_steps

    a = np.array([0.5] * 30 + [0.1, 0.2] + [-1.0] * 29 + [0.3] * 31, dtype=np.float32)[:, None]
    assert held_steps(a) == 30 + 31 and held_steps(a, least=29) == 30 + 29 + 31 and held_steps(a[:0]) == 0
    car = np.repeat(np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.5]]), 40, axis=0)  # every dimension must match
    car[49, 2] = 0.4  # the second stretch: 9 steps, 1, then 30
    assert held_steps(car) == 40 + 30
    doom = HoldingPolicy(DOOM)
    acts = _actions(doom, 0, 3000, np.zeros((64, 64, 3), np.uint8))
    assert 0.25 < held_steps(acts) / 3000 < 0.6 and held_steps(_actions(BrownianPolicy(DOOM), 0, 3000, acts)) == 0


def test_coverage_without_signals(tmp_path: Path) -> None:
    m = collect("car_racing", tmp_path / "d", 2, workers=0, seed=0, env_kwargs={"max_episode_steps": 20,
                                                                                "signals": False}, progress=False)
    cov = coverage(m.dir)
    assert cov["signal_episodes"] == 0 and cov["speed_p50"] is None and cov["off_road"] is None
    assert cov["return_max"] == max(e["return"] for e in m.episodes.values())


def test_coverage_script_and_report(scripted_data: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "coverage.py"), str(scripted_data)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| scripted | 3 |" in r.stdout and "privileged information used only to collect data" in r.stdout
    # a run folder whose round 0 is that data: the report's coverage table, one row per round
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.data.symlink_to(scripted_data, target_is_directory=True)
    cfg = RunConfig(collect=CollectConfig(episodes=3, policy="scripted", max_steps=150)).to_dict()
    run.config_json.write_text(json.dumps(cfg))
    text = write_report(run, cfg).read_text()
    assert "## Data coverage" in text and "| 0 | scripted | 3 |" in text
    assert "privileged information used only to collect data" in text
    assert "| 0 | scripted | 3 |" in coverage_report(run)
    with pytest.raises(FileNotFoundError, match="neither a run folder nor a folder of rollout shards"):
        coverage_report(tmp_path)


def _old_run_controller_policy(**kw: float) -> object:
    from agents.controller import load_controller
    from agents.policies import ControllerPolicy
    from worldlab.world_model import WorldModel

    run = Path(__file__).parent / "fixtures" / "old_run"
    ccfg, params, _ = load_controller(run / "checkpoints" / "controller.npz")
    return ControllerPolicy(WorldModel.load(run), ccfg, params, **kw)


def _controller_actions(policy: object, frames: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    policy.reset(seed)  # type: ignore[attr-defined]
    acts, burst = [], []
    for f in frames:
        acts.append(policy.act(f))  # type: ignore[attr-defined]
        burst.append(policy.bursting)  # type: ignore[attr-defined]
    return np.stack(acts), np.array(burst)


def test_later_rounds_collect_with_random_bursts() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (80, 64, 64, 3), dtype=np.uint8)
    plain, none = _controller_actions(_old_run_controller_policy(noise_std=0.1), frames, 3)
    # no bursts asked for: the very actions the collector always played
    again, _ = _controller_actions(_old_run_controller_policy(noise_std=0.1, burst_prob=0.0), frames, 3)
    assert np.array_equal(again, plain) and not none.any()
    bursty = _old_run_controller_policy(noise_std=0.1, burst_prob=0.05, burst_steps=10)
    a, burst = _controller_actions(bursty, frames, 3)
    assert np.array_equal(a, _controller_actions(bursty, frames, 3)[0])  # seeded
    assert np.array_equal(a[:np.argmax(burst)], plain[:np.argmax(burst)])  # the same C until the first burst
    starts = np.flatnonzero(np.diff(np.r_[0, burst.astype(int)]) == 1)
    assert len(starts) >= 1
    for s in starts:  # each burst lasts burst_steps (or to the episode's end)
        assert burst[s:s + 10].all() and (s + 10 >= len(burst) or not burst[s + 10] or s + 10 in starts)
    low, high = np.asarray(bursty.cfg.action_low), np.asarray(bursty.cfg.action_high)  # type: ignore[attr-defined]
    assert ((a >= low) & (a <= high)).all()
    with pytest.raises(ValueError, match="collect.burst_prob is a probability per step"):
        CollectConfig(burst_prob=2.0)
    assert "random bursts of 20 steps at 0.02 per step" in CollectConfig(burst_prob=0.02).later_policy(1)
