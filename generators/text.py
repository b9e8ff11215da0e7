"""Text as data for the sequence families: a character tokenizer, offline corpora, random windows.

Sources (``generators.data.load``):

=====================  ===========================================================================
``pydoc``              Python's own ``pydoc_data.topics`` (the help() topics; ~465k characters),
                       shipped with every Python: the tests' corpus
``python_docs``        ``pydoc`` plus every docstring of the standard library's modules, classes and
                       functions longer than 80 characters (read with ``ast``, nothing imported;
                       ~1.9 M characters on Python 3.11; the PSF licence). Extracted once (~12 s)
                       and cached under ``$WORLDLAB_CACHE`` (default ``~/.cache/worldlab``)
``text:PATH``          a UTF-8 text file of yours
=====================  ===========================================================================

A corpus becomes one stream of token ids (:class:`CharTokenizer`: one token per distinct
character, the vocabulary sorted); its last 10% is held out (a contiguous tail, so no window
of the held-out text was seen in training). A batch is ``(B, T + 1)`` token windows drawn at
random offsets: the model reads the first ``T`` and predicts the last ``T``.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from worldlab.io import atomic_write_text

CORPORA = ("pydoc", "python_docs", "text:PATH")
HOLDOUT = 0.1
"""the held-out tail of every corpus (a fraction of its tokens)."""
_SKIP = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}


class CharTokenizer:
    """One token per character: ids are positions in the sorted vocabulary string."""

    def __init__(self, vocab: str) -> None:
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("a character vocabulary needs at least one character, each once")
        self.vocab = vocab
        self._index = {c: i for i, c in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Token ids ``(len(text),)`` int64; a character outside the vocabulary is refused by name."""
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this model's vocabulary of {self.vocab_size}; "
                             f"leave it out of the prompt") from None

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[int(i)] for i in ids)


def cache_dir() -> Path:
    return Path(os.environ.get("WORLDLAB_CACHE") or Path.home() / ".cache" / "worldlab")


def pydoc_text() -> str:
    """Python's help() topics, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def stdlib_docstrings() -> str:
    """Every docstring (> 80 characters) of the standard library's own modules, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(doc)
    return "\n\n".join(parts)


def corpus_text(name: str) -> str:
    """The text of corpus ``name`` (see the module docstring); errors name the choices."""
    if name == "pydoc":
        return pydoc_text()
    if name == "python_docs":
        path = cache_dir() / f"python_docs-{sys.version_info.major}.{sys.version_info.minor}.txt"
        if path.exists():
            return path.read_text(encoding="utf-8")
        text = pydoc_text() + "\n\n" + stdlib_docstrings()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return text
    kind, sep, rest = name.partition(":")
    if kind == "text" and sep:
        path = Path(os.path.expanduser(rest))
        if not path.is_file():
            raise FileNotFoundError(f"no text file {path}; give text:PATH with a UTF-8 file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it first") from None
        if len(text) < 2:
            raise ValueError(f"{path} holds {len(text)} characters; a language model needs more text")
        return text
    raise ValueError(f"unknown corpus {name!r}; use one of: {', '.join(CORPORA)}")


def is_text_source(source: str) -> bool:
    return source in ("pydoc", "python_docs") or source.startswith("text:")


@dataclass
class TokenData:
    """A token stream in memory and the window length a model reads: the data of a sequence family."""

    name: str
    tokens: torch.Tensor
    """token ids ``(N,)`` int64."""
    vocab: str
    """the characters of the ids (``CharTokenizer(vocab)`` decodes them)."""
    block_size: int = 64
    """tokens a model reads per window (its context in training)."""
    num_classes: int = 0
    kind = "tokens"

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.tokens.ndim != 1 or len(self.tokens) < self.block_size + 2:
            raise ValueError(f"{self.name}: {len(self.tokens)} tokens cannot fill one window of "
                             f"{self.block_size} + 1; lower --block-size or give more text")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.vocab)

    def __len__(self) -> int:
        """Windows of ``block_size + 1`` tokens that start at distinct offsets."""
        return len(self.tokens) - self.block_size

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        return self.tokenizer.decode(ids)

    def split(self, holdout: float = HOLDOUT) -> tuple[TokenData, TokenData]:
        """(train, held-out): the held-out part is the contiguous tail of the stream."""
        n = len(self.tokens)
        k = int(round(holdout * n))
        if not self.block_size + 2 <= k <= n - self.block_size - 2:
            raise ValueError(f"holdout {holdout} of {n} tokens leaves a part shorter than one window")
        return replace(self, tokens=self.tokens[:n - k]), replace(self, name=f"{self.name} (held out)",
                                                                   tokens=self.tokens[n - k:])

    def windows(self, starts: torch.Tensor) -> torch.Tensor:
        """The ``(len(starts), block_size + 1)`` windows that begin at ``starts``."""
        offsets = torch.arange(self.block_size + 1)
        return self.tokens[starts[:, None] + offsets[None, :]]

    def batches(self, batch_size: int, seed: int = 0, labels: bool = False) -> TokenBatches:
        if labels:
            raise ValueError(f"{self.name} is text without class labels; train an unconditional model")
        return TokenBatches(self, batch_size, seed)

    def eval_windows(self, count: int) -> torch.Tensor:
        """``count`` evenly spaced windows (fixed, for held-out losses comparable across models)."""
        starts = torch.linspace(0, len(self) - 1, count).long()
        return self.windows(starts)


class TokenBatches:
    """Random windows of a :class:`TokenData`: an epoch is ``len(tokens) // (batch * block)`` batches
    (about one pass over the text), drawn with ``seed`` and the epoch, so a resumed run draws the
    same windows."""

    def __init__(self, data: TokenData, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed, self.epoch = data, batch_size, seed, 0
        self.dataset = self  # so worldlab.training.cycle finds set_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.data.tokens) // (self.batch_size * self.data.block_size))

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for _ in range(len(self)):
            yield self.data.windows(torch.randint(0, len(self.data), (self.batch_size,), generator=g))


def load_text(source: str, block_size: int | None = None, max_items: int | None = None) -> TokenData:
    """Corpus ``source`` as a :class:`TokenData` (``max_items``: keep the first that many characters)."""
    text = corpus_text(source)
    if max_items:
        text = text[:max_items]
    tok = CharTokenizer.from_text(text)
    return TokenData(source, torch.from_numpy(tok.encode(text)), tok.vocab, block_size or 64)
