"""ProGAN and StyleGAN (book chapter 10): growth schedule, the paper's layers, styles, noise, truncation.

Fast (seconds): tiny models on 8x8 digits or random 16x16 images; the generic checks (losses fall,
seed determinism, save/load) are in test_generators.py, which covers every registered family.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import generators
from generators.data import GenData
from generators.gan import GAN
from generators.progan import (
    EqualConv2d,
    EqualLinear,
    ProGAN,
    growth_schedule,
    minibatch_stddev,
    pixel_norm,
)
from generators.registry import make_config
from generators.stylegan import StyleGAN, mixing_agreement
from generators.train import FitConfig

pytestmark = pytest.mark.usefixtures("suggested_torch_threads")


@pytest.fixture(scope="module")
def digits() -> GenData:
    return generators.data.load("digits").take(64, seed=0)


def progan(**kw) -> ProGAN:
    torch.manual_seed(0)
    m = generators.make("progan", preset="tiny", **{"shape": (1, 16, 16), **kw})
    assert isinstance(m, ProGAN)
    return m


def stylegan(**kw) -> StyleGAN:
    torch.manual_seed(0)
    m = generators.make("stylegan", preset="tiny", **{"shape": (3, 16, 16), **kw})
    assert isinstance(m, StyleGAN)
    return m


# --- ProGAN ------------------------------------------------------------------------------------------------
def test_growth_schedule_fades_each_level_in_then_stabilises() -> None:
    # 4x4 for 3 steps; 8x8 fades in over 4 steps then 3 stable; 16x16 likewise; then 16x16 for ever
    got = [growth_schedule(s, levels=2, fade_steps=4, stable_steps=3) for s in range(16)]
    assert got == [(0, 1.0)] * 3 + [(1, 0.0), (1, 0.25), (1, 0.5), (1, 0.75)] + [(1, 1.0)] * 3 + \
        [(2, 0.0), (2, 0.25), (2, 0.5), (2, 0.75)] + [(2, 1.0)] * 2
    assert growth_schedule(10_000, 2, 4, 3) == (2, 1.0)
    assert growth_schedule(0, 2, 4, 0) == (1, 0.0)  # no stable phase: the first fade starts at once
    assert growth_schedule(5, 0, 4, 3) == (0, 1.0)  # 4x4 data: nothing to grow
    m = progan(fade_steps=4, stable_steps=3)
    assert m.schedule_steps == 17 and [m.resolution(s) for s in (0, 3, 9, 10, 16)] == [4, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="fade_steps must be >= 1"):
        progan(fade_steps=0)


def test_fade_in_starts_from_the_previous_resolution() -> None:
    """At alpha = 0 the grown networks compute exactly what the smaller ones did (so growing does not
    disturb training); real images are blended the same way."""
    m = progan()
    z = torch.randn(3, m.config.z_dim)
    g = m.generator_net
    with torch.no_grad():
        small = g(z, 1)  # (3, 1, 8, 8)
        assert torch.allclose(g(z, 2, 0.0), F.interpolate(small, scale_factor=2.0, mode="nearest"), atol=1e-6)
        assert not torch.allclose(g(z, 2, 0.5), g(z, 2, 0.0))
        x = torch.randn(3, 1, 16, 16)
        d = m.discriminator_net
        assert torch.allclose(d(x, 2, 0.0), d(F.avg_pool2d(x, 2), 1), atol=1e-5)
    assert torch.allclose(m.real_at(x, 2, 0.0), F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0), atol=1e-6)
    assert torch.equal(m.real_at(x, 2, 1.0), x) and m.real_at(x, 0, 1.0).shape == (3, 1, 4, 4)


def test_sample_before_the_schedule_ends_is_the_current_resolution_upsampled() -> None:
    m = progan(fade_steps=4, stable_steps=3)
    x = m.sample(4, generator=0)  # untrained: 4x4, each pixel a 4x4 block of the 16x16 image
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, F.interpolate(x[:, :, ::4, ::4], scale_factor=4.0, mode="nearest"))
    m.trained_steps.fill_(10)  # the schedule at step 10: 16x16 fading in, alpha 0 -> still 8x8 blocks
    x = m.sample(4, generator=0)
    assert torch.equal(x, F.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="nearest"))
    m.trained_steps.fill_(12)
    x = m.sample(4, generator=0)
    assert not torch.equal(x, F.interpolate(x[:, :, ::2, ::2], scale_factor=2.0, mode="nearest"))


def test_training_grows_by_step_and_a_resumed_run_continues_the_schedule(digits: GenData, tmp_path: Path) -> None:
    settings = dict(batch_size=16, log_every=1, seed=0, checkpoint_every=1000)
    full = progan(shape=(1, 8, 8), fade_steps=4, stable_steps=3)
    h = generators.fit(full, digits, FitConfig(steps=10, **settings), progress=False)
    want = [growth_schedule(s, 1, 4, 3) for s in range(10)]
    assert [(int(math.log2(r)) - 2, a) for r, a in zip(h["resolution"], h["alpha"], strict=True)] == want
    assert int(full.trained_steps) == 10 and full.growth() == (1, 1.0)
    # killed after 5 steps (inside the fade-in), resumed from the checkpoint by a fresh model
    first = progan(shape=(1, 8, 8), fade_steps=4, stable_steps=3)
    generators.fit(first, digits, FitConfig(steps=5, **settings), out=tmp_path, progress=False, tensorboard=False)
    assert first.growth() == (1, 0.5)
    first.save(tmp_path / "m.pt")
    loaded = generators.load(tmp_path / "m.pt")
    assert isinstance(loaded, ProGAN) and int(loaded.trained_steps) == 5 and loaded.growth() == (1, 0.5)
    assert torch.equal(loaded.sample(3, generator=1), first.sample(3, generator=1))
    again = progan(shape=(1, 8, 8), fade_steps=4, stable_steps=3)
    h2 = generators.fit(again, digits, FitConfig(steps=10, **settings), out=tmp_path, progress=False, tensorboard=False)
    assert h2["alpha"] == h["alpha"][5:] and h2["resolution"] == h["resolution"][5:]
    assert int(again.trained_steps) == 10


def test_progan_reuses_gans_wgan_gp_loss() -> None:
    for cls in (ProGAN, StyleGAN):
        assert issubclass(cls, GAN)
        for name in ("discriminator_loss", "gradient_penalty", "generator_loss", "configure_optimizers"):
            assert getattr(cls, name) is getattr(GAN, name), (cls, name)


# --- the paper's layers ---------------------------------------------------------------------------------------
def test_equalised_learning_rate_scales_at_run_time() -> None:
    torch.manual_seed(0)
    conv = EqualConv2d(8, 4, 3)
    assert conv.scale == pytest.approx(math.sqrt(2.0) / math.sqrt(8 * 3 * 3))
    assert 0.85 < float(conv.weight.detach().std()) < 1.15  # stored weights ~ N(0, 1)
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))
    lin = EqualLinear(64, 16, lr_mul=0.01)
    assert lin.scale == pytest.approx(0.01 * math.sqrt(2.0) / 8.0)
    assert float((lin.weight * lin.scale).detach().std()) == pytest.approx(math.sqrt(2.0) / 8.0, rel=0.1)  # He's std
    # the point of it: Adam's first step moves every layer's weights by the same fraction of their scale,
    # whatever the fan-in (with ordinary He-initialised weights it would differ by sqrt(512 / 8) = 8x)
    layers = [EqualConv2d(c, 4, 3) for c in (8, 512)]
    before = [(lay.weight * lay.scale).detach().clone() for lay in layers]
    opt = torch.optim.Adam([p for lay in layers for p in lay.parameters()], lr=1e-3)
    sum(lay(torch.randn(2, lay.weight.shape[1], 6, 6)).square().mean() for lay in layers).backward()
    opt.step()
    rel = [float(((lay.weight * lay.scale).detach() - b).abs().mean() / b.std()) for lay, b in zip(layers, before, strict=True)]
    assert rel[0] == pytest.approx(1e-3, rel=0.2) and rel[1] == pytest.approx(1e-3, rel=0.2)


def test_minibatch_stddev_and_pixel_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (8, 6, 4, 4) and torch.equal(y[:, :5], x)
    # groups: samples i and i + 2, i + 4, i + 6 (i mod B/G)
    for i in range(2):
        group = x[i::2]  # (4, 5, 4, 4)
        want = group.var(0, unbiased=False).add(1e-8).sqrt().mean()
        assert torch.allclose(y[i::2, 5], want.expand(4, 4, 4), atol=1e-6)
    assert minibatch_stddev(torch.randn(6, 2, 4, 4)).shape == (6, 3, 4, 4)  # group 3 divides 6
    same = minibatch_stddev(torch.ones(4, 2, 4, 4))
    assert float(same[:, 2].max()) < 1e-3  # identical samples: no spread (a collapsed generator shows)
    p = pixel_norm(torch.randn(3, 7, 2, 2) * 5)
    assert torch.allclose(p.square().mean(1), torch.ones(3, 2, 2), atol=1e-5)


# --- StyleGAN --------------------------------------------------------------------------------------------------
def _with_noise(m: StyleGAN, strength: float = 0.5) -> StyleGAN:
    with torch.no_grad():
        for layer in m.generator_net.layers:
            layer.noise_strength.fill_(strength)  # type: ignore[union-attr]
    return m


def test_stylegan_shapes_layers_and_mapping_depth() -> None:
    m = stylegan(mapping_layers=3)
    assert m.num_layers == 6 and len(m.generator_net.mapping) == 3  # 4x4, 8x8, 16x16: two style layers each
    assert make_config("stylegan").mapping_layers == 8  # the paper's mapping network
    assert m.styles(torch.randn(5, 16)).shape == (5, 6, 16)
    assert m.generator_net.const.shape == (1, 16, 4, 4)  # a learned constant input
    with pytest.raises(ValueError, match="noise must be one of"):
        m.sample(2, noise="fresh")


def test_truncation_zero_gives_the_mean_w_image_for_every_z(digits: GenData) -> None:
    torch.manual_seed(0)
    m = generators.model_for("stylegan", digits, preset="tiny")
    generators.fit(m, digits, FitConfig(steps=4, batch_size=16), progress=False)  # w_avg tracked in training
    assert isinstance(m, StyleGAN) and float(m.w_avg.abs().sum()) > 0
    _with_noise(m)
    x = m.sample(4, generator=0, truncation=0.0, noise="const")
    with torch.no_grad():
        mean_w = m.generator_net.synthesize(m.w_avg.expand(1, m.num_layers, -1), "const").clamp(-1, 1)
    assert all(torch.allclose(xi, mean_w[0], atol=1e-5) for xi in x)
    full = m.sample(4, generator=0, noise="const")
    half = m.sample(4, generator=0, truncation=0.5, noise="const")
    assert (half - mean_w).abs().mean() < (full - mean_w).abs().mean()
    # random noise still varies the mean-w image (that is what noise does)
    assert not torch.allclose(m.sample(2, generator=0, truncation=0.0)[0], m.sample(2, generator=0, truncation=0.0)[1])


def test_mix_takes_coarse_styles_from_a_and_fine_from_b() -> None:
    m = _with_noise(stylegan())
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    image_a = m.sample(4, generator=torch.Generator().manual_seed(3), noise="const")  # draws z_a first
    assert torch.equal(m.mix(z_a, z_b, m.num_layers), image_a)
    assert torch.equal(m.mix(z_a, z_b, 0), m.mix(z_b, z_a, m.num_layers))
    middle = m.mix(z_a, z_b, 2)
    assert not torch.allclose(middle, image_a) and not torch.allclose(middle, m.mix(z_a, z_b, 0))
    with pytest.raises(ValueError, match=r"crossover must be in \[0, 6\]"):
        m.mix(z_a, z_b, 7)
    r = mixing_agreement(m, lambda x: x, pairs=6, seed=0)  # pixels as features
    assert r["crossover"] == 4 and 0.0 <= r["nearer_a"] <= 1.0 and r["dist_a"] > 0 and r["dist_b"] > 0


def test_noise_inputs_change_the_image_only_with_a_nonzero_scale() -> None:
    m = stylegan()
    assert all(float(layer.noise_strength.detach().abs().sum()) == 0 for layer in m.generator_net.layers)  # paper: from 0
    quiet = m.sample(3, generator=1, noise="none")
    assert torch.equal(m.sample(3, generator=1, noise="random"), quiet)
    assert torch.equal(m.sample(3, generator=1, noise="const"), quiet)
    with torch.no_grad():
        m.generator_net.layers[3].noise_strength[0] = 0.5  # one channel of one 8x8 layer
    noisy = m.sample(3, generator=1)
    assert not torch.equal(noisy, quiet) and torch.equal(noisy, m.sample(3, generator=1))
    assert not torch.equal(m.sample(3, generator=1), m.sample(3, generator=1, noise="const"))


def test_style_mixing_regularisation_in_training_mode_only() -> None:
    """Training forwards mix two z's styles with probability ``style_mixing`` and track ``w_avg``."""
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    never, always = stylegan(style_mixing=0.0), stylegan(style_mixing=1.0)  # same weights (seed 0)
    with torch.no_grad():
        plain = never.sample(4, generator=torch.Generator().manual_seed(0), noise="none")  # z as above
        never.train()
        always.train()
        assert torch.allclose(never.generate(z).clamp(-1, 1), plain, atol=1e-6)
        assert not torch.allclose(always.generate(z).clamp(-1, 1), plain, atol=1e-4)
    w = never.generator_net.map(z).mean(0)
    assert torch.allclose(never.w_avg, (1 - never.config.w_avg_decay) * w, atol=1e-6)  # from 0, one update
    before = always.w_avg.clone()
    always.sample(2, generator=0)  # sampling leaves it alone
    assert torch.equal(always.w_avg, before)


def test_stylegan_save_load_keeps_w_avg_and_constant_noise(digits: GenData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = generators.model_for("stylegan", digits, preset="tiny")
    generators.fit(m, digits, FitConfig(steps=3, batch_size=16), progress=False)
    _with_noise(m)
    m.save(tmp_path / "s.pt")
    loaded = generators.load(tmp_path / "s.pt")
    assert isinstance(loaded, StyleGAN) and torch.equal(loaded.w_avg, m.w_avg)
    for kw in ({"truncation": 0.7, "noise": "const"}, {"truncation": 0.5}):
        assert torch.equal(loaded.sample(3, generator=2, **kw), m.sample(3, generator=2, **kw))
