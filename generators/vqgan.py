"""VQGAN: a vector-quantised autoencoder with a patch discriminator, and a GPT prior over its codes.

Esser et al. 2021, *Taming Transformers for High-Resolution Image Synthesis*
(https://arxiv.org/abs/2012.09841), on VQ-VAE (van den Oord et al. 2017,
https://arxiv.org/abs/1711.00937); book chapter 10.

**Stage 1, the autoencoder** (``generators.fit`` / ``train_generator.py vqgan``, the lab's one loop
through :meth:`VQGAN.training_step`): a conv encoder maps an image ``(C, H, W)`` to a grid of
vectors ``(D, h, w)`` (``h = H / 2**(len(widths) - 1)``); each vector is replaced by its nearest codebook
row (:class:`VectorQuantizer`), with the straight-through gradient, the codebook loss
``|sg[z_e] - e|^2`` and the commitment loss ``beta |z_e - sg[e]|^2`` (VQ-VAE eq. 3; with
``ema_decay > 0`` the codebook instead follows exponential moving averages of its assigned
vectors, VQ-VAE appendix A.1, and codes left unused are restarted on encoder outputs of the batch,
Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341). A conv decoder draws the image back. The
reconstruction loss is L1 plus a perceptual distance in the feature maps of a frozen copy of the
run's V encoder (LPIPS-style, Zhang et al. 2018, https://arxiv.org/abs/1801.03924, with V's
features instead of a downloaded VGG), plus, from step ``disc_start`` on, a hinge adversarial term
from the renderer's patch discriminator (which trains from step 0), weighted adaptively (VQGAN
eq. 7). The training log holds the code usage of every batch: ``perplexity`` (exp of the entropy
of the code histogram: K when all K codes are used equally) and ``code_use`` (the fraction of
codes used at least once).

**Stage 2, the prior** (:meth:`VQGAN.fit_prior`): a :class:`generators.gpt.GPT` over each image's
codes in raster order after a start token, trained by ``generators.fit`` on the frozen encoder's
code grids (:class:`CodeGrids`), so it gets the GPT family's own recipe (AdamW with weight decay,
warm-up and cosine decay) from the lab's one loop. The two stages are two ``fit`` calls, as in the
paper, rather than two phases of one ``training_step``: each trains with its own optimizer,
schedule and logged keys, and the autoencoder is frozen while the prior learns (the codes it
models do not move). :meth:`VQGAN.sample` draws codes from the prior and decodes them; before the
prior is trained its GPT's output is close to uniform, so samples are images of nearly uniformly
random codes (valid images, not scenes).

Without a V (``vae=""``: digits, MNIST, or a frames run with no V) there is no perceptual term:
the model trains on L1 + adversarial alone.

Codes: ``encode(x) -> (B, h, w)`` long, ``decode_codes(codes) -> (B, C, H, W)`` in [-1, 1],
``reconstruct(x)``. :func:`measure` gives the reconstruction numbers of a held-out set (sharpness,
Fréchet distance in V's latent space, codebook perplexity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.data import GenData, frames_dir, is_frames_source
from generators.diffusion import _ResBlock
from generators.gpt import GPT, GPTConfig
from generators.registry import Family, register
from generators.renderer import _PatchD, sharpness, vae_checkpoint_path
from generators.sequence import filter_logits
from generators.text import TokenData
from generators.train import FitConfig, fit
from worldlab.io import torch_load
from worldlab.rundir import RunDir
from worldlab.vae import ConvVAE, VAEConfig


@dataclass
class VQGANConfig(GenConfig):
    """A small VQGAN (the paper's layout at CPU size) and its GPT prior."""

    shape: tuple[int, ...] = (3, 64, 64)
    """``(C, H, W)`` with C 1 or 3 and H, W divisible by ``2**downsamples`` (set from the data)."""
    widths: tuple[int, ...] = (32, 64, 128)
    """filters at each resolution, full size first; ``len(widths) - 1`` stride-2 stages, so the code
    grid is ``H / 2**(len(widths) - 1)`` a side (64x64 frames: 16x16 codes)."""
    res_blocks: int = 1
    """residual blocks (the book's, :mod:`generators.diffusion`) after each down/up stage below full size."""
    codebook_size: int = 512
    """K, the number of codebook rows (the paper: 1024 at 256x256)."""
    code_dim: int = 32
    """D, the size of a codebook row."""
    beta: float = 0.25
    """commitment weight (VQ-VAE, https://arxiv.org/abs/1711.00937: 0.25)."""
    ema_decay: float = 0.99
    """codebook update: > 0 moves each row to an exponential moving average of the encoder outputs
    assigned to it (VQ-VAE appendix A.1: 0.99) and drops the codebook loss; 0 learns the codebook by
    gradient of the codebook loss (VQ-VAE eq. 3)."""
    restart_below: float = 1.0
    """a code whose moving-average use per batch falls below this is restarted on a random encoder
    output of the batch (Jukebox, https://arxiv.org/abs/2005.00341: 1.0); 0 = never."""
    vae: str = ""
    """V whose frozen encoder gives the perceptual loss: a ``vae.pt`` or a run folder (``RunDir.vae``);
    set from ``--data frames:RUN`` when that run has a V. Empty: no perceptual term, the model trains
    on L1 (+ adversarial) alone. Not needed to load a trained model."""
    vae_config: dict[str, Any] | None = None
    """V's config (filled in from the checkpoint; rebuilds the encoder on load)."""
    perceptual_weight: float = 1.0
    """weight of the perceptual distance in V's features (the paper's LPIPS weight: 1)."""
    disc_start: int = 1000
    """step from which the adversarial term enters the autoencoder's loss (the paper starts it late,
    once reconstructions are good). The discriminator itself trains from step 0: an untrained one
    gives a near-zero ``|grad L_GAN|``, so the adaptive weight would start huge and wreck the
    reconstructions and the codebook when the term comes on (measured: perplexity 159 -> 40)."""
    disc_weight: float = 0.8
    """weight of the adversarial term (times the adaptive weight; taming-transformers configs: 0.8)."""
    adaptive_weight: bool = True
    """scale the adversarial term by |grad L_rec| / |grad L_GAN| at the decoder's last layer (VQGAN eq. 7)."""
    d_channels: int = 32
    """filters of the patch discriminator's first layer (the renderer's ``_PatchD``)."""
    beta1: float = 0.5
    beta2: float = 0.9
    """Adam betas of both optimizers (taming-transformers: 0.5, 0.9)."""
    prior_layers: int = 4
    prior_heads: int = 4
    prior_width: int = 128
    """the GPT prior's size (nanoGPT's small character model: 4 layers, 4 heads, 128 wide)."""
    prior_warmup: int = 100
    """steps of learning-rate warm-up of the prior (the GPT family's schedule)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.widths = tuple(int(w) for w in self.widths)
        self.require_image("vqgan", square_pow2=False)
        c, h, w = self.shape
        f = 2 ** (len(self.widths) - 1)
        if c not in (1, 3):
            raise ValueError(f"vqgan's patch discriminator reads 1- or 3-channel images, got {c} channels")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths needs >= 2 positive entries (one per resolution), got {self.widths}")
        if h % f or w % f or min(h, w) < 8:
            raise ValueError(f"vqgan needs images of side >= 8 divisible by 2**{len(self.widths) - 1} = {f} "
                             f"(len(widths) - 1 halvings), got {h}x{w}")
        if self.num_classes:
            raise ValueError("vqgan is unconditional; train it without class labels")
        if self.codebook_size < 2 or self.code_dim < 1 or self.res_blocks < 0:
            raise ValueError("codebook_size must be >= 2, code_dim >= 1, res_blocks >= 0")
        if not 0.0 <= self.ema_decay < 1.0 or self.restart_below < 0 or self.disc_start < 0:
            raise ValueError("ema_decay must be in [0, 1), restart_below >= 0, disc_start >= 0")
        if self.vae and self.shape != (3, 64, 64):
            raise ValueError(f"vqgan's perceptual loss reads V's 64x64 RGB frames, not {self.shape}; "
                             f"train on frames:RUN at --image-size 64 or leave vae empty (L1 only)")

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)``: the code grid of one image."""
        f = 2 ** (len(self.widths) - 1)
        return self.shape[1] // f, self.shape[2] // f


# --- the quantiser --------------------------------------------------------------------------------


@dataclass
class Quantized:
    """What :meth:`VectorQuantizer.forward` returns for encoder outputs ``z_e`` ``(B, D, h, w)``."""

    z_q: torch.Tensor
    """``(B, D, h, w)``: the codebook rows, with the straight-through gradient to ``z_e``."""
    codes: torch.Tensor
    """``(B, h, w)`` long: the index of each row."""
    commitment: torch.Tensor
    """``|z_e - sg[e]|^2`` (mean), its gradient reaches only the encoder."""
    codebook: torch.Tensor
    """``|sg[z_e] - e|^2`` (mean), its gradient reaches only the codebook."""


def code_usage(codes: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """``(perplexity, fraction used)`` of a batch of codes: ``exp(-sum p log p)`` of the code histogram
    (``num_codes`` when all are used equally, 1 when one code is) and the fraction used at least once."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).float()  # (K,)
    p = counts / counts.sum()
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return float(entropy.exp()), float((counts > 0).float().mean())


class VectorQuantizer(nn.Module):
    """Nearest-row quantisation against a ``(K, D)`` codebook (see the module docstring)."""

    def __init__(self, num_codes: int, dim: int, ema_decay: float, restart_below: float) -> None:
        super().__init__()
        self.num_codes, self.dim, self.decay, self.restart_below = num_codes, dim, ema_decay, restart_below
        self.codebook = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes),
                                     requires_grad=ema_decay == 0)
        self.register_buffer("usage", torch.ones(num_codes))
        """moving average of each code's assignments per batch (decay ``ema_decay``, 0.99 without EMA)."""
        if ema_decay > 0:
            self.register_buffer("ema_sum", self.codebook.detach().clone())
            """moving average of the sum of the vectors assigned to each code (the row is ema_sum / usage)."""

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Vectors ``(N, D)`` -> the index of their nearest codebook row ``(N,)`` (squared Euclidean)."""
        e = self.codebook
        d = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.t() + e.pow(2).sum(1)[None]  # (N, K)
        return d.argmin(1)

    def forward(self, z_e: torch.Tensor) -> Quantized:
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        codes = self.nearest(flat.detach())  # (N,)
        e = F.embedding(codes, self.codebook)  # (N, D)
        commitment = F.mse_loss(flat, e.detach())
        codebook = F.mse_loss(e, flat.detach())
        z_q = flat + (e - flat).detach()  # straight-through: forward e, backward identity to z_e
        return Quantized(z_q.view(b, h, w, d).permute(0, 3, 1, 2), codes.view(b, h, w), commitment, codebook)

    @torch.no_grad()
    def update(self, z_e: torch.Tensor, codes: torch.Tensor) -> int:
        """After a training step on encoder outputs ``z_e`` ``(B, D, h, w)`` with codes ``(B, h, w)``:
        the moving averages (and, with EMA, the codebook rows), then restarts of unused codes on random
        outputs of the batch. Returns the number of codes restarted."""
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).float()  # (N, D)
        codes = codes.flatten()
        counts = torch.bincount(codes, minlength=self.num_codes).float()  # (K,)
        decay = self.decay or 0.99
        self.usage.mul_(decay).add_(counts, alpha=1.0 - decay)
        if self.decay > 0:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)  # (K, D)
            self.ema_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
            n = self.usage.sum()
            smoothed = (self.usage + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing (Sonnet's)
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = (self.usage < self.restart_below).nonzero().flatten()
        if len(dead):
            pick = flat[torch.randint(0, len(flat), (len(dead),), device=flat.device)]  # (n_dead, D)
            self.codebook[dead] = pick
            self.usage[dead] = 1.0
            if self.decay > 0:
                self.ema_sum[dead] = pick
        return len(dead)


# --- the networks ---------------------------------------------------------------------------------


def _encoder(c: int, widths: tuple[int, ...], res_blocks: int, code_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1), nn.SiLU()]  # (B, w0, H, W)
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Conv2d(a, b, 4, 2, 1), nn.SiLU()]  # halves: (B, b, H/2^i, W/2^i)
        layers += [_ResBlock(b, b) for _ in range(res_blocks)]
    layers += [nn.SiLU(), nn.Conv2d(widths[-1], code_dim, 1)]  # (B, D, h, w)
    return nn.Sequential(*layers)


def _decoder(c: int, widths: tuple[int, ...], res_blocks: int, code_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(code_dim, widths[-1], 3, padding=1)]  # (B, w_last, h, w)
    layers += [_ResBlock(widths[-1], widths[-1]) for _ in range(res_blocks)]
    up = list(zip(widths[:0:-1], widths[-2::-1], strict=True))  # (from, to), coarse to fine
    for i, (a, b) in enumerate(up):
        layers += [nn.SiLU(), nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]  # doubles
        if i < len(up) - 1:  # no residual blocks at full size (the dearest resolution on a CPU)
            layers += [_ResBlock(b, b) for _ in range(res_blocks)]
    layers += [nn.SiLU(), nn.Conv2d(widths[0], c, 3, padding=1)]  # (B, C, H, W), unbounded
    return nn.Sequential(*layers)


def v_features(encoder: nn.Sequential, x01: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps after each ReLU of V's encoder (``worldlab.vae.ConvVAE.encoder``) for frames
    ``(B, 3, 64, 64)`` in [0, 1]: ``(B, 32, 31, 31)``, ``(B, 64, 14, 14)``, ``(B, 128, 6, 6)``,
    ``(B, 256, 2, 2)`` at the paper's widths."""
    feats, h = [], x01
    for layer in encoder:
        if isinstance(layer, nn.Flatten):
            break
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            feats.append(h)
    return feats


def perceptual_distance(encoder: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS with V's features and unit weights, per image ``(B,)``: for images ``x, y`` in [-1, 1],
    ``sum_l mean_{h,w} |n(f_l(x)) - n(f_l(y))|^2`` over V's encoder layers ``l``, ``n`` scaling each
    position's feature vector to unit length. 0 for identical images."""
    total = x.new_zeros(x.shape[0])
    for fx, fy in zip(v_features(encoder, (x + 1.0) / 2.0), v_features(encoder, (y + 1.0) / 2.0), strict=True):
        nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-8)
        ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (nx - ny).pow(2).sum(1).flatten(1).mean(1)
    return total


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017, as in VQGAN): ``(relu(1 - D(x)) + relu(1 + D(G)))/2``."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


# --- the model ------------------------------------------------------------------------------------


class VQGAN(Generator):
    """Encoder, codebook, decoder, patch discriminator and a GPT prior (see the module docstring)."""

    config: VQGANConfig

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        c = config
        ch = c.shape[0]
        self.encoder = _encoder(ch, c.widths, c.res_blocks, c.code_dim)
        self.quantizer = VectorQuantizer(c.codebook_size, c.code_dim, c.ema_decay, c.restart_below)
        self.decoder = _decoder(ch, c.widths, c.res_blocks, c.code_dim)
        self.discriminator_net = _PatchD(1, c.d_channels)  # unconditional: its z is a constant 0
        self.v_encoder: nn.Sequential | None = None
        if c.vae or c.vae_config is not None:
            self.v_encoder = _frozen_v_encoder(c)
        h, w = c.grid
        # the prior: codes in raster order after a start token (id K), so the vocabulary is K + 1
        self.prior = GPT(GPTConfig(shape=(h * w,), vocab_size=c.codebook_size + 1, layers=c.prior_layers,
                                   heads=c.prior_heads, width=c.prior_width, warmup=c.prior_warmup))

    @property
    def start_token(self) -> int:
        return self.config.codebook_size

    # --- codes ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] -> codes ``(B, h, w)`` long."""
        return self.quantizer(self.encoder(x.to(self.device))).codes

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, h, w)`` -> images ``(B, C, H, W)`` float32 in [-1, 1]."""
        e = F.embedding(codes.to(self.device), self.quantizer.codebook)  # (B, h, w, D)
        return self.decoder(e.permute(0, 3, 1, 2)).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] -> their reconstructions through the codes, in [-1, 1]."""
        return self.decode_codes(self.encode(x))

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> patch logits ``(B, P)`` (higher = more real)."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # the renderer's D reads RGB
        return self.discriminator_net(x, x.new_zeros(x.shape[0], 1))

    # --- training ---------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        ae = [p for m in (self.encoder, self.quantizer, self.decoder) for p in m.parameters() if p.requires_grad]
        return {"autoencoder": torch.optim.Adam(ae, lr=lr, betas=betas),
                "discriminator": torch.optim.Adam(self.discriminator_net.parameters(), lr=lr, betas=betas)}

    def _autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Quantized, dict[str, torch.Tensor]]:
        """``(z_e, reconstruction, quantized, {reconstruction loss and its parts})`` for images ``x``."""
        z_e = self.encoder(x)  # (B, D, h, w)
        q = self.quantizer(z_e)
        rec = self.decoder(q.z_q)  # (B, C, H, W)
        parts = {"l1": (rec - x).abs().mean()}
        rec_loss = parts["l1"]
        if self.v_encoder is not None:
            parts["perceptual"] = perceptual_distance(self.v_encoder, x, rec).mean()
            rec_loss = rec_loss + self.config.perceptual_weight * parts["perceptual"]
        parts["rec_loss"] = rec_loss
        return z_e, rec, q, parts

    def _vq_loss(self, q: Quantized) -> torch.Tensor:
        vq = self.config.beta * q.commitment
        return vq if self.config.ema_decay > 0 else vq + q.codebook

    def adversarial_weight(self, rec_loss: torch.Tensor, g_adv: torch.Tensor) -> torch.Tensor:
        """VQGAN eq. 7: ``disc_weight * |grad L_rec| / (|grad L_GAN| + 1e-4)`` at the decoder's last layer."""
        if not self.config.adaptive_weight:
            return torch.tensor(self.config.disc_weight)
        last = self.decoder[-1].weight
        (g_rec,) = torch.autograd.grad(rec_loss, last, retain_graph=True)
        (g_gan,) = torch.autograd.grad(g_adv, last, retain_graph=True)
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach() * self.config.disc_weight

    def training_step(self, batch: Batch, optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, float]:
        """One autoencoder update (reconstruction + VQ, + adversarial from ``disc_start``), the codebook's
        moving averages and restarts, then one discriminator update."""
        x, _ = unpack(batch)
        opt_ae, opt_d = optimizers["autoencoder"], optimizers["discriminator"]
        adversarial = step >= self.config.disc_start
        z_e, rec, q, parts = self._autoencode(x)
        with torch.set_grad_enabled(adversarial):
            g_adv = -self.discriminate(rec).mean()
        weight = self.adversarial_weight(parts["rec_loss"], g_adv) if adversarial else torch.tensor(0.0)
        loss = parts["rec_loss"] + self._vq_loss(q) + (weight * g_adv if adversarial else 0.0)
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        restarts = self.quantizer.update(z_e, q.codes)
        d_loss = hinge_d_loss(self.discriminate(x), self.discriminate(rec.detach()))  # on (B, P) logits each
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        perplexity, used = code_usage(q.codes, self.config.codebook_size)
        logs = {"loss": loss, "commitment": q.commitment, "g_adv": g_adv, "adv_weight": weight, "d_loss": d_loss,
                **{k: v for k, v in parts.items() if k != "rec_loss"}}
        if self.config.ema_decay == 0:
            logs["codebook"] = q.codebook
        return {**{k: float(v.detach()) for k, v in logs.items()}, "perplexity": perplexity, "code_use": used,
                "restarts": float(restarts)}

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The autoencoder's loss without the adversarial term (reconstruction + VQ), for evaluation."""
        x, _ = unpack(batch)
        _, _, q, parts = self._autoencode(x)
        return {"loss": parts["rec_loss"] + self._vq_loss(q), "commitment": q.commitment,
                **{k: v for k, v in parts.items() if k != "rec_loss"}}

    # --- the prior ----------------------------------------------------------------------------------
    def code_grids(self, data: GenData, batch_size: int = 256) -> CodeGrids:
        """The prior's training data: every image of ``data`` encoded, as one window per image."""
        grids = [self.encode(data.tensor(torch.arange(i, min(i + batch_size, len(data)))))
                 for i in range(0, len(data), batch_size)]
        codes = torch.cat(grids).flatten(1).cpu()  # (N, h*w)
        start = torch.full((len(codes), 1), self.start_token, dtype=torch.long)
        return CodeGrids(f"{data.name} codes", torch.cat([start, codes], 1).flatten(), "", codes.shape[1])

    def fit_prior(self, data: GenData, settings: FitConfig | None = None, out: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu", progress: bool = True) -> dict[str, list[float]]:
        """Stage 2: train the GPT prior on the codes of ``data`` (the autoencoder stays frozen), through
        ``generators.fit`` with the GPT family's recipe (``settings`` default: 1,000 steps of batch 12,
        AdamW 1e-3, weight decay 0.1); ``out`` keeps its run folder (resumable). Returns its history."""
        settings = settings or FitConfig()
        self.to(device)
        with self.evaluating():
            grids = self.code_grids(data)
        history = fit(self.prior, grids, settings, out, device, progress)
        self.meta["prior_steps"] = settings.steps
        return history

    @torch.no_grad()
    def sample_codes(self, n: int, generator: int | torch.Generator | None = None, temperature: float = 1.0,
                     top_k: int | None = None) -> torch.Tensor:
        """``n`` code grids ``(n, h, w)`` drawn from the prior, one code at a time after the start token."""
        g = as_generator(generator, self.device)
        h, w = self.config.grid
        with self.evaluating():
            state = self.prior.init_state(n)
            tok = torch.full((n,), self.start_token, dtype=torch.long, device=self.device)
            out = torch.empty(n, h * w, dtype=torch.long, device=self.device)
            for t in range(h * w):
                logits, state = self.prior.step(tok, state)  # (n, K + 1)
                logits[:, self.start_token] = float("-inf")  # only codes follow
                probs = torch.softmax(filter_logits(logits / temperature, top_k), dim=-1)
                tok = out[:, t] = torch.multinomial(probs, 1, generator=g)[:, 0]
        return out.view(n, h, w)

    def sample(self, n: int, cond: torch.Tensor | None = None, generator: int | torch.Generator | None = None,
               temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in [-1, 1]: codes from the prior, decoded (see the module docstring)."""
        self.check_cond(n, cond)
        with self.evaluating():
            return self.decode_codes(self.sample_codes(n, generator, temperature, top_k))


class CodeGrids(TokenData):
    """Code grids as token windows: image ``i`` is the window ``tokens[i (L + 1) : (i + 1) (L + 1)]``,
    its start token and its ``L = h w`` codes in raster order (``block_size = L``). ``TokenData``
    draws windows at any offset of a text; these start only where an image does."""

    def __len__(self) -> int:
        return len(self.tokens) // (self.block_size + 1)

    def windows(self, starts: torch.Tensor) -> torch.Tensor:
        """The ``(len(starts), L + 1)`` windows of images ``starts``."""
        return super().windows(starts * (self.block_size + 1))


def _frozen_v_encoder(config: VQGANConfig) -> nn.Sequential:
    """A frozen copy of V's encoder (read from ``config.vae`` for a fresh model, whose ``vae_config``
    it fills in; rebuilt from ``vae_config`` for a loaded one, its weights then come from the checkpoint)."""
    if config.vae_config is None:
        path = vae_checkpoint_path(config.vae)
        state = torch_load(path)
        vae = ConvVAE.from_checkpoint(state, path)
        config.vae_config = dict(state["config"])
    else:
        vae = ConvVAE(VAEConfig.from_dict(config.vae_config))
    vae.encoder.requires_grad_(False)
    return vae.encoder


def defaults_for_data(source: str) -> dict[str, Any]:
    """The family's ``data_defaults``: ``--data frames:RUN`` takes ``RUN``'s V for the perceptual loss
    when the run has one (none: L1 only)."""
    if not is_frames_source(source):
        return {}
    run = RunDir(frames_dir(source).parent)
    return {"vae": str(run.root)} if run.vae.exists() else {}


# --- measuring ------------------------------------------------------------------------------------


@torch.no_grad()
def measure(model: VQGAN, vae: Any, test: GenData, batch_size: int = 32, samples: int = 0,
            seed: int = 0) -> dict[str, Any]:
    """Reconstruction quality on held-out frames ``test`` (uint8 levels, ``(N, 3, 64, 64)``), with V's
    posterior mean as features (``vae``: a ``worldlab.vae.ConvVAE`` or the ``vae`` family's model):

    - ``l1``, ``mse``: per pixel, images in [0, 1];
    - ``sharpness_vs_real``: :func:`generators.renderer.sharpness` of the reconstructions over the real frames';
    - ``frechet_v_latent``: Fréchet distance between V's ``mu`` of the reconstructions and of the real
      frames (``generators.metrics.frechet_distance``);
    - ``perplexity``, ``code_use``: code usage per random batch of ``batch_size`` frames (mean over
      batches, as in the training log), and ``perplexity_all``, ``code_use_all`` over all of ``test``;
    - with ``samples > 0``: ``samples_frechet_v_latent`` of that many prior samples against the real frames.
    """
    from generators.metrics import frechet_distance

    v: ConvVAE = vae.vae if hasattr(vae, "vae") else vae
    batch_size = min(batch_size, len(test))
    model.eval()
    x01 = test.x.float() / (test.levels - 1)  # (N, 3, 64, 64) in [0, 1]
    recs, codes = [], []
    for i in range(0, len(test), batch_size):
        c = model.encode(x01[i:i + batch_size] * 2.0 - 1.0)  # (b, h, w)
        codes.append(c.cpu())
        recs.append(((model.decode_codes(c) + 1.0) / 2.0).cpu())
    rec = torch.cat(recs)

    def feats(y01: torch.Tensor) -> np.ndarray:
        return torch.cat([v.encode(y01[i:i + 256])[0].cpu() for i in range(0, len(y01), 256)]).numpy()

    f_real = feats(x01)
    all_codes, k = torch.cat(codes), model.config.codebook_size  # (N, h, w)
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))  # batches as in training
    usage = [code_usage(all_codes[perm[i:i + batch_size]], k) for i in range(0, len(test) - batch_size + 1, batch_size)]
    all_ppl, all_use = code_usage(all_codes, k)
    real_sharp = sharpness(x01)
    res: dict[str, Any] = {
        "frames": len(test), "l1": float((rec - x01).abs().mean()), "mse": float((rec - x01).pow(2).mean()),
        "real_sharpness": real_sharp, "sharpness_vs_real": sharpness(rec) / real_sharp,
        "frechet_v_latent": frechet_distance(feats(rec), f_real),
        "perplexity": float(np.mean([u[0] for u in usage])), "code_use": float(np.mean([u[1] for u in usage])),
        "perplexity_all": all_ppl, "code_use_all": all_use}
    if samples > 0:
        gen = torch.cat([(model.sample(min(100, samples - i), generator=seed + i).cpu() + 1.0) / 2.0
                         for i in range(0, samples, 100)])
        res["samples_frechet_v_latent"] = frechet_distance(feats(gen), f_real)
        res["samples_sharpness_vs_real"] = sharpness(gen) / real_sharp
    return res


register(Family(
    "vqgan", VQGAN, VQGANConfig,
    "VQGAN: VQ autoencoder with EMA codebook, V-feature perceptual loss, patch GAN, GPT prior (book ch. 10)",
    kinds=("image",),
    presets={"tiny": {"widths": (8, 16), "res_blocks": 1, "codebook_size": 16, "code_dim": 4, "d_channels": 8,
                      "disc_start": 10, "prior_layers": 1, "prior_heads": 2, "prior_width": 16, "prior_warmup": 5},
             "small": {"disc_start": 350}},  # measured on CarRacing: 700 steps of batch 16, ~11 CPU minutes
    # taming-transformers' lr is 4.5e-6 per image of a batch summed over GPUs (12 x 8: 4.3e-4)
    train={"lr": 5e-4, "batch_size": 16}, monitor="l1", data_defaults=defaults_for_data))
