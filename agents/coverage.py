"""What a data set shows the world model: the coverage of a folder of rollout shards.

Frames alone do not say how fast the car went or whether it was on the road, so collection
records CarRacing's per-step signals in each shard (``speed``, ``off_road``, ``tiles``: see
``agents.rollout.SIGNALS`` and ``envs.car_racing.CarRacingSignals``). :func:`coverage` sums them
up per data set: the speed's percentiles, the tiles reached per episode, the share of steps off
the road and of steps that earn a tile, and the return. Shards without the signals (another
task, or collected before they were recorded) count toward the episodes and the return only.
For every task it also counts the steps where one action was held (:data:`HELD_STEPS` or more
equal actions in a row): what the data shows of a constant action, the simplest controller.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agents.rollout import SIGNALS
from worldlab.storage import SHARD_FIX, CorruptShardError, Manifest

HELD_STEPS = 30
"""a stretch of this many equal actions in a row or more counts as held."""


def held_steps(actions: np.ndarray, least: int = HELD_STEPS) -> int:
    """How many steps of an episode lie in a stretch of ``least`` or more equal actions in a row."""
    if len(actions) == 0:
        return 0
    a = np.asarray(actions).reshape(len(actions), -1)
    cuts = np.flatnonzero((a[1:] != a[:-1]).any(axis=1)) + 1
    runs = np.diff(np.concatenate([[0], cuts, [len(a)]]))
    return int(runs[runs >= least].sum())


def _read(path: Path) -> dict[str, np.ndarray]:
    """A shard's rewards, actions and signals, not its frames (each array of an ``.npz`` is read on its own)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("rewards", "actions", *SIGNALS) if k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CorruptShardError(f"shard {path} cannot be read ({e}); {SHARD_FIX}") from e


def coverage(data_dir: str | os.PathLike, episodes: list[int] | range | None = None) -> dict[str, Any]:
    """The coverage of the episodes ``episodes`` (all when None) of the shard folder ``data_dir``.

    Returns ``policy`` and ``task`` (from the manifest), ``episodes``, ``steps``, ``return_mean``,
    ``return_std``, ``return_min``, ``return_max``, and over the ``signal_episodes`` episodes that
    carry the signals (None when none does): ``speed_p50``, ``speed_p90`` (over every step),
    ``tiles_mean``, ``tiles_max`` (tiles reached per episode), ``off_road`` (share of steps with
    no wheel on the road) and ``tile_steps`` (share of steps that reached a new tile); and over
    every episode ``held`` (share of steps where one action was held, :func:`held_steps`).

    Reads only the small arrays of each shard, not the frames; checksums are left to the readers
    that train on the data.
    """
    m = Manifest.open(data_dir)
    ids = sorted(m.episodes) if episodes is None else list(episodes)
    missing = [i for i in ids if i not in m.episodes]
    if missing:
        raise ValueError(f"episodes {missing[:5]} are not in {m.path}")
    returns, steps, held, speeds, off, earn, tiles = [], 0, 0, [], [], [], []
    for i in ids:
        ep = _read(m.dir / m.episodes[i]["file"])
        returns.append(float(ep["rewards"].sum(dtype=np.float64)))
        steps += int(ep["rewards"].shape[0])
        held += held_steps(ep["actions"]) if "actions" in ep else 0
        if all(k in ep for k in SIGNALS):
            speeds.append(ep["speed"])
            off.append(ep["off_road"])
            earn.append(np.diff(ep["tiles"], prepend=0) > 0)  # the first step also earns the start tile
            tiles.append(int(ep["tiles"][-1]) if ep["tiles"].size else 0)
    r = np.asarray(returns, dtype=np.float64)
    out: dict[str, Any] = {
        "policy": m.meta.get("policy"), "task": m.meta.get("task"), "episodes": len(ids), "steps": steps,
        "return_mean": float(r.mean()) if r.size else None, "return_std": float(r.std()) if r.size else None,
        "return_min": float(r.min()) if r.size else None, "return_max": float(r.max()) if r.size else None,
        "signal_episodes": len(tiles), "held": held / steps if steps else None,
    }
    if tiles and sum(s.size for s in speeds):
        s = np.concatenate(speeds).astype(np.float64)
        out.update(speed_p50=float(np.percentile(s, 50)), speed_p90=float(np.percentile(s, 90)),
                   tiles_mean=float(np.mean(tiles)), tiles_max=int(np.max(tiles)),
                   off_road=float(np.concatenate(off).mean()), tile_steps=float(np.concatenate(earn).mean()))
    else:
        out.update(speed_p50=None, speed_p90=None, tiles_mean=None, tiles_max=None, off_road=None, tile_steps=None)
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def coverage_table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of :func:`coverage` results, one row each (a row's ``round``, when it has
    one, comes first; ``policy`` names who played)."""
    rounds = any("round" in r for r in rows)
    head = (["round"] if rounds else []) + ["policy", "episodes", "return", "speed p50", "speed p90",
                                            "tiles reached (mean / max)", "off road", "tile steps",
                                            f"held ({HELD_STEPS}+ steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ret = "-" if r["return_mean"] is None else f"{r['return_mean']:.1f} ± {r['return_std']:.1f}"
        tiles = "-" if r["tiles_mean"] is None else f"{r['tiles_mean']:.1f} / {r['tiles_max']}"
        off = "-" if r["off_road"] is None else f"{100 * r['off_road']:.1f}%"
        earn = "-" if r["tile_steps"] is None else f"{100 * r['tile_steps']:.1f}%"
        cells = ([str(r.get("round", ""))] if rounds else []) + [
            str(r.get("policy") or "?"), str(r["episodes"]), ret, _f(r["speed_p50"], ".1f"), _f(r["speed_p90"], ".1f"),
            tiles, off, earn, "-" if r.get("held") is None else f"{100 * r['held']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


PRIVILEGED_NOTE = ("The scripted driver follows the track from the env's privileged state (the car's position, "
                   "heading and speed, the track's waypoints): privileged information used only to collect data, "
                   "never given to the controller.")
"""the note under a coverage table when the scripted driver played."""
