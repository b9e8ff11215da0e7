"""M as a Transformer or as a state-space model, beside the MDN-RNN (issue 16's "M as a choice").

Both read ``[z_t, a_t]`` through a linear input layer, run a stack of sequence blocks
(:mod:`worldlab.blocks`) and end in the MDN-RNN's own head: one linear layer whose output is split
by :func:`worldlab.mdrnn.split_head` into the mixture over ``z_{t+1}``, the reward and the done
logit, trained by the same :func:`worldlab.mdrnn.next_step_loss`. The last block's (normalised)
output at step ``t`` is ``h_t``, the summary of the past the controller sees beside ``z_t``, as
the LSTM's hidden state is for the MDN-RNN.

- :class:`TransformerM` (``transformer_m``; IRIS / STORM replaced the LSTM with a Transformer):
  causal attention within a sliding window of ``window`` steps at every layer, in training and in
  the dream alike; :meth:`step` keeps each layer's keys and values of the last ``window`` steps in
  a ring buffer, so a dream step equals the teacher-forced output of the same sequence (tested to
  1e-5 over three windows). Rotary positions: only relative offsets matter, so the ring is exact.
- :class:`MambaM` (``mamba_m``): Mamba's selective scan; training runs it over the window (loop or
  parallel scan), the dream step carries ``h`` and the convolution's last inputs, O(1) per step.

State of ``step``: a dict with ``"h"`` (B, width) and the model's own buffers. Checkpoints carry
their family; :func:`load_m` reads any M's checkpoint, the MDN-RNN's included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worldlab.blocks import (
    Block,
    ResidualBlock,
    RMSNorm,
    band_mask,
    complete_mamba_config,
    rope_angles,
)
from worldlab.io import ConfigCheckpoint, torch_load
from worldlab.mdrnn import MDRNN, MixtureOutput, next_step_loss, split_head

FAMILIES = ("mdrnn", "transformer_m", "mamba_m")


@dataclass
class SequenceMConfig:
    """Architecture and loss weights of a Transformer or Mamba M (fields that do not apply are ignored)."""

    z_size: int = 32
    action_dim: int = 3
    discrete_actions: bool = False
    width: int = 256
    """the residual stream's width, which is also the size of ``h`` the controller sees."""
    layers: int = 2
    gaussians: int = 5
    reward_weight: float = 1.0
    done_weight: float = 1.0
    logsigma_min: float = -7.0
    logsigma_max: float = 3.0
    heads: int = 4
    """Transformer: attention heads."""
    window: int = 16
    """Transformer: steps each position attends to (itself included), in training and in the dream."""
    dropout: float = 0.0
    state: int = 16
    """Mamba: the state size N of each channel."""
    expand: int = 2
    conv: int = 4
    dt_rank: int = 0
    dt_min: float = 0.001
    dt_max: float = 0.1
    eps: float = 1e-5
    scan: str = "auto"
    """Mamba: "loop", "parallel" or "auto" (see :class:`worldlab.blocks.MambaBlock`)."""

    def __post_init__(self) -> None:
        for name in ("z_size", "action_dim", "width", "layers", "gaussians", "heads", "window", "state", "expand",
                     "conv"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"M's {name} must be >= 1, got {getattr(self, name)}")
        complete_mamba_config(self)

    @property
    def head_size(self) -> int:
        return 3 * self.gaussians * self.z_size + 2

    @property
    def inner(self) -> int:
        return self.expand * self.width

    @property
    def hidden(self) -> int:
        """The width of ``h`` (the MDN-RNN's ``hidden``), for code that sizes the controller."""
        return self.width

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequenceMConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class SequenceM(ConfigCheckpoint, nn.Module):
    """What the Transformer and Mamba Ms share: input, head, loss, the MDN-RNN's calling conventions."""

    CONFIG, WHAT, STAGE = SequenceMConfig, "M", "M"

    def __init__(self, config: SequenceMConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SequenceMConfig()
        self.meta: dict[str, Any] = {}
        self.inp = nn.Linear(c.z_size + c.action_dim, c.width)
        self.head = nn.Linear(c.width, c.head_size)
        with torch.no_grad():  # prior: episode ends are rare (sigmoid(-3) ~ 5%), as the MDN-RNN's
            self.head.bias[-1] = -3.0

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, which the step's state and arithmetic follow (bf16 after
        ``m.to(torch.bfloat16)``, as a ``dream.precision=bf16`` dream runs it); predictions are fp32."""
        return self.head.weight.dtype

    def action_input(self, a: torch.Tensor) -> torch.Tensor:
        """:meth:`MDRNN.action_input` in the weights' dtype (bf16 in a ``dream.precision=bf16`` dream)."""
        return MDRNN.action_input(self, a).to(self.dtype)

    def embed(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The input layer on ``[z, a]``, both in the weights' dtype: (..., Z), actions -> (..., width)."""
        return self.inp(torch.cat([z.to(self.dtype), self.action_input(a)], dim=-1))

    def _split(self, out: torch.Tensor) -> MixtureOutput:
        c = self.config
        return split_head(out, c.z_size, c.gaussians, c.logsigma_min, c.logsigma_max)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, width) input features -> (B, T, width) ``h`` at every step."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor, a: torch.Tensor, state: Any = None) -> tuple[MixtureOutput, dict[str, Any]]:
        """Teacher-forced: z (B, T, Z), a (B, T, A) or (B, T) -> predictions for steps 1..T and
        ``{"h": (B, width)}`` of the last step. Starts from an empty past (``state`` must be None)."""
        if state is not None:
            raise ValueError(f"{type(self).__name__} runs a window from an empty past; step() carries a state")
        h = self.hidden_states(self.embed(z, a))
        return self._split(self.head(h)), {"h": h[:, -1]}

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def step_hidden(self, z: torch.Tensor, a: torch.Tensor, state: dict[str, Any]
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of every row: ``h`` (B, width) and the new state (the head not applied)."""
        raise NotImplementedError

    def step(self, z: torch.Tensor, a: torch.Tensor, state: dict[str, Any] | None = None
             ) -> tuple[MixtureOutput, dict[str, Any]]:
        """z (B, Z), a (B, A) or (B,) -> the prediction for the next step and the new state
        (``state["h"]``: what the controller sees)."""
        state = state if state is not None else self.initial_state(z.shape[0], z.device)
        h, state = self.step_hidden(z, a, state)
        return self._split(self.head(h).float()), state

    STATE_ROW_DIM: dict[str, int] = {}
    """the batch (row) dimension of each state tensor, for resetting rows in place."""

    def reset_state_rows(self, state: dict[str, Any], rows: torch.Tensor) -> None:
        """Empty the past of rows ``rows`` of ``state`` in place."""
        for key, dim in self.STATE_ROW_DIM.items():
            state[key].index_fill_(dim, rows, 0)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return next_step_loss(self, batch)


class TransformerM(SequenceM):
    """Pre-norm Transformer M with rotary positions and a sliding attention window (module docstring)."""

    FAMILY = "transformer_m"

    def __init__(self, config: SequenceMConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c.width % c.heads or (c.width // c.heads) % 2:
            raise ValueError(f"width {c.width} must split into {c.heads} heads of an even size")
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotary angles (computed in fp32, handed over in the weights' dtype)."""
        cos, sin = rope_angles(positions, self.config.width // self.config.heads, 10000.0)
        return cos.to(self.dtype), sin.to(self.dtype)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        cos, sin = self._rope(torch.arange(t, device=x.device))
        mask = None if self.config.window >= t else band_mask(t, self.config.window, x.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.ln_f(x)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> dict[str, Any]:
        c, device = self.config, device or self.device
        shape, f = (c.layers, batch, c.heads, c.window, c.width // c.heads), {"device": device, "dtype": self.dtype}
        return {"h": torch.zeros(batch, c.width, **f), "k": torch.zeros(shape, **f), "v": torch.zeros(shape, **f),
                "t": torch.zeros(batch, dtype=torch.long, device=device)}

    STATE_ROW_DIM = {"h": 0, "k": 1, "v": 1, "t": 0}

    def step_hidden(self, z: torch.Tensor, a: torch.Tensor, state: dict[str, Any]
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of every row; rows may be at different steps of their episodes (``state["t"]``).
        The key/value cache of ``state`` is updated in place (and returned in the new state).

        The one query per row attends by two batched matrix products with the softmax in fp32, not
        by ``scaled_dot_product_attention``, and each row's new key and value go into its ring slot
        by ``index_put_``, not ``scatter_``: both faster on a CPU at 1,024 dreams, by far in bf16,
        where the fused attention kernel and ``scatter_`` take slow paths (``benchmarks/sequence.py``
        times the whole step, fp32 and bf16)."""
        c = self.config
        t = state["t"]  # (B,) steps taken so far per row
        rows = torch.arange(t.shape[0], device=z.device)[:, None]  # (B, 1)
        heads = torch.arange(c.heads, device=z.device)[None, :]  # (1, H)
        slot = (t % c.window)[:, None]  # (B, 1): each row's ring slot, broadcast over the heads
        cos, sin = self._rope(t)  # (B, hd)
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # (B, 1, 1, hd)
        empty = torch.arange(c.window, device=z.device)[None, :] > t[:, None]  # (B, W): slots not yet filled
        empty = empty[:, None, None, :]  # (B, 1, 1, W)
        scale = (c.width // c.heads) ** -0.5
        x = self.embed(z, a)[:, None]  # (B, 1, C)
        k_all, v_all = state["k"], state["v"]  # written in place: a dream step must not copy the cache
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.qkv_heads(x, cos, sin)  # (B, H, 1, hd)
            k_all[i].index_put_((rows, heads, slot), k[:, :, 0])
            v_all[i].index_put_((rows, heads, slot), v[:, :, 0])
            scores = torch.matmul(q, k_all[i].transpose(-1, -2)).float().mul_(scale)  # (B, H, 1, W)
            weights = scores.masked_fill_(empty, float("-inf")).softmax(-1).to(v.dtype)
            x = blk.finish(x, torch.matmul(weights, v_all[i]))
        h = self.ln_f(x)[:, 0]
        return h, {"h": h, "k": k_all, "v": v_all, "t": t + 1}


class MambaM(SequenceM):
    """Mamba M: selective state-space blocks (module docstring)."""

    FAMILY = "mamba_m"

    def __init__(self, config: SequenceMConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.layers = nn.ModuleList(ResidualBlock(c) for _ in range(c.layers))
        self.norm_f = RMSNorm(c.width, c.eps)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> dict[str, Any]:
        c, f = self.config, {"device": device or self.device, "dtype": self.dtype}
        return {"h": torch.zeros(batch, c.width, **f), "ssm": torch.zeros(c.layers, batch, c.inner, c.state, **f),
                "conv": torch.zeros(c.layers, batch, c.inner, c.conv - 1, **f)}

    STATE_ROW_DIM = {"h": 0, "ssm": 1, "conv": 1}

    def step_hidden(self, z: torch.Tensor, a: torch.Tensor, state: dict[str, Any]
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of every row; the scan and convolution states of ``state`` are updated in place
        (and returned in the new state), as the Transformer M's cache: at 1,024 dreams a new state
        tensor per step (64 MB a layer at width 512) costs more in fresh pages than the step's
        arithmetic, and the compiled dream step writes the new state straight over the old."""
        x = self.embed(z, a)
        ssm, conv = state["ssm"], state["conv"]
        for i, layer in enumerate(self.layers):
            x, (s, cv) = layer.step(x, (ssm[i], conv[i]))
            ssm[i].copy_(s)
            conv[i].copy_(cv)
        h = self.norm_f(x)
        return h, {"h": h, "ssm": ssm, "conv": conv}


# -- one state protocol for every M ------------------------------------------------------------------
# The MDN-RNN's step state is the LSTM's ``(h, c)``, each (B, H); a sequence M's is a dict whose
# tensors keep their rows on :attr:`SequenceM.STATE_ROW_DIM`. The code that plays an M (the real
# game's controller, the batched real-env fitness, the probes, the mid-episode bank) goes through
# these functions and never looks inside.


def state_keys(m: nn.Module) -> tuple[str, ...]:
    """The names of ``m``'s state tensors: ("h", "c") for the MDN-RNN, the dict's keys for the others."""
    return ("h", "c") if isinstance(m, MDRNN) else tuple(m.STATE_ROW_DIM)


def state_h(state: Any) -> torch.Tensor:
    """What the controller reads beside z: the LSTM's ``h`` or a sequence M's ``state["h"]`` (B, H)."""
    return state["h"] if isinstance(state, dict) else state[0]


def state_entries(m: nn.Module, state: Any) -> dict[str, torch.Tensor]:
    """``state`` as a dict of tensors with the rows first (B, ...), e.g. to bank them."""
    if isinstance(m, MDRNN):
        return {"h": state[0], "c": state[1]}
    return {k: state[k].movedim(d, 0) for k, d in m.STATE_ROW_DIM.items()}


def state_from_entries(m: nn.Module, entries: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`state_entries` (contiguous copies, so a step may write them in place)."""
    if isinstance(m, MDRNN):
        return entries["h"].contiguous(), entries["c"].contiguous()
    return {k: entries[k].movedim(0, d).contiguous() for k, d in m.STATE_ROW_DIM.items()}


def take_rows(m: nn.Module, state: Any, idx: torch.Tensor) -> Any:
    """The state of rows ``idx`` (a copy)."""
    return state_from_entries(m, {k: v[idx] for k, v in state_entries(m, state).items()})


def put_rows(m: nn.Module, state: Any, idx: torch.Tensor, rows: Any) -> None:
    """Write the state ``rows`` of rows ``idx`` into ``state`` in place."""
    new = state_entries(m, rows)
    for k, v in state_entries(m, state).items():
        v[idx] = new[k].to(v.dtype)  # e.g. a banked fp32 state into a bf16 dream's


@torch.no_grad()
def read_prefix(m: nn.Module, z: torch.Tensor, a: torch.Tensor) -> Any:
    """M's step state after reading ``z`` (B, T, Z) and ``a`` (B, T, A) or (B, T) teacher-forced,
    from an empty past: what :meth:`step` carries on from (the LSTM reads the window at once; a
    sequence M steps through it, so its caches hold what the dream's would)."""
    if isinstance(m, MDRNN):
        return m(z, a)[1]
    state = m.initial_state(z.shape[0], z.device)
    for t in range(z.shape[1]):
        _, state = m.step_hidden(z[:, t], a[:, t], state)
    return state


M_CLASSES: dict[str, type] = {"mdrnn": MDRNN, "transformer_m": TransformerM, "mamba_m": MambaM}


def describe_m(m: nn.Module) -> str:
    """A few words on ``m``'s architecture, for progress lines and tables."""
    return describe_m_config(m.FAMILY, m.config)


def describe_m_config(family: str, c: Any) -> str:
    """:func:`describe_m` from a family and its config."""
    if family == "mdrnn":
        return f"MDN-RNN LSTM {c.hidden}"
    if family == "transformer_m":
        return f"Transformer M {c.layers} x {c.width}, {c.heads} heads, window {c.window}"
    return f"Mamba M {c.layers} x {c.width}, state {c.state}"


def make_m(family: str, **config: Any) -> nn.Module:
    """A fresh M of ``family`` (mdrnn, transformer_m, mamba_m) with ``config`` fields."""
    if family not in M_CLASSES:
        raise ValueError(f"unknown M {family!r}; choose one of: {', '.join(FAMILIES)}")
    cls = M_CLASSES[family]
    return cls(cls.CONFIG(**config))


def load_m(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Any M's checkpoint, whichever family it holds (its ``family`` tag says)."""
    state = torch_load(path, map_location="cpu")
    family = state.get("family") if isinstance(state, dict) else None
    if family not in M_CLASSES:
        raise ValueError(f"{path} is not an M checkpoint (family {family!r}, not one of {', '.join(FAMILIES)}); "
                         f"retrain M or point to RUN/checkpoints/mdrnn.pt")
    return M_CLASSES[family].from_checkpoint(state, path).to(device).eval()
