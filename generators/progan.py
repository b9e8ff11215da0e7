"""ProGAN: progressive growing of GANs (book chapter 10; Karras et al. 2018, https://arxiv.org/abs/1710.10196).

The generator and the discriminator start at 4x4 and grow, one doubling of the side at a time, to
the data's side ``S``. Each new resolution is *faded in*: for ``fade_steps`` steps the output is
``(1 - alpha) * upsample(toRGB_old(h)) + alpha * toRGB_new(block_new(h))`` with ``alpha`` going
0 -> 1 (the discriminator mirrors it with ``fromRGB`` of the downsampled image, and the real images
are blended the same way), then trained ``stable_steps`` more at ``alpha = 1``.
:func:`growth_schedule` maps the training step to ``(level, alpha)``; the step the training loop
passes to ``training_step`` drives it, so a resumed training continues at the same resolution
and ``alpha``. The model also keeps the number of steps it has been trained (``trained_steps``, a
buffer saved with its weights), so :meth:`ProGAN.sample` draws at the resolution reached: before
the schedule ends, a ``r x r`` image (``r < S``) upsampled (nearest) to ``S x S``.

Also from the paper (sec. 4): pixelwise feature normalisation in the generator
(:func:`pixel_norm`), the minibatch standard deviation as an extra feature map at the critic's
4x4 stage (:func:`minibatch_stddev`, sec. 3), and the equalised learning rate
(:class:`EqualConv2d`, :class:`EqualLinear`: weights drawn from N(0, 1) and scaled at run time by
He's constant, so Adam's per-parameter step size is the same for every layer).

The loss is gan.py's WGAN-GP (the paper's, without its 0.001 drift term): :class:`ProGAN`
subclasses :class:`generators.gan.GAN` and replaces only the two networks. The pieces here
(layers, the discriminator, :class:`KarrasConfig`) are shared with :mod:`generators.stylegan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, as_generator, unpack
from generators.gan import GAN
from generators.nets import num_halvings
from generators.registry import Family, register

HE_GAIN = math.sqrt(2.0)
"""He's gain for LeakyReLU layers (ProGAN: sqrt(2); 1 for the linear toRGB and output layers)."""


@dataclass
class KarrasConfig(GenConfig):
    """Fields ProGAN and StyleGAN share: latent size, widths, the WGAN-GP loss and its optimiser."""

    z_dim: int = 512
    """size of the latent z (ProGAN and StyleGAN: 512)."""
    channels: int = 64
    """filters at the data's resolution, doubled at each halving of the side (as DCGAN's ``channels``)."""
    max_channels: int = 512
    """cap on the filters of any stage (papers: 512)."""
    mbstd_group: int = 4
    """group size of the minibatch standard deviation (ProGAN sec. 3: 4; the largest divisor of the batch
    up to it is used)."""
    objective: str = "wgan-gp"
    """"wgan-gp" (the papers' CelebA-HQ loss, gan.py's) or "bce" (gan.py's DCGAN loss)."""
    critic_steps: int = 1
    """critic updates per generator update (ProGAN: n_critic = 1)."""
    gp_weight: float = 10.0
    """WGAN-GP gradient penalty weight (ProGAN: 10)."""
    label_noise: float = 0.0
    """BCE targets drawn from [1-a, 1] / [0, a] (only with objective "bce")."""
    beta1: float = 0.0
    """Adam beta1 (ProGAN, StyleGAN: 0)."""
    beta2: float = 0.99
    """Adam beta2 (ProGAN, StyleGAN: 0.99)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in ("bce", "wgan-gp"):
            raise ValueError(f"objective must be 'bce' or 'wgan-gp', got {self.objective!r}")
        if self.critic_steps < 1 or self.mbstd_group < 1 or self.channels < 1 or self.max_channels < 1:
            raise ValueError("critic_steps, mbstd_group, channels and max_channels must be >= 1")
        if self.num_classes:
            raise ValueError("progan and stylegan are unconditional here; train them without labels")
        self.require_image(type(self).__name__.removesuffix("Config").lower(), min_size=4)

    @property
    def levels(self) -> int:
        """Index of the data's resolution: level ``k`` is ``4 * 2**k`` pixels a side."""
        return num_halvings(self.shape[1])

    def widths(self) -> list[int]:
        """Filters per level, ``[4x4, 8x8, ..., S x S]``."""
        top = self.levels
        return [min(self.max_channels, self.channels * 2 ** (top - k)) for k in range(top + 1)]


@dataclass
class ProGANConfig(KarrasConfig):
    """ProGAN (paper defaults; the phases are counted in steps, the paper's 800k images at batch 16)."""

    fade_steps: int = 50_000
    """steps over which each new resolution fades in, alpha 0 -> 1 (paper: 800k images)."""
    stable_steps: int = 50_000
    """steps at each resolution after its fade-in, and at 4x4 before the first (paper: 800k images)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fade_steps < 1 or self.stable_steps < 0:
            raise ValueError(f"fade_steps must be >= 1 and stable_steps >= 0, got {self.fade_steps}, {self.stable_steps}")


# --- layers -----------------------------------------------------------------------------------------
class EqualLinear(nn.Module):
    """A linear layer with equalised learning rate (ProGAN sec. 4.1).

    ``w ~ N(0, 1 / lr_mul^2)``, used as ``w * scale`` with ``scale = lr_mul * gain / sqrt(fan_in)``:
    He's initialisation applied at run time. ``lr_mul`` slows the layer (StyleGAN's mapping: 0.01).
    """

    def __init__(self, d_in: int, d_out: int, gain: float = HE_GAIN, lr_mul: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), bias_init / lr_mul))
        self.scale = lr_mul * gain / math.sqrt(d_in)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)  # (B, d_out)


class EqualConv2d(nn.Module):
    """A 2-D convolution with equalised learning rate: ``w ~ N(0, 1)`` used as ``w * gain / sqrt(fan_in)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, gain: float = HE_GAIN, padding: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = gain / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2 if padding is None else padding

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer convolves with, ``(C_out, C_in, k, k)``."""
        return self.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's (or vector's) features divided by their root mean square over dim 1 (ProGAN sec. 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append the minibatch standard deviation as one feature map (ProGAN sec. 3).

    ``(B, C, H, W) -> (B, C + 1, H, W)``: within groups of ``G`` samples (``G`` the largest divisor of
    ``B`` up to ``group_size``; sample ``i`` is in group ``i mod B/G``), the standard deviation of every
    feature at every pixel, averaged to one number per group and broadcast as a constant map.
    """
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.reshape(g, b // g, c, h, w)  # (G, B/G, C, H, W)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (B/G, C, H, W)
    s = std.mean(dim=(1, 2, 3)).repeat(g)  # (B,)
    return torch.cat([x, s.reshape(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upsample(x: torch.Tensor, size: int | None = None, mode: str = "nearest") -> torch.Tensor:
    """Double the side of ``(B, C, H, W)`` (or resize it to ``size``)."""
    if size is None:
        return F.interpolate(x, scale_factor=2.0, mode=mode)
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode=mode)


# --- the schedule --------------------------------------------------------------------------------------
def growth_schedule(step: int, levels: int, fade_steps: int, stable_steps: int) -> tuple[int, float]:
    """``(level, alpha)`` trained at ``step``: level ``k`` is ``4 * 2**k`` pixels a side.

    4x4 for ``stable_steps``; then for each ``k = 1..levels``: fade level ``k`` in over ``fade_steps``
    (``alpha = (step - start) / fade_steps``, 0 at the start), then ``stable_steps`` at ``alpha = 1``;
    after the last phase the top level at ``alpha = 1`` for ever.
    """
    if step < stable_steps or levels == 0:
        return 0, 1.0
    phase = fade_steps + stable_steps
    k, into = divmod(step - stable_steps, phase)
    if k >= levels:
        return levels, 1.0
    return k + 1, min(1.0, into / fade_steps)


# --- the two networks ------------------------------------------------------------------------------------
class ProGenerator(nn.Module):
    """z ``(B, Z)`` -> image ``(B, C, r, r)`` at the level asked for, ``r = 4 * 2**level`` (linear output)."""

    def __init__(self, cfg: KarrasConfig) -> None:
        super().__init__()
        w = cfg.widths()
        c = cfg.shape[0]
        self.w0 = w[0]
        self.dense = EqualLinear(cfg.z_dim, w[0] * 16, gain=HE_GAIN / 4)  # ProGAN's 4x4 "transposed conv"
        self.conv0 = EqualConv2d(w[0], w[0], 3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualConv2d(a, b, 3), EqualConv2d(b, b, 3)]) for a, b in zip(w[:-1], w[1:], strict=True))
        self.to_rgb = nn.ModuleList(EqualConv2d(ch, c, 1, gain=1.0) for ch in w)

    def forward(self, z: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h = self.dense(pixel_norm(z)).reshape(-1, self.w0, 4, 4)  # (B, w0, 4, 4)
        h = pixel_norm(lrelu(self.conv0(pixel_norm(lrelu(h)))))
        prev = h
        for conv_a, conv_b in list(self.blocks)[:level]:  # type: ignore[misc]
            prev = h
            h = upsample(h)  # (B, w, 2r, 2r)
            h = pixel_norm(lrelu(conv_b(pixel_norm(lrelu(conv_a(h))))))
        new = self.to_rgb[level](h)  # (B, C, r, r)
        if level == 0 or alpha >= 1.0:
            return new
        old = upsample(self.to_rgb[level - 1](prev))  # (B, C, r, r): the previous resolution's image, doubled
        return torch.lerp(old, new, alpha)


class ProDiscriminator(nn.Module):
    """Image ``(B, C, r, r)`` at a level -> critic value ``(B,)``; the mirror of :class:`ProGenerator`.

    ``progressive=False`` (StyleGAN's use) keeps only the top level's ``fromRGB``.
    """

    def __init__(self, cfg: KarrasConfig, progressive: bool = True) -> None:
        super().__init__()
        w = cfg.widths()
        c = cfg.shape[0]
        self.mbstd_group = cfg.mbstd_group
        self.top = cfg.levels
        self.from_rgb = nn.ModuleDict({str(k): EqualConv2d(c, w[k], 1) for k in range(len(w))
                                       if progressive or k == self.top})
        self.blocks = nn.ModuleList(  # block k-1 takes level k to level k-1
            nn.ModuleList([EqualConv2d(b, b, 3), EqualConv2d(b, a, 3)]) for a, b in zip(w[:-1], w[1:], strict=True))
        self.conv_final = EqualConv2d(w[0] + 1, w[0], 3)
        self.conv_4x4 = EqualConv2d(w[0], w[0], 4, padding=0)  # (B, w0, 1, 1)
        self.out = EqualLinear(w[0], 1, gain=1.0)

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        conv_a, conv_b = self.blocks[k - 1]  # type: ignore[misc]
        return F.avg_pool2d(lrelu(conv_b(lrelu(conv_a(h)))), 2)  # (B, w[k-1], r/2, r/2)

    def forward(self, x: torch.Tensor, level: int, alpha: float = 1.0) -> torch.Tensor:
        h = lrelu(self.from_rgb[str(level)](x))  # (B, w[level], r, r)
        if level > 0:
            h = self.block(level, h)
            if alpha < 1.0:
                old = lrelu(self.from_rgb[str(level - 1)](F.avg_pool2d(x, 2)))  # (B, w[level-1], r/2, r/2)
                h = torch.lerp(old, h, alpha)
            for k in range(level - 1, 0, -1):
                h = self.block(k, h)  # down to (B, w0, 4, 4)
        h = lrelu(self.conv_final(minibatch_stddev(h, self.mbstd_group)))  # (B, w0, 4, 4)
        h = lrelu(self.conv_4x4(h)).flatten(1)  # (B, w0)
        return self.out(h).reshape(-1)  # (B,)


# --- the model ---------------------------------------------------------------------------------------------
class ProGAN(GAN):
    """Progressively grown WGAN-GP (see module docstring); ``generate`` / ``discriminate`` work at the
    resolution of the growth schedule."""

    config: ProGANConfig  # type: ignore[assignment]

    def __init__(self, config: ProGANConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        # generator steps trained so far (set by training_step; saved with the weights)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        return ProGenerator(self.config), ProDiscriminator(self.config)

    # --- growth ---------------------------------------------------------------------------------------
    def growth(self, step: int | None = None) -> tuple[int, float]:
        """``(level, alpha)`` at ``step`` (default: the steps trained so far)."""
        s = int(self.trained_steps) if step is None else int(step)
        return growth_schedule(s, self.config.levels, self.config.fade_steps, self.config.stable_steps)

    def resolution(self, step: int | None = None) -> int:
        """Side of the images trained at ``step`` (default: the steps trained so far)."""
        return 4 * 2 ** self.growth(step)[0]

    @property
    def schedule_steps(self) -> int:
        """Steps until the data's resolution is faded in and stabilised (the schedule's end)."""
        c = self.config
        return c.stable_steps + c.levels * (c.fade_steps + c.stable_steps)

    def real_at(self, x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
        """Real images ``(B, C, S, S)`` at the level trained, ``(B, C, r, r)``, blended with the previous
        resolution during a fade-in as the generator's output is (paper appendix A.1)."""
        x = F.avg_pool2d(x, x.shape[-1] // (4 * 2 ** level)) if x.shape[-1] > 4 * 2 ** level else x
        if level > 0 and alpha < 1.0:
            x = torch.lerp(upsample(F.avg_pool2d(x, 2)), x, alpha)
        return x

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``(B, Z)`` -> images ``(B, C, r, r)`` at the current level and alpha (linear output)."""
        return self.generator_net(z, *self.growth())

    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(B, C, r, r)`` at the current level -> critic values ``(B,)``."""
        level, alpha = self.growth()
        if x.shape[-1] != 4 * 2 ** level:
            raise ValueError(f"progan's critic works at {4 * 2 ** level}x{4 * 2 ** level} now (step "
                             f"{int(self.trained_steps)}), got {x.shape[-1]}x{x.shape[-2]}; use real_at(x, ...)")
        return self.discriminator_net(x, level, alpha)

    def training_step(self, batch: Batch, optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, float]:
        """gan.py's WGAN-GP step at the resolution and alpha of ``step`` (real images downsampled to it)."""
        x, _ = unpack(batch)
        self.trained_steps.fill_(step)
        level, alpha = self.growth()
        logs = super().training_step(self.real_at(x, level, alpha), optimizers, step)
        self.trained_steps.fill_(step + 1)
        return {**logs, "resolution": float(4 * 2 ** level), "alpha": alpha}

    # --- sampling --------------------------------------------------------------------------------------------
    def sample(self, n: int, cond: torch.Tensor | int | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, S, S)`` in [-1, 1], drawn at the resolution reached after
        ``trained_steps`` steps and upsampled (nearest) to the data's side while the schedule runs."""
        g = as_generator(generator, self.device)
        with self.evaluating():
            self.check_cond(n, cond, g)
            z = torch.randn(n, self.config.z_dim, generator=g, device=self.device)  # (n, Z)
            return upsample(self.generate(z), self.shape[-1]).clamp(-1.0, 1.0)  # (n, C, S, S)


register(Family("progan", ProGAN, ProGANConfig,
                "ProGAN: progressive growing with fade-in, pixel norm, minibatch stddev, equalised lr (book ch. 10)",
                presets={"tiny": {"z_dim": 16, "channels": 8, "max_channels": 16, "fade_steps": 10, "stable_steps": 0},
                         "small": {"z_dim": 128, "channels": 8, "max_channels": 64,
                                   "fade_steps": 60, "stable_steps": 60}},  # 64x64 frames: 600 steps ~2.5 CPU min (lr 2e-3)
                train={"lr": 1e-3, "batch_size": 16}, monitor="d_loss"))
