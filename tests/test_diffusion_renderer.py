"""The diffusion renderer: a residual over V's decoder, deterministic frames, progressive distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import generators
from generators.diffusion_renderer import DiffusionRenderer
from generators.nets import ddim_update, distill_v_target, v_noisy
from worldlab.vae import ConvVAE


def make(tiny_v: Path, **kw) -> DiffusionRenderer:
    torch.manual_seed(0)
    m = generators.make("diffusion_renderer", vae=str(tiny_v), widths=(4, 8), embedding_dim=4, z_embedding=4, **kw)
    assert isinstance(m, DiffusionRenderer)
    return m


def train(m: DiffusionRenderer, x: torch.Tensor, steps: int) -> list[float]:
    """``steps`` Adam updates of ``m``'s loss on batches of 8 of ``x`` (64 frames) in turn; the losses."""
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for i in range(steps):
        loss = m.loss(x[(i * 8) % 64:(i * 8) % 64 + 8])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_distillation_target_is_the_teachers_two_steps_in_one() -> None:
    """The v of distill_v_target, taken as one DDIM step, lands on the teacher's two-step result."""
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([1.0, 0.75, 0.5, 0.5, 0.25])
    t_next = t - 0.25
    zt, v = v_noisy(x, eps, t)
    assert torch.allclose(ddim_update(zt, v, t, torch.zeros(5)), x, atol=1e-5)  # the true v denoises exactly
    target = torch.randn(5, 3, 4, 4, generator=g)
    w = distill_v_target(zt, target, t, t_next)
    assert torch.allclose(ddim_update(zt, w, t, t_next), target, atol=1e-4)


def test_frames_are_v_plus_a_residual_and_deterministic(tiny_v: Path) -> None:
    m = make(tiny_v).eval()
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    a = m.render(z)
    assert a.shape == (3, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, m.render(z))  # the same z, the same frame: every frame starts from one noise
    # untrained, the U-Net's zero-initialised output predicts v = 0: one DDIM step from t = 1 then
    # lands on a zero residual, and the frame is V's decoder's
    v = ConvVAE.load(tiny_v)
    with torch.no_grad():
        assert torch.allclose((m.generate(z, steps=1) + 1) / 2, v.decode(z), atol=1e-5)
    with pytest.raises(ValueError, match="draws latents of size 4"):
        m.render(torch.zeros(2, 5))


def test_the_start_noise_temperature_scales_the_residual(tiny_v: Path) -> None:
    """temperature t starts every frame from t x the fixed noise: a DDIM step is linear in its start
    when the network's v is (untrained: v = 0), so the residual of 2 steps scales by t (where unclamped)."""
    m = make(tiny_v).eval()
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = m.decode(z)
        full = m.generate(z, steps=2) - base  # v = 0: the residual is the noise carried to t = 0 by DDIM
        m.config.temperature = 0.5
        half = m.generate(z, steps=2) - base
        m.config.temperature = 0.0
        zero = m.generate(z, steps=2) - base
    inside = ((base + full).abs() < 0.999) & ((base + half).abs() < 0.999)  # frames are clamped to [-1, 1]
    assert full.abs().max() > 0 and inside.float().mean() > 0.5 and not zero.any()
    assert torch.allclose(half[inside], 0.5 * full[inside], atol=1e-5)
    with pytest.raises(ValueError, match="temperature must be in \\[0, 1.5\\]"):
        make(tiny_v, temperature=2.0)


def test_training_lowers_the_loss_and_adapts_the_residual_scale(tiny_v: Path, blocky_frames) -> None:
    m = make(tiny_v)
    x = blocky_frames(64)
    losses = train(m, x, 60)
    assert bool(m.adapted) and (m.res_std > 1e-3).all() and (m.res_std < 2).all()
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10  # from ~1 (v has unit variance)
    assert all(not p.requires_grad for p in [*m.decoder.parameters(), *m.encoder.parameters()])  # V stays V's


def test_distilled_one_step_follows_the_teachers_two(tiny_v: Path, tmp_path: Path, blocky_frames) -> None:
    m = make(tiny_v, steps=2)
    x = blocky_frames(64)
    train(m, x, 30)
    m.eval()
    z = m.encode(blocky_frames(8, seed=3))[0]
    with torch.no_grad():
        two, one = m.generate(z, steps=2), m.generate(z, steps=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        m.distill(x, rounds=2)
    losses = m.distill(x, rounds=1, steps_per_round=60, batch_size=8, lr=2e-3)
    assert m.config.steps == 1 and len(losses) == 1 and losses[0] == losses[0]
    with torch.no_grad():
        student = m.generate(z)
    assert (student - two).pow(2).mean() < 0.8 * (one - two).pow(2).mean()
    m.save(tmp_path / "d.pt")
    back = generators.load(tmp_path / "d.pt")
    assert back.config.steps == 1 and torch.equal(back.render(z), m.render(z))


def test_sharpening_fits_the_frames_it_draws_and_keeps_v_frozen(tiny_v: Path, blocky_frames) -> None:
    """sharpen trains the sampler through its own steps: L1 to the real frames falls, frames stay
    deterministic, V's networks do not move and no discriminator stays in the checkpoint."""
    m = make(tiny_v, steps=2, posterior_samples=False)  # z = mu(x): an untrained V's posterior is mostly noise
    x = blocky_frames(4).repeat(8, 1, 1, 1)  # four scenes: their detail is learnable from z
    v_state = {k: t.clone() for k, t in m.state_dict().items() if k.startswith(("decoder", "fc_dec", "encoder"))}
    keys = set(m.state_dict())
    z = m.encode(x[:8])[0]
    with torch.no_grad():
        l1_before = float((m.generate(z) - x[:8]).abs().mean())
    out = m.sharpen(x, steps=50, batch_size=8, lr=1e-2)
    assert set(out) == {"l1", "g_adv", "d_loss"} and all(v == v for v in out.values())
    with torch.no_grad():
        l1_after = float((m.generate(z) - x[:8]).abs().mean())
    assert l1_after < 0.85 * l1_before, (l1_before, l1_after)
    assert not m.training and torch.equal(m.render(z), m.render(z))
    assert set(m.state_dict()) == keys  # the discriminator was dropped
    assert all(torch.equal(t, m.state_dict()[k]) for k, t in v_state.items())  # V's networks are frozen
    with pytest.raises(ValueError, match="steps >= 1"):
        m.sharpen(x, steps=0)


def test_salience_weights_the_pixels_that_differ_from_the_room(tiny_v: Path) -> None:
    """salience s: an error on the pixels where a frame differs from the batch's median (a monster)
    costs more than the same error on the static room, by the weights V's vae.salience uses; s = 0
    is the plain mean."""
    room = torch.full((8, 3, 64, 64), -0.5)
    room[:4, :, 20:28, 30:38] = 0.8  # a "monster" in half the frames
    on, off = torch.zeros_like(room), torch.zeros_like(room)
    on[:4, :, 20:28, 30:38] = 0.1  # the same error, on the monster or on the floor
    off[:4, :, 50:58, 30:38] = 0.1
    plain, weighted = make(tiny_v), make(tiny_v, salience=4.0)
    target = torch.zeros_like(room)
    assert plain._mse(on, target, room) == plain._mse(off, target, room)
    assert weighted._mse(on, target, room) > 3 * weighted._mse(off, target, room)
    assert torch.allclose(weighted._mse(torch.full_like(room, 0.1), target, room), torch.tensor(0.01))  # mean weight 1
    for bad in (-1.0, True):
        with pytest.raises(ValueError, match="salience must be a number >= 0"):
            make(tiny_v, salience=bad)


def test_salience_weighted_training_lowers_the_loss(tiny_v: Path, blocky_frames) -> None:
    m = make(tiny_v, salience=4.0)
    x = blocky_frames(64)
    losses = train(m, x, 60)
    assert all(v == v for v in losses) and sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    losses = m.distill(x, rounds=1, steps_per_round=20, batch_size=8, lr=2e-3)  # distillation weighs alike
    assert m.config.steps == 4 and losses[0] == losses[0]
