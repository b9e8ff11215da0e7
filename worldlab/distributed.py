"""The lab's one training loop (:func:`worldlab.training.train`) on several workers with Ray Train.

``train_distributed`` runs ``train`` in ``workers`` processes under a
``ray.train.torch.TorchTrainer``: DDP over gloo on CPU (nccl when ``device`` is cuda), every
worker streaming its own disjoint share of the data (``make_data(rank, world_size)``), gradients
averaged by DDP, and only rank 0 writing the run's checkpoint, logs and sample grids::

    driver                        worker rank r of N (a Ray Train worker process)
    ------                        -----------------------------------------------
    train_distributed(...)  ->    torch threads: cores of the node / workers on it
      TorchTrainer.fit()          model -> DDP (the loss is DDP's forward, so backward all-reduces)
      progress bar <- queue <-    train(model, make_data(r, N), cfg, ...)  (resumes from the checkpoint)
      final weights <- checkpoint_path (written by rank 0 only, atomically, same format as train())

The checkpoint is the single-process one: the plain model's ``state_dict`` (no DDP ``module.``
prefix), the optimizers, the step, the EMA, the RNG state and ``extra_state`` -- so
``ConvVAE.load`` / ``MDRNN.load`` on what the stage saves, resume (with any number of workers)
and the rest of the pipeline work unchanged. A killed run resumes from the last checkpoint: every
worker loads it (the other ranks through a link to it in a scratch folder, where their own saves
go) and continues from its step (rank r > 0 draws its noise from seed + r on a fresh start, from
rank 0's saved RNG state after a resume; the data shares differ either way). The scratch folder, ``.<checkpoint name>.ray_train`` beside the
checkpoint, also holds Ray Train's own run state (nothing goes to ``~/ray_results``); it is
removed at the end, and one left by a killed run is cleared by the next.

Logged scalars are averaged over the workers (one small all-reduce per logged value), so
``metrics.jsonl`` and TensorBoard show the loss of the whole global batch.

On a multi-node cluster the run folder must be on storage that every node mounts (NFS): the
workers read the shards and rank 0 writes the checkpoint there.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from worldlab.io import torch_load
from worldlab.logging import RunLogger
from worldlab.training import TrainConfig, train

DataFactory = Callable[[int, int], Iterable[Any]]
"""``make_data(rank, world_size)`` -> the batches of worker ``rank`` (a disjoint share)."""


def check_train_workers(n: int) -> int:
    """``n`` if it is a valid number of training workers, else a one-line ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"train_workers must be an integer >= 1, got {n!r}; pass --train-workers 1 "
                         f"(one process) or N > 1 (N Ray Train workers)")
    return n


class _LossForward(nn.Module):
    """DDP synchronises gradients of what runs through ``forward``: here, the model's ``loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Any:
        return self.model.loss(batch)


class _DDPTrainee(nn.Module):
    """What ``train`` sees on a worker: the plain model, with ``loss`` going through DDP.

    Parameters, ``state_dict`` and ``load_state_dict`` are the plain model's (no ``module.``
    prefix), so optimizer state, checkpoints and the EMA copy are exactly those of a
    single-process run. The DDP wrapper is kept out of the module tree.
    """

    def __init__(self, model: nn.Module, ddp: nn.Module) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_ddp", ddp)

    def loss(self, batch: Any) -> Any:
        return self._ddp(batch)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Module:
        return copy.deepcopy(self.model, memo)  # the EMA keeps a copy of the plain model


class _ReducingLogger:
    """The logger ``train`` gets on every rank: each scalar is averaged over the workers; rank 0
    writes the mean to the run's :class:`RunLogger` and sends it to the driver's progress bar."""

    def __init__(self, prefix: str, device: torch.device, logger: RunLogger | None, channel: Any) -> None:
        self.prefix, self.device, self.logger, self.channel = prefix, device, logger, channel
        self.history: dict[str, list[float]] = {}

    def scalar(self, name: str, value: float, step: int) -> None:
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
            t /= dist.get_world_size()
        mean = float(t.item())
        self.history.setdefault(name.removeprefix(self.prefix), []).append(mean)
        if self.logger is not None:
            self.logger.scalar(name, mean, step)
        if self.channel is not None:
            self.channel.put(("log", int(step), name.removeprefix(self.prefix), mean))

    def resume_after(self, step: int) -> int:
        return self.logger.resume_after(step) if self.logger is not None else 0

    def flush(self) -> None:
        if self.logger is not None:
            self.logger.flush()


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP-wrap the model, stream this rank's data, ``train``."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))
    device = ray.train.torch.get_device()
    model: nn.Module = config["model"]
    cfg: TrainConfig = config["cfg"]
    ckpt = Path(config["checkpoint_path"])
    channel = config["channel"] if rank == 0 else None
    ddp = ray.train.torch.prepare_model(_LossForward(model), move_to_device=device, parallel_strategy="ddp")
    trainee = _DDPTrainee(model, ddp)
    data = config["make_data"](rank, world)
    if rank == 0:
        path: Path = ckpt
        logger = config["make_logger"]() if config["make_logger"] is not None else None
        on_sample = config["on_sample"]
    else:
        # Other ranks resume from rank 0's checkpoint through a link in the scratch folder; their
        # own (end-of-run) save replaces that link there, so the run's files are written by rank 0 only.
        private = Path(config["scratch"]) / f"rank{rank}"
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir(parents=True)
        path = private / ckpt.name
        if ckpt.exists():
            try:
                os.symlink(ckpt.resolve(), path)
            except OSError:
                shutil.copyfile(ckpt, path)
        cfg = dataclasses.replace(cfg, seed=cfg.seed + rank, checkpoint_every=cfg.steps + 1)
        logger, on_sample = None, None
    sync = _ReducingLogger(f"{config['desc']}/", device, logger, channel)

    def sample(m: nn.Module, step: int) -> None:
        on_sample(m.model if isinstance(m, _DDPTrainee) else m, step)

    try:
        train(trainee, data, cfg, checkpoint_path=path, logger=sync, device=device,  # type: ignore[arg-type]
              on_sample=sample if on_sample is not None else None, extra_state=config["extra_state"],
              desc=config["desc"], progress=False)
        _check_in_sync(model, device)
        if channel is not None:
            channel.put(("done", sync.history))
    finally:
        if logger is not None:
            logger.close()


def _check_in_sync(model: nn.Module, device: torch.device) -> None:
    """Every rank must end with the same weights (DDP averaged every gradient); else fail loudly."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
        ref = mine.clone()
        dist.broadcast(ref, src=0)
    if not torch.equal(mine, ref):
        raise RuntimeError(f"training worker {dist.get_rank()} ended with weights that differ from rank 0's: "
                           f"the workers fell out of step; delete the checkpoint and train again")


def train_distributed(
    model: nn.Module,
    make_data: DataFactory,
    cfg: TrainConfig,
    *,
    workers: int,
    checkpoint_path: str | os.PathLike,
    make_logger: Callable[[], RunLogger] | None = None,
    device: str | torch.device = "cpu",
    on_sample: Callable[[nn.Module, int], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    desc: str = "train",
    progress: bool = True,
    address: str | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` like :func:`worldlab.training.train`, on ``workers`` Ray Train workers (DDP).

    ``make_data(rank, world_size)`` builds the batches of one worker (its disjoint share of the
    data; each worker's batch is its part of the global batch). ``checkpoint_path`` is required:
    rank 0 writes the resumable checkpoint there (the single-process format) and the trained
    weights come back through it. ``make_logger()`` builds the run's logger on rank 0;
    ``on_sample`` and ``extra_state`` run on rank 0 as in ``train``. Ray is started or joined with
    :func:`worldlab.ray_utils.init_ray` (``address``). Everything passed is pickled to the workers.

    On return ``model`` (on the driver) holds the trained weights (the EMA's when ``cfg.ema``),
    in eval mode, as after ``train``. Returns the logged history (worker means), ``{name: [...]}``.
    A worker's error is raised here as the original exception.
    """
    check_train_workers(workers)
    if hasattr(model, "training_step") or hasattr(model, "configure_optimizers"):
        raise ValueError(f"{type(model).__name__} trains with its own optimizer steps; distributed training "
                         f"supports models with loss(batch): use one training worker for it")
    device = torch.device(device)
    use_gpu = device.type == "cuda"
    if use_gpu and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no CUDA device; use --device cpu")
    checkpoint_path = Path(checkpoint_path).absolute()

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    from worldlab.ray_utils import init_ray

    resources = init_ray(address)
    need = {"CPU": workers, **({"GPU": workers} if use_gpu else {})}
    for k, n in need.items():
        if resources.get(k, 0) < n:
            raise ValueError(f"--train-workers {workers} needs {n} {k}s but the Ray cluster has "
                             f"{int(resources.get(k, 0))}; lower --train-workers or join a bigger cluster with --address")

    channel = Queue(actor_options={"num_cpus": 0})
    scratch = checkpoint_path.with_name(f".{checkpoint_path.name}.ray_train")
    shutil.rmtree(scratch, ignore_errors=True)  # left by a killed run
    storage = scratch / "ray"  # Ray Train's own run state: kept out of ~/ray_results
    storage.mkdir(parents=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"model": model.cpu(), "cfg": cfg, "checkpoint_path": str(checkpoint_path),
                           "make_data": make_data, "make_logger": make_logger, "on_sample": on_sample,
                           "extra_state": extra_state, "desc": desc, "channel": channel, "scratch": str(scratch)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=f"worldlab-{desc}", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=0)),
    )
    history: dict[str, list[float]] = {}
    bar = tqdm(total=cfg.steps, desc=f"{desc} x{workers}", disable=not progress, dynamic_ncols=True)
    stop = threading.Event()

    def handle(item: tuple) -> None:
        if item[0] == "done":
            history.update(item[1])
            return
        _, step, name, value = item
        if step > bar.n:
            bar.update(step - bar.n)
        if name == "loss":
            bar.set_postfix({name: f"{value:.4g}"})

    def follow() -> None:
        while not stop.is_set():
            try:
                handle(channel.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue went away with Ray: nothing more to show
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise _root_cause(e) from None
    finally:
        stop.set()
        follower.join()
        while True:
            try:
                handle(channel.get_nowait())
            except Exception:  # noqa: BLE001 - Empty, or the queue is gone
                break
        bar.close()
        channel.shutdown(force=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"rank 0 finished but {checkpoint_path} is not visible here; on a multi-node "
                                f"cluster put the run folder on storage every node mounts")
    state = torch_load(checkpoint_path, map_location=device)
    model.to(device)
    model.load_state_dict(state["ema"] if "ema" in state else state["model"])
    model.eval()
    return history


def _root_cause(err: Exception) -> Exception:
    """The worker exception behind a Ray Train failure (not the peers' lost-connection errors)."""
    failures: dict[int, Exception] = dict(getattr(err, "worker_failures", {}) or {})
    if not failures:
        inner = getattr(err, "controller_failure", None)
        return inner if isinstance(inner, Exception) else err

    def collateral(e: Exception) -> bool:
        text = f"{type(e).__name__} {e}".lower()
        return any(s in text for s in ("gloo", "nccl", "connection", "distbackenderror", "broken pipe"))

    ranked = sorted(failures.items(), key=lambda kv: (collateral(kv[1]), kv[0]))
    e = ranked[0][1]
    cause = getattr(e, "cause", None)  # a RayTaskError carries the user's exception as .cause
    return cause if isinstance(cause, Exception) else e
