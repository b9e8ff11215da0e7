"""Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752): a selective state-space language model
in pure PyTorch (``mamba-ssm`` needs CUDA).

Each residual block is ``x + mixer(RMSNorm(x))``; the mixer expands the width by 2, runs a short
causal depthwise convolution and SiLU, then the selective scan

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t,      y_t = C_t h_t + D x_t

with ``dt``, ``B`` and ``C`` computed from the input (the "selection"), and gates the result with
SiLU of the other half. Training runs the scan in parallel over time (Hillis-Steele doubling:
log2(T) element-wise passes; on a CPU a loop over time is faster, see ``MambaConfig.scan``);
:meth:`Mamba.step` runs the same recurrence one token at a time in
O(1) memory, keeping the convolution's last inputs and ``h`` per layer. The module layout and
initialisation follow the reference implementation ``mambapy`` (its names, so a test loads the
same weights into it and compares outputs).

Defaults: 4 layers of width 128, state 16, expansion 2, convolution 4, embeddings tied to the
output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generators.registry import Family, register
from generators.sequence import TEXT_TRAIN, SequenceModel, TokenConfig


@dataclass
class MambaConfig(TokenConfig):
    """A small Mamba language model."""

    layers: int = 4
    width: int = 128
    """d_model."""
    state: int = 16
    """d_state (N): the size of each channel's hidden state."""
    expand: int = 2
    conv: int = 4
    """kernel of the causal depthwise convolution."""
    dt_rank: int = 0
    """rank of dt's projection (0 = ceil(width / 16), as the paper)."""
    dt_min: float = 0.001
    dt_max: float = 0.1
    eps: float = 1e-5
    """RMSNorm's epsilon."""
    scan: str = "auto"
    """how training runs the recurrence over time: "parallel" (Hillis-Steele doubling, log2(T) passes
    over (B, T, E, N) tensors: what a GPU wants), "loop" (one pass per time step on (B, E, N): 3.3x
    faster fwd+bwd on one CPU core at 12 x 64, scripts/bench.py mamba), "auto" (parallel on CUDA,
    else loop). All three compute the same numbers up to float rounding (tested)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.layers, self.width, self.state, self.expand, self.conv) < 1:
            raise ValueError("layers, width, state, expand and conv must all be >= 1")
        self.dt_rank = self.dt_rank or math.ceil(self.width / 16)
        if self.scan not in ("auto", "parallel", "loop"):
            raise ValueError(f"scan must be 'auto', 'parallel' or 'loop', got {self.scan!r}")

    @property
    def inner(self) -> int:
        return self.expand * self.width


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

    def __init__(self, c: MambaConfig) -> None:
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
    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.mixer = MambaBlock(c)
        self.norm = RMSNorm(c.width, c.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.norm(x)) + x

    def step(self, x: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out, cache = self.mixer.step(self.norm(x), cache)
        return out + x, cache


class Mamba(SequenceModel):
    """Embedding -> Mamba residual blocks -> RMSNorm -> tied softmax (see the module docstring)."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.width)
        nn.init.normal_(self.embedding.weight, 0.0, 0.02)
        self.layers = nn.ModuleList(ResidualBlock(c) for _ in range(c.layers))
        self.norm_f = RMSNorm(c.width, c.eps)
        self.head = nn.Linear(c.width, c.vocab_size, bias=False)
        self.head.weight = self.embedding.weight

    @property
    def cfg(self) -> MambaConfig:
        assert isinstance(self.config, MambaConfig)
        return self.config

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embedding(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm_f(x))

    def init_state(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        c = self.cfg
        return [(torch.zeros(n, c.inner, c.state, device=self.device),
                 torch.zeros(n, c.inner, c.conv - 1, device=self.device)) for _ in range(c.layers)]

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        x, new = self.embedding(tokens), []
        for layer, cache in zip(self.layers, state, strict=True):
            x, cache = layer.step(x, cache)
            new.append(cache)
        return self.head(self.norm_f(x)), new


register(Family(
    "mamba", Mamba, MambaConfig, "Mamba: selective state-space model, parallel scan and O(1) steps (pure torch)",
    kinds=("tokens",),
    presets={"tiny": {"layers": 1, "width": 16, "state": 4, "warmup": 5}, "small": {"layers": 2, "width": 64}},
    train=TEXT_TRAIN, monitor="loss"))
