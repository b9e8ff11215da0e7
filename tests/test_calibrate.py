"""The dream's ends calibrated on the controller's own real episodes (``dream.done_calibrate``,
agents/calibrate.py): the bias's arithmetic, every M's done logits along a real episode, the dream
rebuilt with a new bias, the hook that runs before CMA-ES saves its state, and the refused settings.
The whole loop on a Doom run is in tests/test_pipeline.py."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from agents.calibrate import MAX_BIAS, calibrated_bias, expected_ends
from agents.cmaes import CMAConfig, EvolutionState, evolve
from agents.controller import ControllerConfig, init_params, load_controller
from agents.fitness import DreamFitness
from agents.policies import ControllerPolicy
from agents.rollout import run_episode
from agents.world_models.config import RunConfig, override
from agents.world_models.resume import check_resumable
from worldlab.rundir import RunDir
from worldlab.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_the_bias_makes_the_dream_expect_the_target_ends() -> None:
    rng = np.random.default_rng(0)
    logits = [rng.normal(-7.0, 1.0, (1, 500)), rng.normal(-6.0, 1.5, (1, 300))]
    own = sum(float(sigmoid(lg).sum()) for lg in logits)
    assert np.isclose(expected_ends(logits, 0.0), own)
    r = calibrated_bias(logits, ended=2, target=2.0)
    assert r["bias"] > 0 and np.isclose(r["expected"], 4.0, atol=1e-9) and not r["capped"]
    assert np.isclose(sum(float(sigmoid(lg + r["bias"]).sum()) for lg in logits), 4.0, atol=1e-9)
    assert np.isclose(r["expected_at_floor"], own) and r["ended"] == 2
    # the floor is kept when the dream already expects enough there, or when the game ended nothing
    assert calibrated_bias(logits, ended=2, target=2.0, floor=3.0)["bias"] == 3.0
    assert calibrated_bias(logits, ended=0, target=2.0)["bias"] == 0.0
    assert calibrated_bias(logits, ended=1, target=0.5)["bias"] == 0.0   # own 0.9+ ends >= 0.5
    # ends M never sees coming: the bias stops at MAX_BIAS and says so
    far = calibrated_bias([np.full((1, 10), -40.0)], ended=3, target=1.0)
    assert far["bias"] == MAX_BIAS and far["capped"] and far["expected"] < 3
    with pytest.raises(ValueError, match="positive number of ends"):
        calibrated_bias(logits, 1, 0.0)


def test_an_ensembles_ends_are_the_dreams() -> None:
    """done_mode=max: the members' largest probability each step; otherwise their mean."""
    lg = np.array([[-3.0, -1.0, -5.0], [-2.0, -4.0, -6.0]])
    p = sigmoid(lg)
    assert np.isclose(expected_ends([lg], 0.0, "max"), p.max(axis=0).sum())
    assert np.isclose(expected_ends([lg], 0.0, "member"), p.mean(axis=0).sum())
    r = calibrated_bias([lg], ended=1, target=1.0, done_mode="max")
    assert np.isclose(sigmoid(lg + r["bias"]).max(axis=0).sum(), 1.0)


def ensemble_of(wm: WorldModel, k: int) -> WorldModel:
    """``wm`` with k-1 more Ms: copies of its M with other head weights."""
    others = []
    for s in range(1, k):
        m = copy.deepcopy(wm.mdrnn)
        with torch.no_grad():
            m.head.weight.add_(0.05 * torch.randn(m.head.weight.shape, generator=torch.Generator().manual_seed(s)))
        others.append(m)
    return WorldModel(wm.vae, wm.mdrnn, task=wm.task, action_space=wm.action_space,
                      max_episode_steps=wm.max_episode_steps, start_mu=wm.start_mu, start_logvar=wm.start_logvar,
                      members=others)


def test_the_policy_traces_every_ms_done_logits_along_the_real_episode() -> None:
    wm = ensemble_of(WorldModel.load(OLD_RUN), 3)
    cfg, params, _ = load_controller(OLD_RUN / "checkpoints" / "controller_r0.npz")
    env = envs.make("car_racing", max_episode_steps=25)
    policy = ControllerPolicy(wm, cfg, params, trace=True)
    ep = run_episode(env, policy, 3)
    arrays, logits = ep["arrays"], policy.done_logits
    assert logits.shape == (3, 25) and logits.dtype == np.float32 and ep["terminated"] is False
    plain = ControllerPolicy(wm, cfg, params)  # the trace changes nothing C does
    assert np.array_equal(run_episode(env, plain, 3)["arrays"]["actions"], arrays["actions"])
    with torch.inference_mode():  # each member read teacher-forced over the same latents and actions
        mu, actions, _ = wm.teacher_forced(arrays)
        for k, m in enumerate(wm.ensemble):
            want = m(mu[None, :-1], actions[None])[0].done_logit[0].numpy()
            assert np.allclose(logits[k], want, atol=1e-4)
    policy.reset(4)  # a new episode starts a new trace
    assert policy.done_logits.shape == (3, 0)


def test_a_dream_rebuilt_with_a_bias_is_the_dream_built_with_it() -> None:
    wm = WorldModel.load(OLD_RUN)
    cfg = ControllerConfig.for_task(wm.action_space, wm.obs_size, wm.task)
    params = np.stack([init_params(cfg, np.random.default_rng(s)) for s in range(3)])
    kw = dict(temperature=1.0, max_steps=40)
    fit = DreamFitness(wm, cfg, 3, 2, **kw)
    plain = fit.returns(params, 5)
    fit.set_done_bias(2.5)
    assert fit.done_bias == 2.5
    assert torch.equal(fit.returns(params, 5), DreamFitness(wm, cfg, 3, 2, done_bias=2.5, **kw).returns(params, 5))
    fit.set_done_bias(0.0)
    assert torch.equal(fit.returns(params, 5), plain)
    assert float(wm.mdrnn.head.bias.detach()[-1]) == float(WorldModel.load(OLD_RUN).mdrnn.head.bias.detach()[-1])


def test_a_hook_before_the_save_is_played_again_after_a_kill(tmp_path: Path) -> None:
    """``hook_before_save``: a generation whose hook did not finish is not in the state, so a
    resumed search plays it (and its hook) again; without it, the state holds the generation."""
    cfg = CMAConfig(popsize=4, rollouts=1, generations=3, sigma0=0.5, seed=1)

    def fitness(x: np.ndarray, g: int) -> np.ndarray:
        return -np.square(x).sum(axis=1)

    def killed_at_1(g: int, best: np.ndarray, fit: float, mean: np.ndarray) -> None:
        if g == 1:
            raise KeyboardInterrupt

    for before, held in ((True, 1), (False, 2)):
        path = tmp_path / f"cma_{before}.npz"
        with pytest.raises(KeyboardInterrupt):
            evolve(fitness, 5, cfg, path, progress=False, on_generation=killed_at_1, hook_before_save=before)
        assert len(EvolutionState.load(path, cfg, 5).fitness) == held
    seen: list[int] = []
    done = evolve(fitness, 5, cfg, tmp_path / "cma_True.npz", progress=False, hook_before_save=True,
                  on_generation=lambda g, b, f, m: seen.append(g))
    assert seen == [1, 2] and len(done.fitness) == 3
    whole = evolve(fitness, 5, cfg, None, progress=False)
    assert np.array_equal(done.mean_params, whole.mean_params)


@pytest.mark.parametrize("sets, message", [
    (["dream.done_calibrate=-1"], "dream.done_calibrate must be a number >= 0"),
    (["dream.done_calibrate=nan"], "dream.done_calibrate must be a number >= 0"),
    (["dream.done_calibrate=2", "eval.gap_every=0"], "dream.done_calibrate measures the dream on the gap"),
    (["dream.done_calibrate=2", "train_in=real"], "dream.done_calibrate measures the dream on the gap"),
])
def test_bad_calibration_settings_are_refused(sets: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        override(RunConfig(task="doom_take_cover"), sets)


def test_a_calibrating_run_keeps_its_gap_measurements_on_resume(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    shutil.copy(OLD_RUN / "config.json", run.config_json)
    base = RunConfig.load(run)
    assert check_resumable(run, override(base, ["eval.gap_episodes=8"]))  # only watching: it may change
    calibrating = override(base, ["dream.done_calibrate=2"])
    run.config_json.write_text(json.dumps(calibrating.to_dict()))
    with pytest.raises(ValueError, match=r"differs in eval\.gap_episodes"):
        check_resumable(run, override(calibrating, ["eval.gap_episodes=8"]))
