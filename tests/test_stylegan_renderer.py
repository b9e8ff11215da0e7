"""The StyleGAN renderer: StyleGAN's synthesis driven by V's z, over V's decoder frame by default."""

from __future__ import annotations

from pathlib import Path

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
    m = make(tiny_v, residual=False)
    v = ConvVAE.load(tiny_v)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(m.render(z), v.decode(z), atol=1e-2)
