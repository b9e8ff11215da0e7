"""V: the convolutional VAE of World Models (Ha & Schmidhuber 2018, appendix A.1).

64x64x3 frames -> 4 convolutions (32, 64, 128, 256 filters, kernel 4, stride 2, ReLU) ->
a 2x2x256 = 1024 feature -> mean and log-variance of a ``z_size`` latent (32 for CarRacing,
64 for Doom). The decoder maps z to a 1x1x1024 feature and up through 4 transposed
convolutions (128 k5, 64 k5, 32 k6, 3 k6, stride 2) to a 64x64x3 sigmoid image.

The loss is the paper's: the summed squared pixel error per frame plus the KL divergence to
N(0, I), where the KL is floored at ``kl_tolerance * z_size`` nats ("free bits") so the
encoder is not pushed to collapse the posterior onto the prior.

The model follows the lab's generator interface: ``loss(batch) -> dict`` with ``"loss"``,
``sample(n, cond=None, generator=None)``, and ``save(path)`` / ``ConvVAE.load(path)`` with
the config inside the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldlab.io import ConfigCheckpoint, atomic_write_bytes

FAMILY = "vae"


@dataclass
class VAEConfig:
    """Architecture and loss of V."""

    z_size: int = 32
    """latent size (the paper: 32 for CarRacing, 64 for Doom)."""
    channels: tuple[int, ...] = (32, 64, 128, 256)
    """filters of the 4 encoder convolutions (kernel 4, stride 2)."""
    dec_channels: tuple[int, ...] = (128, 64, 32)
    """filters of the first 3 decoder transposed convolutions (the last one outputs 3)."""
    kl_tolerance: float = 0.5
    """free bits per latent dimension: the KL term is max(KL, kl_tolerance * z_size)."""
    kl_weight: float = 1.0
    """weight of the (floored) KL term against the summed squared pixel error."""
    image_size: int = 64
    """frame side in pixels; the paper's layer sizes need 64."""
    salience: float = 0.0
    """weight of what stands out (0: the paper's plain squared error). Each pixel's squared error
    is weighted by ``1 + salience * d / mean(d)``, renormalised to a mean weight of 1, where ``d``
    is the pixel's absolute difference (averaged over channels) from the batch's per-pixel median
    frame: small things that move (Doom's fireballs, the car off the road) weigh more than the
    walls and sky every frame shares, which a V trained briefly otherwise blurs away."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.dec_channels = tuple(int(c) for c in self.dec_channels)
        if self.z_size < 1:
            raise ValueError(f"z_size must be >= 1, got {self.z_size}")
        if len(self.channels) != 4 or len(self.dec_channels) != 3:
            raise ValueError("VAEConfig needs 4 encoder channels and 3 decoder channels (the paper's layout)")
        if self.image_size != 64:
            raise ValueError(f"ConvVAE is built for 64x64 frames, got image_size={self.image_size}; "
                             f"resize frames to 64x64 (the task wrappers do)")
        if self.kl_tolerance < 0:
            raise ValueError(f"kl_tolerance must be >= 0, got {self.kl_tolerance}")
        if isinstance(self.salience, bool) or not isinstance(self.salience, int | float) or self.salience < 0:
            raise ValueError(f"vae.salience must be >= 0, got {self.salience!r}; pass --set vae.salience=0 (the "
                             f"paper's loss) or a positive weight such as 4")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        """The config of a checkpoint; keys this version no longer has (e.g. ``extra``) are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def salience_weights(x: torch.Tensor, salience: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W) of mean 1 for frames ``x`` (B, 3, H, W) in [0, 1]: ``1 +
    salience * d / mean(d)`` renormalised, ``d`` = |x - the batch's per-pixel median| averaged over
    channels (see :attr:`VAEConfig.salience`). Constant 1 for a batch of one frame or of equal frames."""
    d = (x - x.median(dim=0, keepdim=True).values).abs().mean(1, keepdim=True)  # (B, 1, H, W)
    w = 1.0 + salience * d / d.mean().clamp(min=1e-8)
    return (w / w.mean()).detach()


def frames_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, 64, 64) or (B, 64, 64, 3) frames, or floats in [0, 1] -> float (B, 3, 64, 64)."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of frames (B, 3, 64, 64), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    return x.contiguous(memory_format=torch.channels_last)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3) numpy."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def image_grid(images: np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 grid image with ``nrow`` images per row."""
    n, h, w, c = images.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) image as PNG, atomically."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", image, extension=".png")
    return atomic_write_bytes(path, data)


class ConvVAE(ConfigCheckpoint, nn.Module):
    """The paper's convolutional VAE over 64x64x3 frames.

    ``save(path, meta)`` / ``ConvVAE.load(path)``: weights with their config (:class:`ConfigCheckpoint`)."""

    FAMILY, CONFIG, WHAT, STAGE = FAMILY, VAEConfig, "VAE", "V"

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.meta: dict[str, Any] = {}
        """what the checkpoint carried besides weights (task, id, steps, ...)."""
        c1, c2, c3, c4 = cfg.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 4, 2), nn.ReLU(),   # (B, c1, 31, 31)
            nn.Conv2d(c1, c2, 4, 2), nn.ReLU(),  # (B, c2, 14, 14)
            nn.Conv2d(c2, c3, 4, 2), nn.ReLU(),  # (B, c3, 6, 6)
            nn.Conv2d(c3, c4, 4, 2), nn.ReLU(),  # (B, c4, 2, 2)
            nn.Flatten(),                        # (B, 4 * c4)
        )
        feat = 4 * c4
        self.fc_mu = nn.Linear(feat, cfg.z_size)
        self.fc_logvar = nn.Linear(feat, cfg.z_size)
        d1, d2, d3 = cfg.dec_channels
        self.fc_dec = nn.Linear(cfg.z_size, feat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(feat, d1, 5, 2), nn.ReLU(),  # (B, d1, 5, 5)
            nn.ConvTranspose2d(d1, d2, 5, 2), nn.ReLU(),    # (B, d2, 13, 13)
            nn.ConvTranspose2d(d2, d3, 6, 2), nn.ReLU(),    # (B, d3, 30, 30)
            nn.ConvTranspose2d(d3, 3, 6, 2),                # (B, 3, 64, 64) logits
        )
        self.to(memory_format=torch.channels_last)

    @property
    def z_size(self) -> int:
        return self.config.z_size

    @property
    def device(self) -> torch.device:
        return self.fc_mu.weight.device

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (uint8 or [0, 1] floats, (B, 3, 64, 64)) -> (mu, logvar), each (B, Z) float32."""
        h = self.encoder(frames_to_float(x).to(self.device))  # (B, 1024)
        return self.fc_mu(h).float(), self.fc_logvar(h).float()

    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Posterior means (N, Z) of any number of frames, encoded ``chunk`` at a time (so memory stays
        bounded; up to float rounding the result does not depend on ``chunk``)."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 (got {chunk})")
        if len(x) == 0:
            return torch.zeros(0, self.z_size, device=self.device)
        return torch.cat([self.encode(x[i:i + chunk])[0] for i in range(0, len(x), chunk)])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, Z) -> frames (B, 3, 64, 64) float32 in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z)).float()

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc_dec(z)  # (B, 1024)
        h = h.view(h.shape[0], -1, 1, 1).contiguous(memory_format=torch.channels_last)  # (B, 1024, 1, 1)
        return self.decoder(h)  # (B, 3, 64, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: frames -> (recon (B, 3, 64, 64) in [0, 1], mu, logvar)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def loss(self, batch: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Paper loss on a batch of frames (uint8 (B, 3, 64, 64), or a dict with ``obs``).

        ``recon``: squared error summed over pixels, mean over frames; ``kl``: KL(q(z|x) || N(0, I))
        summed over latent dims, floored at ``kl_tolerance * z_size``, mean over frames.
        """
        x = batch["obs"] if isinstance(batch, dict) else batch
        x = frames_to_float(x).to(self.device)  # (B, 3, 64, 64)
        mu, logvar = self.encode(x)  # (B, Z) each
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = torch.sigmoid(self.decode_logits(z).float())  # (B, 3, 64, 64)
        err = (recon - x).pow(2)
        if self.config.salience > 0:
            err = err * salience_weights(x, self.config.salience)
        rec = err.flatten(1).sum(1).mean()
        kl_per = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)  # (B,)
        floor = self.config.kl_tolerance * self.config.z_size
        kl = kl_per.clamp(min=floor).mean()
        return {"loss": rec + self.config.kl_weight * kl, "recon": rec, "kl": kl, "kl_raw": kl_per.mean()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Frames -> reconstruction from the posterior mean, float (B, 3, 64, 64) in [0, 1]."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    @torch.no_grad()
    def sample(self, n: int, cond: Any = None, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """``n`` frames decoded from z ~ N(0, I): float (n, 3, 64, 64) in [0, 1].

        ``cond`` is accepted for the lab's generator interface and must be None (V is unconditional).
        ``generator`` is a torch.Generator or an int seed (same seed, same samples).
        """
        if cond is not None:
            raise ValueError("ConvVAE is unconditional: pass cond=None")
        if isinstance(generator, int):
            generator = torch.Generator(device="cpu").manual_seed(generator)
        z = torch.randn(n, self.config.z_size, generator=generator).to(self.device)
        return self.decode(z)


def vae_recon_mse(vae: ConvVAE, frames: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared error per pixel (in [0, 1] units) of reconstructions from the posterior mean."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, frames.shape[0], batch_size):
            x = frames_to_float(frames[i:i + batch_size]).to(vae.device)
            r = vae.reconstruct(x)
            total += float(F.mse_loss(r, x, reduction="sum"))
            n += x.numel()
    return total / max(1, n)
