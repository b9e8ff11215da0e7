"""The world-model stages of a run: train V, encode every episode, train M.

Each stage reads and writes the run folder only, is skipped when its output is complete, and
resumes after a kill (the training loop's resumable checkpoint; encode's per-episode shards)::

    RUN/data/                 frame shards + manifest (from collection)
    RUN/checkpoints/vae.pt    train_vae   (resumable state: checkpoints/vae.train.pt)
    RUN/latents/              encode      (one latent shard per episode + manifest)
    RUN/checkpoints/mdrnn.pt  train_mdrnn (resumable state: checkpoints/mdrnn.train.pt)
    RUN/samples/              V's reconstruction and sample grids (PNG)

Held-out episodes (``holdout``) are kept out of V's and M's training and recorded in the
checkpoints' meta for the fidelity report.

With ``train_workers=N > 1`` V and M train on N Ray Train workers (DDP, see
:mod:`worldlab.distributed`): worker r streams the training episodes ``r::N`` in batches of
``batch_size // N`` (the global batch stays ``batch_size``), and only rank 0 writes the same
checkpoints as a single-process run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from worldlab.distributed import check_train_workers, train_distributed
from worldlab.io import torch_load
from worldlab.logging import RunLogger
from worldlab.mdrnn import MDRNN, MDRNNConfig
from worldlab.storage import Manifest, ShardStream, load_shard, split_episodes, write_shard
from worldlab.training import TrainConfig, train
from worldlab.vae import ConvVAE, VAEConfig, image_grid, save_png, to_uint8_hwc
from worldlab.world_model import WorldModelError, action_dim_of, checkpoint_paths

LATENT_KEYS = ("actions", "rewards", "terminated", "truncated", "seed")


def _data_meta(run_dir: Path) -> tuple[Manifest, dict[str, Any]]:
    m = Manifest.open(run_dir / "data")
    if m.num_episodes == 0:
        raise ValueError(f"{run_dir / 'data'} holds no episodes; collect rollouts first")
    return m, m.meta


def _check_train_state(path: Path, config: dict[str, Any], what: str) -> None:
    """Refuse to resume a training checkpoint made for another architecture."""
    if not path.exists():
        return
    state = torch_load(path)
    old = state.get("config") if isinstance(state, dict) else None
    if old is not None and old != config:
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise WorldModelError(f"{path} was trained with another {what} config (differs in {diff}); "
                              f"delete it to start over, or pass the same config")


def _check_shares(train_workers: int, batch_size: int, episodes: list[int], what: str,
                  manifest: Manifest | None = None) -> None:
    """Every worker needs episodes of its own, a batch of at least one and (V: ``manifest``, whole
    batches only) enough frames for one batch; checked here rather than in the workers."""
    if train_workers > len(episodes):
        raise ValueError(f"{what} on {train_workers} training workers needs at least {train_workers} training "
                         f"episodes, the data has {len(episodes)}; collect more or lower --train-workers")
    if batch_size < train_workers:
        raise ValueError(f"{what}: a batch of {batch_size} cannot be split over {train_workers} training workers; "
                         f"raise the batch size or lower --train-workers")
    if manifest is not None:
        frames = min(sum(manifest.episodes[i]["length"] + 1 for i in episodes[r::train_workers])
                     for r in range(train_workers))
        if frames < batch_size // train_workers:
            raise ValueError(f"{what}: a worker's share of the data holds {frames} frames, less than its batch of "
                             f"{batch_size // train_workers}; collect more, lower the batch size or --train-workers")


def _fit(model: Any, make_data: Callable[..., Any], train_cfg: TrainConfig, stage: str, run_dir: Path,
         state_path: Path, train_workers: int, tensorboard: bool, device: Any,
         on_sample: Callable[[Any, int], None] | None, extra_state: Callable[[], dict[str, Any]], progress: bool,
         address: str | None) -> dict[str, Any]:
    """Train a stage's model in this process, or on ``train_workers`` Ray Train workers (DDP).

    ``make_data(rank=, world_size=)`` builds one worker's batches. Returns what the stage adds to
    its checkpoint's meta (the worker count when distributed).
    """
    if train_workers > 1:
        train_distributed(model, make_data, train_cfg, workers=train_workers, checkpoint_path=state_path,
                          make_logger=partial(RunLogger, run_dir, stage, tensorboard), device=device,
                          on_sample=on_sample, extra_state=extra_state, desc=stage, progress=progress,
                          address=address)
        return {"train_workers": train_workers}
    logger = RunLogger(run_dir, stage, tensorboard=tensorboard)
    try:
        train(model, make_data(), train_cfg, checkpoint_path=state_path, logger=logger, device=device,
              on_sample=on_sample, extra_state=extra_state, desc=stage, progress=progress)
    finally:
        logger.close()
    return {}


def vae_batches(run_dir: Path, episodes: list[int], batch_size: int, shuffle_shards: int, seed: int,
                num_workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """V's training batches: frames (B, 3, 64, 64) uint8 streamed from ``RUN/data``.

    With ``world_size > 1`` the batches of worker ``rank``: the episodes ``rank::world_size`` in
    batches of ``batch_size // world_size``.
    """
    stream = ShardStream(run_dir / "data", mode="frames", episodes=episodes[rank::world_size],
                         shuffle_shards=shuffle_shards, seed=seed)
    return DataLoader(stream, batch_size=batch_size // world_size, drop_last=True, num_workers=num_workers)


def mdrnn_batches(run_dir: Path, episodes: list[int], batch_size: int, seq_len: int, seed: int,
                  num_workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """M's training batches: latent windows of ``seq_len`` steps streamed from ``RUN/latents``.

    With ``world_size > 1`` the batches of worker ``rank``: the episodes ``rank::world_size`` in
    batches of ``batch_size // world_size``.
    """
    stream = ShardStream(run_dir / "latents", mode="sequences", episodes=episodes[rank::world_size],
                         seq_len=seq_len, seed=seed, keys=("mu", "logvar", "actions", "rewards", "terminated"))
    return DataLoader(stream, batch_size=batch_size // world_size, num_workers=num_workers)


def train_vae(run_dir: str | os.PathLike, model_cfg: VAEConfig | None = None, train_cfg: TrainConfig | None = None,
              *, batch_size: int = 64, holdout: float = 0.1, split_seed: int = 0, shuffle_shards: int = 16,
              num_workers: int = 0, device: str | torch.device = "cpu", progress: bool = True,
              tensorboard: bool = True, train_workers: int = 1, address: str | None = None) -> ConvVAE:
    """Train V on the frames of ``RUN/data`` (streamed) and write ``RUN/checkpoints/vae.pt``.

    Skipped when ``vae.pt`` already holds ``train_cfg.steps`` steps. ``model_cfg`` defaults to the
    data's ``z_size``. Writes reconstruction / sample grids to ``RUN/samples/vae_*.png``.
    ``train_workers > 1`` trains on that many Ray Train workers (Ray at ``address``, or local).
    """
    check_train_workers(train_workers)
    run_dir = Path(run_dir)
    manifest, meta = _data_meta(run_dir)
    model_cfg = model_cfg or VAEConfig(z_size=int(meta.get("z_size", 32)))
    train_cfg = train_cfg or TrainConfig(steps=2000, lr=1e-3, amp="auto")
    vae_path, _ = checkpoint_paths(run_dir)
    state_path = vae_path.with_name("vae.train.pt")
    if vae_path.exists():
        done = ConvVAE.load(vae_path, device)
        if done.meta.get("steps", 0) >= train_cfg.steps and asdict(done.config) == asdict(model_cfg):
            return done
    _check_train_state(state_path, asdict(model_cfg), "V")
    train_eps, held = split_episodes(manifest, holdout, split_seed)
    probe = _probe_frames(run_dir / "data", held or train_eps, 16)
    model = ConvVAE(model_cfg)
    samples = run_dir / "samples"

    def on_sample(m: torch.nn.Module, step: int) -> None:
        vae: ConvVAE = m  # type: ignore[assignment]
        rec = to_uint8_hwc(vae.reconstruct(probe.to(vae.device)))  # (16, 64, 64, 3)
        real = probe.permute(0, 2, 3, 1).numpy()
        save_png(samples / "vae_recon.png", image_grid(np.concatenate([real, rec]), nrow=16))
        save_png(samples / "vae_samples.png", image_grid(to_uint8_hwc(vae.sample(32, generator=0)), nrow=8))

    if train_workers > 1:
        _check_shares(train_workers, batch_size, train_eps, "V", manifest)
    extra = _fit(model, partial(vae_batches, run_dir, train_eps, batch_size, shuffle_shards, train_cfg.seed,
                                num_workers), train_cfg, "vae", run_dir, state_path, train_workers, tensorboard,
                 device, on_sample, lambda: {"config": asdict(model_cfg)}, progress, address)
    model.save(vae_path, {"task": meta.get("task"), "steps": train_cfg.steps, "heldout": held,
                          "train_config": asdict(train_cfg), **extra})
    return ConvVAE.load(vae_path, device)


def _probe_frames(data_dir: Path, episodes: list[int], n: int) -> torch.Tensor:
    """``n`` frames spread over the first of ``episodes``, uint8 (n, 3, 64, 64)."""
    m = Manifest.open(data_dir)
    ep = load_shard(data_dir / m.episodes[episodes[0]]["file"], m.episodes[episodes[0]]["sha256"])
    obs = ep["obs"]
    idx = np.linspace(0, len(obs) - 1, n).round().astype(int)
    return torch.from_numpy(obs[idx]).permute(0, 3, 1, 2).contiguous()


def encode(run_dir: str | os.PathLike, *, batch_size: int = 256, device: str | torch.device = "cpu",
           progress: bool = True) -> Manifest:
    """Encode every frame shard of ``RUN/data`` into a latent shard of ``RUN/latents`` (mu, logvar).

    Resumable: episodes already encoded by the same V (and from the same frame shard) are skipped.
    When V changed since the last encode, every episode is encoded again.
    """
    run_dir = Path(run_dir)
    data, meta = _data_meta(run_dir)
    vae_path, _ = checkpoint_paths(run_dir)
    vae = ConvVAE.load(vae_path, device)
    vae_id = vae.meta.get("id")
    out_dir = run_dir / "latents"
    lat = Manifest(out_dir, kind="latents")
    if lat.meta.get("vae_id") != vae_id:
        lat.episodes = {}
    lat.meta = {**meta, "vae_id": vae_id, "z_size": vae.z_size}
    out_dir.mkdir(parents=True, exist_ok=True)
    lat.save()
    todo = [i for i, e in sorted(data.episodes.items())
            if lat.episodes.get(i, {}).get("source_sha256") != e["sha256"]]
    for i in tqdm(todo, desc="encode", disable=not progress, dynamic_ncols=True):
        info = data.episodes[i]
        ep = load_shard(data.dir / info["file"], info["sha256"])
        obs = torch.from_numpy(ep["obs"])  # (T+1, 64, 64, 3) uint8
        mus, logvars = [], []
        with torch.inference_mode():
            for s in range(0, obs.shape[0], batch_size):
                mu, logvar = vae.encode(obs[s:s + batch_size])
                mus.append(mu.cpu())
                logvars.append(logvar.cpu())
        arrays = {"mu": torch.cat(mus).numpy(), "logvar": torch.cat(logvars).numpy()}  # (T+1, Z) each
        arrays.update({k: ep[k] for k in LATENT_KEYS if k in ep})
        entry = write_shard(out_dir, i, arrays)
        entry["source_sha256"] = info["sha256"]
        lat.add(i, entry)
    stale = [i for i in lat.episodes if i not in data.episodes]
    for i in stale:
        del lat.episodes[i]
    if stale:
        lat.save()
    return lat


def start_bank(latents_dir: str | os.PathLike, episodes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoded first frames of real episodes: (mu, logvar), each (N, Z)."""
    m = Manifest.open(latents_dir)
    ids = sorted(m.episodes) if episodes is None else episodes
    mus, logvars = [], []
    for i in ids:
        ep = load_shard(m.dir / m.episodes[i]["file"], m.episodes[i]["sha256"])
        mus.append(ep["mu"][0])
        logvars.append(ep["logvar"][0])
    return torch.from_numpy(np.stack(mus)), torch.from_numpy(np.stack(logvars))


def train_mdrnn(run_dir: str | os.PathLike, model_cfg: MDRNNConfig | None = None,
                train_cfg: TrainConfig | None = None, *, batch_size: int = 16, seq_len: int = 64,
                holdout: float = 0.1, split_seed: int = 0, num_workers: int = 0,
                device: str | torch.device = "cpu", progress: bool = True, tensorboard: bool = True,
                train_workers: int = 1, address: str | None = None) -> MDRNN:
    """Train M on the latent windows of ``RUN/latents`` and write ``RUN/checkpoints/mdrnn.pt``.

    The checkpoint carries the task metadata, the start bank (first latents of the training
    episodes) and V's id. Skipped when ``mdrnn.pt`` already holds ``train_cfg.steps`` steps for the
    current V; a training state left by a different V is discarded (its latents are stale).
    ``train_workers > 1`` trains on that many Ray Train workers (Ray at ``address``, or local).
    """
    check_train_workers(train_workers)
    run_dir = Path(run_dir)
    lat = Manifest.open(run_dir / "latents")
    meta = lat.meta
    vae_path, m_path = checkpoint_paths(run_dir)
    vae_id = ConvVAE.load(vae_path).meta.get("id")
    if meta.get("vae_id") != vae_id or len(lat) == 0:
        raise WorldModelError(f"{run_dir / 'latents'} is not encoded with the current V; run the encode stage first")
    space = meta.get("action_space")
    if space is None:
        raise WorldModelError(f"{lat.path} lacks meta.action_space; the data manifest must record the task's action space")
    adim, discrete = action_dim_of(space)
    model_cfg = model_cfg or MDRNNConfig(z_size=int(meta["z_size"]), action_dim=adim, discrete_actions=discrete,
                                         hidden=int(meta.get("rnn_hidden", 256)))
    if (model_cfg.z_size, model_cfg.action_dim, model_cfg.discrete_actions) != (int(meta["z_size"]), adim, discrete):
        raise WorldModelError(f"MDRNNConfig(z_size={model_cfg.z_size}, action_dim={model_cfg.action_dim}) does not fit "
                              f"the latents (z_size={meta['z_size']}) and action space {space}")
    train_cfg = train_cfg or TrainConfig(steps=2000, lr=1e-3)
    state_path = m_path.with_name("mdrnn.train.pt")
    if m_path.exists():
        done = MDRNN.load(m_path, device)
        if (done.meta.get("steps", 0) >= train_cfg.steps and done.meta.get("vae_id") == vae_id
                and asdict(done.config) == asdict(model_cfg)):
            return done
    if state_path.exists() and torch_load(state_path).get("vae_id") != vae_id:
        state_path.unlink()  # trained on latents of an older V: start over
    _check_train_state(state_path, asdict(model_cfg), "M")
    train_eps, held = split_episodes(lat, holdout, split_seed)
    model = MDRNN(model_cfg)
    if train_workers > 1:
        _check_shares(train_workers, batch_size, train_eps, "M")
    extra = _fit(model, partial(mdrnn_batches, run_dir, train_eps, batch_size, seq_len, train_cfg.seed, num_workers),
                 train_cfg, "mdrnn", run_dir, state_path, train_workers, tensorboard, device, None,
                 lambda: {"config": asdict(model_cfg), "vae_id": vae_id}, progress, address)
    bank_mu, bank_logvar = start_bank(run_dir / "latents", train_eps)
    model.save(m_path, {"task": meta.get("task"), "action_space": space,
                        "max_episode_steps": int(meta.get("max_episode_steps", 1000)), "vae_id": vae_id,
                        "start_mu": bank_mu, "start_logvar": bank_logvar, "steps": train_cfg.steps,
                        "heldout": held, "seq_len": seq_len, "train_config": asdict(train_cfg), **extra})
    return MDRNN.load(m_path, device)
