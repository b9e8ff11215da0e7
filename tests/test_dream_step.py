"""The dream's batched step behind its interface (envs/dream_step.py): the envs reach it only
through public accessors, the factory dispatches on M's type, and the dream replays the reference
trace recorded by the code before the step moved out of the core (tests/fixtures/dream_trace.npz,
made by tests/fixtures/make_dream_trace.py): bit for bit on the machine it was recorded on, to
float rounding elsewhere."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.dream import DreamEnv, DreamVectorEnv
from envs.dream_step import DreamStep, MDRNNDreamStep, make_dream_step
from worldlab.world_model import WorldModel

FIXTURES = Path(__file__).parent / "fixtures"
N, STEPS, SEED, TAU = 16, 40, 7, 1.15  # as tests/fixtures/make_dream_trace.py recorded the trace
MODES = {"eager": (False, False), "compiled": (True, False), "deterministic": (False, True)}


@pytest.fixture(scope="module")
def wm() -> WorldModel:
    return WorldModel.untrained(bank=8, max_episode_steps=30, seed=0)


def test_the_envs_reach_the_step_through_public_accessors(wm: WorldModel) -> None:
    Z = wm.z_size
    venv = DreamVectorEnv(5, world_model=wm)
    obs = venv.reset_torch(seed=0)
    z = venv.latents()
    assert z.shape == (5, Z) and torch.equal(z, obs[:, :Z])
    assert venv.compiled is False
    with torch.inference_mode():
        z.zero_()  # a clone: the dream does not see it
    assert torch.equal(venv.latents(), obs[:, :Z])
    obs, *_ = venv.step_torch(torch.rand(5, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(venv.latents(), obs[:, :Z])

    env = DreamEnv(world_model=wm)
    o, _ = env.reset(seed=0)  # sub-env 0 of the vector env reset with seed 0 starts here too
    assert env.latents().shape == (1, Z) and np.array_equal(env.latents()[0].numpy(), o[:Z])
    assert torch.equal(env.latents()[0], DreamVectorEnv(5, world_model=wm).reset_torch(seed=0)[0, :Z])
    o, *_ = env.step(env.action_space.sample())
    assert np.array_equal(env.latents()[0].numpy(), o[:Z])


def test_box_actions_are_clipped_where_the_step_keeps_them(wm: WorldModel) -> None:
    a = torch.tensor([[-3.0, 2.0, -1.0], [0.5, 0.5, 0.5], [9.0, -9.0, 2.0]])
    low, high = torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    steps = [make_dream_step(wm.mdrnn, 3, "cpu") for _ in range(2)]
    for s in steps:
        s.reset_rows(slice(None), wm.start_mu[:3])
    steps[0].set_actions(a, low, high)
    steps[1].set_actions(torch.maximum(torch.minimum(a, high), low))
    outs = [s.step(1.0, False, torch.Generator().manual_seed(0)) for s in steps]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(steps[0].take_obs(), steps[1].take_obs())


def test_make_dream_step_dispatches_on_the_type_of_m(wm: WorldModel) -> None:
    step = make_dream_step(wm.mdrnn, 4, "cpu")
    assert isinstance(step, DreamStep) and isinstance(step, MDRNNDreamStep)
    assert step.num_envs == 4 and step.obs_size == wm.obs_size and not step.compiled
    assert step.obs.shape == (4, wm.obs_size) and step.h.shape == (4, wm.hidden_size)
    with pytest.raises(TypeError, match="no dream step for an M of type Linear"):
        make_dream_step(torch.nn.Linear(2, 2), 4, "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_dream_step(wm.mdrnn, 0, "cpu")


def trace(compile: bool, deterministic: bool) -> dict[str, np.ndarray]:
    """The reference trace's recipe (tests/fixtures/make_dream_trace.py), run by today's code."""
    spec = importlib.util.spec_from_file_location("make_dream_trace", FIXTURES / "make_dream_trace.py")
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    assert (recipe.N, recipe.STEPS, recipe.SEED) == (N, STEPS, SEED)
    arrays, compiled = recipe.trace(compile, deterministic, str(FIXTURES / "old_run"))
    assert compiled == compile  # it did compile (no fallback to eager)
    return arrays


def check_replay(mode: str) -> None:
    ref = np.load(FIXTURES / "dream_trace.npz")
    machine = (f"{platform.machine()} {platform.processor()} {torch.backends.cpu.get_cpu_capability()} "
               f"torch {torch.__version__}")
    same_machine = str(ref["machine"]) == machine
    got = trace(*MODES[mode])
    for key in ("terminated", "truncated"):
        assert np.array_equal(got[key], ref[f"{mode}_{key}"]), key
    for key in ("obs", "reward"):
        if same_machine:  # the same code path on the same machine: the very same numbers
            assert np.array_equal(got[key], ref[f"{mode}_{key}"]), key
        else:  # another CPU or torch: BLAS may sum in another order
            assert np.allclose(got[key], ref[f"{mode}_{key}"], atol=1e-5), key


@pytest.mark.parametrize("mode", ["eager", "deterministic"])
def test_the_dream_replays_the_reference_trace(mode: str) -> None:
    check_replay(mode)


@pytest.mark.slow
def test_the_compiled_dream_replays_the_reference_trace() -> None:
    check_replay("compiled")
