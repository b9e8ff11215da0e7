"""The renderer role: a generator conditioned on the dream's latent ``z`` that draws the frame.

V's decoder was trained with a squared error, so it draws the mean of every frame that could
have the latent ``z``: a blur. :class:`LatentRenderer` is a conditional GAN in the pix2pix manner
(Isola et al. 2017; book chapter 4): a generator ``G(z)`` with V's decoder architecture, started
from V's own decoder weights, trained with an L1 term to the real frame (so it keeps drawing the
right scene) plus an adversarial term from a patch discriminator ``D(x, z)`` that sees the frame
and the latent (so it draws the sharp track edges, walls and fireballs a real frame has, not
their average). It is deterministic: the same ``z`` always gives the same frame, so a watched
dream does not flicker.

Training pairs come from the run itself: the frames of its rollout shards and ``z`` sampled from
V's posterior ``q(z | x)`` (the dream's ``z`` are samples of M, which was trained on such
samples). The renderer carries a frozen copy of V's encoder for that, so its checkpoint is
self-contained::

    python scripts/train_generator.py renderer --data frames:RUN --steps 2000 --out runs/renderer
    env = gymnasium.make("worldlab/Dream-v0", run_dir=RUN, render_mode="rgb_array",
                         renderer=RunDir("runs/renderer").generator_final)

``RUN`` (the ``--data`` source) supplies both the frames and V (``RunDir(RUN).vae``; the family's
``data_defaults`` hook, :func:`defaults_for_data`); pass ``vae=PATH`` (``train_generator(..., vae=PATH)``,
``generators.make("renderer", vae=PATH)``) to use another V. A
renderer refuses a world model whose V has another latent size or another checkpoint id
(``check_world_model``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.data import frames_dir, is_frames_source
from generators.registry import Family, register
from worldlab.io import torch_load
from worldlab.rundir import RunDir
from worldlab.vae import ConvVAE, VAEConfig


@dataclass
class VRendererConfig(GenConfig):
    """What every renderer of V's latents shares: the frames it draws and the V it draws for."""

    shape: tuple[int, ...] = (3, 64, 64)
    """64x64 RGB frames (V's)."""
    vae: str = ""
    """V whose latents it renders: a ``vae.pt`` checkpoint or a run folder (its ``RunDir.vae``).
    Set from ``--data frames:RUN`` by ``train_generator`` (:func:`defaults_for_data`); not needed
    to load a trained renderer."""
    vae_config: dict[str, Any] | None = None
    """V's config (filled in from the checkpoint; rebuilds the encoder and decoder on load)."""
    vae_id: str = ""
    """V's checkpoint id (``meta["id"]``): a world model with another V is refused."""
    posterior_samples: bool = True
    """train on ``z ~ q(z | x)`` (as the dream's z are) rather than on the posterior mean."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shape != (3, 64, 64):
            raise ValueError(f"a renderer draws V's 64x64 RGB frames, not {self.shape}; train it on "
                             f"frames:RUN at --image-size 64")
        if self.num_classes:
            raise ValueError("a renderer is conditioned on V's latent z, not on class labels")
        if self.vae_config is None and not self.vae:
            raise ValueError("a renderer needs the V whose latents it renders: train it with --data frames:RUN "
                             "(or pass vae=PATH of a V checkpoint)")


@dataclass
class RendererConfig(VRendererConfig):
    """A latent-conditioned pix2pix-style renderer over V's latent space."""

    l1_weight: float = 100.0
    """weight of the L1 term to the real frame (pix2pix: 100)."""
    adv_weight: float = 1.0
    """weight of the adversarial term."""
    d_channels: int = 32
    """filters of the discriminator's first layer (doubling at each of 3 stride-2 layers); 32 keeps
    D (~20M multiply-adds a frame) as cheap as G on a CPU."""
    init_from_vae: bool = True
    """start G from V's decoder weights (else from scratch)."""
    beta1: float = 0.5
    beta2: float = 0.999
    r1_gamma: float = 0.0
    """weight of an R1 penalty on D (Mescheder et al. 2018; StyleGAN's regulariser): ``r1_gamma / 2``
    x the squared norm of D's gradient at the real frames, so that D cannot become a cliff the
    generator gets no direction from; 0 = off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0 (0 turns the R1 penalty off), got {self.r1_gamma}")


def vae_checkpoint_path(vae: str) -> Path:
    """A ``vae.pt`` file, or a run folder holding V (``RunDir.vae``)."""
    p = Path(vae)
    if p.is_dir():
        p = RunDir(p).vae
    if not p.is_file():
        raise FileNotFoundError(f"no V checkpoint at {p}: train the world model first "
                                f"(python scripts/dream_train.py TASK --out RUN), or pass vae=PATH of a V checkpoint")
    return p


class _PatchD(nn.Module):
    """``D(x, z)``: a 64x64 frame and its latent -> an 8x8 map of real/fake logits (70x70-style patches).

    z enters at 8x8 resolution, broadcast over the feature map, so each patch judges whether it
    is a sharp, real-looking piece of *this* scene.
    """

    def __init__(self, z_size: int, ch: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),                                       # (B, ch, 32, 32)
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2),          # (B, 2ch, 16, 16)
            nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1), nn.BatchNorm2d(4 * ch), nn.LeakyReLU(0.2),      # (B, 4ch, 8, 8)
        )
        self.z_proj = nn.Linear(z_size, 4 * ch)
        self.head = nn.Sequential(nn.Conv2d(8 * ch, 4 * ch, 1), nn.LeakyReLU(0.2),               # joins x and z
                                  nn.Conv2d(4 * ch, 1, 3, 1, 1))                                # (B, 1, 8, 8)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 4ch, 8, 8)
        zz = self.z_proj(z)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])  # (B, 4ch, 8, 8)
        return self.head(torch.cat([h, zz], dim=1)).flatten(1)  # (B, 64)


class VRenderer(Generator):
    """What every renderer of V's latents shares: V's frozen encoder (training pairs ``(x, z ~ q(z | x))``),
    V's decoder (the generator's start, or its frozen base), the check against a world model's V and
    the drawing calls ``DreamEnv`` makes. Subclasses define :meth:`generate` and their training."""

    config: VRendererConfig

    def __init__(self, config: VRendererConfig, init_decoder: bool = True) -> None:
        super().__init__(config)
        v: ConvVAE | None = None
        if config.vae_config is None:  # a fresh renderer: read V
            path = vae_checkpoint_path(config.vae)
            state = torch_load(path)
            v = ConvVAE.from_checkpoint(state, path)
            config.vae_config = dict(state["config"])
            config.vae_id = str(v.meta.get("id", ""))
        vae = v if v is not None else ConvVAE(VAEConfig.from_dict(config.vae_config))
        self.z_size = vae.config.z_size
        # the frozen encoder that turns training frames into z (a copy of V's)
        self.encoder = vae.encoder
        self.fc_mu, self.fc_logvar = vae.fc_mu, vae.fc_logvar
        for m in (self.encoder, self.fc_mu, self.fc_logvar):
            m.requires_grad_(False)
        # V's decoder architecture (and, fresh, V's decoder weights unless init_decoder is False)
        self.fc_dec = vae.fc_dec if init_decoder else copy.deepcopy(vae.fc_dec).apply(_reset)
        self.decoder = vae.decoder if init_decoder else copy.deepcopy(vae.decoder).apply(_reset)

    # --- the networks ----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, 3, 64, 64)`` in [-1, 1] -> V's ``(mu, logvar)``, each ``(B, Z)``."""
        with torch.no_grad():
            h = self.encoder(((x + 1.0) / 2.0).contiguous(memory_format=torch.channels_last))
            return self.fc_mu(h).float(), self.fc_logvar(h).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> the decoder's frames ``(B, 3, 64, 64)`` in [-1, 1]."""
        return torch.tanh(self.decode_half_logits(z))  # = 2 sigmoid(logits) - 1: V's decoder output, rescaled

    def decode_half_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Half of the decoder's logits ``(B, 3, 64, 64)``: their tanh is :meth:`decode`'s frame."""
        h = self.fc_dec(z).view(z.shape[0], -1, 1, 1).contiguous(memory_format=torch.channels_last)
        return self.decoder(h).float() * 0.5

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` in [-1, 1]."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The renderer as ``DreamEnv`` calls it: latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` in [0, 1]."""
        return self.render(z)

    @torch.no_grad()
    def render(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` float32 in [0, 1] (deterministic)."""
        if z.ndim != 2 or z.shape[1] != self.z_size:
            raise ValueError(f"this renderer draws latents of size {self.z_size}, got shape {tuple(z.shape)}; "
                             f"use a renderer trained on this world model's V")
        with self.evaluating():
            return (self.generate(z.to(self.device, torch.float32)) + 1.0) / 2.0

    def check_world_model(self, world_model: Any) -> None:
        """Refuse a world model whose V is not the one this renderer was trained on."""
        vae = world_model.vae
        if vae.config.z_size != self.z_size:
            raise ValueError(f"the renderer draws z of size {self.z_size}, this world model's V has z "
                             f"{vae.config.z_size}; train a renderer on its run (train_generator.py {self.FAMILY} "
                             f"--data frames:RUN)")
        vid = str(vae.meta.get("id", ""))
        if self.config.vae_id and vid and vid != self.config.vae_id:
            raise ValueError(f"the renderer was trained on V {self.config.vae_id}, this world model's V is {vid} "
                             f"(retrained since?); train a renderer on its run (train_generator.py {self.FAMILY} "
                             f"--data frames:RUN)")

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        if self.config.posterior_samples and self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return mu

    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Frames for the latents ``cond`` ``(n, Z)``; without ``cond``, for ``z ~ N(0, I)`` (V's prior)."""
        if cond is None:
            g = as_generator(generator, self.device)
            cond = torch.randn(n, self.z_size, generator=g, device=self.device)
        cond = torch.as_tensor(cond, dtype=torch.float32, device=self.device)
        if cond.shape != (n, self.z_size):
            raise ValueError(f"{self.FAMILY}.sample needs latents cond of shape ({n}, {self.z_size}), "
                             f"got {tuple(cond.shape)}")
        return self.render(cond) * 2.0 - 1.0


class LatentRenderer(VRenderer):
    """``G(z)`` -> frame, trained as a conditional GAN with an L1 anchor (see module docstring)."""

    config: RendererConfig

    def __init__(self, config: RendererConfig) -> None:
        super().__init__(config, init_decoder=config.init_from_vae)
        self.discriminator_net = _PatchD(self.z_size, config.d_channels)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` in [-1, 1]: G is V's decoder architecture."""
        return self.decode(z)

    # --- training ----------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        g_params = [*self.fc_dec.parameters(), *self.decoder.parameters()]
        return {"generator": torch.optim.Adam(g_params, lr=lr, betas=betas),
                "discriminator": torch.optim.Adam(self.discriminator_net.parameters(), lr=lr, betas=betas)}

    def training_step(self, batch: Batch, optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, float]:
        """One discriminator update, then one generator update (adversarial + L1 to the real frame)."""
        x, _ = unpack(batch)
        z = self.latents(x)  # (B, Z)
        return pix2pix_step(self.discriminator_net, x, z, self.generate(z), optimizers["generator"],
                            optimizers["discriminator"], l1_weight=self.config.l1_weight,
                            adv_weight=self.adv_weight_at(step), r1_gamma=self.config.r1_gamma)

    def adv_weight_at(self, step: int) -> float:
        """The adversarial term's weight at training step ``step`` (here constant: ``adv_weight``)."""
        return self.config.adv_weight

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The generator's reconstruction term alone (L1 to the real frame), for evaluation."""
        x, _ = unpack(batch)
        return {"loss": (self.generate(self.latents(x)) - x).abs().mean()}


def pix2pix_step(discriminator: nn.Module, x: torch.Tensor, z: torch.Tensor, fake: torch.Tensor,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, *, l1_weight: float,
                 adv_weight: float, r1_gamma: float = 0.0) -> dict[str, float]:
    """One discriminator update, then one generator update, for real frames ``x``, their latents
    ``z`` and the generator's frames ``fake`` (drawn with gradients): ``D(x, z)`` learns real from
    drawn (plus ``r1_gamma / 2`` x the squared norm of its gradient at ``x``, when > 0), the generator
    minimises ``adv_weight`` x its adversarial loss + ``l1_weight`` x the L1 to ``x``. Returns the
    losses and D's accuracies."""
    xr = x.detach().requires_grad_(True) if r1_gamma > 0 else x
    r, f = discriminator(xr, z), discriminator(fake.detach(), z)  # (B, 64) each
    d_loss = 0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                    + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    r1 = torch.zeros(())
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(r.sum(), xr, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        d_loss = d_loss + 0.5 * r1_gamma * r1
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    f = discriminator(fake, z)
    adv = F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
    l1 = (fake - x).abs().mean()
    g_loss = adv_weight * adv + l1_weight * l1
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return {"g_loss": float(g_loss.detach()), "l1": float(l1.detach()), "g_adv": float(adv.detach()),
            "d_loss": float(d_loss.detach()), "d_r1": float(r1.detach()), "d_real_acc": float((r > 0).float().mean()),
            "d_fake_acc": float((f.detach() < 0).float().mean())}


def defaults_for_data(source: str) -> dict[str, Any]:
    """The family's ``data_defaults``: ``--data frames:RUN`` (or ``TASK:RUN``) renders the latents of
    ``RUN``'s own V (the folder is passed when it holds none, so the error names it)."""
    if not is_frames_source(source):
        return {}
    d = frames_dir(source)
    run = RunDir(d.parent)
    return {"vae": str(run.root if run.vae.exists() else d)}


def _reset(m: nn.Module) -> None:
    if hasattr(m, "reset_parameters"):
        m.reset_parameters()


def sharpness(frames: torch.Tensor | np.ndarray) -> float:
    """Mean squared Laplacian of frames (B, 3, H, W) in [0, 1] or uint8 HWC: the high-frequency energy
    a blurred frame lacks (higher = sharper)."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 255.0 if x.shape[-1] == 3 else x.float() / 255.0
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    lap = F.conv2d(x.float().reshape(-1, 1, *x.shape[2:]), k[None, None])
    return float(lap.pow(2).mean())


register(Family(
    "renderer", LatentRenderer, RendererConfig,
    "dream renderer: pix2pix-style conditional GAN on V's latent z, started from V's decoder (role: renderer)",
    kinds=("image",),
    presets={"tiny": {"d_channels": 8}, "small": {"d_channels": 16}},
    train={"lr": 2e-4, "batch_size": 32}, monitor="l1", data_defaults=defaults_for_data))
