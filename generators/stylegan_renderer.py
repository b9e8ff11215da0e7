"""A z-conditioned StyleGAN renderer: the dream's latent ``z`` drives StyleGAN's styles.

The pix2pix renderer (:mod:`generators.renderer`) draws with V's decoder architecture; this one
draws with StyleGAN's synthesis network (:mod:`generators.stylegan`, book chapter 10): V's latent
``z`` goes through the mapping network to ``w``, every style layer of the synthesis network reads
``w`` through its modulated convolutions, and the per-layer noise inputs are the fixed noise
images saved with the model (``noise="const"``), so the same ``z`` always gives the same frame and
a watched dream does not flicker. It trains by the pix2pix renderer's recipe (its
:meth:`~generators.renderer.LatentRenderer.training_step`): an L1 term to the real frame plus the
patch discriminator ``D(x, z)`` that sees the frame and its latent, on pairs ``(x, z ~ q(z | x))``
from the run's frames.

By default (``residual=True``) StyleGAN draws the detail V's decoder leaves out, over V's frozen
decoder frame, as the diffusion renderer does: ``G(z) = tanh(V_logits(z) / 2 + S(map(z)))``, with
the synthesis network's to-RGB layers starting at zero, so training starts from V's own frame. A
synthesis network started from its learned 4x4 constant must first learn the scene's layout
through its styles alone; from scratch (``residual=False``) it had not after 1,500 steps, and
its patch discriminator won from step ~20 on (docs/RENDERER.md).

    python scripts/renderer_report.py RUN --family stylegan_renderer --steps 1500 --doc docs/RENDERER.md
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generators.registry import Family, register
from generators.renderer import (
    LatentRenderer,
    RendererConfig,
    VRenderer,
    _PatchD,
    defaults_for_data,
)
from generators.stylegan import StyleGANConfig, StyleGenerator


@dataclass
class StyleRendererConfig(RendererConfig):
    """The pix2pix renderer's loss and discriminator around StyleGAN's generator."""

    w_dim: int = 128
    """size of the intermediate latent w."""
    mapping_layers: int = 4
    """layers of the mapping network z -> w (paper: 8)."""
    mapping_lr_mul: float = 0.01
    """learning-rate multiplier of the mapping network (paper: 0.01)."""
    channels: int = 16
    """filters at 64x64, doubled at each halving of the side (as StyleGAN's ``channels``)."""
    max_channels: int = 128
    """cap on the filters of any stage."""
    init_from_vae: bool = False
    """unused: the generator is StyleGAN's (V's decoder stays as it is, frozen)."""
    residual: bool = True
    """draw over V's frozen decoder frame (StyleGAN adds the detail; starts as V's frame) rather
    than the whole frame from scratch."""
    spatial: bool = False
    """with ``residual``: V's decoder frame, averaged down to each block's side, also enters the
    synthesis network (a 1x1 convolution added to the block's features, starting at zero), so the
    detail can be placed where V's frame shows its blurred objects; the styles alone carry no
    position. Off by default: on Doom, with ``d_lr_mul=0.25`` and ``adv_ramp=300`` beside it, the
    renderer collapsed to one bright arc in every frame (FD 1.36; without the three, 0.775;
    docs/RENDERER.md)."""
    d_lr_mul: float = 1.0
    """the discriminator's learning rate as a multiple of the generator's."""
    adv_ramp: int = 0
    """training steps over which the adversarial weight rises linearly from 0 to ``adv_weight``
    (L1 first: D does not meet a generator that still draws nothing)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.w_dim, self.mapping_layers, self.channels, self.max_channels) < 1:
            raise ValueError("w_dim, mapping_layers, channels and max_channels must be >= 1")
        if self.spatial and not self.residual:
            raise ValueError("spatial=True feeds V's decoder frame to the synthesis network: it needs residual=True")
        if not self.d_lr_mul > 0 or self.adv_ramp < 0:
            raise ValueError(f"d_lr_mul must be > 0 and adv_ramp >= 0, got {self.d_lr_mul}, {self.adv_ramp}")

    def style_config(self, z_size: int) -> StyleGANConfig:
        return StyleGANConfig(shape=self.shape, z_dim=z_size, w_dim=self.w_dim, mapping_layers=self.mapping_layers,
                              mapping_lr_mul=self.mapping_lr_mul, channels=self.channels,
                              max_channels=self.max_channels)


class StyleRenderer(LatentRenderer):
    """``G(z)`` = StyleGAN's synthesis of the styles of ``map(z)``, with constant noise (module docstring)."""

    config: StyleRendererConfig

    def __init__(self, config: StyleRendererConfig) -> None:
        VRenderer.__init__(self, config, init_decoder=True)
        for m in (self.fc_dec, self.decoder):
            m.requires_grad_(False)
        self.style = StyleGenerator(config.style_config(self.z_size))
        if config.residual:  # the detail starts at zero: G(z) is V's decoder frame at step 0
            for to_rgb in self.style.to_rgb:
                nn.init.zeros_(to_rgb.conv.conv.weight)
        widths = config.style_config(self.z_size).widths()
        self.frame_in = nn.ModuleList(nn.Conv2d(3, ch, 1) for ch in widths) if config.spatial else None
        if self.frame_in is not None:
            for conv in self.frame_in:  # starts at zero: the synthesis network learns to read the frame
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.discriminator_net = _PatchD(self.z_size, config.d_channels)

    @classmethod
    def upgrade_checkpoint(cls, state: Any) -> Any:
        """A checkpoint saved before ``spatial``, ``d_lr_mul`` and ``adv_ramp`` existed was trained
        without them: marked ``spatial=False, d_lr_mul=1, adv_ramp=0``; any other state is returned as it is."""
        if isinstance(state, dict) and isinstance(state.get("config"), dict) and "spatial" not in state["config"]:
            state = {**state, "config": {**state["config"], "spatial": False, "d_lr_mul": 1.0, "adv_ramp": 0}}
        return state

    @property
    def num_layers(self) -> int:
        return len(self.style.layers)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, Z)`` -> frames ``(B, 3, 64, 64)`` in [-1, 1]: one ``w`` for every style layer
        (over V's decoder frame with ``residual``)."""
        ws = self.style.map(z)[:, None].expand(-1, self.num_layers, -1)
        if not self.config.residual:
            return torch.tanh(self.style.synthesize(ws, noise="const"))
        with torch.no_grad():
            base = self.decode_half_logits(z)  # its tanh is V's decoder frame in [-1, 1]
        inject = None
        if self.frame_in is not None:
            frame = torch.tanh(base)  # (B, 3, 64, 64)
            inject = [conv(F.adaptive_avg_pool2d(frame, 4 * 2 ** k)) for k, conv in enumerate(self.frame_in)]
        return torch.tanh(self.style.synthesize(ws, noise="const", inject=inject) + base)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        g_params = [*self.style.parameters(), *(self.frame_in.parameters() if self.frame_in is not None else ())]
        return {"generator": torch.optim.Adam(g_params, lr=lr, betas=betas),
                "discriminator": torch.optim.Adam(self.discriminator_net.parameters(), lr=lr * self.config.d_lr_mul,
                                                  betas=betas)}

    def adv_weight_at(self, step: int) -> float:
        """The adversarial weight at training step ``step`` (``adv_ramp``: 0 at step 0, full after)."""
        ramp = self.config.adv_ramp
        return self.config.adv_weight * (min(1.0, step / ramp) if ramp else 1.0)


register(Family(
    "stylegan_renderer", StyleRenderer, StyleRendererConfig,
    "dream renderer: StyleGAN's synthesis network driven by V's latent z, drawing the detail over V's "
    "decoder frame, trained as the pix2pix renderer (role: renderer)",
    kinds=("image",),
    presets={"tiny": {"d_channels": 8, "w_dim": 8, "mapping_layers": 1, "channels": 4, "max_channels": 8},
             "small": {"d_channels": 16, "w_dim": 64, "channels": 8, "max_channels": 64}},
    train={"lr": 2e-4, "batch_size": 32}, monitor="l1", data_defaults=defaults_for_data))
