"""Energy-based model (book chapter 7; after Du & Mordatch 2019, https://arxiv.org/abs/1903.08689).

``p(x) ~ exp(-E(x))``. Samples come from Langevin dynamics on the energy,
``x <- clip(x + noise) - step * clip(grad_x E(x), +-0.03)``, started from a replay buffer of
earlier samples (95%) and fresh uniform noise (5%). Training is contrastive divergence: push
the energy of real data down and of Langevin samples up,
``loss = E(real) - E(fake) + alpha * (E(real)^2 + E(fake)^2)``.

Book defaults (MNIST 32x32): conv net 16-32-64-64 filters with swish, 60 Langevin steps of
size 10 with noise 0.005, gradients clipped to 0.03, a replay buffer of 8,192, 5% fresh noise,
alpha 0.1, Adam(1e-4, betas 0.0/0.999), batch 128. Points ``(D,)`` use a swish MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.registry import Family, register


@dataclass
class EBMConfig(GenConfig):
    """Energy-based model (book defaults, chapter 7)."""

    filters: tuple[int, ...] = (16, 32, 64, 64)
    """filters of the stride-2 conv layers of the energy net (book: 16, 32, 64, 64)."""
    hidden: int = 64
    """width of the dense layer after the convolutions (book: 64), and of the MLP for points."""
    langevin_steps: int = 60
    """Langevin steps per training batch (book: 60)."""
    step_size: float = 10.0
    """Langevin step size on the (clipped) energy gradient (book: 10)."""
    noise: float = 0.005
    """std of the Gaussian noise added each Langevin step and to real data (book: 0.005)."""
    grad_clip: float = 0.03
    """clip each gradient component to +-this inside Langevin (book: 0.03)."""
    buffer_size: int = 8192
    """replay buffer of past samples (book: 8192); stored in the checkpoint as float16."""
    fresh: float = 0.05
    """fraction of each batch's starting points drawn as fresh uniform noise (book: 5%)."""
    alpha: float = 0.1
    """weight of the energy-magnitude regulariser (book: 0.1)."""
    sample_steps: int = 256
    """Langevin steps used by ``sample`` from noise (the book's notebook uses up to 1000)."""
    box: float = 3.0
    """points: samples and noise live in [-box, box] (images always use [-1, 1])."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.filters = tuple(int(f) for f in self.filters)
        if self.buffer_size < 1 or not 0.0 <= self.fresh <= 1.0:
            raise ValueError("buffer_size must be >= 1 and fresh in [0, 1]")
        if self.kind == "image":
            self.require_image("ebm", square_pow2=False)


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class EBM(Generator):
    """Energy net + Langevin sampler + replay buffer (see module docstring)."""

    config: EBMConfig

    def __init__(self, config: EBMConfig) -> None:
        super().__init__(config)
        if config.kind == "image":
            c, h, w = config.shape
            layers: list[nn.Module] = []
            a = c
            for i, f in enumerate(config.filters):
                k = 5 if i == 0 else 3  # book: 5x5 first, then 3x3, all stride 2
                layers += [nn.Conv2d(a, f, k, stride=2, padding=k // 2), _Swish()]
                a = f
                h, w = (h + 1) // 2, (w + 1) // 2
            layers += [nn.Flatten(), nn.Linear(a * h * w, config.hidden), _Swish(), nn.Linear(config.hidden, 1)]
            self.net = nn.Sequential(*layers)
            lo = -1.0
        else:
            (d,) = config.shape
            self.net = nn.Sequential(nn.Linear(d, config.hidden), _Swish(), nn.Linear(config.hidden, config.hidden),
                                     _Swish(), nn.Linear(config.hidden, 1))
            lo = -config.box
        self.lo, self.hi = lo, -lo
        buf = torch.rand(config.buffer_size, *config.shape) * (self.hi - self.lo) + self.lo
        self.register_buffer("replay", buf.half())  # (N, *shape) past samples

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x)``, ``(B,)``: low for data-like inputs."""
        return -self.net(x).reshape(-1)  # the net outputs the score -E, as in the book

    def uniform(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand((n, *self.shape), generator=generator, device=self.device)
        return u * (self.hi - self.lo) + self.lo

    def langevin(self, x: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run ``steps`` of clipped Langevin dynamics from ``x``; returns detached samples."""
        cfg = self.config
        was = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        try:
            x = x.detach().clone()
            for _ in range(steps):
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = (x + cfg.noise * noise).clamp(self.lo, self.hi).requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(self.energy(x).sum(), x)
                x = (x.detach() - cfg.step_size * grad.clamp(-cfg.grad_clip, cfg.grad_clip)).clamp(self.lo, self.hi)
        finally:
            for p, r in zip(self.parameters(), was, strict=True):
                p.requires_grad_(r)
        return x

    def replay_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting points: fresh noise for a ``fresh`` fraction, the rest from the buffer; and their buffer slots."""
        n_fresh = int(round(n * self.config.fresh))
        slots = torch.randint(0, self.config.buffer_size, (n,), device=self.device)
        start = self.replay[slots].float()
        start[:n_fresh] = self.uniform(n_fresh)
        return start, slots

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        cfg = self.config
        real = (x + cfg.noise * torch.randn_like(x)).clamp(self.lo, self.hi)
        start, slots = self.replay_batch(x.shape[0])
        was = self.training
        self.eval()
        fake = self.langevin(start, cfg.langevin_steps)  # (B, *shape)
        self.train(was)
        with torch.no_grad():
            self.replay[slots] = fake.half()  # new samples replace the ones they started from
        e = self.energy(torch.cat([real, fake]))
        e_real, e_fake = e[: x.shape[0]], e[x.shape[0]:]
        cdiv = e_real.mean() - e_fake.mean()
        reg = cfg.alpha * (e_real ** 2 + e_fake ** 2).mean()
        return {"loss": cdiv + reg, "cdiv": cdiv, "reg": reg, "e_real": e_real.mean(), "e_fake": e_fake.mean()}

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.0, 0.999))}

    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Langevin dynamics for ``steps`` (default ``sample_steps``) from uniform noise."""
        self.check_cond(n, cond)
        g = as_generator(generator, self.device)
        was = self.training
        self.eval()
        try:
            return self.langevin(self.uniform(n, g), self.config.sample_steps if steps is None else steps, g)
        finally:
            self.train(was)


register(Family(
    "ebm", EBM, EBMConfig, "energy-based model: Langevin sampling + contrastive divergence (book ch. 7)",
    kinds=("image", "points"),
    presets={"tiny": {"filters": (8, 16), "hidden": 16, "langevin_steps": 10, "buffer_size": 256,
                      "sample_steps": 20},
             "small": {"langevin_steps": 60, "buffer_size": 8192}},
    train={"lr": 1e-4, "batch_size": 128}, monitor="loss"))
