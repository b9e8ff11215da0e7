"""Captions of CarRacing frames, derived from the privileged signals a rollout shard records.

A frame does not say in words what it shows, but collection records CarRacing's per-step
signals beside it (``off_road``, ``speed``: ``envs.car_racing.CarRacingSignals``) and the actions.
Three facts of each frame become its attributes (:data:`ATTRIBUTES`):

- ``road``: on the road, or off it (no wheel on a road tile: on the grass);
- ``speed``: stopped (< 4), slow (< 30) or fast (the speedometer's unit: ~60 on a long straight);
- ``turn``: the mean steering of the next :data:`TURN_STEPS` actions: left (< -0.2), right (> 0.2)
  or straight. The drivers that collect the data steer for the track ahead, which the frame shows.

Every caption names one, two or all three facts in several phrasings and orders
(:func:`caption_set`): "on the grass", "fast, a left bend", "stays on the road, slow, going
straight". These are *privileged* labels: the signals come from the simulator's state, not from
the pixels, and are used only to train CLIP, never given to a controller.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import torch

from worldlab.storage import Manifest, load_shard

ATTRIBUTES = ("road", "speed", "turn")
PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "road": (("on the road", "on the track", "stays on the road", "keeps to the road", "driving on the asphalt"),
             ("on the grass", "off the road", "off the track", "driving on the grass", "leaves the road")),
    "speed": (("stopped", "standing still", "barely moving"),
              ("slow", "driving slowly", "at low speed"),
              ("fast", "driving fast", "at high speed", "speeding")),
    "turn": (("going straight", "on a straight", "straight ahead"),
             ("turning left", "a left turn", "steering left", "a left bend"),
             ("turning right", "a right turn", "steering right", "a right bend")),
}
"""how each value of each attribute is said (the first phrase: the canonical caption's)."""
SLOW, FAST = 4.0, 30.0
"""speed thresholds: below SLOW stopped, below FAST slow, else fast."""
TURN_STEPS, TURN = 10, 0.2
"""turning: the mean steering of the next TURN_STEPS actions beyond -TURN / +TURN."""


def frame_attributes(ep: dict[str, np.ndarray]) -> np.ndarray:
    """Attributes ``(T, 3)`` int (road, speed, turn) of the frames ``obs[1:]`` of one shard (the
    signals describe the state each action led to). A shard without the signals is refused."""
    missing = [k for k in ("off_road", "speed", "actions") if k not in ep]
    if missing:
        raise ValueError(f"the shard lacks {missing}: collect CarRacing rollouts with envs.make('car_racing') "
                         f"(which records the signals) to caption them")
    off = np.asarray(ep["off_road"], dtype=bool)
    speed = np.asarray(ep["speed"], dtype=np.float64)
    steer = np.asarray(ep["actions"], dtype=np.float64).reshape(len(off), -1)[:, 0]
    t = len(off)
    csum = np.concatenate([[0.0], np.cumsum(steer)])
    ahead = np.array([(csum[min(t, i + TURN_STEPS)] - csum[i]) / max(1, min(t, i + TURN_STEPS) - i) for i in range(t)])
    turn = np.where(ahead < -TURN, 1, np.where(ahead > TURN, 2, 0))  # CarRacing: steer < 0 is left
    spd = np.where(speed < SLOW, 0, np.where(speed < FAST, 1, 2))
    return np.stack([off.astype(np.int64), spd, turn], axis=1)


def canonical(attrs: tuple[int, int, int] | list[int]) -> str:
    """The one caption of a full attribute tuple used for retrieval: its first phrases, in order."""
    return ", ".join(PHRASES[a][int(v)][0] for a, v in zip(ATTRIBUTES, attrs, strict=True))


def caption_set() -> tuple[list[str], torch.Tensor]:
    """Every caption and what it says ``(U, 3)`` (-1: nothing of that attribute): each non-empty
    subset of the attributes, each value's phrasings, each order of the phrases, joined by ", "."""
    texts, attrs = [], []
    for r in range(1, len(ATTRIBUTES) + 1):
        for subset in itertools.combinations(range(len(ATTRIBUTES)), r):
            for values in itertools.product(*(range(len(PHRASES[ATTRIBUTES[a]])) for a in subset)):
                said = [-1] * len(ATTRIBUTES)
                for a, v in zip(subset, values, strict=True):
                    said[a] = v
                options = [PHRASES[ATTRIBUTES[a]][v] for a, v in zip(subset, values, strict=True)]
                for phrases in itertools.product(*options):
                    for order in itertools.permutations(phrases):
                        texts.append(", ".join(order))
                        attrs.append(said)
    return texts, torch.tensor(attrs, dtype=torch.long)


def shard_frames(data_dir: str | os.PathLike, episodes: list[int] | None = None, every: int = 1
                 ) -> dict[str, Any]:
    """The frames ``obs[1:]`` (every ``every``-th step) of a shard folder with their attributes and
    signals: ``{"frames" (N, 64, 64, 3) uint8, "attrs" (N, 3), "episode" (N,), "step" (N,),
    "off_road" (N,) bool, "speed" (N,)}``."""
    m = Manifest.open(data_dir)
    ids = sorted(m.episodes) if episodes is None else list(episodes)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("frames", "attrs", "episode", "step", "off_road", "speed")}
    for i in ids:
        e = m.episodes[i]
        ep = load_shard(m.dir / e["file"], e.get("sha256"))
        attrs = frame_attributes(ep)
        keep = np.arange(0, len(attrs), every)
        out["frames"].append(ep["obs"][1:][keep])
        out["attrs"].append(attrs[keep])
        out["episode"].append(np.full(len(keep), i))
        out["step"].append(keep)
        out["off_road"].append(np.asarray(ep["off_road"], dtype=bool)[keep])
        out["speed"].append(np.asarray(ep["speed"], dtype=np.float32)[keep])
    if not ids:
        raise ValueError(f"{data_dir} holds no episodes; collect some first")
    return {k: np.concatenate(v) for k, v in out.items()}
