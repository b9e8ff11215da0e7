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

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from generators.registry import Family, register
from generators.sequence import TEXT_TRAIN, SequenceModel, TokenConfig
from worldlab.blocks import ResidualBlock, RMSNorm, complete_mamba_config


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
    over (B, T, E, N) tensors: what a GPU wants), "loop" (one pass per time step on (B, E, N): a training
    step of the default model 2.5x faster on one CPU core at 12 x 64, ``python benchmarks/sequence.py``),
    "auto" (parallel on CUDA,
    else loop). All three compute the same numbers up to float rounding (tested)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.layers, self.width, self.state, self.expand, self.conv) < 1:
            raise ValueError("layers, width, state, expand and conv must all be >= 1")
        complete_mamba_config(self)

    @property
    def inner(self) -> int:
        return self.expand * self.width


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
