"""agents.pool.WorkerPool on its three backends (Ray actors, spawned processes, in-process), with a
tiny worker class: the same results everywhere, order kept, objects passed with put() fetched once
per worker, one-line refusals, idempotent close."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

from agents.pool import BACKENDS, WorkerPool, check_backend, fetch_if_new

CLOSED: list[int] = []  # bases of the in-process Tally instances closed (this process only)


class Tally:
    """A tiny stateful worker (top level of an importable module: spawned processes import it)."""

    def __init__(self, base: int) -> None:
        self.base, self.calls, self.fetches = base, 0, 0
        self.obj: Any = None
        self._key: str | None = None

    def add(self, batch: list[int], ref: list[Any] | None = None, sleep: float = 0.0) -> list[int]:
        fetched = fetch_if_new(ref, self._key)
        if fetched is not None:
            (self.obj, self._key), self.fetches = fetched, self.fetches + 1
        self.calls += 1
        time.sleep(sleep)
        return [self.base + x + (self.obj["offset"] if self.obj else 0) for x in batch]

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls, "fetches": self.fetches, "pid": os.getpid(),
                "obj": None if self.obj is None else self.obj["offset"]}

    def fail(self) -> None:
        raise ValueError("tally failed")

    def close(self) -> None:
        CLOSED.append(self.base)


def _pool(kind: str, request: pytest.FixtureRequest, workers: int = 2) -> WorkerPool:
    """kind: "ray", "processes" or "in-process" (workers=0)."""
    if kind == "ray":
        request.getfixturevalue("ray_session")
        import ray.cloudpickle

        # Ray's workers cannot import this test module (tests/ is no package on their path): send
        # Tally by value; spawned processes import it (multiprocessing hands them this sys.path)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return WorkerPool(Tally, (10,), workers=0 if kind == "in-process" else workers,
                      backend="processes" if kind == "in-process" else kind)


def _run(pool: WorkerPool) -> dict[str, Any]:
    """A fixed job on the pool: two put() objects, map() over 5 batches, a failing call."""
    big = pool.put({"offset": 100, "payload": bytes(1_000_000)})
    batches = [[i, i + 1] for i in range(5)]
    first = pool.map("add", batches, big)
    second = pool.map("add", batches, big)
    with pytest.raises(ValueError, match="tally failed"):
        pool.wait([pool.submit(0, "fail")])  # a worker's error is raised where its result is taken ...
    third = pool.map("add", [[7]], pool.put({"offset": 1000}))  # another object replaces the first
    return {"results": [first, second, third], "states": pool.call_all("state")}  # ... and the worker lives on


@pytest.mark.parametrize("kind", ["in-process", "processes", "ray"])
def test_backends_give_the_same_results(kind: str, request: pytest.FixtureRequest) -> None:
    with _pool(kind, request) as pool:
        assert pool.size == (1 if kind == "in-process" else 2)
        got = _run(pool)
    expected = [[[110 + i, 111 + i] for i in range(5)]] * 2 + [[[1017]]]
    assert got["results"] == expected
    states = got["states"]
    pids = {s["pid"] for s in states}
    if kind == "in-process":
        assert pids == {os.getpid()} and states[0]["calls"] == 11 and states[0]["fetches"] == 2
    else:
        assert len(pids) == 2 and os.getpid() not in pids  # two workers, not this process
        # 5 batches round-robin over 2 workers, twice; then one batch on worker 0
        assert [s["calls"] for s in states] == [3 + 3 + 1, 2 + 2]
        # the first object once per worker, however many calls carried it; the second on worker 0 only
        assert [s["fetches"] for s in states] == [2, 1] and [s["obj"] for s in states] == [1000, 100]


def test_processes_send_a_put_object_once_per_worker() -> None:
    """Later calls to a worker process carry the put() object's key only; the process keeps the object."""
    from concurrent.futures import Future

    with WorkerPool(Tally, (0,), workers=1, backend="processes") as pool:
        ref = pool.put({"offset": 5})
        sent: dict[int, str] = {}
        assert WorkerPool._strip(sent, 1, ref) is ref  # the first call carries the object
        stub = WorkerPool._strip(sent, 1, ref)
        assert stub[0].key == ref[0].key and stub[0].obj is None  # later calls its key only
        assert ref[0].obj == {"offset": 5}  # the caller's reference is left as it was
        handles: list[Future] = [pool.submit(0, "add", [1], ref) for _ in range(3)]
        assert pool.results(handles) == [[6]] * 3
        assert pool.call_all("state")[0]["fetches"] == 1


def test_map_keeps_order_and_wait_takes_the_first_finished() -> None:
    with WorkerPool(Tally, (0,), workers=2, backend="processes") as pool:
        pool.call_all("state")  # both processes up
        # batches that finish out of order: the early ones sleep longest
        sleeps = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
        handles = [pool.submit(i % 2, "add", [i], None, s) for i, s in enumerate(sleeps)]
        assert pool.results(handles) == [[i] for i in range(6)]
        assert pool.map("add", [[i] for i in range(7)]) == [[i] for i in range(7)]
        slow, fast = pool.submit(0, "add", [1], None, 1.0), pool.submit(1, "add", [2])
        handle, result = pool.wait([slow, fast])
        assert handle is fast and result == [2]
        assert pool.wait([slow]) == (slow, [1])


def test_imap_feeds_each_worker_as_its_calls_finish() -> None:
    """A worker held up by a long call does not hold the rest: the other takes the short calls as
    it finishes them (a split made up front would leave half of them behind the long one)."""
    with WorkerPool(Tally, (0,), workers=2, backend="processes") as pool:
        pool.call_all("state")  # both processes up
        calls = [([0], None, 1.5)] + [([i], None, 0.02) for i in range(1, 10)]
        got = list(pool.imap("add", calls, inflight=1))
        assert sorted(i for i, _ in got) == list(range(10)) and all(r == [i] for i, r in got)
        assert got[-1][0] == 0  # as they finish: the long call last
        assert [s["calls"] for s in pool.call_all("state")] == [1, 9]
        with pytest.raises(ValueError, match="inflight must be >= 1"):
            next(pool.imap("add", calls, inflight=0))
        with pytest.raises(ValueError, match="tally failed"):  # a call's error comes with its result
            list(pool.imap("fail", [()]))
    with WorkerPool(Tally, (3,), workers=0) as pool:  # in-process: each call runs as it is sent
        assert sorted(pool.imap("add", [([1],), ([2],), ([3],)])) == [(0, [4]), (1, [5]), (2, [6])]


def test_in_process_with_no_workers() -> None:
    CLOSED.clear()
    pool = WorkerPool(Tally, (3,), workers=0, backend="ray")  # any backend: no Ray started for workers=0
    try:
        h = pool.submit(0, "add", [1])
        assert h.done()  # ran synchronously in submit
        assert pool.wait([h]) == (h, [4])
        assert pool.map("add", [[1], [2], [3]]) == [[4], [5], [6]]
        assert pool.call_all("state")[0]["pid"] == os.getpid()
        ref = pool.put({"offset": 1})
        assert ref[0].obj is not None and pool.map("add", [[0]], ref) == [[4]]
    finally:
        pool.close()
    assert CLOSED == [3]  # the instance's close() was called ...
    pool.close()
    assert CLOSED == [3]  # ... once


def test_bad_backend_and_address_without_ray_are_refused_in_one_line() -> None:
    assert BACKENDS == ("ray", "processes")
    with pytest.raises(ValueError) as e:
        WorkerPool(Tally, (0,), workers=2, backend="bogus")
    assert str(e.value) == "unknown backend 'bogus'; choose one of ray, processes"
    with pytest.raises(ValueError) as e:
        WorkerPool(Tally, (0,), workers=2, backend="processes", address="127.0.0.1:6379")
    assert str(e.value).startswith("--address joins a Ray cluster") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown backend"):
        WorkerPool(Tally, (0,), workers=0, backend="bogus")  # refused even in-process
    with pytest.raises(ValueError, match="workers must be >= 0"):
        WorkerPool(Tally, (0,), workers=-1, backend="processes")
    check_backend("ray", "127.0.0.1:6379")


@pytest.mark.parametrize("kind", ["in-process", "processes", "ray"])
def test_close_is_idempotent(kind: str, request: pytest.FixtureRequest) -> None:
    pool = _pool(kind, request, workers=1)
    assert pool.map("add", [[1]]) == [[11]]
    pool.close()
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(0, "add", [1])
    with _pool(kind, request, workers=1) as pool:
        pass
    pool.close()  # after the with block closed it


def test_a_local_ray_listens_on_loopback_only(ray_session) -> None:
    import ipaddress

    import psutil

    ray = ray_session
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # workers are up
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    me = psutil.Process()
    listening = []
    for p in [me, *me.children(recursive=True)]:  # the driver, GCS, raylet, workers, agents
        try:
            listening += [(p.name(), c.laddr.ip) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    names = {n for n, _ in listening}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
    for name, ip in listening:
        addr = ipaddress.ip_address(ip)
        addr = addr.ipv4_mapped or addr if isinstance(addr, ipaddress.IPv6Address) else addr
        assert addr.is_loopback, (name, ip)


def test_a_local_rays_workers_run_at_the_drivers_priority(ray_session) -> None:
    """Ray renices its workers to 15; a local run's workers are its work, so they keep the driver's."""
    from worldlab.ray_utils import LOCAL_WORKER_NICENESS

    ray = ray_session
    driver = os.nice(0)
    assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == driver + LOCAL_WORKER_NICENESS == driver


def test_a_local_ray_that_does_not_start_says_one_line_after_a_second_try() -> None:
    """A machine too busy for Ray's 30 s node start (seen beside a long run): tried again, then one
    line naming the fixes, not Ray's traceback. In a child process: the shared Ray stays untouched."""
    import subprocess

    code = (
        "import ray\n"
        "from worldlab.ray_utils import init_ray\n"
        "calls = []\n"
        "def busy(**kw):\n"
        "    calls.append(kw)\n"
        "    raise Exception('The current node timed out during startup. This could happen because...')\n"
        "ray.init = busy\n"
        "try:\n"
        "    init_ray(num_cpus=1)\n"
        "except ConnectionError as e:\n"
        "    print(len(calls), e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = out.stdout.strip()
    assert line.startswith("2 a local Ray did not start (2 tries): The current node timed out during startup."), out
    assert "\n" not in line and "--resume" in line and "--backend processes" in line
