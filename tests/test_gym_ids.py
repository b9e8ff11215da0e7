"""Every worldlab Gymnasium id is made on a fresh interpreter without ``import envs``: by the
``module:id`` form, and, once installed, after ``import gymnasium`` alone (worldlab_gymnasium.pth;
each check runs in a fresh subprocess, the .pth put in effect with ``site.addsitedir`` as Python
does at start-up for site-packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym

import envs  # noqa: F401  (registers the ids the envs package itself registers)
import worldlab_gymnasium

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "tests" / "fixtures" / "old_run"
ENV = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONPATH": str(ROOT)}


def _fresh(code: str, tmp: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter (no .pth hook of ours unless ``tmp`` holds one); its stdout."""
    # an installed worldlab (pip install -e .) already put the hook in at start-up: take it out, so that the
    # interpreter is as fresh as one without the .pth, and the tmp .pth (when given) is what installs it
    head = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_Hook']\n"
    head += f"import site; site.addsitedir({str(tmp)!r})\n" if tmp is not None else ""
    r = subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], capture_output=True, text=True,
                       env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_ids_table_matches_what_the_envs_package_registers() -> None:
    """The envs package's own register functions, on a registry without the lab's ids (whoever
    registered them first in this process), register exactly the table's ids and arguments."""
    from envs import car_racing, dream

    registry = gym.envs.registry
    saved = {i: registry.pop(i) for i in list(registry) if i.startswith("worldlab/")}
    try:
        car_racing.register_envs()
        dream.register_envs()
        registered = {i: registry[i] for i in registry if i.startswith("worldlab/")}
    finally:
        for i in [i for i in registry if i.startswith("worldlab/")]:
            del registry[i]
        registry.update(saved)
    assert set(worldlab_gymnasium.IDS) == set(registered)
    for env_id, kwargs in worldlab_gymnasium.IDS.items():
        for key, value in kwargs.items():
            assert getattr(registered[env_id], key) == value, (env_id, key)


def test_module_id_form_makes_every_id_on_a_fresh_interpreter() -> None:
    out = _fresh(f"""
        import sys
        import gymnasium as gym
        assert "worldlab/CarRacing-v3" not in gym.envs.registry and "envs" not in sys.modules
        obs, _ = gym.make("envs:worldlab/CarRacing-v3").reset(seed=0)
        dream = gym.make("envs:worldlab/Dream-v0", run_dir={str(RUN)!r})
        vec = gym.make_vec("envs:worldlab/Dream-v0", num_envs=3, vectorization_mode="vector_entry_point",
                           run_dir={str(RUN)!r})
        print(obs.shape, dream.reset(seed=0)[0].shape, type(vec).__name__, vec.reset(seed=0)[0].shape)
    """)
    assert out.split() == ["(96,", "96,", "3)", "(24,)", "DreamVectorEnv", "(3,", "24)"]


def test_installed_pth_registers_every_id_at_import_gymnasium(tmp_path: Path) -> None:
    shutil.copy(ROOT / "worldlab_gymnasium.pth", tmp_path)
    out = _fresh(f"""
        import sys
        import gymnasium as gym
        assert "envs" not in sys.modules and "torch" not in sys.modules  # the ids are strings: lazy
        assert type(gym.__loader__).__name__ == "SourceFileLoader"  # gymnasium's own loader, untouched
        assert not any(type(f).__name__ == "_Hook" for f in sys.meta_path)  # gone once it has run
        obs, _ = gym.make("worldlab/CarRacing-v3").reset(seed=0)
        dream = gym.make("worldlab/Dream-v0", run_dir={str(RUN)!r})
        vec = gym.make_vec("worldlab/Dream-v0", num_envs=2, vectorization_mode="vector_entry_point",
                           run_dir={str(RUN)!r})
        print(obs.shape, dream.reset(seed=0)[0].shape, vec.reset(seed=0)[0].shape)
    """, tmp_path)
    assert out.split() == ["(96,", "96,", "3)", "(24,)", "(2,", "24)"]


def test_pth_registers_at_once_when_gymnasium_came_first(tmp_path: Path) -> None:
    out = _fresh("""
        import gymnasium as gym
        import worldlab_gymnasium
        worldlab_gymnasium.install()
        worldlab_gymnasium.install()  # idempotent
        print(sorted(i for i in gym.envs.registry if i.startswith("worldlab/")))
    """)
    assert out.strip() == "['worldlab/CarRacing-v3', 'worldlab/Dream-v0']"


def test_both_wheels_install_the_pth_beside_the_hook_module(tmp_path: Path) -> None:
    """What ``pip install .`` and ``pip install -e .`` install: the wheel and the editable wheel built
    by setuptools' PEP 517 / 660 hooks (from a copy of the sources) carry the .pth at their root."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "tests", "docs", "benchmarks", "runs", "build",
                                                             "*.egg-info", "__pycache__"))
    out = _fresh(f"""
        import os, zipfile
        from setuptools import build_meta
        os.chdir({str(src)!r})
        for build in (build_meta.build_wheel, build_meta.build_editable):
            name = build({str(tmp_path / "dist")!r})
            names = zipfile.ZipFile(os.path.join({str(tmp_path / "dist")!r}, name)).namelist()
            pth = [n for n in names if n.endswith(".pth")]
            print("RESULT", build.__name__, "worldlab_gymnasium.pth" in names, len(pth))
            if build is build_meta.build_wheel:
                assert "worldlab_gymnasium.py" in names and "envs/__init__.py" in names, names
            else:
                content = zipfile.ZipFile(os.path.join({str(tmp_path / "dist")!r}, name)).read(
                    "worldlab_gymnasium.pth").decode()
                assert content.strip() == "import worldlab_gymnasium; worldlab_gymnasium.install()"
    """)
    found = [line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")]
    assert found == [["build_wheel", "True", "1"], ["build_editable", "True", "2"]], out[-3000:]
