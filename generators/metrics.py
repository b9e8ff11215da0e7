"""Quality measures for generators: Fréchet distance in a feature space, a small digit classifier.

Fréchet distance (Heusel et al. 2017, https://arxiv.org/abs/1706.08500, "FID" when the
features are Inception-v3's): fit a Gaussian to the features of real and of generated samples,
``FD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)``. No pretrained Inception
network is available offline, so the lab uses features it trains itself: the penultimate layer
of :class:`DigitClassifier` for digits, and the latent mean of the lab's V for env frames. The
numbers are comparable with each other (same features, same sample counts), not with
published FIDs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.data import GenData


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, F)`` and ``b (M, F)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature matrices (N, F) with the same F and N >= 2, got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S_a S_b)^1/2) = tr((S_a^1/2 S_b S_a^1/2)^1/2): a symmetric PSD matrix, eigenvalues >= 0
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ s_b @ root_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


class DigitClassifier(nn.Module):
    """A small CNN over ``(C, S, S)`` images in [-1, 1]: two conv+pool stages, a 128-unit feature layer."""

    def __init__(self, shape: tuple[int, ...], num_classes: int = 10, features: int = 128) -> None:
        super().__init__()
        c, h, w = shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, S/4, S/4)
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), features), nn.ReLU())  # (B, F)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(data: GenData, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0) -> DigitClassifier:
    """Train :class:`DigitClassifier` on labelled images (random shifts of up to 1 pixel as augmentation)."""
    if data.y is None or data.kind != "image":
        raise ValueError(f"{data.name}: a classifier needs labelled images")
    torch.manual_seed(seed)
    model = DigitClassifier(data.shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    it = iter(())
    batches = data.batches(batch_size, seed=seed, labels=True)
    epoch = 0
    model.train()
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            batches.set_epoch(epoch)
            epoch += 1
            it = iter(batches)
            x, y = next(it)
        dx, dy = torch.randint(-1, 2, (2,)).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in chunks and concatenate."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    pred = batched(model, x).argmax(1)
    return float((pred == y).float().mean())
