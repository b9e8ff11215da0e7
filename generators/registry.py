"""The registry: one name per family, ``make(name, **config)``, ``available()``, ``load(path)``."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from generators.base import GenConfig, Generator, read_checkpoint


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
    from_state: Callable[[dict[str, Any]], Generator] | None = None
    """rebuilds a model from a checkpoint dict when the family's format is its own (the lab's V)."""


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (called once by each family module)."""
    family.cls.family = family.name
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


def from_state(state: dict[str, Any]) -> Generator:
    """Rebuild a model from a checkpoint dict holding ``family``, ``config`` and ``model``."""
    fam = family(state["family"])
    if fam.from_state is not None:
        return fam.from_state(state)
    model = fam.cls(fam.config(**state["config"]))
    model.load_state_dict(state["model"])
    return model


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Generator:
    """Load any generator saved with ``model.save(path)`` or written by the training loop.

    A training checkpoint with an EMA copy loads the EMA weights (those are the ones sampled).
    """
    state = read_checkpoint(path, map_location)
    if "ema" in state:
        state = {**state, "model": state["ema"]}
    model = from_state(state)
    model.eval()
    return model
