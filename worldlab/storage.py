"""Rollout storage: one compressed shard per episode, a manifest with checksums, streaming readers.

Layout of a data folder (``RUN/data`` for frames, ``RUN/latents`` for encoded episodes)::

    DIR/manifest.json          {"version", "kind", "meta": {...}, "episodes": {"<index>": info}}
    DIR/ep_000000.npz          one episode (np.savez_compressed), written atomically
    ...

A frame shard holds, for an episode of ``T`` steps::

    obs         (T+1, 64, 64, 3) uint8   obs[0] from reset, obs[t+1] after actions[t]
    actions     (T, A) float32 or (T,) int64
    rewards     (T,)   float32            reward for actions[t]
    terminated  (T,)   bool
    truncated   (T,)   bool
    seed        ()     int64              the episode's reset seed

A latent shard holds ``mu`` and ``logvar`` (T+1, Z) float32 in place of ``obs``, and the same
actions, rewards and flags. ``info`` in the manifest: ``file``, ``length`` (T), ``sha256`` of the
file's bytes, ``seed``, ``return``.

Workers write shards themselves (the driver never holds the data set); the driver records each
finished shard in the manifest (also atomically). A shard on disk that the manifest does not
list yet (the run was killed between the two writes) is adopted on the next start after its
checksum is recomputed. A shard whose bytes do not match its checksum is refused by the readers
with an error naming the file.
"""

from __future__ import annotations

import io
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from worldlab.io import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file
from worldlab.rundir import MANIFEST

_SHARD_RE = re.compile(r"^ep_(\d{6,})\.npz$")


class CorruptShardError(ValueError):
    """A shard's bytes do not match the checksum recorded in its manifest."""


def shard_name(index: int) -> str:
    return f"ep_{index:06d}.npz"


def encode_shard(arrays: dict[str, np.ndarray], index: int) -> tuple[bytes, dict[str, Any]]:
    """Compress one episode into shard bytes and its manifest entry (a worker does this)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    rewards = np.asarray(arrays["rewards"])
    return data, {
        "file": shard_name(index),
        "length": int(rewards.shape[0]),
        "sha256": sha256_bytes(data),
        "seed": int(np.asarray(arrays.get("seed", -1))),
        "return": float(rewards.sum(dtype=np.float64)),
    }


def write_shard(data_dir: str | os.PathLike, index: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one episode shard atomically and return its manifest entry.

    ``arrays`` must contain ``rewards`` (T,) and may contain anything else (see module doc).
    """
    data, info = encode_shard(arrays, index)
    atomic_write_bytes(Path(data_dir) / info["file"], data)
    return info


SHARD_FIX = "resume the run (or rerun the collect command): it drops the shard and collects that episode again"
"""What to do about a damaged shard, said by every reader that finds one."""


def load_shard(path: str | os.PathLike, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Load a shard fully into memory, verifying its checksum when one is given."""
    path = Path(path)
    data = path.read_bytes()
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CorruptShardError(
            f"shard {path} is corrupt (checksum mismatch with {path.parent / MANIFEST}); {SHARD_FIX}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise CorruptShardError(f"shard {path} cannot be read ({e}); {SHARD_FIX}") from e


class Manifest:
    """The index of a data folder: which episodes exist, their lengths and checksums."""

    def __init__(self, data_dir: str | os.PathLike, kind: str = "frames", meta: dict | None = None) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / MANIFEST
        self.kind = kind
        self.meta: dict[str, Any] = dict(meta or {})
        self.episodes: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            raw = read_json(self.path)
            self.kind = raw.get("kind", kind)
            self.meta = {**raw.get("meta", {}), **self.meta}
            self.episodes = {int(k): v for k, v in raw.get("episodes", {}).items()}

    @classmethod
    def open(cls, data_dir: str | os.PathLike) -> Manifest:
        """Open an existing data folder; a clear error when there is none."""
        path = Path(data_dir) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"no rollout data at {data_dir} (missing {MANIFEST}); "
                                    f"collect rollouts into that folder first")
        return cls(data_dir)

    def save(self) -> None:
        atomic_write_json(self.path, {
            "version": 1,
            "kind": self.kind,
            "meta": self.meta,
            "episodes": {str(k): self.episodes[k] for k in sorted(self.episodes)},
        })

    def add(self, index: int, info: dict[str, Any], save: bool = True) -> None:
        self.episodes[int(index)] = info
        if save:
            self.save()

    def adopt_orphans(self) -> list[int]:
        """Record shards present on disk but missing from the manifest (killed between writes)."""
        adopted = []
        if not self.dir.exists():
            return adopted
        for p in sorted(self.dir.iterdir()):
            m = _SHARD_RE.match(p.name)
            if not m or int(m.group(1)) in self.episodes:
                continue
            try:
                arrays = load_shard(p)
            except CorruptShardError:
                p.unlink()  # unreadable and unrecorded: it will be collected again
                continue
            rewards = arrays["rewards"]
            self.episodes[int(m.group(1))] = {
                "file": p.name, "length": int(rewards.shape[0]), "sha256": sha256_file(p),
                "seed": int(arrays.get("seed", np.int64(-1))), "return": float(rewards.sum(dtype=np.float64)),
            }
            adopted.append(int(m.group(1)))
        if adopted:
            self.save()
        return adopted

    def drop_damaged(self, episodes: Iterable[int] | None = None, verify: bool = True) -> list[int]:
        """Drop from the manifest (and delete) the shards of ``episodes`` (None: all) whose file is
        missing or, with ``verify``, whose bytes no longer match their checksum, so that collection
        plays those episodes again; returns their indices (the manifest is saved when any)."""
        dropped = []
        for i in sorted(self.episodes if episodes is None else (e for e in episodes if e in self.episodes)):
            path = self.dir / self.episodes[i]["file"]
            if path.is_file() and (not verify or sha256_file(path) == self.episodes[i]["sha256"]):
                continue
            path.unlink(missing_ok=True)
            del self.episodes[i]
            dropped.append(i)
        if dropped:
            self.save()
        return dropped

    def files(self) -> list[tuple[Path, str]]:
        """``(path, sha256)`` of every recorded shard, in episode order."""
        return [(self.dir / e["file"], e["sha256"]) for _, e in sorted(self.episodes.items())]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(e["length"] for e in self.episodes.values())

    def __len__(self) -> int:
        return len(self.episodes)


def split_episodes(manifest: Manifest, holdout: float = 0.0, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of a manifest's episode indices into (train, held-out)."""
    return split_indices(manifest.episodes, holdout, seed)


def split_indices(episodes: Iterable[int], holdout: float = 0.0, seed: int = 0) -> tuple[list[int], list[int]]:
    """:func:`split_episodes` of the episode indices ``episodes`` (a manifest's, or the ones it will hold)."""
    idx = sorted(int(e) for e in episodes)
    rng = random.Random(seed)
    rng.shuffle(idx)
    n_hold = int(round(len(idx) * holdout))
    if holdout > 0 and len(idx) > 1:
        n_hold = max(1, min(n_hold, len(idx) - 1))
    return sorted(idx[n_hold:]), sorted(idx[:n_hold])


class ShardStream(IterableDataset):
    """Streams a data folder for training without loading it whole.

    ``mode="frames"``: yields single frames ``(3, 64, 64) uint8`` tensors (key ``obs``), shuffled
    through a buffer of ``shuffle_shards`` episodes at a time.
    ``mode="sequences"``: yields dicts of windows of ``seq_len`` steps from each episode
    (``obs``/``mu``/``logvar`` of length seq_len+1, ``actions``, ``rewards``, ``terminated`` of
    length seq_len), episodes shorter than the window are padded and carry a ``mask``.

    Every shard's checksum is verified as it is read (``CorruptShardError`` names the file).
    Works with ``DataLoader(num_workers=k)``: shards are divided between workers. Each pass
    (``iter``) reshuffles with ``seed + epoch``; call :meth:`set_epoch` between epochs.

    ``cache_bytes`` (sequences): keep up to that many bytes of read episodes (their ``keys``) in
    memory, so later passes neither read nor decompress them again (M's latents are small: Doom's
    300 episodes are ~60 MB); the same windows in the same order either way.
    """

    def __init__(self, data_dir: str | os.PathLike, mode: str = "frames", episodes: list[int] | None = None,
                 seq_len: int = 32, shuffle: bool = True, shuffle_shards: int = 8, seed: int = 0,
                 keys: tuple[str, ...] | None = None, cache_bytes: int = 0) -> None:
        super().__init__()
        if mode not in ("frames", "sequences"):
            raise ValueError(f"mode must be 'frames' or 'sequences', got {mode!r}")
        self.manifest = Manifest.open(data_dir)
        ids = sorted(self.manifest.episodes) if episodes is None else sorted(episodes)
        unknown = [i for i in ids if i not in self.manifest.episodes]
        if unknown:
            raise ValueError(f"episodes {unknown[:5]} are not in {self.manifest.path}")
        self.files = [(self.manifest.dir / self.manifest.episodes[i]["file"], self.manifest.episodes[i]["sha256"])
                      for i in ids]
        self.lengths = [self.manifest.episodes[i]["length"] for i in ids]
        self.mode, self.seq_len, self.shuffle = mode, seq_len, shuffle
        self.shuffle_shards, self.seed, self.epoch, self.keys = max(1, shuffle_shards), seed, 0, keys
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0 (0: no cache), got {cache_bytes}")
        self.cache_bytes, self._cache, self._cached = int(cache_bytes), {}, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:  # a copy sent to a loader worker starts with an empty cache
        return {**self.__dict__, "_cache": {}, "_cached": 0}

    def __len__(self) -> int:
        if self.mode == "frames":
            return sum(n + 1 for n in self.lengths)
        return sum(max(1, -(-n // self.seq_len)) for n in self.lengths)

    def _my_files(self, rng: random.Random) -> list[tuple[Path, str]]:
        files = list(self.files)
        if self.shuffle:
            rng.shuffle(files)
        info = get_worker_info()
        if info is not None:
            files = files[info.id::info.num_workers]
        return files

    def __iter__(self) -> Iterator[Any]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        files = self._my_files(rng)
        if self.mode == "frames":
            yield from self._frames(files, rng)
        else:
            yield from self._sequences(files, rng)

    def _frames(self, files: list[tuple[Path, str]], rng: random.Random) -> Iterator[torch.Tensor]:
        for start in range(0, len(files), self.shuffle_shards):
            obs = np.concatenate([load_shard(p, s)["obs"] for p, s in files[start:start + self.shuffle_shards]])
            order = np.arange(len(obs))
            if self.shuffle:
                np.random.default_rng(rng.randrange(2**32)).shuffle(order)
            for i in order:
                yield torch.from_numpy(obs[i]).permute(2, 0, 1)  # (3, 64, 64) uint8

    def _sequences(self, files: list[tuple[Path, str]], rng: random.Random) -> Iterator[dict[str, torch.Tensor]]:
        L = self.seq_len
        for p, s in files:
            ep = self._episode(p, s)
            T = int(ep["rewards"].shape[0])
            starts = list(range(0, max(1, T - L + 1), L)) if T >= L else [0]
            if T > L and (T - L) % L:
                starts.append(T - L)  # cover the tail too
            if self.shuffle:
                rng.shuffle(starts)
            for t0 in starts:
                yield _window(ep, t0, L, self.keys)

    def _episode(self, path: Path, sha256: str) -> dict[str, np.ndarray]:
        """One episode's arrays (``keys`` and the rewards that give its length), from the cache
        when it holds them; kept there while the cache has room."""
        ep = self._cache.get(path)
        if ep is not None:
            return ep
        ep = load_shard(path, sha256)
        if self.cache_bytes:
            ep = {k: v for k, v in ep.items() if k == "rewards" or self.keys is None or k in self.keys}
            size = sum(v.nbytes for v in ep.values())
            if self._cached + size <= self.cache_bytes:
                self._cache[path] = ep
                self._cached += size
        return ep


def _window(ep: dict[str, np.ndarray], t0: int, L: int, keys: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
    T = int(ep["rewards"].shape[0])
    n = min(L, T - t0)
    out: dict[str, torch.Tensor] = {}
    for k, v in ep.items():
        if k == "seed" or (keys is not None and k not in keys):
            continue
        per_state = v.shape[0] == T + 1  # obs / mu / logvar carry one more entry than the steps
        seg = v[t0:t0 + n + (1 if per_state else 0)]
        want = L + (1 if per_state else 0)
        if seg.shape[0] < want:
            pad = np.zeros((want - seg.shape[0],) + seg.shape[1:], dtype=seg.dtype)
            seg = np.concatenate([seg, pad])
        out[k] = torch.from_numpy(np.ascontiguousarray(seg))
    mask = np.zeros(L, dtype=bool)
    mask[:n] = True
    out["mask"] = torch.from_numpy(mask)
    return out
