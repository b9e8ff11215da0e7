"""The registry: one name per family, ``make(name, **config)``, ``available()``, ``load(path)``.

It imports :mod:`generators.base` (never the reverse): a family class rebuilds itself from its own
checkpoint (``DCGAN.load``); finding the class of a checkpoint of any family is the registry's job.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from generators.base import GenConfig, Generator, checkpoint_family
from worldlab.io import torch_load


@dataclass(frozen=True)
class Family:
    """What the registry knows about one family."""

    name: str
    cls: type[Generator]
    config: type[GenConfig]
    summary: str
    kinds: tuple[str, ...] = ("image",)
    """data kinds it models: "image" and/or "points"."""
    conditional: bool = False
    """True when the family needs class labels (``num_classes > 0``)."""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """named config overlays: "tiny" (tests, seconds), "small" (CPU minutes)."""
    train: dict[str, Any] = field(default_factory=dict)
    """training defaults of the book: lr, batch_size, ema."""
    monitor: str = "loss"
    """the logged loss that falls early in training (used by the tests)."""
    data_defaults: Callable[[str], dict[str, Any]] | None = None
    """config values the family takes from the data source it is trained on, used where the caller
    gives none (the renderer: the V of the run whose frames it learns)."""


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (called once by each family module); its class learns its name and config class,
    which its checkpoints carry."""
    family.cls.family = family.cls.FAMILY = family.name
    family.cls.CONFIG = family.config
    _FAMILIES[family.name] = family
    return family


def available() -> list[str]:
    """Names of every registered family, sorted."""
    return sorted(_FAMILIES)


def family(name: str) -> Family:
    """The registry entry of ``name`` (a one-line error naming the choices when unknown)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _FAMILIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown generator family {name!r}{hint}; choose one of: "
                         f"{', '.join(available())}") from None


def config_fields(cfg_cls: type[GenConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg_cls)]


def make_config(name: str, preset: str | None = None, **config: Any) -> GenConfig:
    """Build family ``name``'s config: book defaults < preset overlay < keyword overrides."""
    fam = family(name)
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in fam.presets:
            raise ValueError(f"{name} has no preset {preset!r}; presets: {', '.join(sorted(fam.presets)) or 'none'}")
        values.update(fam.presets[preset])
    values.update(config)
    known = config_fields(fam.config)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r}; its options are: {', '.join(known)}")
    cfg = fam.config(**values)
    if cfg.kind not in fam.kinds:
        raise ValueError(f"{name} models {' and '.join(fam.kinds)} data, not {cfg.kind} of shape {cfg.shape}; "
                         f"pick a {'/'.join(fam.kinds)} data source")
    if fam.conditional and cfg.num_classes < 1:
        raise ValueError(f"{name} is conditional: train it on labelled data (digits, mnist, moons) "
                         f"or pass num_classes")
    return cfg


def make(name: str, preset: str | None = None, **config: Any) -> Generator:
    """A fresh model of family ``name``; ``config`` overrides fields of its config dataclass.

    Example: ``generators.make("dcgan", shape=(1, 16, 16))``.
    """
    return family(name).cls(make_config(name, preset, **config))


def from_state(state: dict[str, Any], path: str | os.PathLike = "<memory>") -> Generator:
    """Rebuild a model from a checkpoint dict holding ``family``, ``config`` and ``model``
    (the EMA weights of a training checkpoint that has them)."""
    return family(checkpoint_family(state, path)).cls.from_checkpoint(state, path)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Generator:
    """Load any generator saved with ``model.save(path)`` or written by the training loop.

    A training checkpoint with an EMA copy loads the EMA weights (those are the ones sampled).
    """
    return from_state(torch_load(path), path).to(map_location).eval()
