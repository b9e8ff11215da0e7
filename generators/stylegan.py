"""StyleGAN: a style-based generator (book chapter 10; Karras et al. 2019, https://arxiv.org/abs/1812.04948).

- A *mapping network* (8 equalised-lr layers with a 0.01 learning-rate multiplier in the paper)
  turns ``z`` into an intermediate latent ``w``.
- The *synthesis network* starts from a learned constant 4x4 input and doubles the side up to
  the data's; two 3x3 convolutions per resolution, each its own *style layer*: an affine map of
  ``w`` scales the convolution's input features. The styles are applied with StyleGAN2's
  modulated and demodulated convolutions (https://arxiv.org/abs/1912.04958, sec. 2.2) in place
  of AdaIN, and the image is the sum of a 1x1 ``toRGB`` at every resolution (StyleGAN2's "skip"
  generator), which trains without progressive growing.
- Per-pixel *noise inputs* after every convolution, one noise image per layer scaled per channel
  by learned factors (initialised to 0, as in the paper). ``noise="random"`` draws fresh noise
  (from the sampling generator, so ``sample(n, generator=seed)`` is deterministic),
  ``"const"`` uses a fixed noise image per layer (saved with the model), ``"none"`` adds none.
- *Style mixing regularisation* (sec. 3.1): during training, with probability ``style_mixing``,
  the layers from a random crossover on take their style from a second ``z``.
- The *truncation trick* (sec. 3.1 / appendix B): ``w' = w_avg + psi (w - w_avg)`` with ``w_avg``
  tracked during training; ``sample(n, truncation=psi)``.
- :meth:`StyleGAN.mix` draws ``z_a``'s styles in the coarse layers (below ``crossover``) and
  ``z_b``'s in the fine ones.

The discriminator is ProGAN's (:class:`generators.progan.ProDiscriminator`, as in StyleGAN1, at
the full resolution) and the loss gan.py's WGAN-GP: :class:`StyleGAN` subclasses
:class:`generators.gan.GAN` and replaces only the networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import as_generator
from generators.gan import GAN
from generators.progan import (
    HE_GAIN,
    EqualConv2d,
    EqualLinear,
    KarrasConfig,
    ProDiscriminator,
    lrelu,
    pixel_norm,
    upsample,
)
from generators.registry import Family, register

NOISE_MODES = ("random", "const", "none")


@dataclass
class StyleGANConfig(KarrasConfig):
    """StyleGAN (paper defaults)."""

    w_dim: int = 512
    """size of the intermediate latent w (paper: 512)."""
    mapping_layers: int = 8
    """layers of the mapping network z -> w (paper: 8)."""
    mapping_lr_mul: float = 0.01
    """learning-rate multiplier of the mapping network (paper: 0.01)."""
    style_mixing: float = 0.9
    """probability that a training batch mixes the styles of two z at a random crossover (paper: 0.9)."""
    w_avg_decay: float = 0.995
    """decay of the running mean of w used by the truncation trick (official code: 0.995)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mapping_layers < 1 or self.w_dim < 1:
            raise ValueError(f"mapping_layers and w_dim must be >= 1, got {self.mapping_layers}, {self.w_dim}")
        if not 0.0 <= self.style_mixing <= 1.0 or not 0.0 <= self.w_avg_decay < 1.0:
            raise ValueError("style_mixing must be in [0, 1] and w_avg_decay in [0, 1)")

    @property
    def num_layers(self) -> int:
        """Style layers: two per resolution, 4x4 to the data's side."""
        return 2 * (self.levels + 1)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: the style ``s = A(w)`` scales the input features, and
    demodulation divides each output feature by the norm its modulated weights would have,
    ``sigma_o = sqrt(sum_{i,k} (s_i w_oik)^2)`` (StyleGAN2 eq. 1-3; computed on activations, not
    per-sample weights, which is the same and an ordinary convolution)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.conv = EqualConv2d(c_in, c_out, kernel, gain=1.0, bias=False)
        self.affine = EqualLinear(w_dim, c_in, gain=1.0, bias_init=1.0)  # styles start at 1
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, C_in)
        weight = self.conv.effective_weight()  # (C_out, C_in, k, k)
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.conv.padding)  # (B, C_out, H, W)
        if self.demodulate:
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).T + 1e-8)  # (B, C_out)
            out = out * d[:, :, None, None]
        return out


class StyledConv(nn.Module):
    """One style layer: [upsample] -> modulated 3x3 conv -> + scaled noise -> + bias -> LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, side: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(c_out))  # per-channel noise scale (paper: starts at 0)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("noise_const", torch.randn(1, 1, side, side))

    def noise(self, b: int, mode: str, generator: torch.Generator | None) -> torch.Tensor | None:
        """The noise image ``(B or 1, 1, H, W)`` of this layer, or None for ``mode="none"``."""
        if mode == "none":
            return None
        if mode == "const":
            return self.noise_const
        return torch.randn((b, *self.noise_const.shape[1:]), generator=generator, device=self.noise_const.device)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.up:
            x = upsample(x, mode="bilinear")  # (B, C_in, 2H, 2W)
        x = self.conv(x, w)  # (B, C_out, H, W)
        if noise is not None:
            x = x + self.noise_strength[None, :, None, None] * noise
        return lrelu(x + self.bias[None, :, None, None]) * HE_GAIN


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to the image channels (no demodulation, linear)."""

    def __init__(self, c_in: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """The mapping network z -> w and the synthesis network ws -> image."""

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        widths = cfg.widths()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.mapping = nn.ModuleList(EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        layers: list[nn.Module] = []
        for k, ch in enumerate(widths):
            c_in = widths[max(0, k - 1)]
            layers += [StyledConv(c_in, ch, cfg.w_dim, 4 * 2 ** k, up=k > 0),
                       StyledConv(ch, ch, cfg.w_dim, 4 * 2 ** k, up=False)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = nn.ModuleList(ToRGB(ch, cfg.shape[0], cfg.w_dim) for ch in widths)

    def map(self, z: torch.Tensor) -> torch.Tensor:
        """z ``(B, Z)`` -> w ``(B, W)``."""
        h = pixel_norm(z)
        for layer in self.mapping:
            h = lrelu(layer(h))
        return h

    def synthesize(self, ws: torch.Tensor, noise: str = "random", generator: torch.Generator | None = None,
                   inject: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-layer styles ``ws (B, L, W)`` -> image ``(B, C, S, S)`` (linear output). ``inject[k]``
        ``(B, ch_k, r_k, r_k)``, when given, is added to the features of block k after its first
        (upsampling) layer: a spatial input beside the styles (the StyleGAN renderer's V frame)."""
        b = ws.shape[0]
        h = self.const.expand(b, -1, -1, -1)  # (B, w0, 4, 4)
        rgb: torch.Tensor | None = None
        for k, to_rgb in enumerate(self.to_rgb):
            for j in (2 * k, 2 * k + 1):
                layer: StyledConv = self.layers[j]  # type: ignore[assignment]
                h = layer(h, ws[:, j], layer.noise(b, noise, generator))  # (B, ch, r, r)
                if inject is not None and j == 2 * k:
                    h = h + inject[k]
            y = to_rgb(h, ws[:, 2 * k + 1])  # (B, C, r, r)
            rgb = y if rgb is None else upsample(rgb, mode="bilinear") + y
        assert rgb is not None
        return rgb


class StyleGAN(GAN):
    """Style-based generator + ProGAN's critic, trained with gan.py's WGAN-GP (see module docstring)."""

    config: StyleGANConfig  # type: ignore[assignment]
    generator_net: StyleGenerator

    def __init__(self, config: StyleGANConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        # running mean of w over training (the truncation trick's centre)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        return StyleGenerator(self.config), ProDiscriminator(self.config, progressive=False)

    @property
    def num_layers(self) -> int:
        """Style layers (the range of ``mix``'s ``crossover``)."""
        return self.config.num_layers

    # --- latents -> styles -> images ------------------------------------------------------------------------------
    def styles(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z ``(B, Z)`` -> the per-layer styles ``(B, L, W)``, truncated towards ``w_avg`` by ``psi``."""
        w = self.generator_net.map(z)  # (B, W)
        if truncation != 1.0:
            w = torch.lerp(self.w_avg.to(w.dtype), w, truncation)  # w_avg + psi (w - w_avg)
        return w[:, None, :].expand(-1, self.num_layers, -1)  # (B, L, W)

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``(B, Z)`` -> images ``(B, C, S, S)`` (linear output). In training mode it updates ``w_avg``
        and, with probability ``style_mixing``, takes the layers from a random crossover on from a second z."""
        ws = self.styles(z)  # (B, L, W)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(torch.lerp(ws[:, 0].mean(0), self.w_avg, self.config.w_avg_decay))
            if self.num_layers > 1 and float(torch.rand(())) < self.config.style_mixing:
                cut = int(torch.randint(1, self.num_layers, ()))
                ws = torch.cat([ws[:, :cut], self.styles(torch.randn_like(z))[:, cut:]], dim=1)
        return self.generator_net.synthesize(ws)

    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(B, C, S, S)`` -> critic values ``(B,)``."""
        return self.discriminator_net(x, self.config.levels)

    # --- sampling ------------------------------------------------------------------------------------------------
    def sample(self, n: int, cond: torch.Tensor | int | None = None,
               generator: int | torch.Generator | None = None, truncation: float = 1.0,
               noise: str = "random") -> torch.Tensor:
        """``n`` images ``(n, C, S, S)`` in [-1, 1]; ``truncation`` is psi (1 = none, 0 = the mean-w image);
        ``noise``: "random" (drawn from ``generator`` after z), "const" or "none"."""
        _check_noise(noise)
        g = as_generator(generator, self.device)
        with self.evaluating():
            self.check_cond(n, cond, g)
            z = torch.randn(n, self.config.z_dim, generator=g, device=self.device)  # (n, Z)
            ws = self.styles(z, truncation)
            return self.generator_net.synthesize(ws, noise, g).clamp(-1.0, 1.0)

    def mix(self, z_a: torch.Tensor, z_b: torch.Tensor, crossover: int, truncation: float = 1.0,
            noise: str = "const", generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, C, S, S)`` in [-1, 1] with ``z_a``'s styles in layers ``< crossover`` (the coarse ones:
        two per resolution from 4x4 up) and ``z_b``'s in the rest: 0 gives B's image, ``num_layers`` A's.
        ``noise`` as in :meth:`sample` (default "const", so the images of A and B are well defined)."""
        _check_noise(noise)
        if not 0 <= crossover <= self.num_layers:
            raise ValueError(f"crossover must be in [0, {self.num_layers}], got {crossover}")
        if z_a.shape != z_b.shape:
            raise ValueError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
        g = as_generator(generator, self.device)
        with self.evaluating():
            z_a, z_b = z_a.to(self.device), z_b.to(self.device)
            ws = torch.cat([self.styles(z_a, truncation)[:, :crossover],
                            self.styles(z_b, truncation)[:, crossover:]], dim=1)  # (B, L, W)
            return self.generator_net.synthesize(ws, noise, g).clamp(-1.0, 1.0)


COARSE_LEVELS = 2
"""the paper's "coarse" styles: the layers of the 4x4 and 8x8 resolutions (sec. 3.1)."""


def mixing_agreement(model: StyleGAN, encode: Callable[[torch.Tensor], torch.Tensor], pairs: int = 100,
                     crossover: int | None = None, seed: int = 0) -> dict[str, float]:
    """Does a mix with A's coarse styles and B's fine ones look like A? Measured in a feature space.

    For ``pairs`` pairs of latents (drawn with ``seed``), the images of A, of B and of
    ``mix(z_a, z_b, crossover)`` (default: the 4x4 and 8x8 layers from A) go through ``encode``
    (images ``(B, C, S, S)`` in [-1, 1] -> features ``(B, F)``; for frames, V's posterior mean).
    Returns ``nearer_a`` (the fraction of mixes nearer A's features than B's) and the mean
    distances ``dist_a``, ``dist_b``; constant noise, so only the styles differ.
    """
    cut = min(2 * COARSE_LEVELS, model.num_layers) if crossover is None else crossover
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(pairs, model.config.z_dim, generator=g)  # (P, Z)
    z_b = torch.randn(pairs, model.config.z_dim, generator=g)
    with torch.no_grad():
        f_a, f_b, f_m = (encode(model.mix(z_a, z_b, c)).flatten(1) for c in (model.num_layers, 0, cut))  # (P, F)
    d_a, d_b = (f_m - f_a).norm(dim=1), (f_m - f_b).norm(dim=1)  # (P,)
    return {"nearer_a": float((d_a < d_b).float().mean()), "dist_a": float(d_a.mean()), "dist_b": float(d_b.mean()),
            "crossover": float(cut)}


def _check_noise(noise: str) -> None:
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")


register(Family("stylegan", StyleGAN, StyleGANConfig,
                "StyleGAN: mapping network, styles per layer, noise inputs, style mixing, truncation (book ch. 10)",
                presets={"tiny": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channels": 8, "max_channels": 16},
                         "small": {"z_dim": 64, "w_dim": 64, "mapping_layers": 4, "channels": 8,
                                   "max_channels": 64}},  # 64x64 frames: 300 steps ~3.5 CPU min
                train={"lr": 2e-3, "batch_size": 32}, monitor="d_loss"))  # lr: StyleGAN2's (StyleGAN: 1e-3)
