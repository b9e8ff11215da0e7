"""Real tasks: preprocessing, spaces, check_env, determinism, clear errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs


@pytest.mark.parametrize("task", ["car_racing", "doom_take_cover"])
def test_task_spaces_and_check_env(task: str) -> None:
    env = envs.make(task)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    spec = envs.TASKS[task]
    assert env.action_space.shape == tuple(spec.action_space["shape"])
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    env.close()


@pytest.mark.parametrize("gym_id", ["LunarLander-v3", "CartPole-v1"])
def test_pixels_for_any_gymnasium_id(gym_id: str) -> None:
    env = envs.make(gym_id, pixels=True)
    assert env.observation_space.shape == (64, 64, 3)
    assert env.metadata["render_modes"] == ["rgb_array"]  # its frames are the rgb_array renders
    check_env(env)  # render check included: the env is remade in every declared render mode
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 0
    env.close()


@pytest.mark.parametrize("task", ["car_racing", "doom_take_cover"])
def test_same_seed_same_episode(task: str) -> None:
    def play(seed: int) -> tuple[np.ndarray, list[float]]:
        env = envs.make(task, max_episode_steps=60)
        rng = np.random.default_rng(0)
        obs, _ = env.reset(seed=seed)
        frames, rewards = [obs], []
        while True:
            obs, r, term, trunc, _ = env.step(rng.uniform(env.action_space.low, env.action_space.high)
                                              .astype(np.float32))
            frames.append(obs)
            rewards.append(r)
            if term or trunc:
                break
        env.close()
        return np.stack(frames), rewards

    a, ra = play(3)
    b, rb = play(3)
    assert np.array_equal(a, b) and ra == rb
    c, _ = play(4)
    assert not np.array_equal(a[: len(c)], c[: len(a)])


def test_task_table_sizes() -> None:
    cr = envs.TASKS["car_racing"]
    assert (cr.z_size, cr.rnn_hidden, cr.controller_params) == (32, 256, 867)
    assert envs.TASKS["doom_take_cover"].max_episode_steps == 2100


def test_doom_paper_action_mapping() -> None:
    env = envs.make("doom_take_cover")
    w = env
    while not isinstance(w, envs.ThresholdAction):
        w = w.env
    assert [w.action(np.array([a])) for a in (-1.0, -0.2, 0.0, 0.2, 0.9)] == [2, 0, 0, 0, 1]
    env.close()


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'car_racin'; known tasks: car_racing, doom_take_cover"):
        envs.make("car_racin")


def test_non_image_env_needs_pixels() -> None:
    with pytest.raises(ValueError, match="pass pixels=True"):
        envs.make("CartPole-v1")


def test_registered_ids() -> None:
    assert "worldlab/CarRacing-v3" in gym.envs.registry
