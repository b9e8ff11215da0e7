"""Image conventions of the generators package, and sample grids.

Every image family works in one *model space*: float32 tensors ``(N, C, H, W)`` with values in
``[-1, 1]`` (``-1`` = black, ``1`` = full intensity). ``generators.data.load`` yields real images
in that space and ``model.sample`` returns generated images in it, so real and generated batches
mix freely. Point data (``make_moons``) is ``(N, D)`` float32, standardised.

Convert to the usual picture format with :func:`to_uint8` (``(N, H, W, C)`` uint8) and back with
:func:`from_uint8`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldlab.io import atomic_write_bytes


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model-space images ``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8 in [0, 255]."""
    x = x.detach().float().clamp(-1.0, 1.0).cpu()
    u8 = ((x + 1.0) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)


def from_uint8(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, H, W, C)`` or ``(H, W, C)`` uint8 -> model-space float ``(N, C, H, W)`` in [-1, 1]."""
    t = torch.as_tensor(np.asarray(a))
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize model-space images ``(N, C, H, W)`` to ``(N, C, size, size)`` (area down, bilinear up)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    mode = "area" if x.shape[-1] > size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=(size, size), mode=mode, **kw)


def grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, upscale: int | None = None) -> np.ndarray:
    """Tile model-space images ``(N, C, H, W)`` into one ``(H', W', 3)`` uint8 picture.

    ``upscale`` repeats pixels (nearest) so tiny images stay visible; by default images are
    enlarged to at least 64 pixels a side.
    """
    imgs = to_uint8(x)  # (N, H, W, C)
    n, h, w, c = imgs.shape
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    elif c != 3:
        imgs = np.repeat(imgs[..., :1], 3, axis=3)
    if upscale is None:
        upscale = max(1, math.ceil(64 / max(h, w)))
    if upscale > 1:
        imgs = imgs.repeat(upscale, axis=1).repeat(upscale, axis=2)
        h, w = h * upscale, w * upscale
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_rows = math.ceil(n / nrow)
    out = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    return out


def png_bytes(img_hwc: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", img_hwc, extension=".png")


def save_png(path: str | os.PathLike, img_hwc: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 picture as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(img_hwc))


def scatter_png(points: torch.Tensor, reference: torch.Tensor | None = None, size: float = 4.0) -> np.ndarray:
    """Scatter plot of 2-D points (generated in blue over grey real points) as ``(H, W, 3)`` uint8."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    import imageio.v3 as iio

    img = iio.imread(buf.getvalue(), extension=".png")
    return np.ascontiguousarray(img[..., :3])


def picture(samples: torch.Tensor, reference: torch.Tensor | None = None, nrow: int | None = None) -> np.ndarray:
    """A picture of samples of any kind: a grid for images, a scatter plot for 2-D points."""
    if samples.ndim == 4:
        return grid(samples, nrow=nrow)
    if samples.ndim == 2 and samples.shape[1] >= 2:
        return scatter_png(samples[:, :2], None if reference is None else reference[:, :2])
    raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}")
