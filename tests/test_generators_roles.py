"""generators in their lab roles: data mixer, observation wrapper (inside SB3), reward wrapper."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import generators
from generators.augment import GeneratedObservations, MixedDataset, to_observation
from generators.reward import GeneratorReward, discriminator_logit, log_density, neg_energy


class DotEnv(gym.Env):
    """A tiny pixel task: a dot on a 36x36 RGB canvas; move it (left/right) to the green column."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int = 36) -> None:
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.pos, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[:, self.size - 3:, 1] = 255
        img[16:20, self.pos:self.pos + 4] = 255
        return img

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.t = int(self.np_random.integers(0, self.size // 2)), 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = int(np.clip(self.pos + (2 if action == 1 else -2), 0, self.size - 4))
        self.t += 1
        done = self.pos >= self.size - 6
        return self._obs(), 1.0 if done else -0.01, done, self.t >= 30, {}


pytestmark = pytest.mark.usefixtures("suggested_torch_threads")


@pytest.fixture(scope="module")
def digits() -> generators.data.GenData:
    return generators.data.load("digits")


def _tiny(name: str, data: generators.data.GenData) -> generators.Generator:
    torch.manual_seed(0)
    return generators.model_for(name, data, preset="tiny")


def test_mixed_dataset_ratio_labels_and_determinism(digits: generators.data.GenData) -> None:
    real = digits.take(100, seed=0)
    cgan = _tiny("cgan", real)
    ds = MixedDataset(real, cgan, ratio=0.2, batch_size=8, seed=5)
    assert len(ds) == 125 and sum(ds.is_generated(i) for i in range(len(ds))) == 25
    x, y = ds[0]
    assert torch.equal(x, real.tensor(torch.tensor([0]))[0]) and y == real.y[0]
    gx, gy = ds[124]
    assert gx.shape == (1, 8, 8) and gx.dtype == torch.float32 and int(gy) == 24 % 10
    again = MixedDataset(real, cgan, ratio=0.2, batch_size=8, seed=5, cache=False)
    assert torch.equal(again[124][0], gx) and torch.equal(again[101][0], ds[101][0])  # any access order
    xb, yb = next(iter(DataLoader(ds, batch_size=32, shuffle=True)))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,)
    # unconditional generator, unlabeled data
    plain = MixedDataset(real.tensor(), _tiny("dcgan", real), ratio=0.5, seed=0)
    assert len(plain) == 200 and plain[150].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        MixedDataset(real, _tiny("dcgan", real), ratio=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MixedDataset(real, cgan, ratio=1.0)


def test_to_observation_matches_the_space() -> None:
    x = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    hwc = to_observation(x, gym.spaces.Box(0, 255, (16, 16, 3), np.uint8))
    assert hwc.shape == (2, 16, 16, 3) and hwc.dtype == np.uint8 and hwc.min() == 0 and hwc.max() == 255
    chw = to_observation(x, gym.spaces.Box(0.0, 1.0, (1, 8, 8), np.float32))
    assert chw.shape == (2, 1, 8, 8) and chw.dtype == np.float32 and chw.min() == 0.0 and chw.max() == 1.0


@pytest.mark.parametrize("mode", ["replace", "blend"])
def test_observation_wrapper_seeded(mode: str, digits: generators.data.GenData) -> None:
    gen = _tiny("dcgan", digits)

    def run() -> tuple[list[np.ndarray], int]:
        env = GeneratedObservations(DotEnv(), gen, p=0.5, mode=mode, pool=4, seed=0)
        obs, _ = env.reset(seed=3)
        seen = [obs]
        for _ in range(12):
            obs, *_ = env.step(1)
            seen.append(obs)
        return seen, env.augmented

    a, n = run()
    b, _ = run()
    assert 0 < n < 13 and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(o.shape == (36, 36, 3) and o.dtype == np.uint8 for o in a)
    env = DotEnv()
    plain = [env.reset(seed=3)[0]] + [env.step(1)[0] for _ in range(12)]
    assert sum(not np.array_equal(u, v) for u, v in zip(a, plain, strict=True)) == n  # the rest untouched
    with pytest.raises(ValueError, match="image Box observation space"):
        GeneratedObservations(gym.make("CartPole-v1"), gen)


def test_observation_wrapper_inside_sb3_ppo(digits: generators.data.GenData) -> None:
    from stable_baselines3 import PPO

    env = GeneratedObservations(DotEnv(), _tiny("dcgan", digits), p=0.2, seed=0)
    model = PPO("CnnPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}})
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256 and env.augmented > 10
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))


@pytest.mark.parametrize("family", ["realnvp", "ebm", "dcgan"])
def test_reward_wrapper_adds_scaled_term_exactly(family: str) -> None:
    torch.manual_seed(0)
    model = generators.make(family, preset="tiny", shape=(4,))  # CartPole observations
    term = {"realnvp": log_density, "ebm": neg_energy, "dcgan": discriminator_logit}[family](model)
    scale = -0.25
    base = gym.make("CartPole-v1")
    wrapped = GeneratorReward(gym.make("CartPole-v1"), term, scale=scale)
    o1, _ = base.reset(seed=7)
    o2, _ = wrapped.reset(seed=7)
    assert np.array_equal(o1, o2)
    for t in range(15):
        a = t % 2
        o1, r1, d1, tr1, _ = base.step(a)
        o2, r2, d2, tr2, info = wrapped.step(a)
        assert np.array_equal(o1, o2) and (d1, tr1) == (d2, tr2)
        with torch.no_grad():
            expected = float(term(torch.as_tensor(o1, dtype=torch.float32)[None])[0])
        assert info["base_reward"] == r1 and info["generator_term"] == pytest.approx(expected, abs=1e-6)
        assert r2 == pytest.approx(r1 + scale * expected, abs=1e-6)
        if d1 or tr1:
            break
    # a generator itself picks its natural term; clip bounds it
    clipped = GeneratorReward(gym.make("CartPole-v1"), model, scale=1.0, clip=1e-3)
    clipped.reset(seed=0)
    _, r, *_, info = clipped.step(0)
    assert abs(info["generator_term"]) <= 1e-3 and r == pytest.approx(1.0 + info["generator_term"])


def test_novelty_penalty_is_zero_on_real_data_and_negative_off_it() -> None:
    from generators.reward import novelty_penalty

    moons = generators.data.load("moons", max_items=512)
    flow = generators.model_for("realnvp", moons, preset="tiny")
    generators.fit(flow, moons, generators.FitConfig(steps=150, batch_size=128, lr=3e-3), progress=False)
    real = moons.tensor()
    term = novelty_penalty(flow, real, quantile=0.05, clip=10.0)
    t_real = term(real)
    assert t_real.shape == (512,) and (t_real <= 0).all()
    assert (t_real == 0).float().mean() >= 0.94  # 95% of real points are at least as likely as q
    far = torch.tensor([[6.0, 6.0], [-5.0, 7.0], [30.0, -30.0]])
    t_far = term(far)
    assert (t_far < -1.0).all() and t_far.min() == -10.0  # far off the moons: penalised, clipped
    with torch.no_grad():
        assert term.threshold == pytest.approx(float(torch.quantile(flow.log_prob(real), 0.05)), abs=1e-4)


def test_reward_wrapper_on_image_observations(digits: generators.data.GenData) -> None:
    gan = _tiny("dcgan", digits)
    env = GeneratorReward(DotEnv(), gan, scale=2.0)
    env.reset(seed=0)
    obs, r, *_, info = env.step(1)
    from generators.images import from_uint8, resize

    with gan.evaluating():  # eval mode: no dropout
        want = float(gan.discriminate(resize(from_uint8(obs), 8).mean(1, keepdim=True))[0])
    assert info["generator_term"] == pytest.approx(want, abs=1e-5)
    assert r == pytest.approx(info["base_reward"] + 2.0 * want, abs=1e-5)
    with pytest.raises(ValueError, match="no density, energy or discriminator"):
        GeneratorReward(DotEnv(), _tiny("ddpm", digits))


# --- renderer: a z-conditioned generator the dream draws with -------------------------------------


@pytest.fixture(scope="module")
def dream_run(tiny_data, tmp_path_factory: pytest.TempPathFactory):
    """A run folder: a (fresh) world model's checkpoints beside the tiny real rollouts."""
    from worldlab.world_model import WorldModel

    run = tmp_path_factory.mktemp("renderer_run")
    (run / "data").symlink_to(tiny_data, target_is_directory=True)
    WorldModel.untrained(z_size=8, hidden=32, bank=4).save(run)
    return run


@pytest.fixture(scope="module")
def trained_renderer(dream_run, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("renderer_out")
    torch.manual_seed(0)
    model, hist = generators.train_generator(
        "renderer", f"car_racing:{dream_run}", generators.FitConfig(steps=24, batch_size=16, log_every=1),
        out=out, preset="tiny", progress=False)
    return model, hist, out


def test_renderer_learns_the_runs_frames(trained_renderer, dream_run) -> None:
    from worldlab.vae import ConvVAE

    model, hist, out = trained_renderer
    assert model.config.vae == str(dream_run)  # V taken from the --data run
    v = ConvVAE.load(dream_run / "checkpoints" / "vae.pt")
    assert model.config.vae_id == v.meta["id"] and model.z_size == 8
    l1 = hist["l1"]
    assert all(np.isfinite(hist["d_loss"])) and np.mean(l1[-5:]) < np.mean(l1[:5]), l1
    assert (out / "generator.pt").exists() and (out / "samples.png").exists()
    # self-contained checkpoint: loads without V's file, draws the same frames
    loaded = generators.load(out / "generator.pt")
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    frames = loaded.render(z)
    assert frames.shape == (3, 3, 64, 64) and frames.min() >= 0 and frames.max() <= 1
    assert torch.equal(frames, model.render(z))
    # G started from V's decoder and moved away from it
    assert not torch.allclose(frames, v.decode(z), atol=1e-3)


def test_renderer_plugs_into_the_dream(trained_renderer, dream_run) -> None:
    from gymnasium.utils.env_checker import check_env

    from envs.dream import DreamEnv, DreamVectorEnv

    model, _, out = trained_renderer
    plain = DreamEnv(run_dir=dream_run, render_mode="rgb_array", obs_mode="pixels")
    drawn = DreamEnv(run_dir=dream_run, render_mode="rgb_array", obs_mode="pixels",
                     renderer=str(out / "generator.pt"))  # by checkpoint path
    o1, _ = plain.reset(seed=3)
    o2, _ = drawn.reset(seed=3)
    assert o2.shape == o1.shape == (64, 64, 3) and o2.dtype == np.uint8
    z = drawn.latents()
    expected = (model.render(z).permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()
    assert np.array_equal(o2, expected) and not np.array_equal(o1, o2)  # drawn by the renderer, not V
    frame = drawn.render()
    assert frame.shape == (64, 64, 3) and np.array_equal(frame, o2)
    obs, *_ = drawn.step(drawn.action_space.sample())
    assert obs.shape == (64, 64, 3)
    check_env(DreamEnv(run_dir=dream_run, obs_mode="pixels", renderer=model), skip_render_check=True)
    # the vector dream and gymnasium.make take it too
    vec = DreamVectorEnv(4, run_dir=dream_run, obs_mode="pixels", render_mode="rgb_array", renderer=model)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, 64, 64, 3)
    env = gym.make("worldlab/Dream-v0", run_dir=dream_run, render_mode="rgb_array", renderer=model)
    env.reset(seed=0)
    assert env.render().shape == (64, 64, 3)


def test_renderer_refuses_another_world_models_v(trained_renderer, tmp_path) -> None:
    from envs.dream import DreamEnv
    from worldlab.world_model import WorldModel

    model, _, _ = trained_renderer
    with pytest.raises(ValueError, match="draws z of size 8, this world model's V has z 16"):
        DreamEnv(world_model=WorldModel.untrained(z_size=16, hidden=32, bank=2), renderer=model)
    other = tmp_path / "other"
    WorldModel.untrained(z_size=8, hidden=32, bank=2, seed=1).save(other)  # same size, another V
    with pytest.raises(ValueError, match="trained on V .* this world model's V is"):
        DreamEnv(run_dir=other, renderer=model)
    with pytest.raises(ValueError, match="renderer needs the V whose latents it renders"):
        generators.make("renderer")
    with pytest.raises(FileNotFoundError, match="no V checkpoint at"):
        generators.make("renderer", vae=str(tmp_path / "nothing"))
