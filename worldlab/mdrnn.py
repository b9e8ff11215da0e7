"""M: the mixture-density recurrent network of World Models (Ha & Schmidhuber 2018, A.2).

An LSTM (256 units for CarRacing, 512 for Doom) reads ``[z_t, a_t]`` and its output feeds one
linear head that predicts, for every latent dimension ``j``, a mixture of ``K`` (= 5)
Gaussians over ``z_{t+1, j}``; plus the reward ``r_{t+1}`` (regression) and the episode-end
flag (a Bernoulli logit).

The mixture math lives here once and is shared by the sequence model (training), the
one-step cell (``MDRNN.step``) and whatever steps M batched for the dream (see
``envs/dream_step.py``). All use the same ``nn.LSTM`` and head parameters.

Mixture density of one latent dimension, with ``pi = softmax(logits)``::

    log p(z) = logsumexp_k [ log pi_k - log sigma_k - log sqrt(2 pi) - (z - mu_k)^2 / (2 sigma_k^2) ]

Temperature ``tau`` as in the paper: mixture logits are divided by ``tau`` and every sigma
is multiplied by ``sqrt(tau)``. The deterministic mode takes the most likely component's mean.

Head layout (one row per step): ``[logits (K, Z) | mu (K, Z) | log sigma (K, Z) | reward | done]``,
component-major, so each component's parameters for all latent dims are contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worldlab.io import ConfigCheckpoint

FAMILY = "mdrnn"
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class MDRNNConfig:
    """Architecture and loss weights of M."""

    z_size: int = 32
    """latent size of V."""
    action_dim: int = 3
    """width of the action input: the Box shape, or the number of discrete actions (one-hot)."""
    discrete_actions: bool = False
    """actions arrive as integer indices and are one-hot encoded to ``action_dim``."""
    hidden: int = 256
    """LSTM units (the paper: 256 for CarRacing, 512 for Doom)."""
    gaussians: int = 5
    """mixture components per latent dimension."""
    reward_weight: float = 1.0
    """weight of the reward MSE in the loss."""
    done_weight: float = 1.0
    """weight of the done-flag binary cross-entropy in the loss."""
    logsigma_min: float = -7.0
    """lower clamp of predicted log sigma (keeps the NLL finite)."""
    logsigma_max: float = 3.0
    """upper clamp of predicted log sigma."""

    def __post_init__(self) -> None:
        for name in ("z_size", "action_dim", "hidden", "gaussians"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MDRNNConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_size(self) -> int:
        return 3 * self.gaussians * self.z_size + 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MDRNNConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class MixtureOutput(NamedTuple):
    """M's prediction for the next step; leading dims ``...`` are (B,) or (B, T)."""

    logits: torch.Tensor      # (..., K, Z) mixture logits
    mu: torch.Tensor          # (..., K, Z) component means
    logsigma: torch.Tensor    # (..., K, Z) component log standard deviations
    reward: torch.Tensor      # (...) predicted reward
    done_logit: torch.Tensor  # (...) logit of the episode-end flag


def split_head(out: torch.Tensor, z_size: int, gaussians: int, logsigma_min: float = -7.0,
               logsigma_max: float = 3.0) -> MixtureOutput:
    """Head output ``(..., 3*K*Z + 2)`` -> :class:`MixtureOutput`."""
    K, Z = gaussians, z_size
    lead = out.shape[:-1]
    kz = K * Z
    logits = out[..., :kz].reshape(*lead, K, Z)
    mu = out[..., kz:2 * kz].reshape(*lead, K, Z)
    logsigma = out[..., 2 * kz:3 * kz].reshape(*lead, K, Z).clamp(logsigma_min, logsigma_max)
    return MixtureOutput(logits, mu, logsigma, out[..., 3 * kz], out[..., 3 * kz + 1])


def mixture_log_prob(target: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                     logsigma: torch.Tensor) -> torch.Tensor:
    """log p(target) under a per-dimension Gaussian mixture, with a stable log-sum-exp.

    target ``(..., Z)``; logits, mu, logsigma ``(..., K, Z)``; returns ``(..., Z)``.
    """
    log_pi = F.log_softmax(logits, dim=-2)                       # (..., K, Z)
    zs = (target.unsqueeze(-2) - mu) * torch.exp(-logsigma)      # (..., K, Z) standardised
    log_n = -0.5 * zs.pow(2) - logsigma - LOG_SQRT_2PI           # (..., K, Z)
    return torch.logsumexp(log_pi + log_n, dim=-2)               # (..., Z)


def sample_mixture(logits: torch.Tensor, mu: torch.Tensor, logsigma: torch.Tensor, *, tau: float = 1.0,
                   deterministic: bool = False, generator: torch.Generator | None = None,
                   u: torch.Tensor | None = None, eps: torch.Tensor | None = None,
                   logsigma_range: tuple[float, float] | None = None, out: torch.Tensor | None = None,
                   work: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Draw z from the mixture at temperature ``tau``: one categorical + one normal draw per dim.

    logits, mu, logsigma ``(..., K, Z)`` -> z ``(..., Z)``. The component is chosen by inverse
    CDF with one uniform ``u`` ``(..., 1, Z)`` per dimension; the Gaussian noise is ``eps``
    ``(..., Z)``. Both are drawn from ``generator`` unless given. ``deterministic`` returns the
    mean of the most likely component (``tau`` then has no effect). ``logsigma_range`` clamps the
    chosen log sigmas (cheaper than clamping all K); ``out`` receives the result; ``work`` holds
    preallocated buffers for every intermediate, so a caller stepping in a loop allocates nothing:
    float ``max``, ``thr``, ``m``, ``s`` (B, 1, Z), float ``cdf``, ``cum`` (B, K, Z), bool ``lt``
    (B, K, Z) and int64 ``idx`` (B, 1, Z), for (B, K, Z) inputs.
    """
    lead, Z = logits.shape[:-2], logits.shape[-1]
    w = {} if work is None else work
    if deterministic:
        idx = torch.argmax(logits, dim=-2, keepdim=True, out=w.get("idx"))   # (..., 1, Z)
        z = torch.gather(mu, -2, idx, out=w.get("m")).squeeze(-2)
        return z if out is None else out.copy_(z)
    if tau <= 0:
        raise ValueError(f"temperature must be > 0 (use deterministic=True for tau -> 0), got {tau}")
    if u is None:
        u = torch.rand(*lead, 1, Z, device=logits.device, generator=generator)
    if eps is None:
        eps = torch.randn(*lead, Z, device=logits.device, generator=generator)
    mx = torch.amax(logits, dim=-2, keepdim=True, out=w.get("max"))
    scaled = torch.sub(logits, mx, out=w.get("cdf"))               # (..., K, Z) <= 0
    if tau != 1.0:
        scaled.div_(tau)
    cum = torch.cumsum(scaled.exp_(), dim=-2, out=w.get("cum"))    # (..., K, Z) unnormalised CDF
    thr = torch.mul(u, cum[..., -1:, :], out=w.get("thr"))         # (..., 1, Z)
    below = torch.lt(cum, thr, out=w.get("lt"))
    idx = torch.sum(below, dim=-2, keepdim=True, out=w.get("idx"))  # (..., 1, Z) component index
    idx.clamp_(max=logits.shape[-2] - 1)
    m = torch.gather(mu, -2, idx, out=w.get("m")).squeeze(-2)       # (..., Z)
    s = torch.gather(logsigma, -2, idx, out=w.get("s")).squeeze(-2)  # (..., Z)
    if logsigma_range is not None:
        s.clamp_(*logsigma_range)
    s.exp_()
    if out is None:
        return m.addcmul_(s, eps, value=math.sqrt(tau))
    return torch.addcmul(m, s, eps, value=math.sqrt(tau), out=out)


class MDRNN(ConfigCheckpoint, nn.Module):
    """LSTM over ``[z_t, a_t]`` with a mixture-density head for ``z_{t+1}``, reward and done.

    ``save(path, meta)`` / ``MDRNN.load(path)``: weights with their config (:class:`ConfigCheckpoint`)."""

    FAMILY, CONFIG, WHAT, STAGE = FAMILY, MDRNNConfig, "MDN-RNN", "M"

    def __init__(self, config: MDRNNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MDRNNConfig()
        self.meta: dict[str, Any] = {}
        """what the checkpoint carried besides weights (task, start bank, ids, steps, ...)."""
        self.rnn = nn.LSTM(cfg.z_size + cfg.action_dim, cfg.hidden, batch_first=True)
        self.head = nn.Linear(cfg.hidden, cfg.head_size)
        with torch.no_grad():  # prior: episode ends are rare (sigmoid(-3) ~ 5%)
            self.head.bias[-1] = -3.0

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def action_input(self, a: torch.Tensor) -> torch.Tensor:
        """Actions as stored (float (..., A), or int indices (...)) -> float (..., action_dim)."""
        if self.config.discrete_actions:
            if a.dtype.is_floating_point and a.shape[-1:] == (self.config.action_dim,):
                return a.float()  # already one-hot
            return F.one_hot(a.long(), self.config.action_dim).float()
        a = a.float()
        if a.shape[-1] != self.config.action_dim:
            raise ValueError(f"M expects actions of width {self.config.action_dim}, got shape {tuple(a.shape)}")
        return a

    def _split(self, out: torch.Tensor) -> MixtureOutput:
        c = self.config
        return split_head(out, c.z_size, c.gaussians, c.logsigma_min, c.logsigma_max)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state ``(h, c)``, each (B, H)."""
        device = device or self.device
        z = torch.zeros(batch, self.config.hidden, device=device)
        return z, z.clone()

    def forward(self, z: torch.Tensor, a: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[MixtureOutput, tuple[torch.Tensor, torch.Tensor]]:
        """Sequence model: z (B, T, Z), a (B, T, A) or (B, T) -> predictions for steps 1..T, final (h, c)."""
        x = torch.cat([z, self.action_input(a)], dim=-1)  # (B, T, Z + A)
        hx = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        out, (h, c) = self.rnn(x, hx)  # out (B, T, H)
        return self._split(self.head(out)), (h.squeeze(0), c.squeeze(0))

    def step(self, z: torch.Tensor, a: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[MixtureOutput, tuple[torch.Tensor, torch.Tensor]]:
        """One-step cell sharing the LSTM's weights: z (B, Z), a (B, A) or (B,) -> prediction, (h, c)."""
        if state is None:
            state = self.initial_state(z.shape[0], z.device)
        x = torch.cat([z, self.action_input(a)], dim=-1)  # (B, Z + A)
        r = self.rnn
        h, c = torch.lstm_cell(x, state, r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0)
        return self._split(self.head(h)), (h, c)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher-forced loss on latent windows from ``ShardStream(mode="sequences")``: see
        :func:`next_step_loss`."""
        return next_step_loss(self, batch)


def next_step_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Teacher-forced loss of any M (``model(z, a) -> (MixtureOutput, state)``, ``model.config``
    with the loss weights) on latent windows from ``ShardStream(mode="sequences")``.

    batch: ``mu``, ``logvar`` (B, L+1, Z); ``actions`` (B, L, A) or (B, L); ``rewards``,
    ``terminated``, ``mask`` (B, L). z is sampled from (mu, logvar) as in the paper.
    Returns ``loss`` = nll + reward_weight * reward_mse + done_weight * done_bce, and the parts;
    ``nll`` is per latent dimension.
    """
    mu, logvar = batch["mu"].float(), batch["logvar"].float()
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # (B, L+1, Z)
    pred, _ = model(z[:, :-1], batch["actions"])
    mask = batch["mask"].float() if "mask" in batch else torch.ones(z.shape[:1] + (z.shape[1] - 1,), device=z.device)
    denom = mask.sum().clamp(min=1.0)
    logp = mixture_log_prob(z[:, 1:], pred.logits.float(), pred.mu.float(), pred.logsigma.float())  # (B, L, Z)
    nll = -(logp.mean(-1) * mask).sum() / denom
    reward_mse = ((pred.reward.float() - batch["rewards"].float()).pow(2) * mask).sum() / denom
    done_bce = (F.binary_cross_entropy_with_logits(pred.done_logit.float(), batch["terminated"].float(),
                                                   reduction="none") * mask).sum() / denom
    c = model.config
    total = nll + c.reward_weight * reward_mse + c.done_weight * done_bce
    return {"loss": total, "nll": nll, "reward_mse": reward_mse, "done_bce": done_bce}
