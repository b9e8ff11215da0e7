"""A diffusion prior over V's latents (book chapter 8, in V's latent space; issue 17's latent prior).

V's decoder turns any ``z`` into a frame, but V's own prior ``N(0, I)`` is a poor model of the
latents real frames encode to (their Fréchet distance to real frames is ~4 on CarRacing, against
~0.1 between two sets of real frames). This family learns that distribution with a small
diffusion model, so the dream can start from likely states and V can draw likely frames:

- **Training** (v-prediction, Salimans & Ho 2022, https://arxiv.org/abs/2202.00512): standardise
  ``z`` with the data's mean and std, draw ``t ~ U(0, 1)``, ``z_t = cos(pi t / 2) z + sin(pi t / 2) eps``,
  and regress ``v = alpha eps - sigma z`` with a residual MLP that sees ``z_t``, a sinusoidal
  embedding of ``t`` and, when ``cond_dim > 0``, a condition vector (dropped to a learned "no
  condition" embedding with probability ``cond_drop``, for classifier-free guidance).
- **Sampling**: DDIM (Song et al. 2020), deterministic, ``steps`` network evaluations (default 4);
  ``guidance`` mixes conditional and unconditional predictions (Ho & Salimans 2022), at the cost of
  a second evaluation per step.
- **Few steps**: :meth:`LatentPrior.distill` halves the steps a sampler needs by progressive
  distillation (Salimans & Ho 2022): a student learns to do in one DDIM step what its teacher does
  in two, round after round (e.g. 16 -> 8 -> 4 -> 2).

Data: ``generators.data.load("latents:RUN")`` (the posterior means of a run's encoded frames).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.nets import (
    ddim_update,
    distill_times,
    distill_v_target,
    sinusoidal_embedding,
    v_noisy,
)
from generators.registry import Family, register


@dataclass
class LatentPriorConfig(GenConfig):
    """A small v-prediction diffusion model over latent vectors."""

    shape: tuple[int, ...] = (32,)
    """``(Z,)``: V's latent size."""
    width: int = 128
    blocks: int = 2
    """residual MLP blocks (each LayerNorm, SiLU, width -> 2 width -> width): small, so 1,024 dream
    starts take a few milliseconds per step."""
    embedding_dim: int = 64
    """size of the sinusoidal time embedding."""
    steps: int = 4
    """DDIM steps (network evaluations without guidance) used by ``sample``."""
    cond_dim: int = 0
    """size of a condition vector (0 = unconditional); ``sample(cond=(n, cond_dim))``."""
    cond_drop: float = 0.1
    """probability of training a batch row without its condition (classifier-free guidance)."""
    guidance: float = 1.0
    """classifier-free guidance weight at sampling (1 = the conditional model alone)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "points":
            raise ValueError(f"latent_prior models latent vectors (Z,), not {self.shape}; train it on latents:RUN")
        if min(self.width, self.blocks, self.steps, self.embedding_dim) < 1 or self.cond_dim < 0:
            raise ValueError("width, blocks, steps and embedding_dim must be >= 1, cond_dim >= 0")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 2 * width), nn.SiLU(),
                                 nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class LatentPrior(Generator):
    """Diffusion over latent vectors (see the module docstring)."""

    def __init__(self, config: LatentPriorConfig) -> None:
        super().__init__(config)
        c = config
        d = c.shape[0]
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.register_buffer("adapted", torch.tensor(False))
        self.inp = nn.Linear(d + c.embedding_dim, c.width)
        self.cond = nn.Linear(c.cond_dim, c.width) if c.cond_dim else None
        self.null = nn.Parameter(torch.zeros(c.width)) if c.cond_dim else None
        self.blocks = nn.Sequential(*(_Block(c.width) for _ in range(c.blocks)))
        self.out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, d))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    @property
    def cfg(self) -> LatentPriorConfig:
        assert isinstance(self.config, LatentPriorConfig)
        return self.config

    def v(self, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
          drop: torch.Tensor | None = None) -> torch.Tensor:
        """The network's v prediction for standardised ``zt`` (n, Z) at times ``t`` (n,); ``drop``
        (n,) bool replaces those rows' condition by the learned "no condition"."""
        emb = sinusoidal_embedding(t, self.cfg.embedding_dim)
        h = self.inp(torch.cat([zt, emb], dim=1))
        if self.cond is not None:
            assert self.null is not None
            if cond is None:
                c = self.null.expand(len(zt), -1)
            else:
                c = self.cond(cond.float())
                if drop is not None:
                    c = torch.where(drop[:, None], self.null.expand_as(c), c)
            h = h + c
        return self.out(self.blocks(h))

    def _adapt(self, z: torch.Tensor) -> None:
        if not bool(self.adapted):
            with torch.no_grad():
                self.mean.copy_(z.mean(0))
                self.std.copy_(z.std(0).clamp(min=1e-4))
                self.adapted.fill_(True)

    def _cond_of(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.cfg.cond_dim:
            return None
        if y is None or y.ndim != 2 or y.shape != (n, self.cfg.cond_dim):
            raise ValueError(f"latent_prior with cond_dim {self.cfg.cond_dim} trains on (z, cond) batches with cond "
                             f"({n}, {self.cfg.cond_dim}); got {None if y is None else tuple(y.shape)}")
        return y

    def loss(self, batch: Batch) -> torch.Tensor:
        z, y = unpack(batch)
        self._adapt(z)
        cond = self._cond_of(y, len(z))
        x = (z - self.mean) / self.std
        t = torch.rand(len(x), device=x.device)
        zt, target = v_noisy(x, torch.randn_like(x), t)
        drop = (torch.rand(len(x), device=x.device) < self.cfg.cond_drop) if cond is not None else None
        return F.mse_loss(self.v(zt, t, cond, drop), target)

    def _guided_v(self, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, guidance: float) -> torch.Tensor:
        if cond is None or guidance == 1.0:
            return self.v(zt, t, cond)
        return self.v(zt, t, None) + guidance * (self.v(zt, t, cond) - self.v(zt, t, None))

    def ddim_step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: torch.Tensor | None = None,
                  guidance: float = 1.0) -> torch.Tensor:
        """One deterministic DDIM step of standardised ``x`` from times ``t`` to ``t_next`` ((n,) each)."""
        return ddim_update(x, self._guided_v(x, t, cond, guidance), t, t_next)

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               steps: int | None = None, guidance: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` latents (n, Z) in V's units, by ``steps`` DDIM steps (default: the config's) from
        ``noise`` (n, Z) or noise drawn from ``generator``."""
        steps = self.cfg.steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.cfg.cond_dim:
            if cond is not None:
                cond = torch.as_tensor(cond, dtype=torch.float32, device=self.device)
                if cond.ndim == 1:
                    cond = cond.expand(n, -1)
                if cond.shape != (n, self.cfg.cond_dim):
                    raise ValueError(f"cond must be ({n}, {self.cfg.cond_dim}) or ({self.cfg.cond_dim},), "
                                     f"got {tuple(cond.shape)}")
        elif cond is not None:
            raise ValueError("latent_prior is unconditional (cond_dim 0); call sample(n) without cond")
        g = as_generator(generator, self.device)
        x = torch.randn(n, self.cfg.shape[0], generator=g, device=self.device) if noise is None else noise.to(self.device)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=self.device)
        w = self.cfg.guidance if guidance is None else float(guidance)
        with self.evaluating():
            for i in range(steps):
                x = self.ddim_step(x, ts[i].expand(n), ts[i + 1].expand(n), cond, w)
        return x * self.std + self.mean

    def distill(self, data: Any, teacher_steps: int, rounds: int, steps_per_round: int = 1000, batch_size: int = 256,
                lr: float = 3e-4, seed: int = 0, progress: bool = False) -> list[float]:
        """Progressive distillation: ``rounds`` times, train a copy of this model so that one DDIM step
        of the student does what two of the teacher do, halving the steps (``teacher_steps`` ->
        ``teacher_steps / 2**rounds``); the final student's weights replace this model's and
        ``config.steps`` becomes its step count. ``data``: latents (N, Z) (a GenData or a tensor).
        Returns the last loss of each round."""
        z_all = (data.tensor() if hasattr(data, "tensor") else torch.as_tensor(data)).float()
        if teacher_steps % (2 ** rounds):
            raise ValueError(f"teacher_steps {teacher_steps} must be divisible by 2**rounds ({2 ** rounds})")
        self._adapt(z_all)
        g = torch.Generator().manual_seed(seed)
        losses, steps = [], teacher_steps
        for _ in range(rounds):
            teacher = copy.deepcopy(self).eval()
            student = self
            opt = torch.optim.AdamW(student.parameters(), lr=lr)
            student.train()
            last = math.nan
            for it in range(steps_per_round):
                idx = torch.randint(0, len(z_all), (batch_size,), generator=g)
                x = ((z_all[idx] - self.mean) / self.std).to(self.device)
                t, t_mid, t_next = distill_times(steps, batch_size, g, self.device)
                zt, _ = v_noisy(x, torch.randn(x.shape, generator=g).to(self.device), t)
                with torch.no_grad():
                    target_x = teacher.ddim_step(teacher.ddim_step(zt, t, t_mid), t_mid, t_next)
                    v_target = distill_v_target(zt, target_x, t, t_next)
                loss = F.mse_loss(student.v(zt, t), v_target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = loss.item()
                if progress and it % 200 == 0:
                    print(f"distill {steps} -> {steps // 2}: step {it}, loss {last:.4f}", flush=True)
            steps //= 2
            losses.append(last)
        self.cfg.steps = steps
        self.eval()
        return losses


register(Family(
    "latent_prior", LatentPrior, LatentPriorConfig,
    "diffusion prior over V's latents: v-prediction MLP, DDIM in few steps, guidance, progressive distillation",
    kinds=("points",),
    presets={"tiny": {"width": 32, "blocks": 1, "embedding_dim": 16}, "small": {"width": 64, "blocks": 2}},
    train={"lr": 1e-3, "batch_size": 256, "ema": 0.0}, monitor="loss"))
