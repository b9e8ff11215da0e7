"""GPT (Radford et al. 2018/2019; book chapter 9), nanoGPT-sized, over characters.

Pre-norm Transformer blocks (LayerNorm, causal multi-head self-attention, LayerNorm, a 4x GELU
MLP, residuals), token embeddings tied to the output layer, and rotary position embeddings
(RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864) instead of learned absolute ones: a
query and a key meet through their *relative* offset only, which is what makes a ring key/value
cache exact.

Attention is causal within a sliding window of ``window`` tokens (default: the block size, which
is plain causal attention over a training window). :meth:`GPT.step` keeps each layer's keys and
values of the last ``window`` tokens in a ring buffer, so sampling goes on past the block size at
O(window) per token, and stepping through any sequence gives exactly what :meth:`GPT.forward`
gives over it with the same window (the tests check it to 1e-5 over three windows).
:meth:`GPT.attention_maps` returns the attention weights for pictures.

nanoGPT's shakespeare_char CPU settings are the defaults: 4 layers, 4 heads, 128 wide, block 64,
batch 12, AdamW 1e-3 with weight decay 0.1, warm-up and cosine decay, no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generators.registry import Family, register
from generators.sequence import TEXT_TRAIN, SequenceModel, TokenConfig
from worldlab.blocks import Block, band_mask, rope_angles


@dataclass
class GPTConfig(TokenConfig):
    """nanoGPT's small character GPT."""

    layers: int = 4
    heads: int = 4
    width: int = 128
    """the residual stream's width (nanoGPT n_embd)."""
    window: int = 0
    """tokens each position attends to, itself included (0 = the block size: plain causal)."""
    dropout: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of an even size")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0 = the block size), got {self.window}")

    @property
    def span(self) -> int:
        return self.window or self.block_size


class GPT(SequenceModel):
    """A decoder-only Transformer language model (see the module docstring)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.width)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / (2 * c.layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def cfg(self) -> GPTConfig:
        assert isinstance(self.config, GPTConfig)
        return self.config

    def _mask(self, t: int, device: torch.device) -> torch.Tensor | None:
        return None if self.cfg.span >= t else band_mask(t, self.cfg.span, device)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """The final hidden states ``(B, T, width)`` (after the last LayerNorm) of token ids ``(B, T)``:
        what the output layer reads, and what a text encoder (:mod:`generators.clip`) pools."""
        t = idx.shape[1]
        cos, sin = rope_angles(torch.arange(t, device=idx.device), self.cfg.width // self.cfg.heads, self.cfg.rope_base)
        x = self.drop(self.wte(idx))
        mask = self._mask(t, idx.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(idx))

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(layers, heads, T, T)`` of one sequence ``(T,)``."""
        with self.evaluating():
            idx = idx[None].to(self.device)
            t = idx.shape[1]
            cos, sin = rope_angles(torch.arange(t, device=idx.device), self.cfg.width // self.cfg.heads,
                                   self.cfg.rope_base)
            allowed = band_mask(t, self.cfg.span, idx.device)
            x, maps = self.wte(idx), []
            for blk in self.blocks:
                q, k, v = blk.qkv_heads(x, cos, sin)
                w = (q @ k.transpose(-1, -2) / blk.hd ** 0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
                maps.append(w[0])
                x = blk.finish(x, w @ v)
            return torch.stack(maps)

    # --- one token at a time: a ring key/value cache of the last `window` tokens -----------------
    def init_state(self, n: int) -> dict[str, Any]:
        c = self.cfg
        shape = (c.layers, n, c.heads, c.span, c.width // c.heads)
        return {"k": torch.zeros(shape, device=self.device), "v": torch.zeros(shape, device=self.device), "t": 0}

    def step(self, tokens: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        c, t = self.cfg, int(state["t"])
        slot, filled = t % c.span, min(t + 1, c.span)
        cos, sin = rope_angles(torch.tensor([t], device=self.device), c.width // c.heads, c.rope_base)
        x = self.wte(tokens)[:, None]  # (n, 1, C)
        kc, vc = state["k"], state["v"]
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.qkv_heads(x, cos, sin)  # (n, H, 1, hd)
            kc[i, :, :, slot] = k[:, :, 0]
            vc[i, :, :, slot] = v[:, :, 0]
            att = F.scaled_dot_product_attention(q, kc[i, :, :, :filled], vc[i, :, :, :filled])
            x = blk.finish(x, att)
        return self.head(self.ln_f(x))[:, 0], {"k": kc, "v": vc, "t": t + 1}


register(Family(
    "gpt", GPT, GPTConfig, "GPT: causal self-attention with RoPE, tied embeddings (book ch. 9, nanoGPT sizes)",
    kinds=("tokens",),
    presets={"tiny": {"layers": 1, "heads": 2, "width": 16, "warmup": 5}, "small": {"layers": 2, "heads": 4, "width": 64}},
    train=TEXT_TRAIN, monitor="loss"))
