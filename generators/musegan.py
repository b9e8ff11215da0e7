"""MuseGAN (Dong et al. 2018, https://arxiv.org/abs/1709.06298; book chapter 11): four tracks of two
bars of a 16th-note piano roll (:func:`generators.music.piano_roll`), from four kinds of noise.

As the book's model:

- **chords** ``(B, Z)``: one vector for the whole segment, unrolled over the bars by a temporal
  network (transposed convolutions over time): shared by every track;
- **style** ``(B, Z)``: one vector for every bar and every track;
- **melody** ``(B, tracks, Z)``: one vector per track, unrolled over the bars by that track's own
  temporal network;
- **groove** ``(B, tracks, Z)``: one vector per track, the same in every bar.

Each track's bar generator turns ``[chords_bar, style, melody_track_bar, groove_track]`` into one
bar ``(16 steps, 84 pitches)`` (a dense layer, then transposed convolutions up the time axis and
out along the pitch axis, 1 -> 7 -> 84, as the book's); the critic reads the whole segment with
3-D convolutions (bars, steps, pitches; the tracks as channels), by default beside the three more
streams of the paper's follow-up (:class:`_Critic`, ``critic_streams``), and is trained as a WGAN-GP
(gradient penalty 10, 5 critic steps per generator step, Adam 1e-3 with betas 0.5 / 0.9: the
book's settings). Outputs are in ``[-1, 1]``; :func:`binarize` keeps, for each track and step, the
loudest pitch when it is above 0 (the voices of the chorales are monophonic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.music import BAR_STEPS, PITCHES, SEGMENT_BARS
from generators.registry import Family, register

ROLL_SHAPE = (4, SEGMENT_BARS, BAR_STEPS, PITCHES)


@dataclass
class MuseGANConfig(GenConfig):
    """MuseGAN over ``(tracks, bars, steps, pitches)`` piano rolls (book defaults, scaled by ``width``)."""

    shape: tuple[int, ...] = ROLL_SHAPE
    z_dim: int = 32
    """the size of each of the four noise vectors (book: 32)."""
    width: int = 256
    """the widest layer's channels (book: 1024 in the temporal network, 512 in the bar generator)."""
    critic_streams: bool = True
    """the critic of the MuseGAN paper's follow-up (Dong & Yang 2018): beside the book's pitch-then-time
    stream, a time-then-pitch stream, an onset/offset stream and a chroma stream (False: the book's
    critic alone). The book's critic reduces each step's 84 pitches to a few features before it compares
    neighbouring steps, so it hardly sees whether a pitch is held or re-struck every 16th."""
    critic_steps: int = 5
    gp_weight: float = 10.0
    beta1: float = 0.5
    beta2: float = 0.9

    def __post_init__(self) -> None:  # a roll is 4-D: the image/points checks of GenConfig do not apply
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 4 or self.shape[2] != BAR_STEPS or self.shape[3] != PITCHES:
            raise ValueError(f"MuseGAN models (tracks, bars, {BAR_STEPS}, {PITCHES}) piano rolls, got {self.shape}; "
                             f"train it on generators.data.load('chorale_rolls')")
        if self.num_classes:
            raise ValueError("MuseGAN is unconditional here (num_classes must be 0)")
        if self.z_dim < 1 or self.width < 8 or self.critic_steps < 1:
            raise ValueError(f"z_dim >= 1, width >= 8 and critic_steps >= 1, got {self.z_dim}, {self.width}, "
                             f"{self.critic_steps}")

    @property
    def kind(self) -> str:
        return "roll"

    @property
    def tracks(self) -> int:
        return self.shape[0]

    @property
    def bars(self) -> int:
        return self.shape[1]


class _Temporal(nn.Module):
    """``(B, Z)`` -> ``(B, bars, Z)``: transposed convolutions over the bar axis (the book's TemporalNetwork)."""

    def __init__(self, z: int, width: int, bars: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ConvTranspose1d(z, width, bars), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Conv1d(width, z, 1), nn.BatchNorm1d(z), nn.ReLU())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None]).transpose(1, 2)  # (B, bars, Z)


class _BarGenerator(nn.Module):
    """``(B, 4Z)`` -> one bar ``(B, 16, 84)`` in [-1, 1]: time 1 -> 2 -> 4 -> 8 -> 16, pitch 1 -> 7 -> 84."""

    def __init__(self, z4: int, width: int) -> None:
        super().__init__()
        w = width
        self.dense = nn.Sequential(nn.Linear(z4, 2 * w), nn.BatchNorm1d(2 * w), nn.ReLU())
        ch = [w, w // 2, w // 2, w // 4, w // 4]

        def up(a: int, b: int, k: tuple[int, int], s: tuple[int, int]) -> list[nn.Module]:
            return [nn.ConvTranspose2d(a, b, k, s), nn.BatchNorm2d(b), nn.ReLU()]

        self.net = nn.Sequential(
            *up(ch[0], ch[1], (2, 1), (2, 1)),    # (2, 1) -> (4, 1)
            *up(ch[1], ch[2], (2, 1), (2, 1)),    # -> (8, 1)
            *up(ch[2], ch[3], (2, 1), (2, 1)),    # -> (16, 1)
            *up(ch[3], ch[4], (1, 7), (1, 7)),    # -> (16, 7)
            nn.ConvTranspose2d(ch[4], 1, (1, 12), (1, 12)), nn.Tanh())  # -> (16, 84)
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense(x).view(-1, self.w, 2, 1)  # (B, w, 2 steps, 1 pitch)
        return self.net(h)[:, 0]  # (B, 16, 84)


class _Critic(nn.Module):
    """``(B, tracks, bars, 16, 84)`` -> a critic value ``(B,)`` (3-D convolutions, LeakyReLU, no norm).

    The book's critic is the pitch-then-time stream alone; with ``streams`` (the MuseGAN paper's
    follow-up, Dong & Yang 2018) three more read the same segment and their features are joined
    before the last layers:

    - time then pitch: neighbouring steps at the same pitch first (a held note against a re-struck
      or wandering one), then the pitch axis;
    - onsets and offsets: ``|x[t] - x[t-1]|`` summed over the pitches, per track and step, across the
      bar line (how often each voice changes);
    - chroma: the 12 pitch classes' sums per beat (the harmony, whatever the octave).
    """

    def __init__(self, tracks: int, bars: int, width: int, streams: bool = False) -> None:
        super().__init__()
        w = width
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv3d(tracks, w // 2, (bars, 1, 1)), act,           # bars -> 1
            nn.Conv3d(w // 2, w // 2, (1, 1, 12), (1, 1, 12)), act,  # pitch 84 -> 7
            nn.Conv3d(w // 2, w // 2, (1, 1, 7), (1, 1, 7)), act,    # 7 -> 1
            nn.Conv3d(w // 2, w // 2, (1, 2, 1), (1, 2, 1)), act,    # steps 16 -> 8
            nn.Conv3d(w // 2, w // 2, (1, 2, 1), (1, 2, 1)), act,    # -> 4
            nn.Conv3d(w // 2, w, (1, 4, 1), (1, 4, 1)), act,         # -> 1
            nn.Flatten())
        self.streams = streams
        feats = w
        if streams:
            h = max(8, w // 4)
            self.time_pitch = nn.Sequential(
                nn.Conv3d(tracks, h, (bars, 1, 1)), act,                # bars -> 1
                nn.Conv3d(h, h, (1, 3, 1), padding=(0, 1, 0)), act,     # each step beside its neighbours
                nn.Conv3d(h, h, (1, 2, 1), (1, 2, 1)), act,             # steps 16 -> 8
                nn.Conv3d(h, h, (1, 2, 1), (1, 2, 1)), act,             # -> 4
                nn.Conv3d(h, h, (1, 1, 12), (1, 1, 12)), act,           # pitch 84 -> 7
                nn.Conv3d(h, h, (1, 1, 7), (1, 1, 7)), act,             # -> 1
                nn.Conv3d(h, h, (1, 4, 1), (1, 4, 1)), act, nn.Flatten())  # steps 4 -> 1
            self.onsets = nn.Sequential(  # (B, tracks, bars * 16 - 1) changes per step
                nn.Conv1d(tracks, h, 4, 2, 1), act, nn.Conv1d(h, h, 4, 2, 1), act, nn.Conv1d(h, h, 4, 2, 1), act,
                nn.AdaptiveAvgPool1d(1), nn.Flatten())
            self.chroma = nn.Sequential(  # (B, tracks, bars, 4 beats, 12) pitch-class sums
                nn.Conv3d(tracks, h, (bars, 1, 12)), act, nn.Conv3d(h, h, (1, 4, 1)), act, nn.Flatten())
            feats += 3 * h
        self.head = nn.Sequential(nn.Linear(feats, w), act, nn.Linear(w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = [self.net(x)]
        if self.streams:
            n, tracks, bars, steps, pitches = x.shape
            f.append(self.time_pitch(x))
            line = x.reshape(n, tracks, bars * steps, pitches)  # the two bars as one line
            f.append(self.onsets((line[:, :, 1:] - line[:, :, :-1]).abs().sum(-1) / 2))
            on = (x + 1) / 2  # [-1, 1] -> [0, 1]
            chroma = on.reshape(n, tracks, bars, steps // 4, 4, pitches // 12, 12).sum((4, 5))
            f.append(self.chroma(chroma))
        return self.head(torch.cat(f, dim=1)).reshape(-1)


class MuseGAN(Generator):
    """See the module docstring."""

    config: MuseGANConfig

    def __init__(self, config: MuseGANConfig) -> None:
        super().__init__(config)
        c = config
        self.chords_net = _Temporal(c.z_dim, c.width, c.bars)
        self.melody_nets = nn.ModuleList(_Temporal(c.z_dim, c.width, c.bars) for _ in range(c.tracks))
        self.bar_nets = nn.ModuleList(_BarGenerator(4 * c.z_dim, c.width) for _ in range(c.tracks))
        self.critic = _Critic(c.tracks, c.bars, c.width, streams=c.critic_streams)

    @classmethod
    def upgrade_checkpoint(cls, state: Any) -> Any:
        """A checkpoint saved before ``critic_streams`` existed has the book's critic alone (its last two
        layers then sat at ``critic.net.13`` and ``.15``, now ``critic.head.0`` and ``.2``): renamed, and
        marked ``critic_streams=False``; any other state is returned as it is."""
        if isinstance(state, dict) and isinstance(state.get("config"), dict) and "critic_streams" not in state["config"]:
            moved = {"critic.net.13.": "critic.head.0.", "critic.net.15.": "critic.head.2."}

            def rename(k: str) -> str:
                return next((new + k[len(old):] for old, new in moved.items() if k.startswith(old)), k)

            state = {**state, "config": {**state["config"], "critic_streams": False},
                     **{k: {rename(n): v for n, v in state[k].items()} for k in ("model", "ema")
                        if isinstance(state.get(k), dict)}}
        return state

    def noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The four noises of ``n`` samples: chords, style ``(n, Z)``; melody, groove ``(n, tracks, Z)``."""
        c, d = self.config, self.device
        return {"chords": torch.randn(n, c.z_dim, generator=generator, device=d),
                "style": torch.randn(n, c.z_dim, generator=generator, device=d),
                "melody": torch.randn(n, c.tracks, c.z_dim, generator=generator, device=d),
                "groove": torch.randn(n, c.tracks, c.z_dim, generator=generator, device=d)}

    def generate(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        """The four noises -> rolls ``(n, tracks, bars, 16, 84)`` in [-1, 1]."""
        c = self.config
        chords = self.chords_net(noise["chords"])  # (n, bars, Z)
        out = []
        for t in range(c.tracks):
            melody = self.melody_nets[t](noise["melody"][:, t])  # (n, bars, Z)
            bars = [self.bar_nets[t](torch.cat([chords[:, b], noise["style"], melody[:, b], noise["groove"][:, t]],
                                               dim=1)) for b in range(c.bars)]
            out.append(torch.stack(bars, dim=1))  # (n, bars, 16, 84)
        return torch.stack(out, dim=1)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("critic.")]

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {"generator": torch.optim.Adam(self.generator_parameters(), lr=lr, betas=betas),
                "discriminator": torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)}

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def training_step(self, batch: Batch, optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, float]:
        """``critic_steps`` critic updates (WGAN-GP), then one generator update."""
        x, _ = unpack(batch)
        x = x.float()
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        b = x.shape[0]
        for _ in range(self.config.critic_steps):
            with torch.no_grad():
                fake = self.generate(self.noise(b))
            w = self.critic(x).mean() - self.critic(fake).mean()
            gp = self.gradient_penalty(x, fake)
            d_loss = -w + self.config.gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        g_loss = -self.critic(self.generate(self.noise(b))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"d_loss": float(d_loss.detach()), "wasserstein": float(w.detach()), "gp": float(gp.detach()),
                "g_loss": float(g_loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        """``(n, tracks, bars, 16, 84)`` float32 in [-1, 1] (:func:`binarize` makes notes of them)."""
        self.check_cond(n, cond)
        g = as_generator(generator, self.device)
        with self.evaluating():
            return self.generate(self.noise(n, g))


@torch.no_grad()
def noise_effect(model: MuseGAN, which: str, n: int = 64, seed: int = 0) -> float:
    """How far the pitch-class histograms of ``n`` samples move when only the ``which`` noise
    ("chords", "style", "melody", "groove") is drawn again: the mean L1 distance between each
    sample's histogram before and after (0 for a noise the model ignores)."""
    from generators.music import pitch_class_histogram

    g = torch.Generator(device=model.device).manual_seed(seed)
    with model.evaluating():
        base = model.noise(n, g)
        if which not in base:
            raise ValueError(f"unknown noise {which!r}; MuseGAN's noises: {', '.join(base)}")
        other = {**base, which: model.noise(n, g)[which]}
        a, b = (pitch_class_histogram(binarize(model.generate(z).cpu())) for z in (base, other))
    return float(np.abs(a - b).sum(1).mean())


def binarize(rolls: torch.Tensor | np.ndarray) -> np.ndarray:
    """Generator outputs ``(..., steps, 84)`` -> bool rolls: per track and step the loudest pitch,
    when its value is above 0 (else silence)."""
    r = torch.as_tensor(rolls).float()
    top = r.argmax(-1, keepdim=True)
    out = torch.zeros_like(r, dtype=torch.bool).scatter_(-1, top, True) & (r.gather(-1, top) > 0)
    return out.numpy()


register(Family(
    "musegan", MuseGAN, MuseGANConfig,
    "MuseGAN: 4 tracks x 2 bars from chords / style / melody / groove noise, WGAN-GP critic (book ch. 11)",
    kinds=("roll",),
    presets={"tiny": {"width": 16, "z_dim": 8, "critic_steps": 2}, "small": {"width": 64, "z_dim": 16}},
    train={"lr": 1e-3, "batch_size": 64}, monitor="d_loss"))
