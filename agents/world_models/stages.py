"""The stages of the World Models algorithm, each a function of the run folder and the config.

Every stage reads and writes the run folder only (through :class:`~worldlab.rundir.RunDir`), is
skipped when its output is complete, and resumes after a kill (collection: the episodes the
manifest lacks; V and M: the training loop's resumable checkpoint; encode: per-episode shards;
evolution: the CMA-ES state saved after every generation)::

    collect_rollouts(run, cfg, k)      real episodes of round k          -> RUN/data/
    train_vision(run, cfg, k)          V (ConvVAE) on every frame so far -> checkpoints/vae.pt
    encode_latents(run, cfg, vae)      frames -> (mu, logvar)            -> RUN/latents/
    train_memory(run, cfg, vae_id)     M (MDN-RNN) on every latent       -> checkpoints/mdrnn.pt
                                       (an ensemble: train_memories       -> + mdrnn_m{k}.pt)
    evolve_controller(run, cfg, k, wm) CMA-ES on C in the dream / game   -> checkpoints/controller_r{k}.npz
    evaluate_controller(...)           C in the real game                -> eval.json
    record_videos(...)                 C in the real game and the dream  -> videos/

Held-out episodes (:data:`HOLDOUT` of them) are kept out of V's and M's training and recorded in
the checkpoints' meta for the fidelity report.

With ``cfg.train_workers = N > 1`` V and M train on N Ray Train workers (DDP, see
:mod:`worldlab.distributed`): worker r streams the training episodes ``r::N`` in batches of
``batch // N`` (the global batch stays the same), and only rank 0 writes the same checkpoints as
a single-process run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from agents.calibrate import calibrated_bias, expected_ends
from agents.cmaes import RESTART_DREAMS, CMAConfig, evolve
from agents.controller import (
    ControllerConfig,
    average_controllers,
    load_controller,
    save_controller,
)
from agents.evaluate import summarize_returns
from agents.fitness import (
    EVAL_GENERATION,
    GAP_GENERATION,
    PICK_GENERATION,
    SELECT_GENERATION,
    DreamFitness,
    RealFitness,
    generation_seeds,
)
from agents.policies import PolicySpec
from agents.watch import dream_frames, real_frames
from agents.world_models.config import SEQUENCE_BANK_MAX, RunConfig
from worldlab.distributed import train_distributed
from worldlab.fidelity import save_video
from worldlab.io import (
    atomic_torch_save,
    atomic_write_json,
    read_json,
    sha256_file,
    torch_load,
    weights_id,
)
from worldlab.logging import RunLogger
from worldlab.mdrnn import MDRNN
from worldlab.rundir import RunDir
from worldlab.sequence_m import M_CLASSES, SequenceM, describe_m, load_m, state_entries
from worldlab.storage import Manifest, ShardStream, load_shard, split_episodes, write_shard
from worldlab.training import TrainConfig, seeded, train
from worldlab.vae import ConvVAE, image_grid, save_png, to_uint8_hwc
from worldlab.world_model import WorldModel, WorldModelError, action_dim_of

if TYPE_CHECKING:
    from agents.fitness import RealPool

HOLDOUT = 0.1
"""fraction of the episodes kept out of V's and M's training (for the fidelity report)."""
SHUFFLE_SHARDS = 16
"""shards V's frame stream interleaves (a shuffle buffer over episodes)."""
ENCODE_BATCH = 256
"""frames V encodes per forward pass."""
LATENT_KEYS = ("actions", "rewards", "terminated", "truncated", "seed")
"""what a latent shard copies from its frame shard besides (mu, logvar)."""


def say(msg: str) -> None:
    """One timestamped progress line of the pipeline."""
    print(f"[worldlab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def file_digest(path: Path) -> str:
    """Short content hash of a file (which controller an ``eval.json`` scored)."""
    return sha256_file(path)[:16]


# -- collect ----------------------------------------------------------------------------------------


def collect_rollouts(run: RunDir | str | os.PathLike, cfg: RunConfig, k: int, *, address: str | None = None,
                     progress: bool = True) -> Manifest:
    """Round ``k``'s real episodes into ``RUN/data``: round 0 with ``collect.policy``, later rounds
    with round k-1's controller plus ``collect.noise_std`` exploration noise."""
    run = RunDir(run)
    from agents.collect import collect
    from agents.policies import policy_kwargs

    c = cfg.collect
    eps = c.round_episodes(k)
    if run.data_manifest.exists():
        manifest = Manifest(run.data)
        dropped = manifest.drop_damaged(eps, verify=c.verify)
        if dropped:
            say(f"round {k}: {len(dropped)} shard{'s' if len(dropped) > 1 else ''} missing or damaged "
                f"(episodes {', '.join(map(str, dropped[:5]))}{' ...' if len(dropped) > 5 else ''}): collected again")
        if all(i in manifest.episodes for i in eps):
            return manifest
    if k == 0:
        spec = PolicySpec(c.policy, {"seed": cfg.seed} if c.policy == "random_controller" else {})
    else:
        wm = WorldModel.load(run)
        ccfg, params, _ = load_controller(run.controller(k - 1))
        spec = PolicySpec("controller", policy_kwargs(wm, ccfg, params, c.noise_std, c.burst_prob, c.burst_steps))
    say(f"round {k}: collecting {len(eps)} real episodes ({spec.name}) with {cfg.workers} workers")
    env_kwargs = {"max_episode_steps": c.max_steps} if c.max_steps else {}
    return collect(cfg.task, run.data, len(eps), workers=cfg.workers, policy=spec, seed=cfg.seed, address=address,
                   env_kwargs=env_kwargs, progress=progress, start_index=eps.start, backend=cfg.backend,
                   verify=False)  # checked above


# -- V and M ----------------------------------------------------------------------------------------


def _data_manifest(run: RunDir) -> Manifest:
    m = Manifest.open(run.data)
    if m.num_episodes == 0:
        raise ValueError(f"{run.data} holds no episodes; collect rollouts first")
    return m


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


def _fit(model: Any, make_data: Callable[..., Any], train_cfg: TrainConfig, stage: str, run: RunDir,
         state_path: Path, cfg: RunConfig, on_sample: Callable[[Any, int], None] | None,
         extra_state: Callable[[], dict[str, Any]], progress: bool, tensorboard: bool,
         address: str | None) -> dict[str, Any]:
    """Train a stage's model in this process, or on ``cfg.train_workers`` Ray Train workers (DDP).

    ``make_data(rank=, world_size=)`` builds one worker's batches. Returns what the stage adds to
    its checkpoint's meta (the worker count when distributed).
    """
    device = torch.device(cfg.device)
    if cfg.train_workers > 1:
        train_distributed(model, make_data, train_cfg, workers=cfg.train_workers, checkpoint_path=state_path,
                          make_logger=partial(RunLogger, run, stage, tensorboard), device=device,
                          on_sample=on_sample, extra_state=extra_state, desc=stage, progress=progress,
                          address=address)
        return {"train_workers": cfg.train_workers}
    with RunLogger(run, stage, tensorboard=tensorboard) as logger:
        train(model, make_data(), train_cfg, checkpoint_path=state_path, logger=logger, device=device,
              on_sample=on_sample, extra_state=extra_state, desc=stage, progress=progress)
    return {}


def vae_batches(data_dir: Path, episodes: list[int], batch_size: int, shuffle_shards: int, seed: int,
                num_workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """V's training batches: frames (B, 3, 64, 64) uint8 streamed from the frame shards.

    With ``world_size > 1`` the batches of worker ``rank``: the episodes ``rank::world_size`` in
    batches of ``batch_size // world_size``.
    """
    stream = ShardStream(data_dir, mode="frames", episodes=episodes[rank::world_size],
                         shuffle_shards=shuffle_shards, seed=seed)
    return DataLoader(stream, batch_size=batch_size // world_size, drop_last=True, num_workers=num_workers)


M_CACHE_BYTES = 1 << 30
"""the latent episodes M's batches keep in memory after their first pass (1 GiB: every default run's)."""


def mdrnn_batches(latents_dir: Path, episodes: list[int], batch_size: int, seq_len: int, seed: int,
                  num_workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """M's training batches: latent windows of ``seq_len`` steps streamed from the latent shards.

    With ``world_size > 1`` the batches of worker ``rank``: the episodes ``rank::world_size`` in
    batches of ``batch_size // world_size``.
    """
    stream = ShardStream(latents_dir, mode="sequences", episodes=episodes[rank::world_size],
                         seq_len=seq_len, seed=seed, keys=("mu", "logvar", "actions", "rewards", "terminated"),
                         cache_bytes=M_CACHE_BYTES)
    return DataLoader(stream, batch_size=batch_size // world_size, num_workers=num_workers)


def vision_steps(cfg: RunConfig, k: int) -> int:
    """V's total training steps after round ``k``: V goes on training on each round's new frames,
    unless ``freeze_v`` keeps round 0's."""
    return cfg.vae_train.steps * (1 if cfg.freeze_v else k + 1)


def memory_steps(cfg: RunConfig, k: int) -> int:
    """M's total training steps after round ``k``: with ``finetune_m`` M goes on from the previous
    round's weights (``later_m_steps`` more each round, or ``mdrnn_train.steps``); otherwise it
    starts over each time V changed."""
    if not cfg.finetune_m:
        return cfg.mdrnn_train.steps
    return cfg.mdrnn_train.steps + k * (cfg.later_m_steps or cfg.mdrnn_train.steps)


def train_vision(run: RunDir | str | os.PathLike, cfg: RunConfig, k: int = 0, *, address: str | None = None, progress: bool = True,
                 tensorboard: bool = True) -> ConvVAE:
    """Train V (``cfg.vae``, ``cfg.vae_train``, batch ``cfg.vae_batch``) on the frames of ``RUN/data``
    (streamed) and write ``checkpoints/vae.pt``; returns V on ``cfg.device``.

    Skipped when ``vae.pt`` already holds :func:`vision_steps` steps of the same architecture.
    Writes reconstruction / sample grids to ``RUN/samples/vae_*.png``.
    """
    run = RunDir(run)
    manifest = _data_manifest(run)
    model_cfg = cfg.vae
    train_cfg = replace(cfg.vae_train, steps=vision_steps(cfg, k))
    if run.vae.exists():
        done = ConvVAE.load(run.vae, cfg.device)
        if done.meta.get("steps", 0) >= train_cfg.steps and asdict(done.config) == asdict(model_cfg):
            return done
    _check_train_state(run.vae_train, asdict(model_cfg), "V")
    train_eps, held = split_episodes(manifest, HOLDOUT, cfg.seed)
    probe = _probe_frames(manifest, held or train_eps, 16)
    model = seeded(lambda: ConvVAE(model_cfg), _member_seed(cfg.seed, 0, V_INIT))

    def on_sample(m: torch.nn.Module, step: int) -> None:
        vae: ConvVAE = m  # type: ignore[assignment]
        rec = to_uint8_hwc(vae.reconstruct(probe.to(vae.device)))  # (16, 64, 64, 3)
        real = probe.permute(0, 2, 3, 1).numpy()
        save_png(run.samples / "vae_recon.png", image_grid(np.concatenate([real, rec]), nrow=16))
        save_png(run.samples / "vae_samples.png", image_grid(to_uint8_hwc(vae.sample(32, generator=0)), nrow=8))

    if cfg.train_workers > 1:
        _check_shares(cfg.train_workers, cfg.vae_batch, train_eps, "V", manifest)
    say(f"round {k}: V (ConvVAE z={model_cfg.z_size}) to {train_cfg.steps} steps{_on_workers(cfg)}")
    extra = _fit(model, partial(vae_batches, run.data, train_eps, cfg.vae_batch, SHUFFLE_SHARDS, train_cfg.seed,
                                cfg.loader_workers), train_cfg, "vae", run, run.vae_train, cfg, on_sample,
                 lambda: {"config": asdict(model_cfg)}, progress, tensorboard, address)
    meta = {"task": manifest.meta.get("task"), "steps": train_cfg.steps, "heldout": held,
            "train_config": asdict(train_cfg), **extra}
    meta["id"] = weights_id(model.checkpoint_weights(), "V", meta["task"], train_cfg.steps)
    return _save_fresh(model, run.vae, meta, cfg.device)


def _save_fresh(model: ConvVAE | MDRNN, path: Path, meta: dict[str, Any], device: str) -> Any:
    """Write ``model``'s checkpoint and return the model rebuilt from it (the same module as a
    load from disk: fresh contiguous weights, ``meta`` attached, in eval mode on ``device``)."""
    state = model.checkpoint(meta)
    atomic_torch_save(state, path)
    return type(model).from_checkpoint(state, path).to(device).eval()


def _probe_frames(data: Manifest, episodes: list[int], n: int) -> torch.Tensor:
    """``n`` frames spread over the first of ``episodes``, uint8 (n, 3, 64, 64)."""
    info = data.episodes[episodes[0]]
    obs = load_shard(data.dir / info["file"], info["sha256"])["obs"]
    idx = np.linspace(0, len(obs) - 1, n).round().astype(int)
    return torch.from_numpy(obs[idx]).permute(0, 3, 1, 2).contiguous()


def encode_latents(run: RunDir | str | os.PathLike, cfg: RunConfig, vae: ConvVAE | None = None, *, progress: bool = True) -> Manifest:
    """Encode every frame shard of ``RUN/data`` with V into a latent shard of ``RUN/latents``
    (mu, logvar); ``vae``: V as :func:`train_vision` returned it (read from the run when None).

    Resumable: episodes already encoded by the same V (and from the same frame shard) are skipped.
    When V changed since the last encode, every episode is encoded again.
    """
    run = RunDir(run)
    data = _data_manifest(run)
    vae = vae if vae is not None else ConvVAE.load(run.vae, cfg.device)
    vae_id = vae.meta.get("id")
    lat = Manifest(run.latents, kind="latents")
    if lat.meta.get("vae_id") != vae_id:
        lat.episodes = {}
    lat.meta = {**data.meta, "vae_id": vae_id, "z_size": vae.z_size}
    run.latents.mkdir(parents=True, exist_ok=True)
    lat.save()
    todo = [i for i, e in sorted(data.episodes.items())
            if lat.episodes.get(i, {}).get("source_sha256") != e["sha256"]]
    if todo:
        say(f"encoding {len(todo)} episodes' frames to latents")
    for i in tqdm(todo, desc="encode", disable=not progress, dynamic_ncols=True):
        info = data.episodes[i]
        ep = load_shard(data.dir / info["file"], info["sha256"])
        obs = torch.from_numpy(ep["obs"])  # (T+1, 64, 64, 3) uint8
        mus, logvars = [], []
        with torch.inference_mode():
            for s in range(0, obs.shape[0], ENCODE_BATCH):
                mu, logvar = vae.encode(obs[s:s + ENCODE_BATCH])
                mus.append(mu.cpu())
                logvars.append(logvar.cpu())
        arrays = {"mu": torch.cat(mus).numpy(), "logvar": torch.cat(logvars).numpy()}  # (T+1, Z) each
        arrays.update({key: ep[key] for key in LATENT_KEYS if key in ep})
        entry = write_shard(run.latents, i, arrays)
        entry["source_sha256"] = info["sha256"]
        lat.add(i, entry)
    stale = [i for i in lat.episodes if i not in data.episodes]
    for i in stale:
        del lat.episodes[i]
    if stale:
        lat.save()
    return lat


def start_bank(latents: Manifest, episodes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoded first frames of real episodes: (mu, logvar), each (N, Z)."""
    ids = sorted(latents.episodes) if episodes is None else episodes
    mus, logvars = [], []
    for i in ids:
        ep = load_shard(latents.dir / latents.episodes[i]["file"], latents.episodes[i]["sha256"])
        mus.append(ep["mu"][0])
        logvars.append(ep["logvar"][0])
    return torch.from_numpy(np.stack(mus)), torch.from_numpy(np.stack(logvars))


def bootstrap_episodes(episodes: list[int], seed: int, k: int) -> list[int]:
    """Ensemble member ``k``'s training episodes: as many as ``episodes``, drawn from them with
    replacement by a generator seeded with ``(seed, k)`` (sorted; repeats are streamed repeatedly)."""
    rng = np.random.default_rng([int(seed), int(k), 0xB0075])
    return sorted(int(e) for e in rng.choice(np.asarray(episodes, dtype=np.int64), size=len(episodes), replace=True))


def m_training_episodes(cfg: RunConfig, train_eps: list[int], k: int) -> list[int]:
    """The episodes round ``k``'s M trains on (repeats are streamed repeatedly): the training split
    ``train_eps`` as it is, then, when ``k`` >= 1, the ones round ``k`` collected
    ``cfg.m_newest_repeat`` - 1 more times."""
    if k == 0 or cfg.m_newest_repeat <= 1:
        return list(train_eps)
    newest = set(cfg.collect.round_episodes(k))
    return [*train_eps, *(e for _ in range(cfg.m_newest_repeat - 1) for e in train_eps if e in newest)]


def _member_seed(seed: int, k: int, what: int) -> int:
    """A seed of ensemble member ``k`` (``what``: its initialisation, or its training)."""
    return int(np.random.SeedSequence([int(seed), int(k), int(what)]).generate_state(1)[0])


V_INIT, M_INIT = 0x5A1E, 0x1417  # what :func:`_member_seed` seeds: V's and M's initial weights


@torch.no_grad()
def mid_episode_bank(latents: Manifest, episodes: list[int], models: list[MDRNN], size: int, seed: int,
                     chunk: int = 256) -> dict[str, torch.Tensor]:
    """``size`` real mid-episode states for dreams to start from: episodes drawn from ``episodes``
    with replacement and a time ``t`` in each (uniform in 1..T-1 of its T steps; T for a one-step
    episode) by a generator seeded with ``seed``; at each, the latent ``(mu, logvar)`` of frame t
    and every model's LSTM state ``(h, c)`` after reading the episode's first t steps teacher-forced
    (z = the latents' means, the real actions). Returns ``{"mu", "logvar": (size, Z), "h", "c":
    (len(models), size, H)}`` as :class:`WorldModel` takes it (``mid_bank``). Episodes are read
    ``chunk`` at a time, each chunk's prefixes stepped as one batch."""
    rng = np.random.default_rng([int(seed), 0x31D])
    eps = rng.choice(np.asarray(episodes, dtype=np.int64), size=size, replace=True)
    steps = {int(e): int(latents.episodes[int(e)]["length"]) for e in set(eps.tolist())}
    ts = np.array([rng.integers(1, steps[int(e)]) if steps[int(e)] > 1 else steps[int(e)] for e in eps])
    cfg = models[0].config
    Z, H, dev = cfg.z_size, cfg.hidden, models[0].device
    one = state_entries(models[0], models[0].initial_state(1, "cpu"))  # each state tensor of one row
    out = {"mu": torch.zeros(size, Z), "logvar": torch.zeros(size, Z),
           **{key: torch.zeros(len(models), size, *v.shape[1:], dtype=v.dtype) for key, v in one.items()}}
    ids = sorted(steps)
    for c0 in range(0, len(ids), chunk):
        part = ids[c0:c0 + chunk]
        row = {e: i for i, e in enumerate(part)}
        picks = [j for j in range(size) if int(eps[j]) in row]  # the bank entries from this chunk's episodes
        T = int(ts[picks].max())
        x = torch.zeros(len(part), T, Z + cfg.action_dim, device=dev)  # (E, T, Z + A) teacher-forced inputs
        for i, e in enumerate(part):
            ep = load_shard(latents.dir / latents.episodes[e]["file"], latents.episodes[e]["sha256"])
            n = min(T, int(ep["actions"].shape[0]))
            a = models[0].action_input(torch.as_tensor(ep["actions"][:n]).to(dev))
            x[i, :n] = torch.cat([torch.as_tensor(ep["mu"][:n], dtype=torch.float32).to(dev), a], dim=-1)
            mine = [j for j in picks if int(eps[j]) == e]
            out["mu"][mine] = torch.from_numpy(np.asarray(ep["mu"][ts[mine]], dtype=np.float32))
            out["logvar"][mine] = torch.from_numpy(np.asarray(ep["logvar"][ts[mine]], dtype=np.float32))
        at_t: dict[int, list[int]] = {}
        for j in picks:
            at_t.setdefault(int(ts[j]), []).append(j)
        for k, m in enumerate(models):
            if not isinstance(m, MDRNN):  # a sequence M: its whole step state, stepped through the prefixes
                _bank_sequence_m(m, x, at_t, row, eps, out)
                continue
            r = m.rnn
            h = torch.zeros(len(part), H, device=dev)
            c = torch.zeros(len(part), H, device=dev)
            for t in range(T):
                h, c = torch.lstm_cell(x[:, t], (h, c), r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0)
                now = at_t.get(t + 1)
                if now:  # the state at time t + 1: after reading steps 0..t
                    src = torch.as_tensor([row[int(eps[j])] for j in now], device=dev)
                    out["h"][k, now] = h[src].float().cpu()
                    out["c"][k, now] = c[src].float().cpu()
    return out


def _bank_sequence_m(m: SequenceM, x: torch.Tensor, at_t: dict[int, list[int]], row: dict[int, int],
                     eps: np.ndarray, out: dict[str, torch.Tensor]) -> None:
    """:func:`mid_episode_bank` for a Transformer or Mamba M: step ``x`` (E, T, Z + A) one step at a
    time from an empty past (as the dream does) and bank every state tensor at the chosen times."""
    c = m.config
    state = m.initial_state(x.shape[0], x.device)
    for t in range(x.shape[1]):
        _, state = m.step_hidden(x[:, t, :c.z_size], x[:, t, c.z_size:], state)
        now = at_t.get(t + 1)
        if now:
            src = torch.as_tensor([row[int(eps[j])] for j in now], device=x.device)
            for key, v in state_entries(m, state).items():
                out[key][0, now] = v[src].cpu()


def episodes_key(episodes: list[int]) -> str:
    """A short digest of the training episodes an M was trained on (its meta's ``data``)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(int(e) for e in episodes)).encode()).hexdigest()[:16]


def _memory_done(run: RunDir, cfg: RunConfig, k: int, vae_id: str, episodes: list[int] | None, data: str | None = None
                 ) -> MDRNN | None:
    """Ensemble member ``k`` as a finished training left it (``episodes``: the resample it must have
    been trained on, None for a single M; ``data``: :func:`episodes_key` of the training episodes,
    unchecked for an M saved before it was recorded), or None. With ``finetune_m`` a member
    trained to the steps asked for is finished whatever it was trained on: the rounds' targets
    grow, and an earlier round's target asked again on resume (after a later round's episodes came
    in, which resample every member anew) is met by the member the later rounds go on from.
    Without it, an M of other training episodes is not finished: it starts over on these (a frozen
    V keeps its id, so the V alone does not say that the data grew)."""
    path = run.mdrnn_member(k)
    if not path.exists():
        return None
    done = load_m(path, cfg.device)
    m = done.meta
    if (m.get("steps", 0) >= cfg.mdrnn_train.steps and m.get("vae_id") == vae_id and done.FAMILY == cfg.m_family
            and asdict(done.config) == asdict(cfg.m_config())
            and (cfg.finetune_m or (m.get("episodes") == episodes and m.get("data") in (None, data)))):
        return done
    return None


def train_memory(run: RunDir | str | os.PathLike, cfg: RunConfig, vae_id: str | None = None, k: int = 0, *,
                 address: str | None = None, progress: bool = True, tensorboard: bool = True) -> MDRNN:
    """Train M (``cfg.mdrnn``, ``cfg.mdrnn_train``, batch ``cfg.mdrnn_batch`` of ``cfg.seq_len``-step
    windows) on the latents of ``RUN/latents`` and write ``checkpoints/mdrnn.pt``; returns M on
    ``cfg.device`` (with ``ensemble.members`` > 1: member 0, see :func:`train_memories`, which
    trains them all). ``vae_id``: the id of the V the latents must come from (read from the run's
    ``vae.pt`` when None).

    The checkpoint carries the task metadata, the start bank (first latents of the training
    episodes) and V's id. Skipped when ``mdrnn.pt`` already holds :func:`memory_steps` steps for the
    current V (round ``k``); a training state left by a different V is discarded (its latents are stale).
    """
    return train_memories(run, cfg, vae_id, k, address=address, progress=progress, tensorboard=tensorboard)[0]


def train_memories(run: RunDir | str | os.PathLike, cfg: RunConfig, vae_id: str | None = None, round_k: int = 0, *,
                   address: str | None = None, progress: bool = True, tensorboard: bool = True) -> list[MDRNN]:
    """M's ensemble of ``cfg.ensemble.members`` MDN-RNNs (as :func:`train_memory` trains one), member 0 first.

    One member: exactly :func:`train_memory`'s M. K > 1: member k trains on
    :func:`bootstrap_episodes` of the training episodes (seeded by ``cfg.seed`` and k), from one
    initialisation shared by all (seeded by ``cfg.seed``) with its own training seed, and writes
    ``mdrnn_m{k}.pt`` (``RunDir.mdrnn_member``) and its own resumable state; member 0 is written
    last, as ``mdrnn.pt``, listing the others' ids. A finished member is kept, so a killed
    training resumes at the member it stopped in; with ``finetune_m`` a later round's member goes on
    from its previous round's weights on its resample of the new round's episodes. With ``dream.start = "mid"`` the bank of
    mid-episode states (:func:`mid_episode_bank`, ``dream.start_bank`` of them) is computed from
    the trained members and saved in ``mdrnn.pt``'s meta (added to a finished M that lacks it).
    """
    # round ``round_k``'s target: with finetune_m, M goes on from the previous round's weights
    cfg = replace(cfg, mdrnn_train=replace(cfg.mdrnn_train, steps=memory_steps(cfg, round_k)))
    run = RunDir(run)
    lat = Manifest.open(run.latents)
    meta = lat.meta
    if vae_id is None:
        vae_id = ConvVAE.load(run.vae).meta.get("id")
    if meta.get("vae_id") != vae_id or len(lat) == 0:
        raise WorldModelError(f"{run.latents} is not encoded with the current V; run the encode stage first")
    space = meta.get("action_space")
    if space is None:
        raise WorldModelError(f"{lat.path} lacks meta.action_space; the data manifest must record the task's action space")
    adim, discrete = action_dim_of(space)
    model_cfg = cfg.mdrnn
    if (model_cfg.z_size, model_cfg.action_dim, model_cfg.discrete_actions) != (int(meta["z_size"]), adim, discrete):
        raise WorldModelError(f"MDRNNConfig(z_size={model_cfg.z_size}, action_dim={model_cfg.action_dim}) does not fit "
                              f"the latents (z_size={meta['z_size']}) and action space {space}")
    K = cfg.ensemble.members
    split, held = split_episodes(lat, HOLDOUT, cfg.seed)
    train_eps = m_training_episodes(cfg, split, round_k)  # the newest round's repeated with m_newest_repeat
    resample = {k: bootstrap_episodes(train_eps, cfg.seed, k) if K > 1 else None for k in range(K)}
    data = episodes_key(train_eps)
    members = _finished_memories(run, cfg, vae_id, resample, data)
    if members is None:
        if cfg.train_workers > 1:
            _check_shares(cfg.train_workers, cfg.mdrnn_batch, train_eps, "M")
        if len(train_eps) > len(split):
            say(f"M's training episodes: round {round_k}'s {len(set(train_eps[len(split):]))} count "
                f"{cfg.m_newest_repeat} times (m_newest_repeat), {len(train_eps)} in all")
        trained: dict[int, MDRNN] = {}
        for k in [*range(1, K), 0]:  # member 0 last: mdrnn.pt, which lists the others, is the ensemble's commit
            trained[k] = _train_member(run, cfg, k, vae_id, resample[k] or train_eps, resample[k], data, split, held,
                                       [trained[j].meta["id"] for j in range(1, K)] if k == 0 else [],
                                       lat, space, address, progress, tensorboard)
        members = [trained[k] for k in range(K)]
    return _with_mid_bank(run, cfg, members, lat, split)


def _finished_memories(run: RunDir, cfg: RunConfig, vae_id: str, resample: dict[int, list[int] | None], data: str
                       ) -> list[MDRNN] | None:
    """The whole ensemble when every member is finished for the current V and mdrnn.pt lists them, else None."""
    first = _memory_done(run, cfg, 0, vae_id, resample[0], data)
    if first is None:
        return None
    ids = first.meta.get("members", [])
    if len(ids) != len(resample) - 1:
        return None
    out = [first]
    for k in range(1, len(resample)):
        m = _memory_done(run, cfg, k, vae_id, resample[k], data)
        if m is None or m.meta.get("id") != ids[k - 1]:
            return None
        out.append(m)
    return out


def _train_member(run: RunDir, cfg: RunConfig, k: int, vae_id: str, episodes: list[int],
                  resample: list[int] | None, data: str, train_eps: list[int], held: list[int], member_ids: list[str],
                  lat: Manifest,
                  space: dict[str, Any], address: str | None, progress: bool, tensorboard: bool) -> MDRNN:
    """Train (or keep, when finished) ensemble member ``k`` on ``episodes`` and write its checkpoint.

    ``resample`` is None for a single M (trained and saved exactly as before ensembles existed);
    member 0 banks the first frames of all ``train_eps`` as the dream's starts."""
    model_cfg, path, state_path = cfg.m_config(), run.mdrnn_member(k), run.mdrnn_member_train(k)
    m_class = M_CLASSES[cfg.m_family]
    # the training state records the family too when it is not the MDN-RNN (a Transformer's and a
    # Mamba's configs have the same fields); an MDN-RNN's is as it always was
    config_record = asdict(model_cfg) if cfg.m_family == "mdrnn" else {"family": cfg.m_family, **asdict(model_cfg)}
    if k > 0:
        done = _memory_done(run, cfg, k, vae_id, resample, data)
        if done is not None:
            return done
    train_cfg = cfg.mdrnn_train
    if state_path.exists():
        state = torch_load(state_path)
        # latents of an older V: start over. Other training episodes (or another resample of them): a later
        # round's data, which finetune_m continues from the member's previous weights; else M starts over
        other_data = state.get("episodes") != resample or state.get("data") not in (None, data)
        if state.get("vae_id") != vae_id or (other_data and not cfg.finetune_m):
            state_path.unlink()
    _check_train_state(state_path, config_record, "M")
    stage = "mdrnn" if k == 0 else f"mdrnn_m{k}"
    # one initialisation for every member (comparable LSTM features), seeded by the run's seed
    model = seeded(lambda: m_class(model_cfg), _member_seed(cfg.seed, 0, M_INIT))
    if resample is None:
        what = ""
    else:
        train_cfg = replace(train_cfg, seed=_member_seed(cfg.seed, k, 0x7EA1))
        what = f" member {k} of {cfg.ensemble.members} ({len(set(episodes))} distinct of {len(episodes)} episodes)"
    say(f"M{what} ({describe_m(model)}, {model_cfg.gaussians} Gaussians) to {train_cfg.steps} steps"
        f"{_on_workers(cfg)}")
    extra_state = {"config": config_record, "vae_id": vae_id, "data": data}
    if resample is not None:
        extra_state["episodes"] = resample
    extra = _fit(model, partial(mdrnn_batches, run.latents, episodes, cfg.mdrnn_batch, cfg.seq_len, train_cfg.seed,
                                cfg.loader_workers), train_cfg, stage, run, state_path, cfg, None,
                 lambda: dict(extra_state), progress, tensorboard, address)
    meta: dict[str, Any] = {"task": lat.meta.get("task"), "action_space": space,
                            "max_episode_steps": int(lat.meta.get("max_episode_steps", 1000)), "vae_id": vae_id}
    if k == 0:
        bank_mu, bank_logvar = start_bank(lat, train_eps)
        meta.update({"start_mu": bank_mu, "start_logvar": bank_logvar})
    meta.update({"steps": train_cfg.steps, "heldout": held, "seq_len": cfg.seq_len, "data": data,
                 "train_config": asdict(train_cfg), **extra})
    meta["id"] = weights_id(model.checkpoint_weights(), "M", vae_id, k, train_cfg.steps, resample)
    if resample is not None:
        meta.update({"member": k, "episodes": resample})
    if member_ids:
        meta["members"] = member_ids
    return _save_fresh(model, path, meta, cfg.device)


def _with_mid_bank(run: RunDir, cfg: RunConfig, members: list[MDRNN], lat: Manifest, train_eps: list[int]
                   ) -> list[MDRNN]:
    """``members`` with the mid-episode start bank in member 0's checkpoint when ``dream.start`` is
    "mid" (computed and saved when missing or of another size)."""
    if cfg.dream.start != "mid":
        return members
    first, size = members[0], cfg.mid_bank_size
    h = first.meta.get("mid_h")
    if h is not None and tuple(h.shape[:2]) == (len(members), size):
        return members
    why = "" if size == cfg.dream.start_bank else f" (of dream.start_bank={cfg.dream.start_bank}: a {cfg.m.family} M's " \
        f"whole state is banked, {SEQUENCE_BANK_MAX} at most)"
    say(f"banking {size} mid-episode states of the training episodes for the dream's starts{why}")
    bank = mid_episode_bank(lat, train_eps, members, size, cfg.seed)
    first = _save_fresh(first, run.mdrnn, {**first.meta, **{f"mid_{k}": v for k, v in bank.items()}}, cfg.device)
    return [first, *members[1:]]


def _on_workers(cfg: RunConfig) -> str:
    return f" on {cfg.train_workers} Ray Train workers" if cfg.train_workers > 1 else ""


# -- C ----------------------------------------------------------------------------------------------


def controller_config(cfg: RunConfig, wm: WorldModel) -> ControllerConfig:
    """The controller's shape for this run's world model: linear on [z, h] or one hidden layer."""
    return ControllerConfig.for_task(wm.action_space, wm.obs_size, cfg.task, hidden=cfg.controller_hidden)


def evolve_controller(run: RunDir | str | os.PathLike, cfg: RunConfig, k: int, wm: WorldModel, pool: Callable[[], RealPool], *,
                      progress: bool = True) -> np.ndarray:
    """Round ``k``'s CMA-ES on C, in the dream (or, ``cfg.train_in == "real"``, in the real game on
    ``pool()``), warm-started from round k-1's controller; writes ``controller_r{k}.npz``.

    A finished round is kept; the last round goes on when its generations (``cma.generations``, or
    ``later_generations`` after round 0) grew; a round that later rounds built on is final (its
    controller played their data).
    """
    run = RunDir(run)
    out = run.controller(k)
    ccfg = controller_config(cfg, wm)
    m_id = wm.mdrnn.meta.get("id")
    if out.exists():
        saved_cfg, params, extra = load_controller(out)
        later = run.cma_state(k + 1).exists() or run.controller(k + 1).exists()
        if saved_cfg == ccfg and (k < cfg.rounds - 1 or later):  # an earlier round's controller is final
            return params
        if extra.get("mdrnn_id") not in (None, m_id):  # None: saved before controllers recorded their M
            raise ValueError(f"{out} was evolved in the dream of another M than this run's {run.mdrnn.name} (V or M "
                             f"was trained again since); delete it and {run.cma_state(k).name} to evolve it again")
        if saved_cfg == ccfg and extra.get("generations") == cfg.round_generations(k):
            return params
    x0 = load_controller(run.controller(k - 1))[1] if k > 0 else None
    cma_cfg = replace(cfg.cma, seed=cfg.cma.seed + 1000 * k, generations=cfg.round_generations(k))
    device = torch.device(cfg.device)
    if cfg.train_in == "dream":
        e = cfg.ensemble
        dream_kw = dict(temperature=cfg.dream.temperature, max_steps=cfg.dream.steps, device=device,
                        # compiled on the CPU only: the inductor graph is not exercised on CUDA by the tests
                        compile=cfg.dream.compile and device.type == "cpu", members=e.members,
                        member_mode=e.member_mode, dropout=e.dropout, disagreement_penalty=e.disagreement_penalty,
                        start=cfg.dream.start, precision=cfg.dream.precision, done_mode=e.done_mode,
                        done_bias=cfg.dream.done_bias)  # the Ms' done logits shifted in the dream only
        fitness: Any = DreamFitness(wm, ccfg, cma_cfg.popsize, cma_cfg.rollouts, seed=cma_cfg.seed, **dream_kw)
        where = f"the dream (tau={cfg.dream.temperature}, {cma_cfg.popsize * cma_cfg.rollouts} dreams at once"
        if e.members > 1 or e.dropout > 0:
            where += (f"; {e.members} Ms by {e.member_mode}, dropout {e.dropout}, disagreement penalty "
                      f"{e.disagreement_penalty}" + ("; the end the members find likeliest" if e.done_mode == "max" else ""))
        if cfg.dream.done_bias_text():
            where += f"; {cfg.dream.done_bias_text()}"
        where += f"; starting {'mid-episode' if cfg.dream.start == 'mid' else 'at first frames'}"
        where += f"; M in {cfg.dream.precision})" if cfg.dream.precision != "fp32" else ")"
    else:
        fitness = RealFitness(pool(), cma_cfg.rollouts, seed=cma_cfg.seed)
        where = f"the real {cfg.task} ({cfg.workers} workers)"
    restarts = cfg.round_restarts(k)
    cma_cfg = replace(cma_cfg, restarts=restarts)
    by_real = cfg.round_picks_by_real(k)
    judged_by = (f"the best by {cma_cfg.pick_episodes} real episodes each kept: a selection by real returns" if by_real
                 else f"the best over {RESTART_DREAMS} fresh dreams kept")
    say(f"round {k}: evolving C ({ccfg.num_params} parameters) in {where}, "
        f"{cma_cfg.generations} generations of {cma_cfg.popsize} x {cma_cfg.rollouts}"
        + (f", {restarts} searches ({judged_by})" if restarts > 1 else ""))
    finals, bests, biases = [], [], []
    calibrating = cfg.train_in == "dream" and bool(cfg.dream.done_calibrate)
    for j in range(restarts):  # search j: seed cma.seed + 1000 k + j (search 0 is the run without restarts)
        cj = replace(cma_cfg, seed=cma_cfg.seed + j)
        done = run.restart_controller(k, j)
        if j and done.exists():
            saved_cfg, params, extra = load_controller(done)
            if saved_cfg == ccfg and extra.get("generations") == cma_cfg.generations and extra.get("mdrnn_id") == m_id:
                finals.append(params)
                bests.append(extra.get("best_fitness"))
                biases.append(extra.get("done_bias", cfg.dream.done_bias))
                continue
        if j:
            fitness = DreamFitness(wm, ccfg, cj.popsize, cj.rollouts, seed=cj.seed, **dream_kw)
            say(f"round {k}: search {j + 1} of {restarts} (CMA-ES seed {cj.seed})")
        with RunLogger(run, f"evolve_r{k}" if not j else f"evolve_r{k}_s{j}") as logger:
            gap, calib = None, None
            if calibrating:
                calib = DoneCalibration(cfg, run, k, j, fitness, pool, m_id, cj.seed)
                calib.start(np.zeros(ccfg.num_params) if x0 is None else x0, done_generations(run.cma_state(k, j)))
            if cfg.train_in == "dream" and cfg.eval.gap_every > 0:
                gap = partial(_log_gap, cfg, pool, logger, cj.seed, cj.generations, calib)
            state = evolve(fitness, ccfg.num_params, cj, run.cma_state(k, j), logger=logger, progress=progress,
                           desc="evolve" if not j else f"evolve {j + 1}/{restarts}", x0=x0, on_generation=gap,
                           hook_before_save=calib is not None)  # a measurement is kept before its generation is
        bias = calib.bias if calib is not None else cfg.dream.done_bias
        if restarts > 1:
            save_controller(done, ccfg, state.mean_params, generations=cma_cfg.generations, round=k,
                            best_fitness=state.best_fitness, train_in=cfg.train_in, mdrnn_id=m_id, search=j,
                            **({"done_bias": bias} if calibrating else {}))
        finals.append(state.mean_params)
        bests.append(state.best_fitness)
        biases.append(bias)
    pick, extra_info = 0, {}
    if restarts > 1:
        # calibrated searches ended at their own biases: they are judged in the most pessimistic of those dreams
        judge = DreamFitness(wm, ccfg, restarts, RESTART_DREAMS, seed=cma_cfg.seed + 7,
                             **(dream_kw | {"done_bias": max(biases)} if calibrating else dream_kw))
        with torch.inference_mode():
            means = judge.returns(np.stack(finals), EVAL_GENERATION).mean(dim=1).cpu().double().numpy()
        info: dict[str, Any] = {"dream_means": [float(x) for x in means], "seeds": [cma_cfg.seed + j for j in range(restarts)],
                                "by": "dream"}
        say(f"round {k}: the {restarts} searches' means over {RESTART_DREAMS} fresh dreams: "
            + ", ".join(f"{x:.1f}" for x in means))
        if by_real:
            seeds = generation_seeds(cma_cfg.seed, PICK_GENERATION, cma_cfg.pick_episodes)
            real = np.asarray([[r["return"] for r in pool().play([(p, s) for s in seeds],
                                                                   progress=f"pick {j + 1}/{restarts}" if progress else None)]
                               for j, p in enumerate(finals)], dtype=np.float64)
            means = real.mean(axis=1)
            info.update(by="real returns", real_means=[float(x) for x in means], real_returns=real.tolist(),
                        episodes=cma_cfg.pick_episodes, episode_seeds=seeds)
            say(f"round {k}: the {restarts} searches' means over the same {cma_cfg.pick_episodes} real episodes "
                f"(a selection by real returns): " + ", ".join(f"{x:.1f}" for x in means))
        pick = int(np.argmax(means))
        info["picked"] = pick
        extra_info = {"restarts": info}
        say(f"round {k}: keeping search {pick + 1}")
    if calibrating:
        extra_info["done_bias"] = biases[pick]
    save_controller(out, ccfg, finals[pick], generations=cma_cfg.generations, round=k,
                    best_fitness=bests[pick], train_in=cfg.train_in, mdrnn_id=m_id, **extra_info)
    return finals[pick]


def done_generations(state_path: Path) -> int:
    """The generations a CMA-ES state file holds (0 without a readable one)."""
    try:
        with np.load(state_path, allow_pickle=False) as npz:
            return int(npz["fitness"].shape[0])
    except (OSError, ValueError, KeyError):
        return 0


class DoneCalibration:
    """``dream.done_calibrate`` for one search of round ``k``: measures the dream's done bias on the
    controller's real episodes (:mod:`agents.calibrate`) and sets it on ``fitness``.

    Measurement g (-1: the search's starting controller, before generation 0; g >= 0: generation
    g's best candidate, at its gap measurement) plays the gap's ``eval.gap_episodes`` real episodes
    (seeds of generation ``GAP_GENERATION + g``) with every M stepping along, and raises the bias to
    where the dream expects ``done_calibrate`` ends per end the game dealt. Each measurement is kept
    in ``checkpoints/done_bias_r{k}.json`` (written before the generation's CMA-ES state, so a
    resumed search dreams with the bias that was in force: measurements of generations the state
    does not hold are played again, on the same seeds)."""

    def __init__(self, cfg: RunConfig, run: RunDir, k: int, j: int, fitness: DreamFitness,
                 pool: Callable[[], RealPool], m_id: str | None, seed: int) -> None:
        self.cfg, self.k, self.fitness, self.pool, self.seed = cfg, k, fitness, pool, seed
        self.path = run.done_calibration(k, j)
        self.target, self.floor = float(cfg.dream.done_calibrate), float(cfg.dream.done_bias)
        e = cfg.ensemble
        self.members = max(1, e.members)
        self.done_mode = e.done_mode if self.members > 1 else "member"
        self.settings = {"mdrnn_id": m_id, "target": self.target, "floor": self.floor, "seed": seed,
                         "episodes": cfg.eval.gap_episodes, "members": self.members, "done_mode": self.done_mode}
        saved = read_json(self.path) if self.path.exists() else None
        same = saved is not None and all(saved.get(key) == v for key, v in self.settings.items())
        self.entries: list[dict[str, Any]] = list(saved["entries"]) if same else []

    @property
    def bias(self) -> float:
        """The done bias in force: the last measurement's (``dream.done_bias`` before any)."""
        return float(self.entries[-1]["bias"]) if self.entries else self.floor

    def start(self, x0: np.ndarray, generations_done: int) -> None:
        """Forget measurements after the generations the CMA-ES state holds, measure the starting
        controller ``x0`` unless done, and dream with the bias in force."""
        self.entries = [en for en in self.entries if en["generation"] < generations_done]
        if not self.entries:
            self.measure(-1, x0)
        self.fitness.set_done_bias(self.bias)

    def measure(self, g: int, params: np.ndarray) -> float:
        """Measurement ``g`` (see the class); returns the episodes' mean real return."""
        seeds = generation_seeds(self.seed, GAP_GENERATION + g, self.cfg.eval.gap_episodes)
        eps = self.pool().play([(params, s) for s in seeds], trace=True)
        logits = [np.asarray(ep["done_logits"])[:self.members] for ep in eps]
        ended = sum(bool(ep["terminated"]) for ep in eps)
        before = self.bias
        r = calibrated_bias(logits, ended, self.target, floor=before, done_mode=self.done_mode)
        real = float(np.mean([ep["return"] for ep in eps]))
        self.entries.append({"generation": g, "bias": r["bias"], "bias_before": before, "ended": ended,
                             "episodes": len(eps), "expected_m": expected_ends(logits, 0.0, self.done_mode),
                             "expected_before": r["expected_at_floor"], "expected": r["expected"],
                             "capped": r["capped"], "real_mean": real,
                             "lengths": [int(ep["length"]) for ep in eps]})
        atomic_write_json(self.path, {**self.settings, "entries": self.entries})
        at = "the starting controller" if g < 0 else f"generation {g + 1}'s best"
        if r["bias"] != before:
            say(f"round {self.k}: calibrating the dream's ends on {at}: the game ended {ended} of {len(eps)} "
                f"episodes, the dream expected {r['expected_at_floor']:.2f} (M alone "
                f"{self.entries[-1]['expected_m']:.2f}): done bias {before:+.2f} -> {r['bias']:+.2f}"
                + (" (capped)" if r["capped"] else ""))
        self.fitness.set_done_bias(r["bias"])
        return real


def _log_gap(cfg: RunConfig, pool: Callable[[], RealPool], logger: RunLogger, seed: int, generations: int,
             calib: DoneCalibration | None, g: int, best: np.ndarray, dream_score: float, mean: np.ndarray) -> None:
    """Every ``eval.gap_every``-th generation (and the last): its best candidate in
    ``eval.gap_episodes`` real episodes, logged beside the dream score it was selected on
    (``gap/dream``, ``gap/real``), and the search's mean after it, the controller the round keeps,
    on the same episodes (``gap/real_mean``: the best candidate is what the dream overpays most,
    the mean is what the pipeline ships). With ``calib``, the best's episodes calibrate the dream
    (``calibrate/*``)."""
    if (g + 1) % cfg.eval.gap_every and g + 1 != generations:
        return
    seeds = generation_seeds(seed, GAP_GENERATION + g, cfg.eval.gap_episodes)
    if calib is not None:
        real = calib.measure(g, best)
        last = calib.entries[-1]
        logger.scalars({"calibrate/done_bias": last["bias"], "calibrate/ends_real": last["ended"],
                        "calibrate/ends_expected_m": last["expected_m"],
                        "calibrate/ends_expected_before": last["expected_before"]}, g)
        real_mean = float(np.mean([r["return"] for r in pool().play([(mean, s) for s in seeds])]))
    else:  # both controllers' episodes in one call: the workers play them side by side
        eps = pool().play([(best, s) for s in seeds] + [(mean, s) for s in seeds])
        rets = [r["return"] for r in eps]
        real, real_mean = float(np.mean(rets[:len(seeds)])), float(np.mean(rets[len(seeds):]))
    logger.scalars({"gap/dream": dream_score, "gap/real": real, "gap/dream_minus_real": dream_score - real,
                    "gap/real_mean": real_mean}, g)
    logger.flush()


def finetune_real(run: RunDir | str | os.PathLike, cfg: RunConfig, wm: WorldModel, params: np.ndarray,
                  pool: Callable[[], RealPool], *, progress: bool = True) -> np.ndarray | None:
    """CMA-ES continued in the real game from the final controller ``params`` for
    ``finetune.generations`` generations of ``finetune.popsize x finetune.rollouts`` episodes, each
    worker playing its episodes in lockstep (V encoding their frames as one batch) and ending an
    episode after ``finetune.stall_steps`` steps without a positive reward. Writes
    ``controller_finetuned.npz``; None when ``finetune.generations`` is 0. A new final controller
    (more rounds, more generations) starts a new fine-tune."""
    run = RunDir(run)
    f = cfg.finetune
    if f.generations == 0:
        return None
    ccfg = controller_config(cfg, wm)
    start = file_digest(run.controller())
    out = run.controller_finetuned
    if out.exists():
        saved_cfg, done, extra = load_controller(out)
        if saved_cfg == ccfg and extra.get("generations") == f.generations and extra.get("start") == start:
            return done
    cma_cfg = CMAConfig(popsize=f.popsize, rollouts=f.rollouts, sigma0=f.sigma0, generations=f.generations,
                        seed=cfg.cma.seed + 10_000)
    fitness = RealFitness(pool(), f.rollouts, seed=cma_cfg.seed, lockstep=True, stall_steps=f.stall_steps)
    say(f"fine-tuning C in the real {cfg.task} from the dream's controller: {f.generations} generations of "
        f"{f.popsize} x {f.rollouts} ({cfg.workers} workers)")
    with RunLogger(run, "finetune_real") as logger:
        state = evolve(fitness, ccfg.num_params, cma_cfg, run.cma_finetune(start), logger=logger, progress=progress,
                       desc="finetune", x0=params)
    save_controller(out, ccfg, state.mean_params, generations=f.generations, start=start, train_in="real",
                    best_fitness=state.best_fitness)
    return state.mean_params


def select_round(run: RunDir | str | os.PathLike, cfg: RunConfig, pool: Callable[[], RealPool], *,
                 m_id: str | None = None, progress: bool = True) -> int:
    """The round whose controller becomes the final one: the last round's, or, with
    ``eval.select_episodes`` N > 0 and more than one round, the one :func:`pick_round` keeps after
    every round's controller played the same N real episodes (seeds of generation
    :data:`SELECT_GENERATION`, which no training, gap measurement or evaluation plays) through the
    final world model (M ``m_id``). Writes ``selection.json`` (every round's returns, the pick); a
    controller that played these episodes through this M (``selection.json``, ``rounds.json``) does
    not play them again (a new ``eval.select_margin`` picks again from the returns). ``cfg.rounds``
    is the rounds the run went to (:func:`rounds_run`)."""
    run = RunDir(run)
    n, last, margin = cfg.eval.select_episodes, cfg.rounds - 1, cfg.eval.select_margin
    if n == 0 or cfg.rounds == 1:
        return last
    digests = [file_digest(run.controller(k)) for k in range(cfg.rounds)]
    seeds = generation_seeds(cfg.seed, SELECT_GENERATION, n)
    returns = stored_selection(run, cfg, digests, m_id)
    if returns is not None:
        old = read_json(run.selection_json)
        if old.get("picked") == pick_round(returns, margin) and old.get("margin") == margin:
            return int(old["picked"])
    else:
        played = played_rounds(run, cfg, seeds, m_id)
        kept = sum(d in played for d in digests)
        say(f"picking the final controller among the {cfg.rounds} rounds' by the same {n} real episodes each "
            f"(a selection by real returns, labelled as such in eval.json)"
            + (f"; {kept} of them played these episodes through this M before: their returns are kept" if kept else ""))
        returns = np.zeros((cfg.rounds, n))
        for k in range(cfg.rounds):  # a round at a time: a line of progress each
            if digests[k] in played:
                returns[k] = played[digests[k]]
                continue
            returns[k] = _play_round(run, k, seeds, pool, progress)
    picked = pick_round(returns, margin)
    rows = _rows(returns, digests, m_id)
    atomic_write_json(run.selection_json, {"episodes": n, "max_steps": cfg.eval.max_steps, "seeds": seeds,
                                           "margin": margin, "picked": picked, "rounds": rows})
    say(f"round means over {n} real episodes: " + ", ".join(f"r{k} {r['mean']:.1f}" for k, r in enumerate(rows))
        + f"; keeping round {picked}'s controller"
        + (" (no round beat the last by more than the margin)" if picked == last else ""))
    return picked


def average_current(run: RunDir | str | os.PathLike, cfg: RunConfig) -> bool:
    """Whether ``checkpoints/controller_avg.npz`` averages the controllers ``cfg.averaged_rounds``
    names, as they are on disk now."""
    run = RunDir(run)
    rounds = cfg.averaged_rounds
    if not rounds or not run.controller_avg.exists() or not all(run.controller(k).exists() for k in rounds):
        return False
    try:
        averaged = load_controller(run.controller_avg)[2].get("averaged")
    except ValueError:
        return False
    return averaged == [file_digest(run.controller(k)) for k in rounds]


def average_rounds(run: RunDir | str | os.PathLike, cfg: RunConfig) -> Path | None:
    """With ``average_rounds`` K > 1 (and more than one round): the parameter mean of the last K
    rounds' controllers, written to ``checkpoints/controller_avg.npz`` (again only when those
    controllers changed) and returned; None otherwise. It keeps the last round's extra fields (its
    M, a calibrated done bias) and records which rounds' controllers (by digest) it averages."""
    run = RunDir(run)
    rounds = cfg.averaged_rounds
    if not rounds:
        return None
    out = run.controller_avg
    if average_current(run, cfg):
        return out
    digests = [file_digest(run.controller(k)) for k in rounds]
    ccfg, params, extras = average_controllers([run.controller(k) for k in rounds])
    keep = {k: v for k, v in extras[-1].items() if k not in ("best_fitness", "restarts", "round", "search")}
    save_controller(out, ccfg, params, **keep, rounds=rounds, averaged=digests)
    say(f"the final controller: the parameter mean of rounds {rounds[0]}-{rounds[-1]}'s controllers "
        f"(average_rounds {cfg.average_rounds}; no real episode chooses it, a dream-only result)")
    return out


def _play_round(run: RunDir, k: int, seeds: list[int], pool: Callable[[], RealPool], progress: bool) -> np.ndarray:
    """Round ``k``'s controller's returns over the episodes ``seeds`` (a line of progress)."""
    params = load_controller(run.controller(k))[1]
    got = np.asarray([r["return"] for r in pool().play([(params, s) for s in seeds],
                                                       progress=f"select r{k}" if progress else None)])
    n = len(seeds)
    say(f"round {k}'s controller: {got.mean():.1f} ± {got.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0:.1f} "
        f"over the selection's {n} real episodes")
    return got


def _rows(returns: np.ndarray, digests: list[str], m_ids: str | None | list[str | None]) -> list[dict[str, Any]]:
    """``selection.json``'s and ``rounds.json``'s rows: each round's controller, the M it played
    through, its mean, standard error and returns."""
    n = returns.shape[1]
    ms = m_ids if isinstance(m_ids, list) else [m_ids] * len(returns)
    return [{"round": k, "controller": digests[k], "mdrnn": ms[k], "mean": float(returns[k].mean()),
             "se": float(returns[k].std(ddof=1) / np.sqrt(n)) if n > 1 else None,
             "returns": [float(x) for x in returns[k]]} for k in range(len(returns))]


def _stored_rows(path: Path, cfg: RunConfig, seeds: list[int]) -> list[dict[str, Any]]:
    """The rows of ``selection.json`` or ``rounds.json`` when it was played on these episode seeds
    with this episode limit; [] when missing, unreadable or another selection's."""
    if not path.exists():
        return []
    try:
        old = read_json(path)
        if old.get("seeds") != list(seeds) or old.get("max_steps") != cfg.eval.max_steps:
            return []
        rows = [r for r in old["rounds"] if isinstance(r, dict) and len(r["returns"]) == len(seeds)]
        for r in rows:
            r["returns"] = np.asarray(r["returns"], dtype=np.float64)
        return rows
    except (OSError, ValueError, KeyError, TypeError):
        return []


def played_rounds(run: RunDir, cfg: RunConfig, seeds: list[int], m_id: str | None) -> dict[str, np.ndarray]:
    """The returns ``selection.json`` and ``rounds.json`` hold per controller (file digest) played on
    these episode seeds, with this episode limit, through M ``m_id``: a run continued for more
    rounds plays only the new rounds' controllers. Empty for an M without an id."""
    if m_id is None:
        return {}
    return {r["controller"]: r["returns"] for path in (run.rounds_json, run.selection_json)
            for r in _stored_rows(path, cfg, seeds) if r.get("mdrnn") == m_id}


def judge_round(run: RunDir | str | os.PathLike, cfg: RunConfig, k: int, pool: Callable[[], RealPool], *,
                m_id: str | None = None, progress: bool = True) -> list[float]:
    """With ``rounds_patience``: round ``k``'s controller plays the selection's N real episodes as
    soon as it is evolved, through its own round's world model (M ``m_id``); its row is added to
    ``rounds.json`` (each round's controller digest, M, mean, returns). Returns the means of the
    rounds 0..k judged so far (a round's row is kept while its controller is the same file), from
    which :func:`rounds_stop` says whether the rounds stop."""
    run = RunDir(run)
    seeds = generation_seeds(cfg.seed, SELECT_GENERATION, cfg.eval.select_episodes)
    rows = _judged(run, cfg, k + 1, seeds)
    for j in range(len(rows), k + 1):  # round k, and any earlier one not judged yet (patience turned on later)
        got = _play_round(run, j, seeds, pool, progress)
        rows.append(_rows(got[None], [file_digest(run.controller(j))], m_id)[0] | {"round": j})
        with RunLogger(run, "rounds") as logger:  # TensorBoard: the rounds' real means as they come
            logger.resume_after(j - 1)  # a kill between this log and rounds.json's save logged round j already
            logger.scalars({"rounds/real_mean": rows[-1]["mean"], "rounds/real_se": rows[-1]["se"] or 0.0}, j)
        atomic_write_json(run.rounds_json, {"episodes": len(seeds), "max_steps": cfg.eval.max_steps, "seeds": seeds,
                                            "patience": cfg.rounds_patience,
                                            "rounds": [{**r, "returns": [float(x) for x in r["returns"]]}
                                                       for r in rows]})
    return [float(np.mean(r["returns"])) for r in rows[:k + 1]]


def _judged(run: RunDir, cfg: RunConfig, upto: int, seeds: list[int]) -> list[dict[str, Any]]:
    """``rounds.json``'s rows for rounds 0, 1, ... while each is there and its controller is the file
    on disk now (at most ``upto`` rows)."""
    rows = {r.get("round"): r for r in _stored_rows(run.rounds_json, cfg, seeds)}
    out = []
    for k in range(upto):
        r = rows.get(k)
        if r is None or not run.controller(k).exists() or r.get("controller") != file_digest(run.controller(k)):
            break
        out.append(r)
    return out


def rounds_stop(means: list[float] | np.ndarray, patience: int, least: int = 1) -> bool:
    """Whether the rounds stop after the last of ``means`` (each round's mean over the selection's
    episodes): at least ``least`` rounds have run and ``patience`` > 0 rounds in a row have not
    beaten the best mean before them (a tie does not beat it)."""
    return patience > 0 and len(means) >= least and len(means) - 1 - int(np.argmax(means)) >= patience


def judged_means(run: RunDir | str | os.PathLike, cfg: RunConfig) -> list[float]:
    """The means ``rounds.json`` holds for rounds 0, 1, ... (before the last, which is never judged)
    judged with their controllers as they are on disk now; [] without ``rounds_patience``."""
    if not cfg.rounds_patience:
        return []
    seeds = generation_seeds(cfg.seed, SELECT_GENERATION, cfg.eval.select_episodes)
    return [float(np.mean(r["returns"])) for r in _judged(RunDir(run), cfg, cfg.rounds - 1, seeds)]


def rounds_run(run: RunDir | str | os.PathLike, cfg: RunConfig, means: list[float] | None = None) -> int:
    """How many rounds this run goes to: ``cfg.rounds``, or with ``rounds_patience`` fewer when
    ``rounds.json`` says the rounds stopped (:func:`rounds_stop` over :func:`judged_means`, or
    ``means`` when the caller read them already). Raising ``rounds_patience``, ``rounds_min`` or
    ``rounds`` on a resume lets a stopped run go on."""
    if not cfg.rounds_patience or cfg.rounds == 1:
        return cfg.rounds
    means = judged_means(run, cfg) if means is None else means
    for k in range(len(means)):
        if rounds_stop(means[:k + 1], cfg.rounds_patience, cfg.rounds_min):
            return k + 1
    return cfg.rounds


def stored_selection(run: RunDir | str | os.PathLike, cfg: RunConfig, digests: list[str] | None = None,
                     m_id: str | None = None) -> np.ndarray | None:
    """The returns (rounds x episodes) ``selection.json`` holds when they are this config's
    selection: as many episodes with the same episode limit, played by the rounds' controllers
    as they are now (``digests``, read from disk when not given) through the M now in
    ``mdrnn.pt`` (``m_id``, read when not given); None otherwise (missing, unreadable, or another
    selection's)."""
    run = RunDir(run)
    n = cfg.eval.select_episodes
    if not run.selection_json.exists() or any(not run.controller(k).exists() for k in range(cfg.rounds)):
        return None
    if digests is None:
        digests = [file_digest(run.controller(k)) for k in range(cfg.rounds)]
    if m_id is None:
        m_id = checkpoint_id(run.mdrnn)
    try:
        old = read_json(run.selection_json)
        if (old.get("episodes") != n or old.get("max_steps") != cfg.eval.max_steps or "picked" not in old
                or [r.get("controller") for r in old.get("rounds", [])] != digests
                or m_id is None or any(r.get("mdrnn") != m_id for r in old["rounds"])):
            return None
        returns = np.asarray([r["returns"] for r in old["rounds"]], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: played again, and written whole
    return returns if returns.shape == (cfg.rounds, n) else None


def checkpoint_id(path: Path) -> str | None:
    """A model checkpoint's id (its meta's ``id``); None when absent, unreadable or without one."""
    try:
        state = torch_load(path)
    except Exception:  # noqa: BLE001 - the stage that loads it names the fault
        return None
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    return meta.get("id") if isinstance(meta, dict) else None


def pick_round(returns: np.ndarray, margin: float) -> int:
    """The round kept from ``returns`` (rounds x episodes, the same episodes in every row): the
    last round unless an earlier one beats it on the paired mean by more than ``margin`` standard
    errors of that paired difference (and by more than 0); of those that do, the best mean (a tie:
    the later round). ``margin`` 0 is the plain best mean."""
    last = len(returns) - 1
    diff = returns - returns[last]
    n = returns.shape[1]
    gain = diff.mean(axis=1)
    se = diff.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(returns))
    beat = [k for k in range(last) if gain[k] > 0 and gain[k] > margin * se[k]]
    return max(beat, key=lambda k: (gain[k], k)) if beat else last


EVALUATED = {
    "final": "the controller",
    "last_round": "the last round's controller (beside the kept or averaged one)",
    "finetuned": "the fine-tuned controller",
}
"""what :func:`evaluate_controller` can score, with its words in the log line."""

FINAL_LABELS = ("selected", "searches_picked", "averaged")
"""``eval.json``'s fields that say how the final controller was chosen (:func:`_label_selection`)."""


def scores(result: dict[str, Any], digest: str, cfg: RunConfig) -> bool:
    """Whether an evaluation's ``result`` scored the controller with ``digest`` over the episodes
    and episode limit ``cfg.eval`` asks for (files written before the limit was recorded were
    played with the config's)."""
    return (result.get("controller") == digest and result.get("episodes") == cfg.eval.episodes
            and result.get("max_steps", cfg.eval.max_steps) == cfg.eval.max_steps)


def evaluate_controller(run: RunDir | str | os.PathLike, cfg: RunConfig, params: np.ndarray, pool: Callable[[], RealPool],
                        which: str = "final", *, progress: bool = True) -> dict[str, Any]:
    """A controller in ``eval.episodes`` real episodes on seeds no training generation used:
    ``which`` is "final" (``checkpoints/controller.npz``, whose parameters are ``params``; writes
    ``eval.json``, which names the kept round when the final controller was picked by real
    episodes, :func:`select_round`), "last_round" (the last round's controller when the selection
    kept another: ``eval_last.json``) or "finetuned" (``controller_finetuned.npz``:
    ``eval_finetuned.json``). Skipped when that file already scores this controller over as many
    episodes with the same episode limit."""
    if which not in EVALUATED:
        raise ValueError(f"which must be one of {', '.join(EVALUATED)}, got {which!r}")
    run = RunDir(run)
    path, out_json = {"final": (run.controller(), run.eval_json),
                      "last_round": (run.controller(cfg.rounds - 1), run.eval_last_json),
                      "finetuned": (run.controller_finetuned, run.eval_finetuned_json)}[which]
    digest = file_digest(path)
    if out_json.exists():
        old = read_json(out_json)
        if scores(old, digest, cfg):
            if which != "final":
                return old
            labelled = _label_selection(run, cfg, old)  # the same controller on the same episodes, picked anew
            if labelled != old:
                atomic_write_json(out_json, labelled)
            return labelled
    if which == "last_round" and run.eval_json.exists():  # scored as the final controller before: not played again
        old = read_json(run.eval_json)
        if scores(old, digest, cfg):
            out = {**{k: v for k, v in old.items() if k not in FINAL_LABELS}, "train_in": cfg.train_in,
                   "max_steps": cfg.eval.max_steps}
            atomic_write_json(out_json, out)
            say(f"{EVALUATED[which]}: its {cfg.eval.episodes} episodes are eval.json's, where it was the final one")
            return out
    n = cfg.eval.episodes
    say(f"evaluating {EVALUATED[which]} in the real {cfg.task}: {n} episodes on {cfg.workers} workers")
    seeds = generation_seeds(cfg.seed, EVAL_GENERATION, n)
    res = pool().play([(params, s) for s in seeds], progress="evaluate" if progress else None)
    train_in = f"{cfg.train_in}, then fine-tuned in the real game" if which == "finetuned" else cfg.train_in
    out = {**summarize_returns(cfg.task, [r["return"] for r in res]), "controller": digest,
           "train_in": train_in, "seeds": seeds, "lengths": [r["length"] for r in res],
           "max_steps": cfg.eval.max_steps}
    if which == "final":
        out = _label_selection(run, cfg, out)
    atomic_write_json(out_json, out)
    return out


def _label_selection(run: RunDir, cfg: RunConfig, result: dict[str, Any]) -> dict[str, Any]:
    """``eval.json``'s content with ``selected`` (the kept round, the rounds' means) and its
    ``train_in`` saying so when the final controller was picked by real episodes; without them
    when it is the last round's."""
    out = {k: v for k, v in result.items() if k not in FINAL_LABELS}
    picks = []
    if cfg.picked_by_real:
        rounds = [k for k in range(cfg.rounds) if cfg.round_picks_by_real(k)]
        out["searches_picked"] = {"rounds": rounds, "by": "real returns", "episodes": cfg.cma.pick_episodes,
                                  "searches": [cfg.round_restarts(k) for k in rounds]}
        picks.append(f"round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))}'s controller picked among "
                     f"{cfg.round_restarts(rounds[0])} searches by {cfg.cma.pick_episodes} real episodes each")
    selection = cfg.eval.select_episodes and cfg.rounds > 1
    if selection:
        sel = read_json(run.selection_json)
        out["selected"] = {"round": sel["picked"], "of_rounds": cfg.rounds, "by": "real returns",
                           "episodes": sel["episodes"], "means": [r["mean"] for r in sel["rounds"]]}
        picks.append(f"the final controller picked among the rounds by {sel['episodes']} real episodes each")
    averaged = cfg.averaged_rounds
    if averaged:
        out["averaged"] = {"rounds": averaged, "of_rounds": cfg.rounds, "by": "parameter mean"}
        picks.append(f"the final controller averaged from rounds {averaged[0]}-{averaged[-1]}'s")
    out["train_in"] = (f"{cfg.train_in}{' (every round)' if selection or averaged else ''}"
                       + "".join(f", {p}" for p in picks))
    return out


def dream_done_bias(run: RunDir | str | os.PathLike, cfg: RunConfig) -> float:
    """The done bias of the dream the final controller was evolved in: ``dream.done_bias``, or with
    ``dream.done_calibrate`` the calibrated bias the controller records (the configured one before
    there is a controller)."""
    run = RunDir(run)
    if cfg.dream.done_calibrate and run.controller().exists():
        return float(load_controller(run.controller())[2].get("done_bias", cfg.dream.done_bias))
    return float(cfg.dream.done_bias)


def record_videos(run: RunDir | str | os.PathLike, cfg: RunConfig, wm: WorldModel, params: np.ndarray, episode_steps: int) -> None:
    """``videos/real.mp4`` and ``videos/dream.mp4``: one episode of the controller in each."""
    run = RunDir(run)
    ccfg = controller_config(cfg, wm)
    real, dream = run.videos / "real.mp4", run.videos / "dream.mp4"
    if not real.exists():
        save_video(real, real_frames(cfg.task, wm, ccfg, params, seed=cfg.seed, max_steps=episode_steps), fps=30)
    if not dream.exists():
        frames = dream_frames(wm.with_done_bias(dream_done_bias(run, cfg)), ccfg, params, seed=cfg.seed,
                              temperature=cfg.dream.temperature, max_steps=episode_steps)
        save_video(dream, frames, fps=30)


__all__ = ["collect_rollouts", "train_vision", "encode_latents", "train_memory", "train_memories", "evolve_controller",
           "select_round", "judge_round", "rounds_stop", "judged_means", "rounds_run", "played_rounds", "stored_selection", "checkpoint_id", "pick_round", "evaluate_controller", "record_videos", "controller_config", "start_bank", "vision_steps",
           "bootstrap_episodes", "mid_episode_bank"]
