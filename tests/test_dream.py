"""The dream environments: Gymnasium / SB3 contracts, seeding, vector-vs-single equality,
autoreset, temperature, rendering, and agents from SB3 and RLlib training inside them.

The world model here is freshly initialised (no training needed to check the env contract).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode

from envs.dream import DREAM_ID, DreamEnv, DreamVectorEnv, register_envs
from worldlab.world_model import WorldModel

LIMIT = 40


@pytest.fixture(scope="module")
def wm() -> WorldModel:
    return WorldModel.untrained(bank=8, max_episode_steps=LIMIT, seed=0)


@pytest.fixture(scope="module")
def run_dir(wm: WorldModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("dream_run")
    wm.save(run)
    return run


def rollout(env: gym.Env, seed: int, actions: np.ndarray, stop_at_end: bool = True
            ) -> tuple[list[np.ndarray], list[float], list[bool]]:
    obs, _ = env.reset(seed=seed)
    out, rewards, dones = [obs], [], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        dones.append(term or trunc)
        if stop_at_end and (term or trunc):
            break
    return out, rewards, dones


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
def test_gymnasium_check_env(wm: WorldModel, obs_mode: str) -> None:
    env = DreamEnv(world_model=wm, obs_mode=obs_mode, render_mode="rgb_array")
    gym_check_env(env, skip_render_check=False)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    expected = (wm.z_size + wm.hidden_size,) if obs_mode == "latent" else (64, 64, 3)
    assert obs.shape == expected


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
def test_sb3_check_env(wm: WorldModel, obs_mode: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    check_env(DreamEnv(world_model=wm, obs_mode=obs_mode), warn=False)


def test_same_seed_same_dream_episode(wm: WorldModel) -> None:
    actions = np.random.default_rng(1).uniform([-1, 0, 0], [1, 1, 1], (25, 3)).astype(np.float32)
    env = DreamEnv(world_model=wm, temperature=1.0)
    a_obs, a_rew, a_end = rollout(env, 7, actions, stop_at_end=False)
    b_obs, b_rew, b_end = rollout(DreamEnv(world_model=wm, temperature=1.0), 7, actions, stop_at_end=False)
    c_obs, _, _ = rollout(env, 8, actions, stop_at_end=False)
    assert len(a_obs) == len(b_obs) == 26 and a_end == b_end
    for x, y in zip(a_obs, b_obs, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a_rew == b_rew
    assert not all(np.array_equal(x, y) for x, y in zip(a_obs, c_obs, strict=False))


def test_deterministic_vector_matches_single(wm: WorldModel) -> None:
    n, steps = 5, 30
    actions = np.random.default_rng(2).uniform([-1, 0, 0], [1, 1, 1], (steps, n, 3)).astype(np.float32)
    venv = DreamVectorEnv(n, world_model=wm, deterministic=True)
    obs, _ = venv.reset(seed=100)
    v_obs, v_done = [obs], []
    for t in range(steps):
        obs, _, term, trunc, _ = venv.step(actions[t])
        v_obs.append(obs)
        v_done.append(term | trunc)
    compared = 0
    for i in range(n):
        s_obs, _, s_done = rollout(DreamEnv(world_model=wm, deterministic=True), 100 + i, actions[:, i])
        for t, o in enumerate(s_obs):
            np.testing.assert_array_equal(o, v_obs[t][i], err_msg=f"sub-env {i} step {t}")
            compared += 1
        assert s_done == [bool(d[i]) for d in v_done[:len(s_done)]]
    assert compared > n * 20


def test_start_latents_option_gives_identical_trajectories(wm: WorldModel) -> None:
    z0 = wm.start_mu[:3].numpy() + 0.5
    actions = np.full((12, 3, 3), 0.3, np.float32)
    venv = DreamVectorEnv(3, world_model=wm, deterministic=True)
    obs, _ = venv.reset(seed=0, options={"z0": z0})
    np.testing.assert_array_equal(obs[:, :wm.z_size], z0)
    for t in range(12):
        obs, *_ = venv.step(actions[t])
    for i in range(3):
        env = DreamEnv(world_model=wm, deterministic=True)
        o, _ = env.reset(seed=999, options={"z0": z0[i]})
        for t in range(12):
            o, *_ = env.step(actions[t, i])
        np.testing.assert_array_equal(o, obs[i])


def test_next_step_autoreset_and_truncation(wm: WorldModel) -> None:
    venv = DreamVectorEnv(4, world_model=wm, max_episode_steps=3, deterministic=True)
    venv.reset(seed=0)
    a = np.zeros((4, 3), np.float32)
    for _ in range(2):
        _, _, term, trunc, _ = venv.step(a)
        assert not trunc.any()
    _, _, term, trunc, _ = venv.step(a)
    assert (trunc | term).all()
    obs, rew, term, trunc, _ = venv.step(a)  # the autoreset step
    assert not (term | trunc).any() and (rew == 0).all()
    assert np.all(obs[:, wm.z_size:] == 0)  # fresh LSTM state
    bank = wm.start_mu.numpy()
    for z in obs[:, :wm.z_size]:
        assert np.isclose(bank, z[None]).all(axis=1).any()  # a banked real start


def test_same_step_autoreset_reports_final_obs(wm: WorldModel) -> None:
    venv = DreamVectorEnv(3, world_model=wm, max_episode_steps=2, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    venv.step(np.zeros((3, 3), np.float32))
    obs, _, term, trunc, info = venv.step(np.zeros((3, 3), np.float32))
    assert (term | trunc).all()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == obs[0].shape
    assert np.all(obs[:, wm.z_size:] == 0) and not np.all(info["final_obs"][0][wm.z_size:] == 0)


def test_registered_make_and_make_vec(run_dir: Path) -> None:
    register_envs()
    register_envs()  # idempotent
    env = gym.make(DREAM_ID, run_dir=str(run_dir))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    venv = gym.make_vec(DREAM_ID, num_envs=6, run_dir=str(run_dir), temperature=1.15)
    assert isinstance(venv.unwrapped, DreamVectorEnv) and venv.unwrapped.temperature == 1.15
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (6, 288)
    obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert obs.shape == (6, 288) and rew.shape == (6,) and np.isfinite(rew).all()


def test_temperature_small_is_near_deterministic(wm: WorldModel) -> None:
    n = 64
    z0 = wm.start_mu[:1].repeat(n, 1)
    a = torch.full((n, 3), 0.5)

    def next_z(**kw: object) -> torch.Tensor:
        venv = DreamVectorEnv(n, world_model=wm, **kw)
        venv.reset_torch(seed=3, z0=z0)
        obs, *_ = venv.step_torch(a)
        return obs[:, :wm.z_size]

    z_det = next_z(deterministic=True)
    z_cold = next_z(temperature=1e-4)
    z_hot = next_z(temperature=1.0)
    cold = (z_cold - z_det).abs().max().item()
    assert cold < 0.05
    assert z_cold.std(0).max().item() < 0.05
    assert (z_hot - z_det).abs().max().item() > 10 * cold
    assert z_hot.std(0).mean().item() > 10 * z_cold.std(0).mean().item()


def test_step_torch_and_pixels(wm: WorldModel) -> None:
    venv = DreamVectorEnv(16, world_model=wm)
    obs = venv.reset_torch(seed=0)
    assert obs.shape == (16, 288) and obs.dtype == torch.float32
    obs2, rew, term, trunc = venv.step_torch(torch.zeros(16, 3))
    assert obs2.shape == (16, 288) and rew.shape == term.shape == trunc.shape == (16,)
    assert term.dtype == torch.bool and torch.isfinite(obs2).all()
    pix = DreamVectorEnv(4, world_model=wm, obs_mode="pixels", render_mode="rgb_array")
    o, _ = pix.reset(seed=0)
    assert o.shape == (4, 64, 64, 3) and o.dtype == np.uint8
    frames = pix.render()
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)


def test_renderer_replaces_decoder(wm: WorldModel) -> None:
    def renderer(z: torch.Tensor) -> torch.Tensor:  # any z -> frames callable: colour from z[:, 0]
        v = torch.sigmoid(z[:, :1]).view(-1, 1, 1, 1)
        return v.expand(-1, 3, 32, 32)

    env = DreamEnv(world_model=wm, obs_mode="pixels", render_mode="rgb_array", renderer=renderer)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and env.observation_space.contains(obs)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and len(np.unique(frame)) == 1


def test_human_render_opens_a_window(wm: WorldModel) -> None:
    env = DreamEnv(world_model=wm, render_mode="human", window_scale=2)
    env.reset(seed=0)
    env.step(np.zeros(3, np.float32))
    assert env._window is not None
    env.close()


def test_discrete_action_task() -> None:
    wm = WorldModel.untrained(task="toy", action_space={"type": "discrete", "n": 3}, z_size=16, hidden=32,
                              max_episode_steps=10)
    env = DreamEnv(world_model=wm)
    gym_check_env(env)
    venv = DreamVectorEnv(4, world_model=wm)
    venv.reset(seed=0)
    obs, *_ = venv.step(np.array([0, 1, 2, 1]))
    assert obs.shape == (4, 48)


def test_bad_arguments_fail_clearly(wm: WorldModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="obs_mode"):
        DreamEnv(world_model=wm, obs_mode="rgb")
    with pytest.raises(ValueError, match="exactly one"):
        DreamEnv()
    with pytest.raises(FileNotFoundError, match="mdrnn.pt|vae.pt"):
        DreamEnv(run_dir=tmp_path)


@pytest.mark.slow
def test_compiled_step_matches_eager(wm: WorldModel) -> None:
    n = 64
    z0 = wm.start_mu[torch.arange(n) % wm.start_mu.shape[0]]
    envs = [DreamVectorEnv(n, world_model=wm, deterministic=True, compile=c) for c in (False, True)]
    obs = [e.reset_torch(seed=0, z0=z0) for e in envs]
    a = torch.rand(10, n, 3, generator=torch.Generator().manual_seed(0))
    for t in range(10):
        obs = [e.step_torch(a[t])[0] for e in envs]
        torch.testing.assert_close(obs[1], obs[0], atol=1e-4, rtol=1e-4)
    # sampling on: the compiled step is one fused graph; same noise -> the same draws as eager
    from envs.dream_step import MDRNNDreamStep

    steps = []
    for c in (False, True):  # the MDRNN step's own buffers: the packed input x and the cell state c
        fs = MDRNNDreamStep(wm.mdrnn, n, compile=c)
        fs.reset_rows(slice(None), z0)
        fs.set_actions(a[0])
        g = torch.Generator().manual_seed(5)
        steps.append([(*(t.clone() for t in fs.step(1.15, False, g)), fs.x.clone(), fs.c.clone())
                      for _ in range(3)])
    for (r0, d0, x0, c0), (r1, d1, x1, c1) in zip(*steps, strict=True):
        assert torch.equal(d0, d1)
        for u, v in ((r0, r1), (x0, x1), (c0, c1)):
            torch.testing.assert_close(v, u, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_compiled_vector_env_matches_eager_and_hands_out_its_own_obs(wm: WorldModel, mode: AutoresetMode) -> None:
    # sampling on, episodes of 5 steps (resets on the way): the compiled env (a new x per step,
    # the graph's own observation tensor handed out) follows the eager one draw for draw
    n, steps = 16, 12
    envs = [DreamVectorEnv(n, world_model=wm, temperature=1.0, compile=c, max_episode_steps=5,
                           autoreset_mode=mode) for c in (False, True)]
    for e in envs:
        e.reset_torch(seed=3)
    a = torch.rand(steps, n, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    zeroed = []
    ended = 0
    for t in range(steps):
        outs = [e.step_torch(a[t]) for e in envs]
        for u, v in zip(outs[0], outs[1], strict=True):
            torch.testing.assert_close(v, u, atol=1e-4, rtol=1e-4)
        ended += int((outs[1][2] | outs[1][3]).sum())
        if mode == AutoresetMode.SAME_STEP:
            assert (envs[0].final_obs is None) == (envs[1].final_obs is None)
            if envs[0].final_obs is not None:
                torch.testing.assert_close(envs[1].final_obs, envs[0].final_obs, atol=1e-4, rtol=1e-4)
        # the caller owns what it got: zeroing it must not reach the dream (the next steps still
        # match eager), and later steps must not write into it
        with torch.inference_mode():  # (the torch API's tensors are inference tensors)
            outs[1][0].zero_()
        zeroed.append(outs[1][0])
        assert all(bool((o == 0).all()) for o in zeroed)
    assert ended >= n  # every sub-env ended at least once (limit 5 in 12 steps)


@pytest.mark.slow
def test_compile_without_a_cxx_compiler_warns_and_runs_eagerly(wm: WorldModel) -> None:
    n = 13  # a shape no other test compiles; the graph cache is off too, so inductor must build
    envs = [DreamVectorEnv(n, world_model=wm, temperature=1.0, compile=c) for c in (False, True)]
    a = torch.rand(3, n, 3, generator=torch.Generator().manual_seed(2))
    for e in envs:
        e.reset_torch(seed=4)
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-cxx-compiler",), "fx_graph_cache": False}):
        with pytest.warns(RuntimeWarning, match="compiling the dream step failed.*running it eagerly"):
            fell_back = envs[1].step_torch(a[0])
    assert not envs[1].compiled
    outs = [(envs[0].step_torch(a[0]), fell_back)]
    outs += [(envs[0].step_torch(a[t]), envs[1].step_torch(a[t])) for t in (1, 2)]
    for eager, fallback in outs:  # the draws start after the failed attempt: the very same numbers
        for u, v in zip(eager, fallback, strict=True):
            assert torch.equal(u, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_vector_env_on_cuda(wm: WorldModel) -> None:
    venv = DreamVectorEnv(256, world_model=wm, device="cuda")
    obs = venv.reset_torch(seed=0)
    obs, rew, *_ = venv.step_torch(torch.zeros(256, 3, device="cuda"))
    assert obs.is_cuda and torch.isfinite(rew).all()


# -- agents from the ecosystem -----------------------------------------------------------------


def test_sb3_vecenv_adapter_and_ppo(wm: WorldModel) -> None:
    from stable_baselines3 import PPO

    from envs.sb3 import DreamSB3VecEnv

    venv = DreamSB3VecEnv(num_envs=8, world_model=wm, max_episode_steps=12)
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (8, 288)
    ended = []
    for _ in range(12):
        obs, rew, dones, infos = venv.step(np.zeros((8, 3), np.float32))
        ended += [info for d, info in zip(dones, infos, strict=True) if d]
    assert ended and all("terminal_observation" in i and i["terminal_observation"].shape == (288,) for i in ended)
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]})
    model.learn(total_timesteps=512)
    assert model.num_timesteps >= 512
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (8, 3)


def test_rllib_ppo_iteration(run_dir: Path, ray_session: object) -> None:
    from ray.rllib.algorithms.ppo import PPOConfig

    from envs.rllib import register_rllib_env

    name = register_rllib_env()
    config = (
        PPOConfig()
        .environment(name, env_config={"run_dir": str(run_dir), "max_episode_steps": 20})
        .env_runners(num_env_runners=0, rollout_fragment_length=64, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1, lr=1e-4)
        .rl_module(model_config={"fcnet_hiddens": [16]})
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    assert result["training_iteration"] == 1
    assert result["num_env_steps_sampled_lifetime"] >= 64
