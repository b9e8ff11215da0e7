"""M: the mixture-density recurrent network of World Models (Ha & Schmidhuber 2018, A.2).

An LSTM (256 units for CarRacing, 512 for Doom) reads ``[z_t, a_t]`` and its output feeds one
linear head that predicts, for every latent dimension ``j``, a mixture of ``K`` (= 5)
Gaussians over ``z_{t+1, j}``; plus the reward ``r_{t+1}`` (regression) and the episode-end
flag (a Bernoulli logit).

The mixture math lives here once and is shared by the sequence model (training), the
one-step cell (``MDRNN.step``) and the fused batched step the dream runs
(:class:`FusedDreamStep`, thousands of rollouts at once). All three use the same
``nn.LSTM`` and head parameters.

Mixture density of one latent dimension, with ``pi = softmax(logits)``::

    log p(z) = logsumexp_k [ log pi_k - log sigma_k - log sqrt(2 pi) - (z - mu_k)^2 / (2 sigma_k^2) ]

Temperature ``tau`` as in the paper: mixture logits are divided by ``tau`` and every sigma
is multiplied by ``sqrt(tau)``. The deterministic mode takes the most likely component's mean.

Head layout (one row per step): ``[logits (K, Z) | mu (K, Z) | log sigma (K, Z) | reward | done]``,
component-major, so each component's parameters for all latent dims are contiguous.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form notes kept with the config (ignored by the model)."""

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


def mixture_workspace(batch: int, gaussians: int, z_size: int, device: torch.device | str = "cpu"
                      ) -> dict[str, torch.Tensor]:
    """Preallocated buffers for :func:`sample_mixture` on (batch, K, Z) inputs (no allocation per call)."""
    N, K, Z = batch, gaussians, z_size
    f = {"device": device}
    return {"max": torch.empty(N, 1, Z, **f), "cdf": torch.empty(N, K, Z, **f), "cum": torch.empty(N, K, Z, **f),
            "thr": torch.empty(N, 1, Z, **f), "lt": torch.empty(N, K, Z, dtype=torch.bool, **f),
            "idx": torch.empty(N, 1, Z, dtype=torch.int64, **f), "m": torch.empty(N, 1, Z, **f),
            "s": torch.empty(N, 1, Z, **f)}


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
    chosen log sigmas (cheaper than clamping all K); ``out`` receives the result; ``work``
    (from :func:`mixture_workspace`, for (B, K, Z) inputs) holds every intermediate, so the hot
    loop of the dream allocates nothing.
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
        """Teacher-forced loss on latent windows from ``ShardStream(mode="sequences")``.

        batch: ``mu``, ``logvar`` (B, L+1, Z); ``actions`` (B, L, A) or (B, L); ``rewards``,
        ``terminated``, ``mask`` (B, L). z is sampled from (mu, logvar) as in the paper.
        Returns ``loss`` = nll + reward_weight * reward_mse + done_weight * done_bce, and the parts;
        ``nll`` is per latent dimension.
        """
        mu, logvar = batch["mu"].float(), batch["logvar"].float()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # (B, L+1, Z)
        pred, _ = self(z[:, :-1], batch["actions"])
        mask = batch["mask"].float() if "mask" in batch else torch.ones(z.shape[:1] + (z.shape[1] - 1,), device=z.device)
        denom = mask.sum().clamp(min=1.0)
        logp = mixture_log_prob(z[:, 1:], pred.logits.float(), pred.mu.float(), pred.logsigma.float())  # (B, L, Z)
        nll = -(logp.mean(-1) * mask).sum() / denom
        reward_mse = ((pred.reward.float() - batch["rewards"].float()).pow(2) * mask).sum() / denom
        done_bce = (F.binary_cross_entropy_with_logits(pred.done_logit.float(), batch["terminated"].float(),
                                                       reduction="none") * mask).sum() / denom
        c = self.config
        total = nll + c.reward_weight * reward_mse + c.done_weight * done_bce
        return {"loss": total, "nll": nll, "reward_mse": reward_mse, "done_bce": done_bce}


def _cell_update(g: torch.Tensor, c: torch.Tensor, hidden: int) -> torch.Tensor:
    """LSTM nonlinearities on gate pre-activations (N, 4H) whose cell-candidate block is doubled.

    Writes the new cell state into ``c`` and returns the new hidden state (N, H). The twin of the
    in-place sequence in :meth:`FusedDreamStep.step`, for the compiler: each gate's sigmoid is taken
    on its own slice and ``h`` is a fresh tensor (not a view of the packed input), so inductor makes
    one loop over (N, H) that reads the four gates once and writes ``c`` and ``h``; a full-width
    sigmoid, or ``h`` written into a view of ``x``, cost an extra pass over the gates and a masked
    copy of all of ``x``.
    """
    H = hidden
    i, f = torch.sigmoid(g[:, :H]), torch.sigmoid(g[:, H:2 * H])
    gg, o = torch.sigmoid(g[:, 2 * H:3 * H]), torch.sigmoid(g[:, 3 * H:])
    c2 = f * c + i * (2.0 * gg - 1.0)
    c.copy_(c2)
    return o * (2.0 * torch.sigmoid(2.0 * c2) - 1.0)


def _fused_sampling_step(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, head_w: torch.Tensor,
                         head_b: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, ud: torch.Tensor, H: int, Z: int,
                         K: int, tau: float, lo: float, hi: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole sampling step as one graph for the compiler: updates ``c`` in place.

    Same arithmetic as the eager step (the cell is :func:`_cell_update`; the sampling is
    :func:`sample_mixture` with the CDF over the K components unrolled, so no ``cumsum`` kernel
    breaks the graph): the gate nonlinearities, cell update, component choice and Gaussian draw
    compile into a few fused loops around the two matrix products. Returns the next packed input
    ``[z, h | a, 1]`` (N, D + 1) (a new tensor; the actions and the constant column carried over
    from ``x``), the observation ``[z, h]`` (N, Z + H) (another new tensor, for the caller to hand
    out), reward (N,) and done (N,) bool. The fused loops store ``h`` and ``z`` straight into both
    outputs: writing them into ``x`` in place made inductor copy all of ``x``, and a copy outside
    the graph costs a pass over the observations.
    """
    h = _cell_update(torch.mm(x, w.t()), c, H)  # bias in w's last column; g rows pre-scaled by 2
    out = torch.mm(h, head_w.t()) + head_b  # (N, O)
    kz = K * Z
    logits = out[:, :kz].reshape(-1, K, Z)
    mu = out[:, kz:2 * kz].reshape(-1, K, Z)
    logsigma = out[:, 2 * kz:3 * kz].reshape(-1, K, Z)
    top = logits[:, 0]
    for k in range(1, K):
        top = torch.maximum(top, logits[:, k])  # (N, Z) max over the components, unrolled
    cdf = [((logits[:, 0] - top) / tau).exp()]
    for k in range(1, K):
        cdf.append(cdf[-1] + ((logits[:, k] - top) / tau).exp())  # (N, Z) unnormalised CDF, unrolled
    thr = u[:, 0] * cdf[-1]  # (N, Z)
    # the component is the first k with cdf[k] >= thr (the CDF is monotone: the same k as counting
    # cdf[k] < thr); chosen by selects from the last to the first, which vectorize where a gather does not
    m, ls = mu[:, K - 1], logsigma[:, K - 1]
    for k in range(K - 2, -1, -1):
        pick = cdf[k] >= thr
        m = torch.where(pick, mu[:, k], m)
        ls = torch.where(pick, logsigma[:, k], ls)
    z = m + ls.clamp(lo, hi).exp() * eps * math.sqrt(tau)
    return (torch.cat([z, h, x[:, Z + H:]], dim=1), torch.cat([z, h], dim=1), out[:, 3 * kz],
            ud < torch.sigmoid(out[:, 3 * kz + 1]))


def compile_graph(fn: Any, *example_args: torch.Tensor) -> Any:
    """``fn`` traced to an aten graph (``make_fx``, on fake tensors: nothing is run or mutated) and
    compiled by inductor (``torch._inductor.compile``), called without TorchDynamo.

    The result only accepts arguments of the example shapes, strides and dtypes, which the
    callers here guarantee (their own preallocated buffers). Against ``torch.compile`` it saves
    Dynamo's guard checks and frame handling on every call (~0.1 ms of a ~11 ms dream step on the
    2-core CPU), with the same generated kernels. Returns a tuple when ``fn`` does.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, tracing_mode="fake")(*example_args)
    copies = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device).copy_(a) for a in example_args]
    return torch._inductor.compile(gm, copies)  # compiled for the examples' strides (views of x included)


class FusedDreamStep:
    """M's one-step cell plus mixture sampling for N rollouts at once, in preallocated buffers.

    The hot loop of the dream. Per step: one ``mm`` for all four LSTM gates over the packed
    input ``x = [z | h | a | 1]`` (the two LSTM matrices concatenated, and the bias as the column
    that meets x's constant 1, so no separate bias pass over the gates), one in-place sigmoid over all
    gates (the cell-candidate rows are pre-scaled by 2 so ``tanh(g) = 2 sigmoid(2g) - 1``), a few
    in-place updates of ``c`` and ``h``, one ``addmm`` for the head, then one uniform draw (the
    component, by inverse CDF) and one normal draw per latent dimension. ``h`` and the sampled
    ``z`` are written straight into ``x``, so ``x[:, :Z+H]`` is the ``[z, h]`` observation. The
    head's output is padded with zero rows to a multiple of 16 (CarRacing: 482 -> 496), which
    MKL multiplies faster than the odd width.

    The weights are copied from ``mdrnn`` when this object is built (rebuild it after training).

    Buffers hold at least ``min_rows`` rows (extra rows are computed and ignored): BLAS kernels
    sum in a different order for 1-3 rows than for many, and padding keeps a single dream
    bit-identical to the same rollout inside a large batch.

    ``compile=True`` fuses the element-wise work (gate nonlinearities, sampling) with inductor,
    the compiler behind ``torch.compile`` (:func:`compile_graph`; needs a C++ compiler on CPU; the
    first step at each temperature takes seconds to compile). The sampling step then returns a new
    ``x`` each step (see :func:`_fused_sampling_step`): the views ``z``, ``h``, ``a``, ``obs`` are
    properties, taken afresh, and :meth:`take_obs` hands out the step's own observation tensor.
    """

    def __init__(self, mdrnn: MDRNN, num_envs: int, device: torch.device | str | None = None,
                 min_rows: int = 8, compile: bool = False) -> None:
        cfg = mdrnn.config
        self.num_envs = n_envs = int(num_envs)
        self.rows = N = max(n_envs, int(min_rows))
        self.device = dev = torch.device(device) if device is not None else mdrnn.device
        Z, A, H, K = cfg.z_size, cfg.action_dim, cfg.hidden, cfg.gaussians
        self.Z, self.A, self.H, self.K = Z, A, H, K
        self.discrete = cfg.discrete_actions
        self.logsigma_min, self.logsigma_max = cfg.logsigma_min, cfg.logsigma_max
        D = Z + H + A
        self.D = D
        Dp = D + 1  # [z | h | a | 1]; padding the row to a multiple of 8 (296) made MKL's GEMM slower here
        with torch.no_grad():
            r = mdrnn.rnn
            w_ih = r.weight_ih_l0.detach().float()  # (4H, Z + A): columns [z | a]
            w_hh = r.weight_hh_l0.detach().float()  # (4H, H)
            w = torch.zeros(4 * H, Dp)
            w[:, :Z] = w_ih[:, :Z]
            w[:, Z:Z + H] = w_hh
            w[:, Z + H:D] = w_ih[:, Z:]
            w[:, D] = r.bias_ih_l0 + r.bias_hh_l0  # the bias rides in the GEMM on x's constant-1 column
            w[2 * H:3 * H] *= 2.0  # gate order i, f, g, o: g rows x2 for the tanh-by-sigmoid trick
            self.w = w.to(dev)                                    # (4H, Dp) incl. the bias column
            n_out = mdrnn.head.weight.shape[0]
            Op = -(-n_out // 16) * 16  # zero rows pad the head to a multiple of 16 outputs (482 -> 496: faster GEMM)
            self.head_w = torch.zeros(Op, H, device=dev)  # (Op, H)
            self.head_w[:n_out] = mdrnn.head.weight.detach().float()
            self.head_b = torch.zeros(Op, device=dev)     # (Op,)
            self.head_b[:n_out] = mdrnn.head.bias.detach().float()
        n_out = self.head_w.shape[0]
        self.x = torch.zeros(N, Dp, device=dev)       # (N, D + 1) packed [z | h | a | 1]
        self.x[:, D] = 1.0
        self.c = torch.zeros(N, H, device=dev)        # (N, H) cell state
        self.gates = torch.empty(N, 4 * H, device=dev)  # (N, 4H)
        self.tmp = torch.empty(N, H, device=dev)      # (N, H)
        self.out = torch.empty(N, n_out, device=dev)  # (N, O) head output
        self.uni = torch.empty(N, Z + 1, device=dev)  # (N, Z + 1) uniforms: components, done flag
        self.u = self.uni[:, None, :Z]                # (N, 1, Z) component uniforms
        self.ud = self.uni[:, Z]                      # (N,) done uniforms
        self.eps = torch.empty(N, Z, device=dev)      # (N, Z) Gaussian noise
        self.work = mixture_workspace(N, K, Z, dev)   # sampling intermediates
        self.compiled = bool(compile)
        self._graphs: dict[Any, Any] = {}  # compiled graphs, by mode and temperature
        self.fresh_obs: torch.Tensor | None = None  # (N, Z + H) the last compiled step's [z, h], unshared

    # views into x (a compiled sampling step replaces x by a new tensor: take them after each step)
    @property
    def z(self) -> torch.Tensor:
        """(n, Z) the real rollouts' latents."""
        return self.x[:self.num_envs, :self.Z]

    @property
    def h(self) -> torch.Tensor:
        """(n, H) the real rollouts' LSTM hidden states."""
        return self.x[:self.num_envs, self.Z:self.Z + self.H]

    @property
    def a(self) -> torch.Tensor:
        """(n, A) the actions of the next step."""
        return self.x[:self.num_envs, self.Z + self.H:self.D]

    @property
    def obs(self) -> torch.Tensor:
        """(n, Z + H) the observations [z, h]."""
        return self.x[:self.num_envs, :self.Z + self.H]

    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor) -> None:
        """Start rollouts ``rows`` at latents ``z0`` (len(rows), Z) with zero LSTM state."""
        if isinstance(rows, slice):  # a slice of the real rollouts, never the padding rows
            rows = torch.arange(self.num_envs, device=self.device)[rows]
        self.x[rows, :self.Z] = z0.to(self.device, torch.float32)
        self.x[rows, self.Z:self.D] = 0.0
        self.c[rows] = 0.0
        if self.fresh_obs is not None:
            self.fresh_obs[rows] = self.x[rows, :self.Z + self.H]

    def take_obs(self) -> torch.Tensor:
        """The observations ``[z, h]`` (n, Z + H) as a tensor nothing else holds or writes to.

        After a compiled sampling step that is the step's own output (no copy); otherwise, or when
        already taken, a clone of ``self.obs``.
        """
        obs, self.fresh_obs = self.fresh_obs, None
        return obs[:self.num_envs] if obs is not None else self.obs.clone()

    def _graph(self, key: tuple, fn: Any, *args: torch.Tensor) -> Any:
        """The compiled graph for ``key``, compiled on first use; None (and eager steps from then
        on, with a warning) when compilation fails, e.g. on a machine without a C++ compiler."""
        graph = self._graphs.get(key)
        if graph is None:
            try:
                graph = self._graphs[key] = compile_graph(fn, *args)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step computes the same dream
                self.compiled = False
                msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                warnings.warn(f"compiling the dream step failed ({type(e).__name__}: {msg}); running it eagerly "
                              f"(the same dream up to float rounding, slower). Install a C++ compiler (g++) to "
                              f"compile it, or pass compile=False to skip the attempt.", RuntimeWarning, stacklevel=3)
                return None
        return graph

    def set_actions(self, actions: torch.Tensor) -> None:
        """Write actions (n, A) floats, or (n,) integer indices when discrete, into the packed input."""
        if self.discrete:
            self.a.zero_()
            self.a.scatter_(1, actions.to(self.device).long().view(-1, 1), 1.0)
        else:
            self.a.copy_(actions.reshape(self.num_envs, self.A))

    def step(self, tau: float = 1.0, deterministic: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every rollout one step (actions already set). Returns (reward (n,), done (n,) bool).

        The new z and h are in ``self.z`` / ``self.h`` (views of ``self.x``).
        """
        H, Z, K = self.H, self.Z, self.K
        g, c = self.gates, self.c
        self.fresh_obs = None
        if tau <= 0 and not deterministic:
            raise ValueError(f"temperature must be > 0 (use deterministic=True for tau -> 0), got {tau}")
        step = None
        if self.compiled and not deterministic:
            args = (self.x, self.w, c, self.head_w, self.head_b, self.u, self.eps, self.ud)
            key = ("sample", float(tau))
            step = self._graphs.get(key) or self._graph(key, functools.partial(
                _fused_sampling_step, H=H, Z=Z, K=K, tau=float(tau), lo=self.logsigma_min, hi=self.logsigma_max),
                *args)
        if step is not None:
            self.uni.uniform_(generator=generator)
            self.eps.normal_(generator=generator)
            self.x, obs, reward, done = step(*args)  # the next packed input replaces x
            self.fresh_obs = obs
            n = self.num_envs
            return reward[:n], done[:n]
        torch.mm(self.x, self.w.t(), out=g)  # (N, 4H) all gates, bias included
        if self.compiled:
            cell = self._graph(("cell",), functools.partial(_cell_update, hidden=H), g, c)
            if cell is not None:
                return self._step_compiled(cell)
        g.sigmoid_()
        i, f, gg, o = g.split(H, dim=1)                  # (N, H) each; gg = sigmoid(2 g_pre)
        c.mul_(f).addcmul_(i, gg, value=2.0).sub_(i)     # c' = f c + i tanh(g_pre), tanh = 2 sigmoid(2x) - 1
        t = torch.mul(c, 2.0, out=self.tmp)
        t.sigmoid_().mul_(2.0).sub_(1.0)                 # tanh(c')
        h_all, z_all = self.x[:, Z:Z + H], self.x[:, :Z]  # (N, H), (N, Z) incl. the padding rows
        torch.mul(o, t, out=h_all)                       # h' = o tanh(c'), written into x
        out = torch.addmm(self.head_b, h_all, self.head_w.t(), out=self.out)  # (N, O)
        kz = K * Z
        logits = out[:, :kz].view(-1, K, Z)
        mu = out[:, kz:2 * kz].view(-1, K, Z)
        logsigma = out[:, 2 * kz:3 * kz].view(-1, K, Z)
        done_logit = out[:, 3 * kz + 1]
        if deterministic:
            sample_mixture(logits, mu, logsigma, deterministic=True, out=z_all, work=self.work)
            done = done_logit > 0
        else:
            self.uni.uniform_(generator=generator)
            self.eps.normal_(generator=generator)
            sample_mixture(logits, mu, logsigma, tau=tau, u=self.u, eps=self.eps,
                           logsigma_range=(self.logsigma_min, self.logsigma_max), out=z_all,
                           work=self.work)
            done = self.ud < torch.sigmoid(done_logit)
        n = self.num_envs
        return out[:n, 3 * kz], done[:n]

    def _step_compiled(self, cell: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic mode, compiled: the fused cell (on the gates already computed), then the
        most likely component's mean."""
        Z, H, K = self.Z, self.H, self.K
        h_all = self.x[:, Z:Z + H]
        h_all.copy_(cell(self.gates, self.c))
        out = torch.addmm(self.head_b, h_all, self.head_w.t(), out=self.out)  # (N, O)
        kz, n = K * Z, self.num_envs
        logits, mu = out[:, :kz].view(-1, K, Z), out[:, kz:2 * kz].view(-1, K, Z)
        sample_mixture(logits, mu, mu, deterministic=True, out=self.x[:, :Z])
        return out[:n, 3 * kz], (out[:, 3 * kz + 1] > 0)[:n]

    @staticmethod
    def flops_per_step(z_size: int, hidden: int, action_dim: int, gaussians: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of the two matmuls of one rollout step, unpadded."""
        D = z_size + hidden + action_dim
        return 2 * (D * 4 * hidden + hidden * (3 * gaussians * z_size + 2))
