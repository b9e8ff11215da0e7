"""The one training-loop skeleton of the lab, shared by V, M and every generator family.

A model trains here if it has ``loss(batch) -> Tensor | dict[str, Tensor]`` (a dict holds the
total under ``"loss"`` plus named parts that are logged). Models with several optimizers
(GANs) instead define ``configure_optimizers(lr) -> dict[str, Optimizer]`` and
``training_step(batch, optimizers, step) -> dict[str, float]`` and do their own backward passes.

The loop gives every model: a tqdm progress bar, TensorBoard + metrics.jsonl scalars, an
optional EMA copy of the weights, bf16 autocast on CPU when asked, gradient clipping, periodic
callbacks (sample grids), and atomic checkpoints that resume exactly where a killed run stopped
(model, EMA, optimizers, step, RNG states).
"""

from __future__ import annotations

import copy
import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from worldlab.io import atomic_torch_save, remove_stale_temps_of, torch_load
from worldlab.logging import RunLogger


@dataclass
class TrainConfig:
    """Settings of one training run (any model)."""

    steps: int = 1000
    """optimizer steps in total (a resumed run continues up to this number)."""
    lr: float = 1e-3
    """learning rate of the default Adam optimizer."""
    weight_decay: float = 0.0
    """AdamW weight decay (0 = plain Adam behaviour)."""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)."""
    ema: float = 0.0
    """decay of an exponential moving average of the weights (0 = off; 0.999 in the book's DDIM)."""
    amp: str = "none"
    """"bf16" for bfloat16 autocast, "none", or "auto": bf16 where the hardware runs it natively
    (CUDA with bf16, CPUs with AVX512-BF16 / AMX: ~1.7x faster conv training), else fp32. On a
    CPU without native bf16 (e.g. AVX2 only) autocast is ~10x *slower*, so "auto" is the safe choice."""
    log_every: int = 10
    """steps between logged scalars."""
    sample_every: int = 0
    """steps between calls of the ``on_sample`` callback (0 = only at the end)."""
    checkpoint_every: int = 200
    """steps between resumable checkpoints (also written at the end)."""
    seed: int = 0
    """seed of torch/numpy/python RNGs at the start of the run."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.amp not in ("none", "bf16", "auto"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'auto', got {self.amp!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not by slow emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
        return any(x in flags.split() for x in ("avx512_bf16", "amx_bf16"))
    except OSError:
        return "AVX512" in torch.backends.cpu.get_cpu_capability()


def resolve_amp(amp: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where native, else ``"none"``; other values pass through."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def seed_everything(seed: int) -> None:
    """Seed python's and torch's global RNGs (lab code draws numpy randomness from explicit Generators)."""
    random.seed(seed)
    torch.manual_seed(seed)


def seeded(make: Callable[[], Any], seed: int) -> Any:
    """``make()`` with torch's global generator seeded by ``seed``, and left after as it was before:
    a fresh module's initial weights follow ``seed``, not whatever drew from torch earlier."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Repeat an iterable (a DataLoader over an IterableDataset) forever, calling set_epoch."""
    for epoch in itertools.count():
        ds = getattr(batches, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        n = 0
        for b in batches:
            n += 1
            yield b
        if n == 0:
            raise ValueError("the training data is empty: collect more episodes or lower the batch size")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_optimizers(model: nn.Module, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(cfg.lr)
    return {"model": torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}


def train(
    model: nn.Module,
    data: Iterable[Any],
    cfg: TrainConfig,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    logger: RunLogger | None = None,
    device: str | torch.device = "cpu",
    on_sample: Callable[[nn.Module, int], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` for ``cfg.steps`` optimizer steps over ``data`` (cycled).

    Resumes from ``checkpoint_path`` when it exists. ``on_sample(model_or_ema, step)`` is called
    every ``cfg.sample_every`` steps and at the end (use it to save sample grids). ``extra_state``
    adds entries (e.g. the model's config) to every checkpoint. Returns the logged history,
    ``{name: [values...]}``, of this call.
    """
    device = torch.device(device)
    model.to(device)
    opts = default_optimizers(model, cfg)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    step = 0
    if checkpoint_path is not None:
        remove_stale_temps_of(checkpoint_path)  # a killed run's half-written save (DDP: rank 0's own path)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = torch_load(checkpoint_path, map_location=device)
        upgrade = getattr(type(model), "upgrade_checkpoint", None)  # a model whose older checkpoints it renames
        if upgrade is not None:
            state = upgrade(state)
        model.load_state_dict(state["model"])
        for k, o in opts.items():
            o.load_state_dict(state["optimizers"][k])
        if ema is not None and "ema" in state:
            ema.model.load_state_dict(state["ema"])
        step = int(state["step"])
        _set_rng(state.get("rng"))
    else:
        seed_everything(cfg.seed)
    if logger is not None:  # what a killed run logged after the checkpoint (a restarted model: all) is logged again
        logger.resume_after(step)

    def save(at: int) -> None:
        if checkpoint_path is None:
            return
        state = {
            "model": model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "step": at,
            "train_config": asdict(cfg),
            "rng": _get_rng(),
        }
        if ema is not None:
            state["ema"] = ema.model.state_dict()
        if extra_state is not None:
            state.update(extra_state())
        if logger is not None:  # the metrics up to this step reach the disk before the checkpoint that
            logger.flush()      # resumes after them (a kill would otherwise lose the lines in between)
        atomic_torch_save(state, checkpoint_path)

    history: dict[str, list[float]] = {}
    if step >= cfg.steps:  # finished before: hand back what a finished run hands back
        model.eval()
        if ema is not None:
            model.load_state_dict(ema.model.state_dict())
        return history
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if resolve_amp(cfg.amp, device) == "bf16" else nullcontext())
    custom = hasattr(model, "training_step")
    # a model's lr_factor(step, steps) scales the learning rate per step (a function of the step, so a
    # resumed run continues the same schedule)
    schedule = getattr(model, "lr_factor", None)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    it = cycle(data)
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    running: dict[str, float] = {}
    while step < cfg.steps:
        batch = to_device(next(it), device)
        if custom:
            with autocast:
                logs = model.training_step(batch, opts, step)
        else:
            opt = opts["model"]
            with autocast:
                out = model.loss(batch)
            losses = out if isinstance(out, dict) else {"loss": out}
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; "
                                         f"lower the learning rate (now {cfg.lr})")
            if schedule is not None:  # e.g. the sequence families' warm-up and cosine decay
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * schedule(step, cfg.steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            logs = {k: float(v.detach()) for k, v in losses.items()}
        if ema is not None:
            ema.update(model)
        step += 1
        for k, v in logs.items():
            running[k] = running.get(k, 0.0) + v
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            means = {k: v / n for k, v in running.items()}
            running = {}
            for k, v in means.items():
                history.setdefault(k, []).append(v)
                if logger is not None:
                    logger.scalar(f"{desc}/{k}", v, step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]})
        bar.update(1)
        if on_sample is not None and cfg.sample_every and step % cfg.sample_every == 0:
            _call_sample(on_sample, ema.model if ema else model, step)
            model.train()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save(step)
    bar.close()
    save(step)
    if on_sample is not None:
        _call_sample(on_sample, ema.model if ema else model, step)
    if logger is not None:
        logger.flush()
    model.eval()
    if ema is not None:  # hand back the averaged weights as the result
        model.load_state_dict(ema.model.state_dict())
    return history


def _call_sample(fn: Callable[[nn.Module, int], None], model: nn.Module, step: int) -> None:
    was = model.training
    model.eval()
    with torch.no_grad():
        fn(model, step)
    model.train(was)


def _get_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python_seed": torch.tensor(random.getrandbits(62))}


def _set_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.seed(int(state["python_seed"]))

