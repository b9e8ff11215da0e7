"""CMA-ES (the ``cma`` package, ask/tell) with a checkpoint after every generation.

Resuming needs no pickle: cma draws all its randomness from a numpy Generator we seed, so the
state after generation g is rebuilt exactly by replaying ask/tell with the fitness values stored
for generations 0..g (a hash of each generation's candidates is stored too, and a replay that
does not reproduce them stops with an error instead of continuing from a different state).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from worldlab.io import atomic_savez
from worldlab.logging import RunLogger

if TYPE_CHECKING:  # cma imports scipy.stats and matplotlib.pyplot: only the processes that evolve pay for them
    import cma

# fitness(params (P, D), generation) -> mean return per candidate (P,), higher is better
Fitness = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class CMAConfig:
    """Settings of the evolution of C (the ``cma`` package)."""

    popsize: int = 64
    """candidates per generation (the paper: 64)."""
    rollouts: int = 16
    """rollouts averaged per candidate (the paper: 16)."""
    sigma0: float = 0.1
    """initial step size."""
    generations: int = 100
    """generations per round (a resumed run continues up to this number)."""
    seed: int = 0
    """seed of cma's sampling and of the rollouts' starts."""
    restarts: int = 1
    """independent searches per round in the dream (seeds ``seed``, ``seed + 1``, ...), the one whose
    final mean scores best by ``pick`` kept (1: one search, as the paper)."""
    pick: str = "dream"
    """how a round's ``restarts`` searches are told apart: "dream" (each final mean's return over
    :data:`RESTART_DREAMS` fresh dreams: a dream-only result) or "real" (over ``pick_episodes`` real
    episodes each, on seeds nothing else plays: a selection by real returns, labelled as such in
    ``eval.json`` and the report; the dream means are recorded beside them)."""
    pick_episodes: int = 16
    """real episodes per search with ``pick="real"``."""

    def __post_init__(self) -> None:
        for k in ("rollouts", "generations", "restarts", "pick_episodes"):
            if getattr(self, k) < 1:
                raise ValueError(f"cma.{k} must be >= 1, got {getattr(self, k)}")
        if self.pick not in PICKS:
            raise ValueError(f"cma.pick must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.popsize < 2:
            raise ValueError(f"cma.popsize must be >= 2, got {self.popsize}")
        if self.sigma0 <= 0:
            raise ValueError(f"cma.sigma0 must be > 0, got {self.sigma0}")



PICKS = ("dream", "real")
"""the ways ``cma.pick`` tells a round's searches apart."""

RESTART_DREAMS = 100
"""fresh dreams that score each restart's final mean (``cma.restarts``)."""


def _hash(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float64).tobytes()).hexdigest()[:16]


def new_strategy(dim: int, cfg: CMAConfig, x0: np.ndarray | None = None) -> cma.CMAEvolutionStrategy:
    rng = np.random.default_rng(cfg.seed)
    opts = {
        "popsize": cfg.popsize,
        "seed": cfg.seed + 1,  # cma seeds numpy's global RNG too; our Generator is what it draws from
        "randn": lambda *shape: rng.standard_normal(shape),
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
        "verb_filenameprefix": "",
    }
    x0 = np.zeros(dim) if x0 is None else np.asarray(x0, dtype=np.float64)
    import cma

    return cma.CMAEvolutionStrategy(x0, cfg.sigma0, opts)


@dataclass
class EvolutionState:
    """What is stored after every generation (``RUN/checkpoints/cma_state.npz``)."""

    fitness: np.ndarray  # (G, P) mean returns of every candidate so far
    hashes: list[str]  # (G,) hash of each generation's candidates
    best_params: np.ndarray  # (D,) best candidate seen
    best_fitness: float
    mean_params: np.ndarray  # (D,) the distribution's mean after the last generation

    def save(self, path: Path, cfg: CMAConfig) -> None:
        import json

        atomic_savez(path, fitness=self.fitness, hashes=np.array(self.hashes), best_params=self.best_params,
                     best_fitness=np.float64(self.best_fitness), mean_params=self.mean_params,
                     config=np.array(json.dumps(asdict(cfg))))

    @classmethod
    def load(cls, path: Path, cfg: CMAConfig, dim: int) -> EvolutionState:
        import json
        import zipfile

        try:  # reading every array checks each one's CRC-32: a damaged file fails here, named
            with np.load(path, allow_pickle=False) as npz:
                z = {k: npz[k] for k in npz.files}
            saved = json.loads(str(z["config"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"CMA-ES state {path} is corrupt ({type(e).__name__}); delete it to evolve that round "
                             f"again from its start") from None
        for k in ("popsize", "sigma0", "seed"):
            if saved[k] != getattr(cfg, k):
                raise ValueError(f"{path} was evolved with {k}={saved[k]}, not {getattr(cfg, k)}; "
                                 f"use the same settings to resume, or another run folder")
        st = cls(fitness=z["fitness"], hashes=[str(h) for h in z["hashes"]], best_params=z["best_params"],
                 best_fitness=float(z["best_fitness"]), mean_params=z["mean_params"])
        if st.best_params.shape != (dim,):
            raise ValueError(f"{path} holds controllers of {st.best_params.shape[0]} parameters, not {dim}; "
                             f"it belongs to another model size")
        return st


def replay(dim: int, cfg: CMAConfig, state: EvolutionState, x0: np.ndarray | None = None
           ) -> cma.CMAEvolutionStrategy:
    """Rebuild the strategy after ``len(state.fitness)`` generations, exactly."""
    es = new_strategy(dim, cfg, x0)
    for g, (fit, h) in enumerate(zip(state.fitness, state.hashes, strict=True)):
        X = np.asarray(es.ask())
        if _hash(X) != h:
            raise RuntimeError(f"resuming CMA-ES: generation {g} did not replay to the same candidates "
                               f"(different cma version?); start a new run folder")
        es.tell(list(X), list(-fit))
    return es


def evolve(fitness: Fitness, dim: int, cfg: CMAConfig, state_path: str | Path | None = None,
           logger: RunLogger | None = None, progress: bool = True, desc: str = "evolve",
           on_generation: Callable[[int, np.ndarray, float, np.ndarray], None] | None = None,
           x0: np.ndarray | None = None, hook_before_save: bool = False) -> EvolutionState:
    """Run CMA-ES up to ``cfg.generations`` generations, resuming from ``state_path`` if present.

    ``x0`` is the initial mean (zeros by default; a previous round's controller to warm-start);
    a resumed run must pass the same ``x0``.

    Logs ``evolve/best``, ``evolve/mean``, ``evolve/worst`` (returns of the generation's
    candidates), ``evolve/sigma`` and ``evolve/seconds`` per generation. ``on_generation(g, best,
    best_fitness, mean)`` is called after each generation with its best candidate (D,), that
    candidate's fitness and the search's mean after the generation (D,: what the search would hand
    back if it stopped there; e.g. to play both in the real game and log the dream-vs-real gap): after
    the generation's state is saved (a hook that fails loses no generation), or, with
    ``hook_before_save``, before it (a hook that changes the fitness of the generations after it,
    like the dream's calibration: a kill before the save plays the generation and its hook again).
    """
    state_path = Path(state_path) if state_path is not None else None
    if state_path is not None and state_path.exists():
        state = EvolutionState.load(state_path, cfg, dim)
        es = replay(dim, cfg, state, x0)
    else:
        state = EvolutionState(np.zeros((0, cfg.popsize)), [], np.zeros(dim), -np.inf, np.zeros(dim))
        es = new_strategy(dim, cfg, x0)
    g = len(state.fitness)
    if logger is not None:  # what was logged for generations the state does not hold (a kill between a
        logger.resume_after(g - 1)  # generation's log and its save, even the first's) is not logged twice
    bar = tqdm(total=cfg.generations, initial=g, desc=desc, unit="gen", disable=not progress, dynamic_ncols=True)
    while g < cfg.generations:
        t0 = time.perf_counter()
        X = np.asarray(es.ask())  # (P, D)
        fit = np.asarray(fitness(X, g), dtype=np.float64)  # (P,)
        if fit.shape != (cfg.popsize,) or not np.all(np.isfinite(fit)):
            raise RuntimeError(f"fitness returned {fit.shape} values (finite: {np.isfinite(fit).all()}), "
                               f"expected {cfg.popsize} finite returns")
        es.tell(list(X), list(-fit))
        i = int(np.argmax(fit))
        best_params, best_fit = ((X[i].copy(), float(fit[i])) if fit[i] > state.best_fitness
                                 else (state.best_params, state.best_fitness))
        state = EvolutionState(np.concatenate([state.fitness, fit[None]]), state.hashes + [_hash(X)],
                               best_params, best_fit, np.asarray(es.mean, dtype=np.float64).copy())
        stats = {"best": float(fit.max()), "mean": float(fit.mean()), "worst": float(fit.min()),
                 "sigma": float(es.sigma), "seconds": time.perf_counter() - t0}
        if logger is not None:  # logged before the state is saved: a kill in between logs it again on resume
            logger.scalars({f"{desc}/{k}": v for k, v in stats.items()}, g)
            logger.flush()
        if on_generation is not None and hook_before_save:
            on_generation(g, X[i].copy(), float(fit[i]), state.mean_params.copy())
        if state_path is not None:
            state.save(state_path, cfg)
        if on_generation is not None and not hook_before_save:  # after the state is saved: a hook that fails loses no generation
            on_generation(g, X[i].copy(), float(fit[i]), state.mean_params.copy())
        g += 1
        bar.update(1)
        bar.set_postfix(best=f"{stats['best']:.1f}", mean=f"{stats['mean']:.1f}", sigma=f"{es.sigma:.3g}")
    bar.close()
    return state
