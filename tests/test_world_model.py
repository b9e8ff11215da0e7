"""V, M and the WorldModel: losses fall on tiny real data, the mixture math is right, checkpoints
round-trip, stages skip and resume, bad checkpoints fail with one clear line, fidelity report."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import distributions as D

from agents.world_models.config import RunConfig
from agents.world_models.stages import encode_latents, train_memory, train_vision
from envs.dream_step import make_dream_step
from worldlab.logging import read_metrics
from worldlab.mdrnn import (
    MDRNN,
    MDRNNConfig,
    mixture_log_prob,
    sample_mixture,
    split_head,
)
from worldlab.storage import Manifest
from worldlab.training import TrainConfig
from worldlab.vae import ConvVAE, VAEConfig
from worldlab.world_model import WorldModel, WorldModelError

VAE_STEPS, M_STEPS = 24, 30


def vae_cfg(steps: int = VAE_STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, lr=1e-3, log_every=4, checkpoint_every=8)


def m_cfg(steps: int = M_STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-3, log_every=5, checkpoint_every=10)


def stage_cfg(vae_steps: int = VAE_STEPS, m_steps: int = M_STEPS, **kw: Any) -> RunConfig:
    """The config the V, encode and M stages read: batches of 32 frames and 4 windows of 32 steps."""
    return RunConfig(vae_train=vae_cfg(vae_steps), vae_batch=32, mdrnn_train=m_cfg(m_steps), mdrnn_batch=4,
                     seq_len=32, **kw)


def train_vae(run: Path, cfg: RunConfig | None = None) -> ConvVAE:
    return train_vision(run, cfg or stage_cfg(), progress=False, tensorboard=False)


def train_mdrnn(run: Path, cfg: RunConfig | None = None) -> MDRNN:
    return train_memory(run, cfg or stage_cfg(), progress=False, tensorboard=False)


def encode(run: Path) -> Manifest:
    return encode_latents(run, stage_cfg(), progress=False)


@pytest.fixture(scope="module")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny data with V and M trained a few steps (the real stages)."""
    run = tmp_path_factory.mktemp("wm_run")
    shutil.copytree(tiny_data, run / "data")
    train_vae(run)
    encode(run)
    train_mdrnn(run)
    return run


def falling(values: list[float]) -> bool:
    k = max(1, len(values) // 3)
    return float(np.mean(values[-k:])) < float(np.mean(values[:k]))


# -- the math ----------------------------------------------------------------------------------


def test_mixture_log_prob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    B, K, Z = 6, 5, 4
    logits, mu = torch.randn(B, K, Z, generator=g), torch.randn(B, K, Z, generator=g)
    logsigma = torch.randn(B, K, Z, generator=g) * 0.5
    x = torch.randn(B, Z, generator=g)
    mix = D.MixtureSameFamily(D.Categorical(logits=logits.transpose(1, 2)),
                              D.Normal(mu.transpose(1, 2), logsigma.exp().transpose(1, 2)))
    torch.testing.assert_close(mixture_log_prob(x, logits, mu, logsigma), mix.log_prob(x))


def test_mixture_log_prob_is_stable_far_from_every_component() -> None:
    logits = torch.tensor([[[0.0], [50.0]]])        # (1, K=2, Z=1)
    mu = torch.tensor([[[0.0], [1.0]]])
    logsigma = torch.full((1, 2, 1), -7.0)
    lp = mixture_log_prob(torch.tensor([[1e3]]), logits, mu, logsigma)
    assert torch.isfinite(lp).all() and lp.item() < -1e6


def test_sampling_temperature_and_deterministic_mode() -> None:
    g = torch.Generator().manual_seed(1)
    n, K, Z = 4000, 3, 2
    logits = torch.tensor([0.0, 1.0, 0.2]).view(1, K, 1).expand(n, K, Z).contiguous()
    mu = torch.tensor([-3.0, 2.0, 5.0]).view(1, K, 1).expand(n, K, Z).contiguous()
    logsigma = torch.zeros(n, K, Z)
    det = sample_mixture(logits, mu, logsigma, deterministic=True)
    assert torch.all(det == 2.0)  # mean of the most likely component
    hot = sample_mixture(logits, mu, logsigma, tau=1.0, generator=g)
    cold = sample_mixture(logits, mu, logsigma, tau=1e-3, generator=g)
    # tau = 1 reproduces the mixture's moments; tau -> 0 collapses onto the deterministic value
    probs = torch.softmax(torch.tensor([0.0, 1.0, 0.2]), 0)
    mean = float((probs * torch.tensor([-3.0, 2.0, 5.0])).sum())
    assert abs(hot.mean().item() - mean) < 0.15
    assert (cold - det).abs().max().item() < 0.2 and cold.std().item() < 0.05 < hot.std().item()


def test_sequence_model_and_one_step_cell_agree() -> None:
    torch.manual_seed(0)
    m = MDRNN(MDRNNConfig(z_size=8, action_dim=3, hidden=32)).eval()
    z, a = torch.randn(3, 7, 8), torch.rand(3, 7, 3)
    with torch.no_grad():
        seq, (h, c) = m(z, a)
        state = None
        for t in range(7):
            step, state = m.step(z[:, t], a[:, t], state)
    torch.testing.assert_close(step.mu, seq.mu[:, -1])
    torch.testing.assert_close(step.reward, seq.reward[:, -1])
    torch.testing.assert_close(state[0], h)


def test_fused_dream_step_matches_the_cell() -> None:
    torch.manual_seed(0)
    m = MDRNN(MDRNNConfig(z_size=8, action_dim=2, hidden=32)).eval()
    fs = make_dream_step(m, 5, "cpu")
    z = torch.randn(5, 8)
    fs.reset_rows(slice(None), z)
    state = None
    with torch.no_grad():
        for _ in range(6):
            a = torch.rand(5, 2)
            fs.set_actions(a)
            reward, done = fs.step(deterministic=True)
            pred, state = m.step(z, a, state)
            z = sample_mixture(pred.logits, pred.mu, pred.logsigma, deterministic=True)
            torch.testing.assert_close(fs.z, z, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fs.h, state[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(reward, pred.reward, atol=1e-5, rtol=1e-5)
            assert torch.equal(done, pred.done_logit > 0)


def test_head_layout_roundtrip() -> None:
    out = torch.arange(3 * 2 * 4 + 2, dtype=torch.float32).view(1, -1)
    p = split_head(out, z_size=4, gaussians=2, logsigma_min=-100, logsigma_max=100)
    assert p.logits.shape == (1, 2, 4) and p.logits[0, 1, 0] == 4 and p.mu[0, 0, 0] == 8
    assert p.reward.item() == 24 and p.done_logit.item() == 25


def test_vae_interface() -> None:
    vae = ConvVAE(VAEConfig(z_size=16))
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    losses = vae.loss(x)
    assert set(losses) >= {"loss", "recon", "kl"} and all(torch.isfinite(v) for v in losses.values())
    assert losses["kl"].item() >= 0.5 * 16 - 1e-4  # free bits floor
    s1, s2 = vae.sample(3, generator=5), vae.sample(3, generator=5)
    assert s1.shape == (3, 3, 64, 64) and torch.equal(s1, s2) and 0 <= s1.min() and s1.max() <= 1
    mu, logvar = vae.encode(x.permute(0, 2, 3, 1))  # HWC frames are accepted too
    assert mu.shape == logvar.shape == (4, 16)
    with pytest.raises(ValueError, match="unconditional"):
        vae.sample(2, cond=torch.zeros(2))
    frames = torch.randint(0, 256, (7, 64, 64, 3), dtype=torch.uint8)
    whole = vae.encode(frames)[0]
    for chunk in (1, 3, 256):  # chunked encoding: the same means, any chunk, no graph kept
        got = vae.encode_mean(frames, chunk=chunk)
        assert got.shape == (7, 16) and not got.requires_grad and torch.allclose(got, whole, atol=1e-5)
    assert vae.encode_mean(frames[:0]).shape == (0, 16)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        vae.encode_mean(frames, chunk=0)


def test_salience_weights_what_stands_out() -> None:
    from worldlab.vae import salience_weights

    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.05 * torch.rand(8, 3, 64, 64, generator=g)  # a shared background
    x[0, :, 10:14, 20:24] = 1.0  # a fireball in one frame
    w = salience_weights(x, 4.0)
    assert w.shape == (8, 1, 64, 64) and torch.isclose(w.mean(), torch.tensor(1.0))
    assert w[0, 0, 12, 22] > 10 * w[0, 0, 40, 40] and w[0, 0, 12, 22] > 10 * w[1, 0, 12, 22]
    assert torch.allclose(salience_weights(x[:1], 4.0), torch.ones(1, 1, 64, 64))  # one frame: nothing stands out
    frames = (x * 255).to(torch.uint8)
    torch.manual_seed(1)
    plain = ConvVAE(VAEConfig(z_size=8)).loss(frames)["recon"]
    torch.manual_seed(1)
    weighted = ConvVAE(VAEConfig(z_size=8, salience=4.0)).loss(frames)["recon"]
    assert torch.isfinite(weighted) and not torch.isclose(plain, weighted)
    with pytest.raises(ValueError, match="vae.salience must be >= 0, got -1"):
        VAEConfig(salience=-1)
    from agents.world_models.config import preset

    assert preset("default", "doom_take_cover").vae.salience == 4.0  # Doom's default V sees the fireballs
    doom = preset("default", "doom_take_cover")  # a short second round on C's own states (docs/RESULTS.md)
    assert (doom.rounds, doom.freeze_v, doom.finetune_m, doom.later_generations) == (7, True, True, 20)
    assert (doom.round_generations(0), doom.round_generations(1), doom.collect.burst_prob) == (50, 20, 0.05)
    assert preset("default", "car_racing").vae.salience == 0.0 and preset("smoke", "doom_take_cover").vae.salience == 0.0


# -- stages on tiny real data ------------------------------------------------------------------


def test_vae_and_mdrnn_losses_fall(trained_run: Path) -> None:
    for stage, name in (("vae", "vae/loss"), ("vae", "vae/recon"), ("mdrnn", "mdrnn/loss"), ("mdrnn", "mdrnn/nll")):
        values = [r["value"] for r in read_metrics(trained_run, stage, name)]
        assert len(values) >= 4 and all(math.isfinite(v) for v in values), name
        assert falling(values), f"{name} did not fall: {values}"
    assert (trained_run / "samples" / "vae_recon.png").stat().st_size > 0
    assert (trained_run / "samples" / "vae_samples.png").stat().st_size > 0


def test_latents_manifest(trained_run: Path) -> None:
    data, lat = Manifest.open(trained_run / "data"), Manifest.open(trained_run / "latents")
    assert sorted(lat.episodes) == sorted(data.episodes)
    assert lat.meta["vae_id"] == ConvVAE.load(trained_run / "checkpoints" / "vae.pt").meta["id"]
    for i, e in lat.episodes.items():
        assert e["length"] == data.episodes[i]["length"]


def test_world_model_round_trip(trained_run: Path, tmp_path: Path) -> None:
    wm = WorldModel.load(trained_run, task="car_racing", z_size=32)
    assert wm.task == "car_racing" and wm.max_episode_steps == 120 and wm.start_mu.shape[1] == 32
    frames = torch.from_numpy(np.stack([np.full((64, 64, 3), v, np.uint8) for v in (0, 90, 200)]))
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    a = torch.rand(4, 3)
    with torch.no_grad():
        mu1, _ = wm.encode(frames)
        img1 = wm.decode_frames(z)
        p1, _ = wm.mdrnn.step(z, a)
    wm.save(tmp_path)
    wm2 = WorldModel.load(tmp_path)
    with torch.no_grad():
        mu2, _ = wm2.encode(frames)
        p2, _ = wm2.mdrnn.step(z, a)
    assert torch.equal(mu1, mu2) and np.array_equal(img1, wm2.decode_frames(z))
    assert all(torch.equal(x, y) for x, y in zip(p1, p2, strict=True))
    assert torch.equal(wm.start_mu, wm2.start_mu)


def test_stages_skip_when_complete_and_resume(trained_run: Path) -> None:
    ck = trained_run / "checkpoints"
    before = (ck / "vae.pt").stat().st_mtime_ns, (ck / "mdrnn.pt").stat().st_mtime_ns
    train_vae(trained_run)
    train_mdrnn(trained_run)
    assert ((ck / "vae.pt").stat().st_mtime_ns, (ck / "mdrnn.pt").stat().st_mtime_ns) == before
    # asking for more steps resumes from the resumable state (step M_STEPS), not from scratch
    n_logged = len(read_metrics(trained_run, "mdrnn", "mdrnn/loss"))
    train_mdrnn(trained_run, stage_cfg(m_steps=M_STEPS + 10))
    new = read_metrics(trained_run, "mdrnn", "mdrnn/loss")[n_logged:]
    assert [r["step"] for r in new] == [M_STEPS + 5, M_STEPS + 10]
    assert MDRNN.load(ck / "mdrnn.pt").meta["steps"] == M_STEPS + 10


def test_same_seed_same_v_and_m_bit_for_bit_another_seed_another(trained_run: Path, tiny_data: Path,
                                                                  tmp_path: Path) -> None:
    """The run's ``--seed`` decides V's and M's initial weights too: the stages repeated on the same
    data write the same weights and the same ids (ids follow the content), so runs can be paired."""
    ck = trained_run / "checkpoints"
    a = tmp_path / "a"
    shutil.copytree(tiny_data, a / "data")
    v = train_vae(a)
    v0 = ConvVAE.load(ck / "vae.pt")
    assert v.meta["id"] == v0.meta["id"]
    assert all(torch.equal(x, y) for x, y in zip(v.state_dict().values(), v0.state_dict().values(), strict=True))
    encode(a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    ma, mb = train_mdrnn(a), train_mdrnn(b)
    assert ma.meta["id"] == mb.meta["id"]
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True))
    c = tmp_path / "c"
    shutil.copytree(tiny_data, c / "data")
    v1 = train_vae(c, stage_cfg(seed=1))
    assert v1.meta["id"] != v0.meta["id"]
    assert not torch.equal(v1.state_dict()["encoder.0.weight"], v0.state_dict()["encoder.0.weight"])


def test_encode_resumes_missing_episodes_only(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    lat = Manifest.open(run / "latents")
    first = min(lat.episodes)
    untouched = {i: e["sha256"] for i, e in lat.episodes.items() if i != first}
    mtimes = {i: (run / "latents" / e["file"]).stat().st_mtime_ns for i, e in lat.episodes.items()}
    del lat.episodes[first]
    lat.save()  # as if killed before episode `first` was recorded
    encode(run)
    lat2 = Manifest.open(run / "latents")
    assert first in lat2.episodes
    for i in untouched:
        assert lat2.episodes[i]["sha256"] == untouched[i]
        assert (run / "latents" / lat2.episodes[i]["file"]).stat().st_mtime_ns == mtimes[i]


def test_bad_checkpoints_fail_with_one_clear_line(trained_run: Path, tmp_path: Path) -> None:
    def copy() -> Path:
        run = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
        return run

    run = copy()
    (run / "checkpoints" / "vae.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="vae.pt is corrupt") as e:
        WorldModel.load(run)
    assert "\n" not in str(e.value)

    run = copy()
    data = (run / "checkpoints" / "mdrnn.pt").read_bytes()
    (run / "checkpoints" / "mdrnn.pt").write_bytes(data[: len(data) // 2])  # truncated by a crash
    with pytest.raises(ValueError, match="mdrnn.pt is corrupt"):
        WorldModel.load(run)

    with pytest.raises(WorldModelError, match="task 'car_racing', not 'doom_take_cover'"):
        WorldModel.load(trained_run, task="doom_take_cover")
    with pytest.raises(WorldModelError, match="z_size 32, not 64"):
        WorldModel.load(trained_run, z_size=64)

    run = copy()  # a V with another latent size next to this M
    ConvVAE(VAEConfig(z_size=64)).save(run / "checkpoints" / "vae.pt", {"task": "car_racing"})
    with pytest.raises(WorldModelError, match="z_size 64 but .*mdrnn.pt expects z_size 32") as e:
        WorldModel.load(run)
    assert "\n" not in str(e.value)

    run = copy()  # a V retrained since M was trained
    vae = ConvVAE.load(run / "checkpoints" / "vae.pt")
    vae.save(run / "checkpoints" / "vae.pt", {"task": "car_racing", "id": "another"})
    with pytest.raises(WorldModelError, match="V was retrained"):
        WorldModel.load(run)

    run = copy()  # swapped files
    shutil.copy(run / "checkpoints" / "vae.pt", run / "checkpoints" / "mdrnn.pt")
    with pytest.raises(ValueError, match="is not an M checkpoint \\(family .vae.,"):
        WorldModel.load(run)

    with pytest.raises(FileNotFoundError, match="train V"):
        WorldModel.load(tmp_path / "nowhere")


def test_resume_refuses_another_architecture(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "vae.pt").unlink()
    with pytest.raises(WorldModelError, match="another V config"):
        train_vae(run, stage_cfg(vae=VAEConfig(z_size=16)))


def test_fidelity_report(trained_run: Path) -> None:
    out = subprocess.run([sys.executable, "scripts/fidelity.py", str(trained_run), "--horizon", "12",
                          "--context", "8"], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((trained_run / "fidelity.json").read_text())
    held = MDRNN.load(trained_run / "checkpoints" / "mdrnn.pt").meta["heldout"]
    assert report["episodes"] == held and report["heldout"]
    for k in ("vae_recon_mse", "mdrnn_nll_per_dim", "reward_mse", "reward_mae", "done_accuracy"):
        assert math.isfinite(report[k]), k
    assert 0 < report["vae_recon_mse"] < 1 and 0 <= report["done_accuracy"] <= 1
    assert len(report["open_loop"]["pixel_mse_per_step"]) == 12
    for f in report["files"]:
        assert (trained_run / f).stat().st_size > 0
    assert any(f.endswith(".mp4") for f in report["files"]) and any(f.endswith(".png") for f in report["files"])


@pytest.mark.parametrize("space", [{"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]},
                                   {"type": "discrete", "n": 3}])
def test_teacher_forced_and_open_loop_agree_on_the_first_dreamed_step(space: dict[str, Any]) -> None:
    wm = WorldModel.untrained(action_space=space, z_size=8, hidden=32, seed=1)
    rng = np.random.default_rng(0)
    T = 12
    actions = (rng.integers(0, wm.action_dim, T) if wm.discrete_actions
               else rng.uniform(-1, 1, (T, wm.action_dim)).astype(np.float64))  # float64: the reader casts
    ep = {"obs": rng.integers(0, 256, (T + 1, 64, 64, 3), dtype=np.uint8), "actions": actions}
    mu, acts, pred = wm.teacher_forced(ep)
    assert mu.shape == (T + 1, 8) and pred.reward.shape == (1, T)
    assert acts.dtype == (torch.int64 if wm.discrete_actions else torch.float32)
    for start in (1, 5):
        zs, rs = wm.open_loop(mu, acts, start, T - start)
        assert zs.shape == (T - start, 8) and rs.shape == (T - start,)
        first = sample_mixture(pred.logits[0, start], pred.mu[0, start], pred.logsigma[0, start], deterministic=True)
        torch.testing.assert_close(zs[0], first, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rs[0], pred.reward[0, start], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit an episode of 12 steps"):
        wm.open_loop(mu, acts, 0, 3)
    with pytest.raises(ValueError, match="does not fit"):
        wm.open_loop(mu, acts, 10, 3)
