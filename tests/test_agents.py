"""Controllers, CMA-ES (resume after a kill), the dream and real fitness back-ends, Ray fault tolerance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cmaes import CMAConfig, EvolutionState, evolve
from agents.controller import (
    BatchedController,
    ControllerConfig,
    init_params,
    load_controller,
    save_controller,
    squash_actions,
)
from agents.fitness import DreamFitness, RealPool
from worldlab.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
CAR = {"type": "box", "shape": [3], "low": [-1.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}


def small_wm(seed: int = 0, max_steps: int = 50) -> WorldModel:
    return WorldModel.untrained(task="car_racing", action_space=CAR, z_size=32, hidden=64, max_episode_steps=max_steps,
                                seed=seed)


def test_paper_controller_size_and_squash() -> None:
    cfg = ControllerConfig.for_task(CAR, 32 + 256, "car_racing")
    assert cfg.num_params == 867
    ctrl = BatchedController(cfg, np.random.default_rng(0).standard_normal((5, 867)) * 3)
    a = ctrl.act(torch.randn(5, 288) * 3)
    assert a.shape == (5, 3)
    assert (a[:, 0].abs() <= 1).all() and (a[:, 1:] >= 0).all() and (a[:, 1:] <= 1).all()
    x = torch.randn(1000, 3) * 3  # the paper's squashes, to the bit: tanh, (tanh + 1) / 2, clip(tanh, 0, 1)
    t = torch.tanh(x)
    assert torch.equal(squash_actions(x, cfg), torch.stack([t[:, 0], (t[:, 1] + 1.0) * 0.5, t[:, 2].clamp(0.0, 1.0)], -1))
    box = ControllerConfig(input_size=4, action_low=[-2.0], action_high=[3.0], squash=["scaled"])
    y = squash_actions(x[:, :1], box)
    torch.testing.assert_close(y, -2.0 + (t[:, :1] + 1.0) * 2.5)
    assert y.min() >= -2.0 and y.max() <= 3.0
    doom = ControllerConfig.for_task({"type": "box", "shape": [1], "low": [-1.0], "high": [1.0]}, 64 + 512, "doom")
    assert doom.num_params == 577 and doom.squash == ["tanh"]
    with pytest.raises(ValueError, match="controller needs 867 parameters, got 866"):
        BatchedController(cfg, np.zeros(866))


@pytest.mark.parametrize("hidden", [0, 16])
def test_batched_equals_one_by_one(hidden: int) -> None:
    cfg = ControllerConfig.for_task(CAR, 40, "car_racing", hidden=hidden)
    params = np.random.default_rng(1).standard_normal((4, cfg.num_params))
    x = torch.randn(4, 40)
    together = BatchedController(cfg, params).act(x)
    alone = torch.cat([BatchedController(cfg, params[i]).act(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)
    rep = BatchedController(cfg, params).repeat_interleave(3)  # each controller on 3 rows, weights not copied
    assert torch.equal(rep.act(x.repeat_interleave(3, 0)), together.repeat_interleave(3, 0))
    xr = torch.randn(12, 40)  # 3 different rows per controller
    assert torch.allclose(rep.act(xr), torch.cat([BatchedController(cfg, params[i // 3]).act(xr[i:i + 1])
                                                  for i in range(12)]), atol=1e-6)
    with pytest.raises(ValueError, match="need 12 inputs"):
        rep.act(x)


def test_controller_file_round_trip(tmp_path: Path) -> None:
    cfg = ControllerConfig.for_task(CAR, 288, "car_racing")
    p = init_params(cfg, np.random.default_rng(0), std=0.1)
    save_controller(tmp_path / "c.npz", cfg, p, generations=3)
    cfg2, p2, extra = load_controller(tmp_path / "c.npz")
    assert cfg2 == cfg and np.array_equal(p, p2) and extra == {"generations": 3}
    with pytest.raises(FileNotFoundError, match="no controller at"):
        load_controller(tmp_path / "missing.npz")


def test_cma_solves_a_quadratic_and_resumes_exactly(tmp_path: Path) -> None:
    def f(X: np.ndarray, g: int) -> np.ndarray:
        return -((X - 0.5) ** 2).sum(1)

    cfg = CMAConfig(popsize=8, rollouts=1, generations=80, sigma0=0.3)
    full = evolve(f, 6, cfg, tmp_path / "full.npz", progress=False)
    assert full.best_fitness > -1e-4 and np.allclose(full.mean_params, 0.5, atol=0.01)
    evolve(f, 6, CMAConfig(popsize=8, rollouts=1, generations=15, sigma0=0.3), tmp_path / "part.npz", progress=False)
    resumed = evolve(f, 6, cfg, tmp_path / "part.npz", progress=False)
    assert np.array_equal(resumed.fitness, full.fitness) and np.array_equal(resumed.mean_params, full.mean_params)
    with pytest.raises(ValueError, match="was evolved with sigma0=0.3, not 0.5"):
        evolve(f, 6, CMAConfig(popsize=8, rollouts=1, generations=81, sigma0=0.5), tmp_path / "part.npz",
               progress=False)


def test_dream_fitness_shapes_and_determinism() -> None:
    wm = small_wm()
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    fit = DreamFitness(wm, cfg, popsize=4, rollouts=3, temperature=1.0, seed=7)
    X = np.random.default_rng(0).standard_normal((4, cfg.num_params)) * 0.1
    r1, r2 = fit.returns(X, 0), fit.returns(X, 0)
    assert r1.shape == (4, 3) and torch.isfinite(r1).all()
    assert torch.equal(r1, r2)  # same generation seeds -> same dreams
    assert not torch.equal(r1, fit.returns(X, 1))
    assert fit(X, 0).shape == (4,)


@pytest.mark.slow
def test_dream_fitness_compiled_matches_eager() -> None:
    wm = small_wm()
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    X = np.random.default_rng(0).standard_normal((4, cfg.num_params)) * 0.1
    eager, compiled = (DreamFitness(wm, cfg, popsize=4, rollouts=3, temperature=1.0, seed=7, max_steps=10,
                                    compile=c) for c in (False, True))
    r_c = compiled.returns(X, 0)
    assert compiled.env.compiled  # it did compile (no fallback to eager)
    torch.testing.assert_close(r_c, eager.returns(X, 0), atol=1e-4, rtol=1e-4)


def test_dream_fitness_adds_a_learned_reward_term() -> None:
    wm = small_wm()
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    X = np.random.default_rng(0).standard_normal((4, cfg.num_params)) * 0.1
    plain = DreamFitness(wm, cfg, popsize=4, rollouts=3, temperature=1.0, seed=7, max_steps=20)
    seen: list[torch.Tensor] = []

    def term(z: torch.Tensor) -> torch.Tensor:  # -1 per step, and records what it was given
        seen.append(z.clone())
        return -torch.ones(z.shape[0])

    shaped = DreamFitness(wm, cfg, popsize=4, rollouts=3, temperature=1.0, seed=7, max_steps=20,
                          reward_term=term, term_scale=0.5)
    base, total = plain.returns(X, 0), shaped.returns(X, 0)
    assert seen[0].shape == (12, wm.z_size)  # the dream's latents z, not [z, h]
    assert torch.equal(shaped.last_base_returns, base)  # same dreams: the term changes no trajectory
    # every step alive costs 0.5: a dream that ran to the limit (20 steps) lost exactly 10
    steps_alive = (base - total) / 0.5
    assert torch.all((steps_alive >= 1) & (steps_alive <= 20)) and steps_alive.max() == 20


EVOLVE_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_agents import small_wm
from agents.cmaes import evolve
from agents.controller import ControllerConfig
from agents.fitness import DreamFitness
from agents.cmaes import CMAConfig
torch.set_num_threads(1)
wm = small_wm()
cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, "car_racing")
cma_cfg = CMAConfig(popsize=6, rollouts=2, generations={gens}, sigma0=0.2, seed=3)
fit = DreamFitness(wm, cfg, 6, 2, seed=3)
slow = lambda X, g: (__import__("time").sleep({sleep}), fit(X, g))[1]
evolve(slow, cfg.num_params, cma_cfg, {state!r}, progress=False)
"""


def test_evolution_killed_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    gens = 6
    ref = tmp_path / "ref.npz"
    script = EVOLVE_SCRIPT.format(tests=str(ROOT / "tests"), gens=gens, sleep=0.0, state=str(ref))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    killed = tmp_path / "killed.npz"
    proc = subprocess.Popen([sys.executable, "-c", EVOLVE_SCRIPT.format(
        tests=str(ROOT / "tests"), gens=gens, sleep=0.5, state=str(killed))], cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if killed.exists() and len(np.load(killed)["fitness"]) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(np.load(killed)["fitness"])
    assert 2 <= done_before < gens
    subprocess.run([sys.executable, "-c", script.replace(str(ref), str(killed))], check=True, cwd=ROOT)
    cfg = CMAConfig(popsize=6, rollouts=2, generations=gens, sigma0=0.2, seed=3)
    a = EvolutionState.load(ref, cfg, len(np.load(ref)["mean_params"]))
    b = EvolutionState.load(killed, cfg, len(np.load(ref)["mean_params"]))
    assert np.array_equal(a.fitness, b.fitness) and np.array_equal(a.mean_params, b.mean_params)
    assert a.hashes == b.hashes


def test_killed_ray_actor_does_not_lose_the_generation(ray_session) -> None:
    wm = small_wm()
    cfg = ControllerConfig.for_task(CAR, wm.obs_size, "car_racing")
    params = np.random.default_rng(0).standard_normal(cfg.num_params) * 0.1
    jobs = [(params, s) for s in range(6)]
    pool = RealPool("car_racing", wm, cfg, workers=2, env_kwargs={"max_episode_steps": 60})
    try:
        expected = [r["return"] for r in pool.play(jobs)]
        assert [r["return"] for r in pool.play(jobs, progress="evaluate")] == expected  # the bar's path: same order
        pids = pool.workers.call_all("pid")
        refs_started = time.time()
        import threading

        def kill_soon() -> None:
            time.sleep(0.5)
            os.kill(pids[0], signal.SIGKILL)

        threading.Thread(target=kill_soon, daemon=True).start()
        got = [r["return"] for r in pool.play(jobs)]
        assert time.time() - refs_started > 0.5  # the kill landed while the generation was running
        new_pids = pool.workers.call_all("pid")
        assert new_pids[0] != pids[0]  # the actor was restarted by Ray
        assert got == expected
    finally:
        pool.close()
