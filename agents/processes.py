"""Stateful workers in local processes: the lab's fallback where Ray cannot be installed.

Ray is how worldlab spreads rollouts (``backend="ray"``, the default: a local Ray, or a cluster
with ``--address``). ``backend="processes"`` runs the same worker classes in ``W`` spawned
processes of this machine instead, with the same call pattern: each :class:`ProcessActor` holds one
instance of a class, built once in its process and kept alive between calls, and ``submit`` returns
a :class:`concurrent.futures.Future`. Used by collection (``agents.collect``) and the real-game
pool (``agents.fitness.RealPool``), e.g. on a GPU box whose image has no Ray.

No retries here: a worker process that dies fails its futures (``BrokenProcessPool``), and the
caller's run resumes from its checkpoints like after any kill.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

BACKENDS = ("ray", "processes")  # merge: agents.pool

_instance: Any = None  # the object a worker process holds


def check_backend(backend: str, address: str | None = None) -> None:
    """Refuse an unknown backend, or ``--address`` without Ray, in one line."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "processes" and address:
        raise ValueError("--address joins a Ray cluster; it needs --backend ray (processes run on this machine only)")


def _build(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    global _instance
    _instance = cls(*args, **kwargs)


def _call(method: str, args: tuple[Any, ...]) -> Any:
    return getattr(_instance, method)(*args)


class ProcessActor:
    """One spawned process holding ``cls(*args, **kwargs)``; ``submit(method, *args)`` -> Future.

    Spawned, not forked: a child starts clean (no copied torch threads or emulator state).
    """

    def __init__(self, cls: type, *args: Any, **kwargs: Any) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                         initializer=_build, initargs=(cls, args, kwargs))

    def submit(self, method: str, *args: Any) -> Future:
        return self._pool.submit(_call, method, args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
