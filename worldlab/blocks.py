"""Sequence-model building blocks shared by the language models (:mod:`generators.gpt`,
:mod:`generators.mamba`) and the world model's sequence Ms (:mod:`worldlab.sequence_m`).

- Transformer: rotary position embeddings (RoPE, Su et al. 2021), a band (sliding-window causal)
  mask, and a pre-norm block whose attention a ring key/value cache can replay exactly.
- Mamba (Gu & Dao 2023): the selective state-space mixer with a parallel scan (Hillis-Steele
  doubling), a loop over time (faster on a CPU) and an O(1) step, in mambapy's module layout.

Blocks take their sizes from a config object read by attribute (``width``, ``heads``, ``dropout``
for attention; ``width``, ``inner``, ``state``, ``conv``, ``dt_rank``, ``dt_min``, ``dt_max``,
``eps``, ``scan`` for Mamba), so a language model's config and an M's config both build them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(..., dim)`` of the rotary angles of ``positions`` (halves rotated together)."""
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    ang = positions.float()[..., None] * freqs
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


def band_mask(t: int, window: int, device: torch.device) -> torch.Tensor:
    """``(t, t)`` True where query i may attend key j: ``i - window < j <= i``."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    return (j <= i) & (j > i - window)


class Block(nn.Module):
    def __init__(self, c: Any) -> None:
        super().__init__()
        self.heads, self.hd = c.heads, c.width // c.heads
        self.ln1, self.ln2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv = nn.Linear(c.width, 3 * c.width, bias=False)
        self.proj = nn.Linear(c.width, c.width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(c.width, 4 * c.width, bias=False), nn.GELU(),
                                 nn.Linear(4 * c.width, c.width, bias=False), nn.Dropout(c.dropout))
        self.drop = nn.Dropout(c.dropout)
        self.p_drop = c.dropout

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` ``(B, T, C)`` -> rotated q, k and v ``(B, H, T, hd)``."""
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = att.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, -1)))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv_heads(x, cos, sin)
        p = self.p_drop if self.training else 0.0
        att = (F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p) if mask is None else
               F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))
        return self.finish(x, att)


SCANS = ("auto", "parallel", "loop")


def complete_mamba_config(c: Any) -> None:
    """Fill a Mamba config's derived ``dt_rank`` (0 -> ceil(width / 16), as the paper) and refuse an
    unknown ``scan``; shared by the language model's and the M's configs."""
    c.dt_rank = c.dt_rank or math.ceil(c.width / 16)
    if c.scan not in SCANS:
        raise ValueError(f"scan must be 'auto', 'parallel' or 'loop', got {c.scan!r}")


def pscan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` (h_{-1} = 0) for every t, along dim 1, in log2(T) passes."""
    t, shift = a.shape[1], 1
    while shift < t:
        b = torch.cat([b[:, :shift], a[:, shift:] * b[:, :-shift] + b[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return b


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaBlock(nn.Module):
    """The selective SSM mixer (names as mambapy's)."""

    def __init__(self, c: Any) -> None:
        super().__init__()
        self.c = c
        e = c.inner
        self.in_proj = nn.Linear(c.width, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, c.conv, groups=e, padding=c.conv - 1, bias=True)
        self.x_proj = nn.Linear(e, c.dt_rank + 2 * c.state, bias=False)
        self.dt_proj = nn.Linear(c.dt_rank, e, bias=True)
        std = c.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(e) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, c.state + 1, dtype=torch.float32).repeat(e, 1)))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, c.width, bias=False)

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(..., E)`` -> dt ``(..., E)``, B and C ``(..., N)``."""
        c = self.c
        dt, b, cc = self.x_proj(x).split([c.dt_rank, c.state, c.state], dim=-1)
        return F.softplus(self.dt_proj(dt)), b, cc

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        t = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = F.silu(self.conv1d(xs.transpose(1, 2))[..., :t].transpose(1, 2))  # causal: drop the right pad
        dt, b, cc = self._ssm_inputs(xs)
        a = -torch.exp(self.A_log)  # (E, N)
        if self.c.scan == "parallel" or (self.c.scan == "auto" and xs.is_cuda):
            da = torch.exp(dt[..., None] * a)  # (B, T, E, N)
            h = pscan(da, dt[..., None] * b[:, :, None, :] * xs[..., None])
            y = torch.einsum("bten,btn->bte", h, cc)
        else:  # the same recurrence, one time step per pass: never holds (B, T, E, N) at once
            h, ys = xs.new_zeros(xs.shape[0], xs.shape[2], self.c.state), []
            for i in range(t):
                h = torch.exp(dt[:, i, :, None] * a) * h + (dt[:, i, :, None] * xs[:, i, :, None]) * b[:, i, None, :]
                ys.append(torch.einsum("ben,bn->be", h, cc[:, i]))
            y = torch.stack(ys, dim=1)
        y = y + self.D * xs
        return self.out_proj(y * F.silu(z))

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """``x`` ``(n, D)``; cache: ``h`` ``(n, E, N)`` and the last ``conv - 1`` inputs ``(n, E, conv - 1)``."""
        h, inputs = cache
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        window = torch.cat([inputs, xs[:, :, None]], dim=2)  # (n, E, conv)
        xc = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        dt, b, cc = self._ssm_inputs(xc)
        a = -torch.exp(self.A_log)
        h = torch.exp(dt[..., None] * a) * h + dt[..., None] * b[:, None, :] * xc[..., None]
        y = torch.einsum("ben,bn->be", h, cc) + self.D * xc
        return self.out_proj(y * F.silu(z)), (h, window[:, :, 1:])


class ResidualBlock(nn.Module):
    def __init__(self, c: Any) -> None:
        super().__init__()
        self.mixer = MambaBlock(c)
        self.norm = RMSNorm(c.width, c.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.norm(x)) + x

    def step(self, x: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out, cache = self.mixer.step(self.norm(x), cache)
        return out + x, cache
