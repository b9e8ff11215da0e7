"""RealNVP normalizing flow (Dinh et al. 2016, https://arxiv.org/abs/1605.08803; book chapter 6).

``x -> z`` is a stack of affine couplings: one part of the input passes unchanged and sets a
scale ``s`` and shift ``t`` for the rest, ``y = x * exp(s) + t``, so the inverse is exact and
``log |det dz/dx| = sum(s)``. ``log p(x) = log N(z; 0, I) + log |det dz/dx|``.

- Points ``(D,)`` (the book's ``make_moons`` model): alternating binary masks over the
  coordinates, ``s`` and ``t`` from two MLPs (4 x 256 ReLU, tanh on ``s``) and an L2 weight
  penalty of 0.01, as in the book, Adam(1e-4), batch 256; 6 couplings.
- Images ``(C, S, S)``: ``[-1, 1]`` pixels -> logit space (``alpha = 0.05``, as the paper), then
  per scale 3 checkerboard-masked couplings, a squeeze (``C, S -> 4C, S/2``) and 3 channel-masked
  couplings, and 4 final checkerboard couplings; each ``s, t`` comes from a small ResNet with
  a tanh-bounded ``s``. No factoring out: ``z`` has the data's shape. Training dequantizes the
  pixels with uniform noise, so :meth:`RealNVP.bits_per_dim` is an upper bound on the discrete
  negative log-likelihood in bits per dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.registry import Family, register


@dataclass
class RealNVPConfig(GenConfig):
    """RealNVP (book defaults for make_moons; the paper's choices for images)."""

    shape: tuple[int, ...] = (2,)
    """``(D,)`` for points (moons: 2), ``(C, S, S)`` for images."""
    coupling_layers: int = 6
    """points: affine couplings with alternating masks (6 as in the Keras RealNVP moons example; 2 fit
    the moons poorly here: held-out NLL 2.25 vs 1.57 nats after 3,600 steps)."""
    hidden: int = 256
    """points: width of the s and t MLPs (book COUPLING_DIM: 256)."""
    mlp_layers: int = 4
    """points: hidden layers of each s/t MLP (book: 4)."""
    l2: float = 0.01
    """points: L2 penalty on the coupling weights added to the loss (book REGULARIZATION: 0.01)."""
    scales: int = 2
    """images: number of (checkerboard x3, squeeze, channel x3) scales."""
    channels: int = 64
    """images: filters of each coupling ResNet."""
    blocks: int = 2
    """images: residual blocks per coupling ResNet (the paper: 8 on CIFAR-10; fewer on CPU)."""
    alpha: float = 0.05
    """images: logit transform ``logit(alpha + (1 - 2 alpha) v)`` of pixels v in [0, 1] (paper: 0.05)."""
    data_levels: int = 256
    """images: intensity levels of the training data, for dequantization and bits/dim (set from the data)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "points":
            if self.shape[0] < 2:
                raise ValueError("RealNVP needs at least 2 dimensions to couple")
        else:
            self.require_image("realnvp", min_size=2 ** self.scales * 2 if self.scales else 2)
            if self.data_levels < 2:
                raise ValueError(f"data_levels must be >= 2, got {self.data_levels}")


class _MLPCoupling(nn.Module):
    """Affine coupling of point data with a fixed binary mask ``b`` (1 = passes unchanged)."""

    def __init__(self, mask: torch.Tensor, hidden: int, layers: int) -> None:
        super().__init__()
        d = mask.numel()
        self.register_buffer("mask", mask)

        def net(out_act: nn.Module | None) -> nn.Sequential:
            mods: list[nn.Module] = []
            a = d
            for _ in range(layers):
                mods += [nn.Linear(a, hidden), nn.ReLU()]
                a = hidden
            mods.append(nn.Linear(a, d))
            if out_act is not None:
                mods.append(out_act)
            return nn.Sequential(*mods)

        self.s_net, self.t_net = net(nn.Tanh()), net(None)

    def st(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = x * self.mask
        keep = 1.0 - self.mask
        return self.s_net(xb) * keep, self.t_net(xb) * keep  # (B, D), (B, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.st(x)
        return x * torch.exp(s) + t, s.sum(1)  # y (B, D), log-det (B,)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self.st(y)  # masked part of y equals that of x
        return (y - t) * torch.exp(-s)


class _ResNet(nn.Module):
    """Conv ResNet ``(B, c_in, H, W) -> (B, c_out, H, W)``; last conv zero-initialised (identity coupling)."""

    def __init__(self, c_in: int, c_out: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, c_out, 3, padding=1))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class _ConvCoupling(nn.Module):
    """Affine coupling of images, checkerboard mask (``parity`` 0/1) or channel halves (``flip``)."""

    def __init__(self, c: int, kind: str, flip: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.kind, self.flip, self.c = kind, flip, c
        if kind == "channel" and c % 2:
            raise ValueError(f"a channel coupling needs an even channel count, got {c}")
        c_in = c if kind == "checkerboard" else c // 2
        c_out = 2 * (c if kind == "checkerboard" else c // 2)
        self.net = _ResNet(c_in, c_out, channels, blocks)
        self.s_scale = nn.Parameter(torch.ones(1, c_out // 2, 1, 1))

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ij = torch.arange(h, device=x.device)[:, None] + torch.arange(w, device=x.device)[None, :]
        return ((ij + self.flip) % 2).to(x.dtype)[None, None]  # (1, 1, H, W), 1 = passes

    def _st(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(cond).chunk(2, dim=1)
        return self.s_scale * torch.tanh(s), t

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, : self.c // 2], x[:, self.c // 2:]
        return (b, a) if self.flip else (a, b)  # (passes, transformed)

    def _join(self, keep: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        return torch.cat([moved, keep] if self.flip else [keep, moved], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "checkerboard":
            b = self._mask(x)
            s, t = self._st(x * b)
            s, t = s * (1 - b), t * (1 - b)
            return x * torch.exp(s) + t, s.flatten(1).sum(1)
        keep, move = self._split(x)
        s, t = self._st(keep)
        return self._join(keep, move * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "checkerboard":
            b = self._mask(y)
            s, t = self._st(y * b)
            s, t = s * (1 - b), t * (1 - b)
            return (y - t) * torch.exp(-s)
        keep, move = self._split(y)
        s, t = self._st(keep)
        return self._join(keep, (move - t) * torch.exp(-s))


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (each 2x2 patch into channels)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class RealNVP(Generator):
    """RealNVP flow with an exact ``log_prob`` (see module docstring)."""

    config: RealNVPConfig

    def __init__(self, config: RealNVPConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList()
        self.plan: list[str] = []  # "c" coupling, "s" squeeze, in forward order
        if config.kind == "points":
            (d,) = config.shape
            for i in range(config.coupling_layers):
                mask = ((torch.arange(d) + i) % 2).float()  # book: [0, 1], [1, 0], ...
                self.layers.append(_MLPCoupling(mask, config.hidden, config.mlp_layers))
                self.plan.append("c")
            return
        c = config.shape[0]
        for _ in range(config.scales):
            for j in range(3):
                self._add(_ConvCoupling(c, "checkerboard", j % 2, config.channels, config.blocks))
            self.plan.append("s")
            c *= 4
            for j in range(3):
                self._add(_ConvCoupling(c, "channel", j % 2, config.channels, config.blocks))
        for j in range(4):
            self._add(_ConvCoupling(c, "checkerboard", j % 2, config.channels, config.blocks))

    def _add(self, layer: nn.Module) -> None:
        self.layers.append(layer)
        self.plan.append("c")

    # --- the bijection ----------------------------------------------------------------------
    def _to_logit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.config.alpha
        v = (x + 1.0) / 2.0  # [0, 1]
        p = a + (1 - 2 * a) * v
        y = torch.log(p) - torch.log1p(-p)
        ld = (math.log(1 - 2 * a) - math.log(2.0) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, ld

    def _from_logit(self, y: torch.Tensor) -> torch.Tensor:
        a = self.config.alpha
        v = (torch.sigmoid(y) - a) / (1 - 2 * a)
        return v * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x`` -> ``(z, log |det dz/dx|)``; ``z`` has ``x``'s shape, log-det is ``(B,)``."""
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        h = x
        if self.kind == "image":
            h, logdet = self._to_logit(x)
        layers = iter(self.layers)
        squeezes = 0
        for op in self.plan:
            if op == "s":
                h = squeeze(h)
                squeezes += 1
            else:
                h, ld = next(layers)(h)
                logdet = logdet + ld
        for _ in range(squeezes):
            h = unsqueeze(h)
        return h, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` -> data ``x`` (exact inverse of :meth:`forward`)."""
        h = z
        squeezes = self.plan.count("s")
        for _ in range(squeezes):
            h = squeeze(h)
        layers = list(self.layers)
        for op in reversed(self.plan):
            if op == "s":
                h = unsqueeze(h)
            else:
                h = layers.pop().inverse(h)
        return self._from_logit(h) if self.kind == "image" else h

    # --- likelihood -------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` in nats, ``(B,)`` (a density over ``[-1, 1]^D`` for images)."""
        z, logdet = self(x)
        d = z[0].numel()
        log_pz = -0.5 * (z ** 2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi)
        return log_pz + logdet

    def dequantize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels on ``data_levels`` levels -> uniform noise over each level's bin (in [-1, 1])."""
        levels = self.config.data_levels
        k = ((x.clamp(-1, 1) + 1.0) * ((levels - 1) / 2.0)).round()
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (k + u) / levels * 2.0 - 1.0

    def bits_per_dim(self, x: torch.Tensor, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Dequantized negative log-likelihood of images in bits per dimension, ``(B,)``.

        ``-log P(k) <= -log p(x_deq) + D log(L/2)`` for ``L`` levels over ``[-1, 1]`` (bin width 2/L).
        """
        if self.kind != "image":
            raise ValueError("bits_per_dim is for images; use -log_prob(x) (nats) for points")
        d = x[0].numel()
        nll = -self.log_prob(self.dequantize(x, as_generator(generator, x.device)))
        return (nll + d * math.log(self.config.data_levels / 2.0)) / (d * math.log(2.0))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        if self.kind == "points":
            nll = -self.log_prob(x).mean()
            l2 = sum((m.weight ** 2).sum() for m in self.modules() if isinstance(m, nn.Linear))
            return {"loss": nll + self.config.l2 * l2, "nll": nll}
        bpd = self.bits_per_dim(x).mean()
        return {"loss": bpd * math.log(2.0), "bits_per_dim": bpd}  # loss in nats per dimension

    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        self.check_cond(n, cond)
        g = as_generator(generator, self.device)
        with self.evaluating():
            z = torch.randn((n, *self.shape), generator=g, device=self.device) * temperature
            x = self.inverse(z)
            return x.clamp(-1.0, 1.0) if self.kind == "image" else x


register(Family(
    "realnvp", RealNVP, RealNVPConfig, "RealNVP flow: affine couplings, exact log-likelihood (book ch. 6)",
    kinds=("points", "image"),
    presets={"tiny": {"hidden": 32, "mlp_layers": 2, "channels": 8, "blocks": 1, "scales": 1},
             "small": {"channels": 32, "blocks": 1, "scales": 2}},
    train={"lr": 1e-4, "batch_size": 256}, monitor="loss"))
