"""A few-step diffusion renderer: V's latent ``z`` -> a sharp frame in one or two network evaluations.

V's decoder draws the mean of every frame a latent could stand for (a blur). The pix2pix renderer
(:mod:`generators.renderer`) draws one sharp frame with an adversarial loss; this family does it
with diffusion (book chapter 8), made fast enough for a watched dream by distillation:

- **What diffuses: the detail V's decoder leaves out.** ``base = V_decoder(z)`` (frozen) is the
  blurred frame; the model learns the distribution of the residual ``r = x - base`` (scaled to unit
  standard deviation per channel), conditioned on ``base`` (three extra input channels) and on
  ``z`` itself (a learned projection beside the noise embedding): the book's U-Net
  (:class:`generators.diffusion.UNet`) on 6 channels in, 3 out. ``base`` already holds the scene,
  so the network spends its capacity on edges, textures and small objects.
- **Training** (v-prediction on a cosine schedule, Salimans & Ho 2022): ``r_t = alpha r + sigma eps``,
  regress ``v = alpha eps - sigma r``; pairs ``(x, z ~ q(z | x))`` from the run's frames, as the
  pix2pix renderer trains.
- **Few steps:** :meth:`DiffusionRenderer.distill` halves the sampler's steps by progressive
  distillation (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512): a student learns to do in
  one DDIM step what its teacher does in two, round after round (8 -> 4 -> 2 -> 1); the maths is
  the latent prior's (:func:`generators.nets.distill_v_target`).
- **Deterministic:** :meth:`render` starts every frame from the same noise (``noise_seed``), so the
  same ``z`` always gives the same frame and a watched dream does not flicker.
- **Sharpened (optional):** :meth:`DiffusionRenderer.sharpen` fine-tunes the distilled few-step
  sampler, as it draws (from its fixed noise, through its DDIM steps), with the pix2pix renderer's
  loss: L1 to the real frame plus a patch discriminator ``D(x, z)``. Adversarial diffusion
  distillation (Sauer et al. 2023, https://arxiv.org/abs/2311.17042) pairs a few-step student with a
  discriminator the same way, to get back the detail that distillation and deterministic few-step
  sampling smooth away; unlike it, the anchor here is the real frame rather than the teacher. On
  Doom's default V this step takes a 3,000-step renderer distilled to 2 steps from sharpness 0.39 to
  0.85 of the real frames' and its Fréchet distance in V's latents from 0.180 to 0.115; the L1 term
  alone blurs it further (0.18): docs/RENDERER.md.

    python scripts/renderer_report.py RUN --family diffusion_renderer --steps 3000 --distill-rounds 2 \
        --temperature 0.75 --sharpen-steps 400
    env = gymnasium.make("worldlab/Dream-v0", run_dir=RUN, render_mode="rgb_array", renderer=PATH)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from generators.base import Batch, unpack
from generators.diffusion import UNet
from generators.nets import alpha_sigma, ddim_update, distill_times, distill_v_target, v_noisy
from generators.registry import Family, register
from generators.renderer import VRenderer, VRendererConfig, _PatchD, defaults_for_data, pix2pix_step
from worldlab.training import seeded
from worldlab.vae import salience_weights


@dataclass
class DiffusionRendererConfig(VRendererConfig):
    """A z-conditioned diffusion model of the detail V's decoder leaves out, sampled in few steps."""

    widths: tuple[int, ...] = (16, 32, 64)
    """U-Net channels per resolution (64, 32, 16 pixels): small, so a frame costs ~15 ms per step on one core."""
    block_depth: int = 2
    """residual blocks per U-Net level."""
    embedding_dim: int = 16
    """size of the sinusoidal noise embedding."""
    z_embedding: int = 32
    """size of the learned projection of ``z`` that joins the noise embedding."""
    max_freq: float = 1000.0
    """highest frequency of the noise embedding."""
    steps: int = 8
    """DDIM steps ``render`` takes; :meth:`DiffusionRenderer.distill` halves it each round."""
    noise_seed: int = 0
    """the seed of the one noise image every frame starts from (deterministic frames)."""
    temperature: float = 1.0
    """the scale of that start noise: below 1 the sampler draws a smoother residual (less of the
    fine grain a few-step sampler lays over flat surfaces), at 0 a deterministic DDIM from zero
    noise. Set at drawing time; training does not depend on it."""

    salience: float = 0.0
    """weight the diffusion loss (and distillation's) per pixel by the real frame's salience, as
    V's ``vae.salience`` weights V's loss (:func:`worldlab.vae.salience_weights`): ``1 + salience *
    d / mean(d)`` renormalised to a mean of 1, ``d`` = how far each pixel is from the batch's median
    frame. The few pixels that differ from the static room (Doom's monsters and fireballs) then
    count as much as the floor and ceiling, where a uniform loss spends the model on grain. 0: a
    uniform loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.salience, bool) or not isinstance(self.salience, int | float) or self.salience < 0:
            raise ValueError(f"salience must be a number >= 0, got {self.salience!r}; pass salience=0 for a uniform loss")
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1 or self.block_depth < 1 or self.steps < 1:
            raise ValueError("widths, block_depth and steps must be >= 1")
        if not 0.0 <= float(self.temperature) <= 1.5:
            raise ValueError(f"temperature must be in [0, 1.5] (the start noise's scale), got {self.temperature}")
        if self.embedding_dim < 2 or self.embedding_dim % 2 or self.z_embedding < 1:
            raise ValueError(f"embedding_dim must be even and >= 2 (got {self.embedding_dim}), z_embedding >= 1")


class DiffusionRenderer(VRenderer):
    """``z`` -> ``V_decoder(z) + residual`` drawn by a distilled diffusion model (module docstring)."""

    config: DiffusionRendererConfig

    def __init__(self, config: DiffusionRendererConfig) -> None:
        super().__init__(config, init_decoder=True)
        c = config
        for m in (self.fc_dec, self.decoder):  # the base frame is V's, frozen
            m.requires_grad_(False)
        self.z_proj = torch.nn.Linear(self.z_size, c.z_embedding)
        self.net = UNet(6, c.widths, c.block_depth, c.embedding_dim, c.max_freq, c_out=3, cond=c.z_embedding)
        self.register_buffer("res_std", torch.ones(3))
        self.register_buffer("adapted", torch.tensor(False))
        g = torch.Generator().manual_seed(int(c.noise_seed))
        self.register_buffer("noise", torch.randn(1, 3, 64, 64, generator=g))

    # --- the model ---------------------------------------------------------------------------------
    def v(self, rt: torch.Tensor, t: torch.Tensor, base: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        """The network's v for the scaled residual ``rt`` (B, 3, 64, 64) at times ``t`` (B,), given the
        base frame ``base`` (B, 3, 64, 64) in [-1, 1] and the projected latent ``zc`` (B, z_embedding)."""
        noise_var = alpha_sigma(t)[1] ** 2  # sigma^2, as the book's U-Net is fed
        return self.net(torch.cat([rt, base], dim=1), noise_var, zc)

    def ddim_step(self, rt: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, base: torch.Tensor,
                  zc: torch.Tensor) -> torch.Tensor:
        return ddim_update(rt, self.v(rt, t, base, zc), t, t_next)

    def _scale(self) -> torch.Tensor:
        return self.res_std.view(1, 3, 1, 1)

    def generate(self, z: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` in [-1, 1]: V's frame plus ``steps`` DDIM
        steps (default ``config.steps``) of the residual from the fixed noise, scaled by
        ``config.temperature``."""
        steps = self.config.steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        n = z.shape[0]
        base = self.decode(z).contiguous()
        zc = self.z_proj(z)
        r = self.noise.expand(n, -1, -1, -1) * float(self.config.temperature)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=z.device)
        for i in range(steps):
            r = self.ddim_step(r, ts[i].expand(n), ts[i + 1].expand(n), base, zc)
        return (base + r * self._scale()).clamp(-1.0, 1.0)

    # --- training ------------------------------------------------------------------------------------
    def _pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames ``x`` in [-1, 1] -> (scaled residual, base frame, z), adapting the scale once."""
        z = self.latents(x)
        with torch.no_grad():
            base = self.decode(z).contiguous()
            res = x.float() - base
            if not bool(self.adapted):
                self.res_std.copy_(res.std(dim=(0, 2, 3)).clamp_min(1e-3))
                self.adapted.fill_(True)
        return res / self._scale(), base, z

    def _mse(self, pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The squared error of ``pred`` to ``target``, per pixel weighted by the salience of the real
        frames ``x`` in [-1, 1] (``config.salience``; plain mean at 0)."""
        if not self.config.salience:
            return F.mse_loss(pred, target)
        w = salience_weights((x.float() + 1.0) / 2.0, float(self.config.salience))  # (B, 1, H, W), mean 1
        return (w * (pred - target).pow(2)).mean()

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """v-prediction's squared error on the scaled residual at a uniform time (salience-weighted
        per pixel with ``config.salience``)."""
        x, _ = unpack(batch)
        r, base, z = self._pairs(x)
        t = torch.rand(len(r), device=r.device)
        rt, target = v_noisy(r, torch.randn_like(r), t)
        return {"loss": self._mse(self.v(rt, t, base, self.z_proj(z)), target, x)}

    def distill(self, frames: Any, rounds: int, steps_per_round: int = 400, batch_size: int = 32,
                lr: float = 2e-4, seed: int = 0, progress: Any = None) -> list[float]:
        """Progressive distillation, ``rounds`` times: a copy of this model learns to do in one DDIM
        step what the model did in two, halving ``config.steps`` each round (it must stay divisible).
        ``frames``: a GenData of frames (e.g. ``frames:RUN``) or a float tensor (N, 3, 64, 64) in [-1, 1]. ``progress(round, step, loss)`` is
        called every 50 steps. Returns each round's mean loss over its last 50 steps."""
        if rounds < 1 or self.config.steps % (2 ** rounds):
            raise ValueError(f"{rounds} rounds halve {self.config.steps} steps {rounds} times: the steps must be "
                             f"divisible by {2 ** rounds}; train with a larger config.steps or fewer rounds")
        g = torch.Generator().manual_seed(seed)
        out = []
        for rnd in range(rounds):
            steps = self.config.steps
            teacher = copy.deepcopy(self).eval()
            params = [p for p in self.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=lr)
            self.train()
            tail: list[float] = []
            for it in range(steps_per_round):
                idx = torch.randint(0, len(frames), (batch_size,), generator=g)
                x = _frames_at(frames, idx).to(self.device)
                r, base, z = self._pairs(x)
                t, t_mid, t_next = distill_times(steps, batch_size, g, self.device)
                rt, _ = v_noisy(r, torch.randn(r.shape, generator=g).to(self.device), t)
                with torch.no_grad():
                    zc_t = teacher.z_proj(z)
                    target = teacher.ddim_step(teacher.ddim_step(rt, t, t_mid, base, zc_t), t_mid, t_next, base, zc_t)
                    v_target = distill_v_target(rt, target, t, t_next)
                loss = self._mse(self.v(rt, t, base, self.z_proj(z)), v_target, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tail = (tail + [loss.item()])[-50:]
                if progress is not None and (it + 1) % 50 == 0:
                    progress(rnd, it + 1, sum(tail) / len(tail))
            self.config.steps = steps // 2
            out.append(sum(tail) / len(tail))
        self.eval()
        return out

    def sharpen(self, frames: Any, steps: int, batch_size: int = 32, lr: float = 2e-4, l1_weight: float = 100.0,
                adv_weight: float = 1.0, d_channels: int = 32, seed: int = 0, progress: Any = None
                ) -> dict[str, float]:
        """Fine-tune the sampler as it draws (``config.steps`` DDIM steps from the fixed noise at
        ``config.temperature``, gradients through every step) for ``steps`` updates with the pix2pix
        renderer's loss: ``l1_weight`` x L1 to the real frame + ``adv_weight`` x a patch
        discriminator ``D(x, z)`` (trained beside it, one update per step, then dropped: only the
        renderer is kept). ``frames`` as :meth:`distill` takes them; ``progress(step, l1, d_loss)``
        every 50 steps. Returns the means over the last 50 steps of the L1, the generator's
        adversarial loss and D's loss."""
        if steps < 1:
            raise ValueError(f"sharpening needs steps >= 1, got {steps}")
        g = torch.Generator().manual_seed(seed)
        disc = seeded(lambda: _PatchD(self.z_size, d_channels), seed).to(self.device)
        opt_g = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
        self.train()
        tail: dict[str, list[float]] = {"l1": [], "g_adv": [], "d_loss": []}
        for it in range(steps):
            idx = torch.randint(0, len(frames), (batch_size,), generator=g)
            x = _frames_at(frames, idx).to(self.device)
            z = self.latents(x)  # z ~ q(z | x), as the dream's are
            fake = self.generate(z)  # (B, 3, 64, 64), through the sampler's steps
            losses = pix2pix_step(disc, x, z, fake, opt_g, opt_d, l1_weight=l1_weight, adv_weight=adv_weight)
            for k in tail:
                tail[k] = (tail[k] + [losses[k]])[-50:]
            if progress is not None and (it + 1) % 50 == 0:
                progress(it + 1, sum(tail["l1"]) / len(tail["l1"]), sum(tail["d_loss"]) / len(tail["d_loss"]))
        self.eval()
        return {k: sum(v) / len(v) for k, v in tail.items()}


def _frames_at(frames: Any, idx: torch.Tensor) -> torch.Tensor:
    """Frames ``idx`` of a GenData (``frames:RUN``) or of a float tensor (N, 3, 64, 64) in [-1, 1]."""
    return frames.tensor(idx) if hasattr(frames, "tensor") else frames[idx].float()


register(Family(
    "diffusion_renderer", DiffusionRenderer, DiffusionRendererConfig,
    "dream renderer: z-conditioned diffusion of the detail V's decoder leaves out, distilled to 1-2 steps "
    "(role: renderer)",
    kinds=("image",),
    presets={"tiny": {"widths": (4, 8), "embedding_dim": 4, "z_embedding": 4, "steps": 4},
             "small": {"widths": (16, 32, 64), "block_depth": 1}},
    train={"lr": 1e-3, "batch_size": 32, "ema": 0.999}, monitor="loss", data_defaults=defaults_for_data))
