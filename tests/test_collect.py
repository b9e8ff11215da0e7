"""Rollout collection: shards, manifest, resume after a kill, corruption, errors, Ray workers, the
feeding loop over a worker pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.collect import collect, episode_seed
from agents.pool import WorkerPool
from worldlab.storage import CorruptShardError, Manifest, ShardStream, load_shard

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_episode_steps": 40}


def test_tiny_data_shards(tiny_data: Path) -> None:
    m = Manifest.open(tiny_data)
    assert m.num_episodes == 6 and m.meta["task"] == "car_racing"
    assert m.meta["action_space"]["type"] == "box" and m.meta["z_size"] == 32
    for path, sha in m.files():
        ep = load_shard(path, sha)
        T = ep["rewards"].shape[0]
        assert ep["obs"].shape == (T + 1, 64, 64, 3) and ep["obs"].dtype == np.uint8
        assert ep["actions"].shape == (T, 3) and ep["actions"].dtype == np.float32
        assert ep["terminated"].dtype == bool and (ep["terminated"][-1] or ep["truncated"][-1])
    seeds = {e["seed"] for e in m.episodes.values()}
    assert len(seeds) == 6


def test_stream_reader(tiny_data: Path) -> None:
    m = Manifest.open(tiny_data)
    frames = list(ShardStream(tiny_data, mode="frames", seed=1))
    assert len(frames) == m.num_steps + m.num_episodes
    assert frames[0].shape == (3, 64, 64) and frames[0].dtype == torch.uint8
    seqs = list(ShardStream(tiny_data, mode="sequences", seq_len=32))
    assert all(s["obs"].shape == (33, 64, 64, 3) and s["actions"].shape == (32, 3) for s in seqs)
    assert sum(int(s["mask"].sum()) for s in seqs) >= m.num_steps
    loader = torch.utils.data.DataLoader(ShardStream(tiny_data, mode="frames"), batch_size=64, num_workers=2)
    assert sum(b.shape[0] for b in loader) == m.num_steps + m.num_episodes


def test_cached_sequences_are_the_same_windows_and_keep_to_their_budget(tiny_data: Path) -> None:
    keys = ("actions", "rewards", "terminated")

    def passes(stream: ShardStream, n: int = 3) -> list[list[dict[str, torch.Tensor]]]:
        out = []
        for epoch in range(n):
            stream.set_epoch(epoch)
            out.append(list(stream))
        return out

    plain = passes(ShardStream(tiny_data, mode="sequences", seq_len=32, seed=2, keys=keys))
    cached_stream = ShardStream(tiny_data, mode="sequences", seq_len=32, seed=2, keys=keys, cache_bytes=1 << 30)
    tight = ShardStream(tiny_data, mode="sequences", seq_len=32, seed=2, keys=keys, cache_bytes=5_000)  # room for 2 of the 6 episodes
    for other in (passes(cached_stream), passes(tight)):
        assert len(other) == len(plain) and plain[0] != [] and plain[0][0].keys() == other[0][0].keys()
        for a, b in zip(plain, other, strict=True):
            assert len(a) == len(b)
            assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    assert len(cached_stream._cache) == Manifest.open(tiny_data).num_episodes  # every episode, only its keys
    assert all(set(ep) == set(keys) for ep in cached_stream._cache.values())
    assert 0 < tight._cached <= 5_000 and len(tight._cache) < len(cached_stream._cache)
    import pickle

    copy = pickle.loads(pickle.dumps(cached_stream))  # what a spawned loader worker gets: no cache to ship
    assert copy._cache == {} and copy._cached == 0 and copy.cache_bytes == cached_stream.cache_bytes
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        ShardStream(tiny_data, mode="sequences", cache_bytes=-1)


def test_same_seed_same_data_any_worker_count(tmp_path: Path, ray_session) -> None:
    a = collect("car_racing", tmp_path / "a", 3, workers=0, seed=5, env_kwargs=SHORT, progress=False)
    b = collect("car_racing", tmp_path / "b", 3, workers=2, seed=5, env_kwargs=SHORT, progress=False)
    for i in range(3):
        assert a.episodes[i]["sha256"] == b.episodes[i]["sha256"]
        assert a.episodes[i]["seed"] == episode_seed(5, i)


def test_random_controller_policy(tmp_path: Path) -> None:
    """The paper's data policy: untrained V and M, a fresh random linear controller per episode."""
    a = collect("car_racing", tmp_path / "a", 2, workers=0, policy="random_controller", seed=1, env_kwargs=SHORT,
                progress=False)
    b = collect("car_racing", tmp_path / "b", 2, workers=0, policy="random_controller", seed=1, env_kwargs=SHORT,
                progress=False)
    assert [a.episodes[i]["sha256"] for i in range(2)] == [b.episodes[i]["sha256"] for i in range(2)]
    acts = [load_shard(p, s)["actions"] for p, s in a.files()]
    assert not np.array_equal(acts[0], acts[1])  # a different controller each episode
    for x in acts:
        assert (x[:, 0] >= -1).all() and (x[:, 0] <= 1).all() and (x[:, 1:] >= 0).all() and (x[:, 1:] <= 1).all()
    assert a.meta["policy"] == "random_controller"


def test_policy_travels_to_ray_workers_per_call(tmp_path: Path, ray_session) -> None:
    """Ray actors get the policy with each call ([ObjectRef], fetched once per actor), not in their
    constructor: the same shards as in-process collection, for a policy that carries V and M."""
    a = collect("car_racing", tmp_path / "a", 2, workers=0, policy="random_controller", seed=3, env_kwargs=SHORT,
                progress=False)
    b = collect("car_racing", tmp_path / "b", 2, workers=2, policy="random_controller", seed=3, env_kwargs=SHORT,
                progress=False)
    assert [a.episodes[i]["sha256"] for i in range(2)] == [b.episodes[i]["sha256"] for i in range(2)]
    from agents.collect import RolloutWorker

    w = RolloutWorker("car_racing", None, SHORT)
    try:
        with pytest.raises(RuntimeError, match="no policy"):
            w.collect(0, 1)
    finally:
        w.close()


class _FakePool:
    """Stands in for a WorkerPool: finishes calls out of order (newest first) and tracks the calls
    each worker has in flight."""

    size = 3
    imap = WorkerPool.imap  # the scheduling under test: WorkerPool's, over this pool's submit and wait

    def __init__(self) -> None:
        self.pending: dict[object, tuple[int, tuple]] = {}
        self.in_flight = [0] * self.size
        self.most = [0] * self.size

    def submit(self, worker: int, method: str, *args: object) -> object:
        handle = object()
        self.pending[handle] = (worker, args)
        self.in_flight[worker] += 1
        self.most[worker] = max(self.most[worker], self.in_flight[worker])
        assert method == "collect"
        return handle

    def wait(self, handles: list[object]) -> tuple[object, tuple]:
        handle = handles[-1]
        worker, (index, seed, ref) = self.pending.pop(handle)
        self.in_flight[worker] -= 1
        return handle, (index, ref, {"seed": seed})


def test_feed_keeps_two_episodes_in_flight_per_worker() -> None:
    from agents.collect import _feed

    pool, got = _FakePool(), []
    _feed(pool, ["ref"], list(range(4, 15)), 9, lambda i, ref, info: got.append((i, ref, info["seed"])))
    assert sorted(got) == [(i, ["ref"], episode_seed(9, i)) for i in range(4, 15)]  # each once, its own seed
    assert pool.most == [2, 2, 2] and pool.in_flight == [0, 0, 0] and not pool.pending


def test_corrupt_shard_is_rejected(tmp_path: Path) -> None:
    m = collect("car_racing", tmp_path / "d", 2, workers=0, env_kwargs=SHORT, progress=False)
    path = tmp_path / "d" / m.episodes[1]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=f"shard {path} is corrupt"):
        list(ShardStream(tmp_path / "d", mode="frames", shuffle=False))


def test_resume_after_kill(tmp_path: Path) -> None:
    out = tmp_path / "k"
    cmd = [sys.executable, str(ROOT / "scripts" / "collect.py"), "car_racing", "--episodes", "8", "--workers", "0",
           "--out", str(out), "--max-steps", "60", "--no-progress", "--seed", "3"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("ep_*.npz"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = {p.name for p in out.glob("ep_*.npz")}
    assert 3 <= len(partial) < 8, partial
    subprocess.run(cmd, check=True)
    m = Manifest.open(out)
    assert sorted(m.episodes) == list(range(8))
    assert len({e["file"] for e in m.episodes.values()}) == 8
    ref = collect("car_racing", tmp_path / "ref", 8, workers=0, seed=3, env_kwargs={"max_episode_steps": 60},
                  progress=False)
    assert [m.episodes[i]["sha256"] for i in range(8)] == [ref.episodes[i]["sha256"] for i in range(8)]
    for path, sha in m.files():
        load_shard(path, sha)


@pytest.mark.parametrize(("args", "message"), [
    (["--episodes", "0", "--out", "{tmp}/x"], "--episodes must be >= 1"),
    (["--episodes", "2", "--out", "{tmp}/missing/x"], "the parent of the output folder does not exist"),
])
def test_bad_arguments(tmp_path: Path, args: list[str], message: str, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    r = cli("collect.py", "car_racing", *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_task_cli(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    r = cli("collect.py", "car_racin", "--episodes", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown task 'car_racin'" in r.stderr


def test_a_missing_or_damaged_shard_is_collected_again(tmp_path: Path) -> None:
    from agents.collect import collect
    from worldlab.storage import Manifest

    out = tmp_path / "data"
    collect("car_racing", out, 3, workers=0, env_kwargs={"max_episode_steps": 20}, progress=False)
    m = Manifest(out)
    original = {i: (out / m.episodes[i]["file"]).read_bytes() for i in range(3)}
    (out / m.episodes[0]["file"]).unlink()  # missing
    damaged = bytearray(original[2])
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte
    (out / m.episodes[2]["file"]).write_bytes(bytes(damaged))
    assert Manifest(out).drop_damaged(verify=False) == [0]  # without hashing only the missing one is seen
    collect("car_racing", out, 3, workers=0, env_kwargs={"max_episode_steps": 20}, progress=False)
    m = Manifest(out)
    assert sorted(m.episodes) == [0, 1, 2]
    # the same seeds play the same episodes: the very bytes come back
    assert all((out / m.episodes[i]["file"]).read_bytes() == original[i] for i in range(3))


def test_the_m_training_benchmark_times_both_streams(tmp_path: Path) -> None:
    """benchmarks/m_train.py: batches and training steps from disk and cached, the figures in its JSON."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/m_train.py", "--episodes", "12", "--mean-length", "80", "--hidden",
                          "16", "--z", "8", "--batch", "4", "--seq-len", "16", "--batches", "5", "--steps", "2",
                          "--rounds", "1", "--threads", "1", "--json", str(tmp_path / "m.json")],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "m.json").read_text())
    assert set(res["batch_ms"]) == set(res["step_ms"]) == {"disk", "cached"}
    assert all(v > 0 for v in (*res["batch_ms"].values(), *res["step_ms"].values()))
    assert 0 < res["cached_mb"] < 1 and res["batch_speedup"] > 0 and "M's batches" in out.stdout
    bad = subprocess.run([sys.executable, "benchmarks/m_train.py", "--episodes", "0"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "every size must be >= 1" in bad.stderr
