"""PixelCNN (van den Oord et al. 2016, https://arxiv.org/abs/1601.06759; book chapter 5).

An autoregressive model of quantized pixels: ``p(x) = prod_i p(x_i | x_<i)`` in raster order
(row by row, and within a pixel channel by channel, R -> G -> B). Masked convolutions keep each
output from seeing the pixels it predicts: type A (the first layer) hides the centre pixel
itself, type B (every later layer) lets a position see its own earlier features. With ``C > 1``
channels the features are split into ``C`` colour groups and the centre tap of group ``c`` sees
input groups ``< c`` (type A) or ``<= c`` (type B), as in the paper.

Book defaults (Fashion-MNIST, 16x16): 4 pixel levels, a 7x7 type-A convolution with 128 filters,
5 residual blocks (1x1 conv to 64, 3x3 type-B masked conv, 1x1 conv to 128), two 1x1 type-B
layers of 128, then a softmax over the levels of each pixel; Adam(5e-4), batch 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Batch, GenConfig, Generator, as_generator, unpack
from generators.registry import Family, register


@dataclass
class PixelCNNConfig(GenConfig):
    """PixelCNN (book defaults, chapter 5)."""

    shape: tuple[int, ...] = (1, 16, 16)
    """``(C, H, W)`` of the images (book: 16x16 grey)."""
    levels: int = 4
    """quantization levels per pixel value; each pixel is a softmax over them (book PIXEL_LEVELS: 4)."""
    filters: int = 128
    """features of every masked layer (book N_FILTERS: 128)."""
    residual_blocks: int = 5
    """residual blocks of (1x1, masked 3x3 type B, 1x1) convolutions (book RESIDUAL_BLOCKS: 5)."""
    first_kernel: int = 7
    """kernel of the type-A input convolution (book: 7)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "image":
            raise ValueError("pixelcnn models images, not points; train it on digits, mnist or car_racing:RUN")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {self.levels}")
        if self.filters // 2 < self.shape[0]:
            raise ValueError(f"filters/2 ({self.filters // 2}) must be >= the channel count {self.shape[0]}")


def _colours(n: int, c: int) -> torch.Tensor:
    """Colour group of each of ``n`` feature channels: contiguous blocks, ``(n,)`` in 0..c-1."""
    return torch.arange(n) * c // n


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is masked to pixels above/left (and earlier colours at the centre).

    ``mask_type`` ``"A"`` excludes the centre's own colour (first layer), ``"B"`` includes it.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str, colours: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        k = kernel
        mask = torch.zeros(c_out, c_in, k, k)
        mask[:, :, : k // 2, :] = 1  # rows above
        mask[:, :, k // 2, : k // 2] = 1  # left of the centre
        co, ci = _colours(c_out, colours)[:, None], _colours(c_in, colours)[None, :]
        centre = (ci < co) if mask_type == "A" else (ci <= co)  # (c_out, c_in)
        mask[:, :, k // 2, k // 2] = centre.float()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class _Residual(nn.Module):
    def __init__(self, f: int, colours: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            MaskedConv2d(f, f // 2, 1, "B", colours), nn.ReLU(),
            MaskedConv2d(f // 2, f // 2, 3, "B", colours), nn.ReLU(),
            MaskedConv2d(f // 2, f, 1, "B", colours), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class PixelCNN(Generator):
    """PixelCNN over ``levels`` quantized intensities (see module docstring)."""

    config: PixelCNNConfig

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__(config)
        c, f, L = config.shape[0], config.filters, config.levels
        layers: list[nn.Module] = [MaskedConv2d(c, f, config.first_kernel, "A", c), nn.ReLU()]
        layers += [_Residual(f, c) for _ in range(config.residual_blocks)]
        layers += [MaskedConv2d(f, f, 1, "B", c), nn.ReLU(), MaskedConv2d(f, f, 1, "B", c), nn.ReLU()]
        layers.append(MaskedConv2d(f, c * L, 1, "B", c))  # channel j predicts colour j // L
        self.net = nn.Sequential(*layers)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space ``[-1, 1]`` -> level indices ``(B, C, H, W)`` int64 in 0..levels-1 (book: floor(v * L))."""
        L = self.config.levels
        return ((x + 1.0) / 2.0 * L).floor().clamp(0, L - 1).long()

    def dequantize(self, k: torch.Tensor) -> torch.Tensor:
        """Level indices -> model-space values ``k / (L-1) * 2 - 1``."""
        return k.float() * (2.0 / (self.config.levels - 1)) - 1.0

    def logits(self, k: torch.Tensor) -> torch.Tensor:
        """Level indices ``(B, C, H, W)`` -> logits ``(B, C, L, H, W)`` of each value given the ones before it."""
        b, c, h, w = k.shape
        out = self.net(self.dequantize(k))  # (B, C*L, H, W)
        return out.reshape(b, c, self.config.levels, h, w)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact discrete ``log P(x)`` in nats of the quantized images, ``(B,)``."""
        k = self.quantize(x)
        logp = F.log_softmax(self.logits(k), dim=2)  # (B, C, L, H, W)
        return logp.gather(2, k[:, :, None]).flatten(1).sum(1)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in bits per sub-pixel at ``levels`` levels, ``(B,)``."""
        return -self.log_prob(x) / (x[0].numel() * math.log(2.0))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, _ = unpack(batch)
        k = self.quantize(x)
        nll = F.cross_entropy(self.logits(k).transpose(1, 2), k)  # (B, L, C, H, W) vs (B, C, H, W); nats
        return {"loss": nll, "bits_per_dim": nll / math.log(2.0)}

    @property
    def reach(self) -> int:
        """How many rows up (and columns either side) an output sees: the receptive field's half-width."""
        return self.config.first_kernel // 2 + self.config.residual_blocks  # 7x7 A, then one 3x3 B per block

    def window(self, i: int, j: int, h: int, w: int) -> tuple[int, int, int]:
        """Rows ``r0..i`` and columns ``c0..c1-1`` that hold everything pixel ``(i, j)`` depends on."""
        r = self.reach
        return max(0, i - r), max(0, j - r), min(w, j + r + 1)

    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: int | torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Draw pixels one at a time in raster/colour order (``C * H * W`` network passes).

        Each pass runs on the window of rows/columns pixel ``(i, j)`` can see (:meth:`window`),
        which gives the same logits as the whole image at a fraction of the cost.
        """
        self.check_cond(n, cond)
        g = as_generator(generator, self.device)
        c, h, w = self.shape
        k = torch.zeros(n, c, h, w, dtype=torch.long, device=self.device)
        with self.evaluating():
            for i in range(h):
                for j in range(w):
                    r0, c0, c1 = self.window(i, j, h, w)
                    for ch in range(c):
                        logits = self.logits(k[:, :, r0:i + 1, c0:c1])[:, ch, :, i - r0, j - c0] / temperature
                        k[:, ch, i, j] = torch.multinomial(F.softmax(logits, dim=1), 1, generator=g)[:, 0]
        return self.dequantize(k)


register(Family(
    "pixelcnn", PixelCNN, PixelCNNConfig, "PixelCNN: masked convolutions A/B over quantized pixels (book ch. 5)",
    kinds=("image",),
    presets={"tiny": {"filters": 16, "residual_blocks": 1, "first_kernel": 3},
             "small": {"filters": 64, "residual_blocks": 3}},
    train={"lr": 5e-4, "batch_size": 128}, monitor="loss"))
