"""The dream's batched step: M advancing N rollouts at once, behind one small interface.

:class:`DreamStep` is the seam between the dream environments (``envs/dream.py``) and the model
that dreams. A step is, per rollout, ``(state, action) -> (next z, reward, done, next state)``;
for speed the state lives inside the step object's own preallocated buffers and is advanced in
place, so the env only starts rows, writes actions, steps, and reads the latents and the
controller's observations back through the accessors below. Today's implementation is
:class:`MDRNNDreamStep` (the paper's MDN-RNN, its LSTM cell and mixture sampling fused into a few
kernels); an ensemble of Ms, a Transformer M or a state-space M plugs in here as another subclass,
built by :func:`make_dream_step` from its model type, and the envs, CMA-ES and the scripts run it
unchanged.

Shapes: ``n`` rollouts (``num_envs``), latent size ``Z``, ``H`` the width of M's summary of the
past that the controller sees (the LSTM's hidden state for the MDN-RNN), ``A`` the action width.

The interface (:class:`DreamStep`):

- ``reset_rows(rows, z0)``: start rollouts ``rows`` (an int64 tensor of row indices, or a slice
  of ``0..n``) at real latents ``z0`` (len(rows), Z) with an empty past (``h = 0``; for the
  LSTM also ``c = 0``).
- ``set_actions(actions, low=None, high=None)``: the actions of the next step, (n, A) floats
  for a Box action space (clamped in place into ``[low, high]``, (A,) tensors, when given) or
  (n,) integer indices for a Discrete one (``low`` and ``high`` are then ignored).
- ``step(tau=1.0, deterministic=False, generator=None) -> (reward (n,), done (n,) bool)``: advance
  every rollout one step in place: the next ``z`` is sampled from M at temperature ``tau`` with
  the noise drawn from ``generator`` (``deterministic``: the most likely next latent, and done
  where the done logit is positive, no draws), the past ``(z, h, ...)`` updated. ``reward`` may
  be a view of the step's buffers, overwritten by the next step: clone it to keep it. Raises
  ValueError for ``tau <= 0`` unless ``deterministic``.
- ``z`` (n, Z), ``h`` (n, H), ``obs`` (n, Z + H) = ``[z, h]``: the current state, as views of the
  step's buffers (valid until the next step or reset; take them afresh after each step).
- ``take_obs() -> (n, Z + H)``: the observations ``[z, h]`` as a tensor nothing else holds or
  writes to (the caller may keep or modify it).
- ``num_envs`` (n), ``obs_size`` (Z + H), ``compiled`` (whether steps run compiled: False when
  built eagerly, and after a failed compilation fell back to eager steps).
"""

from __future__ import annotations

import abc
import functools
import math
import warnings
from typing import Any

import torch

from worldlab.mdrnn import MDRNN, sample_mixture


class DreamStep(abc.ABC):
    """N rollouts of a learned world model stepped together, state kept in the object's buffers.

    See the module docstring for the contract of every method and the tensor shapes.
    """

    num_envs: int
    """n, the rollouts stepped together."""
    compiled: bool
    """whether the steps run compiled (False when built eagerly, and after a compilation fell back)."""

    @property
    @abc.abstractmethod
    def obs_size(self) -> int:
        """Z + H, the width of the observation ``[z, h]``."""

    @property
    @abc.abstractmethod
    def z(self) -> torch.Tensor:
        """(n, Z) the rollouts' current latents (a view: valid until the next step or reset)."""

    @property
    @abc.abstractmethod
    def h(self) -> torch.Tensor:
        """(n, H) M's summary of each rollout's past that the controller sees (a view)."""

    @property
    @abc.abstractmethod
    def obs(self) -> torch.Tensor:
        """(n, Z + H) the observations ``[z, h]`` (a view)."""

    @abc.abstractmethod
    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor) -> None:
        """Start rollouts ``rows`` at latents ``z0`` (len(rows), Z) with an empty past (h = 0)."""

    @abc.abstractmethod
    def set_actions(self, actions: torch.Tensor, low: torch.Tensor | None = None,
                    high: torch.Tensor | None = None) -> None:
        """The next step's actions: (n, A) floats clamped into [low, high] (A,) when given, or (n,) indices."""

    @abc.abstractmethod
    def step(self, tau: float = 1.0, deterministic: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every rollout one step in place; returns (reward (n,), done (n,) bool)."""

    @abc.abstractmethod
    def take_obs(self) -> torch.Tensor:
        """The observations ``[z, h]`` (n, Z + H) as a tensor nothing else holds or writes to."""


def make_dream_step(m: MDRNN, num_envs: int, device: torch.device | str | None, compile: bool = False,
                    min_rows: int = 8) -> DreamStep:
    """The batched dream step of M for ``num_envs`` rollouts on ``device`` (None: M's device).

    ``compile`` fuses the step with inductor where the implementation can (eager if that fails);
    ``min_rows`` pads the buffers so that a small batch sums like a large one (see
    :class:`MDRNNDreamStep`). The weights are copied from ``m``: build a new step after training M.
    """
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if isinstance(m, MDRNN):
        return MDRNNDreamStep(m, num_envs, device=device, min_rows=min_rows, compile=compile)
    raise TypeError(f"no dream step for an M of type {type(m).__name__}: make_dream_step knows MDRNN only")


def mixture_workspace(batch: int, gaussians: int, z_size: int, device: torch.device | str = "cpu"
                      ) -> dict[str, torch.Tensor]:
    """Preallocated buffers for :func:`sample_mixture` on (batch, K, Z) inputs (no allocation per call)."""
    N, K, Z = batch, gaussians, z_size
    f = {"device": device}
    return {"max": torch.empty(N, 1, Z, **f), "cdf": torch.empty(N, K, Z, **f), "cum": torch.empty(N, K, Z, **f),
            "thr": torch.empty(N, 1, Z, **f), "lt": torch.empty(N, K, Z, dtype=torch.bool, **f),
            "idx": torch.empty(N, 1, Z, dtype=torch.int64, **f), "m": torch.empty(N, 1, Z, **f),
            "s": torch.empty(N, 1, Z, **f)}


def _cell_update(g: torch.Tensor, c: torch.Tensor, hidden: int) -> torch.Tensor:
    """LSTM nonlinearities on gate pre-activations (N, 4H) whose cell-candidate block is doubled.

    Writes the new cell state into ``c`` and returns the new hidden state (N, H). The twin of the
    in-place sequence in :meth:`MDRNNDreamStep.step`, for the compiler: each gate's sigmoid is taken
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
    Dynamo's guard checks and frame handling on every call, with the same generated kernels.
    Returns a tuple when ``fn`` does.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, tracing_mode="fake")(*example_args)
    copies = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device).copy_(a) for a in example_args]
    return torch._inductor.compile(gm, copies)  # compiled for the examples' strides (views of x included)


class MDRNNDreamStep(DreamStep):
    """M's one-step cell plus mixture sampling for N rollouts at once, in preallocated buffers.

    The hot loop of the dream. Per step: one ``mm`` for all four LSTM gates over the packed
    input ``x = [z | h | a | 1]`` (the two LSTM matrices concatenated, and the bias as the column
    that meets x's constant 1, so no separate bias pass over the gates), one in-place sigmoid over all
    gates (the cell-candidate rows are pre-scaled by 2 so ``tanh(g) = 2 sigmoid(2g) - 1``), a few
    in-place updates of ``c`` and ``h``, one ``addmm`` for the head, then one uniform draw (the
    component, by inverse CDF) and one normal draw per latent dimension. ``h`` and the sampled
    ``z`` are written straight into ``x``, so ``x[:, :Z+H]`` is the ``[z, h]`` observation. The
    head's output is padded with zero rows to a multiple of 16, which MKL multiplies faster than
    an odd width.

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
        Dp = D + 1  # [z | h | a | 1], not padded: a row padded to a multiple of 8 made MKL's GEMM slower
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
            Op = -(-n_out // 16) * 16  # zero rows pad the head to a multiple of 16 outputs (a faster GEMM)
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

    @property
    def obs_size(self) -> int:
        """Z + H, the width of the observation ``[z, h]``."""
        return self.Z + self.H

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

    def set_actions(self, actions: torch.Tensor, low: torch.Tensor | None = None,
                    high: torch.Tensor | None = None) -> None:
        """Write actions (n, A) floats, clamped in place into [low, high] (A,) when given, or (n,)
        integer indices when discrete (bounds ignored), into the packed input."""
        if self.discrete:
            self.a.zero_()
            self.a.scatter_(1, actions.to(self.device).long().view(-1, 1), 1.0)
        else:
            a = self.a
            a.copy_(actions.reshape(self.num_envs, self.A))
            if low is not None or high is not None:
                torch.clamp(a, low, high, out=a)

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
