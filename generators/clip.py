"""CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020; book chapter 13), lab-sized.

Two towers map an image and a caption into one space where matching pairs point the same way:

- **image tower**: a small CNN over images ``(C, H, W)`` in [-1, 1] (8x8 digits, 64x64 frames),
  or an MLP over vectors ``(D,)`` (V's latents ``z``, standardised with the training data's mean
  and std), chosen by ``config.shape``;
- **text tower**: the lab's GPT (:class:`generators.gpt.GPT`: pre-norm causal blocks with RoPE)
  over characters; the caption's embedding is the hidden state at its end token (the causal
  blocks have read the whole caption there), as in CLIP;
- **loss**: the symmetric InfoNCE of CLIP: cosine similarities times a learned scale
  (``exp(t)``, initially 1/0.07, at most 100) as logits, cross-entropy image -> text and
  text -> image. Captions derived from a few discrete facts repeat across a batch, so a batch
  carries a ``match`` matrix (image i fits caption j) and each row's target is spread evenly
  over its matches (plain CLIP when ``match`` is the identity).

Captions (:class:`CaptionData`): each item has integer attributes ``(A,)``; each caption text
fixes some of them (``-1``: says nothing of that one), and fits every item that agrees with it.
:func:`digit_captions` gives the digits theirs; ``agents.captions`` derives CarRacing frames'
from the privileged per-step signals of rollout shards.

Uses: :func:`zero_shot` (classify by caption), :func:`recall_at_1` (retrieval among k),
:func:`text_reward` (a reward term from a prompt, for ``DreamFitness`` and
:mod:`generators.clip_env`), :func:`best_matches` (prompt-chosen dream starts), and a
text-conditioned :class:`generators.latent_prior.LatentPrior` (:func:`fit_text_prior`,
:func:`sample_text`), conditioned on the text tower's embeddings.

CLIP is not a registered generator family (it has no ``sample``): it saves and loads with the
lab's one checkpoint format (``CLIP.load(path)``, :class:`worldlab.io.ConfigCheckpoint`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.base import GenConfig
from generators.gpt import GPT, GPTConfig
from generators.latent_prior import LatentPrior, LatentPriorConfig
from generators.text import CharTokenizer
from worldlab.io import ConfigCheckpoint
from worldlab.logging import RunLogger
from worldlab.training import TrainConfig
from worldlab.training import train as train_loop

END = "\n"
"""the end token: appended to every caption (its hidden state is the caption's), and the padding."""
VOCAB = END + " ',-." + "0123456789" + "abcdefghijklmnopqrstuvwxyz"
"""the characters captions and prompts may use (upper case is lowered first)."""


def normalize(text: str) -> str:
    """A caption as the model reads it: lower case, single spaces."""
    return " ".join(str(text).lower().split())


@dataclass
class CLIPConfig(GenConfig):
    """A small CLIP: an image (or latent) tower and a character GPT text tower."""

    shape: tuple[int, ...] = (1, 8, 8)
    """one image ``(C, H, W)`` in [-1, 1] (a CNN tower) or one vector ``(D,)`` such as V's z (an MLP tower)."""
    embed_dim: int = 64
    """size of the shared embedding space."""
    image_width: int = 32
    """CNN: channels of the first conv (doubled per stride-2 stage, at most 4x); MLP: hidden width."""
    image_layers: int = 2
    """MLP: hidden layers (the CNN has one stride-2 stage per halving down to 4x4)."""
    text_layers: int = 2
    """GPT blocks of the text tower."""
    text_heads: int = 4
    text_width: int = 64
    """the text tower's residual width."""
    context: int = 64
    """characters a caption may have, its end token included."""
    vocab: str = VOCAB
    """the characters of the text tower's token ids."""
    init_temperature: float = 0.07
    """initial softmax temperature of the logits (CLIP's), learned from there."""
    max_scale: float = 100.0
    """upper bound of the learned logit scale 1 / temperature (CLIP's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.embed_dim, self.image_width, self.image_layers, self.text_layers, self.text_heads) < 1:
            raise ValueError("embed_dim, image_width, image_layers, text_layers and text_heads must be >= 1")
        if self.context < 2:
            raise ValueError(f"context must be >= 2 characters, got {self.context}")
        if END not in self.vocab:
            raise ValueError("the vocabulary must hold the end token '\\n'")
        if not (self.init_temperature > 0.0 and self.max_scale > 1.0):
            raise ValueError("init_temperature must be > 0 and max_scale > 1")

    def text_config(self) -> GPTConfig:
        return GPTConfig(shape=(self.context,), vocab=self.vocab, layers=self.text_layers, heads=self.text_heads,
                         width=self.text_width, warmup=0)


class ImageTower(nn.Module):
    """Images ``(B, C, H, W)`` -> ``(B, E)`` with a CNN, or vectors ``(B, D)`` -> ``(B, E)`` with an
    MLP over standardised inputs (mean and std of the first training batch, kept as buffers)."""

    def __init__(self, c: CLIPConfig) -> None:
        super().__init__()
        self.kind = c.kind
        w = c.image_width
        if c.kind == "image":
            ch, side = c.shape[0], min(c.shape[1:])
            layers: list[nn.Module] = [nn.Conv2d(ch, w, 3, padding=1), nn.GELU()]  # (B, w, H, W)
            ch, h, wd = w, c.shape[1], c.shape[2]
            while side > 4:  # stride-2 stages down to ~4x4
                out = min(2 * ch, 4 * w)
                layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.GELU()]
                ch, side, h, wd = out, side // 2, h // 2, wd // 2
            self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * h * wd, 4 * w), nn.GELU(),
                                     nn.Linear(4 * w, c.embed_dim))
        else:
            d = c.shape[0]
            self.register_buffer("mean", torch.zeros(d))
            self.register_buffer("std", torch.ones(d))
            self.register_buffer("adapted", torch.tensor(False))
            layers = []
            for i in range(c.image_layers):
                layers += [nn.Linear(d if i == 0 else w, w), nn.LayerNorm(w), nn.GELU()]
            self.net = nn.Sequential(*layers, nn.Linear(w, c.embed_dim))

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> None:
        """Vectors: standardise with the mean and std of ``x`` ``(N, D)`` (once; images: nothing)."""
        if self.kind != "image" and not bool(self.adapted) and len(x) > 1:
            self.mean.copy_(x.float().mean(0))
            self.std.copy_(x.float().std(0).clamp(min=1e-4))
            self.adapted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            return self.net(x)
        if self.training:
            self.adapt(x)  # the first batch's statistics unless fit_clip gave the data's
        return self.net((x - self.mean) / self.std)


def info_nce(logits: torch.Tensor, match: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of ``logits`` ``(B, B)`` (image i, text j): the mean of the cross-entropies
    image -> text (rows) and text -> image (columns). ``match`` ``(B, B)`` bool marks which pairs
    fit (the identity when None, CLIP's loss); a row's target is uniform over its matches."""
    b = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != b:
        raise ValueError(f"logits must be square (B, B), got {tuple(logits.shape)}")
    if match is None:
        target = torch.arange(b, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    m = match.to(logits.dtype)
    if bool((m.sum(1) == 0).any()) or bool((m.sum(0) == 0).any()):
        raise ValueError("every image and every text of a batch needs at least one match (its own pair)")
    rows = -(m / m.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    cols = -(m / m.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return 0.5 * (rows + cols)


class CLIP(ConfigCheckpoint, nn.Module):
    """Contrastive image-text model (see the module docstring).

    ``loss((x, tokens, match))`` for the lab's training loop; ``encode_image(x)`` and
    ``encode_text(texts)`` give unit vectors ``(B, E)``; ``similarity(x, texts)`` their cosines.
    """

    FAMILY, CONFIG, WHAT, STAGE = "clip", CLIPConfig, "CLIP", "CLIP (generators.clip.fit_clip)"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}
        self.image = ImageTower(config)
        self.text = GPT(config.text_config())
        self.text_proj = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.tokenizer = CharTokenizer(config.vocab)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def kind(self) -> str:
        return self.config.kind

    # --- text ---------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> token ids ``(n, context)``: the characters, the end token, end-token padding.
        A caption too long or with a character outside the vocabulary is refused in one line."""
        if isinstance(texts, str):
            texts = [texts]
        c = self.config
        out = torch.full((len(texts), c.context), c.vocab.index(END), dtype=torch.long)
        for i, t in enumerate(texts):
            t = normalize(t)
            if len(t) >= c.context:
                raise ValueError(f"caption {t if len(t) <= 40 else t[:37] + '...'!r} has {len(t)} characters; this CLIP reads at most "
                                 f"{c.context - 1}: shorten it")
            if END in t:
                raise ValueError("a caption is one line: remove the line break")
            out[i, :len(t)] = torch.from_numpy(self.tokenizer.encode(t))
        return out

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` -> unnormalised text embeddings ``(B, E)`` (the end token's state)."""
        end = self.config.vocab.index(END)
        ends = (tokens == end).int().argmax(1)  # (B,) the first end token: right after the caption
        h = self.text.features(tokens[:, :int(ends.max()) + 1])  # (B, L', W): causal, so the padding after is not read
        return self.text_proj(h[torch.arange(len(tokens), device=tokens.device), ends])

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] or vectors ``(B, D)`` -> unnormalised embeddings ``(B, E)``."""
        if tuple(x.shape[1:]) != self.config.shape:
            raise ValueError(f"this CLIP reads inputs of shape {self.config.shape}, got a batch {tuple(x.shape)}; "
                             f"{'encode frames with V first' if self.kind == 'points' else 'resize the images'}")
        return self.image(x.float())

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Unit text embeddings ``(n, E)`` of captions (or of their token ids ``(n, L)``)."""
        was = self.training
        self.eval()
        try:
            tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
            tokens = tokens.to(self.device)
            out = [self.text_features(tokens[i:i + batch_size]) for i in range(0, len(tokens), batch_size)]
            return F.normalize(torch.cat(out), dim=-1)
        finally:
            self.train(was)

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Unit image embeddings ``(B, E)``."""
        was = self.training
        self.eval()
        try:
            x = x.to(self.device)
            out = [self.image_features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
            return F.normalize(torch.cat(out), dim=-1)
        finally:
            self.train(was)

    def similarity(self, x: torch.Tensor, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(B, n)`` of inputs ``x`` and captions ``texts`` (or unit text embeddings ``(n, E)``)."""
        t = texts if isinstance(texts, torch.Tensor) and texts.is_floating_point() else self.encode_text(texts)
        return self.encode_image(x) @ t.to(self.device).T

    # --- training -----------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(self.config.max_scale)).exp()

    def logits(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(B, B)`` of a batch of inputs and a batch of captions."""
        i = F.normalize(self.image_features(x), dim=-1)
        t = F.normalize(self.text_features(tokens), dim=-1)
        return self.scale() * i @ t.T

    def loss(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch = (x (B, ...), tokens (B, L), match (B, B) bool)``: InfoNCE, plus the share of images
        whose best caption in the batch fits them (``acc``) and the logit scale."""
        x, tokens, match = batch
        logits = self.logits(x, tokens)
        loss = info_nce(logits, match)
        with torch.no_grad():
            acc = match[torch.arange(len(x), device=x.device), logits.argmax(1)].float().mean()
        return {"loss": loss, "acc": acc, "scale": self.scale().detach()}


# --- captions ---------------------------------------------------------------------------------


@dataclass
class CaptionData:
    """Inputs and the captions that fit them.

    ``x`` ``(N, ...)`` float (model space: images in [-1, 1] or vectors); ``attrs`` ``(N, A)`` int the
    facts of each item; ``texts`` the captions, ``text_attrs`` ``(U, A)`` int what each caption says
    (-1: nothing of that attribute). Caption u fits item i when every attribute u names equals i's.
    """

    name: str
    x: torch.Tensor
    attrs: torch.Tensor
    texts: list[str]
    text_attrs: torch.Tensor

    def __post_init__(self) -> None:
        self.attrs = torch.as_tensor(self.attrs, dtype=torch.long).reshape(len(self.x), -1)
        self.text_attrs = torch.as_tensor(self.text_attrs, dtype=torch.long).reshape(len(self.texts), -1)
        if self.attrs.shape[1] != self.text_attrs.shape[1]:
            raise ValueError(f"items have {self.attrs.shape[1]} attributes but captions {self.text_attrs.shape[1]}")
        self.texts = [normalize(t) for t in self.texts]
        # the captions that fit each distinct attribute tuple: an item draws one of its own
        keys, self.key = torch.unique(self.attrs, dim=0, return_inverse=True)  # (K, A), (N,)
        fits = self.fits(keys)  # (K, U)
        if not bool(fits.any(1).all()):
            bad = keys[~fits.any(1)][0].tolist()
            raise ValueError(f"{self.name}: no caption fits items with attributes {bad}; add one")
        self.options = [torch.nonzero(row).flatten() for row in fits]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def fits(self, attrs: torch.Tensor, text_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, m)`` bool: which captions (``text_ids``, all when None) fit items with ``attrs`` ``(n, A)``."""
        ta = self.text_attrs if text_ids is None else self.text_attrs[text_ids]
        return ((ta[None] == -1) | (ta[None] == attrs[:, None])).all(-1)

    def subset(self, idx: torch.Tensor) -> CaptionData:
        return CaptionData(self.name, self.x[idx], self.attrs[idx], self.texts, self.text_attrs)

    def split(self, holdout: float, seed: int = 0) -> tuple[CaptionData, CaptionData]:
        """Random (train, held-out) split of the items; both keep every caption."""
        n = len(self)
        k = int(round(holdout * n))
        if not 0 < k < n:
            raise ValueError(f"holdout {holdout} of {n} items leaves an empty part")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[k:]), self.subset(perm[:k])

    def draw(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One fitting caption id per item of ``idx``, drawn with ``g``."""
        out = torch.empty(len(idx), dtype=torch.long)
        for j, k in enumerate(self.key[idx].tolist()):
            opts = self.options[k]
            out[j] = opts[int(torch.randint(len(opts), (1,), generator=g))]
        return out


class CaptionBatches:
    """Shuffled batches of a :class:`CaptionData`, one fitting caption drawn per item (seeded by
    ``seed`` and the epoch, so a resumed run draws the same). ``table`` ``(U, ...)``: what a caption
    id becomes in the batch (its token ids for CLIP, its text embedding for the text prior).
    Yields ``(x, table[ids], match)`` (``match``: which captions of the batch fit which items), or
    ``(x, table[ids])`` with ``match=False``."""

    def __init__(self, data: CaptionData, batch_size: int, table: torch.Tensor, seed: int = 0,
                 match: bool = True) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        if len(table) != len(data.texts):
            raise ValueError(f"table has {len(table)} rows for {len(data.texts)} captions")
        self.data, self.table, self.seed, self.with_match = data, table, seed, match
        self.batch_size = min(batch_size, len(data))
        self.epoch = 0
        self.dataset = self  # so worldlab.training.cycle finds set_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.data), generator=g)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            ids = self.data.draw(idx, g)
            x = self.data.x[idx].float()
            if not self.with_match:
                yield x, self.table[ids]
            else:
                yield x, self.table[ids], self.data.fits(self.data.attrs[idx], ids)  # (B, B)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a handwritten {}", "the digit {}", "the number {}", "a {}", "an image of a {}",
                   "a drawing of the number {}", "{}")
"""how the digits' captions are phrased ({} is the digit, as a numeral or a word)."""


def digit_texts(digit: int, templates: Sequence[str] = DIGIT_TEMPLATES) -> list[str]:
    """Every phrasing of one digit (numeral and word in each template)."""
    return [t.format(w) for t in templates for w in (str(digit), DIGIT_WORDS[digit])]


def digit_captions(x: torch.Tensor, labels: torch.Tensor, templates: Sequence[str] = DIGIT_TEMPLATES,
                   name: str = "digits") -> CaptionData:
    """Digit images ``(N, 1, H, W)`` and labels ``(N,)`` with their captions (one attribute: the digit)."""
    texts, tattrs = [], []
    for d in range(10):
        for t in digit_texts(d, templates):
            texts.append(t)
            tattrs.append([d])
    return CaptionData(name, x, labels.long()[:, None], texts, torch.tensor(tattrs))


# --- training ---------------------------------------------------------------------------------


def fit_clip(model: CLIP, data: CaptionData, cfg: TrainConfig, batch_size: int = 128,
             out: str | os.PathLike | None = None, progress: bool = False) -> dict[str, list[float]]:
    """Train ``model`` on ``data`` with the lab's loop (AdamW, clipping, logging); with ``out`` a
    folder, checkpoint there (``clip_train.pt``, resumable) and log ``metrics.jsonl``. Returns the
    logged history (``loss``, ``acc``, ``scale``)."""
    if data.shape != model.config.shape:
        raise ValueError(f"this CLIP reads {model.config.shape}, the data are {data.shape}; build it with "
                         f"CLIPConfig(shape={data.shape})")
    batches = CaptionBatches(data, batch_size, model.tokenize(data.texts), seed=cfg.seed)
    model.image.adapt(data.x)
    logger = RunLogger(out, stage="clip", tensorboard=False) if out is not None else None
    try:
        return train_loop(model, batches, cfg, checkpoint_path=None if out is None else os.path.join(out, "clip_train.pt"),
                          logger=logger, extra_state=model.checkpoint_header, desc="clip", progress=progress)
    finally:
        if logger is not None:
            logger.close()


# --- using it -----------------------------------------------------------------------------------


def class_embeddings(model: CLIP, class_texts: Sequence[Sequence[str]]) -> torch.Tensor:
    """One unit embedding per class ``(K, E)``: the normalised mean of its captions' (prompt ensembling)."""
    return F.normalize(torch.stack([model.encode_text(list(t)).mean(0) for t in class_texts]), dim=-1)


def zero_shot(model: CLIP, x: torch.Tensor, class_texts: Sequence[Sequence[str] | str]) -> torch.Tensor:
    """Predicted class ``(N,)`` of each input: the class whose captions it is most similar to."""
    texts = [[t] if isinstance(t, str) else list(t) for t in class_texts]
    return (model.encode_image(x) @ class_embeddings(model, texts).T).argmax(1).cpu()


def recall_at_1(sim: torch.Tensor, fits: torch.Tensor, k: int = 10, seed: int = 0, trials: int | None = None
                ) -> float:
    """Retrieval among ``k``: for query i (a row of ``sim`` ``(N, M)``) and one candidate it fits
    (``fits`` ``(N, M)`` bool), drawn at random, add ``k - 1`` candidates that do not fit it; the share
    of queries whose most similar candidate among the ``k`` is the fitting one (R@1). ``trials``:
    queries drawn at random (with replacement when more than N); None: each row once."""
    rng = np.random.default_rng(seed)
    n = sim.shape[0]
    rows = range(n) if trials is None else rng.choice(n, size=trials, replace=trials > n)
    sim, fits = sim.cpu(), fits.cpu()
    hits, used = 0, 0
    for i in rows:
        good, bad = np.flatnonzero(fits[i].numpy()), np.flatnonzero(~fits[i].numpy())
        if len(good) == 0 or len(bad) < k - 1:
            continue
        cand = np.concatenate([[rng.choice(good)], rng.choice(bad, size=k - 1, replace=False)])
        hits += int(np.argmax(sim[i, cand].numpy()) == 0)
        used += 1
    if used == 0:
        raise ValueError(f"no query has a fitting candidate and {k - 1} others; use more, or more varied, data")
    return hits / used


def auroc(scores: np.ndarray | torch.Tensor, positive: np.ndarray | torch.Tensor) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties half)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(positive, dtype=bool).reshape(-1)
    if p.all() or not p.any():
        raise ValueError("AUROC needs both positives and negatives")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    n_pos, n_neg = p.sum(), (~p).sum()
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


Term = Callable[[torch.Tensor], torch.Tensor]


def text_reward(model: CLIP, prompt: str, baseline: str | None = None, reference: torch.Tensor | None = None,
                quantile: float = 0.5) -> Term:
    """A reward term from text: ``x -> cos(image(x), text(prompt))`` ``(B,)`` for model inputs ``x``
    (V's latents for a latent CLIP: the dream's ``z``). Usable as ``DreamFitness(reward_term=...)``
    and in :class:`generators.clip_env.TextReward`.

    ``baseline``: subtract the similarity to a second prompt (Rocamonde et al. 2023's goal-baseline
    idea: keeps what tells the two apart). ``reference`` ``(N, ...)`` (real inputs): a penalty only,
    ``min(0, s - q)`` with ``q`` the ``quantile`` of ``s`` over the reference, so states at least as
    prompt-like as that share of real ones cost nothing and the term adds no constant per step (a
    constant would pay a controller for merely lasting, e.g. standing still on the road).
    """
    model.eval()
    goal = model.encode_text([prompt])[0]  # (E,)
    if baseline is not None:
        goal = torch.stack([goal, model.encode_text([baseline])[0]])

    def raw(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            emb = F.normalize(model.image_features(x.to(model.device).float()), dim=-1)
            if baseline is None:
                return emb @ goal
            s = emb @ goal.T  # (B, 2)
            return s[:, 0] - s[:, 1]

    if reference is None:
        raw.prompt = prompt  # type: ignore[attr-defined]
        return raw
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    ref = torch.cat([raw(reference[i:i + 4096]) for i in range(0, len(reference), 4096)])
    q = float(torch.quantile(ref.float().cpu(), quantile))

    def penalty(x: torch.Tensor) -> torch.Tensor:
        return (raw(x) - q).clamp(max=0.0)

    penalty.prompt, penalty.threshold = prompt, q  # type: ignore[attr-defined]
    return penalty


def best_matches(model: CLIP, states: torch.Tensor, prompt: str, k: int = 1) -> torch.Tensor:
    """Indices ``(k,)`` of the ``k`` rows of ``states`` (model inputs, e.g. banked latents) most similar
    to ``prompt``, best first: where a prompt-chosen dream starts."""
    if not 1 <= k <= len(states):
        raise ValueError(f"k must be in 1..{len(states)} (the candidate states), got {k}")
    return model.similarity(states, [prompt])[:, 0].topk(k).indices.cpu()


# --- a text-conditioned generator: the latent prior on CLIP text embeddings ---------------------------


def fit_text_prior(clip: CLIP, data: CaptionData, cfg: TrainConfig, batch_size: int = 256,
                   progress: bool = False, **prior: Any) -> LatentPrior:
    """A :class:`LatentPrior` over ``data.x`` (flattened to vectors: V's latents, or an 8x8 digit's 64
    pixels) conditioned on the CLIP text embedding of a caption drawn per item and step (classifier-free
    guidance: the condition is dropped with probability ``cond_drop``). ``prior``: config overrides.
    The prior's meta records the CLIP and the item shape (:func:`sample_text` reshapes)."""
    x = data.x.reshape(len(data), -1).float()
    flat = CaptionData(data.name, x, data.attrs, data.texts, data.text_attrs)
    table = clip.encode_text(data.texts).cpu()  # (U, E)
    model = LatentPrior(LatentPriorConfig(shape=(x.shape[1],), cond_dim=clip.config.embed_dim, **prior))
    batches = CaptionBatches(flat, batch_size, table, seed=cfg.seed, match=False)
    train_loop(model, batches, cfg, desc="text prior", progress=progress)
    model.meta.update({"clip_id": clip.meta.get("id"), "item_shape": list(data.shape)})
    return model.eval()


def sample_text(prior: LatentPrior, clip: CLIP, prompt: str, n: int, generator: int | torch.Generator | None = None,
                guidance: float | None = None, steps: int | None = None) -> torch.Tensor:
    """``n`` samples for a prompt: ``(n, *item_shape)`` (digits: images in [-1, 1], clipped; latents: ``(n, Z)``)."""
    if prior.cfg.cond_dim != clip.config.embed_dim:
        raise ValueError(f"the prior is conditioned on {prior.cfg.cond_dim}-d vectors, this CLIP embeds in "
                         f"{clip.config.embed_dim}; use the CLIP it was trained with")
    cond = clip.encode_text([prompt])[0].cpu()
    x = prior.sample(n, cond=cond, generator=generator, guidance=guidance, steps=steps)
    shape = tuple(prior.meta.get("item_shape") or x.shape[1:])
    x = x.reshape(n, *shape)
    return x.clamp(-1, 1) if len(shape) == 3 else x
