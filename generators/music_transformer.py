"""The book's music Transformer (chapter 11): notes and durations of Bach's chorales, one token pair
per step (:mod:`generators.music`).

As the book's model: a note embedding and a duration embedding, concatenated, through causal
self-attention blocks, then two softmax heads, one over the next note and one over the next
duration; the loss is the sum of the two cross-entropies (logged apart as ``note_nll`` and
``duration_nll``, nats per token). Positions are rotary (the lab's :class:`worldlab.blocks.Block`,
as the GPT's) where the book adds sine embeddings. Sampling draws the note and the duration of each
step at a temperature and feeds the pair back (no cache: a chorale part is a few hundred steps).

    data = generators.data.load("chorales", block_size=64)
    model = generators.model_for("music_transformer", data)
    generators.fit(model, data, generators.FitConfig(steps=2000), out="runs/music")
    parts = model.sample_tokens(4, length=64, temperature=0.8, generator=0)   # 4 streams of (note, duration)
    generators.music.tokens_to_midi(parts, "bach.mid")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.music import MusicTokenizer
from generators.registry import Family, register
from generators.sequence import warmup_cosine
from worldlab.blocks import Block, band_mask, rope_angles


@dataclass
class MusicTransformerConfig(GenConfig):
    """A small causal Transformer over (note, duration) pairs."""

    shape: tuple[int, ...] = (64,)
    """``(block_size,)``: the pairs a model reads per training window."""
    layers: int = 2
    heads: int = 4
    width: int = 128
    """the residual stream's width: half note embedding, half duration embedding."""
    dropout: float = 0.1
    warmup: int = 100
    lr_floor: float = 0.1
    note_vocab: int = 0
    duration_vocab: int = 0
    """vocabulary sizes (0: :class:`generators.music.MusicTokenizer`'s)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        tok = MusicTokenizer()
        self.note_vocab = self.note_vocab or tok.note_vocab
        self.duration_vocab = self.duration_vocab or tok.duration_vocab
        if len(self.shape) != 1:
            raise ValueError(f"a music model's shape is (block_size,), got {self.shape}")
        if self.width % 2 or self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must be even and split into {self.heads} heads of an even size")

    @property
    def kind(self) -> str:
        return "music"

    @property
    def block_size(self) -> int:
        return self.shape[0]


class MusicTransformer(Generator):
    """See the module docstring."""

    def __init__(self, config: MusicTransformerConfig) -> None:
        super().__init__(config)
        c = config
        self.note_emb = nn.Embedding(c.note_vocab, c.width // 2)
        self.duration_emb = nn.Embedding(c.duration_vocab, c.width // 2)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)
        self.note_head = nn.Linear(c.width, c.note_vocab)
        self.duration_head = nn.Linear(c.width, c.duration_vocab)

    @property
    def cfg(self) -> MusicTransformerConfig:
        assert isinstance(self.config, MusicTransformerConfig)
        return self.config

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, 2)`` note and duration ids -> next-note ``(B, T, Vn)`` and next-duration
        ``(B, T, Vd)`` logits, causal."""
        c, t = self.cfg, pairs.shape[1]
        x = self.drop(torch.cat([self.note_emb(pairs[..., 0]), self.duration_emb(pairs[..., 1])], dim=-1))
        cos, sin = rope_angles(torch.arange(t, device=pairs.device), c.width // c.heads, 10000.0)
        mask = None if t <= c.block_size else band_mask(t, c.block_size, pairs.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        x = self.ln_f(x)
        return self.note_head(x), self.duration_head(x)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] != 2:
            raise ValueError(f"{self.family} trains on (B, T + 1, 2) note/duration windows, got {tuple(x.shape)}")
        notes, durs = self(x[:, :-1])
        note = F.cross_entropy(notes.reshape(-1, notes.shape[-1]), x[:, 1:, 0].reshape(-1))
        dur = F.cross_entropy(durs.reshape(-1, durs.shape[-1]), x[:, 1:, 1].reshape(-1))
        return {"loss": note + dur, "note_nll": note.detach(), "duration_nll": dur.detach()}

    def lr_factor(self, step: int, steps: int) -> float:
        """Linear warm-up, then a cosine decay to ``lr_floor`` (as the text models)."""
        return warmup_cosine(step, steps, self.cfg.warmup, self.cfg.lr_floor)

    @torch.no_grad()
    def nll(self, windows: np.ndarray | torch.Tensor, batch_size: int = 64) -> dict[str, float]:
        """Held-out nats per token of ``(N, T + 1, 2)`` windows: ``{"note": ..., "duration": ...}``."""
        w_all = torch.as_tensor(windows, dtype=torch.long)
        with self.evaluating():
            tot = {"note": 0.0, "duration": 0.0}
            count = 0
            for i in range(0, len(w_all), batch_size):
                w = w_all[i:i + batch_size].to(self.device)
                notes, durs = self(w[:, :-1])
                tot["note"] += float(F.cross_entropy(notes.reshape(-1, notes.shape[-1]), w[:, 1:, 0].reshape(-1),
                                                     reduction="sum"))
                tot["duration"] += float(F.cross_entropy(durs.reshape(-1, durs.shape[-1]), w[:, 1:, 1].reshape(-1),
                                                         reduction="sum"))
                count += w[:, 1:, 0].numel()
        return {k: v / count for k, v in tot.items()}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               length: int | None = None, temperature: float = 1.0, prompt: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``(n, length, 2)`` sampled note and duration ids after ``prompt`` ``(P, 2)`` or
        ``(n, P, 2)`` (default: one START pair; not part of the result)."""
        self.check_cond(n, cond)
        c = self.cfg
        length = c.block_size if length is None else length
        if length < 1 or n < 1:
            raise ValueError(f"sample needs n >= 1 and length >= 1, got {n}, {length}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        g = as_generator(generator, self.device)
        start = torch.tensor([[c.note_vocab - 1, c.duration_vocab - 1]], device=self.device)  # START, START
        seq = torch.as_tensor(start if prompt is None else prompt, device=self.device).long()
        seq = (seq[None].expand(n, -1, -1) if seq.ndim == 2 else seq).clone()
        if seq.shape[0] != n or seq.shape[2] != 2:
            raise ValueError(f"prompt must hold (P, 2) or (n, P, 2) ids, got {tuple(seq.shape)}")
        p = seq.shape[1]
        with self.evaluating():
            for _ in range(length):
                notes, durs = self(seq[:, -c.block_size:])
                nxt = [torch.multinomial(torch.softmax(lg[:, -1] / temperature, -1), 1, generator=g)
                       for lg in (notes, durs)]
                seq = torch.cat([seq, torch.cat(nxt, dim=1)[:, None]], dim=1)
        return seq[:, p:]

    def sample_tokens(self, n: int, length: int | None = None, temperature: float = 1.0,
                      generator: int | torch.Generator | None = None) -> list[tuple[list[str], list[str]]]:
        """``n`` sampled streams as (notes, durations) token strings, START pairs dropped."""
        tok = MusicTokenizer()
        out = []
        for row in self.sample(n, generator=generator, length=length, temperature=temperature).cpu().numpy():
            keep = (row[:, 0] != tok.note_vocab - 1) & (row[:, 1] != tok.duration_vocab - 1)
            out.append(tok.decode(row[keep, 0], row[keep, 1]))
        return out


register(Family(
    "music_transformer", MusicTransformer, MusicTransformerConfig,
    "music Transformer: note and duration embeddings, causal attention, two softmax heads (book ch. 11)",
    kinds=("music",),
    presets={"tiny": {"layers": 1, "heads": 2, "width": 16, "warmup": 5, "dropout": 0.0},
             "small": {"layers": 2, "heads": 4, "width": 64}},
    train={"lr": 1e-3, "batch_size": 32, "weight_decay": 0.1, "grad_clip": 1.0}, monitor="loss"))
