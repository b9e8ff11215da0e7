"""The latent prior (issue 17): a diffusion model over V's latents, its sampler, guidance,
progressive distillation, its data source and its use as the dream's start states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import generators
from generators.latent_prior import LatentPrior, LatentPriorConfig

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


@pytest.fixture(autouse=True, scope="module")
def _threads():
    """One torch thread: these small MLPs wait on a second thread more than it helps them."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def moons():
    return generators.data.load("moons", max_items=2000)


@pytest.fixture(scope="module")
def trained(moons) -> LatentPrior:
    torch.manual_seed(0)
    model = generators.model_for("latent_prior", moons, preset="small", steps=8)
    generators.fit(model, moons, generators.FitConfig(steps=250, batch_size=128, lr=1e-3), progress=False)
    return model


def test_latents_source_reads_a_runs_encoded_frames() -> None:
    data = generators.data.load(f"latents:{OLD_RUN}")
    mu = np.concatenate([np.load(p)["mu"] for p in sorted((OLD_RUN / "latents").glob("ep_*.npz"))])
    assert data.kind == "points" and data.shape == (mu.shape[1],) and len(data) == len(mu)
    assert np.allclose(np.sort(data.x.numpy(), axis=0), np.sort(mu, axis=0))
    with pytest.raises(FileNotFoundError, match="no latents in .*train a world model first"):
        generators.data.load("latents:/nonexistent/run")


def test_samples_follow_the_data_and_more_steps_do_better(trained: LatentPrior, moons) -> None:
    from generators.metrics import frechet_distance

    real = moons.x
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    z = {s: trained.sample(2000, steps=s, noise=noise) for s in (1, 8)}
    fd = {s: frechet_distance(z[s].numpy(), real.numpy()) for s in z}
    assert fd[8] < fd[1], fd
    assert torch.equal(trained.sample(5, generator=3), trained.sample(5, generator=3))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        trained.sample(2, steps=0)


def test_a_bimodal_latent_distribution_is_learned_not_blurred() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 0.0, -1.0]])
    x = centres[torch.randint(0, 2, (4000,), generator=g)] + 0.25 * torch.randn(4000, 3, generator=g)
    data = generators.data.GenData("two blobs", x)
    torch.manual_seed(0)
    model = generators.model_for("latent_prior", data, preset="small", steps=4)
    generators.fit(model, data, generators.FitConfig(steps=400, batch_size=128, lr=3e-3), progress=False)

    def near_a_mode(z: torch.Tensor) -> float:  # share within 3 standard deviations of a centre
        return float((torch.cdist(z, centres).min(1).values < 0.75 * 3 ** 0.5).float().mean())

    gauss = torch.randn(4000, 3, generator=g) * x.std(0) + x.mean(0)  # the same mean and spread, one mode
    assert near_a_mode(model.sample(4000, generator=1)) > 0.9 > 0.5 > near_a_mode(gauss)


def test_guidance_steers_samples_to_their_condition(moons) -> None:
    cond = torch.nn.functional.one_hot(moons.y, 2).float()
    data = generators.data.GenData("moons+label", moons.x, cond)  # (z, cond) batches via the labels slot
    torch.manual_seed(0)
    model = LatentPrior(LatentPriorConfig(shape=(2,), width=64, blocks=2, cond_dim=2, steps=8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        idx = torch.randint(0, len(data), (128,), generator=g)
        loss = model.loss((data.x[idx], cond[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    centres = torch.stack([moons.x[moons.y == k].mean(0) for k in range(2)])
    for k in range(2):
        want = torch.nn.functional.one_hot(torch.tensor(k), 2).float()
        for w in (1.0, 3.0):
            z = model.sample(500, cond=want, generator=0, guidance=w)
            d = torch.cdist(z, centres)
            assert (d[:, k] < d[:, 1 - k]).float().mean() > 0.8, (k, w)
    assert not torch.equal(model.sample(8, cond=want, generator=0, guidance=1.0),
                           model.sample(8, cond=want, generator=0, guidance=3.0))
    with pytest.raises(ValueError, match=r"cond must be \(4, 2\) or \(2,\)"):
        model.sample(4, cond=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="trains on \\(z, cond\\) batches"):
        model.loss(data.x[:8])
    with pytest.raises(ValueError, match="unconditional"):
        LatentPrior(LatentPriorConfig(shape=(2,))).sample(2, cond=torch.zeros(2, 2))


def test_progressive_distillation_halves_the_steps(trained: LatentPrior, moons) -> None:
    import copy

    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    teacher = trained.sample(1000, steps=8, noise=noise)
    before = (trained.sample(1000, steps=2, noise=noise) - teacher).pow(2).sum(1).mean()
    student = copy.deepcopy(trained)
    losses = student.distill(moons, teacher_steps=8, rounds=2, steps_per_round=150, batch_size=128, lr=1e-3)
    assert len(losses) == 2 and all(np.isfinite(losses)) and student.config.steps == 2
    after = (student.sample(1000, noise=noise) - teacher).pow(2).sum(1).mean()
    assert after < 0.5 * before, (float(after), float(before))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*rounds"):
        student.distill(moons, teacher_steps=6, rounds=2)


def test_dream_starts_drawn_from_the_prior() -> None:
    from envs.dream import DreamVectorEnv

    data = generators.data.load(f"latents:{OLD_RUN}")
    torch.manual_seed(0)
    prior = generators.model_for("latent_prior", data, preset="tiny")
    generators.fit(prior, data, generators.FitConfig(steps=20, batch_size=64), progress=False)
    env = DreamVectorEnv(num_envs=4, run_dir=OLD_RUN)
    starts = prior.sample(4, generator=0)
    obs, _ = env.reset(seed=0, options={"z0": starts})
    assert torch.allclose(torch.as_tensor(obs)[:, :starts.shape[1]], starts)
    env.close()
