"""The dream's batched step: M advancing N rollouts at once, behind one small interface.

:class:`DreamStep` is the seam between the dream environments (``envs/dream.py``) and the model
that dreams. A step is, per rollout, ``(state, action) -> (next z, reward, done, next state)``;
for speed the state lives inside the step object's own preallocated buffers and is advanced in
place, so the env only starts rows, writes actions, steps, and reads the latents and the
controller's observations back through the accessors below. The implementations are
:class:`MDRNNDreamStep` (the paper's MDN-RNN, its LSTM cell and mixture sampling fused into a few
kernels) and :class:`EnsembleDreamStep` (an ensemble of MDN-RNNs, per-dream dropout, a
disagreement penalty; the same cell and sampling code); a Transformer M or a state-space M plugs
in here as another subclass, built by :func:`make_dream_step` from its model type, and the envs,
CMA-ES and the scripts run it unchanged.

Shapes: ``n`` rollouts (``num_envs``), latent size ``Z``, ``H`` the width of M's summary of the
past that the controller sees (the LSTM's hidden state for the MDN-RNN), ``A`` the action width.

The interface (:class:`DreamStep`):

- ``reset_rows(rows, z0, state0=None, rngs=None)``: start rollouts ``rows`` (an int64 tensor of
  row indices, or a slice of ``0..n``) at real latents ``z0`` (len(rows), Z) with an empty past
  (``state0=None``: ``h = 0``; for the LSTM also ``c = 0``), or with the model's own recurrent
  state ``state0`` there: for the MDN-RNN steps ``(h, c)``, each (M, len(rows), H) with M the
  step's ``num_members`` (every member's state; (len(rows), H) also does for one M). ``rngs``
  (one ``numpy`` generator per row, the env's seeded ones) feed what the model draws once per
  dream (an ensemble's member, a dropout mask); a model that draws nothing ignores them.
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
- ``copy_rows_from(src, rows)`` (optional; ``can_copy_rows``): rollouts ``0..len(rows)-1`` of this
  step (``num_envs == len(rows)``) go on from rollouts ``rows`` of ``src``, a step of the same class
  and Ms: their whole state (latent, recurrent state, an ensemble's member and dropout mask). A
  population's dreams that have not ended move to a smaller step this way (the dead ones stop
  costing a GEMM row each; :meth:`envs.dream.DreamVectorEnv.shrink_torch`).
- ``num_envs`` (n), ``obs_size`` (Z + H), ``compiled`` (whether steps run compiled: False when
  built eagerly, and after a failed compilation fell back to eager steps), ``num_members`` (the
  Ms dreamed with: 1 for a single M).
"""

from __future__ import annotations

import abc
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worldlab.mdrnn import MDRNN, sample_mixture
from worldlab.sequence_m import MambaM, SequenceM, put_rows, state_from_entries


class DreamStep(abc.ABC):
    """N rollouts of a learned world model stepped together, state kept in the object's buffers.

    See the module docstring for the contract of every method and the tensor shapes.
    """

    num_envs: int
    """n, the rollouts stepped together."""
    compiled: bool
    """whether the steps run compiled (False when built eagerly, and after a compilation fell back)."""
    num_members: int = 1
    """the Ms the step dreams with (an ensemble's size; 1 for a single M)."""

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
    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor, state0: Any = None,
                   rngs: Sequence[np.random.Generator] | None = None) -> None:
        """Start rollouts ``rows`` at latents ``z0`` (len(rows), Z), with an empty past (h = 0) or
        the model's own recurrent state ``state0``; ``rngs``: one generator per row for what the
        model draws per dream."""

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

    can_copy_rows = False
    """Whether :meth:`copy_rows_from` is implemented."""

    def copy_rows_from(self, src: DreamStep, rows: torch.Tensor) -> None:
        """Rollouts ``0..len(rows)-1`` go on from rollouts ``rows`` of ``src`` (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} cannot take over another step's rollouts")

    def _check_copy(self, src: DreamStep, rows: torch.Tensor) -> torch.Tensor:
        if type(src) is not type(self) or getattr(src, "num_members", 1) != getattr(self, "num_members", 1):
            raise ValueError(f"a {type(self).__name__} takes rollouts from a step of its own kind, "
                             f"got a {type(src).__name__}")
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.device).reshape(-1)
        if rows.numel() != self.num_envs:
            raise ValueError(f"this step holds {self.num_envs} rollouts; got {rows.numel()} rows to take over")
        return rows


MEMBER_MODES = ("episode", "step")
"""How an ensemble drives a dream: one member for the whole episode, or a fresh member each step."""


DONE_MODES = ("member", "max")
"""Whose episode end an ensemble's dream draws: its driving member's, or the members' most likely
one (a pessimistic dream: a step ends the dream with the largest of the members' done
probabilities)."""


def steps_every_member(members: int, member_mode: str, disagreement_penalty: float, done_mode: str) -> bool:
    """Whether an ensemble of ``members`` Ms steps every member in every dream (``members`` Ms' cost):
    a fresh member each step, a disagreement penalty, or the members' largest done probability."""
    return members > 1 and (member_mode == "step" or disagreement_penalty > 0 or done_mode == "max")


def check_ensemble_options(member_mode: str, dropout: float, disagreement_penalty: float,
                           done_mode: str = "member") -> None:
    """One-line refusal of ensemble options the dream step cannot run."""
    if member_mode not in MEMBER_MODES:
        raise ValueError(f"member_mode must be one of {', '.join(MEMBER_MODES)}, got {member_mode!r}")
    if done_mode not in DONE_MODES:
        raise ValueError(f"done_mode must be one of {', '.join(DONE_MODES)}, got {done_mode!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if isinstance(disagreement_penalty, bool) or not isinstance(disagreement_penalty, int | float) \
            or not disagreement_penalty >= 0.0:
        raise ValueError(f"disagreement_penalty must be >= 0, got {disagreement_penalty!r}")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The dream step's number formats (``dream.precision``)."""


def check_precision(precision: str, m: Any = None) -> None:
    """Refuse an unknown ``precision``, or bf16 for an M whose dream step has no bf16 path (the MDN-RNN's)."""
    if precision not in PRECISIONS:
        raise ValueError(f"dream.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and m is not None and not isinstance(m, SequenceM):
        raise ValueError(f"dream.precision={precision} is built for a Transformer or Mamba M (m.family=gpt|mamba); "
                         f"this M is a {type(m).__name__}: pass --set dream.precision=fp32")


def make_dream_step(m: MDRNN | SequenceM, num_envs: int, device: torch.device | str | None, compile: bool = False,
                    min_rows: int = 8, *, members: Sequence[MDRNN] = (), member_mode: str = "episode",
                    dropout: float = 0.0, disagreement_penalty: float = 0.0, precision: str = "fp32",
                    done_mode: str = "member") -> DreamStep:
    """The batched dream step of M for ``num_envs`` rollouts on ``device`` (None: M's device).

    ``compile`` fuses the step with inductor where the implementation can (eager if that fails);
    ``min_rows`` pads the buffers so that a small batch sums like a large one (see
    :class:`MDRNNDreamStep`). The weights are copied from ``m``: build a new step after training M.

    ``members`` (more MDN-RNNs of ``m``'s architecture), ``member_mode``, ``dropout``,
    ``disagreement_penalty`` and ``done_mode`` make an :class:`EnsembleDreamStep` (eager: ``compile``
    is ignored); a single M without dropout is today's :class:`MDRNNDreamStep` whatever the mode,
    the penalty and the done mode (one member never disagrees with itself, nor is more pessimistic).

    ``precision``: "fp32", or "bf16" for a Transformer or Mamba M (:class:`SequenceMDreamStep`:
    the model's weights and state in bfloat16, the sampling in fp32).
    """
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    check_ensemble_options(member_mode, dropout, disagreement_penalty, done_mode)
    check_precision(precision, m)
    if isinstance(m, MDRNN):
        members = list(members)
        for k, extra in enumerate(members, 1):
            if not isinstance(extra, MDRNN):
                raise TypeError(f"ensemble member {k} is a {type(extra).__name__}, not an MDRNN")
        if not members and dropout == 0:
            return MDRNNDreamStep(m, num_envs, device=device, min_rows=min_rows, compile=compile)
        return EnsembleDreamStep([m, *members], num_envs, device=device, min_rows=min_rows, member_mode=member_mode,
                                 dropout=dropout, disagreement_penalty=disagreement_penalty, done_mode=done_mode)
    if isinstance(m, SequenceM):
        if list(members) or dropout:
            raise ValueError(f"ensembles and dropout dreams are built for the MDN-RNN; this run's M is a "
                             f"{m.FAMILY}: drop ensemble.members / ensemble.dropout, or train an mdrnn M")
        return SequenceMDreamStep(m, num_envs, device=device, min_rows=min_rows, compile=compile, precision=precision)
    raise TypeError(f"no dream step for an M of type {type(m).__name__}: make_dream_step knows MDRNN, "
                    f"TransformerM and MambaM")


def write_actions(a: torch.Tensor, actions: torch.Tensor, discrete: bool, low: torch.Tensor | None = None,
                  high: torch.Tensor | None = None) -> None:
    """Write a step's actions into its buffer ``a`` (n, A) in place: one-hot of (n,) indices when
    ``discrete`` (bounds ignored), else (n, A) floats clamped into [low, high] (A,) when given."""
    if discrete:
        a.zero_()
        a.scatter_(1, actions.to(a.device).long().view(-1, 1), 1.0)
    else:
        a.copy_(actions.reshape(a.shape))
        if low is not None or high is not None:
            torch.clamp(a, low, high, out=a)


def mixture_workspace(batch: int, gaussians: int, z_size: int, device: torch.device | str = "cpu"
                      ) -> dict[str, torch.Tensor]:
    """Preallocated buffers for :func:`sample_mixture` on (batch, K, Z) inputs (no allocation per call)."""
    N, K, Z = batch, gaussians, z_size
    f = {"device": device}
    return {"max": torch.empty(N, 1, Z, **f), "cdf": torch.empty(N, K, Z, **f), "cum": torch.empty(N, K, Z, **f),
            "thr": torch.empty(N, 1, Z, **f), "lt": torch.empty(N, K, Z, dtype=torch.bool, **f),
            "idx": torch.empty(N, 1, Z, dtype=torch.int64, **f), "m": torch.empty(N, 1, Z, **f),
            "s": torch.empty(N, 1, Z, **f)}


def pack_weights(mdrnn: MDRNN, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M's weights as the dream step multiplies them: ``(w (4H, D + 1), head_w (Op, H), head_b (Op,))``.

    ``w`` holds the two LSTM matrices side by side for the packed input ``x = [z | h | a | 1]``, the
    summed biases as its last column (they ride in the GEMM on x's constant 1), and the
    cell-candidate rows pre-scaled by 2 (``tanh(g) = 2 sigmoid(2g) - 1``). The head is padded with
    zero rows to ``Op``, a multiple of 16 outputs, which MKL multiplies faster than an odd width.
    """
    cfg = mdrnn.config
    Z, A, H = cfg.z_size, cfg.action_dim, cfg.hidden
    D = Z + H + A
    with torch.no_grad():
        r = mdrnn.rnn
        w_ih = r.weight_ih_l0.detach().float()  # (4H, Z + A): columns [z | a]
        w_hh = r.weight_hh_l0.detach().float()  # (4H, H)
        w = torch.zeros(4 * H, D + 1)
        w[:, :Z] = w_ih[:, :Z]
        w[:, Z:Z + H] = w_hh
        w[:, Z + H:D] = w_ih[:, Z:]
        w[:, D] = r.bias_ih_l0 + r.bias_hh_l0  # the bias rides in the GEMM on x's constant-1 column
        w[2 * H:3 * H] *= 2.0  # gate order i, f, g, o: g rows x2 for the tanh-by-sigmoid trick
        n_out = mdrnn.head.weight.shape[0]
        Op = -(-n_out // 16) * 16  # zero rows pad the head to a multiple of 16 outputs (a faster GEMM)
        head_w = torch.zeros(Op, H, device=device)
        head_w[:n_out] = mdrnn.head.weight.detach().float()
        head_b = torch.zeros(Op, device=device)
        head_b[:n_out] = mdrnn.head.bias.detach().float()
    return w.to(device), head_w, head_b


def _cell_inplace(g: torch.Tensor, c: torch.Tensor, tmp: torch.Tensor, h_out: torch.Tensor, hidden: int) -> None:
    """The LSTM cell, eagerly and in place, on gate pre-activations ``g`` (..., 4H) packed by
    :func:`pack_weights`: overwrites ``g``, writes the new cell state into ``c`` (..., H) and the new
    hidden state into ``h_out`` (..., H; a view of the packed input), using ``tmp`` (..., H)."""
    g.sigmoid_()
    i, f, gg, o = g.split(hidden, dim=-1)             # (..., H) each; gg = sigmoid(2 g_pre)
    c.mul_(f).addcmul_(i, gg, value=2.0).sub_(i)     # c' = f c + i tanh(g_pre), tanh = 2 sigmoid(2x) - 1
    t = torch.mul(c, 2.0, out=tmp)
    t.sigmoid_().mul_(2.0).sub_(1.0)                 # tanh(c')
    torch.mul(o, t, out=h_out)                       # h' = o tanh(c')


def _sample_head(out: torch.Tensor, K: int, Z: int, z_out: torch.Tensor, work: dict[str, torch.Tensor],
                 deterministic: bool, tau: float, u: torch.Tensor, eps: torch.Tensor, ud: torch.Tensor,
                 logsigma_range: tuple[float, float]) -> torch.Tensor:
    """The next latent from head outputs ``out`` (B, Op) (layout of :mod:`worldlab.mdrnn`) into
    ``z_out`` (B, Z) by :func:`sample_mixture` (uniforms ``u`` (B, 1, Z), noise ``eps`` (B, Z), already
    drawn; none used when ``deterministic``); returns the done flags (B,) bool (``ud`` (B,) uniforms
    against the done probability, or the logit's sign when ``deterministic``)."""
    kz = K * Z
    logits = out[:, :kz].view(-1, K, Z)
    mu = out[:, kz:2 * kz].view(-1, K, Z)
    logsigma = out[:, 2 * kz:3 * kz].view(-1, K, Z)
    done_logit = out[:, 3 * kz + 1]
    if deterministic:
        sample_mixture(logits, mu, logsigma, deterministic=True, out=z_out, work=work)
        return done_logit > 0
    sample_mixture(logits, mu, logsigma, tau=tau, u=u, eps=eps, logsigma_range=logsigma_range, out=z_out,
                   work=work)
    return ud < torch.sigmoid(done_logit)


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
        self.w, self.head_w, self.head_b = pack_weights(mdrnn, dev)  # (4H, Dp), (Op, H), (Op,)
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

    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor,
                   state0: tuple[torch.Tensor, torch.Tensor] | None = None,
                   rngs: Sequence[np.random.Generator] | None = None) -> None:
        """Start rollouts ``rows`` at latents ``z0`` (len(rows), Z) with zero LSTM state, or with
        ``state0 = (h, c)``, each (len(rows), H) or (1, len(rows), H). ``rngs`` is unused (this M
        draws nothing per dream)."""
        if isinstance(rows, slice):  # a slice of the real rollouts, never the padding rows
            rows = torch.arange(self.num_envs, device=self.device)[rows]
        self.x[rows, :self.Z] = z0.to(self.device, torch.float32)
        self.x[rows, self.Z:self.D] = 0.0
        if state0 is None:
            self.c[rows] = 0.0
        else:
            h0, c0 = (s.to(self.device, torch.float32).reshape(-1, self.H) for s in state0)
            self.x[rows, self.Z:self.Z + self.H] = h0
            self.c[rows] = c0
        if self.fresh_obs is not None:
            self.fresh_obs[rows] = self.x[rows, :self.Z + self.H]

    can_copy_rows = True

    def copy_rows_from(self, src: DreamStep, rows: torch.Tensor) -> None:
        rows = self._check_copy(src, rows)
        n = self.num_envs
        self.x[:n] = src.x.index_select(0, rows)  # z, h, the last actions and the bias column
        self.c[:n] = src.c.index_select(0, rows)
        self.fresh_obs = None

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
        write_actions(self.a, actions, self.discrete, low, high)

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
        h_all, z_all = self.x[:, Z:Z + H], self.x[:, :Z]  # (N, H), (N, Z) incl. the padding rows
        _cell_inplace(g, c, self.tmp, h_all, H)          # h' written into x
        out = torch.addmm(self.head_b, h_all, self.head_w.t(), out=self.out)  # (N, O)
        if not deterministic:
            self.uni.uniform_(generator=generator)
            self.eps.normal_(generator=generator)
        done = _sample_head(out, K, Z, z_all, self.work, deterministic, tau, self.u, self.eps, self.ud,
                            (self.logsigma_min, self.logsigma_max))
        n = self.num_envs
        return out[:n, 3 * K * Z], done[:n]

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


class EnsembleDreamStep(DreamStep):
    """N dreams in an ensemble of M MDN-RNNs (M = ``num_members``), with per-dream dropout and a
    disagreement penalty on the reward; eager.

    Members (the first is the M the real game's controller reads its ``h`` from) share one
    architecture; their weights are stacked, ``w`` (M, 4H, D + 1), ``head_w`` (M, Op, H),
    ``head_b`` (M, Op), packed as :func:`pack_weights` packs one M. Two ways to step:

    - **grouped** (``member_mode="episode"`` without penalty, or a single M with dropout): each
      dream is one member's for its episode (drawn at reset) and carries that member's ``(h, c)``
      only. The state lives in *slots* sorted by member, each member's rows one contiguous block
      (laid out again at each reset), so the GEMMs need no gather of the state: when the members'
      blocks are about equal (padding each to the largest costs at most a quarter more rows) each
      GEMM is one ``bmm`` over (members, block, ...); otherwise (CMA-ES's common random numbers
      can give members blocks of very unequal size) one GEMM per member on its block, padded to
      ``min_rows`` as :class:`MDRNNDreamStep` pads its batch. The element-wise cell and the
      mixture sampling run on all slots at once. About the cost of one M's step
      (``benchmarks/dream.py --members``).
    - **all members** (``member_mode="step"``, a penalty or ``done_mode="max"``, with M > 1): every member follows every
      dream with its own ``(h, c)`` (``x`` (M, N, D + 1), one ``bmm`` for the gates over the members;
      the heads: one ``bmm`` over the members with a penalty, which reads every member's mixture,
      else one GEMM per member on the rows it drives, plus every member's done logit alone with
      ``done_mode="max"``): about M times the LSTM's arithmetic. The next ``z``, reward and done come from the
      dream's member (episode mode) or a member drawn per dream and step (step mode), and every
      member reads that ``z`` next. The members' predicted next-z means (each mixture's mean,
      ``sum_k softmax(logits)_k mu_k``, at temperature 1) give the disagreement: their standard
      deviation over members, averaged over latent dims (:attr:`disagreement`, (n,));
      ``disagreement_penalty * disagreement`` is subtracted from the reward (as MOPO does). With
      ``done_mode="max"`` a dream ends with the largest of the members' done probabilities (the
      same uniform draw): a place where any member expects the end is one the dream ends in, so a
      controller cannot be paid for going where one member is optimistic about its survival.

    The controller sees ``[z, h]`` with the ``h`` of the dream's episode member (step mode: member
    0's, the M the real game uses).

    Per-dream randomness is drawn at :meth:`reset_rows` from each row's own generator (``rngs``,
    the env's seeded ones; in this order per row: the member, then the dropout mask): a dream's
    member, and with ``dropout`` p > 0 a mask (H,) of kept units scaled by 1 / (1 - p), fixed for the
    episode, applied to ``h`` where it enters the head (the recurrent ``h`` and the controller's are
    not masked; Dropout's Dream Land, Wellmer & Kwok 2021). ``deterministic`` steps apply no mask.
    Per-step noise comes from the ``generator`` of :meth:`step`, drawn as :class:`MDRNNDreamStep`
    draws it (uniforms (N, Z + 1), then normals (N, Z), N = max(n, min_rows)), then in step mode
    one uniform per row for its member: a row of member k samples with the very draws that row gets
    in an :class:`MDRNNDreamStep` of member k fed by the same generator.

    ``state0`` of :meth:`reset_rows` is ``(h, c)``, each (M, len(rows), H): every member's state of
    the start (a bank's entry holds all members'); a grouped step keeps each row's member's.
    """

    def __init__(self, mdrnns: Sequence[MDRNN], num_envs: int, device: torch.device | str | None = None,
                 min_rows: int = 8, member_mode: str = "episode", dropout: float = 0.0,
                 disagreement_penalty: float = 0.0, done_mode: str = "member") -> None:
        from dataclasses import asdict

        check_ensemble_options(member_mode, dropout, disagreement_penalty, done_mode)
        ms = list(mdrnns)
        if not ms:
            raise ValueError("an ensemble needs at least one MDRNN")
        cfg = ms[0].config
        for k, m in enumerate(ms[1:], 1):
            if asdict(m.config) != asdict(cfg):
                raise ValueError(f"ensemble member {k} has another architecture than member 0 "
                                 f"({asdict(m.config)} vs {asdict(cfg)}); train every member with one MDRNNConfig")
        self.num_members = M = len(ms)
        self.member_mode, self.dropout, self.penalty = member_mode, float(dropout), float(disagreement_penalty)
        self.done_mode = done_mode
        self.full = steps_every_member(M, member_mode, self.penalty, done_mode)
        self.num_envs = n = int(num_envs)
        self.min_rows = int(min_rows)
        self.rows = N = max(n, self.min_rows)
        self.device = dev = torch.device(device) if device is not None else ms[0].device
        Z, A, H, G = cfg.z_size, cfg.action_dim, cfg.hidden, cfg.gaussians
        self.Z, self.A, self.H, self.G = Z, A, H, G
        self.D = D = Z + H + A
        self.discrete = cfg.discrete_actions
        self.logsigma_range = (cfg.logsigma_min, cfg.logsigma_max)
        packed = [pack_weights(m, dev) for m in ms]
        self.w = torch.stack([p[0] for p in packed])       # (M, 4H, D + 1)
        self.head_w = torch.stack([p[1] for p in packed])  # (M, Op, H)
        self.head_b = torch.stack([p[2] for p in packed])  # (M, Op)
        Op = self.head_w.shape[1]
        self.compiled = False
        self.uni = torch.empty(N, Z + 1, device=dev)  # (N, Z + 1) per-step uniforms in row order, as MDRNNDreamStep
        self.eps = torch.empty(N, Z, device=dev)      # (N, Z) per-step normals in row order
        self.member = torch.zeros(n, dtype=torch.int64, device=dev)  # (n,) each dream's episode member
        self.keep = torch.ones(n, H, device=dev) if self.dropout > 0 else None  # (n, H) dropout masks, scaled
        self.disagreement = torch.zeros(n, device=dev)
        """(n,) the members' disagreement at the last step (with a penalty only; else zeros)."""
        self.actions = torch.zeros(n, A, device=dev)  # (n, A) the next actions in row order
        self._rng = np.random.default_rng(0)  # per-dream draws of resets without generators (direct use)
        if self.full:
            self.x = torch.zeros(M, N, D + 1, device=dev)  # (M, N, D + 1) every member's [z | h | a | 1]
            self.x[..., D] = 1.0
            self.c = torch.zeros(M, N, H, device=dev)
            self.gates = torch.empty(M, N, 4 * H, device=dev)
            self.tmp = torch.empty(M, N, H, device=dev)
            self.hd = torch.empty(M, N, H, device=dev)
            # every member's head output only where the disagreement reads every member's mixture; else
            # the driving member's head alone per row, and with done_mode="max" every member's done logit
            self.out = torch.empty(M, N, Op, device=dev) if self.penalty > 0 else None
            if self.out is None and done_mode == "max":
                d = 3 * G * Z + 1  # the done logit's row of the head
                self.done_w = self.head_w[:, d:d + 1, :].transpose(1, 2).contiguous()  # (M, H, 1)
                self.done_b = self.head_b[:, None, d:d + 1].contiguous()              # (M, 1, 1)
                self.done_logits = torch.empty(M, N, 1, device=dev)
            self.sel = torch.empty(1, N, Op, device=dev)   # the driving member's head output per row
            self.pick = torch.empty(N, device=dev)         # step mode: the member uniforms
            self.znext = torch.empty(N, Z, device=dev)
            self.driver = torch.zeros(N, dtype=torch.int64, device=dev)  # the member that drives each row now
            self.work = mixture_workspace(N, G, Z, dev)
            self.rows_n = torch.arange(n, device=dev)
        else:
            S = max(n + M * self.min_rows, (5 * (n + M * self.min_rows)) // 4 + 1)  # slots, padding included
            self.xs = torch.zeros(S, D + 1, device=dev)    # (S, D + 1) [z | h | a | 1] in slot order
            self.xs[:, D] = 1.0
            self.cs = torch.zeros(S, H, device=dev)
            self.gates = torch.empty(S, 4 * H, device=dev)
            self.tmp = torch.empty(S, H, device=dev)
            self.hd = torch.empty(S, H, device=dev)
            self.out = torch.empty(S, Op, device=dev)
            self.uni_s = torch.empty(S, Z + 1, device=dev)
            self.eps_s = torch.empty(S, Z, device=dev)
            self.keep_s = torch.ones(S, H, device=dev) if self.dropout > 0 else None
            self.work_all = mixture_workspace(S, G, Z, dev)
            self.bias_s = torch.empty(S, Op, device=dev)
            self._layout()

    # -- the slot layout of the grouped step ----------------------------------------------------

    def _layout(self) -> None:
        """Slots for the rows' current members: member blocks in member order, rows in row order
        inside a block, each block padded with copies of its first row to ``min_rows``, or, when that
        costs at most a quarter more rows, every member's block to the largest one's size (then
        each GEMM is one ``bmm`` over the members: one parallel region instead of one per member,
        which matters on a CPU whose cores other jobs share)."""
        M = self.num_members
        counts = torch.bincount(self.member, minlength=M).tolist()
        caps = [max(cnt, self.min_rows) if cnt else 0 for cnt in counts]
        widest = max(caps)
        self.batched = M > 1 and 4 * M * widest <= 5 * sum(caps)
        if self.batched:
            caps = [widest] * M
        order = torch.argsort(self.member, stable=True)
        row_of_slot, groups, slot_of_row = [], [], torch.empty_like(self.member)
        start = pos = 0
        for m, (cnt, cap) in enumerate(zip(counts, caps, strict=True)):
            if cap == 0:
                continue
            rows = order[pos:pos + cnt] if cnt else order[:1]  # an empty block (batched) computes a copy of a row
            row_of_slot += [order[pos:pos + cnt], rows[:1].expand(cap - cnt)]
            slot_of_row[order[pos:pos + cnt]] = torch.arange(start, start + cnt, device=self.device)
            groups.append((m, start, start + cap))
            start, pos = start + cap, pos + cnt
        self.S = start
        self.width = widest
        self.groups = groups                          # [(member, first slot, end slot)]
        self.row_of_slot = torch.cat(row_of_slot)     # (S,) the row each slot computes
        self.slot_of_row = slot_of_row                # (n,) where each row lives
        self.work = {k: v[:start] for k, v in self.work_all.items()}
        for m, a, b in groups:  # each slot's head bias, copied into the head's output before its GEMMs
            self.bias_s[a:b] = self.head_b[m]

    def _fill_slots(self, x: torch.Tensor, c: torch.Tensor) -> None:
        """Lay the slots out for the rows' members (``self.member``) and fill them from the rows'
        packed inputs ``x`` (n, D + 1) and cell states ``c`` (n, H) in row order (and the masks)."""
        self._layout()
        S = self.S
        torch.index_select(x, 0, self.row_of_slot, out=self.xs[:S])
        torch.index_select(c, 0, self.row_of_slot, out=self.cs[:S])
        if self.keep is not None:
            torch.index_select(self.keep, 0, self.row_of_slot, out=self.keep_s[:S])

    # -- the interface ---------------------------------------------------------------------------

    @property
    def obs_size(self) -> int:
        return self.Z + self.H

    @property
    def z(self) -> torch.Tensor:
        """(n, Z) the dreams' latents (a view in all-members stepping, a new tensor when grouped)."""
        if self.full:
            return self.x[0, :self.num_envs, :self.Z]
        return self.xs[:self.S, :self.Z].index_select(0, self.slot_of_row)

    @property
    def h(self) -> torch.Tensor:
        """(n, H) the ``h`` each dream's controller sees (see the class docstring)."""
        Z, H, n = self.Z, self.H, self.num_envs
        if not self.full:
            return self.xs[:self.S, Z:Z + H].index_select(0, self.slot_of_row)
        if self.member_mode == "step":
            return self.x[0, :n, Z:Z + H]
        return self.x[self.member, self.rows_n, Z:Z + H]

    @property
    def obs(self) -> torch.Tensor:
        """(n, Z + H) the observations ``[z, h]`` (a new tensor unless in step mode's all-members stepping)."""
        if not self.full:
            return self.xs[:self.S, :self.Z + self.H].index_select(0, self.slot_of_row)
        if self.member_mode == "step":
            return self.x[0, :self.num_envs, :self.Z + self.H]
        return self.x[self.member, self.rows_n, :self.Z + self.H]

    def take_obs(self) -> torch.Tensor:
        obs = self.obs
        return obs.clone() if self.full and self.member_mode == "step" else obs

    @property
    def members_of_rows(self) -> torch.Tensor:
        """(n,) each dream's episode member (a copy)."""
        return self.member.clone()

    can_copy_rows = True

    def copy_rows_from(self, src: DreamStep, rows: torch.Tensor) -> None:
        rows = self._check_copy(src, rows)
        if (src.full, src.dropout) != (self.full, self.dropout):
            raise ValueError("the two ensemble steps must step their members alike (member_mode, penalty, "
                             "done_mode and dropout)")
        self.member.copy_(src.member.index_select(0, rows))
        if self.keep is not None:
            self.keep.copy_(src.keep.index_select(0, rows))
        n = self.num_envs
        if self.full:
            self.x[:, :n] = src.x.index_select(1, rows)
            self.c[:, :n] = src.c.index_select(1, rows)
            self.driver[:n] = src.driver.index_select(0, rows)
            return
        x = src.xs[:src.S].index_select(0, src.slot_of_row.index_select(0, rows))  # (n, D + 1) in row order
        c = src.cs[:src.S].index_select(0, src.slot_of_row.index_select(0, rows))
        self._fill_slots(x, c)

    def _draw(self, count: int, rngs: Sequence[np.random.Generator] | None, members: Any
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The members and dropout masks (scaled) of ``count`` new dreams, from their generators."""
        src = list(rngs) if rngs is not None else [self._rng] * count
        if len(src) != count:
            raise ValueError(f"got {len(src)} generators for {count} rows")
        drawn_m, drawn_k = [], []
        for r in src:  # per row: its member, then its mask
            drawn_m.append(int(r.integers(self.num_members)))
            if self.dropout > 0:
                drawn_k.append(r.random(self.H) >= self.dropout)
        mem = torch.as_tensor(drawn_m if members is None else members, dtype=torch.int64).to(self.device)
        if mem.shape != (count,) or bool(((mem < 0) | (mem >= self.num_members)).any()):
            raise ValueError(f"members must be {count} indices in [0, {self.num_members}), got {mem.tolist()}")
        keep = None
        if self.dropout > 0:
            keep = torch.from_numpy(np.stack(drawn_k).astype(np.float32) / (1.0 - self.dropout)).to(self.device)
        return mem, keep

    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor,
                   state0: tuple[torch.Tensor, torch.Tensor] | None = None,
                   rngs: Sequence[np.random.Generator] | None = None, members: Any = None) -> None:
        """Start dreams ``rows`` at ``z0`` (len(rows), Z), with zero state or ``state0`` (every member's
        ``(h, c)``, each (M, len(rows), H)); their members and masks drawn from ``rngs`` (one per row;
        the step's own generator when None) or, for members, given as ``members`` (len(rows),)."""
        n, Z, H, D, M = self.num_envs, self.Z, self.H, self.D, self.num_members
        if isinstance(rows, slice):
            rows = torch.arange(n, device=self.device)[rows]
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.device).reshape(-1)
        L = int(rows.numel())
        mem, keep = self._draw(L, rngs, members)
        z0 = z0.to(self.device, torch.float32).reshape(L, Z)
        if state0 is not None:
            h0, c0 = (s.to(self.device, torch.float32).reshape(M, L, H) for s in state0)
        self.member[rows] = mem
        if keep is not None:
            self.keep[rows] = keep
        if self.full:
            self.x[:, rows, :Z] = z0
            self.x[:, rows, Z:D] = 0.0
            self.c[:, rows] = 0.0
            if state0 is not None:
                self.x[:, rows, Z:Z + H] = h0
                self.c[:, rows] = c0
            self.driver[rows] = mem
            return
        S = self.S  # grouped: back to row order, start the rows, lay the slots out for the new members
        x = self.xs[:S].index_select(0, self.slot_of_row)  # (n, D + 1)
        c = self.cs[:S].index_select(0, self.slot_of_row)  # (n, H)
        x[rows, :Z] = z0
        x[rows, Z:D] = 0.0
        c[rows] = 0.0
        if state0 is not None:
            pick = torch.arange(L, device=self.device)
            x[rows, Z:Z + H] = h0[mem, pick]
            c[rows] = c0[mem, pick]
        self._fill_slots(x, c)

    def set_actions(self, actions: torch.Tensor, low: torch.Tensor | None = None,
                    high: torch.Tensor | None = None) -> None:
        a = self.actions
        write_actions(a, actions, self.discrete, low, high)
        Z, H, D = self.Z, self.H, self.D
        if self.full:
            self.x[:, :self.num_envs, Z + H:D] = a
        else:
            self.xs[:self.S, Z + H:D].index_copy_(0, self.slot_of_row, a)

    def step(self, tau: float = 1.0, deterministic: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if tau <= 0 and not deterministic:
            raise ValueError(f"temperature must be > 0 (use deterministic=True for tau -> 0), got {tau}")
        if not deterministic:
            self.uni.uniform_(generator=generator)
            self.eps.normal_(generator=generator)
        return self._step_all(tau, deterministic, generator) if self.full else self._step_grouped(tau, deterministic)

    def _step_grouped(self, tau: float, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        Z, H, G, S, M = self.Z, self.H, self.G, self.S, self.num_members
        x, g, out = self.xs[:S], self.gates[:S], self.out[:S]
        if self.batched:  # equal blocks: one bmm over the members
            torch.bmm(x.view(M, self.width, -1), self.w.transpose(1, 2), out=g.view(M, self.width, -1))
        else:  # one GEMM per member on its block of slots
            for m, a, b in self.groups:
                torch.mm(x[a:b], self.w[m].t(), out=g[a:b])
        h = x[:, Z:Z + H]
        _cell_inplace(g, self.cs[:S], self.tmp[:S], h, H)
        head_in = h if self.keep_s is None or deterministic else torch.mul(h, self.keep_s[:S], out=self.hd[:S])
        if self.batched:
            torch.baddbmm(self.head_b[:, None], head_in.view(M, self.width, H), self.head_w.transpose(1, 2),
                          out=out.view(M, self.width, -1))
        else:
            out.copy_(self.bias_s[:S])
            for m, a, b in self.groups:
                torch.addmm(out[a:b], head_in[a:b], self.head_w[m].t(), out=out[a:b])
        u = eps = ud = self.uni_s[:S]
        if not deterministic:  # each slot gets its row's draws
            torch.index_select(self.uni, 0, self.row_of_slot, out=self.uni_s[:S])
            torch.index_select(self.eps, 0, self.row_of_slot, out=self.eps_s[:S])
            u, eps, ud = self.uni_s[:S, None, :Z], self.eps_s[:S], self.uni_s[:S, Z]
        done = _sample_head(out, G, Z, x[:, :Z], self.work, deterministic, tau, u, eps, ud, self.logsigma_range)
        return out[:, 3 * G * Z].index_select(0, self.slot_of_row), done.index_select(0, self.slot_of_row)

    def _step_all(self, tau: float, deterministic: bool, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        Z, H, G, M, n = self.Z, self.H, self.G, self.num_members, self.num_envs
        x, out = self.x, self.out
        torch.bmm(x, self.w.transpose(1, 2), out=self.gates)  # (M, N, 4H): every member, every row
        h = x[..., Z:Z + H]
        _cell_inplace(self.gates, self.c, self.tmp, h, H)
        head_in = h
        if self.keep is not None and not deterministic:
            head_in = self.hd
            torch.mul(h[:, :n], self.keep, out=head_in[:, :n])
            head_in[:, n:] = h[:, n:]
        if self.member_mode == "step":
            if deterministic:
                self.driver.zero_()
            else:
                self.pick.uniform_(generator=generator)
                torch.mul(self.pick, M, out=self.pick)
                self.driver.copy_(self.pick.long().clamp_(max=M - 1))
        sel = self.sel[0]  # (N, Op) each row's driving member's prediction
        if out is not None:  # the disagreement reads every member's mixture: every member's head
            torch.baddbmm(self.head_b[:, None, :], head_in, self.head_w.transpose(1, 2), out=out)  # (M, N, Op)
            torch.gather(out, 0, self.driver.view(1, -1, 1).expand(1, -1, out.shape[-1]), out=self.sel)
        else:  # only the driving member's head on each row: one GEMM per member on the rows it drives
            for m in range(M):
                idx = (self.driver == m).nonzero().squeeze(1)
                if idx.numel():
                    sel.index_copy_(0, idx, torch.addmm(self.head_b[m], head_in[m].index_select(0, idx),
                                                        self.head_w[m].t()))
        done = _sample_head(sel, G, Z, self.znext, self.work, deterministic, tau, self.uni[:, None, :Z], self.eps,
                            self.uni[:, Z], self.logsigma_range)
        if self.done_mode == "max":  # the pessimistic end: the members' largest done probability, the same draw
            if out is not None:
                logits = out[:, :, 3 * G * Z + 1]
            else:  # every member's done logit alone: one row of each head
                torch.baddbmm(self.done_b, head_in, self.done_w, out=self.done_logits)
                logits = self.done_logits[..., 0]
            logit = logits.amax(dim=0)  # (N,) sigmoid is monotone: max of logits = max of p
            done = logit > 0 if deterministic else self.uni[:, Z] < torch.sigmoid(logit)
        x[..., :Z] = self.znext  # every member reads the sampled latent next
        reward = sel[:n, 3 * G * Z]
        if self.penalty > 0:
            kz = G * Z
            logits = out[:, :n, :kz].reshape(M, n, G, Z)
            mu = out[:, :n, kz:2 * kz].reshape(M, n, G, Z)
            means = (torch.softmax(logits, dim=2) * mu).sum(dim=2)  # (M, n, Z) each member's mixture mean
            self.disagreement = means.std(dim=0, correction=0).mean(dim=-1)  # (n,)
            reward = reward - self.penalty * self.disagreement
        return reward, done[:n]


class SequenceMDreamStep(DreamStep):
    """A Transformer M or a Mamba M (:mod:`worldlab.sequence_m`) stepping N rollouts at once.

    The model's own ``step_hidden`` advances every row (the Transformer's ring key/value cache, the
    Mamba's scan state), its head gives the mixture, and the MDN-RNN's sampling code
    (:func:`_sample_head`) draws the next latent and the done flag from the same buffers of
    uniforms and noise, so both kinds of M dream by the same rules. ``min_rows`` pads the batch as
    :class:`MDRNNDreamStep` does. A mid-episode start (``state0``) is the model's whole state, by
    name, as the world model's bank holds it.

    ``compile=True`` (a Mamba M on the CPU): the model's step and head run as one inductor graph
    (:func:`compile_graph`, the weights passed in as arguments), which fuses the scan's element-wise
    work: 2.5x the eager steps/s at 1,024 dreams (``python benchmarks/sequence.py``). The state is
    updated in place, as by the eager step. A Transformer M stays eager (``compiled`` False): its step writes one slot
    of the key/value cache in place, which a traced graph turns into a copy of the whole cache, and
    measured slower compiled than eager. The sampling is eager in both.

    ``precision="bf16"``: the model's weights, its step's arithmetic and its state (the key/value
    cache, the scan state) in bfloat16; ``h`` and the head's output come back in fp32 for the
    controller and the sampling. On a CPU with native bf16 (AVX512-BF16, AMX) the matrix products
    run ~3.5x faster; without it bf16 is far slower than fp32 (see
    :func:`worldlab.training.native_bf16`). The dream it computes differs from the fp32 one by bf16
    rounding: ``scripts/m_compare.py`` measures the held-out NLL of the bf16 step beside the fp32 one.
    """

    def __init__(self, m: SequenceM, num_envs: int, device: torch.device | str | None = None,
                 min_rows: int = 8, compile: bool = False, precision: str = "fp32") -> None:
        import copy

        check_precision(precision, m)
        cfg = m.config
        self.num_envs = int(num_envs)
        self.rows = N = max(self.num_envs, int(min_rows))
        self.device = dev = torch.device(device) if device is not None else m.device
        self.precision, self.dtype = precision, PRECISIONS[precision]
        # the weights as they are now (rebuild after training M), in the step's number format
        self.m = copy.deepcopy(m).to(dev, self.dtype).eval()
        self.Z, self.A, self.H, self.K = cfg.z_size, cfg.action_dim, cfg.width, cfg.gaussians
        self.discrete = cfg.discrete_actions
        self.logsigma_range = (cfg.logsigma_min, cfg.logsigma_max)
        self.buf = torch.zeros(N, self.Z + self.H, device=dev)  # [z | h]
        self.actions = torch.zeros(N, self.A, device=dev)
        self.state = self.m.initial_state(N, dev)  # in the step's number format
        self.uni = torch.empty(N, self.Z + 1, device=dev)
        self.u, self.ud = self.uni[:, None, :self.Z], self.uni[:, self.Z]
        self.eps = torch.empty(N, self.Z, device=dev)
        self.work = mixture_workspace(N, self.K, self.Z, dev)
        self.compiled = bool(compile) and isinstance(self.m, MambaM)
        self._graph: Any = None
        self._keys = [k for k in self.m.STATE_ROW_DIM if k != "h"]  # the layer-first state tensors the graph updates
        self._params = [p.detach() for p in _StepAndHead(self.m, self._keys, cfg.layers).parameters()]

    @property
    def obs_size(self) -> int:
        return self.Z + self.H

    @property
    def z(self) -> torch.Tensor:
        return self.buf[:self.num_envs, :self.Z]

    @property
    def h(self) -> torch.Tensor:
        return self.buf[:self.num_envs, self.Z:]

    @property
    def obs(self) -> torch.Tensor:
        return self.buf[:self.num_envs]

    def take_obs(self) -> torch.Tensor:
        return self.obs.clone()

    def reset_rows(self, rows: torch.Tensor | slice, z0: torch.Tensor, state0: Any = None,
                   rngs: Sequence[np.random.Generator] | None = None) -> None:
        """Start rollouts ``rows`` at ``z0`` with an empty past, or with the past ``state0`` (the
        model's state tensors by name, (1, len(rows), ...) each: a mid-episode start from the world
        model's bank); ``rngs`` unused (nothing drawn per dream)."""
        if isinstance(rows, slice):
            rows = torch.arange(self.num_envs, device=self.device)[rows]
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        self.buf[rows, :self.Z] = z0.to(self.device, torch.float32)
        if state0 is None:
            self.buf[rows, self.Z:] = 0.0
            self.m.reset_state_rows(self.state, rows)
            return
        if not isinstance(state0, dict) or set(state0) != set(self.m.STATE_ROW_DIM):
            raise ValueError(f"a {self.m.FAMILY} starts from its state tensors {sorted(self.m.STATE_ROW_DIM)} by name, "
                             f"got {type(state0).__name__}; rebuild the world model's mid-episode bank for this M")
        entries = {k: v[0].to(self.device) for k, v in state0.items()}  # member 0: a sequence M has no ensemble
        put_rows(self.m, self.state, rows, state_from_entries(self.m, entries))
        self.buf[rows, self.Z:] = entries["h"].float()

    def set_actions(self, actions: torch.Tensor, low: torch.Tensor | None = None,
                    high: torch.Tensor | None = None) -> None:
        write_actions(self.actions[:self.num_envs], actions, self.discrete, low, high)

    @torch.no_grad()
    def step(self, tau: float = 1.0, deterministic: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if tau <= 0 and not deterministic:
            raise ValueError(f"temperature must be > 0 (use deterministic=True for tau -> 0), got {tau}")
        graph = self._compiled_graph() if self.compiled else None
        if graph is not None:  # the state tensors updated in place, one layer's view each
            h, out = graph(*self._params, self.buf[:, :self.Z], self.actions, *self._layer_views())
            self.state["h"] = h
        else:
            h, self.state = self.m.step_hidden(self.buf[:, :self.Z], self.actions, self.state)
            out = self.m.head(h)
        out = out.float()  # the sampling and the reward in fp32 whatever the step's precision
        self.buf[:, self.Z:] = h
        if not deterministic:
            self.uni.uniform_(generator=generator)
            self.eps.normal_(generator=generator)
        done = _sample_head(out, self.K, self.Z, self.buf[:, :self.Z], self.work, deterministic, tau, self.u, self.eps,
                            self.ud, self.logsigma_range)
        return out[:self.num_envs, 3 * self.K * self.Z], done[:self.num_envs]

    def _layer_views(self) -> list[torch.Tensor]:
        """Every layer's slice of every state tensor, in :class:`_StepAndHead`'s order."""
        return [self.state[k][i] for k in self._keys for i in range(self.m.config.layers)]

    def _compiled_graph(self) -> Any:
        """The step + head graph, compiled on first use; None (eager from then on, with a warning)
        when compilation fails, e.g. on a machine without a C++ compiler."""
        if self._graph is None:
            module = _StepAndHead(self.m, self._keys, self.m.config.layers)
            names = [n for n, _ in module.named_parameters()]

            def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
                params = dict(zip(names, args[:len(names)], strict=True))
                return torch.func.functional_call(module, params, tuple(args[len(names):]))

            try:
                self._graph = compile_graph(step, *self._params, self.buf[:, :self.Z], self.actions,
                                            *self._layer_views())
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step computes the same dream
                self.compiled = False
                warnings.warn(f"compiling the {self.m.FAMILY} dream step failed ({type(e).__name__}: {str(e)[:200]}); "
                              f"stepping eagerly (the same dream up to float rounding, slower). Install a C++ "
                              f"compiler (g++) to compile it, or pass compile=False to skip the attempt.",
                              RuntimeWarning, stacklevel=3)
                return None
        return self._graph


class _StepAndHead(torch.nn.Module):
    """A Mamba M's step and head as one module call, for :func:`torch.func.functional_call`:
    ``(z, a, *each layer's slice of each state tensor) -> (h, head output)``, the state slices
    updated in place. One argument per layer, not the stacked (layers, ...) tensor: inductor then
    writes each layer's new state over its input, where with slices of one input it computes the
    new state into fresh buffers and copies them back at the end (at 1,024 dreams, 64 MB a layer
    of fresh pages per step, which cost more than the step's arithmetic)."""

    def __init__(self, m: SequenceM, keys: Sequence[str], layers: int) -> None:
        super().__init__()
        self.m, self.keys, self.layers = m, list(keys), int(layers)

    def forward(self, z: torch.Tensor, a: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        L = self.layers
        state = {k: list(tensors[j * L:(j + 1) * L]) for j, k in enumerate(self.keys)}
        h, _ = self.m.step_hidden(z, a, {"h": None, **state})
        return h, self.m.head(h)
