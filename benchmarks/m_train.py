"""Benchmark: M's training step with its latent episodes read from disk each pass, or kept in memory.

    python benchmarks/m_train.py                      # Doom sizes: 300 episodes, z 64, LSTM 512
    python benchmarks/m_train.py --json benchmarks/results/m_train.json

M trains on windows of latent episodes (``mdrnn_batches``: ``ShardStream(mode="sequences")``).
Read from disk, every pass over the data loads each episode's shard again, checks its SHA-256 and
decompresses it; with ``cache_bytes`` (the pipeline's ``M_CACHE_BYTES``) the episodes read once stay
in memory (Doom's 300 are ~60 MB) and later passes only cut windows. The batches are the same
either way (``tests/test_collect.py``).

A latents folder like a Doom default run's round 0 is written to a temp folder first (``--episodes``
episodes of random latents with lengths drawn around ``--mean-length``, z ``--z``, one action).
Then, in one process, interleaved round by round (the machines are shared: only same-sitting ratios
mean anything): the batches alone (``--batches`` of them, after one warm pass), then whole training
steps (batch, loss, backward, Adam) of an MDN-RNN of ``--hidden`` units for ``--steps`` steps. The
median round of each and the median of the per-round ratios are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_latents(folder: Path, episodes: int, mean_length: int, z: int, seed: int = 0) -> None:
    from worldlab.storage import Manifest, write_shard

    rng = np.random.default_rng(seed)
    m = Manifest(folder, kind="latents", meta={"z_size": z})
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(episodes):
        T = int(np.clip(rng.exponential(mean_length), 60, 2100))
        term = np.zeros(T, dtype=bool)
        term[-1] = True
        arrays = {"mu": rng.standard_normal((T + 1, z)).astype(np.float32),
                  "logvar": (rng.standard_normal((T + 1, z)) * 0.1 - 3).astype(np.float32),
                  "actions": rng.uniform(-1, 1, (T, 1)).astype(np.float32),
                  "rewards": np.ones(T, dtype=np.float32), "terminated": term, "truncated": np.zeros(T, dtype=bool),
                  "seed": np.int64(i)}
        m.add(i, write_shard(folder, i, arrays), save=False)
    m.save()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--mean-length", type=int, default=370, help="episodes' mean length (Doom's brownian: ~370)")
    p.add_argument("--z", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batches", type=int, default=200, help="batches timed per round, data alone")
    p.add_argument("--steps", type=int, default=60, help="training steps timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    if min(a.episodes, a.mean_length, a.z, a.hidden, a.batch, a.seq_len, a.batches, a.steps, a.rounds, a.threads) < 1:
        p.error("every size must be >= 1")
    torch.set_num_threads(a.threads)

    from agents.world_models.stages import M_CACHE_BYTES, mdrnn_batches
    from worldlab.mdrnn import MDRNN, MDRNNConfig
    from worldlab.training import cycle

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "latents"
        write_latents(folder, a.episodes, a.mean_length, a.z)
        eps = list(range(a.episodes))
        streams, datasets = {}, {}
        for name, cache in (("disk", 0), ("cached", M_CACHE_BYTES)):
            dl = mdrnn_batches(folder, eps, a.batch, a.seq_len, seed=0)
            dl.dataset.cache_bytes = cache
            datasets[name] = dl.dataset
            it = cycle(dl)
            for _ in range(len(dl.dataset) // a.batch + 1):  # one warm pass: the cache filled
                next(it)
            streams[name] = it
        torch.manual_seed(0)
        model = MDRNN(MDRNNConfig(z_size=a.z, action_dim=1, hidden=a.hidden))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        data_s: dict[str, list[float]] = {k: [] for k in streams}
        step_s: dict[str, list[float]] = {k: [] for k in streams}
        for _ in range(a.rounds):
            for name, it in streams.items():
                t = time.perf_counter()
                for _ in range(a.batches):
                    next(it)
                data_s[name].append((time.perf_counter() - t) / a.batches)
            for name, it in streams.items():
                t = time.perf_counter()
                for _ in range(a.steps):
                    loss = model.loss(next(it))["loss"]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                step_s[name].append((time.perf_counter() - t) / a.steps)
        cached_mb = datasets["cached"]._cached / 2**20
    res = {
        "episodes": a.episodes, "mean_length": a.mean_length, "z": a.z, "hidden": a.hidden, "batch": a.batch,
        "seq_len": a.seq_len, "threads": a.threads, "rounds": a.rounds, "cached_mb": cached_mb,
        "batch_ms": {k: 1e3 * statistics.median(v) for k, v in data_s.items()},
        "step_ms": {k: 1e3 * statistics.median(v) for k, v in step_s.items()},
        "batch_speedup": statistics.median(d / c for d, c in zip(data_s["disk"], data_s["cached"], strict=True)),
        "step_speedup": statistics.median(d / c for d, c in zip(step_s["disk"], step_s["cached"], strict=True)),
        "cpu": platform.processor() or platform.machine(), "load_average_1min": os.getloadavg()[0],
    }
    print(f"M's batches ({a.batch} windows of {a.seq_len}, {a.episodes} episodes, {cached_mb:.0f} MB cached): "
          f"{res['batch_ms']['disk']:.1f} ms from disk, {res['batch_ms']['cached']:.1f} ms cached "
          f"({res['batch_speedup']:.2f}x); whole training steps (LSTM {a.hidden}): {res['step_ms']['disk']:.0f} ms vs "
          f"{res['step_ms']['cached']:.0f} ms ({res['step_speedup']:.3f}x)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
