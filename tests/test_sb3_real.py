"""Train in the dream with Stable-Baselines3, play in the real game: LatentObservation turns real
frames into the dream's [z, h] exactly as the CMA-ES controller's real-game path does, and the
scripts score and show an SB3 policy file through it (tests/fixtures/old_run: z 8, LSTM 16)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from agents.controller import BatchedController
from agents.policies import ControllerPolicy
from agents.rollout import run_episode
from agents.sb3_policy import detect_algo, load_sb3
from agents.world_models.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sb3") / "old_run"
    shutil.copytree(OLD_RUN, run)
    return run


@pytest.fixture(scope="module")
def ppo_zip(run_dir: Path) -> Path:
    """PPO trained for 256 steps in 8 dreams of the run, saved as SB3 saves any model."""
    from stable_baselines3 import PPO

    from envs.sb3 import DreamSB3VecEnv

    venv = DreamSB3VecEnv(num_envs=8, run_dir=run_dir)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(256)
    assert model.num_timesteps >= 256
    venv.close()
    path = run_dir.parent / "ppo_dream.zip"
    model.save(path)
    return path


def test_latent_observation_passes_check_env_and_plays_like_the_controller(run_dir: Path) -> None:
    """The wrapper's [z, h] is the controller's input: the run's controller acting on it scores
    exactly what the controller's own real-game path (ControllerPolicy) scores, seed for seed."""
    _, wm, ccfg, params = load_run(run_dir)
    env = envs.LatentObservation(envs.make("car_racing", max_episode_steps=25), wm)
    assert env.observation_space.shape == (wm.z_size + wm.hidden_size,) == (24,)
    check_env(env)  # render check included: remade from its spec in every render mode
    ctrl = BatchedController(ccfg, params)
    for seed in (3, 4):
        obs, _ = env.reset(seed=seed)
        assert np.array_equal(obs[wm.z_size:], np.zeros(wm.hidden_size))  # reset zeroes M's state
        total, steps, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(ctrl.act(torch.as_tensor(obs)[None])[0].numpy())
            total, steps, done = total + float(r), steps + 1, term or trunc
        ref = run_episode(envs.make("car_racing", max_episode_steps=25), ControllerPolicy(wm, ccfg, params), seed,
                          record=False)
        assert (total, steps) == (ref["return"], ref["length"])
    env.close()


def test_latent_observation_refuses_another_tasks_game(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="uint8 frames V was trained on"):
        envs.LatentObservation(gym.make("CartPole-v1"), run_dir=run_dir)
    with pytest.raises(ValueError, match="belongs to another task"):
        envs.LatentObservation(envs.make("doom_take_cover", paper_actions=False), run_dir=run_dir)
    with pytest.raises(ValueError, match="exactly one of world_model"):
        envs.LatentObservation(envs.make("car_racing"))


def test_ppo_trained_in_the_dream_scores_in_the_real_game(run_dir: Path, ppo_zip: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          script: Callable[[str], ModuleType]) -> None:
    code = script("evaluate").main([str(run_dir), "--sb3", str(ppo_zip), "--episodes", "2", "--max-steps", "25",
                                "--workers", "0", "--json", str(tmp_path / "sb3.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    res = json.loads(out.splitlines()[0])
    assert res["algo"] == "PPO" and res["episodes"] == 2 and res["max_steps"] == 25
    assert all(math.isfinite(r) for r in json.loads((tmp_path / "sb3.json").read_text())["returns"])
    assert res["lengths"] == [25, 25]
    assert "over 2 episodes of at most 25 steps (all 25 steps)" in out.splitlines()[-1]
    # the same seeds as the controller's score, and the same episodes played again
    again = script("evaluate").main([str(run_dir), "--sb3", str(ppo_zip), "--sb3-algo", "PPO", "--episodes", "2",
                                 "--max-steps", "25", "--workers", "0"])
    assert again == 0 and json.loads(capsys.readouterr().out.splitlines()[0])["mean"] == res["mean"]


def test_watch_shows_an_sb3_policy_in_the_real_game_and_the_dream(run_dir: Path, ppo_zip: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  script: Callable[[str], ModuleType]) -> None:
    video = tmp_path / "sb3.mp4"
    code = script("watch").main([str(run_dir), "--sb3", str(ppo_zip), "--max-steps", "10", "--record", str(video)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert video.stat().st_size > 0
    assert "over 1 episode of at most 10 steps" in out.splitlines()[0] and out.startswith("real: ")
    assert out.splitlines()[1].startswith("dream: ")


def test_sb3_policy_errors_are_one_line(run_dir: Path, ppo_zip: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        script: Callable[[str], ModuleType]) -> None:
    evaluate = script("evaluate").main
    for args, message in (
        (["--sb3", str(ppo_zip), "--sb3-algo", "SAC"], "was saved by PPO, not SAC; pass --sb3-algo PPO"),
        (["--sb3", str(tmp_path / "none.zip")], "no SB3 policy at"),
        (["--sb3", str(run_dir / "config.json")], "is not a zip saved by Stable-Baselines3"),
        (["--sb3", str(ppo_zip), "--sb3-algo", "PPO2"], "unknown --sb3-algo 'PPO2'"),
        (["--sb3", str(ppo_zip), "--controller", str(run_dir / "checkpoints" / "controller_r0.npz")], "not both"),
    ):
        assert evaluate([str(run_dir), "--episodes", "1", "--max-steps", "5", "--workers", "0", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_sb3_algorithm_is_read_from_the_zip(run_dir: Path, tmp_path: Path) -> None:
    from stable_baselines3 import A2C, PPO, SAC

    venv = envs.LatentObservation(envs.make("car_racing", max_episode_steps=5), run_dir=run_dir)
    for cls in (PPO, A2C, SAC):
        path = tmp_path / f"{cls.__name__}.zip"
        cls("MlpPolicy", venv, device="cpu", **({"buffer_size": 10} if cls is SAC else {})).save(path)
        assert detect_algo(path.read_bytes()) == cls.__name__
        assert type(load_sb3(path)).__name__ == cls.__name__
    # a policy of another world model's [z, h] is refused before any episode
    other = tmp_path / "other.zip"
    from envs.sb3 import DreamSB3VecEnv
    from worldlab.world_model import WorldModel

    PPO("MlpPolicy", DreamSB3VecEnv(num_envs=2, world_model=WorldModel.untrained(z_size=4, hidden=8)),
        device="cpu").save(other)
    with pytest.raises(ValueError, match=r"shape \(12,\), but this run's \[z, h\] has \(24,\)"):
        from agents.world_models.runs import evaluate_run

        evaluate_run(run_dir, episodes=1, workers=0, max_steps=5, sb3=other)
