"""Small network pieces shared by several families (no family logic here)."""

from __future__ import annotations

import math

import torch
from torch import nn


def num_halvings(size: int, down_to: int = 4) -> int:
    """How many stride-2 stages take a ``size`` x ``size`` image down to ``down_to`` x ``down_to``."""
    return max(0, int(round(math.log2(size / down_to))))


def mlp(sizes: list[int], act: type[nn.Module] = nn.LeakyReLU, out_act: nn.Module | None = None) -> nn.Sequential:
    """``Linear -> act`` for each consecutive pair of ``sizes`` (no act after the last Linear)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act(0.2) if act is nn.LeakyReLU else act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def one_hot_maps(y: torch.Tensor, num_classes: int, h: int, w: int) -> torch.Tensor:
    """Labels ``(B,)`` -> one-hot feature maps ``(B, K, H, W)`` (the book's conditional critic input)."""
    return nn.functional.one_hot(y, num_classes).float()[:, :, None, None].expand(-1, -1, h, w)


def sinusoidal_embedding(v: torch.Tensor, dim: int, min_freq: float = 1.0, max_freq: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of a scalar per sample, ``(B, 1)`` -> ``(B, dim)``.

    As in the book's DDIM notebook (after Vaswani et al. 2017, https://arxiv.org/abs/1706.03762):
    ``dim/2`` frequencies spaced geometrically in ``[min_freq, max_freq]``,
    ``[sin(2 pi f v), cos(2 pi f v)]``.
    """
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2, device=v.device))
    ang = 2.0 * math.pi * freqs[None, :] * v.reshape(-1, 1)  # (B, dim/2)
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)  # (B, dim)


# -- v-prediction diffusion on a cosine schedule (Salimans & Ho 2022), for any tensor shape ----------
# Shared by the latent prior (vectors) and the diffusion renderer (images): times ``t`` are (n,),
# broadcast over the other dimensions of ``x``.


def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine schedule's signal and noise rates at ``t`` in [0, 1] (alpha^2 + sigma^2 = 1)."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def v_noisy(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t = alpha x + sigma eps`` and the v target ``alpha eps - sigma x`` at times ``t`` (n,)."""
    a, s = (_bc(r, x) for r in alpha_sigma(t))
    return a * x + s * eps, a * eps - s * x


def ddim_update(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from ``x`` at ``t`` to ``t_next`` given the model's ``v`` there."""
    a, s = (_bc(r, x) for r in alpha_sigma(t))
    a2, s2 = (_bc(r, x) for r in alpha_sigma(t_next))
    x0, eps = a * x - s * v, s * x + a * v
    return a2 * x0 + s2 * eps


def distill_times(steps: int, n: int, generator: torch.Generator, device: torch.device | str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Progressive distillation's times for ``n`` rows of a ``steps``-step teacher: a student step
    ``k`` in 1..steps/2 drawn per row, its start ``t = 2k / steps``, the teacher's midpoint and the
    end, each (n,)."""
    k = torch.randint(1, steps // 2 + 1, (n,), generator=generator).to(device)
    t = 2 * k / steps
    return t, t - 1.0 / steps, t - 2.0 / steps


def distill_v_target(zt: torch.Tensor, target: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """Progressive distillation's target (Salimans & Ho 2022, eq. 8, written for v): the v that
    carries ``zt`` at ``t`` to the teacher's ``target`` at ``t_next`` in one DDIM step."""
    a, s = (_bc(r, zt) for r in alpha_sigma(t))
    a2, s2 = (_bc(r, zt) for r in alpha_sigma(t_next))
    ratio = torch.where(_bc(t_next, zt) > 0, s2 / s, torch.zeros_like(s))  # sigma_next / sigma
    x0 = (target - ratio * zt) / (a2 - ratio * a)
    eps = (zt - a * x0) / s
    return a * eps - s * x0
