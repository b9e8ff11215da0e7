"""The World Models algorithm (Ha & Schmidhuber 2018) in one package.

- :mod:`~agents.world_models.config`: :class:`RunConfig` and its parts, the presets
  ``smoke`` / ``default`` / ``paper``, ``override``;
- :mod:`~agents.world_models.stages`: collect, V, encode, M, evolve, evaluate, videos: each a
  function of the run folder and the config;
- :mod:`~agents.world_models.resume`: which settings a resumed run may change, checked once;
- :mod:`~agents.world_models.trainer`: :class:`DreamTrainer`, which runs the stages in rounds;
- :mod:`~agents.world_models.report`: ``RUN/report.md`` and its plots.

``DreamTrainer(preset("smoke", "car_racing"), "runs/smoke").learn()`` is the whole pipeline;
``scripts/dream_train.py`` is its command line.
"""

from agents.world_models.config import (
    PRESETS,
    CollectConfig,
    DreamConfig,
    EvalConfig,
    RunConfig,
    override,
    preset,
)
from agents.world_models.resume import RESUMABLE, check_resumable
from agents.world_models.trainer import DreamTrainer

__all__ = ["PRESETS", "RESUMABLE", "CollectConfig", "DreamConfig", "DreamTrainer", "EvalConfig", "RunConfig",
           "check_resumable", "override", "preset"]
