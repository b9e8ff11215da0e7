"""The lab's Gymnasium ids, registered whenever Gymnasium is imported: ``gym.make("worldlab/CarRacing-v3")``
and ``gym.make("worldlab/Dream-v0", run_dir=...)`` work after ``import gymnasium`` alone.

Gymnasium 1.x loads no plugins (the ``gymnasium.envs`` entry-point group of 0.26-0.29 went in 1.0),
so installing worldlab puts ``worldlab_gymnasium.pth`` in site-packages (``setup.py``). Python runs
its one line at start-up: :func:`install` adds an import hook, costing nothing until Gymnasium is
imported, that calls :func:`register` right after ``gymnasium`` is. :func:`register` names each
env by its entry-point *string*: it imports neither ``envs`` nor torch, and ``gym.make`` imports
the env's module on first use. Without the install (a plain checkout on ``PYTHONPATH``), name
the module in the id instead: ``gym.make("envs:worldlab/CarRacing-v3")`` imports ``envs`` (which
registers the ids) first.

``IDS`` must match what ``envs.car_racing.register_envs`` and ``envs.dream.register_envs``
register (``tests/test_gym_ids.py`` checks it). Only the standard library is imported here.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from typing import Any

IDS: dict[str, dict[str, Any]] = {
    "worldlab/CarRacing-v3": {"entry_point": "envs.car_racing:FastCarRacing", "max_episode_steps": 1000,
                              "reward_threshold": 900},
    "worldlab/Dream-v0": {"entry_point": "envs.dream:DreamEnv", "vector_entry_point": "envs.dream:DreamVectorEnv",
                          "disable_env_checker": False},
}
"""every Gymnasium id of the lab and its ``gym.register`` arguments."""


def register() -> None:
    """Register every id of :data:`IDS` not registered yet (imports gymnasium, not the lab)."""
    import gymnasium as gym

    for env_id, kwargs in IDS.items():
        if env_id not in gym.envs.registry:
            gym.register(id=env_id, **kwargs)


def _register_quietly() -> None:
    try:
        register()
    except Exception as e:  # noqa: BLE001 - never break `import gymnasium`
        warnings.warn(f"worldlab could not register its Gymnasium ids ({e}); use gym.make('envs:ID') instead",
                      stacklevel=2)


class _RegisterAfter(importlib.abc.Loader):
    """Gymnasium's own loader, then :func:`register`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # leave no trace on gymnasium
        self._loader.exec_module(module)
        _Hook.remove()
        _register_quietly()

    def __getattr__(self, name: str) -> Any:  # resources, get_source, ...: the real loader's
        return getattr(self._loader, name)


class _Hook(importlib.abc.MetaPathFinder):
    """Finds ``gymnasium`` through the other finders and wraps its loader in :class:`_RegisterAfter`."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "gymnasium" or self._busy:
            return None
        self._busy = True
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _RegisterAfter(spec.loader)
                    return spec
            return None
        finally:
            self._busy = False

    @staticmethod
    def remove() -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]


def install() -> None:
    """Register the ids now if Gymnasium is imported already, else right after it is (idempotent)."""
    if "gymnasium" in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
