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
