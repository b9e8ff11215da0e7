"""Diffusion model: DDPM-style training, DDIM sampling (book chapter 8).

Training (Ho et al. 2020, https://arxiv.org/abs/2006.11239): pick a diffusion time
``t ~ U(0, 1)``, mix the (normalised) image with Gaussian noise,
``x_t = signal(t) * x + noise(t) * eps``, and train a U-Net to predict ``eps`` from ``x_t`` and
the noise variance ``noise(t)^2`` (fed through a sinusoidal embedding).

Schedule: the book's *offset cosine* (after Nichol & Dhariwal 2021,
https://arxiv.org/abs/2102.09672): ``angle(t) = acos(max_signal) + t * (acos(min_signal) -
acos(max_signal))``, ``signal = cos(angle)``, ``noise = sin(angle)``, with ``max_signal = 0.95``
and ``min_signal = 0.02``; its two end angles live in ``register_buffer``s.

Sampling: DDIM (Song et al. 2020, https://arxiv.org/abs/2010.02502), deterministic, 20 steps.

Book defaults (flowers 64x64): U-Net widths 32/64/96/128, 2 residual blocks per level, noise
embedding 32, mean-absolute-error loss, AdamW(1e-3, weight decay 1e-4), EMA 0.999, batch 64,
images normalised by the data's mean and std (adapted on the first training batch here). The
book's residual blocks use BatchNorm without affine terms; these use GroupNorm without affine
terms, so a sample does not depend on the batch it is drawn in. Points ``(D,)`` use an MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.nets import sinusoidal_embedding
from generators.registry import Family, register


@dataclass
class DDPMConfig(GenConfig):
    """Diffusion model (book defaults, chapter 8)."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    """U-Net channels per resolution, top to bottom (book: 32, 64, 96, 128)."""
    block_depth: int = 2
    """residual blocks per U-Net level (book: 2)."""
    embedding_dim: int = 32
    """size of the sinusoidal noise-variance embedding (book NOISE_EMBEDDING_SIZE: 32)."""
    embedding_max_freq: float = 1000.0
    """highest embedding frequency (book: 1000)."""
    min_signal_rate: float = 0.02
    """signal rate at t = 1 (book: 0.02)."""
    max_signal_rate: float = 0.95
    """signal rate at t = 0 (book: 0.95)."""
    sampling_steps: int = 20
    """DDIM steps used by ``sample`` (book: 20)."""
    loss: str = "l1"
    """noise-prediction loss: "l1" (book: mean absolute error) or "l2" (DDPM paper)."""
    hidden: int = 256
    """points: width of the MLP denoiser."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.widths = tuple(int(w) for w in self.widths)
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")
        if not 0.0 < self.min_signal_rate < self.max_signal_rate < 1.0:
            raise ValueError("need 0 < min_signal_rate < max_signal_rate < 1")
        if self.kind == "image":
            self.require_image("ddpm", min_size=2 ** (len(self.widths) - 1))


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c, affine=False)


class _ResBlock(nn.Module):
    """Book residual block: norm -> conv3x3 swish -> conv3x3, plus a (1x1-projected) skip."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        self.net = nn.Sequential(_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.net(x)


class UNet(nn.Module):
    """``(noisy (B, C, H, W), noise variance (B,))`` -> predicted noise ``(B, C, H, W)`` (book U-Net).

    ``c_out`` (default ``c``) output channels; ``cond`` > 0: a condition vector ``(B, cond)`` joins
    the noise embedding, broadcast over the image (the diffusion renderer's latent ``z``)."""

    def __init__(self, c: int, widths: tuple[int, ...], depth: int, emb: int, max_freq: float,
                 c_out: int | None = None, cond: int = 0) -> None:
        super().__init__()
        self.emb, self.max_freq, self.cond = emb, max_freq, cond
        self.inp = nn.Conv2d(c, widths[0], 1)
        self.down = nn.ModuleList()
        skips: list[int] = []
        a = widths[0] + emb + cond
        for w in widths[:-1]:
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(_ResBlock(a, w))
                a = w
                skips.append(w)
            self.down.append(blocks)
        self.mid = nn.ModuleList()
        for _ in range(depth):
            self.mid.append(_ResBlock(a, widths[-1]))
            a = widths[-1]
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(_ResBlock(a + skips.pop(), w))
                a = w
            self.up.append(blocks)
        self.out = nn.Conv2d(a, c_out or c, 1)
        nn.init.zeros_(self.out.weight)  # book: zero-initialised output
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        e = sinusoidal_embedding(noise_var, self.emb, 1.0, self.max_freq)  # (B, E)
        if self.cond:
            if cond is None or cond.shape != (x.shape[0], self.cond):
                raise ValueError(f"this U-Net needs a condition of shape ({x.shape[0]}, {self.cond}), "
                                 f"got {None if cond is None else tuple(cond.shape)}")
            e = torch.cat([e, cond], dim=1)
        e = e[:, :, None, None].expand(-1, -1, h, w)  # (B, E, H, W), the book's nearest upsampling
        x = torch.cat([self.inp(x), e], dim=1)  # (B, W0 + E, H, W)
        skips = []
        for blocks in self.down:
            for b in blocks:
                x = b(x)
                skips.append(x)
            x = F.avg_pool2d(x, 2)
        for b in self.mid:
            x = b(x)
        for blocks in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            for b in blocks:
                x = b(torch.cat([x, skips.pop()], dim=1))
        return self.out(x)


class _MLPDenoiser(nn.Module):
    """Points: ``(x (B, D), noise variance (B,))`` -> predicted noise ``(B, D)``."""

    def __init__(self, d: int, hidden: int, emb: int, max_freq: float) -> None:
        super().__init__()
        self.emb, self.max_freq = emb, max_freq
        self.net = nn.Sequential(nn.Linear(d + emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, sinusoidal_embedding(noise_var, self.emb, 1.0, self.max_freq)], dim=1))


class DDPM(Generator):
    """Denoising diffusion model with DDIM sampling (see module docstring)."""

    config: DDPMConfig

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__(config)
        if config.kind == "image":
            self.net: nn.Module = UNet(config.shape[0], config.widths, config.block_depth,
                                       config.embedding_dim, config.embedding_max_freq)
            n_ch = config.shape[0]
        else:
            self.net = _MLPDenoiser(config.shape[0], config.hidden, config.embedding_dim, config.embedding_max_freq)
            n_ch = config.shape[0]
        self.register_buffer("start_angle", torch.tensor(math.acos(config.max_signal_rate)))
        self.register_buffer("end_angle", torch.tensor(math.acos(config.min_signal_rate)))
        self.register_buffer("data_mean", torch.zeros(n_ch))
        self.register_buffer("data_std", torch.ones(n_ch))
        self.register_buffer("adapted", torch.tensor(False))

    # --- schedule and normalisation ----------------------------------------------------------
    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offset-cosine schedule: diffusion times ``t`` in [0, 1] -> ``(noise_rate, signal_rate)``."""
        angle = self.start_angle + t * (self.end_angle - self.start_angle)
        return torch.sin(angle), torch.cos(angle)

    def _stats_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, -1, 1, 1) if x.ndim == 4 else (1, -1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        s = self._stats_shape(x)
        return (x - self.data_mean.view(s)) / self.data_std.view(s)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        s = self._stats_shape(x)
        return x * self.data_std.view(s) + self.data_mean.view(s)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        """Set the per-channel mean/std normaliser from a batch (the book's ``Normalization.adapt``)."""
        dims = [0, 2, 3] if x.ndim == 4 else [0]
        self.data_mean.copy_(x.float().mean(dims))
        self.data_std.copy_(x.float().std(dims).clamp_min(1e-3))
        self.adapted.fill_(True)

    # --- model --------------------------------------------------------------------------------
    def denoise(self, noisy: torch.Tensor, noise_rate: torch.Tensor,
                signal_rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t`` -> ``(predicted noise, predicted clean image)`` (normalised space)."""
        pred_noise = self.net(noisy, (noise_rate ** 2).reshape(-1))
        return pred_noise, (noisy - noise_rate * pred_noise) / signal_rate

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        if not bool(self.adapted):
            self.adapt(x)
        x = self.normalize(x)
        eps = torch.randn_like(x)
        t = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device)  # (B, 1, 1, 1)
        noise_rate, signal_rate = self.schedule(t)
        pred_noise, _ = self.denoise(signal_rate * x + noise_rate * eps, noise_rate, signal_rate)
        err = pred_noise - eps
        loss = err.abs().mean() if self.config.loss == "l1" else (err ** 2).mean()
        return {"loss": loss}

    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               steps: int | None = None) -> torch.Tensor:
        """DDIM reverse diffusion from Gaussian noise in ``steps`` (default ``sampling_steps``) steps."""
        self.check_cond(n, cond)
        g = as_generator(generator, self.device)
        steps = steps or self.config.sampling_steps
        with self.evaluating():
            x = torch.randn((n, *self.shape), generator=g, device=self.device)
            ones = torch.ones((n,) + (1,) * len(self.shape), device=self.device)
            pred = x
            for i in range(steps):
                t = ones * (1.0 - i / steps)
                noise_rate, signal_rate = self.schedule(t)
                pred_noise, pred = self.denoise(x, noise_rate, signal_rate)
                next_noise, next_signal = self.schedule(t - 1.0 / steps)
                x = next_signal * pred + next_noise * pred_noise
            out = self.denormalize(pred)
            return out.clamp(-1.0, 1.0) if self.kind == "image" else out


register(Family(
    "ddpm", DDPM, DDPMConfig, "diffusion: U-Net noise predictor, offset-cosine schedule, DDIM sampling (book ch. 8)",
    kinds=("image", "points"),
    presets={"tiny": {"widths": (8, 16), "block_depth": 1, "embedding_dim": 8, "hidden": 32, "sampling_steps": 5},
             "small": {"widths": (32, 64, 96), "block_depth": 2}},
    train={"lr": 1e-3, "batch_size": 64, "ema": 0.999, "weight_decay": 1e-4}, monitor="loss"))
