"""Controllers C: a linear map (or a small MLP) from [z, h] to an action, as flat parameter
vectors for CMA-ES, evaluated for thousands of candidates at once.

The paper's CarRacing controller: ``a = squash(W [z, h] + b)`` with W of shape (3, 32+256),
867 parameters; steering ``tanh``, gas ``(tanh + 1) / 2``, brake ``clip(tanh, 0, 1)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldlab.io import atomic_savez

SQUASHES = ("tanh", "unit", "relu_tanh", "scaled")


@dataclass
class ControllerConfig:
    """Shape of a controller; saved beside its parameters."""

    input_size: int = 288
    """size of the controller's input [z, h] (32 + 256 for CarRacing)."""
    action_low: list[float] = field(default_factory=lambda: [-1.0, 0.0, 0.0])
    """lower bounds of the Box action space."""
    action_high: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """upper bounds of the Box action space."""
    squash: list[str] = field(default_factory=lambda: ["tanh", "unit", "relu_tanh"])
    """per action dimension: "tanh" (range [-1, 1]), "unit" ((tanh+1)/2, range [0, 1]),
    "relu_tanh" (clip(tanh, 0, 1): the paper's brake, off by default), "scaled" (tanh mapped
    onto [low, high])."""
    hidden: int = 0
    """0: the paper's linear controller; > 0: one tanh hidden layer of this size (the paper's
    "z only + 40-unit hidden layer" variant)."""

    def __post_init__(self) -> None:
        if not (len(self.action_low) == len(self.action_high) == len(self.squash)):
            raise ValueError("action_low, action_high and squash need one entry per action dimension")
        bad = [s for s in self.squash if s not in SQUASHES]
        if bad:
            raise ValueError(f"unknown squash {bad}; choose from {SQUASHES}")

    @property
    def action_dim(self) -> int:
        return len(self.squash)

    @property
    def num_params(self) -> int:
        A, F, H = self.action_dim, self.input_size, self.hidden
        return (F * A + A) if H == 0 else (F * H + H + H * A + A)

    @classmethod
    def for_task(cls, action_space: dict[str, Any], input_size: int, task: str = "", hidden: int = 0
                 ) -> ControllerConfig:
        """The paper's squashing for CarRacing; ``tanh`` onto [low, high] for any other Box space."""
        if action_space["type"] != "box":
            raise ValueError(f"controllers act in Box action spaces; got {action_space}")
        low, high = [float(x) for x in action_space["low"]], [float(x) for x in action_space["high"]]
        if task == "car_racing":
            squash = ["tanh", "unit", "relu_tanh"]
        else:
            squash = ["tanh" if (lo, hi) == (-1.0, 1.0) else "scaled" for lo, hi in zip(low, high, strict=True)]
        return cls(input_size=input_size, action_low=low, action_high=high, squash=squash, hidden=hidden)


def squash_affine(cfg: ControllerConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per action dimension (4, A): scale and offset applied to ``tanh``, then the clamp bounds.

    ``tanh``: t; ``unit``: (t + 1) / 2 = t / 2 + 1/2 (the same float: halving is exact);
    ``relu_tanh``: clip(t, 0, 1); ``scaled``: onto [low, high].
    """
    rows = []
    for i, s in enumerate(cfg.squash):
        lo, hi = cfg.action_low[i], cfg.action_high[i]
        rows.append({"tanh": (1.0, 0.0, -1.0, 1.0), "unit": (0.5, 0.5, 0.0, 1.0), "relu_tanh": (1.0, 0.0, 0.0, 1.0),
                     "scaled": ((hi - lo) / 2, lo + (hi - lo) / 2, lo, hi)}[s])
    return torch.tensor(rows, dtype=torch.float32, device=device).t().contiguous()


def squash_actions(raw: torch.Tensor, cfg: ControllerConfig, affine: torch.Tensor | None = None) -> torch.Tensor:
    """Map raw outputs (..., A) into the action space, per dimension (see :func:`squash_affine`,
    which ``affine`` caches): three element-wise passes whatever the mix of squashes."""
    k = squash_affine(cfg, raw.device) if affine is None else affine
    return torch.addcmul(k[1], torch.tanh(raw), k[0]).clamp_(k[2], k[3])


class BatchedController:
    """N controllers evaluated together: one per row of a (N, num_params) parameter matrix.

    ``act(x)`` with x of shape (N, F) returns actions (N, A): one batched matmul, so a whole
    CMA-ES population times its rollouts runs as one computation.
    """

    def __init__(self, cfg: ControllerConfig, params: torch.Tensor | np.ndarray) -> None:
        self.cfg = cfg
        p = torch.as_tensor(params, dtype=torch.float32)
        if p.ndim == 1:
            p = p[None]
        if p.shape[1] != cfg.num_params:
            raise ValueError(f"controller needs {cfg.num_params} parameters, got {p.shape[1]} "
                             f"(input {cfg.input_size}, {cfg.action_dim} actions, hidden {cfg.hidden})")
        N, F, A, H = p.shape[0], cfg.input_size, cfg.action_dim, cfg.hidden
        if H == 0:
            # stored transposed, (N, A, F): each controller's block of rows is multiplied as
            # W^T (A, F) @ x^T (F, g): MKL's batched GEMM runs this orientation faster than x (g, F) @ W (F, A) for few actions
            self.Wt = p[:, : F * A].reshape(N, F, A).transpose(1, 2).contiguous()  # (N, A, F)
            self.b = p[:, F * A:].reshape(N, A, 1).contiguous()  # (N, A, 1)
        else:
            o = 0
            self.W1 = p[:, o:o + F * H].reshape(N, F, H).contiguous()
            o += F * H
            self.b1 = p[:, o:o + H].contiguous()
            o += H
            self.W2 = p[:, o:o + H * A].reshape(N, H, A).contiguous()
            o += H * A
            self.b2 = p[:, o:].contiguous()
        self.affine = squash_affine(cfg)  # (4, A) see squash_actions
        self.group = 1
        """rows of input per controller (see :meth:`repeat_interleave`)."""

    @property
    def n(self) -> int:
        return (self.Wt if self.cfg.hidden == 0 else self.W1).shape[0]

    def to(self, device: torch.device | str) -> BatchedController:
        for k, v in list(vars(self).items()):
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self

    def repeat_interleave(self, r: int) -> BatchedController:
        """Each controller applied to ``r`` consecutive rows (candidate-major), for r rollouts per
        candidate. The weights are not copied: ``act`` multiplies each candidate's (r, F) block of
        inputs by its own matrix, so a step reads every candidate's weights once rather than r times."""
        if r < 1:
            raise ValueError(f"rollouts per controller must be >= 1, got {r}")
        out = object.__new__(BatchedController)
        out.__dict__.update(self.__dict__)
        out.group = self.group * r
        return out

    def select(self, idx: torch.Tensor) -> BatchedController:
        """The controllers ``idx`` (int64 (k,)) alone, e.g. the candidates whose episodes still run."""
        out = object.__new__(BatchedController)
        out.__dict__.update({k: (v[idx] if isinstance(v, torch.Tensor) and k != "affine" else v)
                             for k, v in vars(self).items()})
        return out

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        n, g = self.n, self.group
        if x.shape[0] != n * g:
            raise ValueError(f"{n} controllers x {g} rows each need {n * g} inputs, got {x.shape[0]}")
        xb = x.reshape(n, g, -1)  # (N, g, F): each controller's rows
        if self.cfg.hidden == 0:
            out = torch.baddbmm(self.b, self.Wt, xb.transpose(1, 2))  # (N, A, g)
            return out.transpose(1, 2).reshape(n * g, -1)  # (N g, A)
        hid = torch.tanh(torch.baddbmm(self.b1[:, None, :], xb, self.W1))
        return torch.baddbmm(self.b2[:, None, :], hid, self.W2).reshape(n * g, -1)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return squash_actions(self.raw(x), self.cfg, self.affine)


def init_params(cfg: ControllerConfig, rng: np.random.Generator, std: float | None = None) -> np.ndarray:
    """Random parameters, the paper's way: N(0, std^2) with std drawn uniformly in [0, 0.01)
    when not given (a "randomly initialised controller" for data collection)."""
    std = float(rng.uniform(0.0, 0.01)) if std is None else std
    return rng.standard_normal(cfg.num_params) * std


def save_controller(path: str | Path, cfg: ControllerConfig, params: np.ndarray, **extra: Any) -> Path:
    """Save parameters and config (as JSON text inside the npz: no pickle)."""
    import json

    return atomic_savez(path, params=np.asarray(params, dtype=np.float64),
                        config=np.array(json.dumps(asdict(cfg))),
                        extra=np.array(json.dumps(extra, default=float)))


def average_controllers(paths: list[str | Path], weights: list[float] | None = None
                        ) -> tuple[ControllerConfig, np.ndarray, list[dict[str, Any]]]:
    """The config the controllers share, their (weighted) parameter average and each file's extra
    fields. Controllers of another config (shape, actions) are refused: each is a linear map (or
    small MLP) of one world model's [z, h], so only those of one run average into one."""
    if not paths:
        raise ValueError("give at least one controller file")
    if weights is not None and (len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"--weights needs {len(paths)} numbers >= 0 with a positive sum, got {weights}")
    loaded = [load_controller(p) for p in paths]
    cfg = loaded[0][0]
    for p, (c, _, _) in zip(paths, loaded, strict=True):
        if c != cfg:
            raise ValueError(f"{p} has another controller config than {paths[0]} ({c} vs {cfg}); "
                             "average controllers of one run only")
    params = np.stack([x for _, x, _ in loaded])
    w = np.full(len(paths), 1.0 / len(paths)) if weights is None else np.asarray(weights, float) / sum(weights)
    return cfg, np.tensordot(w, params, axes=1), [extra for _, _, extra in loaded]


def load_controller(path: str | Path) -> tuple[ControllerConfig, np.ndarray, dict[str, Any]]:
    import json
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no controller at {path}; evolve one first (scripts/dream_train.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            cfg = ControllerConfig(**json.loads(str(z["config"])))
            params = z["params"]
            extra = json.loads(str(z["extra"])) if "extra" in z.files else {}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:  # never retried with pickle
        raise ValueError(f"controller {path} is corrupt or not a worldlab controller ({type(e).__name__}); delete "
                         f"it and resume the run to evolve it again") from None
    if params.shape != (cfg.num_params,):
        raise ValueError(f"controller {path} holds {params.shape} parameters, its config needs {cfg.num_params}")
    return cfg, params, extra
