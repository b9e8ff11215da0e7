"""The StyleGAN renderer: StyleGAN's synthesis driven by V's z, over V's decoder frame by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import generators
from generators.stylegan_renderer import StyleRenderer
from worldlab.vae import ConvVAE


def make(tiny_v: Path, **kw) -> StyleRenderer:
    torch.manual_seed(0)
    m = generators.make("stylegan_renderer", vae=str(tiny_v), preset="tiny", **kw)
    assert isinstance(m, StyleRenderer)
    return m


def test_residual_renderer_starts_as_vs_decoder_and_learns_away_from_it(tiny_v: Path, blocky_frames) -> None:
    m = make(tiny_v)
    assert m.config.residual
    v = ConvVAE.load(tiny_v)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    a = m.render(z)
    assert a.shape == (3, 3, 64, 64) and torch.equal(a, m.render(z))  # constant noise: the same z, the same frame
    assert torch.allclose(a, v.decode(z), atol=1e-5)  # the to-RGB layers start at zero: V's own frame
    opts = m.configure_optimizers(2e-3)
    m.train()
    x = blocky_frames(8)
    l1 = [m.training_step((x, None), opts, s)["l1"] for s in range(12)]
    assert all(torch.isfinite(torch.tensor(l1))) and sum(l1[-3:]) < sum(l1[:3]), l1
    assert not torch.allclose(m.render(z), v.decode(z), atol=1e-3)  # it draws its own detail now
    # V's decoder is frozen: only StyleGAN's networks and D train
    assert not any(p.requires_grad for p in [*m.fc_dec.parameters(), *m.decoder.parameters()])


def test_from_scratch_renderer_does_not_draw_vs_frame(tiny_v: Path) -> None:
    m = make(tiny_v, residual=False, spatial=False)
    v = ConvVAE.load(tiny_v)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(m.render(z), v.decode(z), atol=1e-2)


def test_spatial_input_learns_and_old_checkpoints_load_without_it(tiny_v: Path, blocky_frames, tmp_path: Path) -> None:
    """V's frame enters the synthesis network (spatial=True) through 1x1 convolutions that
    start at zero and train; the adversarial weight ramps in; D's learning rate is a multiple of G's;
    a checkpoint saved before these settings existed loads as the renderer it was (none of them)."""
    assert not make(tiny_v).config.spatial  # off by default (docs/RENDERER.md)
    m = make(tiny_v, spatial=True, d_lr_mul=0.25, adv_ramp=300)
    assert m.config.spatial and m.frame_in is not None and len(m.frame_in) == len(m.style.to_rgb)
    assert all(int(torch.count_nonzero(c.weight.detach())) == 0 for c in m.frame_in)
    assert m.adv_weight_at(0) == 0.0 and m.adv_weight_at(m.config.adv_ramp // 2) == 0.5 * m.config.adv_weight
    assert m.adv_weight_at(10 * m.config.adv_ramp) == m.config.adv_weight
    opts = m.configure_optimizers(2e-3)
    assert opts["discriminator"].param_groups[0]["lr"] == 2e-3 * m.config.d_lr_mul
    m.train()
    x = blocky_frames(8)
    for s in range(4):
        m.training_step((x, None), opts, s)
    assert all(int(torch.count_nonzero(c.weight.detach())) > 0 for c in m.frame_in)  # it reads V's frame now
    old = make(tiny_v, spatial=False, d_lr_mul=1.0, adv_ramp=0)
    old.save(tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    for k in ("spatial", "d_lr_mul", "adv_ramp"):  # as written before the fields existed
        del state["config"][k]
    torch.save(state, tmp_path / "old.pt")
    back = generators.load(tmp_path / "old.pt")
    assert isinstance(back, StyleRenderer) and not back.config.spatial and back.frame_in is None
    assert back.adv_weight_at(0) == back.config.adv_weight
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(back.render(z), old.render(z))


def test_spatial_needs_residual(tiny_v: Path) -> None:
    with pytest.raises(ValueError, match="needs residual=True"):
        make(tiny_v, residual=False, spatial=True)


def test_r1_penalty_smooths_d_and_is_checked(tiny_v: Path, blocky_frames) -> None:
    """r1_gamma > 0 adds gamma/2 x |grad_x D(x, z)|^2 at the real frames to D's loss (the same
    step, same seeds, moves D differently than without it); a negative weight is refused."""
    x = blocky_frames(8)
    runs = {}
    for gamma in (0.0, 10.0):
        m = make(tiny_v, r1_gamma=gamma)
        opts = m.configure_optimizers(2e-3)
        m.train()
        torch.manual_seed(3)
        out = m.training_step((x, None), opts, 0)
        runs[gamma] = (out, [p.detach().clone() for p in m.discriminator_net.parameters()])
    assert runs[0.0][0]["d_r1"] == 0.0 and 0 < runs[10.0][0]["d_r1"] < float("inf")
    assert runs[10.0][0]["d_loss"] > runs[0.0][0]["d_loss"]  # the penalty is part of D's loss
    assert any(not torch.equal(a, b) for a, b in zip(runs[0.0][1], runs[10.0][1], strict=True))
    with pytest.raises(ValueError, match="r1_gamma must be >= 0"):
        make(tiny_v, r1_gamma=-1.0)
