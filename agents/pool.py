"""One pool of stateful workers for every backend: Ray actors, local processes, or this process.

worldlab spreads real rollouts (collection in :mod:`agents.collect`, the real-game pool
:class:`agents.fitness.RealPool`) over ``W`` workers of one class, each built once and kept alive
between calls (it holds an env, a policy, a world model). :class:`WorkerPool` is the one place that
knows how:

- ``backend="ray"`` (the default): ``W`` Ray actors, with the given Ray options (``num_cpus``,
  ``max_restarts``, ``max_task_retries``: a killed actor is restarted and its call retried), on a
  local Ray (:func:`worldlab.ray_utils.init_ray`) or on the cluster at ``address``.
- ``backend="processes"``: ``W`` spawned local processes (spawned, not forked: a child starts clean,
  without copied torch threads or emulator state), for a machine without Ray. No retries: a worker
  process that dies fails its calls (``BrokenProcessPool``), and the caller's run resumes from its
  checkpoints like after any kill. Ray is never imported.
- ``workers=0`` (either backend): one instance in this process; calls run synchronously in
  ``submit``.

The calls are the same everywhere: ``submit(i, method, *args)`` -> handle, ``wait(handles)`` ->
``(handle, result)`` of the first finished, ``map(method, batches, *args)`` -> results in order,
``imap(method, calls)`` -> ``(i, result)`` as they finish, each worker fed as its calls finish,
``call_all(method, *args)`` -> one result per worker, ``close()`` (or ``with``). A worker's error
is raised where its result is taken, and does not end the worker.

A large object (a world model, a policy spec that holds one) is not a constructor argument: on Ray
those sit in the object store, which Ray flags for restartable actors, and a restarted actor could
not get them again. Build the workers with small arguments and pass ``ref = pool.put(obj)`` with
each call instead; the worker method turns it into the object with :func:`fetch_if_new`, which
fetches it once per worker (and again in an actor Ray restarted). ``ref`` is ``[ObjectRef]`` on
Ray (in a list, so Ray hands over the reference rather than the object), and a local reference
otherwise: a spawned process receives the object with its first call only, this process uses it as
is.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

BACKENDS = ("ray", "processes")
"""Where real rollouts run: Ray workers (a local Ray or a cluster), or local processes (no Ray)."""


def check_backend(backend: str, address: str | None = None) -> None:
    """Refuse an unknown backend, or ``--address`` without Ray, in one line."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "processes" and address:
        raise ValueError("--address joins a Ray cluster; it needs --backend ray (processes run on this machine only)")


class LocalRef:
    """What :meth:`WorkerPool.put` gives outside Ray: a key, and the object (``None`` in a call to a
    worker process that already holds it; that process puts its copy back before the call)."""

    __slots__ = ("key", "obj")

    def __init__(self, obj: Any, key: str | None = None) -> None:
        self.obj, self.key = obj, key or uuid.uuid4().hex

    def hex(self) -> str:
        return self.key


def fetch_if_new(ref: list[Any] | None, key: str | None) -> tuple[Any, str] | None:
    """``(object, key)`` behind ``ref`` (from :meth:`WorkerPool.put`) when it is not the one the
    worker already holds (``key``), else None.

    For workers that receive a large object with each call rather than as a constructor argument:
    the worker keeps the object and its key, and the object is fetched once per worker (again by an
    actor Ray restarted, whose key starts as None).
    """
    if ref is None or ref[0].hex() == key:
        return None
    if isinstance(ref[0], LocalRef):
        return ref[0].obj, ref[0].key
    import ray

    return ray.get(ref[0]), ref[0].hex()


# -- a worker process's side (backend "processes") --------------------------------------------------

_instance: Any = None  # the object a worker process holds
_held: dict[int, LocalRef] = {}  # argument position -> the last object put() sent to this process there


def _build(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    global _instance
    _instance = cls(*args, **kwargs)


def _call(method: str, args: tuple[Any, ...]) -> Any:
    args = tuple(_restore(pos, a) for pos, a in enumerate(args))
    return getattr(_instance, method)(*args)


def _restore(pos: int, arg: Any) -> Any:
    ref = _local_ref(arg)
    if ref is None:
        return arg
    if ref.obj is not None:
        _held[pos] = ref
        return arg
    held = _held.get(pos)
    if held is None or held.key != ref.key:
        raise RuntimeError("worker process lost an object passed with pool.put(); close the pool and start again")
    return [held]


def _local_ref(arg: Any) -> LocalRef | None:
    return arg[0] if isinstance(arg, list) and len(arg) == 1 and isinstance(arg[0], LocalRef) else None


# -- the pool ---------------------------------------------------------------------------------------


class WorkerPool:
    """``workers`` instances of ``cls(*args, **kwargs)``, built once each and kept alive between calls.

    Args:
        cls: the worker class (importable by its module path: spawned processes import it).
        args, kwargs: its constructor arguments (small ones: pass large objects per call, see
            :meth:`put`).
        workers: number of workers; 0 runs one instance in this process (no Ray, no processes).
        backend: "ray" or "processes" (see the module docstring); checked by :func:`check_backend`.
        address: a Ray cluster to join (backend "ray" only; None: a local Ray).
        ray_options: options of the Ray actors (default ``num_cpus=1``), e.g. ``max_restarts``
            and ``max_task_retries``.
    """

    def __init__(self, cls: type, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                 workers: int, backend: str = "ray", address: str | None = None,
                 ray_options: dict[str, Any] | None = None) -> None:
        check_backend(backend, address)
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        args, kwargs = tuple(args), dict(kwargs or {})
        self.backend = "in-process" if workers == 0 else backend
        self._closed = False
        self._workers: list[Any] = []
        self._sent: list[dict[int, str]] = []  # processes: per worker, argument position -> key of the object sent
        if self.backend == "in-process":
            self._workers = [cls(*args, **kwargs)]
        elif self.backend == "processes":
            ctx = mp.get_context("spawn")
            self._workers = [ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_build,
                                                 initargs=(cls, args, kwargs)) for _ in range(workers)]
            self._sent = [{} for _ in range(workers)]
        else:
            import ray

            from worldlab.ray_utils import init_ray

            init_ray(address)
            actor = ray.remote(**{"num_cpus": 1, **(ray_options or {})})(cls)
            self._workers = [actor.remote(*args, **kwargs) for _ in range(workers)]

    @property
    def size(self) -> int:
        """Number of workers (1 in-process)."""
        return len(self._workers)

    def put(self, obj: Any) -> list[Any]:
        """A reference to pass with each call in place of ``obj`` (turned back by :func:`fetch_if_new`)."""
        if self.backend == "ray":
            import ray

            return [ray.put(obj)]
        return [LocalRef(obj)]

    def submit(self, worker_index: int, method: str, *args: Any) -> Any:
        """Start ``worker.method(*args)`` on worker ``worker_index``; returns a handle for :meth:`wait`."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        worker = self._workers[worker_index]
        if self.backend == "ray":
            return getattr(worker, method).remote(*args)
        if self.backend == "processes":
            sent = self._sent[worker_index]
            return worker.submit(_call, method, tuple(self._strip(sent, pos, a) for pos, a in enumerate(args)))
        future: Future = Future()
        try:
            future.set_result(getattr(worker, method)(*args))
        except Exception as e:  # noqa: BLE001 - raised where the result is taken, as on the other backends
            future.set_exception(e)
        return future

    @staticmethod
    def _strip(sent: dict[int, str], pos: int, arg: Any) -> Any:
        """A put() object goes to a worker process once; later calls carry its key only."""
        ref = _local_ref(arg)
        if ref is None or ref.obj is None:
            return arg
        if sent.get(pos) == ref.key:
            return [LocalRef(None, ref.key)]
        sent[pos] = ref.key
        return arg

    def wait(self, handles: Sequence[Any]) -> tuple[Any, Any]:
        """``(handle, result)`` of the first of ``handles`` to finish (the earliest listed of those
        already finished); raises the worker's error if that call failed."""
        if self.backend == "ray":
            import ray

            ready = ray.wait(list(handles), num_returns=1)[0][0]
            return ready, ray.get(ready)
        done = wait_futures(handles, return_when=FIRST_COMPLETED)[0]
        first = next(h for h in handles if h in done)
        return first, first.result()

    def results(self, handles: Sequence[Any]) -> list[Any]:
        """The results of ``handles``, in order (waits for all)."""
        if self.backend == "ray":
            import ray

            return ray.get(list(handles))
        return [h.result() for h in handles]

    def map(self, method: str, batches: Sequence[Any], *args: Any) -> list[Any]:
        """``worker.method(batch, *args)`` for every batch, batch ``i`` on worker ``i % size``;
        the results in the order of ``batches``."""
        return self.results([self.submit(i % self.size, method, b, *args) for i, b in enumerate(batches)])

    def imap(self, method: str, calls: Iterable[Sequence[Any]], inflight: int = 2) -> Iterator[tuple[int, Any]]:
        """``worker.method(*call)`` for every call, yielding ``(i, result)`` for call ``i`` as each
        finishes. Each worker has up to ``inflight`` calls in flight (it never waits for the driver's
        round trip) and gets the next call as soon as one of its own finishes, so a worker whose calls
        run short takes more of them (:meth:`map` splits the calls up front). A call's error is raised
        when its result comes."""
        if inflight < 1:
            raise ValueError(f"inflight must be >= 1, got {inflight}")
        queue = deque(enumerate(calls))
        pending: dict[Any, tuple[int, int]] = {}  # handle -> (call index, worker)

        def send(worker: int) -> None:
            if queue:
                i, call = queue.popleft()
                pending[self.submit(worker, method, *call)] = (i, worker)

        for _ in range(inflight):
            for w in range(self.size):
                send(w)
        while pending:
            handle, result = self.wait(list(pending))
            i, worker = pending.pop(handle)
            send(worker)
            yield i, result

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """``worker.method(*args)`` on every worker; one result per worker, in worker order."""
        return self.results([self.submit(i, method, *args) for i in range(self.size)])

    def close(self) -> None:
        """End the workers (idempotent): Ray actors are killed, worker processes shut down (pending
        calls cancelled), and an in-process worker's ``close()`` is called if it has one."""
        if self._closed:
            return
        self._closed = True
        workers, self._workers = self._workers, []
        if self.backend == "ray":
            import ray

            for a in workers:
                ray.kill(a)
        elif self.backend == "processes":
            for p in workers:
                p.shutdown(wait=True, cancel_futures=True)
        else:
            for w in workers:
                if callable(getattr(w, "close", None)):
                    w.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
