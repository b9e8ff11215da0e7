"""How faithful is the dream? Figures and open-loop videos on held-out real episodes.

For each held-out episode (recorded in ``mdrnn.pt``; the last episodes of the data otherwise):

- V: reconstruction MSE per pixel (frames in [0, 1]) from the posterior mean;
- M, teacher-forced on the real latents and actions: next-latent NLL per latent dimension
  (nats, tau = 1), reward prediction MSE / MAE, done-flag accuracy (logit > 0);
- open loop: after ``context`` real steps, M predicts ``horizon`` steps ahead from the real
  actions alone (deterministic mode), decoded by V beside the real frames: a true / predicted /
  |error| strip (PNG) and a side-by-side video (mp4), and the pixel / latent MSE at each
  horizon step.

Everything is written to ``RUN/fidelity.json`` and ``RUN/fidelity/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldlab.io import atomic_write_json
from worldlab.mdrnn import mixture_log_prob, sample_mixture
from worldlab.rundir import RunDir
from worldlab.storage import Manifest, load_shard
from worldlab.vae import image_grid, save_png, to_uint8_hwc, vae_recon_mse
from worldlab.world_model import WorldModel


def _episodes(run: RunDir, wm: WorldModel, episodes: list[int] | None, max_episodes: int) -> list[int]:
    data = Manifest.open(run.data)
    if episodes is None:
        held = [int(i) for i in wm.mdrnn.meta.get("heldout", []) if int(i) in data.episodes]
        episodes = held or sorted(data.episodes)[-max_episodes:]
    missing = [i for i in episodes if i not in data.episodes]
    if missing:
        raise ValueError(f"episodes {missing[:5]} are not in {data.path}")
    return list(episodes)[:max_episodes]


def save_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 15) -> Path:
    """Write uint8 (T, H, W, 3) frames as an mp4 (H.264 via imageio-ffmpeg), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with imageio.get_writer(tmp, fps=fps, macro_block_size=1, format="FFMPEG") as w:  # type: ignore[call-overload]
            for f in frames:
                w.append_data(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@torch.inference_mode()
def episode_fidelity(wm: WorldModel, ep: dict[str, np.ndarray], context: int, horizon: int
                     ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Figures for one episode, plus (true frames, predicted frames) of the open-loop window."""
    obs = torch.from_numpy(ep["obs"])                       # (T+1, 64, 64, 3) uint8
    T = int(ep["rewards"].shape[0])
    mu, actions, pred = wm.teacher_forced(ep)               # (T+1, Z), (T, ...), (1, T, ...)
    nll = -mixture_log_prob(mu[None, 1:], pred.logits, pred.mu, pred.logsigma).mean()
    rewards = torch.from_numpy(ep["rewards"]).float().to(wm.device)
    terminated = torch.from_numpy(ep["terminated"]).bool().to(wm.device)
    rerr = pred.reward[0] - rewards
    done_pred = pred.done_logit[0] > 0
    figures: dict[str, Any] = {
        "steps": T,
        "vae_recon_mse": vae_recon_mse(wm.vae, obs),
        "mdrnn_nll_per_dim": float(nll),
        "reward_mse": float(rerr.pow(2).mean()),
        "reward_mae": float(rerr.abs().mean()),
        "done_accuracy": float((done_pred == terminated).float().mean()),
        "done_positives": int(terminated.sum()),
    }
    # open loop: teacher-force `context` steps, then predict from actions alone
    c = max(1, min(context, T - 1))
    k = max(1, min(horizon, T - c))
    z_pred = wm.open_loop(mu, actions, c, k)[0]             # (k, Z) predictions of z_{c+1..c+k}
    frames_pred = to_uint8_hwc(wm.vae.decode(z_pred))        # (k, 64, 64, 3)
    frames_true = ep["obs"][c + 1:c + 1 + k]                 # (k, 64, 64, 3)
    pix = ((frames_pred.astype(np.float32) - frames_true.astype(np.float32)) / 255.0) ** 2
    figures["open_loop_start"] = c
    figures["pixel_mse_per_step"] = pix.reshape(k, -1).mean(1).tolist()
    figures["latent_mse_per_step"] = (z_pred - mu[c + 1:c + 1 + k]).pow(2).mean(1).tolist()
    return figures, frames_true, frames_pred


def fidelity_report(run_dir: str | os.PathLike, *, episodes: list[int] | None = None, max_episodes: int = 3,
                    context: int = 16, horizon: int = 32, device: str | torch.device = "cpu",
                    video: bool = True) -> dict[str, Any]:
    """Measure the dream against held-out real episodes; write ``RUN/fidelity.json`` and ``RUN/fidelity/``."""
    run = RunDir(run_dir)
    wm = WorldModel.load(run, device=device)
    data = Manifest.open(run.data)
    ids = _episodes(run, wm, episodes, max_episodes)
    out_dir = run.fidelity
    per_episode: dict[str, Any] = {}
    files: list[str] = []
    for i in ids:
        info = data.episodes[i]
        ep = load_shard(data.dir / info["file"], info["sha256"])
        figs, true, pred = episode_fidelity(wm, ep, context, horizon)
        per_episode[str(i)] = figs
        err = np.abs(true.astype(np.int16) - pred.astype(np.int16)).astype(np.uint8)
        strip = image_grid(np.concatenate([true, pred, err]), nrow=len(true))
        files.append(str(save_png(out_dir / f"open_loop_ep{i:06d}.png", strip).relative_to(run.root)))
        if video:
            side = np.concatenate([true, pred, err], axis=2)          # (k, 64, 192, 3)
            side = side.repeat(2, axis=1).repeat(2, axis=2)           # upscaled x2
            files.append(str(save_video(out_dir / f"open_loop_ep{i:06d}.mp4", side).relative_to(run.root)))
    keys = ("vae_recon_mse", "mdrnn_nll_per_dim", "reward_mse", "reward_mae", "done_accuracy")
    weights = np.array([per_episode[str(i)]["steps"] for i in ids], dtype=np.float64)
    summary = {k: float(np.average([per_episode[str(i)][k] for i in ids], weights=weights)) for k in keys}
    k_min = min(len(per_episode[str(i)]["pixel_mse_per_step"]) for i in ids)
    report = {
        "task": wm.task,
        "episodes": ids,
        "heldout": bool(wm.mdrnn.meta.get("heldout")),
        **summary,
        "done_positives": int(sum(per_episode[str(i)]["done_positives"] for i in ids)),
        "open_loop": {
            "context": context, "horizon": k_min, "mode": "deterministic",
            "pixel_mse_per_step": np.mean([per_episode[str(i)]["pixel_mse_per_step"][:k_min] for i in ids], 0).tolist(),
            "latent_mse_per_step": np.mean([per_episode[str(i)]["latent_mse_per_step"][:k_min] for i in ids], 0).tolist(),
        },
        "per_episode": per_episode,
        "files": files,
    }
    atomic_write_json(run.fidelity_json, report)
    return report


OPEN_LOOP_AT = (1, 10, 30)
"""the open-loop steps :func:`m_heldout_figures` reports the latent error at."""


@torch.no_grad()
def m_heldout_figures(m: torch.nn.Module, latents: Manifest, episodes: list[int], *, horizon: int = 30,
                      start_every: int = 100) -> dict[str, Any]:
    """How well any M (MDN-RNN, Transformer M, Mamba M) predicts held-out real episodes, from their latents.

    M steps through each episode one step at a time on the real latent means and actions (a
    step equals the teacher-forced output: tested), giving per step the next-latent NLL per
    dimension (nats, tau = 1, of the next frame's mean), the reward's squared error and the done
    flag's cross-entropy and accuracy (logit > 0). Every ``start_every`` steps (from
    ``start_every // 2``) M's state is kept and, from there, M dreams ``horizon`` steps open loop on
    the real actions (deterministic mode: the most likely next latent) against the real latents:
    the latent MSE at the steps of :data:`OPEN_LOOP_AT`. Returns the means over all steps (and all
    open-loop starts), the counts, and the per-episode NLL."""
    from worldlab.sequence_m import state_entries, state_from_entries

    sums = {"nll": 0.0, "reward_se": 0.0, "done_bce": 0.0, "done_right": 0.0}
    steps, per_episode, drift = 0, {}, []
    for e in episodes:
        info = latents.episodes[e]
        ep = load_shard(latents.dir / info["file"], info["sha256"])
        mu = torch.as_tensor(ep["mu"], dtype=torch.float32).to(m.device)             # (T+1, Z)
        act = torch.as_tensor(ep["actions"]).to(m.device)                              # (T, A) or (T,)
        rew = torch.as_tensor(ep["rewards"], dtype=torch.float32).to(m.device)       # (T,)
        term = torch.as_tensor(ep["terminated"], dtype=torch.float32).to(m.device)   # (T,)
        T = int(rew.shape[0])
        starts = [t for t in range(start_every // 2, T - horizon + 1, start_every) if t >= 1]
        kept: dict[int, dict[str, torch.Tensor]] = {}
        state = m.initial_state(1, m.device)
        nll_ep = 0.0
        for t in range(T):
            if t in starts:  # M's state after reading steps 0..t-1
                kept[t] = {k: v.clone() for k, v in state_entries(m, state).items()}
            p, state = m.step(mu[t:t + 1], act[t:t + 1], state)
            nll = -float(mixture_log_prob(mu[t + 1:t + 2], p.logits, p.mu, p.logsigma).mean())
            nll_ep += nll
            sums["nll"] += nll
            sums["reward_se"] += float((p.reward[0] - rew[t]) ** 2)
            sums["done_bce"] += float(torch.nn.functional.binary_cross_entropy_with_logits(p.done_logit[0], term[t]))
            sums["done_right"] += float((p.done_logit[0] > 0).float() == term[t])
        steps += T
        per_episode[int(e)] = nll_ep / max(T, 1)
        if not kept:
            continue
        idx = torch.as_tensor(sorted(kept), device=m.device)  # every open-loop start of the episode, as one batch
        state = state_from_entries(m, {k: torch.cat([kept[int(t)][k] for t in idx]) for k in kept[int(idx[0])]})
        z, errs = mu[idx], []
        for i in range(horizon):
            p, state = m.step(z, act[idx + i], state)
            z = sample_mixture(p.logits, p.mu, p.logsigma, deterministic=True)
            errs.append((z - mu[idx + i + 1]).pow(2).mean(1))  # (starts,)
        drift.append(torch.stack(errs, 1).cpu())  # (starts, horizon)
    if not steps:
        raise ValueError("no held-out steps to measure M on; pass episodes with at least one step")
    out: dict[str, Any] = {"episodes": len(episodes), "steps": steps,
                           "nll_per_dim": sums["nll"] / steps, "reward_mse": sums["reward_se"] / steps,
                           "done_bce": sums["done_bce"] / steps, "done_accuracy": sums["done_right"] / steps,
                           "nll_per_episode": per_episode}
    if drift:
        d = torch.cat(drift)
        out["open_loop_starts"] = int(d.shape[0])
        out["open_loop_latent_mse_at"] = {str(s): float(d[:, s - 1].mean()) for s in OPEN_LOOP_AT if s <= horizon}
    return out
