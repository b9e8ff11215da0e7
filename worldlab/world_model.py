"""The WorldModel: V and M bundled with what the dream needs to know about the task.

A run folder holds it as two checkpoints, each carrying its config::

    RUN/checkpoints/vae.pt     {"family": "vae", "config", "model", "meta": {"task", "id", ...}}
    RUN/checkpoints/mdrnn.pt   {"family": "mdrnn", "config", "model", "meta": {"task",
                                "action_space", "max_episode_steps", "vae_id",
                                "start_mu", "start_logvar", ...}}

``mdrnn.pt`` carries the task metadata and the bank of real starting latents (the encoded
first frames of real episodes), and the id of the V whose latents M was trained on, so a
stale M (V retrained since) is refused instead of silently dreaming nonsense.

An ensemble of Ms (the dream's ``members``) keeps ``mdrnn.pt`` as member 0, which lists the ids
of the others in ``meta["members"]``; member k >= 1 is ``RUN/checkpoints/mdrnn_m{k}.pt``
(:meth:`RunDir.mdrnn_member`). A single M's run folder is exactly as before. A bank of
mid-episode starts (real latents at random times with every member's LSTM state there, teacher
forced) rides in ``mdrnn.pt``'s meta as ``mid_mu``, ``mid_logvar`` (B, Z), ``mid_h``, ``mid_c``
(members, B, H) when the run asked for one.

M may be a Transformer or Mamba M (:mod:`worldlab.sequence_m`) instead of the MDN-RNN: its
checkpoint (still ``mdrnn.pt``, the run's M) says which family it holds and loads without being
told; its mid-episode bank holds the model's whole step state (``mid_h`` and, per state tensor,
``mid_<key>`` with the rows second: (1, B, ...)), since its past is more than ``(h, c)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldlab.io import torch_load
from worldlab.mdrnn import MDRNN, MDRNNConfig, sample_mixture
from worldlab.rundir import RunDir
from worldlab.sequence_m import SequenceM, load_m, read_prefix, state_entries, state_keys
from worldlab.training import seeded
from worldlab.vae import ConvVAE, VAEConfig, to_uint8_hwc

CAR_RACING_ACTIONS: dict[str, Any] = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}


class WorldModelError(ValueError):
    """A run folder's checkpoints are missing, corrupt, or do not fit together or the task."""


def action_dim_of(action_space: dict[str, Any]) -> tuple[int, bool]:
    """(width of M's action input, whether actions are discrete) for an action-space dict."""
    kind = action_space.get("type")
    if kind == "box":
        return int(np.prod(action_space["shape"])), False
    if kind == "discrete":
        return int(action_space["n"]), True
    raise WorldModelError(f"unsupported action space {action_space!r}: expected type 'box' or 'discrete'")


class WorldModel(nn.Module):
    """V (ConvVAE) + M (MDN-RNN) + task metadata + a bank of real starting latents.

    Args:
        vae, mdrnn: the two models (their z sizes must agree).
        task: the task name (e.g. ``"car_racing"``).
        action_space: ``{"type": "box", "shape", "low", "high"}`` or ``{"type": "discrete", "n"}``.
        max_episode_steps: the task's episode limit (the dream truncates there).
        start_mu, start_logvar: ``(N, Z)`` encoded first frames of real episodes.
        members: more Ms of ``mdrnn``'s architecture, an ensemble with ``mdrnn`` as member 0 (the
            M the real game's controller reads its ``h`` from).
        mid_bank: mid-episode starts ``{"mu", "logvar": (B, Z), "h", "c": (members, B, H)}``: real
            latents and every member's LSTM state there (more members' states than the world model
            holds are cut to its own).
    """

    MID_KEYS = ("mu", "logvar", "h", "c")
    """the entries of an MDN-RNN's mid-episode start bank (``mid_<key>`` in M's checkpoint meta);
    :attr:`mid_keys` names those of this world model's M."""

    def __init__(self, vae: ConvVAE, mdrnn: MDRNN | SequenceM, *, task: str, action_space: dict[str, Any],
                 max_episode_steps: int, start_mu: torch.Tensor, start_logvar: torch.Tensor | None = None,
                 members: Sequence[MDRNN] | None = None, mid_bank: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        if vae.z_size != mdrnn.config.z_size:
            raise WorldModelError(f"V has z_size {vae.z_size} but M expects {mdrnn.config.z_size}: "
                                  f"retrain M on this V's latents")
        adim, discrete = action_dim_of(action_space)
        if (adim, discrete) != (mdrnn.config.action_dim, mdrnn.config.discrete_actions):
            raise WorldModelError(f"M takes actions of width {mdrnn.config.action_dim} "
                                  f"(discrete={mdrnn.config.discrete_actions}) but the task's action space is "
                                  f"{action_space}: retrain M for this task")
        start_mu = torch.as_tensor(start_mu, dtype=torch.float32)
        if start_mu.dim() != 2 or start_mu.shape[0] < 1 or start_mu.shape[1] != vae.z_size:
            raise WorldModelError(f"the start bank must be (N >= 1, {vae.z_size}) latents, got {tuple(start_mu.shape)}")
        if start_logvar is None:
            start_logvar = torch.full_like(start_mu, -20.0)  # point starts
        start_logvar = torch.as_tensor(start_logvar, dtype=torch.float32)
        if start_logvar.shape != start_mu.shape:
            raise WorldModelError(f"start_logvar {tuple(start_logvar.shape)} must match start_mu {tuple(start_mu.shape)}")
        if int(max_episode_steps) < 1:
            raise WorldModelError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if members and not isinstance(mdrnn, MDRNN):
            raise WorldModelError(f"ensembles are built of MDN-RNNs; this M is a {mdrnn.FAMILY}: pass no members")
        for k, m in enumerate(members or (), 1):
            if not isinstance(m, MDRNN) or asdict(m.config) != asdict(mdrnn.config):
                raise WorldModelError(f"ensemble member {k} is not an MDRNN of member 0's architecture; train every "
                                      f"member with one MDRNNConfig")
        self.vae, self.mdrnn = vae.eval(), mdrnn.eval()
        self.members = nn.ModuleList([m.eval() for m in members or ()])
        self.task = str(task)
        self.action_space = dict(action_space)
        self.max_episode_steps = int(max_episode_steps)
        self.register_buffer("start_mu", start_mu.clone())          # (N, Z)
        self.register_buffer("start_logvar", start_logvar.clone())  # (N, Z)
        bank = self._check_mid_bank(mid_bank)
        for key in self.mid_keys:  # None when there is no bank (then not part of the state)
            self.register_buffer(f"mid_{key}", None if bank is None else bank[key])

    @property
    def mid_keys(self) -> tuple[str, ...]:
        """The entries of a mid-episode start bank: the latents' ``mu``, ``logvar`` and M's state tensors."""
        return ("mu", "logvar", *state_keys(self.mdrnn))

    def _check_mid_bank(self, bank: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if bank is None:
            return None
        missing = [k for k in self.mid_keys if k not in bank]
        if missing:
            raise WorldModelError(f"the mid-episode start bank lacks {missing}; rebuild it (train M with dream.start=mid)")
        out = {}
        for k in self.mid_keys:
            t = torch.as_tensor(bank[k])
            out[k] = (t.float() if t.is_floating_point() else t).clone()
        B, Z, M = out["mu"].shape[0], self.z_size, self.num_members
        if out["mu"].shape != (B, Z) or out["logvar"].shape != (B, Z) or B < 1:
            raise WorldModelError(f"the mid-episode start bank must hold (B >= 1, {Z}) latents, got "
                                  f"{tuple(out['mu'].shape)} and {tuple(out['logvar'].shape)}")
        row = state_entries(self.mdrnn, self.mdrnn.initial_state(1, "cpu"))  # each state tensor of one row
        for k in state_keys(self.mdrnn):
            t, want = out[k], (B, *row[k].shape[1:])
            if t.dim() != len(want) + 1 or t.shape[0] < M or t.shape[1:] != want:
                raise WorldModelError(f"the mid-episode start bank's {k} must be (members >= {M}, "
                                      f"{', '.join(map(str, want))}), got {tuple(t.shape)}; rebuild it for this M")
            out[k] = t[:M].clone()
        return out

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def z_size(self) -> int:
        return self.vae.z_size

    @property
    def hidden_size(self) -> int:
        return self.mdrnn.config.hidden

    @property
    def action_dim(self) -> int:
        return self.mdrnn.config.action_dim

    @property
    def discrete_actions(self) -> bool:
        return self.mdrnn.config.discrete_actions

    @property
    def num_members(self) -> int:
        """The Ms of the ensemble (1: a single M)."""
        return 1 + len(self.members)

    @property
    def family(self) -> str:
        """M's family: "mdrnn", "transformer_m" or "mamba_m"."""
        return str(self.mdrnn.FAMILY)

    @property
    def ensemble(self) -> list[MDRNN]:
        """Every M, member 0 (``mdrnn``) first."""
        return [self.mdrnn, *self.members]  # type: ignore[list-item]

    @property
    def mid_bank(self) -> dict[str, torch.Tensor] | None:
        """The mid-episode start bank (``mu``, ``logvar`` (B, Z); M's state: ``h``, ``c`` (members, B, H)
        for the MDN-RNN, every state tensor with the rows second for the others), or None."""
        if self.mid_mu is None:
            return None
        return {k: getattr(self, f"mid_{k}") for k in self.mid_keys}

    @property
    def obs_size(self) -> int:
        """Width of the dream's latent observation ``[z, h]``."""
        return self.z_size + self.hidden_size

    @property
    def device(self) -> torch.device:
        return self.start_mu.device

    # -- use -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, 3, 64, 64) or (B, 64, 64, 3) uint8 -> (mu, logvar) (B, Z)."""
        return self.vae.encode(frames)

    @torch.no_grad()
    def decode_frames(self, z: torch.Tensor) -> np.ndarray:
        """Latents (B, Z) -> uint8 frames (B, 64, 64, 3)."""
        return to_uint8_hwc(self.vae.decode(z.to(self.vae.device)))

    @torch.no_grad()
    def teacher_forced(self, ep: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """A real episode (``obs`` (T+1, 64, 64, 3) uint8, ``actions`` (T, ...)) read by the world
        model, on its device: V's posterior means ``mu`` (T+1, Z), the actions as M takes them (Box:
        float32 (T, A); Discrete: int64 (T,)), and M's predictions for steps 1..T (batch of one),
        teacher-forced over the real latents."""
        obs = torch.from_numpy(np.ascontiguousarray(ep["obs"]))
        T = int(ep["actions"].shape[0])
        mu = self.vae.encode_mean(obs).to(self.device)
        actions = torch.as_tensor(np.asarray(ep["actions"]), device=self.device)
        actions = actions.long() if self.discrete_actions else actions.float().reshape(T, -1)
        pred, _ = self.mdrnn(mu[None, :-1], actions[None])
        return mu, actions, pred

    @torch.no_grad()
    def open_loop(self, mu: torch.Tensor, actions: torch.Tensor, start: int, steps: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """M dreaming ``steps`` steps from a real mid-episode state, on the real actions: it reads
        the real latents ``mu[:start]`` and ``actions[:start]`` teacher-forced, then from ``mu[start]``
        predicts one step at a time from its own most likely next latent (deterministic mode).
        Returns the predicted latents of steps ``start+1 .. start+steps`` (steps, Z) and the
        predicted rewards (steps,). ``mu`` and ``actions`` as :meth:`teacher_forced` gives them."""
        if start < 1 or steps < 1 or start + steps > int(actions.shape[0]):
            raise ValueError(f"open loop from step {start} for {steps} steps does not fit an episode of "
                             f"{int(actions.shape[0])} steps; pass 1 <= start and start + steps <= its length")
        state = read_prefix(self.mdrnn, mu[None, :start], actions[None, :start])  # M after `start` real steps
        z, zs, rs = mu[start:start + 1], [], []
        for t in range(start, start + steps):
            p, state = self.mdrnn.step(z, actions[t:t + 1], state)
            z = sample_mixture(p.logits, p.mu, p.logsigma, deterministic=True)   # (1, Z)
            zs.append(z[0])
            rs.append(p.reward[0])
        return torch.stack(zs), torch.stack(rs).reshape(-1)

    def with_done_bias(self, bias: float) -> WorldModel:
        """This world model with ``bias`` added to every M's done logit (copies of the Ms; V and the
        start banks shared): its dreams end with e^bias times M's odds, its LSTM states (the ``h``
        a controller reads) and everything else unchanged. ``bias`` 0: this world model itself."""
        if not bias:
            return self
        import copy

        ms = [copy.deepcopy(m) for m in self.ensemble]
        with torch.no_grad():
            for m in ms:
                m.head.bias[-1] += float(bias)  # the done logit: the head's last output (worldlab.mdrnn's layout)
        return WorldModel(self.vae, ms[0], task=self.task, action_space=self.action_space,
                          max_episode_steps=self.max_episode_steps, start_mu=self.start_mu,
                          start_logvar=self.start_logvar, members=ms[1:], mid_bank=self.mid_bank)

    def meta(self) -> dict[str, Any]:
        return {"task": self.task, "action_space": self.action_space, "max_episode_steps": self.max_episode_steps}

    # -- persistence ---------------------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``RUN/checkpoints/vae.pt`` and ``mdrnn.pt`` (configs, task meta, start banks), and an
        ensemble's other members (``mdrnn_m{k}.pt``, before ``mdrnn.pt``, which lists them)."""
        run = RunDir(run_dir)
        vae_path, m_path = run.vae, run.mdrnn
        vae_meta = {**self.vae.meta, "task": self.task}
        vae_meta.setdefault("id", os.urandom(16).hex())
        self.vae.save(vae_path, vae_meta)
        self.vae.meta = vae_meta
        member_ids = []
        for k, m in enumerate(self.members, 1):
            k_meta = {**m.meta, "vae_id": vae_meta["id"], "member": k}
            k_meta.setdefault("id", os.urandom(16).hex())
            m.save(run.mdrnn_member(k), k_meta)
            m.meta = k_meta
            member_ids.append(k_meta["id"])
        m_meta = {k: v for k, v in self.mdrnn.meta.items() if k != "members" and not k.startswith("mid_")}
        m_meta.update({**self.meta(), "vae_id": vae_meta["id"], "start_mu": self.start_mu.detach().cpu(),
                       "start_logvar": self.start_logvar.detach().cpu()})
        if member_ids:
            m_meta["members"] = member_ids
        for key, value in (self.mid_bank or {}).items():
            m_meta[f"mid_{key}"] = value.detach().cpu()
        self.mdrnn.save(m_path, m_meta)
        self.mdrnn.meta = m_meta
        return vae_path, m_path

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str | torch.device = "cpu", *, task: str | None = None,
             z_size: int | None = None) -> WorldModel:
        """Rebuild the world model of a run folder; ``task`` / ``z_size``, when given, must match.

        Every failure (missing, corrupt, foreign or mismatched checkpoint) raises one clear line.
        """
        run = RunDir(run_dir)
        for p, stage in ((run.vae, "V"), (run.mdrnn, "M")):
            if not p.is_file():
                raise FileNotFoundError(f"no world model in {run}: {p} is missing; train {stage} first "
                                        f"(the dream_train pipeline does)")
        vae = ConvVAE.from_checkpoint(torch_load(run.vae), run.vae)
        mdrnn = load_m(run.mdrnn)
        members = []
        ids = mdrnn.meta.get("members", [])
        for k, member_id in enumerate(ids, 1):
            p = run.mdrnn_member(k)
            if not p.is_file():
                raise FileNotFoundError(f"no world model in {run}: {p} (ensemble member {k} of {len(ids) + 1}) is "
                                        f"missing; train M again (the dream_train pipeline does)")
            member = MDRNN.from_checkpoint(torch_load(p), p)
            if member.meta.get("id") != member_id:
                raise WorldModelError(f"{p} is not the ensemble member {k} that {run.mdrnn} was saved with (another "
                                      f"training wrote it since); train M again")
            members.append(member)
        return cls.from_models(vae, mdrnn, task=task, z_size=z_size, run=run, members=members).to(device).eval()

    @classmethod
    def from_models(cls, vae: ConvVAE, mdrnn: MDRNN | SequenceM, *, task: str | None = None, z_size: int | None = None,
                    run: RunDir | str | os.PathLike | None = None, members: Sequence[MDRNN] | None = None
                    ) -> WorldModel:
        """Bundle a trained V and M as their checkpoints' meta describes them (M's meta carries the
        task, the action space, the episode limit, the start banks and the id of V it was trained
        on); ``members``: an ensemble's other Ms (trained on the same V); ``run``, the run folder they
        come from, is named in the one-line errors."""
        vm, mm = vae.meta, mdrnn.meta
        where = RunDir(run) if run is not None else None
        vae_path = where.vae if where is not None else Path("V")
        m_path = where.mdrnn if where is not None else Path("M")
        for key in ("task", "action_space", "max_episode_steps", "start_mu"):
            if key not in mm:
                raise WorldModelError(f"{m_path} lacks '{key}' in its meta: it was not written by the lab's "
                                      f"M stage / WorldModel.save; retrain M")
        if vm.get("task") not in (None, mm["task"]):
            raise WorldModelError(f"{vae_path} is for task {vm.get('task')!r} but {m_path} is for {mm['task']!r}; "
                                  f"retrain one of them on this run's data")
        if task is not None and mm["task"] != task:
            raise WorldModelError(f"{where or 'this'} holds a world model of task {mm['task']!r}, not {task!r}")
        if vae.z_size != mdrnn.config.z_size:
            raise WorldModelError(f"{vae_path} has z_size {vae.z_size} but {m_path} expects z_size "
                                  f"{mdrnn.config.z_size}; re-encode and retrain M with this V")
        if z_size is not None and vae.z_size != z_size:
            raise WorldModelError(f"{where or 'this'} holds a world model with z_size {vae.z_size}, not {z_size}")
        if mm.get("vae_id") is not None and vm.get("id") is not None and mm["vae_id"] != vm["id"]:
            raise WorldModelError(f"{m_path} was trained on latents of another {vae_path.name} (V was retrained "
                                  f"since); re-run the encode and train-M stages")
        for k, m in enumerate(members or (), 1):
            if m.meta.get("vae_id") is not None and m.meta["vae_id"] != mm.get("vae_id"):
                raise WorldModelError(f"ensemble member {k} was trained on latents of another V than member 0 "
                                      f"({m_path}); train M again")
        mid = {k: mm[f"mid_{k}"] for k in ("mu", "logvar", *state_keys(mdrnn)) if f"mid_{k}" in mm} \
            if "mid_mu" in mm else None
        wm = cls(vae, mdrnn, task=mm["task"], action_space=mm["action_space"],
                 max_episode_steps=int(mm["max_episode_steps"]), start_mu=mm["start_mu"],
                 start_logvar=mm.get("start_logvar"), members=members, mid_bank=mid)
        return wm.eval()

    @classmethod
    def untrained(cls, *, task: str = "car_racing", action_space: dict[str, Any] | None = None,
                  max_episode_steps: int = 1000, z_size: int = 32, hidden: int = 256, gaussians: int = 5,
                  bank: int = 8, seed: int = 0) -> WorldModel:
        """A freshly initialised world model with a random start bank (tests, demos, benchmarks)."""
        action_space = dict(action_space or CAR_RACING_ACTIONS)
        adim, discrete = action_dim_of(action_space)
        vae, mdrnn = seeded(lambda: (ConvVAE(VAEConfig(z_size=z_size)),
                                     MDRNN(MDRNNConfig(z_size=z_size, action_dim=adim, discrete_actions=discrete,
                                                       hidden=hidden, gaussians=gaussians))), seed)
        g = torch.Generator().manual_seed(seed)
        start_mu = torch.randn(bank, z_size, generator=g)
        start_logvar = torch.full((bank, z_size), -4.0)
        return cls(vae, mdrnn, task=task, action_space=action_space, max_episode_steps=max_episode_steps,
                   start_mu=start_mu, start_logvar=start_logvar)
