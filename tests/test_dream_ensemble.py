"""A dream that does not lie (issue 13): an ensemble of Ms, per-dream dropout, the disagreement
penalty, and dreams that start at real mid-episode states.

The dream-step checks run on freshly initialised Ms (different seeds: different weights); the
training, storage and mid-episode bank checks on a tiny run folder of real data with two members
trained a few steps by the real stages.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.controller import ControllerConfig
from agents.fitness import DreamFitness
from agents.world_models.config import DreamConfig, EnsembleConfig, RunConfig, override
from agents.world_models.stages import (
    HOLDOUT,
    bootstrap_episodes,
    encode_latents,
    evolve_controller,
    mid_episode_bank,
    train_memories,
    train_memory,
    train_vision,
)
from envs.dream import DreamEnv, DreamVectorEnv
from envs.dream_step import EnsembleDreamStep, MDRNNDreamStep, make_dream_step
from worldlab.io import torch_load
from worldlab.mdrnn import MDRNNConfig
from worldlab.rundir import RunDir
from worldlab.storage import Manifest, load_shard, split_episodes
from worldlab.training import TrainConfig
from worldlab.world_model import WorldModel, WorldModelError

Z, H, G, LIMIT = 8, 16, 3, 30


def ensemble_wm(k: int = 3, mid_bank: dict[str, torch.Tensor] | None = None, done_bias: float | None = None
                ) -> WorldModel:
    """k freshly initialised Ms of one architecture (seeds 0..k-1) as one world model (``done_bias``:
    their done logits' bias, e.g. -20 for dreams that never end early)."""
    base = WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, bank=8, max_episode_steps=LIMIT, seed=0)
    members = [WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, seed=s).mdrnn for s in range(1, k)]
    if done_bias is not None:
        with torch.no_grad():
            for m in [base.mdrnn, *members]:
                m.head.bias[-1] = done_bias
    return WorldModel(base.vae, base.mdrnn, task=base.task, action_space=base.action_space, max_episode_steps=LIMIT,
                      start_mu=base.start_mu, start_logvar=base.start_logvar, members=members, mid_bank=mid_bank)


@pytest.fixture(scope="module")
def wm() -> WorldModel:
    return ensemble_wm(3)


def play(env: DreamVectorEnv, seed: int, steps: int = 12) -> dict[str, torch.Tensor]:
    """obs, rewards and flags of ``steps`` steps of fixed random actions after ``reset(seed)``."""
    g = torch.Generator().manual_seed(99)
    obs = [env.reset_torch(seed=seed).clone()]
    rew, done = [], []
    for _ in range(steps):
        o, r, te, tr = env.step_torch(torch.rand(env.num_envs, 3, generator=g) * 2 - 1)
        obs.append(o.clone())
        rew.append(r.clone())
        done.append(te | tr)
    return {"obs": torch.stack(obs), "reward": torch.stack(rew), "done": torch.stack(done)}


# -- the dream step ------------------------------------------------------------------------------


def test_members_differ(wm: WorldModel) -> None:
    z0 = wm.start_mu[:4]
    a = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    nxt = []
    for m in wm.ensemble:
        s = make_dream_step(m, 4, "cpu")
        s.reset_rows(slice(None), z0)
        s.set_actions(a)
        s.step(deterministic=True)
        nxt.append(s.z.clone())
    assert wm.num_members == 3
    assert not torch.allclose(nxt[0], nxt[1]) and not torch.allclose(nxt[1], nxt[2])


def test_one_m_without_dropout_is_todays_step(wm: WorldModel) -> None:
    single = WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, bank=8, max_episode_steps=LIMIT, seed=0)
    assert type(make_dream_step(single.mdrnn, 4, "cpu")) is MDRNNDreamStep
    for kw in ({"disagreement_penalty": 2.0}, {"member_mode": "step"}):  # one M never disagrees with itself
        assert type(make_dream_step(single.mdrnn, 4, "cpu", **kw)) is MDRNNDreamStep
    # the first member of an ensemble, alone: the very dream of that M alone
    alone = play(DreamVectorEnv(6, world_model=wm, members=1, disagreement_penalty=1.0), seed=4)
    plain = play(DreamVectorEnv(6, world_model=single), seed=4)
    assert type(DreamVectorEnv(6, world_model=wm, members=1)._core.dream_step) is MDRNNDreamStep
    for key in plain:
        assert torch.equal(alone[key], plain[key]), key
    assert type(DreamVectorEnv(6, world_model=wm)._core.dream_step) is EnsembleDreamStep  # None: every member
    with pytest.raises(ValueError, match="members must be an integer in 1..3"):
        DreamVectorEnv(6, world_model=wm, members=4)


@pytest.mark.parametrize("kw", [{}, {"dropout": 0.2}, {"disagreement_penalty": 0.5}, {"member_mode": "step"},
                                {"member_mode": "step", "dropout": 0.1, "disagreement_penalty": 0.5}])
def test_same_seed_same_dream_other_seed_another(wm: WorldModel, kw: dict) -> None:
    runs = [play(DreamVectorEnv(10, world_model=wm, **kw), seed=s) for s in (3, 3, 4)]
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    assert not torch.equal(runs[0]["obs"], runs[2]["obs"])


def test_dropout_alone_on_one_m_same_seed_same_dream() -> None:
    single = WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, bank=8, max_episode_steps=LIMIT, seed=0)
    a, b = (play(DreamVectorEnv(10, world_model=single, dropout=0.1), seed=3) for _ in range(2))
    assert type(DreamVectorEnv(2, world_model=single, dropout=0.1)._core.dream_step) is EnsembleDreamStep
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = play(DreamVectorEnv(10, world_model=single), seed=3)
    assert not torch.equal(a["obs"], plain["obs"])  # the mask changes the dream...
    assert torch.equal(a["obs"][0], plain["obs"][0])  # ...but not where it starts


def test_a_sub_env_dreams_as_the_single_env_with_its_seed(wm: WorldModel) -> None:
    venv = DreamVectorEnv(5, world_model=wm, dropout=0.1, deterministic=True)
    obs = venv.reset_torch(seed=[11, 12, 13, 14, 15])
    step = venv._core.dream_step
    for i in range(5):
        env = DreamEnv(world_model=wm, dropout=0.1, deterministic=True)
        o, _ = env.reset(seed=11 + i)
        assert np.allclose(o, obs[i].numpy(), atol=1e-6)
        assert env._core.dream_step.members_of_rows[0] == step.members_of_rows[i]
        assert torch.equal(env._core.dream_step.keep[0], step.keep[i])


@pytest.mark.parametrize("members", [[2, 0, 2, 1, 2, 2, 0, 2, 1, 2, 2],  # blocks padded to 8 rows: one bmm
                                     [2] * 30 + [0] * 3 + [1] * 7])     # unequal blocks: a GEMM per member
def test_the_grouped_step_equals_each_member_stepped_alone(wm: WorldModel, members: list[int]) -> None:
    n = len(members)
    members = torch.tensor(members)
    z0 = torch.randn(n, Z, generator=torch.Generator().manual_seed(1))
    acts = torch.rand(6, n, 3, generator=torch.Generator().manual_seed(2))
    for deterministic in (False, True):
        ens = make_dream_step(wm.mdrnn, n, "cpu", members=list(wm.members))
        assert isinstance(ens, EnsembleDreamStep) and not ens.full
        alone = [MDRNNDreamStep(m, n) for m in wm.ensemble]
        ens.reset_rows(slice(None), z0, members=members)
        assert ens.batched == (n == 11)
        for s in alone:
            s.reset_rows(slice(None), z0)
        for t in range(6):
            ens.set_actions(acts[t])
            for s in alone:
                s.set_actions(acts[t])
            r, d = ens.step(1.1, deterministic, torch.Generator().manual_seed(t))
            outs = [s.step(1.1, deterministic, torch.Generator().manual_seed(t)) for s in alone]
            want = torch.stack([s.obs for s in alone])[members, torch.arange(n)]
            torch.testing.assert_close(ens.obs, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r, torch.stack([o[0] for o in outs])[members, torch.arange(n)],
                                       atol=1e-5, rtol=1e-5)
            assert torch.equal(d, torch.stack([o[1] for o in outs])[members, torch.arange(n)])


def test_stepping_every_member_follows_the_driving_members_draws(wm: WorldModel) -> None:
    n = 7
    z0 = torch.randn(n, Z, generator=torch.Generator().manual_seed(1))
    a = torch.rand(n, 3, generator=torch.Generator().manual_seed(2))
    members = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    for mode, pen in (("episode", 0.3), ("step", 0.0)):
        ens = make_dream_step(wm.mdrnn, n, "cpu", members=list(wm.members), member_mode=mode,
                              disagreement_penalty=pen)
        assert isinstance(ens, EnsembleDreamStep) and ens.full
        alone = [MDRNNDreamStep(m, n) for m in wm.ensemble]
        ens.reset_rows(slice(None), z0, members=members)
        for s in alone:
            s.reset_rows(slice(None), z0)
        for t in range(5):
            ens.set_actions(a)
            for s in alone:
                s.set_actions(a)
            r, d = ens.step(1.0, False, torch.Generator().manual_seed(t))
            outs = [s.step(1.0, False, torch.Generator().manual_seed(t)) for s in alone]
            drive = ens.driver[:n] if mode == "step" else members
            rows = torch.arange(n)
            torch.testing.assert_close(ens.z, torch.stack([s.z for s in alone])[drive, rows], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r + pen * ens.disagreement,
                                       torch.stack([o[0] for o in outs])[drive, rows], atol=1e-5, rtol=1e-5)
            assert torch.equal(d, torch.stack([o[1] for o in outs])[drive, rows])
            seen = 0 if mode == "step" else members  # the controller's h: the dream's member (step mode: member 0)
            torch.testing.assert_close(ens.h, torch.stack([s.h for s in alone])[seen, rows] if mode == "episode"
                                       else alone[0].h, atol=1e-5, rtol=1e-5)
            for s in alone:  # every member reads the latent the driving member sampled
                s.x[:n, :Z] = ens.z
        if mode == "step":
            assert len(set(ens.driver[:n].tolist())) > 1


def test_a_pessimistic_dream_ends_where_any_member_expects_the_end() -> None:
    wm = ensemble_wm(3, done_bias=-20.0)  # members 0 and 1 never end a dream...
    with torch.no_grad():
        wm.members[1].head.bias[-1] = 20.0  # ... member 2 always does
    n = 6
    z0 = torch.randn(n, Z, generator=torch.Generator().manual_seed(3))
    a = torch.rand(n, 3, generator=torch.Generator().manual_seed(4))
    members = torch.tensor([0, 1, 2, 0, 1, 2])
    steps = {}
    for mode in ("member", "max"):
        steps[mode] = s = make_dream_step(wm.mdrnn, n, "cpu", members=list(wm.members), done_mode=mode)
        assert isinstance(s, EnsembleDreamStep) and s.full == (mode == "max")
        s.reset_rows(slice(None), z0, members=members)
        s.set_actions(a)
    r_member, d_member = steps["member"].step(1.0, False, torch.Generator().manual_seed(0))
    r_max, d_max = steps["max"].step(1.0, False, torch.Generator().manual_seed(0))
    assert torch.equal(d_member, members == 2)  # each dream's own member decides...
    assert bool(d_max.all())  # ... or the member most sure of the end, whoever drives the dream
    # the same dreams otherwise: the driving member's latent and reward
    torch.testing.assert_close(steps["max"].z, steps["member"].z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_max, r_member, atol=1e-5, rtol=1e-5)
    for s in steps.values():  # deterministic dreams: the largest logit's sign
        s.reset_rows(slice(None), z0, members=members)
        s.set_actions(a)
    assert torch.equal(steps["member"].step(1.0, True)[1], members == 2) and bool(steps["max"].step(1.0, True)[1].all())
    # one M is never more pessimistic than itself: today's step
    single = WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, bank=8, max_episode_steps=LIMIT, seed=0)
    assert type(make_dream_step(single.mdrnn, 4, "cpu", done_mode="max")) is MDRNNDreamStep
    # through the vector env and the fitness, with a statistical check of the rate: dreams of members
    # whose done probabilities are 0.5 and ~0 end at the rate of the larger, whichever member drives
    wm2 = ensemble_wm(2, done_bias=-20.0)
    with torch.no_grad():
        wm2.members[0].head.weight[-1] = 0.0
        wm2.members[0].head.bias[-1] = 0.0  # member 1: p = 0.5 every step
    ended = {}
    for mode in ("member", "max"):
        env = DreamVectorEnv(400, world_model=wm2, done_mode=mode, max_episode_steps=100)
        env.reset_torch(seed=0)
        ended[mode] = float(env.step_torch(torch.zeros(400, 3))[2].float().mean())
    assert 0.15 < ended["member"] < 0.35 and 0.4 < ended["max"] < 0.6  # half the dreams' member at 0.5, vs all
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    fit = DreamFitness(wm, cfg, 2, 2, max_steps=8, seed=1, done_mode="max")
    assert fit.env._core.dream_step.done_mode == "max"
    params = np.random.default_rng(0).standard_normal((2, cfg.num_params)) * 0.1
    assert np.array_equal(fit(params, 0), fit(params, 0))


def test_dropout_masks_are_fixed_within_a_dream_and_fresh_at_each_reset() -> None:
    p = 0.25
    env = DreamVectorEnv(8, world_model=ensemble_wm(3, done_bias=-20.0), dropout=p, max_episode_steps=100)
    env.reset_torch(seed=0)
    step = env._core.dream_step
    keep = step.keep.clone()
    assert set(keep.unique().tolist()) <= {0.0, float(torch.tensor(1.0 / (1.0 - p)))}
    assert 0.05 < float((keep == 0).float().mean()) < 0.5
    assert not torch.equal(keep[0], keep[1])  # one mask per dream
    for _ in range(5):
        env.step_torch(torch.zeros(8, 3))
        assert torch.equal(step.keep, keep)  # fixed within the dreams' episodes
    env.reset_torch(rows=torch.tensor([True] + [False] * 7))
    assert not torch.equal(step.keep[0], keep[0]) and torch.equal(step.keep[1:], keep[1:])
    env.reset_torch(seed=0)
    assert torch.equal(step.keep, keep)  # the same seed draws the same masks


def test_deterministic_dreams_have_no_dropout(wm: WorldModel) -> None:
    with_p = play(DreamVectorEnv(6, world_model=wm, dropout=0.5, deterministic=True), seed=2)
    without = play(DreamVectorEnv(6, world_model=wm, deterministic=True), seed=2)
    for key in with_p:  # the same member draws, masks drawn but not applied
        torch.testing.assert_close(with_p[key], without[key], atol=1e-6, rtol=1e-6)


def test_the_disagreement_penalty_lowers_the_reward_where_members_disagree(wm: WorldModel) -> None:
    runs = {pen: play(DreamVectorEnv(8, world_model=wm, disagreement_penalty=pen, max_episode_steps=100), seed=5)
            for pen in (0.5, 2.0)}
    env = DreamVectorEnv(8, world_model=wm, disagreement_penalty=1.0)
    env.reset_torch(seed=5)
    env.step_torch(torch.zeros(8, 3))
    dis = env._core.dream_step.disagreement
    assert dis.shape == (8,) and bool((dis > 0).all())  # members of different weights disagree
    a, b = runs[0.5], runs[2.0]
    assert torch.equal(a["obs"], b["obs"]) and torch.equal(a["done"], b["done"])  # the same dreams...
    gap = a["reward"] - b["reward"]  # ... rewarded 1.5 x disagreement less (0 where autoreset zeroed it)
    assert bool((gap >= 0).all()) and float(gap.max()) > 0
    # with no penalty the same dreams, stepped member by member instead of by every member
    free = play(DreamVectorEnv(8, world_model=wm, max_episode_steps=100), seed=5)
    torch.testing.assert_close(free["obs"], a["obs"], atol=1e-4, rtol=1e-4)
    assert bool((free["reward"] >= a["reward"] - 1e-5).all())
    # one M: no disagreement, no penalty
    single = WorldModel.untrained(z_size=Z, hidden=H, gaussians=G, bank=8, max_episode_steps=LIMIT, seed=0)
    p, q = (play(DreamVectorEnv(8, world_model=single, disagreement_penalty=pen), seed=5) for pen in (0.0, 3.0))
    assert torch.equal(p["reward"], q["reward"])


def test_bad_ensemble_options_fail_with_one_line(wm: WorldModel) -> None:
    for kw, msg in (({"member_mode": "sometimes"}, "member_mode must be one of episode, step"),
                    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
                    ({"disagreement_penalty": -1.0}, "disagreement_penalty must be >= 0"),
                    ({"done_mode": "min"}, "done_mode must be one of member, max"),
                    ({"start": "middle"}, "start must be one of first, mid"),
                    ({"start": "mid"}, "start='mid' needs the world model's bank")):
        with pytest.raises(ValueError, match=msg) as e:
            DreamVectorEnv(2, world_model=wm, **kw)
        assert "\n" not in str(e.value)


def test_fitness_passes_the_options_to_its_dreams(wm: WorldModel) -> None:
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    params = np.random.default_rng(0).standard_normal((3, cfg.num_params)) * 0.1
    fit = DreamFitness(wm, cfg, 3, 2, max_steps=8, seed=1, dropout=0.1, disagreement_penalty=0.5)
    step = fit.env._core.dream_step
    assert isinstance(step, EnsembleDreamStep) and step.num_members == 3 and step.full and step.dropout == 0.1
    assert np.array_equal(fit(params, 0), fit(params, 0))
    plain = DreamFitness(wm, cfg, 3, 2, max_steps=8, seed=1, members=1)
    assert type(plain.env._core.dream_step) is MDRNNDreamStep


# -- mid-episode starts on a synthetic bank --------------------------------------------------------


def synthetic_bank(k: int, b: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"mu": torch.randn(b, Z, generator=g), "logvar": torch.full((b, Z), -3.0),
            "h": torch.rand(k, b, H, generator=g) - 0.5, "c": torch.randn(k, b, H, generator=g)}


@pytest.mark.parametrize("k", [1, 3])
def test_mid_episode_starts_begin_at_the_banked_state(k: int) -> None:
    bank = synthetic_bank(k)
    wm = ensemble_wm(k, mid_bank=bank)
    env = DreamVectorEnv(6, world_model=wm, start="mid", deterministic=True)
    obs = env.reset_torch(seed=0)
    members = env._core.dream_step.members_of_rows if k > 1 else torch.zeros(6, dtype=torch.int64)
    for i in range(6):  # deterministic: z0 is a banked mean exactly, h0 that member's banked state there
        j = int(torch.nonzero((bank["mu"] == obs[i, :Z]).all(1))[0])
        assert torch.equal(obs[i, Z:], bank["h"][int(members[i]), j])
    assert torch.equal(obs, env.reset_torch(seed=0))  # the same seed, the same starts
    assert not torch.equal(obs, env.reset_torch(seed=1))
    # the first step goes on from the banked (h, c): the same as stepping M from that state by hand
    a = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    obs = env.reset_torch(seed=0)
    nxt = env.step_torch(a)[0]
    for i in range(6):
        j = int(torch.nonzero((bank["mu"] == obs[i, :Z]).all(1))[0])
        m = wm.ensemble[int(members[i])]
        pred, (h1, _) = m.step(obs[i:i + 1, :Z], a[i:i + 1], (bank["h"][int(members[i]), j:j + 1],
                                                                bank["c"][int(members[i]), j:j + 1]))
        torch.testing.assert_close(nxt[i, Z:], h1[0], atol=1e-5, rtol=1e-5)
    # sampled starts add the banked frame's own noise, as first-frame starts do; z0 given: an empty past
    env = DreamVectorEnv(6, world_model=wm, start="mid")
    assert not torch.equal(env.reset_torch(seed=0)[:, :Z], obs[:, :Z])
    assert bool((env.reset_torch(z0=obs[:, :Z])[:, Z:] == 0).all())


def test_a_single_env_starts_mid_episode_where_the_sub_env_does() -> None:
    wm = ensemble_wm(2, mid_bank=synthetic_bank(2))
    venv = DreamVectorEnv(3, world_model=wm, start="mid")
    obs = venv.reset_torch(seed=[7, 8, 9])
    o, _ = DreamEnv(world_model=wm, start="mid").reset(seed=8)
    assert np.allclose(o, obs[1].numpy(), atol=1e-6)


# -- storage ---------------------------------------------------------------------------------------


def test_an_ensemble_and_its_bank_round_trip_through_a_run_folder(tmp_path: Path) -> None:
    wm = ensemble_wm(3, mid_bank=synthetic_bank(3))
    wm.save(tmp_path)
    run = RunDir(tmp_path)
    assert run.mdrnn_member(0) == run.mdrnn and run.mdrnn_member(2).is_file()
    back = WorldModel.load(tmp_path)
    assert back.num_members == 3
    for a, b in zip(wm.ensemble, back.ensemble, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(wm.mid_bank[k], back.mid_bank[k]) for k in WorldModel.MID_KEYS)
    assert torch.equal(play(DreamVectorEnv(4, world_model=wm, start="mid"), 1)["obs"],
                       play(DreamVectorEnv(4, world_model=back, start="mid"), 1)["obs"])
    # a single M's folder has no member files and no mid bank
    single = tmp_path / "single"
    single.mkdir()
    WorldModel.untrained(z_size=Z, hidden=H, gaussians=G).save(single)
    assert WorldModel.load(single).num_members == 1 and WorldModel.load(single).mid_bank is None
    assert not RunDir(single).mdrnn_member(1).exists()
    # a member overwritten by another training, or missing: one line
    other = ensemble_wm(3)
    other.members[1].save(run.mdrnn_member(2), {"id": "another"})
    with pytest.raises(WorldModelError, match="is not the ensemble member 2") as e:
        WorldModel.load(tmp_path)
    assert "\n" not in str(e.value)
    run.mdrnn_member(2).unlink()
    with pytest.raises(FileNotFoundError, match=r"ensemble member 2 of 3\) is missing"):
        WorldModel.load(tmp_path)


def test_config_fields_and_one_line_errors() -> None:
    cfg = RunConfig()
    assert cfg.ensemble == EnsembleConfig(members=1, member_mode="episode", dropout=0.0, disagreement_penalty=0.0)
    assert (cfg.dream.start, cfg.dream.start_bank, cfg.dream.horizon) == ("first", 2048, None)
    assert RunConfig.from_dict(RunConfig().to_dict()) == cfg
    on = override(cfg, ["ensemble.members=5", "ensemble.member_mode=step", "ensemble.dropout=0.1",
                        "ensemble.disagreement_penalty=1.5", "dream.start=mid", "dream.horizon=200"])
    assert on.ensemble == EnsembleConfig(5, "step", 0.1, 1.5) and on.dream.steps == 200
    assert RunConfig.from_dict(on.to_dict()) == on
    for bad, msg in (("ensemble.members=0", "ensemble.members must be >= 1"),
                     ("ensemble.member_mode=often", "ensemble.member_mode must be one of episode, step"),
                     ("ensemble.dropout=1", r"ensemble.dropout must be in \[0, 1\)"),
                     ("ensemble.dropout=-0.1", r"ensemble.dropout must be in \[0, 1\)"),
                     ("ensemble.disagreement_penalty=-1", "ensemble.disagreement_penalty must be >= 0"),
                     ("ensemble.disagreement_penalty=1", "needs ensemble.members >= 2"),
                     ("ensemble.done_mode=mean", "ensemble.done_mode must be one of member, max"),
                     ("ensemble.done_mode=max", "ensemble.done_mode=max needs ensemble.members >= 2"),
                     ("dream.start=middle", "dream.start must be one of first, mid"),
                     ("dream.start_bank=0", "dream.start_bank must be >= 1"),
                     ("dream.horizon=50", "dream.horizon \\(50\\) applies to mid-episode starts only"),
                     ("dream.done_bias=NaN", "dream.done_bias must be a finite number"),
                     ("dream.done_bias=inf", "dream.done_bias must be a finite number")):
        with pytest.raises(ValueError, match=msg) as e:
            override(cfg, [bad])
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="ensemble.members must be an integer"):
        EnsembleConfig(members=2.5)  # type: ignore[arg-type]


def test_a_done_bias_multiplies_the_odds_of_an_end_in_a_copy() -> None:
    wm2 = ensemble_wm(2, done_bias=math.log(0.1 / 0.9))  # every member: an end with probability 0.1 at every step
    with torch.no_grad():
        for m in wm2.ensemble:
            m.head.weight[-1] = 0.0
    assert wm2.with_done_bias(0.0) is wm2
    biased = wm2.with_done_bias(math.log(3.0))  # odds 1/9 -> 1/3: probability 0.25
    for m, b in zip(wm2.ensemble, biased.ensemble, strict=True):
        assert b is not m and float(b.head.bias.detach()[-1]) == pytest.approx(float(m.head.bias.detach()[-1]) + math.log(3.0))
        assert float(m.head.bias.detach()[-1]) == pytest.approx(math.log(0.1 / 0.9))  # the world model given is unchanged
        assert torch.equal(b.head.bias[:-1], m.head.bias[:-1]) and torch.equal(b.head.weight, m.head.weight)
        assert all(torch.equal(x, y) for x, y in zip(b.rnn.parameters(), m.rnn.parameters(), strict=True))
    assert biased.vae is wm2.vae and torch.equal(biased.start_mu, wm2.start_mu)
    ended, paid = {}, {}
    for name, w in (("plain", wm2), ("biased", biased)):
        env = DreamVectorEnv(2000, world_model=w, max_episode_steps=100)
        env.reset_torch(seed=0)
        _, paid[name], te, _ = env.step_torch(torch.zeros(2000, 3))
        ended[name] = float(te.float().mean())
    assert 0.08 < ended["plain"] < 0.12 and 0.22 < ended["biased"] < 0.28
    assert torch.equal(paid["plain"], paid["biased"])  # the same dreams otherwise: the same draws, the same rewards
    from agents.ablation import variant_options

    # the dream ablation's variant: DreamFitness(done_bias=1.6)
    assert variant_options("biased+mid")["done_bias"] == 1.6 and variant_options("mid")["done_bias"] == 0.0


def test_evolution_dreams_with_the_done_bias(ens_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.world_models.stages as stages

    run = RunDir(tmp_path / "run")
    shutil.copytree(ens_run, run.root)
    cfg = override(tiny_cfg(), ["eval.gap_every=0", "cma.popsize=4", "cma.rollouts=2", "cma.generations=1",
                                "dream.compile=false", "dream.done_bias=1.5", "dream.max_steps=8"])
    wm = WorldModel.load(run)
    before = [float(m.head.bias.detach()[-1]) for m in wm.ensemble]
    seen = []

    def fitness(*args: object, **kw: object) -> DreamFitness:
        seen.append(DreamFitness(*args, **kw))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(stages, "DreamFitness", fitness)
    evolve_controller(run, cfg, 0, wm, lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    assert seen
    for fit in seen:  # every member's done logit shifted in the dream; the run's world model as it was
        dreamt = fit.env._core.wm
        assert dreamt is not wm and [float(m.head.bias.detach()[-1]) for m in wm.ensemble] == before
        assert [float(b.head.bias.detach()[-1]) for b in dreamt.ensemble] == pytest.approx([x + 1.5 for x in before])


# -- training an ensemble on real data -------------------------------------------------------------


def tiny_cfg(members: int = 2, **dream: object) -> RunConfig:
    return RunConfig(vae_train=TrainConfig(steps=8, lr=1e-3, log_every=4, checkpoint_every=8), vae_batch=32,
                     mdrnn=MDRNNConfig(hidden=32), mdrnn_train=TrainConfig(steps=6, lr=3e-3, log_every=3,
                                                                        checkpoint_every=3),
                     mdrnn_batch=4, seq_len=32, ensemble=EnsembleConfig(members=members),
                     dream=DreamConfig(**dream))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ens_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real data with V, the latents and a 2-member M (mid-episode bank of 16) trained."""
    run = tmp_path_factory.mktemp("ens_run")
    shutil.copytree(tiny_data, run / "data")
    cfg = tiny_cfg(start="mid", start_bank=16)
    vae = train_vision(run, cfg, progress=False, tensorboard=False)
    encode_latents(run, cfg, vae, progress=False)
    train_memories(run, cfg, progress=False, tensorboard=False)
    return run


def test_members_train_on_different_bootstrap_resamples(ens_run: Path) -> None:
    run = RunDir(ens_run)
    wm = WorldModel.load(run)
    assert wm.num_members == 2 and run.mdrnn_member(1).is_file() and run.mdrnn_member_train(1).is_file()
    m0, m1 = wm.ensemble
    assert m0.meta["members"] == [m1.meta["id"]] and (m0.meta["member"], m1.meta["member"]) == (0, 1)
    e0, e1 = m0.meta["episodes"], m1.meta["episodes"]
    train_eps, held = split_episodes(Manifest.open(run.latents), HOLDOUT, 0)
    assert e0 == bootstrap_episodes(train_eps, 0, 0) and e1 == bootstrap_episodes(train_eps, 0, 1)
    assert e0 != e1 and len(e0) == len(e1) == len(train_eps) and set(e0) | set(e1) <= set(train_eps)
    assert m0.meta["heldout"] == held
    eps = list(range(40))
    assert bootstrap_episodes(eps, 0, 1) == bootstrap_episodes(eps, 0, 1)  # seeded by (seed, member)
    assert bootstrap_episodes(eps, 0, 1) != bootstrap_episodes(eps, 0, 2) != bootstrap_episodes(eps, 1, 2)
    assert m0.meta["steps"] == m1.meta["steps"] == 6
    # different data: different weights from the shared initialisation, different next latents
    assert not torch.equal(m0.head.weight, m1.head.weight)
    steps = [make_dream_step(m, 2, "cpu") for m in wm.ensemble]
    for s in steps:
        s.reset_rows(slice(None), wm.start_mu[:2])
        s.set_actions(torch.zeros(2, 3))
        s.step(deterministic=True)
    assert not torch.allclose(steps[0].z, steps[1].z)


def test_an_ensemble_resumes_without_redoing(ens_run: Path, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    shutil.copytree(ens_run, run.root)
    cfg = tiny_cfg(start="mid", start_bank=16)
    ids = [m.meta["id"] for m in WorldModel.load(run).ensemble]
    assert [m.meta["id"] for m in train_memories(run, cfg, progress=False, tensorboard=False)] == ids  # finished
    assert train_memory(run, cfg, progress=False, tensorboard=False).meta["id"] == ids[0]
    run.mdrnn.unlink()  # killed before member 0 was written: member 1 is kept, member 0 trained again
    kept = run.mdrnn_member(1).stat().st_mtime_ns
    again = train_memories(run, cfg, progress=False, tensorboard=False)
    assert run.mdrnn.exists() and run.mdrnn_member(1).stat().st_mtime_ns == kept
    assert [m.meta["id"] for m in again] == ids  # member 0 written again: the same weights, so the same id
    assert WorldModel.load(run).ensemble[0].meta["members"] == [ids[1]]
    # killed inside member 1's training: it goes on from its own resumable state, not from scratch
    before = {k: v.clone() for k, v in again[1].state_dict().items()}
    run.mdrnn_member(1).unlink()
    run.mdrnn.unlink()
    assert torch_load(run.mdrnn_member_train(1))["step"] == 6
    resumed = train_memories(run, cfg, progress=False, tensorboard=False)
    assert all(torch.equal(before[k], v) for k, v in resumed[1].state_dict().items())
    assert WorldModel.load(run).num_members == 2


def test_the_mid_episode_bank_comes_from_real_data(ens_run: Path) -> None:
    run = RunDir(ens_run)
    wm = WorldModel.load(run)
    bank = wm.mid_bank
    assert bank is not None and bank["mu"].shape == (16, 32) and bank["h"].shape == (2, 16, 32)
    assert bool((bank["h"].abs().sum(-1) > 0).all()) and bool((bank["c"].abs().sum(-1) > 0).all())
    assert not torch.equal(bank["h"][0], bank["h"][1])  # each member's own state
    lat = Manifest.open(run.latents)
    train_eps, _ = split_episodes(lat, HOLDOUT, 0)
    frames = {i: load_shard(lat.dir / lat.episodes[i]["file"], lat.episodes[i]["sha256"]) for i in train_eps}
    for j in range(16):  # every banked latent is a real encoded frame mid-episode, each h that member's state there
        hits = [(i, int(t)) for i, ep in frames.items()
                for t in np.nonzero((ep["mu"] == bank["mu"][j].numpy()).all(1))[0] if t >= 1]
        assert hits
        states = []
        for i, t in hits:
            ep = frames[i]
            with torch.no_grad():
                states.append([m(torch.from_numpy(ep["mu"][None, :t]), torch.from_numpy(ep["actions"][None, :t]))[1]
                               for m in wm.ensemble])
        assert any(all(torch.allclose(bank["h"][k, j], h[0], atol=1e-5) and torch.allclose(bank["c"][k, j], c[0],
                                                                                          atol=1e-5)
                       for k, (h, c) in enumerate(st)) for st in states)
    again = mid_episode_bank(lat, train_eps, wm.ensemble, 16, 0, chunk=2)  # episodes read two at a time
    for key in WorldModel.MID_KEYS:
        torch.testing.assert_close(again[key], bank[key], atol=1e-5, rtol=1e-5)
    env = DreamVectorEnv(4, world_model=wm, start="mid", deterministic=True)
    obs = env.reset_torch(seed=3)
    members = env._core.dream_step.members_of_rows
    for r in range(4):
        j = int(torch.nonzero((bank["mu"] == obs[r, :32]).all(1))[0])
        assert torch.equal(obs[r, 32:], bank["h"][int(members[r]), j])
    assert torch.equal(obs, env.reset_torch(seed=3))


def test_evolution_reads_the_ensemble_settings(ens_run: Path, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    shutil.copytree(ens_run, run.root)
    cfg = tiny_cfg(start="mid", start_bank=16, horizon=6)
    cfg = override(cfg, ["eval.gap_every=0", "ensemble.dropout=0.1", "ensemble.disagreement_penalty=0.5", "cma.popsize=4",
                         "cma.rollouts=2", "cma.generations=1", "dream.compile=false"])
    wm = WorldModel.load(run)
    params = evolve_controller(run, cfg, 0, wm, lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    assert params.shape == (ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task).num_params,)
    assert run.controller(0).is_file()


def test_restarts_keep_the_search_whose_mean_dreams_best_and_resume(ens_run: Path, tmp_path: Path) -> None:
    """cma.restarts=3: three searches on seeds cma.seed, +1, +2 (search 1 is the run without
    restarts); the kept controller is the one with the best mean over fresh dreams, recorded; a
    second call trains nothing and keeps the same pick."""
    from agents.cmaes import RESTART_DREAMS
    from agents.controller import load_controller
    from agents.fitness import EVAL_GENERATION

    run, single = RunDir(tmp_path / "run"), RunDir(tmp_path / "single")
    for r in (run, single):
        shutil.copytree(ens_run, r.root)
    base = ["eval.gap_every=0", "cma.popsize=4", "cma.rollouts=2", "cma.generations=2", "dream.compile=false",
            "dream.max_steps=20", "ensemble.members=1"]
    cfg = override(tiny_cfg(), [*base, "cma.restarts=3"])
    wm = WorldModel.load(run)
    params = evolve_controller(run, cfg, 0, wm, lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    extra = load_controller(run.controller(0))[2]["restarts"]
    finals = [load_controller(run.restart_controller(0, j))[1] for j in range(3)]
    assert extra["seeds"] == [0, 1, 2] and all(run.cma_state(0, j).is_file() for j in range(3))
    assert len({f.tobytes() for f in finals}) == 3  # three different searches
    assert extra["picked"] == int(np.argmax(extra["dream_means"])) and np.array_equal(params, finals[extra["picked"]])
    from agents.world_models.report import write_report

    text = write_report(run, {"task": cfg.task, "rounds": 1}).read_text()  # the searches' table in report.md
    assert "## CMA-ES searches (`cma.restarts`)" in text and "a selection by real returns" not in text
    for j, m in enumerate(extra["dream_means"]):
        assert f"| 0 | {j + 1} | {j} | {m:.1f} |  | {'**yes**' if j == extra['picked'] else ''} |" in text
    judge = DreamFitness(wm, ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task), 3, RESTART_DREAMS,
                         cfg.dream.temperature, cfg.dream.steps, seed=7, members=1)
    with torch.inference_mode():
        means = judge.returns(np.stack(finals), EVAL_GENERATION).mean(dim=1).double().numpy()
    assert np.allclose(means, extra["dream_means"], atol=1e-3)  # the pick's figures, recomputed
    one = evolve_controller(single, override(tiny_cfg(), base), 0, WorldModel.load(single), lambda: None,  # type: ignore[arg-type,return-value]
                            progress=False)
    assert np.array_equal(one, finals[0])  # search 1 of 3 is the search a run without restarts makes
    stamp = run.restart_controller(0, 2).stat().st_mtime_ns
    assert np.array_equal(evolve_controller(run, cfg, 0, wm, lambda: None, progress=False), params)  # type: ignore[arg-type]
    assert run.restart_controller(0, 2).stat().st_mtime_ns == stamp


def test_restarts_picked_by_real_episodes_keep_the_best_real_mean_and_say_so(ens_run: Path, tmp_path: Path) -> None:
    """cma.pick=real: each search's final mean plays the same pick_episodes real episodes (seeds of
    PICK_GENERATION), the best real mean is kept (not the best dream mean), the returns are recorded
    and replay the same; later_restarts=1 gives later rounds one search; eval.json's label and the
    report say the controller was picked by real returns."""
    from agents.controller import load_controller
    from agents.fitness import PICK_GENERATION, RealPool, generation_seeds
    from agents.world_models.stages import _label_selection, controller_config

    run = RunDir(tmp_path / "run")
    shutil.copytree(ens_run, run.root)
    cfg = override(tiny_cfg(), ["eval.gap_every=0", "cma.popsize=4", "cma.rollouts=2", "cma.generations=2",
                                "dream.compile=false", "dream.max_steps=20", "ensemble.members=1", "cma.restarts=3",
                                "cma.pick=real", "cma.pick_episodes=2", "later_restarts=1"])
    assert [cfg.round_restarts(k) for k in range(3)] == [3, 1, 1] and cfg.picked_by_real
    wm = WorldModel.load(run)
    pool = RealPool(cfg.task, wm, controller_config(cfg, wm), workers=1, env_kwargs={"max_episode_steps": 30},
                    backend="processes")
    try:
        params = evolve_controller(run, cfg, 0, wm, lambda: pool, progress=False)
        info = load_controller(run.controller(0))[2]["restarts"]
        finals = [load_controller(run.restart_controller(0, j))[1] for j in range(3)]
        seeds = generation_seeds(cfg.cma.seed, PICK_GENERATION, 2)
        assert info["by"] == "real returns" and info["episodes"] == 2 and info["episode_seeds"] == seeds
        assert len(info["dream_means"]) == len(info["real_means"]) == 3
        assert info["picked"] == int(np.argmax(info["real_means"])) and np.array_equal(params, finals[info["picked"]])
        again = [[r["return"] for r in pool.play([(f, s) for s in seeds])] for f in finals]
        assert np.allclose(again, info["real_returns"])  # the recorded returns are the episodes' own
    finally:
        pool.close()
    label = _label_selection(run, cfg, {"mean": 1.0})
    assert label["searches_picked"] == {"rounds": [0], "by": "real returns", "episodes": 2, "searches": [3]}
    assert "round 0's controller picked among 3 searches by 2 real episodes each" in label["train_in"]
    assert "searches_picked" not in _label_selection(run, override(cfg, ["cma.pick=dream"]), {"mean": 1.0})
    from agents.world_models.report import write_report

    text = write_report(run, {"task": cfg.task, "rounds": 1}).read_text()
    assert "the same 2 real episodes" in text and "(**a selection by real returns**)" in text
    j = info["picked"]
    assert f"| {info['dream_means'][j]:.1f} | {info['real_means'][j]:.1f} | **yes** |" in text


def test_controller_probes_read_every_member_and_their_most_likely_end(ens_run: Path) -> None:
    from agents.probes import controller_probe, controller_table

    wm = WorldModel.load(ens_run)
    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    params = np.random.default_rng(0).standard_normal(ccfg.num_params) * 0.1
    row = controller_probe(wm, params, ccfg, [3, 4], max_steps=25)
    for ep in row["episodes"]:
        each = ep["ends_expected_members"]
        assert len(each) == 2 and np.isclose(each[0], ep["ends_expected"])  # member 0 is M
        assert max(each) - 1e-9 <= ep["ends_expected_max"] <= sum(each) + 1e-9
        assert each[0] != each[1]  # members trained on other resamples expect other ends
    m = row["mean"]
    assert np.isclose(m["ends_expected_max"], np.mean([e["ends_expected_max"] for e in row["episodes"]]))
    assert f"their most likely end {m['ends_expected_max']:.2f}" in controller_table(
        {"end_window": 10, "controllers": {"c.npz": row}})


def test_evolve_in_dream_steps_the_dream_in_the_given_precision(ens_run: Path, tmp_path: Path) -> None:
    """The ablation and the temperature sweep evolve in the run's dream.precision: evolve_in_dream
    hands it to the dream step, which refuses bf16 for an MDN-RNN before any search."""
    from agents.cmaes import CMAConfig
    from agents.fitness import evolve_in_dream

    wm = WorldModel.load(ens_run)
    ccfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    cma = CMAConfig(popsize=4, rollouts=1, generations=1, seed=0)
    state, returns = evolve_in_dream(wm, ccfg, cma, 1.0, 6, tmp_path / "s.npz", tmp_path / "c.npz", 2,
                                     precision="fp32", members=1)
    assert len(returns) == 2 and np.isfinite(returns).all()
    with pytest.raises(ValueError, match="dream.precision=bf16 is built for a Transformer or Mamba M"):
        evolve_in_dream(wm, ccfg, cma, 1.0, 6, tmp_path / "s2.npz", tmp_path / "c2.npz", 2, precision="bf16",
                        members=1)
    assert not (tmp_path / "s2.npz").exists()


def test_the_dream_ablation_evolves_one_controller_per_variant_on_the_same_seeds(ens_run: Path, tmp_path: Path) -> None:
    from agents.ablation import ablate, variant_options

    run = RunDir(tmp_path / "run")
    shutil.copytree(ens_run, run.root)
    tiny_cfg(start="mid", start_bank=16, horizon=6).save(run)
    kw = {"generations": 2, "popsize": 4, "rollouts": 2, "eval_episodes": 2, "dream_steps": 8, "real_steps": 10,
          "workers": 0, "progress": False, "say": lambda _: None}
    rows = ablate(run, ["plain", "dropout+mid", "ensemble"], **kw)
    assert [r["variant"] for r in rows] == ["plain", "dropout+mid", "ensemble"]
    assert rows[1]["options"] == {**variant_options("plain"), "dropout": 0.1, "start": "mid"}
    assert rows[2]["options"]["members"] is None  # every member of the run's ensemble
    assert all(r["real_seeds"] == rows[0]["real_seeds"] for r in rows)  # the same real episodes
    assert all(np.isfinite(r["real_returns"]).all() and len(r["real_returns"]) == 2 for r in rows)
    for v in ("plain", "dropout+mid", "ensemble"):
        assert run.ablation_controller(v).is_file() and run.ablation_result(v).is_file()
    table = run.ablation_md.read_text()
    assert "| dropout+mid | " in table and "same 2 real episodes" in table
    # the candidates were judged in different dreams; a rerun keeps the scored variants as they are
    def fitness(v: str) -> np.ndarray:
        with np.load(run.ablation_cma_state(v)) as z:
            return z["fitness"]

    assert fitness("plain").shape == (2, 4) and not np.array_equal(fitness("plain"), fitness("dropout+mid"))
    before = run.ablation_result("plain").read_text()
    assert ablate(run, ["plain"], **kw)[0]["real_mean"] == rows[0]["real_mean"]
    assert run.ablation_result("plain").read_text() == before
    for bad, message in ((["dropot"], "unknown dream variant 'dropot'; combine plain, dropout"),
                         (["plain", "plain"], "give each variant once")):
        with pytest.raises(ValueError, match=message):
            ablate(run, bad, **kw)


def test_the_dream_benchmark_runs_on_a_runs_ensemble_with_more_members(ens_run: Path) -> None:
    """benchmarks/dream.py --run: the run's own members, then untrained ones of the run's sizes (not CarRacing's)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/dream.py", "--run", str(ens_run), "--members", "3",
                          "--done-mode", "max", "--envs", "16", "--rollouts", "2", "--steps", "3", "--rounds", "1",
                          "--threads", "1", "--car-steps", "0"], cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ensemble of 3 Ms (episode, dropout 0.0, penalty 0.0, done max) vs one M" in out.stdout


# -- a population's dreams go on in a smaller batch as they end ------------------------------------


@pytest.mark.parametrize("kw", [{"members": 1}, {}, {"dropout": 0.2}, {"done_mode": "max"},
                                {"member_mode": "step", "disagreement_penalty": 0.5}])
def test_a_shrunk_batch_goes_on_as_its_rows_would(kw: dict) -> None:
    wm = ensemble_wm(3, done_bias=-20.0)  # no dream ends: every row is compared all along
    full, shrunk = (DreamVectorEnv(10, world_model=wm, deterministic=True, **kw) for _ in range(2))
    g = torch.Generator().manual_seed(5)
    acts = torch.rand(7, 10, 3, generator=g) * 2 - 1
    for env in (full, shrunk):
        env.reset_torch(seed=5)
    for t in range(3):
        want = full.step_torch(acts[t])
        got = shrunk.step_torch(acts[t])
        assert torch.equal(want[0], got[0])
    rows = torch.tensor([7, 2, 2, 9])
    before = full.observe_torch()[rows]
    assert shrunk.can_shrink and torch.equal(shrunk.shrink_torch(rows), before)
    assert shrunk.num_envs == 4 and shrunk.action_space.shape == (4, 3) and shrunk.observation_space.shape[0] == 4
    step, ref = shrunk._core.dream_step, full._core.dream_step
    if isinstance(step, EnsembleDreamStep):
        assert torch.equal(step.members_of_rows, ref.members_of_rows[rows])
        if step.keep is not None:
            assert torch.equal(step.keep, ref.keep[rows])
    assert torch.equal(shrunk._core.t, full._core.t[rows])
    for t in range(3, 7):
        o, r, te, tr = full.step_torch(acts[t])
        o2, r2, te2, tr2 = shrunk.step_torch(acts[t][rows])
        torch.testing.assert_close(o2, o[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r2, r[rows], atol=1e-5, rtol=1e-5)
        assert torch.equal(te2, te[rows]) and torch.equal(tr2, tr[rows])
    # a reset of every sub-env brings the full batch back, as it started
    assert torch.equal(shrunk.reset_torch(seed=5), full.reset_torch(seed=5))
    assert shrunk.num_envs == 10 and shrunk.action_space.shape == (10, 3)
    assert torch.equal(shrunk.step_torch(acts[0])[0], full.step_torch(acts[0])[0])
    with pytest.raises(ValueError, match=r"rows must be 1 or more sub-env indices in \[0, 10\)"):
        shrunk.shrink_torch(torch.tensor([3, 10]))


@pytest.mark.parametrize(("kw", "bias"), [({"members": 1}, 0.0), ({"done_mode": "max"}, -0.1)])
def test_fitness_shrinks_as_dreams_end_with_the_same_returns(wm: WorldModel, kw: dict, bias: float) -> None:
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    params = np.random.default_rng(0).standard_normal((8, cfg.num_params))

    def fitness(shrink: bool, deterministic: bool, model: WorldModel = wm) -> DreamFitness:
        fit = DreamFitness(model, cfg, 8, 4, max_steps=LIMIT, seed=1, shrink=shrink, **kw)
        fit.env._core.deterministic = deterministic
        return fit

    fit = fitness(True, False)
    a = fit.returns(params, 0)
    assert fit.env.num_envs < 32  # the dreams ended at different times: the batch shrank
    assert torch.equal(a, fit.returns(params, 0))  # the full batch back, the same draws: the same returns
    assert torch.equal(a, fitness(True, False).returns(params, 0))
    # no draws (deterministic dreams, done where the logit is positive; the bias puts some ends within
    # the limit): the same dreams with and without shrinking
    near = ensemble_wm(3, done_bias=bias)
    plain, shrunk = fitness(False, True, near), fitness(True, True, near)
    want, got = plain.returns(params, 3), shrunk.returns(params, 3)
    assert shrunk.env.num_envs < 32 and plain.env.num_envs == 32
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    # each dream's length, counted in either batch: the same, and where the returns say the dreams ended
    assert torch.equal(shrunk.last_lengths, plain.last_lengths) and int(plain.last_lengths.max()) <= LIMIT
    assert int(plain.last_lengths.min()) < LIMIT  # some ended before the limit


def test_the_shrink_benchmark_times_both_batches_on_a_runs_ensemble(ens_run: Path, tmp_path: Path) -> None:
    """benchmarks/dream_shrink.py: both variants on the run's members, the figures in its JSON."""
    import json

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/dream_shrink.py", "--run", str(ens_run), "--members", "2",
                          "--done-mode", "max", "--popsize", "4", "--rollouts", "4", "--steps", "40", "--rounds", "1",
                          "--threads", "1", "--json", str(tmp_path / "shrink.json")],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "shrink.json").read_text())
    assert res["members"] == 2 and res["done_mode"] == "max" and res["dreams"] == 16
    assert res["seconds_full_batch"] > 0 and res["seconds_shrink"] > 0 and 1 <= res["longest_dream"] <= 40
    assert "one generation: full batch" in out.stdout
    bad = subprocess.run([sys.executable, "benchmarks/dream_shrink.py", "--done-prob", "1.5"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--done-prob must be in (0, 1), got 1.5" in bad.stderr
