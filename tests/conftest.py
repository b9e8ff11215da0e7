"""Shared fixtures: headless pygame, one Ray session for the whole test run, tiny real data."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def suggested_torch_threads():
    """For a test module (``pytestmark = pytest.mark.usefixtures("suggested_torch_threads")``): 1 torch
    thread when other jobs load the machine (threads then wait for each other), else 2."""
    from generators.train import suggested_threads

    old = torch.get_num_threads()
    torch.set_num_threads(suggested_threads())
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def script() -> Callable[[str], ModuleType]:
    """``script(NAME)``: ``scripts/NAME.py`` as a module, to call its ``main(argv)`` in this process
    (scripts/ is no package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in a script look their module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def cli(script: Callable[[str], ModuleType]) -> Callable[..., subprocess.CompletedProcess]:
    """``cli("NAME.py", *args)``: ``scripts/NAME.py`` run as its command line would run it, in this process
    (no second interpreter: a subprocess imports torch again, ~4 s a call); the exit status, standard
    output and error as ``subprocess.run`` gives them, torch's thread count put back as it was. For
    refusals, and for whole jobs on the ``processes`` backend; a job on Ray runs in a subprocess (this
    process's shared Ray session is not the job's)."""

    def call(name: str, *args: str) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        threads = torch.get_num_threads()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = script(name.removesuffix(".py")).main([str(a) for a in args])
            except SystemExit as e:  # argparse's refusals, as the interpreter would report them
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            finally:
                torch.set_num_threads(threads)  # a job sets this process's torch threads
        return subprocess.CompletedProcess([name, *args], rc or 0, out.getvalue(), err.getvalue())

    return call


TINY_EPISODES = 6
TINY_STEPS = 120


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (``ray.init`` costs seconds)."""
    import ray

    from worldlab.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder of 6 real car_racing episodes of 120 steps (brownian policy, 64x64 frames)."""
    from agents.collect import collect

    out = tmp_path_factory.mktemp("tiny_run") / "data"
    collect("car_racing", out, TINY_EPISODES, workers=0, policy="brownian", seed=0,
            env_kwargs={"max_episode_steps": TINY_STEPS}, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained V (z = 4) saved as a checkpoint: what the renderer tests draw the latents of."""
    from worldlab.vae import ConvVAE, VAEConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        v = ConvVAE(VAEConfig(z_size=4, channels=(4, 8, 8, 8), dec_channels=(8, 8, 4)))
    return v.save(tmp_path_factory.mktemp("v") / "vae.pt", meta={"task": "car_racing"})


@pytest.fixture(scope="session")
def blocky_frames() -> Callable[..., torch.Tensor]:
    """``blocky_frames(n, seed=0)``: frames (n, 3, 64, 64) in [-1, 1] of 8x8 flat blocks, with the
    sharp edges V's decoder blurs."""

    def make(n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(n, 3, 8, 8, generator=g)
        return (torch.nn.functional.interpolate(coarse, scale_factor=8, mode="nearest") * 2 - 1).contiguous()

    return make
