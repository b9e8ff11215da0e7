"""Atomic file writes: every file the lab writes goes to a temp file first, then is renamed.

A killed run therefore never leaves a half-written checkpoint, shard or JSON behind: the
reader sees either the old complete file or the new complete file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; set back at once (import time, one thread)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _file_mode(path: Path) -> int:
    """The permissions ``path`` gets: those of the file it replaces, else what ``open(path, "w")``
    would give (0o666 less the umask). ``mkstemp`` makes its temp file 0o600, which a rename would
    otherwise hand on to every checkpoint, figure and report the lab writes."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):  # POSIX (and Windows from Python 3.13)
                os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda f: f.write(data))


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a matplotlib figure to ``path`` atomically (the format from its suffix; ``kwargs`` go
    to ``savefig``): a run killed while a report is written leaves the old figure or the new one."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def splice_section(doc: str, tag: str, body: str | None) -> str:
    """``doc`` with the text between ``<!-- TAG:begin -->`` and ``<!-- TAG:end -->`` replaced by ``body``
    (the markers kept); appended at the end when ``doc`` has no such section. ``body=None`` returns
    the section's current text (``""`` when absent). Lets two commands write one document."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    i, j = doc.find(begin), doc.find(end)
    if body is None:
        return doc[i + len(begin):j].strip("\n") if 0 <= i < j else ""
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    if 0 <= i < j:
        return doc[:i] + block + doc[j + len(end):]
    return doc.rstrip("\n") + "\n\n" + block + "\n"


def write_doc_section(doc: str | os.PathLike, tag: str, lines: list[str], command: str | None = None,
                      head: str = "") -> Path:
    """Write ``lines`` as section ``tag`` of the markdown file ``doc`` (:func:`splice_section`;
    other sections kept; a missing file starts as ``head``), with a "Reproduce" block of
    ``command`` when given, atomically. Lets every report script own one section of a shared doc."""
    doc = Path(doc)
    if command is not None:
        lines = [*lines, "Reproduce:", "", "```", command.strip(), "```"]
    old = doc.read_text(encoding="utf-8") if doc.exists() else head
    return atomic_write_text(doc, splice_section(old, tag, "\n".join(lines)))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file, then rename."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` (or ``np.savez``) to a temp file, then rename."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
"""The names :func:`_atomic` gives its temp files (``.NAME.XXXXXXXX.tmp``, from ``tempfile.mkstemp``)."""


def _remove(paths: Iterable[Path], name: re.Pattern[str]) -> list[tuple[Path, int]]:
    removed = []
    for p in paths:
        if p.is_file() and name.match(p.name):
            try:
                size = p.stat().st_size
                p.unlink()
                removed.append((p, size))
            except FileNotFoundError:
                pass
    return removed


def remove_stale_temps(root: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete the half-written temp files a killed process left under ``root`` (only names of the
    atomic writers' pattern, :data:`TEMP_NAME`); returns each removed path and its size. Call it
    when no other process writes under ``root``."""
    return _remove(Path(root).rglob(".*.tmp"), TEMP_NAME)


def remove_stale_temps_of(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete the half-written temp files that a killed writer of ``path`` left beside it
    (``.NAME.XXXXXXXX.tmp``); returns each removed path and its size. Call it before resuming the one
    process that writes ``path``."""
    path = Path(path)
    own = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    return _remove(path.parent.glob(".*.tmp") if path.parent.is_dir() else (), own)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_id(weights: dict[str, torch.Tensor], *salt: object) -> str:
    """An id of a trained model that its content determines (32 hex digits): the sha256 of every
    tensor's name, dtype, shape and bytes, and of ``salt`` (what else sets its meaning, e.g. the V it
    was trained on). The same run repeated with the same seed writes the same ids, so its files
    compare equal; any change of a weight gives another id."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr(salt).encode())
    return h.hexdigest()[:32]


NOT_A_ZIP = "not a readable archive"


def zip_damage(path: str | os.PathLike) -> str | None:
    """Why a zip archive (a torch checkpoint, an ``.npz``) is damaged: its first record that fails
    its CRC-32 check, or :data:`NOT_A_ZIP` and the error; None when every record is whole."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{NOT_A_ZIP}: {type(e).__name__}"
    return None if bad is None else f"{bad} fails its CRC-32 check"


def torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely (``weights_only=True``) with a one-line error on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train that stage first, or check the run folder)")
    damage = zip_damage(path)  # torch.load does not check the CRC of each record
    if damage is not None and not damage.startswith(NOT_A_ZIP):  # not a zip (a legacy torch.save): torch.load below decides
        raise ValueError(f"checkpoint {path} is corrupt ({damage}); delete it and rerun that stage")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        first = str(e).splitlines()[0] if str(e) else ""
        first = first if len(first) <= 160 else first[:157].rsplit(" ", 1)[0] + " ..."
        raise ValueError(f"checkpoint {path} is corrupt or not a worldlab checkpoint ({type(e).__name__}: "
                         f"{first}); delete it and rerun that stage") from e


class ConfigCheckpoint:
    """Save/load for a torch module built from one config dataclass: the checkpoint is
    ``{"family", "config", "model" (CPU weights), "meta"}`` and the module is rebuilt from its config.

    A subclass sets ``FAMILY`` (the tag checked on load), ``CONFIG`` (the dataclass, with
    ``from_dict``), ``WHAT`` (``"VAE"``) and ``STAGE`` (``"V"``: named in the one-line errors), and
    keeps ``config`` and ``meta`` attributes. Every checkpoint of the lab that rebuilds a module
    (V, M, every :mod:`generators` family) goes through this class, so one reader serves them all;
    a module whose weights or config are stored in another shape overrides
    :meth:`checkpoint_header` / :meth:`checkpoint_weights` and :meth:`from_checkpoint`.
    """

    FAMILY: str
    CONFIG: Any
    WHAT: str
    STAGE: str

    def checkpoint_header(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """What rebuilds the module without its weights: family, config, meta (a fresh ``id`` unless given).

        A training checkpoint adds this to its own state, so it loads like a saved module.
        """
        import uuid
        from dataclasses import asdict

        meta = dict(meta or {})
        meta.setdefault("id", uuid.uuid4().hex)
        return {"family": self.FAMILY, "config": asdict(self.config),  # type: ignore[attr-defined]
                "meta": meta}

    def checkpoint_weights(self) -> dict[str, Any]:
        """The weights as stored: the state dict on the CPU."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]

    def checkpoint(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The content of the checkpoint: family, config, weights, meta (a fresh ``id`` unless given)."""
        return {**self.checkpoint_header(meta), "model": self.checkpoint_weights()}

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Write weights + config (+ ``meta``, e.g. the task) to ``path`` atomically."""
        return atomic_torch_save(self.checkpoint(meta), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
        """Rebuild the module from a checkpoint written by :meth:`save`; its meta is on ``.meta``."""
        return cls.from_checkpoint(torch_load(path, map_location="cpu"), path).to(device).eval()  # type: ignore[attr-defined]

    @classmethod
    def from_checkpoint(cls, state: Any, path: str | os.PathLike = "<memory>") -> Any:
        if not isinstance(state, dict) or state.get("family") != cls.FAMILY or "config" not in state:
            raise ValueError(f"{path} is not a worldlab {cls.WHAT} checkpoint (no family='{cls.FAMILY}' + config); "
                             f"retrain {cls.STAGE} or point to RUN/checkpoints/{cls.FAMILY}.pt")
        model = cls(cls.CONFIG.from_dict(state["config"]))  # type: ignore[call-arg]
        try:
            model.load_state_dict(state["model"])  # type: ignore[attr-defined]
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match the config stored with them "
                             f"({str(e).splitlines()[0][:160]}); the file is damaged, retrain {cls.STAGE}") from e
        model.meta = dict(state.get("meta", {}))
        return model
