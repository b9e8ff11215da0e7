"""Calibrating the dream's ends on the controller's own real episodes (``dream.done_calibrate``).

A dream that expects fewer deaths along C's path than the game deals lets CMA-ES evolve a
controller that walks into deaths M does not see coming. Over nine Doom round-0 runs, the three
dreams that expected more deaths than the game dealt on C's own episodes transferred (730-893),
the six that expected fewer did not (333-668; docs/RESULTS.md, session 33). A fixed done bias
(``dream.done_bias``) is the same shift for every world model; the calibration measures it.

Every gap measurement (``eval.gap_every``) plays the best candidate in ``eval.gap_episodes`` real
episodes while each M steps along (:class:`agents.policies.ControllerPolicy`'s ``trace``), so the
done logits ``l_t`` the dream would use on that path are known. With ``D`` the episodes the game
ended (deaths, not time limits), :func:`calibrated_bias` finds the bias b with

    E(b) = sum over the episodes' steps of sigmoid(l_t + b) = target * D

(bisection: E rises with b), and the dream's done bias becomes the larger of that and the bias
in force: the dream then expects ``target`` ends per end the game dealt along C's own path, and
it never grows less pessimistic within a round (a controller evolved under the raised bias walks
where M's ends are least likely, which is where M misses them: the bias would fall and rise
again). An ensemble's done head is the dream's: the members' largest probability each step for
``done_mode="max"``, their mean otherwise (the expectation over the member that drives a dream).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_BIAS = 6.0
"""the largest calibrated done bias (e^6: ~400x M's odds of an end): beyond it the dream would end
everywhere, and the measurement (a few episodes) cannot support more."""


def expected_ends(logits: Sequence[np.ndarray], bias: float, done_mode: str = "member") -> float:
    """The ends a dream with done bias ``bias`` expects along real episodes: per episode a (K, T)
    (or (T,)) array of its Ms' done logits; the members' largest probability per step for
    ``done_mode="max"``, their mean otherwise; summed over the steps and episodes."""
    total = 0.0
    for lg in logits:
        lg = np.asarray(lg, dtype=np.float64).reshape(-1, np.shape(lg)[-1])   # (K, T)
        p = 1.0 / (1.0 + np.exp(-(lg + bias)))
        total += float((p.max(axis=0) if done_mode == "max" else p.mean(axis=0)).sum())
    return total


def calibrated_bias(logits: Sequence[np.ndarray], ended: int, target: float, floor: float = 0.0,
                    done_mode: str = "member") -> dict[str, Any]:
    """The done bias b >= ``floor`` at which the dream expects ``target * ended`` ends along these
    episodes (:func:`expected_ends`), at most :data:`MAX_BIAS` (``capped`` says so).

    Returns ``bias`` (``floor`` when ``ended`` is 0 or the dream already expects enough at
    ``floor``), ``expected_at_floor``, ``expected`` (at ``bias``), ``ended``, ``capped``."""
    if not target > 0 or not math.isfinite(target):
        raise ValueError(f"the calibration's target must be a positive number of ends per real end, got {target!r}")
    at_floor = expected_ends(logits, floor, done_mode)
    want = target * int(ended)
    lo, hi, capped = float(floor), max(float(floor), MAX_BIAS), False
    if ended <= 0 or at_floor >= want:
        b = lo
    elif expected_ends(logits, hi, done_mode) < want:
        b, capped = hi, True
    else:
        for _ in range(60):  # E(b) rises with b: bisection to ~1e-15 of the bracket
            mid = 0.5 * (lo + hi)
            if expected_ends(logits, mid, done_mode) < want:
                lo = mid
            else:
                hi = mid
        b = hi
    return {"bias": float(b), "expected_at_floor": at_floor, "expected": expected_ends(logits, b, done_mode),
            "ended": int(ended), "target": float(target), "capped": capped}
