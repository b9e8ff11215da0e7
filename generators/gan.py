"""GANs: DCGAN, WGAN-GP and the conditional GAN (book chapter 4), as one model with options.

- DCGAN (Radford et al. 2015, https://arxiv.org/abs/1511.06434): strided-conv discriminator with
  batch norm and LeakyReLU(0.2), transposed-conv generator from ``z`` (book: z = 100), binary
  cross-entropy with noisy labels, Adam(2e-4, betas 0.5/0.999).
- WGAN-GP (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028): a critic without batch
  norm, Wasserstein loss, gradient penalty weight 10, 3 critic steps per generator step,
  Adam(2e-4, betas 0.5/0.9), z = 128 (book).
- Conditional GAN (Mirza & Osindero 2014, https://arxiv.org/abs/1411.1784): the book's WGAN-GP
  with the one-hot label appended to ``z`` and as extra input channels of the critic.

Images of side ``S`` (a power of two >= 8): the discriminator halves ``S`` down to 4 with
``channels * 2**i`` filters at stage ``i``, then a 4x4 valid convolution to one logit; the
generator mirrors it. Point data (``(D,)``) uses MLPs of width ``hidden``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.nets import mlp, num_halvings, one_hot_maps
from generators.registry import Family, register


@dataclass
class DCGANConfig(GenConfig):
    """DCGAN (book defaults, chapter 4 "bricks")."""

    z_dim: int = 100
    """size of the latent noise vector z (book DCGAN: 100)."""
    channels: int = 64
    """filters of the first discriminator / last generator stage, doubled per stage (book: 64)."""
    objective: str = "bce"
    """"bce" (DCGAN, https://arxiv.org/abs/1511.06434) or "wgan-gp" (https://arxiv.org/abs/1704.00028)."""
    critic_steps: int = 1
    """discriminator/critic updates per generator update (book WGAN-GP: 3)."""
    gp_weight: float = 10.0
    """weight of the WGAN-GP gradient penalty (book and paper: 10)."""
    label_noise: float = 0.1
    """BCE targets drawn from [1-a, 1] (real) and [0, a] (fake) (book NOISE_PARAM: 0.1)."""
    batch_norm: bool = True
    """batch norm in the discriminator (DCGAN yes; a WGAN-GP critic must not use it)."""
    dropout: float = 0.3
    """dropout after each discriminator stage (book: 0.3)."""
    beta1: float = 0.5
    """Adam beta1 of both optimizers (book: 0.5)."""
    beta2: float = 0.999
    """Adam beta2 (book DCGAN 0.999, WGAN-GP 0.9)."""
    hidden: int = 256
    """width of the MLPs used for point data."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in ("bce", "wgan-gp"):
            raise ValueError(f"objective must be 'bce' or 'wgan-gp', got {self.objective!r}")
        if self.critic_steps < 1:
            raise ValueError(f"critic_steps must be >= 1, got {self.critic_steps}")
        if self.kind == "image":
            self.require_image("gan", min_size=8)


@dataclass
class WGANGPConfig(DCGANConfig):
    """WGAN-GP (book defaults, chapter 4 "CelebA faces")."""

    z_dim: int = 128
    """size of z (book WGAN-GP: 128)."""
    objective: str = "wgan-gp"
    """Wasserstein loss with gradient penalty."""
    critic_steps: int = 3
    """critic updates per generator update (book: 3)."""
    label_noise: float = 0.0
    """unused by the Wasserstein loss."""
    batch_norm: bool = False
    """no batch norm in the critic (it would break the per-sample gradient penalty)."""
    beta2: float = 0.9
    """Adam beta2 (book WGAN-GP: 0.9)."""


@dataclass
class CGANConfig(WGANGPConfig):
    """Conditional WGAN-GP (book chapter 4 "conditional GAN"), conditioned on a class label."""

    num_classes: int = 10
    """number of classes (set from the data: 10 digits, 2 moons)."""


class _ConvG(nn.Module):
    """z (B, Z) [+ one-hot (B, K)] -> image (B, C, S, S) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        c, s, _ = cfg.shape
        k = num_halvings(s)
        ch = [cfg.channels * 2 ** i for i in range(k)][::-1]  # e.g. [512, 256, 128, 64]
        layers: list[nn.Module] = [nn.ConvTranspose2d(cfg.z_dim + cfg.num_classes, ch[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ch[0]), nn.LeakyReLU(0.2)]  # (B, ch0, 4, 4)
        for a, b in zip(ch[:-1], ch[1:], strict=True):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2)]
        layers += [nn.ConvTranspose2d(ch[-1], c, 4, 2, 1), nn.Tanh()]  # (B, C, S, S)
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class _ConvD(nn.Module):
    """image (B, C [+K], S, S) -> logit (B,)."""

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        c, s, _ = cfg.shape
        k = num_halvings(s)
        layers: list[nn.Module] = []
        a = c + cfg.num_classes
        for i in range(k):
            b = cfg.channels * 2 ** i
            layers.append(nn.Conv2d(a, b, 4, 2, 1, bias=not (cfg.batch_norm and i > 0)))
            if cfg.batch_norm and i > 0:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            a = b
        layers.append(nn.Conv2d(a, 1, 4, 1, 0))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class GAN(Generator):
    """Generator + discriminator/critic trained adversarially (see module docstring)."""

    config: DCGANConfig

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__(config)
        self.generator_net, self.discriminator_net = self.build_networks()

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """The generator and the discriminator/critic. Other architectures trained with these losses
        (ProGAN, StyleGAN: :mod:`generators.progan`, :mod:`generators.stylegan`) override this,
        ``generate`` and ``discriminate``; their configs carry the loss fields used here (``z_dim``,
        ``objective``, ``critic_steps``, ``gp_weight``, ``label_noise``, ``beta1``, ``beta2``)."""
        config = self.config
        k = config.num_classes
        if config.kind == "image":
            return _ConvG(config), _ConvD(config)
        (d,) = config.shape
        return (mlp([config.z_dim + k, config.hidden, config.hidden, d]),
                mlp([d + k, config.hidden, config.hidden, 1]))

    # --- the two networks ------------------------------------------------------------------
    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``(B, Z)`` [+ labels ``(B,)``] -> samples ``(B, *shape)``."""
        if self.config.num_classes:
            assert y is not None
            z = torch.cat([z, F.one_hot(y, self.config.num_classes).float()], dim=1)  # (B, Z+K)
        return self.generator_net(z)

    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples ``(B, *shape)`` -> discriminator logit / critic value ``(B,)`` (higher = more real)."""
        k = self.config.num_classes
        if k:
            if y is None:
                raise ValueError("this GAN is conditional: pass the labels y to discriminate(x, y)")
            if x.ndim == 4:
                x = torch.cat([x, one_hot_maps(y, k, x.shape[2], x.shape[3])], dim=1)  # (B, C+K, H, W)
            else:
                x = torch.cat([x, F.one_hot(y, k).float()], dim=1)  # (B, D+K)
        return self.discriminator_net(x).reshape(-1)

    # --- training ----------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {"generator": torch.optim.Adam(self.generator_net.parameters(), lr=lr, betas=betas),
                "discriminator": torch.optim.Adam(self.discriminator_net.parameters(), lr=lr, betas=betas)}

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``E[(||grad_x C(x_hat)||_2 - 1)^2]`` on random interpolates ``x_hat`` (WGAN-GP eq. 3)."""
        eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device)  # (B, 1, 1, 1)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminate(x_hat, y).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cfg = self.config
        r, f = self.discriminate(real, y), self.discriminate(fake, y)  # (B,), (B,)
        if cfg.objective == "bce":
            a = cfg.label_noise
            real_t = 1.0 - a * torch.rand_like(r)
            fake_t = a * torch.rand_like(f)
            loss = 0.5 * (F.binary_cross_entropy_with_logits(r, real_t)
                          + F.binary_cross_entropy_with_logits(f, fake_t))
            return {"d_loss": loss, "d_real_acc": (r > 0).float().mean(), "d_fake_acc": (f < 0).float().mean()}
        gp = self.gradient_penalty(real, fake, y)
        w = r.mean() - f.mean()  # the critic's Wasserstein estimate
        return {"d_loss": -w + cfg.gp_weight * gp, "wasserstein": w, "gp": gp}

    def generator_loss(self, fake: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        f = self.discriminate(fake, y)
        if self.config.objective == "bce":
            return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
        return -f.mean()

    def training_step(self, batch: Batch, optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, float]:
        """``critic_steps`` discriminator updates on this real batch (fresh z each), then one generator update."""
        x, y = unpack(batch)
        if self.config.num_classes and y is None:
            raise ValueError(f"{self.family} is conditional: train it on labelled batches (x, y)")
        y = y if self.config.num_classes else None
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        b = x.shape[0]
        logs: dict[str, float] = {}
        for _ in range(self.config.critic_steps):
            with torch.no_grad():
                fake = self.generate(torch.randn(b, self.config.z_dim, device=x.device), y)
            d = self.discriminator_loss(x, fake, y)
            opt_d.zero_grad(set_to_none=True)
            d["d_loss"].backward()
            opt_d.step()
        logs.update({k: float(v.detach()) for k, v in d.items()})
        fake = self.generate(torch.randn(b, self.config.z_dim, device=x.device), y)
        g = self.generator_loss(fake, y)
        opt_g.zero_grad(set_to_none=True)
        g.backward()
        opt_g.step()
        logs["g_loss"] = float(g.detach())
        return logs

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, cond: torch.Tensor | int | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        g = as_generator(generator, self.device)
        with self.evaluating():
            y = self.check_cond(n, cond, g)
            z = torch.randn(n, self.config.z_dim, generator=g, device=self.device)  # (n, Z)
            return self.generate(z, y)


class DCGAN(GAN):
    """DCGAN (see :class:`GAN`)."""


class WGANGP(GAN):
    """WGAN-GP (see :class:`GAN`)."""


class CGAN(GAN):
    """Conditional WGAN-GP (see :class:`GAN`)."""


_GAN_PRESETS = {
    "tiny": {"z_dim": 16, "channels": 8, "hidden": 32},
    "small": {"z_dim": 32, "channels": 32, "hidden": 128},
}

register(Family("dcgan", DCGAN, DCGANConfig, "DCGAN: conv GAN, BCE loss with noisy labels (book ch. 4)",
                kinds=("image", "points"), presets=_GAN_PRESETS,
                train={"lr": 2e-4, "batch_size": 128}, monitor="d_loss"))
register(Family("wgan_gp", WGANGP, WGANGPConfig, "WGAN-GP: Wasserstein critic, gradient penalty 10, 3 critic steps",
                kinds=("image", "points"), presets=_GAN_PRESETS,
                train={"lr": 2e-4, "batch_size": 512}, monitor="d_loss"))
register(Family("cgan", CGAN, CGANConfig, "conditional WGAN-GP on a class label (book ch. 4)",
                kinds=("image", "points"), conditional=True, presets=_GAN_PRESETS,
                train={"lr": 2e-4, "batch_size": 512}, monitor="d_loss"))
