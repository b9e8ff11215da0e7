"""Language models over tokens (book chapters 5 and 9): the shared API, sampling, and the LSTM.

Every sequence family (``lstm`` here, ``gpt`` in :mod:`generators.gpt`, ``mamba`` in
:mod:`generators.mamba`) is a :class:`SequenceModel`:

- ``forward(idx) -> logits``: ``(B, T)`` token ids to ``(B, T, vocab)`` next-token logits, causal;
- ``loss(batch)``: the mean next-token cross-entropy of ``(B, T + 1)`` windows, in nats/token;
- ``init_state(n)`` / ``step(tokens, state) -> (logits, state)``: one token at a time, O(1) per
  token for the LSTM and Mamba, a key/value cache for the GPT; ``step`` over a window gives
  what ``forward`` gives (the tests hold every family to it);
- ``sample(n, length=..., temperature=..., top_k=..., top_p=..., prompt=...)``: ``(n, length)``
  token ids; ``generate("prompt", ...)`` and ``decode(ids)`` speak text (the vocabulary travels in
  the checkpoint's config, so a loaded model decodes without its data);
- ``nll(windows)``: held-out nats per token.

Training follows nanoGPT's character recipe: AdamW, a linear warm-up then a cosine decay to a
tenth of the learning rate over the run (:meth:`SequenceModel.lr_factor`, read by the lab's loop).

The LSTM is the book's (chapter 5: an embedding, an LSTM, a dense softmax), here over
characters: embedding 128, one LSTM layer of 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.registry import Family, register


@dataclass
class TokenConfig(GenConfig):
    """Fields every sequence family's config has."""

    shape: tuple[int, ...] = (64,)
    """``(block_size,)``: the tokens a model reads per training window (its context)."""
    vocab: str = ""
    """the characters of the token ids (set from the data; decodes samples)."""
    vocab_size: int = 0
    """number of tokens (``len(vocab)`` when a vocabulary is given)."""
    warmup: int = 100
    """steps of linear learning-rate warm-up."""
    lr_floor: float = 0.1
    """the cosine decay ends at this fraction of the learning rate (1 = constant)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.shape) != 1:
            raise ValueError(f"a sequence model's shape is (block_size,), got {self.shape}")
        if self.vocab:
            self.vocab_size = self.vocab_size or len(self.vocab)
            if self.vocab_size != len(self.vocab):
                raise ValueError(f"vocab_size {self.vocab_size} differs from the {len(self.vocab)} characters of vocab")
        if self.vocab_size < 2:
            raise ValueError("a language model needs a vocabulary of >= 2 tokens: train it on a text source "
                             "(pydoc, python_docs, text:PATH) or pass vocab_size")
        if self.warmup < 0 or not 0.0 < self.lr_floor <= 1.0:
            raise ValueError(f"warmup must be >= 0 and lr_floor in (0, 1], got {self.warmup}, {self.lr_floor}")

    @property
    def kind(self) -> str:
        return "tokens"

    @property
    def block_size(self) -> int:
        return self.shape[0]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits ``(n, V)`` with all but the ``top_k`` largest, and all outside the smallest set whose
    probability reaches ``top_p`` (nucleus), set to ``-inf``; the most likely token always stays."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        srt, idx = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(srt, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(srt, dim=-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return logits


def warmup_cosine(step: int, steps: int, warmup: int, floor: float) -> float:
    """nanoGPT's schedule: the learning rate's factor at ``step`` of ``steps``, a linear warm-up over
    ``warmup`` steps, then a cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SequenceModel(Generator):
    """A causal language model over ``config.vocab_size`` tokens (see the module docstring)."""

    config: TokenConfig

    # --- what each family defines -------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        raise NotImplementedError

    def init_state(self, n: int) -> Any:
        """The state before the first token of ``n`` sequences."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token per sequence ``(n,)`` -> next-token logits ``(n, V)`` and the new state."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        x, _ = unpack(batch)
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"{self.family} trains on (B, T + 1) token windows, got {tuple(x.shape)}")
        logits = self(x[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    def lr_factor(self, step: int, steps: int) -> float:
        """The learning rate's factor at ``step`` of ``steps``: linear warm-up, cosine to ``lr_floor``."""
        return warmup_cosine(step, steps, self.config.warmup, self.config.lr_floor)

    @torch.no_grad()
    def nll(self, windows: torch.Tensor, batch_size: int = 64) -> float:
        """Mean next-token negative log-likelihood (nats/token) of ``(N, T + 1)`` windows."""
        with self.evaluating():
            total, count = 0.0, 0
            for i in range(0, len(windows), batch_size):
                w = windows[i:i + batch_size].to(self.device)
                logits = self(w[:, :-1])
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                               reduction="sum"))
                count += w[:, 1:].numel()
        return total / count

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               length: int | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, length)`` sampled token ids (default length: the block size), after ``prompt``
        ``(n, P)`` or ``(P,)`` when given (the prompt is not part of the result)."""
        self.check_cond(n, cond)
        length = self.config.block_size if length is None else length
        if length < 1 or n < 1:
            raise ValueError(f"sample needs n >= 1 and length >= 1, got {n}, {length}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        g = as_generator(generator, self.device)
        with self.evaluating():
            state = self.init_state(n)
            if prompt is None:
                prompt = torch.zeros(n, 1, dtype=torch.long, device=self.device)  # token 0 (newline in text)
            prompt = torch.as_tensor(prompt, device=self.device).long()
            if prompt.ndim == 1:
                prompt = prompt.expand(n, -1)
            if prompt.shape[0] != n or prompt.shape[1] < 1:
                raise ValueError(f"prompt must hold (n, P >= 1) or (P,) token ids, got {tuple(prompt.shape)}")
            for t in range(prompt.shape[1]):
                logits, state = self.step(prompt[:, t], state)
            out = torch.empty(n, length, dtype=torch.long, device=self.device)
            for t in range(length):
                probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                tok = torch.multinomial(probs, 1, generator=g)[:, 0]
                out[:, t] = tok
                if t + 1 < length:
                    logits, state = self.step(tok, state)
        return out

    def encode(self, text: str) -> torch.Tensor:
        from generators.text import CharTokenizer

        if not self.config.vocab:
            raise ValueError(f"this {self.family} has no character vocabulary (trained on raw ids); pass token ids")
        return torch.from_numpy(CharTokenizer(self.config.vocab).encode(text))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Text of each row of ``(n, T)`` ids (or one string's worth for ``(T,)``, in a list)."""
        from generators.text import CharTokenizer

        if not self.config.vocab:
            raise ValueError(f"this {self.family} has no character vocabulary (trained on raw ids)")
        tok = CharTokenizer(self.config.vocab)
        ids = ids[None] if ids.ndim == 1 else ids
        return [tok.decode(row) for row in ids.cpu()]

    def generate(self, prompt: str = "\n", length: int = 200, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: int | torch.Generator | None = None) -> str:
        """``prompt`` followed by ``length`` sampled characters."""
        ids = self.sample(1, generator=generator, length=length, temperature=temperature, top_k=top_k,
                          top_p=top_p, prompt=self.encode(prompt or "\n")[None])
        return prompt + self.decode(ids)[0]


# --- the LSTM (book chapter 5) ---------------------------------------------------------------------


@dataclass
class LSTMConfig(TokenConfig):
    """The book's LSTM language model, over characters."""

    embedding: int = 128
    """token embedding size (book EMBEDDING_DIM: 100, over words)."""
    hidden: int = 256
    """LSTM units (book N_UNITS: 128)."""
    layers: int = 1
    """stacked LSTM layers."""
    dropout: float = 0.0
    """dropout between layers and before the softmax."""


class LSTMLM(SequenceModel):
    """Embedding -> LSTM -> linear softmax over the vocabulary."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding)
        self.lstm = nn.LSTM(c.embedding, c.hidden, c.layers, batch_first=True,
                            dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(idx))
        return self.head(self.drop(out))

    def init_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        assert isinstance(c, LSTMConfig)
        z = torch.zeros(c.layers, n, c.hidden, device=self.device)
        return z, z.clone()

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.embed(tokens)[:, None], state)
        return self.head(out[:, 0]), state


TEXT_TRAIN = {"lr": 1e-3, "batch_size": 12, "weight_decay": 0.1}
"""nanoGPT's character recipe (shakespeare_char on a CPU: batch 12 of 64 characters, AdamW 1e-3,
weight decay 0.1, warm-up then cosine decay), shared by the three sequence families."""

register(Family(
    "lstm", LSTMLM, LSTMConfig, "LSTM language model: embedding, LSTM, softmax (book ch. 5)",
    kinds=("tokens",),
    presets={"tiny": {"embedding": 16, "hidden": 32, "warmup": 5}, "small": {"embedding": 64, "hidden": 128}},
    train=TEXT_TRAIN, monitor="loss"))
