"""FastCarRacing against Gymnasium's CarRacing-v3: bit-identical, step by step."""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame is imported anywhere
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import math  # noqa: E402
import pickle  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from pygame.math import Vector2  # noqa: E402

from envs import car_racing  # noqa: E402
from envs.car_racing import ENV_ID, FastCarRacing, register_envs, rotate_rad  # noqa: E402

REFERENCE_ID = "CarRacing-v3"
STEPS = 1000  # a full episode: TimeLimit truncates at 1000


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_envs()


def brownian_actions(seed: int, steps: int = STEPS) -> list[np.ndarray]:
    """A random walk in action space: accelerates, spins and leaves the track."""
    rng = np.random.default_rng(seed)
    low, high = np.array([-1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
    action = np.zeros(3)
    actions = []
    for _ in range(steps):
        action = np.clip(action + rng.normal(0.0, 0.3, size=3), low, high)
        actions.append(action.astype(np.float32))
    return actions


def straight_actions(gas: float, steps: int = STEPS) -> list[np.ndarray]:
    """Hold the throttle and no steering: the car drives off the road, then off the playfield.

    (Gas 1.0 spins the rear wheels and never gets there within 1000 steps.)
    """
    return [np.array([0.0, gas, 0.0], dtype=np.float32) for _ in range(steps)]


def discrete_actions(seed: int, steps: int = STEPS) -> list[int]:
    """Random discrete actions held for a few steps each, mostly gas."""
    rng = np.random.default_rng(seed)
    actions: list[int] = []
    while len(actions) < steps:
        choice = int(rng.choice(5, p=[0.1, 0.15, 0.15, 0.45, 0.15]))
        actions += [choice] * int(rng.integers(1, 15))
    return actions[:steps]


def assert_same_episode(
    seed: int,
    actions: Sequence[Any],
    render_every: int | None = None,
    reset_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[tuple[Any, ...]]:
    """Step gymnasium's env and ours in lockstep; fail at the first difference.

    ``reset_options`` are passed to a second ``reset`` after the seeded one (the
    first reset of a ``domain_randomize`` env with ``randomize=False`` keeps
    colours drawn from an unseeded generator in ``__init__``, in both envs).

    Returns our per-step ``(obs, reward, terminated, truncated, info)``.
    """
    ref = gym.make(REFERENCE_ID, **kwargs)
    fast = gym.make(ENV_ID, **kwargs)
    steps = []
    try:
        obs_ref, info_ref = ref.reset(seed=seed)
        obs_fast, info_fast = fast.reset(seed=seed)
        if reset_options is not None:  # a second reset, continuing the seeded RNG
            obs_ref, info_ref = ref.reset(options=reset_options)
            obs_fast, info_fast = fast.reset(options=reset_options)
        assert np.array_equal(obs_ref, obs_fast), "reset observation differs"
        assert info_ref == info_fast
        for t, action in enumerate(actions):
            out_ref = ref.step(action)
            out_fast = fast.step(action)
            assert out_fast[0].dtype == np.uint8 and out_fast[0].shape == (96, 96, 3)
            assert np.array_equal(out_ref[0], out_fast[0]), f"observation differs at step {t}"
            assert out_ref[1] == out_fast[1], f"reward differs at step {t}"
            assert out_ref[2:] == out_fast[2:], f"flags or info differ at step {t}"
            if render_every and t % render_every == 0:
                frame_ref, frame_fast = ref.render(), fast.render()
                assert np.array_equal(frame_ref, frame_fast), f"render differs at step {t}"
            steps.append(out_fast)
            if out_fast[2] or out_fast[3]:
                break
    finally:
        ref.close()
        fast.close()
    return steps


# --------------------------------------------------------------- default run


def test_brownian_episode_matches_gymnasium() -> None:
    steps = assert_same_episode(0, brownian_actions(0))
    assert len(steps) == STEPS and steps[-1][3], "expected a full, truncated episode"


def test_off_playfield_matches_gymnasium(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spy on the playfield test so that both of its branches are known to be exercised.
    outcomes: list[bool] = []
    covers = car_racing._covers_surface

    def spy(*args: Any) -> bool:
        outcomes.append(covers(*args))
        return outcomes[-1]

    monkeypatch.setattr(car_racing, "_covers_surface", spy)
    steps = assert_same_episode(0, straight_actions(gas=0.8))
    obs, reward, terminated, truncated, info = steps[-1]
    assert terminated and not truncated and reward == -100
    assert info == {"lap_finished": False}
    assert len(steps) < STEPS
    assert True in outcomes and False in outcomes


def test_domain_randomize_episode_matches_gymnasium() -> None:
    assert_same_episode(1, brownian_actions(1), domain_randomize=True)


def test_domain_randomize_reset_options_match_gymnasium() -> None:
    for options in ({"randomize": True}, {"randomize": False}):
        assert_same_episode(
            2, brownian_actions(2, 60), domain_randomize=True, reset_options=options
        )


def test_discrete_episode_matches_gymnasium() -> None:
    assert_same_episode(2, discrete_actions(2), continuous=False)


def test_rgb_array_render_matches_gymnasium() -> None:
    assert_same_episode(3, brownian_actions(3, 200), render_every=7, render_mode="rgb_array")


def test_human_render_runs_headless() -> None:
    steps = assert_same_episode(4, brownian_actions(4, 25), render_mode="human")
    assert len(steps) == 25
    env = gym.make(ENV_ID, render_mode="human")
    env.reset(seed=0)
    assert env.render() is None
    env.close()


def test_gauge_taller_than_the_bar_matches_gymnasium(monkeypatch: pytest.MonkeyPatch) -> None:
    # A wheel spinning this fast draws its ABS gauge above the indicator bar,
    # over the road: the observation must take the reference path then.
    outcomes: list[bool] = []
    draw_bar_below = FastCarRacing._draw_bar_below

    def spy(self: FastCarRacing, *args: Any) -> bool:
        outcomes.append(draw_bar_below(self, *args))
        return outcomes[-1]

    monkeypatch.setattr(FastCarRacing, "_draw_bar_below", spy)
    ref = gym.make(REFERENCE_ID).unwrapped
    fast = gym.make(ENV_ID).unwrapped
    ref.reset(seed=0)
    fast.reset(seed=0)
    action = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    for t in range(20):
        for env in (ref, fast):
            env.car.wheels[2].omega = 300.0 + 20.0 * t
        assert np.array_equal(ref.step(action)[0], fast.step(action)[0]), t
    ref.close()
    fast.close()
    assert True in outcomes and False in outcomes


def test_rotate_rad_matches_pygame_vector2() -> None:
    rng = np.random.default_rng(0)
    quarter = math.pi / 2
    angles = [0.0, -0.0, 1e-7, -1e-7, 3e-6, -3e-6, 7.0, -20.0, float(np.float32(-1.3))]
    angles += [k * quarter + d for k in range(-9, 9) for d in (0.0, 5e-7, -5e-7, 2e-6)]
    angles += rng.normal(0.0, 10.0, size=200).tolist()
    points = rng.normal(0.0, 300.0, size=(64, 2))
    for angle in angles:
        x, y = rotate_rad(points[:, 0], points[:, 1], angle)
        expected = np.array([tuple(Vector2(p).rotate_rad(angle)) for p in points.tolist()])
        assert np.array_equal(x, expected[:, 0]) and np.array_equal(y, expected[:, 1]), angle


def test_check_env_passes() -> None:
    env = FastCarRacing()
    check_env(env, skip_render_check=True)
    env.close()
    env = gym.make(ENV_ID, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.close()


def test_register_envs_is_idempotent() -> None:
    register_envs()
    register_envs()
    spec = gym.spec(ENV_ID)
    assert spec.entry_point == "envs.car_racing:FastCarRacing"
    assert spec.max_episode_steps == 1000 and spec.reward_threshold == 900
    env = gym.make(ENV_ID, continuous=False, lap_complete_percent=0.5)
    assert isinstance(env.unwrapped, FastCarRacing)
    assert env.action_space == gym.spaces.Discrete(5)
    env.close()


def test_pickles_as_fast_car_racing() -> None:
    env = FastCarRacing(domain_randomize=True, continuous=False)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is FastCarRacing
    assert clone.domain_randomize and not clone.continuous
    env.close()
    clone.close()


def test_score_text_survives_font_quit() -> None:
    import pygame

    env = FastCarRacing()
    env.reset(seed=0)
    pygame.font.quit()  # e.g. another env's close(); the cached font is now invalid
    env._score_cache.clear()
    obs = env.step(np.array([0.0, 0.5, 0.0], dtype=np.float32))[0]
    ref = gym.make(REFERENCE_ID).unwrapped
    ref.reset(seed=0)
    assert np.array_equal(obs, ref.step(np.array([0.0, 0.5, 0.0], dtype=np.float32))[0])
    env.close()
    ref.close()


# ------------------------------------------------------------------ slow run

Variant = tuple[str, Callable[[int], Sequence[Any]], dict[str, Any]]
VARIANTS: list[Variant] = [
    ("brownian", brownian_actions, {}),
    ("domain_randomize", brownian_actions, {"domain_randomize": True}),
    ("discrete", discrete_actions, {"continuous": False}),
    ("lap_complete_percent", brownian_actions, {"lap_complete_percent": 0.05}),
]


SWEEP = list(zip(VARIANTS, (5, 14, 9, 18), strict=True))
"""One full episode per variant, on seeds that differ between variants (5, 14, 9, 18: four tracks in
all; eight before the fault-injection suite joined CI): CI's 40 minutes do not hold every variant on
every seed, and the fast tests already cover seeds 0-4."""


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "seed"), SWEEP, ids=[f"{v[0]}-{s}" for v, s in SWEEP])
def test_seed_sweep_matches_gymnasium(variant: Variant, seed: int) -> None:
    _, make_actions, kwargs = variant
    assert_same_episode(seed, make_actions(seed), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "gas"), [(1, 0.3), (2, 0.5), (3, 0.8), (1, 0.8)])
def test_off_playfield_sweep_matches_gymnasium(seed: int, gas: float) -> None:
    steps = assert_same_episode(seed, straight_actions(gas))
    assert steps[-1][2] and steps[-1][1] == -100


@pytest.mark.slow
def test_rgb_array_full_episode_matches_gymnasium() -> None:
    assert_same_episode(11, brownian_actions(11), render_every=3, render_mode="rgb_array")
