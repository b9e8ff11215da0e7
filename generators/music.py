"""Music as data: Bach's chorales from music21's corpus, the book's note and duration tokens, a
16th-note piano roll, and MIDI in and out (``pretty_midi``).

The chorales ship with music21 (its chorale iterator yields 371 scores; 351 of them have the four
parts soprano, alto, tenor, bass). Parsing them takes minutes, so :func:`load_chorales` parses
once and caches the notes as one npz under ``$WORLDLAB_CACHE`` (default ``~/.cache/worldlab``);
``limit`` parses (and caches) only the first chorales, as the tests do. Nothing is downloaded.

A chorale is held as its notes, one row per note of one part (:class:`Chorale`): part (0 soprano
... 3 bass), MIDI pitch, onset and duration in 16th notes from the chorale's first beat. Two views
are built from that:

- **tokens** (the book's chapter 11): each part a stream of (note, duration) pairs, a note being a
  pitch name (``"G4"``) or ``"rest"``, a duration its length in quarter notes (``"1.5"``);
  parallel integer streams through :class:`MusicTokenizer`, whose vocabularies are fixed (every
  MIDI pitch, every multiple of a 16th up to 16 quarters), so a model's vocabulary never depends
  on which chorales were read;
- **a piano roll** (MuseGAN, chapter 11): ``(segments, 4 tracks, 2 bars, 16 steps, 84 pitches)``
  booleans of the 4/4 chorales cut into 2-bar segments, a pitch index being MIDI - 24 (C1..B7).

MIDI out: :func:`tokens_to_midi` / :func:`roll_to_midi` (one instrument per part, 120 beats per
minute); MIDI in: :func:`midi_to_tokens`. Tokens -> MIDI -> tokens is exact for canonical tokens
(no two rests in a row, no zero durations): :func:`notes_to_tokens` makes them so.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldlab.io import atomic_write_bytes

PARTS = ("soprano", "alto", "tenor", "bass")
STEPS_PER_QUARTER = 4
"""the grid: a 16th note is one step."""
LOWEST, PITCHES = 24, 84
"""the piano roll's pitch range: MIDI 24 (C1) .. 107 (B7)."""
BAR_STEPS, SEGMENT_BARS = 16, 2
MAX_DURATION_STEPS = 64
"""the longest duration token: 16 quarter notes (longer notes are split into tied tokens)."""
TEMPO = 120.0
CACHE_VERSION = 1
NOTE_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")


def cache_dir() -> Path:
    return Path(os.environ.get("WORLDLAB_CACHE") or Path.home() / ".cache" / "worldlab")


def pitch_name(midi: int) -> str:
    """``60 -> "C4"`` (sharps and music21's flats for the black keys, spelled one way)."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


@dataclass
class Chorale:
    """One chorale: ``notes`` ``(n, 4)`` int32 rows ``(part, pitch, onset, duration)`` (steps of a
    16th, from the first beat), sorted by part then onset; ``beats_per_bar`` (3 or 4), ``pickup``:
    the steps before the first full bar (an upbeat), ``title``."""

    title: str
    notes: np.ndarray
    beats_per_bar: int
    pickup: int

    @property
    def length(self) -> int:
        """Steps to the end of the last note."""
        return int((self.notes[:, 2] + self.notes[:, 3]).max()) if len(self.notes) else 0

    def part(self, k: int) -> np.ndarray:
        """The ``(pitch, onset, duration)`` rows of part ``k``."""
        return self.notes[self.notes[:, 0] == k][:, 1:]


# -- the corpus ---------------------------------------------------------------------------------------


def _parse(score: object) -> Chorale | None:
    """A music21 score -> :class:`Chorale` (None unless it has 4 parts in 3/4 or 4/4 on the 16th grid)."""
    from music21 import meter

    parts = list(score.parts)  # type: ignore[attr-defined]
    if len(parts) != 4:
        return None
    sigs = list(score.recurse().getElementsByClass(meter.TimeSignature))  # type: ignore[attr-defined]
    if not sigs or sigs[0].ratioString not in ("3/4", "4/4"):
        return None
    beats = int(sigs[0].numerator)
    rows = []
    for k, p in enumerate(parts):
        for n in p.flatten().notes:
            on, dur = float(n.offset) * STEPS_PER_QUARTER, float(n.quarterLength) * STEPS_PER_QUARTER
            if dur <= 0:  # grace notes
                continue
            if on != int(on) or dur != int(dur):
                return None  # off the 16th grid (a triplet): not in this data set
            midi = n.pitch.midi if n.isNote else max(p.midi for p in n.pitches)  # a chord in one part: its top
            rows.append((k, int(midi), int(on), int(dur)))
    if not rows:
        return None
    notes = np.array(sorted(set(rows)), dtype=np.int32)
    first = parts[0].getElementsByClass("Measure")
    pickup = 0
    if first:
        m0 = first[0]
        bar = beats * STEPS_PER_QUARTER
        pickup = int(round(float(m0.duration.quarterLength) * STEPS_PER_QUARTER)) % bar
    title = str(score.metadata.title) if getattr(score, "metadata", None) and score.metadata.title else ""  # type: ignore[attr-defined]
    return Chorale(title, notes, beats, pickup)


def load_chorales(limit: int | None = None, cache: bool = True, progress: bool = False) -> list[Chorale]:
    """The four-part chorales of music21's corpus in 3/4 or 4/4 on the 16th grid, parsed once and
    cached (``chorales_v1.npz``; ``limit``: the first that many of the iterator, cached apart)."""
    path = cache_dir() / (f"chorales_v{CACHE_VERSION}" + (f"_first{limit}" if limit else "") + ".npz")
    if cache and path.is_file():
        return _read_cache(path)
    try:
        from music21 import corpus
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("the chorales come from music21's corpus: pip install music21") from e
    out = []
    for i, score in enumerate(corpus.chorales.Iterator()):
        if limit is not None and i >= limit:
            break
        c = _parse(score)
        if c is not None:
            out.append(c)
        if progress and i % 50 == 49:
            print(f"parsed {i + 1} chorales ({len(out)} kept)", flush=True)
    if cache:
        _write_cache(path, out)
    return out


def _write_cache(path: Path, chorales: Sequence[Chorale]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, notes=np.concatenate([c.notes for c in chorales]) if chorales else np.zeros((0, 4), np.int32),
        counts=np.array([len(c.notes) for c in chorales], dtype=np.int64),
        beats=np.array([c.beats_per_bar for c in chorales], dtype=np.int32),
        pickup=np.array([c.pickup for c in chorales], dtype=np.int32),
        titles=np.array([c.title for c in chorales], dtype=np.str_))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _read_cache(path: Path) -> list[Chorale]:
    with np.load(path, allow_pickle=False) as z:
        bounds = np.concatenate([[0], np.cumsum(z["counts"])])
        return [Chorale(str(t), z["notes"][a:b], int(be), int(pu))
                for t, a, b, be, pu in zip(z["titles"], bounds[:-1], bounds[1:], z["beats"], z["pickup"], strict=True)]


# -- tokens -------------------------------------------------------------------------------------------


class MusicTokenizer:
    """The book's two vocabularies: notes (``"rest"``, every MIDI pitch's name, ``"START"``) and
    durations (every multiple of a 16th up to 16 quarters, as quarter-note strings, and
    ``"START"``). Fixed, so any chorale, and any model's output, maps into the same ids."""

    START = "START"

    def __init__(self) -> None:
        self.notes = ["rest", *[pitch_name(m) for m in range(128)], self.START]
        self.durations = [_qlen(s) for s in range(1, MAX_DURATION_STEPS + 1)] + [self.START]
        self._note_id = {n: i for i, n in enumerate(self.notes)}
        self._dur_id = {d: i for i, d in enumerate(self.durations)}

    @property
    def note_vocab(self) -> int:
        return len(self.notes)

    @property
    def duration_vocab(self) -> int:
        return len(self.durations)

    def encode(self, notes: Sequence[str], durations: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token strings -> two int64 id arrays; an unknown token is refused by name."""
        try:
            return (np.array([self._note_id[n] for n in notes], dtype=np.int64),
                    np.array([self._dur_id[d] for d in durations], dtype=np.int64))
        except KeyError as e:
            raise ValueError(f"{e.args[0]!r} is not a note (a pitch name like 'G4', 'rest') or a duration "
                             f"(quarter notes in 16ths, like '0.25' .. '16.0')") from None

    def decode(self, note_ids: Sequence[int], duration_ids: Sequence[int]) -> tuple[list[str], list[str]]:
        return [self.notes[int(i)] for i in note_ids], [self.durations[int(i)] for i in duration_ids]


def _qlen(steps: int) -> str:
    return repr(int(steps) / STEPS_PER_QUARTER)


def _steps(qlen: str) -> int:
    s = float(qlen) * STEPS_PER_QUARTER
    if s != int(s) or s <= 0:
        raise ValueError(f"duration {qlen!r} is not a positive multiple of a 16th note (0.25)")
    return int(s)


def notes_to_tokens(rows: np.ndarray, start: int = 0) -> tuple[list[str], list[str]]:
    """One part's ``(pitch, onset, duration)`` rows -> canonical (note, duration) token strings from
    step ``start``: gaps become one rest, notes longer than 16 quarters are split, overlaps are cut."""
    notes, durs = [], []
    t = start

    def emit(name: str, steps: int) -> None:
        while steps > 0:
            d = min(steps, MAX_DURATION_STEPS)
            if name == "rest" and notes and notes[-1] == "rest":  # one rest per gap
                total = _steps(durs[-1]) + d
                if total <= MAX_DURATION_STEPS:
                    durs[-1] = _qlen(total)
                    steps -= d
                    continue
            notes.append(name)
            durs.append(_qlen(d))
            steps -= d

    for pitch, on, dur in sorted(map(tuple, rows), key=lambda r: r[1]):
        if on > t:
            emit("rest", on - t)
        elif on < t:  # overlaps the previous note: start it where that one ends
            dur -= t - on
            on = t
        if dur > 0:
            emit(pitch_name(int(pitch)), int(dur))
            t = on + dur
    return notes, durs


def tokens_to_notes(notes: Sequence[str], durations: Sequence[str], start: int = 0) -> np.ndarray:
    """Token strings -> ``(pitch, onset, duration)`` rows (rests leave gaps; START tokens are skipped)."""
    name_to_midi = {pitch_name(m): m for m in range(128)}
    rows, t = [], start
    for n, d in zip(notes, durations, strict=True):
        if n == MusicTokenizer.START or d == MusicTokenizer.START:
            continue
        steps = _steps(d)
        if n != "rest":
            if n not in name_to_midi:
                raise ValueError(f"{n!r} is not a pitch name like 'G4' (or 'rest')")
            rows.append((name_to_midi[n], t, steps))
        t += steps
    return np.array(rows, dtype=np.int32).reshape(-1, 3)


def chorale_tokens(c: Chorale) -> list[tuple[list[str], list[str]]]:
    """The four parts of ``c`` as canonical token streams, each from the chorale's first step."""
    return [notes_to_tokens(c.part(k)) for k in range(4)]


# -- the piano roll -----------------------------------------------------------------------------------


def piano_roll(chorales: Sequence[Chorale], hop_bars: int = 1) -> np.ndarray:
    """``(segments, 4, 2, 16, 84)`` bool: each 4/4 chorale's full bars (after its pickup) cut into
    2-bar segments every ``hop_bars`` bars; a note sounds on every step it covers."""
    segs = []
    seg_steps = SEGMENT_BARS * BAR_STEPS
    for c in chorales:
        if c.beats_per_bar != 4:
            continue
        roll = notes_to_roll(c.notes, c.length + seg_steps)
        bars = (c.length - c.pickup) // BAR_STEPS
        for b in range(0, bars - SEGMENT_BARS + 1, hop_bars):
            a = c.pickup + b * BAR_STEPS
            segs.append(roll[:, a:a + seg_steps].reshape(4, SEGMENT_BARS, BAR_STEPS, PITCHES))
    return np.stack(segs) if segs else np.zeros((0, 4, SEGMENT_BARS, BAR_STEPS, PITCHES), dtype=bool)


def notes_to_roll(notes: np.ndarray, steps: int, parts: int = 4) -> np.ndarray:
    """``(part, pitch, onset, duration)`` rows -> a ``(parts, steps, 84)`` bool roll (pitches outside
    MIDI 24..107 dropped; a later note of a part replaces what sounds there)."""
    roll = np.zeros((parts, steps, PITCHES), dtype=bool)
    for part, pitch, on, dur in np.asarray(notes, dtype=np.int64).reshape(-1, 4):
        if LOWEST <= pitch < LOWEST + PITCHES:
            roll[part, on:on + dur] = False
            roll[part, on:on + dur, pitch - LOWEST] = True
    return roll


def segments_to_notes(rolls: np.ndarray) -> np.ndarray:
    """Several ``(tracks, bars, steps, 84)`` rolls -> ``(part, pitch, onset, duration)`` rows, the
    segments played one after another."""
    rows = []
    for i, r in enumerate(rolls):
        notes = roll_to_notes(r)
        notes[:, 2] += i * int(np.prod(r.shape[1:-1]))
        rows.append(notes)
    return np.concatenate(rows) if rows else np.zeros((0, 4), np.int32)


def roll_to_notes(roll: np.ndarray) -> np.ndarray:
    """A ``(4, bars, 16, 84)`` (or ``(4, steps, 84)``) roll -> ``(part, pitch, onset, duration)``
    rows: a pitch held over consecutive steps is one note (the roll has no onsets)."""
    r = np.asarray(roll, dtype=bool).reshape(roll.shape[0], -1, PITCHES)
    rows = []
    for part in range(r.shape[0]):
        for p in range(PITCHES):
            on = np.flatnonzero(np.diff(np.concatenate([[0], r[part, :, p].astype(np.int8), [0]])) == 1)
            off = np.flatnonzero(np.diff(np.concatenate([[0], r[part, :, p].astype(np.int8), [0]])) == -1)
            rows += [(part, p + LOWEST, a, b - a) for a, b in zip(on, off, strict=True)]
    return np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)


# -- MIDI ---------------------------------------------------------------------------------------------


def notes_to_midi(notes: np.ndarray, path: str | os.PathLike | None = None, tempo: float = TEMPO,
                  parts: Sequence[str] = PARTS) -> bytes:
    """``(part, pitch, onset, duration)`` rows -> a MIDI file (one piano instrument per part, named);
    written to ``path`` (atomically) when given; returns its bytes."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    step_s = 60.0 / tempo / STEPS_PER_QUARTER
    insts = [pretty_midi.Instrument(program=0, name=name) for name in parts]
    for part, pitch, on, dur in np.asarray(notes, dtype=np.int64).reshape(-1, 4):
        insts[int(part)].notes.append(pretty_midi.Note(velocity=80, pitch=int(pitch), start=on * step_s,
                                                       end=(on + dur) * step_s))
    pm.instruments.extend(insts)
    buf = io.BytesIO()
    pm.write(buf)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def midi_to_notes(midi: str | os.PathLike | bytes) -> np.ndarray:
    """A MIDI file (path or bytes) -> ``(part, pitch, onset, duration)`` rows on the 16th grid (each
    instrument a part, in file order; times rounded to the nearest step at the file's first tempo)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi) if isinstance(midi, bytes) else str(midi))
    _, tempi = pm.get_tempo_changes()
    step_s = 60.0 / (float(tempi[0]) if len(tempi) else TEMPO) / STEPS_PER_QUARTER
    rows = []
    for part, inst in enumerate(pm.instruments):
        for n in inst.notes:
            on, off = int(round(n.start / step_s)), int(round(n.end / step_s))
            if off > on:
                rows.append((part, n.pitch, on, off - on))
    return np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)


def tokens_to_midi(parts: Sequence[tuple[Sequence[str], Sequence[str]]], path: str | os.PathLike | None = None,
                   tempo: float = TEMPO) -> bytes:
    """Token streams (one per part) -> a MIDI file (see :func:`notes_to_midi`)."""
    rows = [np.concatenate([np.full((len(r), 1), k, np.int32), r], axis=1)
            for k, r in enumerate(tokens_to_notes(n, d) for n, d in parts)]
    return notes_to_midi(np.concatenate(rows) if rows else np.zeros((0, 4), np.int32), path, tempo,
                         [PARTS[k] if k < 4 else f"part {k}" for k in range(len(parts))])


def midi_to_tokens(midi: str | os.PathLike | bytes) -> list[tuple[list[str], list[str]]]:
    """A MIDI file -> canonical token streams, one per instrument (from the file's start)."""
    rows = midi_to_notes(midi)
    n_parts = int(rows[:, 0].max()) + 1 if len(rows) else 0
    return [notes_to_tokens(rows[rows[:, 0] == k][:, 1:]) for k in range(n_parts)]


# -- the data a music model trains on -----------------------------------------------------------------

HOLDOUT_CHORALES = 0.1
"""the held-out chorales (a seeded choice of whole chorales: no held-out phrase was seen in training)."""


def split_chorales(chorales: Sequence[Chorale], holdout: float = HOLDOUT_CHORALES, seed: int = 0
                   ) -> tuple[list[Chorale], list[Chorale]]:
    """(train, held-out), split by chorale; at least one of each."""
    n = len(chorales)
    if n < 2:
        raise ValueError(f"splitting by chorale needs >= 2 chorales, got {n}")
    k = min(n - 1, max(1, int(round(holdout * n))))
    perm = np.random.default_rng(seed).permutation(n)
    held = set(perm[:k].tolist())
    return [c for i, c in enumerate(chorales) if i not in held], [c for i, c in enumerate(chorales) if i in held]


@dataclass
class MusicData:
    """Note and duration token streams of chorale parts (each part a stream that begins with a START
    pair), concatenated into one ``(N, 2)`` stream; windows of ``block_size + 1`` pairs at random
    offsets are a model's batches, drawn as text's are (:class:`generators.text.TokenBatches`)."""

    name: str
    tokens: np.ndarray
    """``(N, 2)`` int64: note id, duration id (:class:`MusicTokenizer`)."""
    block_size: int = 64
    num_classes: int = 0
    kind = "music"

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.tokens.ndim != 2 or self.tokens.shape[1] != 2 or len(self.tokens) < self.block_size + 2:
            raise ValueError(f"{self.name}: {len(self.tokens)} note/duration pairs cannot fill one window of "
                             f"{self.block_size} + 1; lower --block-size or read more chorales")

    @classmethod
    def from_chorales(cls, name: str, chorales: Sequence[Chorale], block_size: int = 64) -> MusicData:
        tok = MusicTokenizer()
        rows = []
        for c in chorales:
            for notes, durs in chorale_tokens(c):
                n, d = tok.encode([tok.START, *notes], [tok.START, *durs])
                rows.append(np.stack([n, d], axis=1))
        return cls(name, np.concatenate(rows) if rows else np.zeros((0, 2), np.int64), block_size)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def windows(self, starts: np.ndarray | Sequence[int]):  # noqa: ANN201 - a torch.Tensor
        """``(len(starts), block_size + 1, 2)`` int64 windows beginning at ``starts``."""
        import torch

        idx = np.asarray(starts)[:, None] + np.arange(self.block_size + 1)[None, :]
        return torch.from_numpy(self.tokens[idx])

    def batches(self, batch_size: int, seed: int = 0, labels: bool = False):  # noqa: ANN201 - TokenBatches
        """Random windows as ``(B, T + 1, 2)`` int64 tensors (:class:`generators.text.TokenBatches`)."""
        from generators.text import TokenBatches

        if labels:
            raise ValueError(f"{self.name} has no class labels; train an unconditional model")
        return TokenBatches(self, batch_size, seed)  # type: ignore[arg-type]

    def eval_windows(self, count: int):  # noqa: ANN201 - a torch.Tensor
        """``count`` evenly spaced windows (fixed, for held-out losses comparable across models)."""
        return self.windows(np.linspace(0, len(self) - 1, count).astype(np.int64))


def _chorales_of(max_items: int | None, split: str, seed: int) -> list[Chorale]:
    """The corpus's first ``max_items`` chorales, all or one part of :func:`split_chorales`."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be all, train or heldout, got {split!r}")
    chorales = load_chorales(limit=max_items)
    if split == "all":
        return chorales
    train, held = split_chorales(chorales, seed=seed)
    return train if split == "train" else held


def load_music(source: str = "chorales", block_size: int | None = None, max_items: int | None = None,
               split: str = "all", seed: int = 0) -> MusicData:
    """``chorales`` as a :class:`MusicData` (``max_items``: the first that many chorales of the
    corpus; ``split``: "all", "train" or "heldout", by chorale with :func:`split_chorales`)."""
    if source != "chorales":
        raise ValueError(f"unknown music source {source!r}; use chorales")
    chorales = _chorales_of(max_items, split, seed)
    return MusicData.from_chorales("chorales" if split == "all" else f"chorales ({split})", chorales,
                                   block_size or 64)


# -- what the music metrics measure ---------------------------------------------------------------------

MAJOR = (0, 2, 4, 5, 7, 9, 11)


def bigram_nll(train: np.ndarray, test: np.ndarray, vocab: int, alpha: float = 1.0) -> float:
    """Held-out nats per token of an add-``alpha`` bigram model fitted on the stream ``train`` (ids),
    on the pairs of ``test``: the baseline a sequence model must beat."""
    counts = np.full((vocab, vocab), alpha)
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    logp = np.log(counts / counts.sum(1, keepdims=True))
    return float(-logp[test[:-1], test[1:]].mean())


def in_scale_rate(pitches: Sequence[int] | np.ndarray) -> float:
    """The share of ``pitches`` (MIDI) in the major scale (of the 12) that holds most of them: how
    tonal a passage is (a minor key's notes are its relative major's)."""
    pc = np.bincount(np.asarray(pitches, dtype=np.int64) % 12, minlength=12)
    if pc.sum() == 0:
        return 0.0
    best = max(sum(pc[(root + s) % 12] for s in MAJOR) for root in range(12))
    return float(best / pc.sum())


@dataclass
class RollData:
    """Piano-roll segments ``(N, tracks, bars, 16, 84)`` (bool) for MuseGAN; a batch is float32 in
    ``[-1, 1]`` (a sounding pitch +1, silence -1)."""

    name: str
    x: np.ndarray
    num_classes: int = 0
    kind = "roll"

    def __post_init__(self) -> None:
        if self.x.ndim != 5 or self.x.shape[3:] != (BAR_STEPS, PITCHES) or len(self.x) < 1:
            raise ValueError(f"{self.name}: piano rolls must be (N >= 1, tracks, bars, {BAR_STEPS}, {PITCHES}), "
                             f"got {self.x.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def tensor(self, idx: np.ndarray | slice | None = None):  # noqa: ANN201 - a torch.Tensor
        import torch

        x = self.x if idx is None else self.x[idx]
        return torch.from_numpy(np.ascontiguousarray(x)).float() * 2.0 - 1.0

    def batches(self, batch_size: int, seed: int = 0, labels: bool = False) -> RollBatches:
        if labels:
            raise ValueError(f"{self.name} has no class labels; train an unconditional model")
        return RollBatches(self, batch_size, seed)


class RollBatches:
    """Shuffled batches of a :class:`RollData`, one epoch a pass, drawn from ``seed`` and the epoch."""

    def __init__(self, data: RollData, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed, self.epoch = data, min(batch_size, len(data)), seed, 0
        self.dataset = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.data) // self.batch_size)

    def __iter__(self):  # noqa: ANN204
        perm = np.random.default_rng(self.seed * 1_000_003 + self.epoch).permutation(len(self.data))
        for i in range(len(self)):
            yield self.data.tensor(np.sort(perm[i * self.batch_size:(i + 1) * self.batch_size]))


def load_rolls(max_items: int | None = None, split: str = "all", seed: int = 0) -> RollData:
    """The 4/4 chorales (``max_items``: among the corpus's first that many) as 2-bar piano-roll
    segments, one every bar (:func:`piano_roll`); ``split`` by chorale as :func:`load_music`."""
    chorales = _chorales_of(max_items, split, seed)
    return RollData("chorale_rolls" if split == "all" else f"chorale_rolls ({split})", piano_roll(chorales))


# -- MuseGAN's measures on bool rolls (..., tracks, bars, steps, 84) -------------------------------------

QUALIFIED_STEPS = 2
"""a note is "qualified" when it lasts at least an eighth (2 steps): MuseGAN's 3 ticks of 96 per bar
are shorter than the grid here, where every note would qualify."""


def roll_metrics(rolls: np.ndarray) -> dict[str, float]:
    """MuseGAN's measures, means over ``(N, tracks, bars, steps, 84)`` bool rolls, with their standard
    deviations over the segments (``*_std``): empty bars (share of track-bars without a note), used
    pitch classes per non-empty track-bar, qualified notes (share of notes of >= 2 steps), tonal
    distance (between the tonal centroids of each pair of tracks, per bar; Harte et al. 2006)."""
    r = np.asarray(rolls, dtype=bool)
    n, tracks, bars = r.shape[:3]
    empty = ~r.any(axis=(3, 4))  # (N, T, B)
    chroma = np.stack([r[..., k::12].sum(axis=(3, 4)) for k in range(12)], axis=-1).astype(float)  # (N, T, B, 12)
    used = (chroma > 0).sum(-1).astype(float)  # (N, T, B)
    used_mean = np.array([u[~e].mean() if (~e).any() else 0.0 for u, e in zip(used, empty, strict=True)])
    qual = []
    for seg in r:  # notes: runs of one pitch within a track, across the segment
        lengths = []
        for t in range(tracks):
            track = seg[t].reshape(-1, r.shape[-1]).astype(np.int8)
            d = np.diff(np.concatenate([np.zeros((1, track.shape[1]), np.int8), track,
                                        np.zeros((1, track.shape[1]), np.int8)]), axis=0)
            on, off = np.nonzero(d.T == 1), np.nonzero(d.T == -1)
            lengths += list(off[1] - on[1])
        qual.append(np.mean(np.array(lengths) >= QUALIFIED_STEPS) if lengths else 0.0)
    tc = _tonal_centroid(chroma)  # (N, T, B, 6)
    dists = [np.linalg.norm(tc[:, a] - tc[:, b], axis=-1).mean(1) for a in range(tracks) for b in range(a + 1, tracks)]
    tonal = np.mean(dists, axis=0) if dists else np.zeros(n)
    out = {"empty_bars": empty.mean(axis=(1, 2)), "pitch_classes": used_mean, "qualified_notes": np.array(qual),
           "tonal_distance": tonal}
    return {**{k: float(v.mean()) for k, v in out.items()}, **{f"{k}_std": float(v.std()) for k, v in out.items()}}


def _tonal_centroid(chroma: np.ndarray) -> np.ndarray:
    """Harte, Sandler & Gasser (2006): a 12-bin chroma -> a 6-D point (fifths, minor and major thirds)."""
    k = np.arange(12)
    phi = np.stack([np.sin(k * 7 * np.pi / 6), np.cos(k * 7 * np.pi / 6),
                    np.sin(k * 3 * np.pi / 2), np.cos(k * 3 * np.pi / 2),
                    0.5 * np.sin(k * 2 * np.pi / 3), 0.5 * np.cos(k * 2 * np.pi / 3)])  # (6, 12)
    norm = chroma.sum(-1, keepdims=True)
    return np.where(norm > 0, chroma / np.maximum(norm, 1e-9), 0.0) @ phi.T


def pitch_class_histogram(rolls: np.ndarray) -> np.ndarray:
    """``(N, 12)``: each segment's share of sounding steps per pitch class."""
    r = np.asarray(rolls, dtype=bool)
    h = np.stack([r[..., k::12].sum(axis=tuple(range(1, r.ndim))) for k in range(12)], axis=1).astype(float)
    return h / np.maximum(h.sum(1, keepdims=True), 1.0)


# -- sonified rollouts ----------------------------------------------------------------------------------

MELODY_SCALE = (0, 2, 4, 5, 7, 9, 11)


def sonify(rewards: Sequence[float] | np.ndarray, latents: np.ndarray, seed: int = 0,
           steps_per_note: int = 2) -> np.ndarray:
    """A rollout as music, ``(part, pitch, onset, duration)`` rows on a grid of one env step per
    16th: deterministic for its inputs and ``seed``.

    - part 0, the melody: where the latents go. Each step's latent is projected on a direction
      drawn from ``seed`` and the projection, standardised over the rollout, picks a degree of C
      major over two octaves from C4; a note every ``steps_per_note`` steps, held while the degree
      stays;
    - part 1, the bass: how the rollout is paid. The reward's moving mean over 16 steps, ranked
      within the rollout, picks C2, F2, G2 or A2 (lowest to highest pay), one note a bar;
    - part 2, the events: a short C6 on every step whose reward stands more than two standard
      deviations above the rollout's mean (a tile reached, a fireball dodged).
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    z = np.asarray(latents, dtype=np.float64)
    z = z.reshape(len(z), -1) if z.ndim else z.reshape(1, 1)
    if len(z) != len(r):
        raise ValueError(f"sonify needs one latent per reward, got {len(z)} latents for {len(r)} rewards")
    if steps_per_note < 1:
        raise ValueError(f"steps_per_note must be >= 1, got {steps_per_note}")
    rows: list[tuple[int, int, int, int]] = []
    if not len(r):
        return np.zeros((0, 4), np.int32)
    direction = np.random.default_rng(seed).standard_normal(z.shape[1])
    proj = z @ (direction / np.linalg.norm(direction))
    proj = (proj - proj.mean()) / (proj.std() + 1e-9)
    degree = np.clip(np.round(proj * 3.5 + 7), 0, 13).astype(int)  # 14 degrees: two octaves
    pitch = [60 + 12 * (d // 7) + MELODY_SCALE[d % 7] for d in degree]
    t = 0
    while t < len(r):
        end = t + steps_per_note
        while end < len(r) and pitch[end] == pitch[t]:
            end += steps_per_note
        rows.append((0, pitch[t], t, min(end, len(r)) - t))
        t = end
    pay = np.convolve(r, np.ones(16) / 16, mode="full")[:len(r)]
    ranks = np.argsort(np.argsort(pay)) / max(1, len(r) - 1)
    for a in range(0, len(r), BAR_STEPS):
        level = int(min(3, ranks[a:a + BAR_STEPS].mean() * 4))
        rows.append((1, (36, 41, 43, 45)[level], a, min(BAR_STEPS, len(r) - a)))
    spikes = np.flatnonzero(r > r.mean() + 2 * r.std()) if r.std() > 0 else []
    rows += [(2, 84, int(s), 1) for s in spikes]
    return np.array(sorted(rows), dtype=np.int32)


def notes_to_wav(notes: np.ndarray, path: str | os.PathLike, step_s: float, fs: int = 22050) -> None:
    """``(part, pitch, onset, duration)`` rows (one step = ``step_s`` seconds) synthesised with sine
    waves (``pretty_midi``, no sound font) into a 16-bit mono WAV, atomically."""
    import wave

    import pretty_midi

    tempo = 60.0 / (step_s * STEPS_PER_QUARTER)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(notes_to_midi(notes, tempo=tempo)))
    audio = pm.synthesize(fs=fs) if len(notes) else np.zeros(1)
    audio = audio / max(1.0, float(np.abs(audio).max()))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(fs)
        w.writeframes((audio * 0.8 * 32767).astype(np.int16).tobytes())
    atomic_write_bytes(path, buf.getvalue())


def mux_audio(video: str | os.PathLike, wav: str | os.PathLike) -> None:
    """Put ``wav`` into the mp4 ``video`` as its sound track (AAC; the video stream copied), in place
    and atomically (imageio-ffmpeg's ffmpeg)."""
    import subprocess
    import tempfile

    import imageio_ffmpeg

    video = Path(video)
    fd, tmp = tempfile.mkstemp(prefix=f".{video.stem}.", suffix=".mp4", dir=video.parent)
    os.close(fd)
    try:
        r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video), "-i",
                            str(wav), "-c:v", "copy", "-c:a", "aac", "-shortest", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ffmpeg could not add the sound track to {video}: {r.stderr.strip()[-300:]}")
        os.replace(tmp, video)
    finally:
        Path(tmp).unlink(missing_ok=True)
